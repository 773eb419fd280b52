//! `bench scale`: sinew at Kubernetes' limits (see `sinew_e2e::scale`), printed as a table with
//! each figure beside its target; `--write-docs` writes it into the "Scale: Kubernetes'
//! limits" section of docs/benchmarks.md.

use std::time::Duration;

use sinew_e2e::scale::agents::Window;
use sinew_e2e::scale::{Measured, Scale};

use super::{Args, ms, percentile};

const HEADING: &str = "## Scale: Kubernetes' limits";
const BEGIN: &str =
    "<!-- begin: written by `bench scale --write-docs`; notes after the end marker are kept -->";
const END: &str = "<!-- end: written by `bench scale --write-docs` -->";

const METHOD: &str = "\
What it does (`e2e/src/scale.rs` and `e2e/src/scale/`): a fresh etcd and kube-apiserver;
50 `IPPool`s (a /16 each, /26 blocks, `Auto`), each selecting its rack of nodes by label;
`Node` objects shaped like a kubelet's (labels, addresses, capacity, 20 images, node info)
carrying an agent's report and the VTEP MAC its name derives, all peers of the local cluster
below (its peer label); `Pod` objects (no status), spread evenly over the nodes; one
`IPBlock` per node and its `IPBlockUsage` (owned by the block, as the agent writes it) whose
status lists the node's pods' allocations. Loaded concurrently (48 pod
creations in flight).

- **Operator** (as the chart runs it: the only replica, it takes the Lease): its start to
  every pool's usage in status; `VmRSS` after 5 s of quiet (peak `VmHWM` over the whole run,
  the agents' part and the churn included; an operator that exits is started again, as its
  Deployment would, and counted); after the agents' part and 10 s of quiet (the churn's
  paced counts, up to 5 s behind by design, out of the way), one at a time, an `IPPool` spec
  edit (one more reserved address: capacity changes) and an agent's allocation report (one
  allocation fewer: allocated changes), each timed to the change in `IPPool` status, polling
  every 5 ms.
- **Agents**: nodes simulated as network namespaces (the e2e local cluster) with real
  `sinew-node` agents (release build, the product's 10 s resync), in a pool of their own,
  peers of every synthetic node: an agent's process start to all synthetic peers' routes in
  its node's kernel (its `peer_routes` metric, polled every 100 ms; the kernel's count
  checked); `VmRSS` after 10 s of quiet; CPU per pass (utime + stime from `/proc/PID/stat`
  over a window, divided by the passes its `passes_total` metric counted, the probe mesh's
  thread included); a new block of a synthetic peer, timed from the API write to its route
  in the first agent's kernel (netlink, every 5 ms), 300 ms apart; and what each agent
  receives (bytes through its node's loopback forwarder to the API server, TLS included;
  objects its watches delivered, its `sinew_node_watch_events_total`) while idle and while
  pods start and stop on the synthetic nodes: each step deletes a node's oldest Pod object,
  creates a new one, writes its status with the freed address (as its kubelet would) and
  writes the node's allocations once (its `IPBlockUsage` status), as its agent would. The
  loaded pods have their addresses in their status too. The agents start with
  `networkPolicy` off (what programming peers costs, alone); it is then turned on (the
  default: every agent follows its node's pods and every other pod with an address, decision
  105), timed to each agent's first policy table, and the memory and churn measured again.
- **API server**: its `/metrics` before and after each window: `apiserver_watch_events_total`
  and `apiserver_watch_events_sizes` (sum) by resource, and the watches open
  (`apiserver_longrunning_requests{verb=WATCH}`); its and etcd's `VmRSS` / `VmHWM` at the
  end, and CPU over each window.";

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Each agent's time in seconds, `missing` where it has none.
fn each_secs(times: &[Option<Duration>], missing: &str) -> String {
    let each: Vec<String> = times
        .iter()
        .map(|t| t.map_or(missing.to_string(), |d| format!("{:.1}", secs(d))))
        .collect();
    each.join(", ")
}

fn p(samples: &[Duration]) -> String {
    format!(
        "{:.0} / {:.0} / {:.0}",
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.99)),
        ms(percentile(samples, 1.0))
    )
}

/// The most CPU one agent spent per pass over `w`, less what it spends idle over as long.
fn cpu_per_pass_less_idle(w: &Window, idle: &Window) -> Duration {
    w.cpu
        .iter()
        .zip(&w.passes)
        .zip(&idle.cpu)
        .map(|((cpu, passes), idle_cpu)| {
            let idle = idle.per_s(idle_cpu.as_secs_f64()) * w.wall.as_secs_f64();
            Duration::from_secs_f64(((cpu.as_secs_f64() - idle) / (*passes).max(1) as f64).max(0.0))
        })
        .max()
        .unwrap_or_default()
}

/// The main table: each figure beside its target.
pub fn table(s: &Scale, m: &Measured) -> String {
    let mut out = String::from("| metric | value | target |\n|---|---:|---|\n");
    let mut row = |metric: &str, value: String, target: &str| {
        out += &format!("| {metric} | {value} | {target} |\n");
    };
    row(
        "objects loaded into the API server (s); pods created per s",
        format!("{:.0}; {:.0}", secs(m.load), s.pods() as f64 / secs(m.load)),
        "",
    );
    let o = &m.operator;
    row(
        "operator start to every pool's usage in status (s)",
        format!("{:.1}", secs(o.initial_convergence)),
        "",
    );
    row(
        "operator restarts (it exits when it loses its Lease; restarted as its Deployment would)",
        m.operator_restarts.len().to_string(),
        "0",
    );
    row(
        "**operator RSS, steady (MiB)**",
        format!("**{:.1}**", mib(o.rss_kib_steady)),
        "< 64",
    );
    row(
        "operator RSS, peak over the run: the most VmHWM seen (MiB)",
        format!("{:.1}", mib(o.rss_kib_peak)),
        "< 64",
    );
    row(
        &format!(
            "IPPool spec edit to status, p50 / p99 / max (ms); of {}, not within 10 s",
            s.samples
        ),
        format!("{}; {}", p(&o.spec_edit), o.spec_edit_missed),
        "< 1000",
    );
    row(
        &format!(
            "allocation report to IPPool status, p50 / p99 / max (ms); of {}, not within 10 s",
            s.samples
        ),
        format!(
            "{}; {}",
            p(&o.allocation_change),
            o.allocation_change_missed
        ),
        "< 1000",
    );
    if let Some(a) = &m.agents {
        let slowest = a
            .program_from_nothing
            .iter()
            .max()
            .copied()
            .unwrap_or_default();
        row(
            &format!(
                "agent start to all {} peers' routes in its kernel, slowest of {} (s)",
                s.nodes, a.agents
            ),
            format!("{:.1}", secs(slowest)),
            "",
        );
        row(
            &format!(
                "agent start to its node ready (conflist written), each agent (s; not ready: not within {} s of its routes)",
                sinew_e2e::scale::agents::READY_WITHIN.as_secs()
            ),
            each_secs(&a.ready, "not ready"),
            "",
        );
        row(
            "peer routes in the first agent's kernel",
            a.kernel_routes.to_string(),
            &format!(">= {}", s.nodes),
        );
        let max = |v: &[(u64, u64)]| v.iter().copied().max().unwrap_or_default();
        row(
            "**agent RSS after the initial sync, NetworkPolicy off (peers only): VmRSS / VmHWM, largest (MiB)**",
            format!("**{:.1}** / {:.1}", mib(max(&a.rss).0), mib(max(&a.rss).1)),
            "< 48",
        );
        row(
            &format!(
                "NetworkPolicy turned on to each agent's first policy table applied (s; the wait: {} s)",
                sinew_e2e::scale::agents::READY_WITHIN.as_secs()
            ),
            each_secs(&a.policy_programmed, "not within the wait"),
            "",
        );
        row(
            &format!(
                "agent RSS with NetworkPolicy on (every pod of the cluster with an address followed: {} pods): VmRSS / VmHWM, largest (MiB)",
                s.nodes * s.pods_per_node
            ),
            format!(
                "{:.1} / {:.1}",
                mib(max(&a.rss_policy_on).0),
                mib(max(&a.rss_policy_on).1)
            ),
            "see the note below",
        );
        row(
            "agent idle: CPU, most of any agent (ms per s); passes per s (the 10 s resync)",
            format!(
                "{:.1}; {:.2}",
                a.idle.max_cpu_per_s() * 1000.0,
                a.idle.max_passes_per_s()
            ),
            "",
        );
        row(
            "**agent CPU per pass, each woken by a new peer block: most of any agent, less its idle CPU (ms)** (raw)",
            format!(
                "**{:.1}** ({:.1})",
                ms(cpu_per_pass_less_idle(&a.new_blocks, &a.idle)),
                ms(a.new_blocks.max_cpu_per_pass())
            ),
            "< 50",
        );
        row(
            &format!(
                "new peer block to its route in the agent's kernel, p50 / p99 / max (ms, {} samples)",
                a.new_block.len()
            ),
            p(&a.new_block),
            "p99 < 1000",
        );
        for (label, w) in [
            ("idle", &a.idle),
            ("pod churn elsewhere, policy off", &a.churn_policy_off),
            ("pod churn elsewhere, policy on", &a.churn_policy_on),
        ] {
            let rate = w
                .churned
                .map(|c| format!(" ({:.0} pod starts and as many stops per s)", c.rate()))
                .unwrap_or_default();
            // Events per pod started and stopped elsewhere, less what the agent gets idle;
            // beside them, a watch of every pod's over the same window.
            let per_pod = w
                .churned
                .map(|c| {
                    let rate = c.rate().max(f64::MIN_POSITIVE);
                    let agent = (w.max_events_per_s() - a.idle.max_events_per_s()).max(0.0);
                    let every = w.per_s(w.every_pod_events.unwrap_or_default() as f64);
                    format!("; {:.2} ({:.2})", agent / rate, every / rate)
                })
                .unwrap_or_default();
            let per_pod_label = if w.churned.is_some() {
                "; watch events per pod started and stopped elsewhere (a watch of every pod)"
            } else {
                ""
            };
            row(
                &format!(
                    "one agent, {label}{rate}: KiB/s received from the API server; watch events received per s; CPU (ms per s); passes per s (most of any agent){per_pod_label}"
                ),
                format!(
                    "{:.1}; {:.1}; {:.1}; {:.2}{per_pod}",
                    w.max_received_per_s() / 1024.0,
                    w.max_events_per_s(),
                    w.max_cpu_per_s() * 1000.0,
                    w.max_passes_per_s()
                ),
                match (w.churned.is_some(), label.contains("policy on")) {
                    (false, _) => "reference",
                    (true, false) => "close to idle: no event per foreign pod",
                    // Enforcing by address needs a peer's address (decision 105).
                    (true, true) => "a foreign pod only as a peer, by its address (decision 105)",
                },
            );
        }
        row(
            "operator RSS after the churn: VmRSS / VmHWM (MiB)",
            format!(
                "{:.1} / {:.1}",
                mib(a.operator_rss_end.0),
                mib(a.operator_rss_end.1)
            ),
            "< 64",
        );
    }
    row(
        "API server RSS at the end: VmRSS / VmHWM (MiB)",
        format!(
            "{:.0} / {:.0}",
            mib(m.apiserver_rss.0),
            mib(m.apiserver_rss.1)
        ),
        "",
    );
    row(
        "etcd RSS at the end: VmRSS / VmHWM (MiB)",
        format!("{:.0} / {:.0}", mib(m.etcd_rss.0), mib(m.etcd_rss.1)),
        "",
    );
    row(
        "the whole run, control plane start to the end (min)",
        format!("{:.1}", secs(m.total) / 60.0),
        "",
    );
    out
}

/// The API server's watch traffic by resource over each window.
pub fn watch_table(m: &Measured) -> String {
    let Some(a) = &m.agents else {
        return String::new();
    };
    let mut out = String::from(
        "| window | resource | watch events per s | KiB per s | watches open | events per s per watch |\n|---|---|---:|---:|---:|---:|\n",
    );
    for (label, w) in [
        ("idle", &a.idle),
        ("pod churn, policy on", &a.churn_policy_on),
        ("pod churn, policy off", &a.churn_policy_off),
    ] {
        for (resource, sent) in w.sent.iter().filter(|(r, _)| relevant(r)) {
            let watches = w.watches.get(resource).copied().unwrap_or_default();
            out += &format!(
                "| {label} | {resource} | {:.1} | {:.1} | {watches:.0} | {} |\n",
                w.per_s(sent.events),
                w.per_s(sent.bytes) / 1024.0,
                if watches > 0.0 {
                    format!("{:.1}", w.per_s(sent.events) / watches)
                } else {
                    "-".into()
                }
            );
        }
        out += &cpu_row(label, w);
    }
    out
}

/// What sinew's components watch: its own resources, and the core ones agents and operator
/// follow (the control plane's own watches, of RBAC objects and the like, are left out).
fn relevant(resource: &str) -> bool {
    resource.starts_with("sinew.dev/")
        || [
            "core/pods",
            "core/nodes",
            "core/namespaces",
            "networking.k8s.io/networkpolicies",
        ]
        .contains(&resource)
}

fn cpu_row(label: &str, w: &Window) -> String {
    format!(
        "| {label} | CPU (cores): API server / etcd / operator | {:.2} / {:.2} / {:.2} | | | |\n",
        w.per_s(w.apiserver_cpu.as_secs_f64()),
        w.per_s(w.etcd_cpu.as_secs_f64()),
        w.per_s(w.operator_cpu.as_secs_f64())
    )
}

pub fn run(args: &Args, machine: &str) -> Result<(), String> {
    let defaults = Scale::default();
    let mut scale = Scale {
        nodes: args.nodes.unwrap_or(defaults.nodes),
        pods_per_node: args.pods_per_node.unwrap_or(defaults.pods_per_node),
        agents: args.agents.unwrap_or(defaults.agents),
        samples: args.samples.unwrap_or(defaults.samples),
        churn_per_s: args.churn_per_s.unwrap_or(defaults.churn_per_s),
        ..defaults
    };
    if scale.samples > 24 {
        return Err("--samples: at most 24 (new peer blocks come from the top of a pool)".into());
    }
    if scale.agents > 0 && !sinew_e2e::require::is_root() {
        eprintln!(
            "[scale] not root: the operator only (the agents' part creates network namespaces)"
        );
        scale.agents = 0;
    }
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let m = runtime
        .block_on(sinew_e2e::scale::run(scale))
        .map_err(|e| e.to_string())?;
    drop(runtime);
    let title = format!(
        "scale: {} nodes, {} pools, {} pods (and their allocations), {} real agents; churn {} pod starts per s for {} s; {} samples per kind (load average before the run: {load})",
        scale.nodes,
        scale.pools,
        scale.pods(),
        scale.agents,
        scale.churn_per_s,
        scale.churn_seconds,
        scale.samples
    );
    let table = table(&scale, &m);
    let watches = watch_table(&m);
    for why in &m.operator_restarts {
        println!("operator restarted after: {why}");
    }
    println!("\n{title}");
    println!("machine: {machine}\n");
    print!("{table}");
    if !watches.is_empty() {
        println!(
            "\nThe API server's watch traffic (all watchers: the operator's and the agents'):\n"
        );
        print!("{watches}");
    }
    if args.write_docs {
        let path = write(&title, machine, &table, &watches, &scale)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Writes the run into its section of docs/benchmarks.md (between the markers; the rest of
/// the file, notes after the end marker included, is kept).
fn write(
    title: &str,
    machine: &str,
    table: &str,
    watches: &str,
    scale: &Scale,
) -> Result<std::path::PathBuf, String> {
    let root = sinew_e2e::tools::repo_root();
    let path = root.join("docs/benchmarks.md");
    let (date, commit) = super::run_stamp(&root);
    let watches = if watches.is_empty() {
        String::new()
    } else {
        format!(
            "\nThe API server's watch traffic over the agents' windows (every watcher counts: the operator's and the agents'):\n\n{watches}"
        )
    };
    let binaries = match (
        std::env::var("SINEW_OPERATOR_BIN"),
        std::env::var("SINEW_NODE_BIN"),
    ) {
        (Ok(_), Ok(_)) => {
            "the static musl binaries the images ship (`SINEW_OPERATOR_BIN`, `SINEW_NODE_BIN`)"
        }
        _ => "release builds",
    };
    let lease: Vec<String> = sinew_e2e::scale::operator::LEASE_TIMING
        .iter()
        .filter_map(|(key, chart)| {
            let set = std::env::var(key).ok()?;
            (set != *chart).then(|| format!("`{key}={set}` (the chart's: {chart})"))
        })
        .collect();
    let lease = if lease.is_empty() {
        String::new()
    } else {
        format!(", the operator with {}", lease.join(" and "))
    };
    let block = format!(
        "{BEGIN}\nCommand (root, needs the Go-built control plane): `make bench-scale`, i.e.\n`cargo run -p sinew-e2e --release --bin bench -- scale --write-docs` (the quick run:\n`--nodes 1000 --pods-per-node 10`; `--agents 0` measures the operator alone and needs no\nroot; `SINEW_OPERATOR_BIN=<path>` / `SINEW_NODE_BIN=<path>` measure other builds, e.g. the\nstatic musl binaries `images/build-binaries.sh` leaves in `images/out/`).\n\n{METHOD}\n\nRun on {date}, commit {commit}, {binaries}{lease}, with `--nodes {} --pods-per-node {} --agents {}`:\n\n```\n{title}\nmachine: {machine}\n```\n\n{table}{watches}{END}\n",
        scale.nodes, scale.pods_per_node, scale.agents
    );
    super::write_section(&path, (BEGIN, END, HEADING), &block)?;
    Ok(path)
}

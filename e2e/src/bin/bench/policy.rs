//! `bench policy`: NetworkPolicy at scale (see `sinew_e2e::policy_scale`), printed as a table;
//! `--write-docs` writes it into the "NetworkPolicy at scale" section of docs/benchmarks.md.

use std::time::Duration;

use sinew_e2e::policy_scale::{Changes, Measured, Settings};

const HEADING: &str = "## NetworkPolicy at scale";
const BEGIN: &str =
    "<!-- begin: written by `bench policy --write-docs`; notes after the end marker are kept -->";
const END: &str = "<!-- end: written by `bench policy --write-docs` -->";

const METHOD: &str = "\
What it does (`e2e/src/policy_scale.rs`): a fresh etcd and kube-apiserver and the operator;
500 namespaces (labelled `team`, `env`); 100 fake `Node` objects (no agent); 10,000 `Pod`
objects, all but the local ones on the fake nodes, 20 per namespace labelled `app: app-0..3`
with named container ports `http` (8080) and `metrics` (9090), their addresses set through the
status subresource as kubelet does (the app-3 pods of every 50th namespace are also
`role: monitoring`; two kube-dns pods in kube-system); 1,000 NetworkPolicies, two per
namespace: `allow-app-0` (app-0 pods: `http` from the namespace's app-1 pods; in every third
namespace also TCP 8080 from app-2 pods of another team's namespaces, a namespaceSelector
with a podSelector) and `allow-monitoring` (every pod: `metrics` from monitoring pods of any
namespace; in every fourth namespace also egress: TCP 443 to an ipBlock with an except, DNS
to kube-dns). Then one node simulated as a network namespace, with a real `sinew-node` agent
(release build) and 6 pods of its own (real interfaces through cnitool) in 6 of those
namespaces, labelled `app: app-0`.

- **Memory**: `VmRSS` (and peak `VmHWM`) from `/proc/PID/status`: the agent with
  `spec.networkPolicy: Disabled` (reference: no pod, policy or namespace watch runs) after
  20 s of quiet; the same agent 5 s after policy was turned on; a fresh agent started with
  policy on, 10 s after its table was first programmed. Per pod: (on - off) / pods.
- **Change to kernel table** (p50/p99): a merge patch of `allow-app-0` in a local pod's
  namespace adding an ipBlock peer with a CIDR of its own, timed from the API write
  returning to the first look at the agent's `policy_applied` counter (every 2 ms, over HTTP
  inside the node's namespace) after which `nft list table inet sinew-policy` there shows
  that CIDR. Same for a pod label change elsewhere: a pod of another namespace labelled
  `role: monitoring`, until its address is in the local pods' `metrics` rules.
- **CPU per change**: further changes of the same kinds, not observed while they run (no
  polling), and a third kind, labels no rule reads (`version`): the agent's utime + stime
  (`/proc/PID/stat`) over the changes, less its idle CPU over the same wall time (measured
  over 20 quiet seconds with policy on; also shown for the reference's 20 quiet seconds
  with policy off), divided by the changes. Changes are 300 ms apart (the agent takes
  changes elsewhere in the cluster together at most every 200 ms), so each is handled on its
  own; the last one's presence in the table is checked afterwards.";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}

fn cpu_row(label: &str, c: &Changes, idle_per_s: f64) -> String {
    format!(
        "| CPU per {label} (ms; raw, before subtracting idle) | {:.1} ({:.1}) | |\n",
        ms(c.cpu_per_change(idle_per_s)),
        ms(c.raw_cpu_per_change())
    )
}

fn latency_row(label: &str, c: &Changes) -> String {
    format!(
        "| {label} to the node's kernel table, p50 / p99 / max (ms) | {:.0} / {:.0} / {:.0} | p99 < 1000 |\n",
        ms(percentile(&c.latency, 0.5)),
        ms(percentile(&c.latency, 0.99)),
        ms(percentile(&c.latency, 1.0))
    )
}

/// The rows as a Markdown table.
pub fn table(s: &Settings, m: &Measured) -> String {
    let per_pod = |on: u64| (on as f64 - m.rss_off.0 as f64) / s.pods as f64;
    let mut out = String::from("| metric | value | target / reference |\n|---|---:|---|\n");
    out += &format!(
        "| objects loaded into the API server (s) | {:.1} | |\n",
        m.load.as_secs_f64()
    );
    out += &format!(
        "| agent RSS, policy Disabled: VmRSS / VmHWM (MiB) | {:.1} / {:.1} | reference |\n",
        mib(m.rss_off.0),
        mib(m.rss_off.1)
    );
    out += &format!(
        "| agent RSS, policy turned on in the running agent: VmRSS / VmHWM (MiB) | {:.1} / {:.1} | |\n",
        mib(m.rss_turned_on.0),
        mib(m.rss_turned_on.1)
    );
    out += &format!(
        "| **agent RSS, fresh agent with policy on, after the initial sync: VmRSS / VmHWM (MiB)** | **{:.1}** / {:.1} | < 64 |\n",
        mib(m.rss_on.0),
        mib(m.rss_on.1)
    );
    out += &format!(
        "| agent RSS at the end of the run: VmRSS / VmHWM (MiB) | {:.1} / {:.1} | |\n",
        mib(m.rss_end.0),
        mib(m.rss_end.1)
    );
    out += &format!(
        "| per pod, (on - off) / {} pods (KiB): fresh agent / turned on | {:.2} / {:.2} | Cilium's published figure ~10 KiB per pod (not measured here) |\n",
        s.pods,
        per_pod(m.rss_on.0),
        per_pod(m.rss_turned_on.0)
    );
    out += &format!(
        "| fresh agent's start to its policy table programmed (s) | {:.2} | |\n",
        m.sync.as_secs_f64()
    );
    out += &format!(
        "| agent idle CPU, policy on / off (ms per s) | {:.2} / {:.2} | |\n",
        m.idle_cpu_per_s * 1000.0,
        m.idle_cpu_per_s_off * 1000.0
    );
    out += &cpu_row("policy edit", &m.policy_edits, m.idle_cpu_per_s);
    out += &cpu_row(
        "pod label change elsewhere, followed by local rules",
        &m.label_changes,
        m.idle_cpu_per_s,
    );
    out += &cpu_row(
        "pod label change elsewhere, read by no rule",
        &m.unrelated_label_changes,
        m.idle_cpu_per_s,
    );
    out += &latency_row(
        &format!("policy edit ({} samples)", m.policy_edits.latency.len()),
        &m.policy_edits,
    );
    out += &latency_row(
        &format!(
            "pod label change elsewhere ({} samples)",
            m.label_changes.latency.len()
        ),
        &m.label_changes,
    );
    out += &format!(
        "| one look at the agent's metrics / one `nft list table` in the node, mean (ms) | {:.2} / {:.1} | |\n",
        ms(m.metrics_poll),
        ms(m.nft_list)
    );
    out += &format!(
        "| node's table at the end: classes / set elements; last programming (ms) | {} / {} ; {:.1} | |\n",
        m.classes,
        m.elements,
        m.program_us as f64 / 1000.0
    );
    out
}

pub fn run(samples: usize, write_docs: bool, machine: &str) -> Result<(), String> {
    if !sinew_e2e::require::is_root() {
        return Err("the policy benchmark creates network namespaces: run it as root".into());
    }
    let settings = Settings {
        samples,
        ..Settings::default()
    };
    // Other work on the machine shows in every number: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let measured = runtime
        .block_on(sinew_e2e::policy_scale::run(settings))
        .map_err(|e| e.to_string())?;
    drop(runtime);
    let title = format!(
        "NetworkPolicy at scale: {} pods over {} namespaces ({} on the measured node), {} NetworkPolicies, {} changes per kind (load average before the run: {load})",
        settings.pods,
        settings.namespaces,
        settings.local_pods,
        settings.policies(),
        settings.samples
    );
    let table = table(&settings, &measured);
    println!("\n{title}");
    println!("machine: {machine}\n");
    print!("{table}");
    if write_docs {
        let path = write(&title, machine, &table, &settings)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Writes the run into the "NetworkPolicy at scale" section of docs/benchmarks.md: the part
/// between the markers is replaced (the section is appended when missing), the rest of the
/// file, including notes after the end marker, is kept.
fn write(
    title: &str,
    machine: &str,
    table: &str,
    settings: &Settings,
) -> Result<std::path::PathBuf, String> {
    let root = sinew_e2e::tools::repo_root();
    let path = root.join("docs/benchmarks.md");
    let (date, commit) = super::run_stamp(&root);
    let block = format!(
        "{BEGIN}\nCommand (root, needs the Go-built control plane): `make bench-policy`, i.e.\n`cargo run -p sinew-e2e --release --bin bench -- policy [--samples 40] --write-docs`\n(`--write-docs` rewrites this part of the section; without it the table is only printed).\n\n{METHOD}\n\nRun on {date}, release build of commit {commit}, with `--samples {}`:\n\n```\n{title}\nmachine: {machine}\n```\n\n{table}{END}\n",
        settings.samples
    );
    super::write_section(&path, (BEGIN, END, HEADING), &block)?;
    Ok(path)
}

//! `bench`: sinew's benchmarks, printed as a table against the reference plugins measured in
//! the same run on the same machine.
//!
//! `cargo run -p sinew-e2e --release --bin bench -- plugin [--iterations N]`
//! `cargo run -p sinew-e2e --release --bin bench -- cni [--iterations N] [--parallel N]`
//! `cargo run -p sinew-e2e --release --bin bench -- e2e [--pods N] [--parallel N] [--samples N] [--mib N] [--write-docs]`
//! `cargo run -p sinew-e2e --release --bin bench -- scale [--nodes N] [--pods-per-node N] [--agents N] [--samples N] [--churn-per-s N] [--write-docs]`
//! (see `sinew_e2e::scale`)
//! `cargo run -p sinew-e2e --release --bin bench -- policy [--samples N] [--write-docs]` (see
//! `sinew_e2e::policy_scale`)
//!
//! `plugin`: the plugin binaries exec'd directly as a runtime does (see [`plugin`]): sinew,
//! ptp + host-local, a null plugin and the kernel's own veth deletion in one run. Needs root;
//! `SINEW_PLUGIN_BIN=<path>` measures another build of `sinew` (e.g. the static musl one).
//!
//! `cni`: ADD and DEL latency (p50/p99, sequential) and the wall time of N parallel ADDs then
//! DELs, for sinew and for the reference `ptp` + `host-local` pair, both driven through upstream
//! `cnitool` (libcni) inside a node namespace the benchmark creates. Needs root.
//!
//! `e2e`: a 3-node local cluster (see [`e2e`]): pods network-ready per second, ADD/DEL to
//! pool status, live mode-switch convergence and pod-to-pod TCP throughput against a bare
//! veth pair. `--write-docs` also writes the table into docs/benchmarks.md. Needs root.
//!
//! `policy`: NetworkPolicy at scale (see [`policy`]): one real agent against 10,000 pods, 500
//! namespaces and 1,000 NetworkPolicies in the real API server: its memory with policy off and
//! on, CPU per change, policy edit to the node's kernel table. Needs root.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use sinew_e2e::netsim;
use sinew_e2e::plugin::{Cnitool, PluginNode, REFERENCE_PLUGIN_DIR, pool, sinew_bin_dir};
use sinew_e2e::tools::Tools;
use sinew_node_lib::netns::NetNs;

#[path = "bench/e2e.rs"]
mod e2e;
#[path = "bench/plugin.rs"]
mod plugin;
#[path = "bench/policy.rs"]
mod policy;
#[path = "bench/scale.rs"]
mod scale;

const USAGE: &str = "usage: bench plugin [--iterations N]\n       bench cni [--iterations N] [--parallel N]\n       bench e2e [--pods N] [--parallel N] [--samples N] [--mib N] [--write-docs]\n       bench scale [--nodes N] [--pods-per-node N] [--agents N] [--samples N] [--churn-per-s N] [--write-docs]\n       bench policy [--samples N] [--write-docs]";

struct Args {
    iterations: usize,
    /// Concurrent ADDs/DELs; the default depends on the benchmark.
    parallel: Option<usize>,
    pods: usize,
    /// Changes timed per kind; the default depends on the benchmark.
    samples: Option<usize>,
    mib: usize,
    write_docs: bool,
    /// `bench scale`'s sizes (its defaults: Kubernetes' limits).
    nodes: Option<usize>,
    pods_per_node: Option<usize>,
    agents: Option<usize>,
    churn_per_s: Option<usize>,
}

impl Args {
    fn parallel_or(&self, default: usize) -> usize {
        self.parallel.unwrap_or(default)
    }
}

fn parse_args() -> Result<(String, Args), String> {
    let mut args = std::env::args().skip(1);
    let what = args.next().ok_or(USAGE)?;
    let mut parsed = Args {
        iterations: 200,
        parallel: None,
        pods: 60,
        samples: None,
        mib: 256,
        write_docs: false,
        nodes: None,
        pods_per_node: None,
        agents: None,
        churn_per_s: None,
    };
    while let Some(flag) = args.next() {
        if flag == "--write-docs" {
            parsed.write_docs = true;
            continue;
        }
        // Only the agents may be none (the operator alone).
        let value: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0 || flag == "--agents")
            .ok_or(format!("{flag} needs a positive number\n{USAGE}"))?;
        match flag.as_str() {
            "--iterations" => parsed.iterations = value,
            "--parallel" => parsed.parallel = Some(value),
            "--pods" => parsed.pods = value,
            "--samples" => parsed.samples = Some(value),
            "--mib" => parsed.mib = value,
            "--nodes" => parsed.nodes = Some(value),
            "--pods-per-node" => parsed.pods_per_node = Some(value),
            "--agents" => parsed.agents = Some(value),
            "--churn-per-s" => parsed.churn_per_s = Some(value),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok((what, parsed))
}

fn main() -> ExitCode {
    let (what, args) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match what.as_str() {
        "plugin" => plugin_floor(&args),
        "cni" => cni(&args),
        "e2e" => local_cluster(&args),
        "scale" => scale::run(&args, &machine()),
        "policy" => policy::run(args.samples.unwrap_or(40), args.write_docs, &machine()),
        other => Err(format!(
            "unknown benchmark {other:?} (known: plugin, cni, e2e, scale, policy)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One plugin configuration under test.
struct Subject {
    label: &'static str,
    network: &'static str,
}

#[derive(Default)]
struct Measured {
    add: Vec<Duration>,
    del: Vec<Duration>,
    parallel_add: Duration,
    parallel_del: Duration,
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn timed_run(
    cnitool: &Cnitool,
    node: &NetNs,
    verb: &str,
    network: &str,
    pod: &Path,
) -> Result<Duration, String> {
    let start = Instant::now();
    let run = cnitool.run(node, verb, network, pod, None);
    let took = start.elapsed();
    if !run.success {
        return Err(format!(
            "{network} {verb} failed: {} {}",
            run.stdout, run.stderr
        ));
    }
    Ok(took)
}

fn measure(
    cnitool: &Cnitool,
    node: &NetNs,
    subject: &Subject,
    args: &Args,
) -> Result<Measured, String> {
    let mut m = Measured::default();
    let pod = netsim::netns("bench");
    // Warm-up: first exec of each binary pays page-cache misses.
    for _ in 0..5 {
        timed_run(cnitool, node, "add", subject.network, pod.path())?;
        timed_run(cnitool, node, "del", subject.network, pod.path())?;
    }
    for _ in 0..args.iterations {
        m.add.push(timed_run(
            cnitool,
            node,
            "add",
            subject.network,
            pod.path(),
        )?);
        m.del.push(timed_run(
            cnitool,
            node,
            "del",
            subject.network,
            pod.path(),
        )?);
    }
    let pods: Vec<NetNs> = (0..args.parallel_or(100))
        .map(|_| netsim::netns("bench"))
        .collect();
    for (verb, slot) in [("add", &mut m.parallel_add), ("del", &mut m.parallel_del)] {
        let start = Instant::now();
        let failures: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .map(|p| s.spawn(move || timed_run(cnitool, node, verb, subject.network, p.path())))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().and_then(Result::err))
                .collect()
        });
        *slot = start.elapsed();
        if let Some(first) = failures.first() {
            return Err(format!(
                "{} of {} parallel {verb}s failed; first: {first}",
                failures.len(),
                pods.len()
            ));
        }
    }
    Ok(m)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: f64 = m
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(format!(", {:.0} GiB RAM", kib / (1024.0 * 1024.0)))
        })
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}{memory}", kernel.trim())
}

fn cni(args: &Args) -> Result<(), String> {
    if !sinew_e2e::require::is_root() {
        return Err("the cni benchmark creates network namespaces: run it as root".into());
    }
    let tools = Tools::locate().map_err(|e| e.to_string())?;
    let node = PluginNode::new("bench-node");
    let blocks: Vec<String> = (0..8).map(|i| format!("10.90.{i}.0/24")).collect();
    let block_refs: Vec<&str> = blocks.iter().map(String::as_str).collect();
    node.set_pools(vec![pool("bench", "10.90.0.0/16", &block_refs)]);
    let conf_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let host_local_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let conflists = [
        json!({"cniVersion": "1.0.0", "name": "sinew", "plugins": [{
            "type": "sinew", "stateDir": node.state.path(), "logFile": node.state.path().join("cni.log"),
        }]}),
        json!({"cniVersion": "1.0.0", "name": "ptp-host-local", "plugins": [{
            "type": "ptp", "ipMasq": false, "mtu": 1450,
            "ipam": {"type": "host-local", "dataDir": host_local_dir.path(),
                     "ranges": [[{"subnet": "10.91.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]},
        }]}),
    ];
    for c in &conflists {
        let name = c["name"].as_str().unwrap_or("net");
        std::fs::write(
            conf_dir.path().join(format!("{name}.conflist")),
            c.to_string(),
        )
        .map_err(|e| e.to_string())?;
    }
    let cnitool = Cnitool {
        bin: tools.path("cnitool").map_err(|e| e.to_string())?,
        conf_dir: conf_dir.path().to_path_buf(),
        plugin_dirs: vec![sinew_bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
    };
    let subjects = [
        Subject {
            label: "sinew",
            network: "sinew",
        },
        Subject {
            label: "ptp+host-local",
            network: "ptp-host-local",
        },
    ];
    let mut results = Vec::new();
    for s in &subjects {
        eprintln!(
            "measuring {} ({} sequential ADD/DEL, {} parallel)...",
            s.label,
            args.iterations,
            args.parallel_or(100)
        );
        results.push(measure(&cnitool, &node.ns, s, args)?);
    }
    let (ours, reference) = (&results[0], &results[1]);
    let rows: [(&str, f64, f64); 6] = [
        (
            "ADD p50 (ms)",
            ms(percentile(&ours.add, 0.5)),
            ms(percentile(&reference.add, 0.5)),
        ),
        (
            "ADD p99 (ms)",
            ms(percentile(&ours.add, 0.99)),
            ms(percentile(&reference.add, 0.99)),
        ),
        (
            "DEL p50 (ms)",
            ms(percentile(&ours.del, 0.5)),
            ms(percentile(&reference.del, 0.5)),
        ),
        (
            "DEL p99 (ms)",
            ms(percentile(&ours.del, 0.99)),
            ms(percentile(&reference.del, 0.99)),
        ),
        (
            "parallel ADDs, wall (ms)",
            ms(ours.parallel_add),
            ms(reference.parallel_add),
        ),
        (
            "parallel DELs, wall (ms)",
            ms(ours.parallel_del),
            ms(reference.parallel_del),
        ),
    ];
    println!(
        "CNI benchmark via cnitool (libcni): {} sequential ADD+DEL, {} parallel",
        args.iterations,
        args.parallel_or(100)
    );
    println!("machine: {}", machine());
    println!();
    println!("| metric | sinew | ptp+host-local | sinew/reference |");
    println!("|---|---:|---:|---:|");
    for (name, a, b) in rows {
        println!("| {name} | {a:.2} | {b:.2} | {:.2} |", a / b);
    }
    Ok(())
}

/// `bench plugin`: the plugin binaries exec'd directly (see [`plugin`]).
fn plugin_floor(args: &Args) -> Result<(), String> {
    if !sinew_e2e::require::is_root() {
        return Err("the plugin benchmark creates network namespaces: run it as root".into());
    }
    let sinew = std::env::var_os("SINEW_PLUGIN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(sinew_e2e::plugin::sinew_binary);
    let settings = plugin::Settings {
        iterations: args.iterations,
        sinew,
    };
    eprintln!(
        "measuring sinew, ptp+host-local, /bin/true and the kernel's datapath for a pod, interleaved ({} rounds)...",
        settings.iterations
    );
    let measured = plugin::run(&settings);
    let leaked = own_namespaces();
    let measured = measured?;
    if !leaked.is_empty() {
        return Err(format!("network namespaces left behind: {leaked:?}"));
    }
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    println!(
        "CNI plugins exec'd directly (posix_spawn, CNI env, config on stdin): {} rounds of ADD+DEL each, interleaved (load average after the run: {load})",
        settings.iterations
    );
    println!("machine: {}", machine());
    println!();
    print!("{}", plugin::table(&measured));
    Ok(())
}

/// Network namespaces of this process still listed by `ip netns list`.
fn own_namespaces() -> Vec<String> {
    let prefix = format!("snt{}-", std::process::id());
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(&prefix))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn local_cluster(args: &Args) -> Result<(), String> {
    if !sinew_e2e::require::is_root() {
        return Err("the e2e benchmark creates network namespaces: run it as root".into());
    }
    let settings = e2e::Settings {
        pods: args.pods,
        parallel: args.parallel_or(8),
        samples: args.samples.unwrap_or(10),
        mib: args.mib,
    };
    // Other work on the machine shows in every number: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    let rows = runtime.block_on(e2e::run(&settings));
    drop(runtime);
    let leaked = own_namespaces();
    let rows = rows?;
    if !leaked.is_empty() {
        return Err(format!("network namespaces left behind: {leaked:?}"));
    }
    let title = format!(
        "End-to-end benchmark on a 3-node local cluster: {} pods, {} concurrent CNI calls (load average before the run: {load})",
        settings.pods, settings.parallel
    );
    let table = e2e::table(&rows);
    println!("{title}");
    println!("machine: {}", machine());
    println!();
    print!("{table}");
    if args.write_docs {
        let path = e2e::write_docs(&title, &machine(), &table, &settings)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The day and the commit a benchmark ran at (`<commit> with local changes` when the tree
/// differs from it), for the docs.
fn run_stamp(root: &Path) -> (String, String) {
    let root = root.display().to_string();
    let date = command_output("date", &["-u", "+%Y-%m-%d"]).unwrap_or_else(|| "?".into());
    let commit = command_output("git", &["-C", &root, "rev-parse", "--short", "HEAD"])
        .map(|c| {
            let dirty = command_output(
                "git",
                &["-C", &root, "status", "--porcelain", "--untracked-files=no"],
            )
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c} with local changes")
            } else {
                c
            }
        })
        .unwrap_or_else(|| "unknown".into());
    (date, commit)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Replaces the part of the Markdown file `path` between the `begin` and `end` markers with
/// `block` (which carries the markers), keeping everything else, notes after the end marker
/// included; appends `heading` and `block` when the markers are missing (refused when the
/// heading is there without them).
fn write_section(
    path: &Path,
    (begin, end, heading): (&str, &str, &str),
    block: &str,
) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let updated = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => {
            let after = &text[e + end.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{after}", &text[..b])
        }
        _ if text.contains(heading) => {
            return Err(format!(
                "{} has a \"{heading}\" section without the markers; remove it or add them",
                path.display()
            ));
        }
        _ => format!("{}\n\n{heading}\n\n{block}", text.trim_end()),
    };
    std::fs::write(path, updated).map_err(|e| format!("writing {}: {e}", path.display()))
}

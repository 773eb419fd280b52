//! `bench plugin`: the plugin binaries exec'd directly, as containerd and CRI-O do (libcni
//! runs the binary with the `CNI_*` environment and the network configuration on stdin), so
//! every sample is one process: spawned, fed, waited for. No `cnitool` in between.
//!
//! Subjects, interleaved in every round so that a burst of other work on the machine hits all
//! of them alike:
//! - `sinew` (its IPAM store on disk, logging to a file, as the chart configures it);
//! - the reference `ptp` with `host-local` IPAM (ptp execs host-local itself, as the
//!   conflist chain does under libcni);
//! - a null plugin, `/bin/true`: the cost of spawning any process at all;
//! - the kernel alone: a pod's veth, address, neighbour and routes programmed from this
//!   process with sinew's own datapath code, the kernel's part of an ADD, then torn down as a
//!   DEL does (one `RTM_DELLINK`), the floor under any plugin's DEL;
//! - the disk alone: the crash-safe replacement of a small file in sinew's state directory
//!   (write a temporary file, `fdatasync`, rename), what a store kept across a power loss
//!   would add to every ADD (sinew's plugin does not flush: decision 65,
//!   docs/decisions/0065-unflushed-ipam-store.md).
//!
//! The spawner runs on a thread that has joined the node namespace, so the children start
//! there without a `pre_exec` hook: `std::process::Command` then uses `posix_spawn`
//! (`clone(CLONE_VM|CLONE_VFORK)`), the cheapest way a runtime can start a plugin. The pod
//! namespaces are made before the timed region, as a runtime makes the sandbox first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sinew_cni::datapath::{Datapath, KernelDatapath, host_veth_name};
use sinew_crds::PoolMode;
use sinew_e2e::netsim;
use sinew_e2e::plugin::{PluginNode, REFERENCE_PLUGIN_DIR, pool};
use sinew_node_lib::ipam::{Attachment, HeldAddress};
use sinew_node_lib::netns::NetNs;

type Result<T> = std::result::Result<T, String>;

/// What to measure, from the command line.
pub struct Settings {
    pub iterations: usize,
    /// `sinew` binary to measure (default: the release build of this workspace).
    pub sinew: PathBuf,
}

/// Warm-up rounds (page cache, first-use allocations in the kernel), not counted.
const WARMUP: usize = 10;

/// One plugin under test: its binary, configuration and search path.
struct Subject {
    label: &'static str,
    bin: PathBuf,
    config: String,
    cni_path: String,
}

impl Subject {
    /// The process a runtime would start: a fresh environment with the CNI variables only.
    fn command(&self, verb: &str, container_id: &str, pod: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", pod)
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id};K8S_POD_UID=uid-{container_id}"),
            )
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Spawns, writes the configuration, waits; the wall time of all of it.
    fn run(&self, verb: &str, container_id: &str, pod: &Path) -> Result<Duration> {
        let mut cmd = self.command(verb, container_id, pod);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.bin.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin may exit without reading (the null plugin does): EPIPE is fine.
            let _ = stdin.write_all(self.config.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for {}: {e}", self.bin.display()))?;
        let took = start.elapsed();
        if !out.status.success() {
            return Err(format!(
                "{} {verb} failed ({}): {} {}",
                self.label,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(took)
    }
}

/// Samples of one subject.
#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// Everything one run measured.
pub struct Measured {
    sinew: Samples,
    reference: Samples,
    null: Samples,
    kernel_add: Vec<Duration>,
    kernel_del: Vec<Duration>,
    disk_sync: Vec<Duration>,
    startup: Vec<Duration>,
    null_startup: Vec<Duration>,
    binary: PathBuf,
    binary_size: u64,
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

/// Times the kernel's own part of a pod's interface, requested from this process with sinew's
/// datapath code (no plugin process, no store): the pod's veth pair with its address, pinned
/// gateway neighbour, default route and host route, exactly as an ADD programs them; then the
/// teardown a DEL does (one `RTM_DELLINK` of the host end). Returns (setup, teardown).
fn kernel_datapath(pod: &NetNs, round: usize) -> Result<(Duration, Duration)> {
    let attachment = Attachment {
        container_id: format!("bench-kernel-{round}"),
        ifname: "eth0".into(),
        netns: None,
        host_veth: host_veth_name(&format!("bench-kernel-{round}"), "eth0"),
        mtu: 1450,
        addresses: vec![HeldAddress {
            ip: "10.92.0.2".parse().map_err(|e| format!("{e}"))?,
            pool: "bench".into(),
            block: "10.92.0.0/24".into(),
            generation: 0,
            mode: PoolMode::Vxlan,
        }],
        pod_namespace: None,
        pod_name: None,
        pod_uid: None,
        network: None,
        port_mappings: Vec::new(),
    };
    let start = Instant::now();
    KernelDatapath
        .setup(&attachment, pod)
        .map_err(|e| format!("kernel datapath: setup: {e}"))?;
    let set_up = start.elapsed();
    let start = Instant::now();
    KernelDatapath
        .teardown(&attachment)
        .map_err(|e| format!("kernel datapath: teardown: {e}"))?;
    Ok((set_up, start.elapsed()))
}

/// One crash-safe replacement of a small file in `dir`: write a temporary file, flush its data
/// to the disk, rename it over the old one. Returns its duration.
fn disk_sync(dir: &Path) -> Result<Duration> {
    let tmp = dir.join(".bench-sync.tmp");
    let start = Instant::now();
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&[b'x'; 600])
        .and_then(|()| f.sync_data())
        .and_then(|()| std::fs::rename(&tmp, dir.join("bench-sync")))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    Ok(start.elapsed())
}

/// The whole measurement; runs on a thread inside the node namespace.
fn measure_in_node(
    settings: &Settings,
    subjects: &[Subject; 3],
    pods: &[NetNs; 4],
    state_dir: &Path,
) -> Result<Measured> {
    let mut samples: [Samples; 3] = Default::default();
    let mut kernel_add = Vec::new();
    let mut kernel_del = Vec::new();
    let mut disk = Vec::new();
    let mut startup = Vec::new();
    let mut null_startup = Vec::new();
    let version_of = |s: &Subject| Subject {
        label: s.label,
        bin: s.bin.clone(),
        config: json!({"cniVersion": "1.1.0"}).to_string(),
        cni_path: s.cni_path.clone(),
    };
    let sinew_version = version_of(&subjects[0]);
    let null_version = version_of(&subjects[2]);
    for round in 0..WARMUP + settings.iterations {
        let counted = round >= WARMUP;
        // Each subject takes each place in the round in turn: what ran just before a DEL
        // (the kernel's pending RCU work, the caches) differs by place.
        for k in 0..subjects.len() {
            let i = (k + round) % subjects.len();
            let s = &subjects[i];
            let id = format!("bench-{}-{round}", s.label.replace('+', "-"));
            let add = s.run("ADD", &id, pods[i].path())?;
            let del = s.run("DEL", &id, pods[i].path())?;
            if counted {
                samples[i].add.push(add);
                samples[i].del.push(del);
            }
        }
        let (ka, kd) = kernel_datapath(&pods[3], round)?;
        let d = disk_sync(state_dir)?;
        let v = sinew_version.run("VERSION", "version", pods[3].path())?;
        let n = null_version.run("VERSION", "version", pods[3].path())?;
        if counted {
            kernel_add.push(ka);
            kernel_del.push(kd);
            disk.push(d);
            startup.push(v);
            null_startup.push(n);
        }
    }
    let [sinew, reference, null] = samples;
    let binary_size = std::fs::metadata(&settings.sinew)
        .map_err(|e| format!("{}: {e}", settings.sinew.display()))?
        .len();
    Ok(Measured {
        sinew,
        reference,
        null,
        kernel_add,
        kernel_del,
        disk_sync: disk,
        startup,
        null_startup,
        binary: settings.sinew.clone(),
        binary_size,
    })
}

/// Runs the benchmark: a node namespace with sinew's node state, one pod namespace per
/// subject (all removed on return, failure included).
pub fn run(settings: &Settings) -> Result<Measured> {
    let node = PluginNode::new("bench-node");
    let blocks: Vec<String> = (0..8).map(|i| format!("10.90.{i}.0/24")).collect();
    let block_refs: Vec<&str> = blocks.iter().map(String::as_str).collect();
    node.set_pools(vec![pool("bench", "10.90.0.0/16", &block_refs)]);
    let host_local_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let sinew_dir = settings
        .sinew
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let subjects = [
        Subject {
            label: "sinew",
            bin: settings.sinew.clone(),
            config: json!({
                "cniVersion": "1.0.0", "name": "sinew", "type": "sinew",
                "stateDir": node.state.path(), "logFile": node.state.path().join("cni.log"),
            })
            .to_string(),
            cni_path: sinew_dir.display().to_string(),
        },
        Subject {
            label: "ptp+host-local",
            bin: Path::new(REFERENCE_PLUGIN_DIR).join("ptp"),
            config: json!({
                "cniVersion": "1.0.0", "name": "ptp-host-local", "type": "ptp",
                "ipMasq": false, "mtu": 1450,
                "ipam": {"type": "host-local", "dataDir": host_local_dir.path(),
                         "ranges": [[{"subnet": "10.91.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]},
            })
            .to_string(),
            cni_path: REFERENCE_PLUGIN_DIR.to_string(),
        },
        Subject {
            label: "null",
            bin: PathBuf::from("/bin/true"),
            config: json!({"cniVersion": "1.0.0", "name": "null", "type": "true"}).to_string(),
            cni_path: "/bin".to_string(),
        },
    ];
    let pods = [
        netsim::netns("bench"),
        netsim::netns("bench"),
        netsim::netns("bench"),
        netsim::netns("bench"),
    ];
    node.ns
        .run_in(|| measure_in_node(settings, &subjects, &pods, node.state.path()))
        .map_err(|e| format!("entering the node namespace: {e}"))?
}

/// Metric name, sinew / reference / null samples, kernel samples (DEL only), percentile.
type TableRow<'a> = (
    &'a str,
    &'a [Duration],
    &'a [Duration],
    &'a [Duration],
    Option<&'a [Duration]>,
    f64,
);

/// The result table (markdown) and a few lines about the binary.
pub fn table(m: &Measured) -> String {
    let p = |s: &[Duration], q: f64| ms(percentile(s, q));
    let mut out = String::new();
    out.push_str("| metric | sinew | ptp+host-local | null (`/bin/true`) | kernel datapath teardown | sinew - null | ptp+host-local - null | (sinew - null) / (ptp - null) |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let rows: [TableRow<'_>; 4] = [
        (
            "ADD p50 (ms)",
            &m.sinew.add,
            &m.reference.add,
            &m.null.add,
            None,
            0.5,
        ),
        (
            "ADD p99 (ms)",
            &m.sinew.add,
            &m.reference.add,
            &m.null.add,
            None,
            0.99,
        ),
        (
            "DEL p50 (ms)",
            &m.sinew.del,
            &m.reference.del,
            &m.null.del,
            Some(&m.kernel_del),
            0.5,
        ),
        (
            "DEL p99 (ms)",
            &m.sinew.del,
            &m.reference.del,
            &m.null.del,
            Some(&m.kernel_del),
            0.99,
        ),
    ];
    for (name, ours, reference, null, kernel, q) in rows {
        let (a, b, n) = (p(ours, q), p(reference, q), p(null, q));
        let kernel = kernel.map_or("-".to_string(), |k| format!("{:.2}", p(k, q)));
        out.push_str(&format!(
            "| {name} | {a:.2} | {b:.2} | {n:.2} | {kernel} | {:.2} | {:.2} | {:.2} |\n",
            a - n,
            b - n,
            (a - n) / (b - n)
        ));
    }
    out.push('\n');
    let del_vs_kernel = |q: f64| p(&m.sinew.del, q) / p(&m.kernel_del, q);
    out.push_str(&format!(
        "- sinew DEL / kernel teardown: p50 {:.2}, p99 {:.2}\n",
        del_vs_kernel(0.5),
        del_vs_kernel(0.99)
    ));
    let spread = |what: &str, samples: &[Duration]| {
        format!(
            "- {what}: p50 {:.2} ms, p99 {:.2} ms\n",
            p(samples, 0.5),
            p(samples, 0.99)
        )
    };
    out.push_str(&spread(
        "kernel datapath of a pod (veth pair, address, neighbour, routes; in-process)",
        &m.kernel_add,
    ));
    // What no plugin can go below: starting a process, then the kernel's work for the pod.
    let floor = |q: f64| p(&m.null.add, q) + p(&m.kernel_add, q);
    out.push_str(&format!(
        "- ADD floor (null + kernel datapath, each at its own percentile): p50 {:.2} ms, p99 {:.2} ms; sinew ADD / floor: p50 {:.2}, p99 {:.2}\n",
        floor(0.5),
        floor(0.99),
        p(&m.sinew.add, 0.5) / floor(0.5),
        p(&m.sinew.add, 0.99) / floor(0.99)
    ));
    out.push_str(&spread(
        "disk flush (600 B to a temporary file, `fdatasync`, rename, in sinew's state directory; what a store kept across a power loss would add to every ADD)",
        &m.disk_sync,
    ));
    out.push_str(&format!(
        "- `sinew` binary: {} bytes ({:.2} MiB), {}\n",
        m.binary_size,
        m.binary_size as f64 / (1024.0 * 1024.0),
        describe_binary(&m.binary)
    ));
    out.push_str(&format!(
        "- startup (`CNI_COMMAND=VERSION`, spawn to exit): sinew p50 {:.2} ms, p99 {:.2} ms; `/bin/true` p50 {:.2} ms, p99 {:.2} ms\n",
        p(&m.startup, 0.5),
        p(&m.startup, 0.99),
        p(&m.null_startup, 0.5),
        p(&m.null_startup, 0.99)
    ));
    out
}

/// `file`'s description of the binary (static or dynamic, stripped or not), or its path.
fn describe_binary(path: &Path) -> String {
    Command::new("file")
        .arg("-b")
        .arg(path)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
            text.split(", ")
                .filter(|part| {
                    part.contains("linked") || part.contains("stripped") || part.contains("ELF")
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| path.display().to_string())
}

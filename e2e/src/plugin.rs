//! Running the `sinew` plugin the ways a runtime does: exec'd directly with the CNI
//! environment, or through upstream `cnitool` (libcni), always inside a node namespace.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde_json::Value;
use sinew_crds::PoolMode;
use sinew_crds::node::{NodeState, PoolState};
use sinew_node_lib::ipam::{IpamState, Store};
use sinew_node_lib::netns::NetNs;
use sinew_node_lib::node_state;

use crate::netsim::in_netns;
use crate::tools::repo_root;

/// Directory of the Debian `containernetworking-plugins` reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Path of binary `bin` of workspace package `package`, built (once per test process, in
/// the profile of the running executable) if needed.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(bin) {
        return p.clone();
    }
    // Test binaries live in target/<profile>/deps, other binaries in target/<profile>.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .map(|d| {
            if d.ends_with("deps") {
                d.parent().map(Path::to_path_buf).unwrap_or(d)
            } else {
                d
            }
        })
        .unwrap_or_else(|| repo_root().join("target/debug"));
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(repo_root())
        .args(["build", "-q", "-p", package, "--bin", bin]);
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "building {bin} failed");
    let path = profile_dir.join(bin);
    built.insert(bin.to_string(), path.clone());
    path
}

/// Path of the `sinew` plugin binary.
pub fn sinew_binary() -> PathBuf {
    workspace_binary("sinew-cni", "sinew")
}

/// A directory holding `sinew` (and nothing else), for `CNI_PATH`.
pub fn sinew_bin_dir() -> PathBuf {
    sinew_binary()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Outcome of one plugin run.
#[derive(Debug, Clone)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout as JSON (the result, or the CNI error object).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The CNI error code, if the run failed.
    pub fn error_code(&self) -> Option<u64> {
        (!self.success).then(|| self.json()["code"].as_u64().unwrap_or(0))
    }

    /// Panics with the plugin's own words unless it succeeded.
    pub fn ok(self) -> Run {
        assert!(
            self.success,
            "plugin failed: {} {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// One direct exec of the plugin binary, as a runtime would.
#[derive(Debug, Clone)]
pub struct Exec {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
}

impl Exec {
    pub fn new(command: &str, container_id: &str, netns: Option<&Path>) -> Exec {
        Exec {
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.map(Path::to_path_buf),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id};K8S_POD_UID=uid-{container_id}"
            ),
        }
    }

    /// Builds the process without starting it (for tests that kill it mid-way).
    pub fn command(&self, node: &NetNs) -> Command {
        let mut cmd = Command::new(sinew_binary());
        cmd.env_clear()
            .env("CNI_COMMAND", &self.command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_ARGS", &self.args)
            .env("CNI_PATH", sinew_bin_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = &self.netns {
            cmd.env("CNI_NETNS", ns);
        }
        in_netns(&mut cmd, node);
        cmd
    }

    /// Runs the plugin inside `node` with `config` on stdin.
    pub fn run(&self, node: &NetNs, config: &str) -> Run {
        let mut child = self.command(node).spawn().expect("spawning sinew");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(config.as_bytes());
        }
        let out = child.wait_with_output().expect("waiting for sinew");
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Upstream `cnitool` with a conf directory and plugin search path.
#[derive(Debug, Clone)]
pub struct Cnitool {
    pub bin: PathBuf,
    pub conf_dir: PathBuf,
    pub plugin_dirs: Vec<PathBuf>,
}

impl Cnitool {
    /// Runs `cnitool <verb> <network> <pod netns>` inside `node` for pod `default/cnitool-pod`;
    /// `cap_args` is libcni's `CAP_ARGS` (runtime capabilities such as port mappings).
    pub fn run(
        &self,
        node: &NetNs,
        verb: &str,
        network: &str,
        pod_netns: &Path,
        cap_args: Option<&str>,
    ) -> Run {
        self.run_for_pod(
            node,
            verb,
            network,
            pod_netns,
            cap_args,
            ("default", "cnitool-pod", "uid-cnitool-pod"),
        )
    }

    /// [`Cnitool::run`] for a given pod `(namespace, name, uid)` (passed in `CNI_ARGS`, as the
    /// kubelet's runtime does).
    pub fn run_for_pod(
        &self,
        node: &NetNs,
        verb: &str,
        network: &str,
        pod_netns: &Path,
        cap_args: Option<&str>,
        (namespace, pod, uid): (&str, &str, &str),
    ) -> Run {
        let cni_path = self
            .plugin_dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut cmd = Command::new(&self.bin);
        cmd.arg(verb)
            .arg(network)
            .arg(pod_netns)
            .env("NETCONFPATH", &self.conf_dir)
            .env("CNI_PATH", cni_path)
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_UID={uid}"),
            );
        if let Some(caps) = cap_args {
            cmd.env("CAP_ARGS", caps);
        }
        in_netns(&mut cmd, node);
        let out = cmd.output().expect("running cnitool");
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The address of every [`PluginNode`] (inside its own namespace).
pub const NODE_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 78, 0, 1));

/// A node namespace with its own sinew state directory, for plugin-level tests.
pub struct PluginNode {
    pub ns: NetNs,
    pub state: tempfile::TempDir,
}

impl PluginNode {
    /// A node namespace (forwarding on, [`NODE_IP`] on its loopback, as a node has an
    /// address of its own) and an empty state directory.
    pub fn new(tag: &str) -> PluginNode {
        // This harness plays the node agent for plugin-only tests: it writes node.json, and
        // it turns forwarding on as the agent does on every node it serves.
        let ns = crate::netsim::node_netns(tag);
        crate::netsim::sysctl(&ns, "net.ipv4.ip_forward", "1");
        crate::netsim::sysctl(&ns, "net.ipv6.conf.all.forwarding", "1");
        crate::netsim::add_loopback_address(&ns, NODE_IP);
        PluginNode {
            ns,
            state: tempfile::Builder::new()
                .prefix("sinew-state-")
                .tempdir()
                .expect("state directory"),
        }
    }

    /// Writes the node state the agent would: these pools, owning these blocks.
    pub fn set_pools(&self, pools: Vec<PoolState>) {
        let state = NodeState {
            node: "test-node".into(),
            pools,
            ready_boot: None,
        };
        node_state::store(&state, self.state.path()).expect("writing node state");
    }

    /// The plugin's network configuration (one plugin, not a list) for `version`.
    pub fn config(&self, version: &str) -> String {
        serde_json::json!({
            "cniVersion": version,
            "name": "sinew-test",
            "type": "sinew",
            "stateDir": self.state.path(),
            "logFile": self.state.path().join("cni.log"),
            "logLevel": "debug",
        })
        .to_string()
    }

    /// The IPAM store as the plugin left it.
    pub fn ipam(&self) -> IpamState {
        Store::new(self.state.path())
            .snapshot()
            .expect("reading the IPAM store")
    }
}

/// A pool description for [`PluginNode::set_pools`].
pub fn pool(name: &str, cidr: &str, blocks: &[&str]) -> PoolState {
    PoolState {
        name: name.into(),
        cidr: cidr.into(),
        mode: PoolMode::Vxlan,
        mtu: 1450,
        disabled: false,
        reserved: Vec::new(),
        blocks: blocks.iter().map(|b| b.to_string()).collect(),
        exhausted: false,
    }
}

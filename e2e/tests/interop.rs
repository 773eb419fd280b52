//! sinew chained with the reference plugins (Debian `containernetworking-plugins`: `portmap`,
//! `bandwidth`, `tuning`), the whole chain driven by upstream `cnitool`, i.e. libcni, the
//! library containerd and CRI-O call plugins with. Needs root and the Go-built cnitool.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sinew_e2e::netsim::{self, EchoServer, in_netns, tcp_exchange};
use sinew_e2e::plugin::{Cnitool, NODE_IP, PluginNode, REFERENCE_PLUGIN_DIR, pool, sinew_bin_dir};
use sinew_e2e::require;
use sinew_e2e::tools::Tools;
use sinew_node_lib::netlink::Netlink;

/// The tools this test needs, or `None` after saying loudly why it skips.
fn requirements() -> Option<PathBuf> {
    if !require::is_root() {
        require::missing("interop", "creating network namespaces needs root");
        return None;
    }
    for plugin in ["portmap", "bandwidth", "tuning"] {
        if !Path::new(REFERENCE_PLUGIN_DIR).join(plugin).exists() {
            require::missing(
                "interop",
                &format!(
                    "{REFERENCE_PLUGIN_DIR}/{plugin} is missing (apt-get install containernetworking-plugins)"
                ),
            );
            return None;
        }
    }
    match Tools::locate().and_then(|t| t.path("cnitool")) {
        Ok(p) => Some(p),
        Err(e) => {
            require::missing("interop", &e.to_string());
            None
        }
    }
}

fn run_in(node: &PluginNode, program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    in_netns(&mut cmd, &node.ns);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chain_conflist(node: &PluginNode, with_portmap: bool) -> Value {
    let mut conf = json!({
        // The Debian reference plugins (1.1.x) speak up to spec 1.0.0.
        "cniVersion": "1.0.0",
        "name": "sinew-chain",
        "plugins": [
            {
                "type": "sinew",
                "stateDir": node.state.path(),
                "logFile": node.state.path().join("cni.log"),
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            {"type": "tuning", "mtu": 1400, "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}},
        ]
    });
    if !with_portmap {
        if let Some(plugins) = conf["plugins"].as_array_mut() {
            plugins.retain(|p| p["type"] != "portmap");
        }
        conf["name"] = json!("sinew-chain-check");
    }
    conf
}

fn first_address(result: &Value) -> IpAddr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("an address in the result")
}

#[test]
fn reference_plugins_chained_after_sinew_work_through_libcni() {
    let Some(cnitool_bin) = requirements() else {
        return;
    };
    let node = PluginNode::new("node");
    // Dual-stack, so the reference plugins see both families in sinew's result.
    node.set_pools(vec![
        pool("v4", "10.77.0.0/16", &["10.77.3.0/26"]),
        pool("v6", "fd77::/64", &["fd77::40/122"]),
    ]);
    let conf_dir = tempfile::tempdir().expect("conf dir");
    for (file, with_portmap) in [
        ("10-sinew-chain.conflist", true),
        ("20-sinew-chain-check.conflist", false),
    ] {
        std::fs::write(
            conf_dir.path().join(file),
            chain_conflist(&node, with_portmap).to_string(),
        )
        .expect("writing a conflist");
    }
    let cnitool = Cnitool {
        bin: cnitool_bin,
        conf_dir: conf_dir.path().to_path_buf(),
        plugin_dirs: vec![sinew_bin_dir(), PathBuf::from(REFERENCE_PLUGIN_DIR)],
    };
    let pod = netsim::netns("pod");
    let caps = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 8_000_000, "egressBurst": 80_000},
    })
    .to_string();

    let add = cnitool
        .run(&node.ns, "add", "sinew-chain", pod.path(), Some(&caps))
        .ok();
    let result: Value =
        serde_json::from_str(&add.stdout).expect("cnitool prints the chain's result");
    let ip = first_address(&result);
    let host_veth = result["interfaces"][0]["name"]
        .as_str()
        .expect("host veth")
        .to_string();

    // tuning saw sinew's prevResult: it found eth0 in the pod and changed it.
    let mut pod_nl = Netlink::in_netns(&pod).unwrap();
    assert_eq!(pod_nl.link_by_name("eth0").unwrap().unwrap().mtu, 1400);
    let redirects = pod
        .run_in(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/accept_redirects"))
        .unwrap()
        .unwrap();
    assert_eq!(redirects.trim(), "0");

    // bandwidth saw the host veth in prevResult and shaped it.
    let qdisc = run_in(&node, "tc", &["qdisc", "show", "dev", &host_veth]);
    assert!(
        qdisc.contains("tbf"),
        "no token bucket on {host_veth}: {qdisc}"
    );

    // portmap saw the pod address: the host port really reaches the pod.
    let server = EchoServer::start(&pod, SocketAddr::new(ip, 80));
    let reply =
        tcp_exchange(&node.ns, SocketAddr::new(NODE_IP, 18080)).expect("host port reaches the pod");
    assert!(reply.contains("hello"), "{reply}");
    drop(server);

    cnitool
        .run(&node.ns, "del", "sinew-chain", pod.path(), Some(&caps))
        .ok();
    assert!(
        pod_nl.link_by_name("eth0").unwrap().is_none(),
        "eth0 left in the pod"
    );
    assert_eq!(node.ipam().held(), 0);
    let nat = run_in(&node, "iptables-save", &["-t", "nat"]);
    assert!(!nat.contains("18080"), "portmap rules left behind:\n{nat}");
    assert!(
        !run_in(&node, "ip", &["link"]).contains(&host_veth),
        "host veth left behind"
    );

    // CHECK through libcni, every plugin of the chain verifying its part. (Debian's portmap
    // 1.1.1 compares its IPv4 rules against the IPv6 chain on CHECK and always fails, so
    // this chain leaves it out.)
    let add = cnitool
        .run(
            &node.ns,
            "add",
            "sinew-chain-check",
            pod.path(),
            Some(&caps),
        )
        .ok();
    let ip = first_address(&serde_json::from_str(&add.stdout).expect("result"));
    cnitool
        .run(
            &node.ns,
            "check",
            "sinew-chain-check",
            pod.path(),
            Some(&caps),
        )
        .ok();
    let eth0 = pod_nl.link_by_name("eth0").unwrap().unwrap();
    assert!(pod_nl.del_address(eth0.index, ip, 32).unwrap());
    let drift = cnitool.run(
        &node.ns,
        "check",
        "sinew-chain-check",
        pod.path(),
        Some(&caps),
    );
    assert!(
        !drift.success,
        "CHECK through libcni missed a removed address"
    );
    assert!(
        drift.stderr.contains(&format!("address {ip} is missing")),
        "{}",
        drift.stderr
    );
    cnitool
        .run(
            &node.ns,
            "del",
            "sinew-chain-check",
            pod.path(),
            Some(&caps),
        )
        .ok();
    assert_eq!(node.ipam().held(), 0);
}

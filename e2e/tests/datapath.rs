//! The `sinew` plugin binary in network namespaces the tests create: real veths, addresses,
//! routes and TCP traffic, the CNI commands and their edge cases, crash safety and
//! concurrency. Needs root; every namespace is removed on drop, even on failure.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use sinew_e2e::netsim::{self, EchoServer, tcp_exchange};
use sinew_e2e::plugin::{Exec, PluginNode, pool};
use sinew_e2e::require;
use sinew_node_lib::consts::{HOST_VETH_PREFIX, POD_ROUTE_PROTOCOL as ROUTE_PROTOCOL};
use sinew_node_lib::netlink::Netlink;
use sinew_node_lib::netns::NetNs;

fn root() -> bool {
    if require::is_root() {
        return true;
    }
    require::missing("datapath", "creating network namespaces needs root");
    false
}

const V4: &str = "10.77.0.0/16";
const V4_BLOCK: &str = "10.77.1.0/26";
const V6: &str = "fd77::/64";
const V6_BLOCK: &str = "fd77::/122";

fn single_stack() -> PluginNode {
    let node = PluginNode::new("node");
    node.set_pools(vec![pool("v4", V4, &[V4_BLOCK])]);
    node
}

fn dual_stack() -> PluginNode {
    let node = PluginNode::new("node");
    node.set_pools(vec![
        pool("v4", V4, &[V4_BLOCK]),
        pool("v6", V6, &[V6_BLOCK]),
    ]);
    node
}

fn add(node: &PluginNode, id: &str, pod: &NetNs) -> Value {
    Exec::new("ADD", id, Some(pod.path()))
        .run(&node.ns, &node.config("1.1.0"))
        .ok()
        .json()
}

fn del(node: &PluginNode, id: &str, pod: Option<&NetNs>) {
    Exec::new("DEL", id, pod.map(NetNs::path))
        .run(&node.ns, &node.config("1.1.0"))
        .ok();
}

fn addresses(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| {
            let a = ip["address"].as_str().expect("address");
            a.split('/').next().unwrap_or(a).parse().expect("an IP")
        })
        .collect()
}

fn host_veths(node: &PluginNode) -> BTreeSet<String> {
    Netlink::in_netns(&node.ns)
        .expect("netlink")
        .links()
        .expect("links")
        .into_iter()
        .filter(|l| l.name.starts_with(HOST_VETH_PREFIX))
        .map(|l| l.name)
        .collect()
}

fn sinew_routes(node: &PluginNode) -> usize {
    let mut nl = Netlink::in_netns(&node.ns).expect("netlink");
    [false, true]
        .into_iter()
        .flat_map(|v6| nl.routes(v6, 254).expect("routes"))
        .filter(|r| r.protocol == ROUTE_PROTOCOL)
        .count()
}

#[test]
fn add_connects_pods_to_each_other_and_to_their_node() {
    if !root() {
        return;
    }
    let node = dual_stack();
    let node_ip = sinew_e2e::plugin::NODE_IP;
    let (a, b) = (netsim::netns("pod"), netsim::netns("pod"));
    let ra = add(&node, "pod-a", &a);
    let rb = add(&node, "pod-b", &b);

    let ips_a = addresses(&ra);
    let ips_b = addresses(&rb);
    assert_eq!(
        ips_a.len(),
        2,
        "dual-stack pod gets one address per family: {ra}"
    );
    assert!(ips_a[0].is_ipv4() && ips_a[1].is_ipv6());
    assert_eq!(ra["interfaces"][1]["name"], "eth0");
    assert_eq!(ra["interfaces"][1]["mtu"], 1450);
    assert_eq!(ra["ips"][0]["gateway"], "169.254.1.1");

    for (server_ip, client_ip) in [(ips_a[0], ips_b[0]), (ips_a[1], ips_b[1])] {
        let server = EchoServer::start(&a, SocketAddr::new(server_ip, 0));
        let reply = tcp_exchange(&b, server.addr).expect("pod b reaches pod a");
        assert!(
            reply.contains(&client_ip.to_string()),
            "no NAT between pods: server saw {reply:?}, client is {client_ip}"
        );
        tcp_exchange(&node.ns, server.addr).expect("the node reaches the pod");
    }
    let on_node = EchoServer::start(&node.ns, SocketAddr::new(node_ip, 0));
    tcp_exchange(&a, on_node.addr).expect("the pod reaches its node");

    // The pod's MTU and the absence of DAD are visible in the pod itself.
    let mut pod_nl = Netlink::in_netns(&a).unwrap();
    let eth0 = pod_nl.link_by_name("eth0").unwrap().unwrap();
    assert_eq!(eth0.mtu, 1450);
    assert!(
        pod_nl
            .addresses(eth0.index)
            .unwrap()
            .contains(&(ips_a[1], 128))
    );
    del(&node, "pod-a", Some(&a));
    del(&node, "pod-b", Some(&b));
}

#[test]
fn del_removes_links_routes_addresses_and_allocations() {
    if !root() {
        return;
    }
    let node = dual_stack();
    let pod = netsim::netns("pod");
    add(&node, "gone", &pod);
    assert_eq!(host_veths(&node).len(), 1);
    assert_eq!(sinew_routes(&node), 2, "one host route per address");
    assert_eq!(node.ipam().held(), 2);

    del(&node, "gone", Some(&pod));
    assert!(host_veths(&node).is_empty(), "host veth left behind");
    assert_eq!(sinew_routes(&node), 0, "host routes left behind");
    assert!(
        Netlink::in_netns(&pod)
            .unwrap()
            .link_by_name("eth0")
            .unwrap()
            .is_none()
    );
    let ipam = node.ipam();
    assert_eq!(ipam.held(), 0);
    assert!(ipam.attachments.is_empty());
}

#[test]
fn add_twice_returns_the_same_result() {
    if !root() {
        return;
    }
    let node = single_stack();
    let pod = netsim::netns("pod");
    let first = add(&node, "twice", &pod);
    let second = add(&node, "twice", &pod);
    assert_eq!(first, second);
    assert_eq!(node.ipam().held(), 1);
    del(&node, "twice", Some(&pod));
}

#[test]
fn check_passes_after_add_and_reports_drift() {
    if !root() {
        return;
    }
    let node = single_stack();
    let pod = netsim::netns("pod");
    let ip = addresses(&add(&node, "drift", &pod))[0];
    let check =
        || Exec::new("CHECK", "drift", Some(pod.path())).run(&node.ns, &node.config("1.1.0"));
    check().ok();

    let mut nl = Netlink::in_netns(&pod).unwrap();
    let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
    let default = nl
        .routes(false, 254)
        .unwrap()
        .into_iter()
        .find(|r| r.prefix == 0)
        .expect("default route");
    assert!(nl.del_route(&default).unwrap());
    let run = check();
    assert_eq!(run.error_code(), Some(100));
    assert!(
        run.json()["msg"]
            .as_str()
            .unwrap()
            .contains("default route"),
        "{}",
        run.stdout
    );
    nl.add_route(&default).unwrap();
    check().ok();

    nl.del_address(eth0.index, ip, 32).unwrap();
    nl.add_address(eth0.index, "10.77.9.9".parse().unwrap(), 32, false)
        .unwrap();
    let msg = check().json()["msg"].as_str().unwrap().to_string();
    assert!(msg.contains(&format!("address {ip} is missing")), "{msg}");
    assert!(msg.contains("unexpected address 10.77.9.9/32"), "{msg}");

    let unknown =
        Exec::new("CHECK", "never-added", Some(pod.path())).run(&node.ns, &node.config("1.1.0"));
    assert_eq!(unknown.error_code(), Some(3));
    let old = Exec::new("CHECK", "drift", Some(pod.path())).run(&node.ns, &node.config("0.3.1"));
    assert_eq!(
        old.error_code(),
        Some(1),
        "CHECK does not exist before 0.4.0"
    );
    del(&node, "drift", Some(&pod));
}

#[test]
fn del_is_idempotent_and_survives_a_missing_netns() {
    if !root() {
        return;
    }
    let node = single_stack();
    del(&node, "never-added", None);
    let pod = netsim::netns("pod");
    add(&node, "twice-del", &pod);
    del(&node, "twice-del", Some(&pod));
    del(&node, "twice-del", Some(&pod));

    let doomed = netsim::netns("pod");
    let path = doomed.path().to_path_buf();
    add(&node, "ns-gone", &doomed);
    drop(doomed);
    Exec::new("DEL", "ns-gone", Some(&path))
        .run(&node.ns, &node.config("1.1.0"))
        .ok();
    assert_eq!(
        node.ipam().held(),
        0,
        "DEL with the netns gone still releases the address"
    );
    assert!(host_veths(&node).is_empty());
}

#[test]
fn gc_releases_everything_not_listed_and_status_reports_readiness() {
    if !root() {
        return;
    }
    let node = single_stack();
    let (keep, drop_me) = (netsim::netns("pod"), netsim::netns("pod"));
    add(&node, "keep", &keep);
    add(&node, "drop-me", &drop_me);
    let mut conf: Value = serde_json::from_str(&node.config("1.1.0")).unwrap();
    conf["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": "keep", "ifname": "eth0"}]);
    Exec::new("GC", "", None)
        .run(&node.ns, &conf.to_string())
        .ok();
    let ipam = node.ipam();
    assert_eq!(ipam.held(), 1);
    assert_eq!(host_veths(&node).len(), 1);
    assert!(
        Netlink::in_netns(&drop_me)
            .unwrap()
            .link_by_name("eth0")
            .unwrap()
            .is_none()
    );

    conf["cni.dev/valid-attachments"] = serde_json::json!([]);
    Exec::new("GC", "", None)
        .run(&node.ns, &conf.to_string())
        .ok();
    assert_eq!(
        node.ipam().held(),
        0,
        "GC with an empty list releases everything"
    );
    assert!(host_veths(&node).is_empty());

    Exec::new("STATUS", "", None)
        .run(&node.ns, &node.config("1.1.0"))
        .ok();
    node.set_pools(vec![pool("v4", V4, &[])]);
    let status = Exec::new("STATUS", "", None).run(&node.ns, &node.config("1.1.0"));
    assert_eq!(status.error_code(), Some(50), "{}", status.stdout);
    let old = Exec::new("GC", "", None).run(&node.ns, &node.config("1.0.0"));
    assert_eq!(old.error_code(), Some(1));
}

#[test]
fn exhausted_pool_answers_try_again_and_asks_the_agent_for_a_block() {
    if !root() {
        return;
    }
    let node = PluginNode::new("node");
    node.set_pools(vec![pool("tiny", "10.79.0.0/24", &["10.79.0.4/30"])]);
    let pods: Vec<NetNs> = (0..5).map(|_| netsim::netns("pod")).collect();
    for (i, pod) in pods.iter().take(4).enumerate() {
        add(&node, &format!("fill-{i}"), pod);
    }
    let run =
        Exec::new("ADD", "one-too-many", Some(pods[4].path())).run(&node.ns, &node.config("1.1.0"));
    assert_eq!(run.error_code(), Some(11), "{}", run.stdout);
    let msg = run.json()["msg"].as_str().unwrap().to_string();
    assert!(msg.contains("tiny") && msg.contains("test-node"), "{msg}");
    assert!(
        node.state.path().join("requests/tiny").exists(),
        "the agent was not asked for a block"
    );
    assert!(
        Netlink::in_netns(&pods[4])
            .unwrap()
            .link_by_name("eth0")
            .unwrap()
            .is_none()
    );
    assert_eq!(node.ipam().held(), 4, "a failed ADD holds nothing");
}

#[test]
fn hostile_input_gets_specific_errors() {
    if !root() {
        return;
    }
    let node = single_stack();
    let pod = netsim::netns("pod");
    let conf = node.config("1.1.0");

    let mut bad_id = Exec::new("ADD", "x", Some(pod.path()));
    bad_id.container_id = "../../etc".into();
    let run = bad_id.run(&node.ns, &conf);
    assert_eq!(run.error_code(), Some(4));
    assert!(run.stdout.contains("CNI_CONTAINERID"));

    let mut bad_if = Exec::new("ADD", "x", Some(pod.path()));
    bad_if.ifname = "eth0/../x".into();
    assert_eq!(bad_if.run(&node.ns, &conf).error_code(), Some(4));

    let file = node.state.path().join("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    let run = Exec::new("ADD", "x", Some(&file)).run(&node.ns, &conf);
    assert_eq!(run.error_code(), Some(4));
    assert!(
        run.stdout.contains("not a network namespace"),
        "{}",
        run.stdout
    );

    let wrong_type = conf.replace("\"logLevel\":\"debug\"", "\"logLevel\":3");
    let run = Exec::new("ADD", "x", Some(pod.path())).run(&node.ns, &wrong_type);
    assert_eq!(run.error_code(), Some(6));
    assert!(run.stdout.contains("logLevel"), "{}", run.stdout);

    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20));
    assert_eq!(
        Exec::new("ADD", "x", Some(pod.path()))
            .run(&node.ns, &huge)
            .error_code(),
        Some(6)
    );
    assert_eq!(node.ipam().held(), 0, "nothing allocated by refused input");

    let version = Exec::new("VERSION", "", None)
        .run(&node.ns, r#"{"cniVersion":"0.4.0"}"#)
        .ok()
        .json();
    assert_eq!(version["cniVersion"], "0.4.0");
    assert_eq!(version["supportedVersions"].as_array().unwrap().len(), 5);
}

#[test]
fn every_supported_version_gets_its_result_shape() {
    if !root() {
        return;
    }
    let node = single_stack();
    for v in sinew_cni::version::SUPPORTED {
        let pod = netsim::netns("pod");
        let id = format!("v{}", v.replace('.', ""));
        let result = Exec::new("ADD", &id, Some(pod.path()))
            .run(&node.ns, &node.config(v))
            .ok()
            .json();
        assert_eq!(result["cniVersion"], *v);
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            v.starts_with("0."),
            "{v}: {result}"
        );
        Exec::new("DEL", &id, Some(pod.path()))
            .run(&node.ns, &node.config(v))
            .ok();
    }
}

#[test]
fn a_hundred_concurrent_adds_get_distinct_addresses() {
    if !root() {
        return;
    }
    let node = PluginNode::new("node");
    node.set_pools(vec![pool("v4", V4, &["10.77.2.0/25"])]);
    let pods: Vec<NetNs> = (0..100).map(|_| netsim::netns("pod")).collect();
    let conf = node.config("1.1.0");
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    Exec::new("ADD", &format!("c{i}"), Some(pod.path()))
                        .run(&node.ns, conf)
                        .ok()
                        .json()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let ips: BTreeSet<IpAddr> = results.iter().flat_map(addresses).collect();
    assert_eq!(ips.len(), 100, "duplicate addresses handed out");
    assert_eq!(host_veths(&node).len(), 100);
    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || {
                Exec::new("DEL", &format!("c{i}"), Some(pod.path()))
                    .run(&node.ns, conf)
                    .ok()
            });
        }
    });
    assert_eq!(node.ipam().held(), 0);
    assert!(host_veths(&node).is_empty());
    assert_eq!(sinew_routes(&node), 0);
}

/// Deterministic pseudo-random numbers (xorshift), so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_9_at_random_points_leaves_no_duplicate_and_no_leak() {
    if !root() {
        return;
    }
    let node = single_stack();
    let pods: Vec<NetNs> = (0..12).map(|_| netsim::netns("pod")).collect();
    let conf = node.config("1.1.0");
    let seed = 0x5eed_0000 + u64::from(std::process::id());
    let mut rng = Rng(seed);
    for _ in 0..300 {
        let i = (rng.next() % pods.len() as u64) as usize;
        let verb = if rng.next().is_multiple_of(3) {
            "DEL"
        } else {
            "ADD"
        };
        let exec = Exec::new(verb, &format!("k{i}"), Some(pods[i].path()));
        let mut child = exec.command(&node.ns).spawn().expect("spawn");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(conf.as_bytes());
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 4000));
        let _ = child.kill();
        let _ = child.wait();
    }
    // The runtime's view afterwards: the even pods live (their ADD is retried to
    // completion), the odd ones are gone; then the runtime garbage-collects.
    let mut live = Vec::new();
    for (i, pod) in pods.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        live.push((i, addresses(&add(&node, &format!("k{i}"), pod))));
    }
    let mut gc: Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] = live
        .iter()
        .map(|(i, _)| serde_json::json!({"containerID": format!("k{i}"), "ifname": "eth0"}))
        .collect();
    Exec::new("GC", "", None)
        .run(&node.ns, &gc.to_string())
        .ok();

    let ipam = node.ipam();
    let held: BTreeSet<IpAddr> = ipam
        .slots
        .iter()
        .filter(|(_, s)| s.holder.is_some())
        .map(|(ip, _)| *ip)
        .collect();
    let live_ips: BTreeSet<IpAddr> = live
        .iter()
        .flat_map(|(_, ips)| ips.iter().copied())
        .collect();
    assert_eq!(
        live_ips.len(),
        live.len(),
        "duplicate address among live pods (seed {seed:#x})"
    );
    assert_eq!(
        held, live_ips,
        "leaked or lost allocations (seed {seed:#x})"
    );
    assert_eq!(
        host_veths(&node).len(),
        live.len(),
        "leaked veths (seed {seed:#x})"
    );
    for (i, ips) in &live {
        let server = EchoServer::start(&pods[*i], SocketAddr::new(ips[0], 0));
        tcp_exchange(&node.ns, server.addr).expect("a surviving pod still works");
    }
}

#[test]
fn a_pod_annotation_from_the_runtime_chooses_the_pool() {
    if !root() {
        return;
    }
    let node = PluginNode::new("node");
    node.set_pools(vec![
        pool("first", V4, &[V4_BLOCK]),
        pool("second", "10.76.0.0/16", &["10.76.5.0/26"]),
    ]);
    let pod = netsim::netns("pod");
    let mut conf: Value = serde_json::from_str(&node.config("1.1.0")).unwrap();
    conf["runtimeConfig"] =
        serde_json::json!({"io.kubernetes.cri.pod-annotations": {"sinew.dev/ippool": "second"}});
    let result = Exec::new("ADD", "annotated", Some(pod.path()))
        .run(&node.ns, &conf.to_string())
        .ok()
        .json();
    assert!(
        addresses(&result)[0].to_string().starts_with("10.76.5."),
        "{result}"
    );
    conf["runtimeConfig"] =
        serde_json::json!({"io.kubernetes.cri.pod-annotations": {"sinew.dev/ippool": "missing"}});
    let other = netsim::netns("pod");
    let run =
        Exec::new("ADD", "bad-annotation", Some(other.path())).run(&node.ns, &conf.to_string());
    assert_eq!(run.error_code(), Some(7));
    assert!(
        run.json()["msg"].as_str().unwrap().contains("\"missing\""),
        "{}",
        run.stdout
    );
    // An annotation that names no pool at all is refused, not a pod without an address.
    conf["runtimeConfig"] =
        serde_json::json!({"io.kubernetes.cri.pod-annotations": {"sinew.dev/ippool": " , "}});
    let run =
        Exec::new("ADD", "empty-annotation", Some(other.path())).run(&node.ns, &conf.to_string());
    assert_eq!(run.error_code(), Some(7), "{}", run.stdout);
    assert!(
        run.json()["msg"]
            .as_str()
            .unwrap()
            .contains("names no pool"),
        "{}",
        run.stdout
    );
    del(&node, "annotated", Some(&pod));
}

/// After a reboot `node.json` and the conflist survive, routes and VXLAN do not: until the
/// agent completes a pass in this boot, ADD says "try again" and STATUS "not available".
#[test]
fn a_node_state_from_before_a_reboot_serves_no_pod() {
    if !root() {
        return;
    }
    let node = single_stack();
    let path = node.state.path().join("node.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["readyBoot"] = serde_json::json!("a-boot-before-this-one");
    std::fs::write(&path, state.to_string()).unwrap();
    let pod = netsim::netns("pod");
    let run =
        Exec::new("ADD", "after-reboot", Some(pod.path())).run(&node.ns, &node.config("1.1.0"));
    assert_eq!(run.error_code(), Some(11), "{}", run.stdout);
    assert!(
        run.json()["msg"]
            .as_str()
            .unwrap()
            .contains("since this node booted"),
        "{}",
        run.stdout
    );
    assert_eq!(node.ipam().held(), 0, "nothing allocated");
    let status = Exec::new("STATUS", "", None).run(&node.ns, &node.config("1.1.0"));
    assert_eq!(status.error_code(), Some(50), "{}", status.stdout);

    // The agent's first complete pass of this boot writes the current boot: pods start.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    state["readyBoot"] = serde_json::json!(boot.trim());
    std::fs::write(&path, state.to_string()).unwrap();
    Exec::new("STATUS", "", None)
        .run(&node.ns, &node.config("1.1.0"))
        .ok();
    add(&node, "after-pass", &pod);
    del(&node, "after-pass", Some(&pod));
}

/// Input or state that cannot be trusted never wipes the node or strands a pod: GC without
/// the list of live attachments releases nothing, a malformed `prevResult` is refused before
/// anything is allocated, and a corrupt store still lets DEL remove the pod's interface.
#[test]
fn bad_input_and_bad_state_never_wipe_or_strand() {
    if !root() {
        return;
    }
    let node = single_stack();
    let pod = netsim::netns("pod");
    add(&node, "keep", &pod);

    let gc = Exec::new("GC", "", None).run(&node.ns, &node.config("1.1.0"));
    assert_eq!(gc.error_code(), Some(7), "{}", gc.stdout);
    assert!(
        gc.json()["msg"]
            .as_str()
            .unwrap()
            .contains("valid-attachments")
    );
    assert_eq!(
        node.ipam().held(),
        1,
        "GC without a list released something"
    );

    let mut conf: Value = serde_json::from_str(&node.config("1.1.0")).unwrap();
    conf["prevResult"] = serde_json::json!({"ips": "not a list"});
    let other = netsim::netns("pod");
    let run = Exec::new("ADD", "bad-prev", Some(other.path())).run(&node.ns, &conf.to_string());
    assert!(run.error_code().is_some(), "{}", run.stdout);
    assert_eq!(node.ipam().held(), 1, "a refused ADD allocated");
    assert_eq!(
        host_veths(&node).len(),
        1,
        "a refused ADD programmed a veth"
    );

    // The store is damaged (a disk error, a hand edit): DEL cannot release the address, but
    // the pod's interface still goes, and the error says why.
    let store = node.state.path().join("ipam/store.json");
    let saved = std::fs::read(&store).unwrap();
    std::fs::write(&store, b"{not json").unwrap();
    let run = Exec::new("DEL", "keep", Some(pod.path())).run(&node.ns, &node.config("1.1.0"));
    assert_eq!(run.error_code(), Some(5), "{}", run.stdout);
    assert!(
        run.json()["msg"].as_str().unwrap().contains("was removed"),
        "{}",
        run.stdout
    );
    assert!(host_veths(&node).is_empty(), "the pod's veth survived DEL");
    std::fs::write(&store, saved).unwrap();
    del(&node, "keep", Some(&pod));
    assert_eq!(node.ipam().held(), 0);
}

//! Host ports (`runtimeConfig.portMappings`) on a node namespace with real traffic: the
//! `sinew` binary maps them into the `inet sinew` table, which the test declares as the agent
//! does (with every host port the IPAM store records, under the store lock). Covers the
//! upstream conformance case (`[sig-network] HostPort validates that there is no conflict
//! between pods with same hostPort but different hostIP and protocol`), traffic from another
//! host, from the node itself (its node address and `127.0.0.1`), hairpin, dual stack, CHECK,
//! a repeated ADD, the agent's replace, DEL, and the guard that keeps pods off the node's
//! loopback services. Needs root; every namespace is removed on drop, even on failure.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use sinew_e2e::netsim::{self, in_netns};
use sinew_e2e::plugin::{Exec, NODE_IP, PluginNode, Run, pool};
use sinew_e2e::require;
use sinew_node_agent::nat;
use sinew_node_lib::hostport;
use sinew_node_lib::ipam::Store;
use sinew_node_lib::netlink::nftables::Nftables;
use sinew_node_lib::netlink::{Netlink, Route};
use sinew_node_lib::netns::NetNs;

fn root() -> bool {
    if require::is_root() {
        return true;
    }
    require::missing("hostport", "creating network namespaces needs root");
    false
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

/// The node's IPv6 address (on its loopback, like [`NODE_IP`]).
const NODE_IP6: &str = "fd78::1";
/// The node's and the other host's ends of the link between them.
const LINK_NODE: (&str, &str) = ("10.79.0.1", "fd79::1");
const LINK_OTHER: (&str, &str) = ("10.79.0.2", "fd79::2");
const POOL4: &str = "10.77.0.0/16";
const POOL6: &str = "fd77::/64";

/// A dual-stack node and another host ("node") one link away, routing to it by default.
struct Site {
    node: PluginNode,
    other: NetNs,
}

impl Site {
    fn new() -> Site {
        let node = PluginNode::new("node");
        node.set_pools(vec![
            pool("v4", POOL4, &["10.77.1.0/26"]),
            pool("v6", POOL6, &["fd77::/122"]),
        ]);
        netsim::add_loopback_address(&node.ns, ip(NODE_IP6));
        let other = netsim::netns("other");
        netsim::veth_pair(&node.ns, &other, (ip(LINK_NODE.0), ip(LINK_OTHER.0)), 24)
            .expect("linking the other host");
        let mut nl = Netlink::in_netns(&node.ns).expect("netlink");
        let link = nl.link_by_name("veth0").unwrap().expect("veth0");
        nl.add_address(link.index, ip(LINK_NODE.1), 64, true)
            .unwrap();
        let mut nl = Netlink::in_netns(&other).expect("netlink");
        let link = nl.link_by_name("veth0").unwrap().expect("veth0");
        nl.add_address(link.index, ip(LINK_OTHER.1), 64, true)
            .unwrap();
        for (dst, gw) in [("0.0.0.0", LINK_NODE.0), ("::", LINK_NODE.1)] {
            nl.add_route(&Route {
                gateway: Some(ip(gw)),
                ..Route::new(ip(dst), 0)
            })
            .expect("default route of the other host");
        }
        let site = Site { node, other };
        site.agent_declares_the_table();
        site
    }

    /// What the agent does: the whole table, with every host port the store records, read
    /// and replaced under the store lock.
    fn agent_declares_the_table(&self) {
        let mut nft = Nftables::in_netns(&self.node.ns).expect("nftables socket");
        Store::new(self.node.state.path())
            .read_locked(|state| {
                let pools = [POOL4, POOL6].map(|cidr| nat::NatPool {
                    cidr: cidr.parse().unwrap(),
                    nat_outgoing: true,
                });
                let peers = nat::VxlanPeers {
                    port: 4789,
                    nodes: vec![NODE_IP],
                };
                nft.replace_table(&nat::table(&pools, &peers, &hostport::of_store(state)))
            })
            .expect("reading the store")
            .expect("replacing the table");
    }

    fn config(&self, ports: Value) -> String {
        let mut conf: Value = serde_json::from_str(&self.node.config("1.1.0")).unwrap();
        conf["runtimeConfig"] = json!({ "portMappings": ports });
        conf.to_string()
    }

    fn exec(&self, verb: &str, id: &str, pod: &NetNs, ports: Value) -> Run {
        Exec::new(verb, id, Some(pod.path())).run(&self.node.ns, &self.config(ports))
    }

    /// ADD; the pod's addresses.
    fn add(&self, id: &str, pod: &NetNs, ports: Value) -> Vec<IpAddr> {
        let result = self.exec("ADD", id, pod, ports).ok().json();
        result["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .map(|i| {
                let a = i["address"].as_str().expect("address");
                ip(a.split('/').next().unwrap_or(a))
            })
            .collect()
    }

    fn nft_list(&self) -> String {
        let mut cmd = Command::new("nft");
        cmd.args(["list", "table", "inet", "sinew"]);
        in_netns(&mut cmd, &self.node.ns);
        let out = cmd.output().expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A server answering every TCP connection or UDP datagram with `<tag> <peer address>`.
struct Tagged {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Tagged {
    fn tcp(ns: &NetNs, addr: SocketAddr, tag: &'static str) -> Tagged {
        let listener = ns
            .run_in(|| TcpListener::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        Tagged::serve(move || match listener.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let _ = s.read(&mut [0u8; 64]);
                let _ = s.write_all(format!("{tag} {}", peer.ip()).as_bytes());
                true
            }
            Err(_) => false,
        })
    }

    fn udp(ns: &NetNs, addr: SocketAddr, tag: &'static str) -> Tagged {
        let socket = ns
            .run_in(|| UdpSocket::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        socket.set_nonblocking(true).unwrap();
        Tagged::serve(move || {
            let mut buf = [0u8; 64];
            match socket.recv_from(&mut buf) {
                Ok((_, peer)) => {
                    let _ = socket.send_to(format!("{tag} {}", peer.ip()).as_bytes(), peer);
                    true
                }
                Err(_) => false,
            }
        })
    }

    fn serve(mut once: impl FnMut() -> bool + Send + 'static) -> Tagged {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                if !once() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Tagged {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP exchange from `ns`: the server's answer, or why there was none.
fn tcp(ns: &NetNs, to: SocketAddr) -> Result<String, String> {
    ns.run_in(|| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| format!("connecting to {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"hello\n").map_err(|e| e.to_string())?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .map_err(|e| format!("reading from {to}: {e}"))?;
        Ok(reply)
    })
    .map_err(|e| e.to_string())?
}

/// A UDP exchange from `ns`.
fn udp(ns: &NetNs, to: SocketAddr) -> Result<String, String> {
    ns.run_in(|| {
        let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(any).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.send_to(b"hello", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 128];
        let (n, _) = s
            .recv_from(&mut buf)
            .map_err(|e| format!("no answer from {to}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .map_err(|e| e.to_string())?
}

fn at(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

/// The conformance spec, on one node: pod1 hostIP 127.0.0.1 TCP, pod2 hostIP = node IP TCP,
/// pod3 hostIP = node IP UDP, all on host port 54323, probed from the node itself (a
/// hostNetwork pod) at 127.0.0.1:54323, nodeIP:54323/tcp and nodeIP:54323/udp; and from
/// another host, whose address the pod sees.
#[test]
fn same_host_port_on_other_addresses_and_protocols_reaches_each_pod() {
    if !root() {
        return;
    }
    let site = Site::new();
    let node_ip = NODE_IP.to_string();
    let port = |host_ip: &str, protocol: &str| json!([{"hostPort": 54323, "containerPort": 8080, "protocol": protocol, "hostIP": host_ip}]);
    let pods: Vec<NetNs> = (0..3).map(|_| netsim::netns("pod")).collect();
    let ip1 = site.add("pod1", &pods[0], port("127.0.0.1", "TCP"))[0];
    let ip2 = site.add("pod2", &pods[1], port(&node_ip, "TCP"))[0];
    let ip3 = site.add("pod3", &pods[2], port(&node_ip, "UDP"))[0];
    let _servers = [
        Tagged::tcp(&pods[0], SocketAddr::new(ip1, 8080), "pod1"),
        Tagged::tcp(&pods[1], SocketAddr::new(ip2, 8080), "pod2"),
        Tagged::udp(&pods[2], SocketAddr::new(ip3, 8080), "pod3"),
    ];

    let ns = &site.node.ns;
    let reply = tcp(ns, at("127.0.0.1", 54323)).expect("127.0.0.1:54323/tcp");
    assert!(reply.starts_with("pod1 "), "{reply}");
    let reply = tcp(ns, SocketAddr::new(NODE_IP, 54323)).expect("nodeIP:54323/tcp");
    assert!(reply.starts_with("pod2 "), "{reply}");
    let reply = udp(ns, SocketAddr::new(NODE_IP, 54323)).expect("nodeIP:54323/udp");
    assert!(reply.starts_with("pod3 "), "{reply}");

    // From another host: the node address maps, and the pod sees the client's address.
    let reply = tcp(&site.other, SocketAddr::new(NODE_IP, 54323)).expect("tcp from the other host");
    assert_eq!(reply, format!("pod2 {}", LINK_OTHER.0));
    let reply = udp(&site.other, SocketAddr::new(NODE_IP, 54323)).expect("udp from the other host");
    assert_eq!(reply, format!("pod3 {}", LINK_OTHER.0));
    // The node's other address is not the hostIP: nothing listens there.
    let refused = tcp(&site.other, at(LINK_NODE.0, 54323)).unwrap_err();
    assert!(refused.contains("refused"), "{refused}");

    // A fourth pod asking for a port one of them holds is refused, naming the holder.
    let pod4 = netsim::netns("pod");
    let run = site.exec("ADD", "pod4", &pod4, port(&node_ip, "udp"));
    assert_eq!(run.error_code(), Some(11), "{}", run.stdout);
    assert!(
        run.stdout.contains("held by pod default/pod3"),
        "{}",
        run.stdout
    );
    assert_eq!(site.node.ipam().attachments.len(), 3);

    for (id, pod) in ["pod1", "pod2", "pod3"].iter().zip(&pods) {
        site.exec("DEL", id, pod, json!(null)).ok();
    }
    let refused = tcp(ns, SocketAddr::new(NODE_IP, 54323)).unwrap_err();
    assert!(refused.contains("refused"), "{refused}");
    let listed = site.nft_list();
    assert!(!listed.contains("54323"), "elements left behind:\n{listed}");
}

/// A dual-stack pod with a host port on every local address: reached from another host over
/// both families, from the node at its addresses and 127.0.0.1 (not `::1`, which the kernel
/// never routes off the host: refused, not black-holed), from itself (hairpin, masqueraded)
/// and from another pod (not masqueraded). CHECK sees a missing element and a repeated ADD
/// puts it back; the agent's replace and a flushed ruleset keep or bring back the ports;
/// DEL removes everything.
#[test]
fn a_dual_stack_pod_is_reached_on_every_local_address_until_del() {
    if !root() {
        return;
    }
    let site = Site::new();
    let ports = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    let pod = netsim::netns("pod");
    let ips = site.add("web", &pod, ports.clone());
    assert_eq!(ips.len(), 2, "dual stack");
    let (v4, v6) = (ips[0], ips[1]);
    let _servers = [
        Tagged::tcp(&pod, SocketAddr::new(v4, 80), "web"),
        Tagged::tcp(&pod, SocketAddr::new(v6, 80), "web"),
    ];
    let other_pod = netsim::netns("pod");
    let other_ips = site.add("client", &other_pod, json!(null));

    let reach = |from: &NetNs, to: SocketAddr| -> String {
        let reply = tcp(from, to).unwrap_or_else(|e| panic!("{to}: {e}"));
        assert!(reply.starts_with("web "), "{to}: {reply}");
        reply
    };
    let everywhere = |label: &str| {
        for to in [at(LINK_NODE.0, 8080), at(LINK_NODE.1, 8080)] {
            let seen = reach(&site.other, to);
            assert!(
                seen == format!("web {}", LINK_OTHER.0) || seen == format!("web {}", LINK_OTHER.1),
                "{label}: the client's address is kept: {seen}"
            );
        }
        for to in [
            SocketAddr::new(NODE_IP, 8080),
            at(NODE_IP6, 8080),
            at("127.0.0.1", 8080),
            at(LINK_NODE.0, 8080),
        ] {
            reach(&site.node.ns, to);
        }
        // hairpin: the pod reaches itself through the node, masqueraded
        for to in [SocketAddr::new(NODE_IP, 8080), at(NODE_IP6, 8080)] {
            let seen = reach(&pod, to);
            assert!(
                !seen.contains(&v4.to_string()) && !seen.contains(&v6.to_string()),
                "{label}: hairpin masqueraded: {seen}"
            );
        }
        // another pod keeps its own address
        assert_eq!(
            reach(&other_pod, SocketAddr::new(NODE_IP, 8080)),
            format!("web {}", other_ips[0]),
            "{label}"
        );
    };
    everywhere("after ADD");
    let v6_loopback = tcp(&site.node.ns, at("::1", 8080)).unwrap_err();
    assert!(
        v6_loopback.contains("refused"),
        "::1 is left alone: {v6_loopback}"
    );

    let check = || site.exec("CHECK", "web", &pod, json!(null));
    check().ok();
    // An element goes missing behind sinew's back: CHECK names it, a repeated ADD restores it.
    let recorded = hostport::of_attachment(&site.node.ipam().attachments["web/eth0"]);
    Nftables::in_netns(&site.node.ns)
        .unwrap()
        .remove_host_ports(&recorded[..1])
        .unwrap();
    let drift = check();
    assert_eq!(drift.error_code(), Some(100), "{}", drift.stdout);
    assert!(drift.stdout.contains("is not mapped"), "{}", drift.stdout);
    let again = site.exec("ADD", "web", &pod, json!(null)).ok().json();
    assert_eq!(
        again["ips"].as_array().map(Vec::len),
        Some(2),
        "a repeated ADD returns the recorded attachment"
    );
    check().ok();
    everywhere("after a repeated ADD");

    // The agent's whole-table replace declares them from the store; a flushed ruleset comes
    // back with them at the agent's next pass.
    site.agent_declares_the_table();
    everywhere("after the agent's replace");
    Nftables::in_netns(&site.node.ns)
        .unwrap()
        .delete_table("sinew")
        .unwrap();
    assert!(tcp(&site.other, at(LINK_NODE.0, 8080)).is_err());
    site.agent_declares_the_table();
    everywhere("after the table came back");

    site.exec("DEL", "web", &pod, json!(null)).ok();
    let refused = tcp(&site.other, at(LINK_NODE.0, 8080)).unwrap_err();
    assert!(refused.contains("refused"), "{refused}");
    let gone = |listed: &str| {
        for ip in [v4, v6] {
            for element in [format!(": {ip} . 80"), format!("{ip} . {ip}")] {
                assert!(!listed.contains(&element), "{element} left:\n{listed}");
            }
        }
    };
    gone(&site.nft_list());
    // DEL again, and the agent's next replace, find nothing to restore.
    site.exec("DEL", "web", &pod, json!(null)).ok();
    site.agent_declares_the_table();
    gone(&site.nft_list());
    site.exec("DEL", "client", &other_pod, json!(null)).ok();
}

/// `route_localnet` on a pod's host veth (needed for 127.0.0.1 host ports) would let that pod
/// reach the node's loopback services by sending to 127.0.0.1 through its gateway; the table's
/// guard drops that, while the node's own 127.0.0.1 host-port connection still works.
#[test]
fn pods_cannot_reach_the_nodes_loopback_services() {
    if !root() {
        return;
    }
    let site = Site::new();
    let pod = netsim::netns("pod");
    let ports = json!([{"hostPort": 9090, "containerPort": 80, "hostIP": "127.0.0.1"}]);
    let pod_ip = site.add("sly", &pod, ports)[0];
    let _server = Tagged::tcp(&pod, SocketAddr::new(pod_ip, 80), "sly");
    assert!(
        tcp(&site.node.ns, at("127.0.0.1", 9090))
            .unwrap()
            .starts_with("sly ")
    );

    // A service of the node bound to 127.0.0.1 only.
    let _local = Tagged::udp(&site.node.ns, at("127.0.0.1", 9999), "node-local");
    assert!(udp(&site.node.ns, at("127.0.0.1", 9999)).is_ok());
    // The pod sends to 127.0.0.1 through its gateway (it may change its own routes) and
    // accepts loopback sources back, so only the node can stop it.
    for args in [
        &[
            "route",
            "del",
            "local",
            "127.0.0.0/8",
            "dev",
            "lo",
            "table",
            "local",
        ][..],
        &["addr", "del", "127.0.0.1/8", "dev", "lo"],
        &[
            "route",
            "add",
            "127.0.0.0/8",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
            "onlink",
        ],
    ] {
        let mut cmd = Command::new("ip");
        cmd.args(args);
        in_netns(&mut cmd, &pod);
        let out = cmd.output().expect("ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    netsim::sysctl(&pod, "net.ipv4.conf.all.route_localnet", "1");
    netsim::sysctl(&pod, "net.ipv4.conf.eth0.route_localnet", "1");
    let sneaked = udp(&pod, at("127.0.0.1", 9999));
    assert!(
        sneaked.is_err(),
        "the pod reached the node's loopback: {sneaked:?}"
    );
    let listed = site.nft_list();
    assert!(
        listed.contains("ct status ! dnat counter packets 1 "),
        "the guard dropped it:\n{listed}"
    );
    site.exec("DEL", "sly", &pod, json!(null)).ok();
}

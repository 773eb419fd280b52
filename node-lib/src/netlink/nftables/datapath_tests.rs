//! The policy-shaped table ([`super::policy_fixture`]) judging real traffic, IPv4 and IPv6:
//! a "node" namespace that forwards between "pod" namespaces joined to it by veth pairs
//! named `snw*` on the node's side, as the plugin joins pods, with small TCP and UDP echo
//! servers and clients; neighbour caches are flushed once the table is in, so address
//! resolution happens under it. Every namespace is the test's own and goes away with it,
//! even on failure (the namespaces are owned values; the servers stop when their guard
//! drops).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Nftables;
use super::policy_fixture::{TABLE, golden, ip};
use crate::netns::NetNs;
use crate::netns::test_support::{have_root, new_netns};
use crate::nft::golden::have_nft;
use crate::nft::{Element, Value};

/// How long a client waits before it calls a connection dropped.
const PATIENCE: Duration = Duration::from_millis(700);
/// The node's address on every pod link, the pods' gateway.
const GATEWAY: &str = "169.254.1.1";
/// The same for IPv6, a link-local address.
const GATEWAY6: &str = "fe80::1";

fn ns_name(ns: &NetNs) -> String {
    ns.path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// `ip -n NS ARGS` (words split at spaces), which must succeed.
fn ip_cmd(ns: &str, args: &str) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sysctl -w SETTING` in the namespace.
fn sysctl(ns: &NetNs, setting: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns_name(ns), "sysctl", "-qw", setting])
        .output()
        .unwrap();
    assert!(out.status.success(), "{setting}: {out:?}");
}

/// IPv6 addresses usable at once: no duplicate address detection on new interfaces (it
/// holds back the link-local addresses neighbour discovery speaks from).
fn no_dad(ns: &NetNs) {
    sysctl(ns, "net.ipv6.conf.default.accept_dad=0");
}

/// A pod, joined as the plugin joins one (`cni-plugin/src/datapath.rs`): its namespace
/// linked to the node's by a veth pair, `eth0` inside with `addr` and `addr6` and default
/// routes via the gateways, whose neighbour entries are pinned to the host end's MAC;
/// `interface` on the node's side with `fe80::1` and a route to each address. (The node's
/// side also holds `169.254.1.1`, which the plugin does without: these namespaces have no
/// other IPv4 address to answer the pods' ARP from.)
fn add_pod(node: &NetNs, interface: &str, addr: &str, addr6: &str) -> NetNs {
    let pod = new_netns();
    no_dad(&pod);
    let (n, p) = (ns_name(node), ns_name(&pod));
    ip_cmd(
        &n,
        &format!("link add {interface} type veth peer name eth0 netns {p}"),
    );
    let mac = crate::netlink::Netlink::in_netns(node)
        .unwrap()
        .link_by_name(interface)
        .unwrap()
        .and_then(|l| l.mac)
        .unwrap();
    let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    let mac = mac.join(":");
    ip_cmd(&n, &format!("addr add {GATEWAY}/32 dev {interface}"));
    ip_cmd(&n, &format!("addr add {GATEWAY6}/64 dev {interface} nodad"));
    ip_cmd(&n, &format!("link set {interface} up"));
    ip_cmd(&p, "link set eth0 up");
    for (gateway, pod_addr, len) in [(GATEWAY, addr, 32), (GATEWAY6, addr6, 128)] {
        ip_cmd(&n, &format!("route add {pod_addr}/{len} dev {interface}"));
        ip_cmd(&p, &format!("addr add {pod_addr}/{len} dev eth0 nodad"));
        ip_cmd(
            &p,
            &format!("neigh add {gateway} lladdr {mac} dev eth0 nud permanent"),
        );
        if len == 32 {
            ip_cmd(&p, &format!("route add {gateway} dev eth0 scope link"));
        }
        ip_cmd(&p, &format!("route add default via {gateway} dev eth0"));
    }
    pod
}

/// Echo servers (TCP and UDP), stopped when this drops.
#[derive(Default)]
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// A TCP echo server on `port` of every address of `ns` (IPv4 and IPv6).
    fn tcp(&mut self, ns: &NetNs, port: u16) {
        let listener = ns
            .run_in(move || TcpListener::bind(("::", port)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::clone(&self.stop);
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(PATIENCE));
                        let mut buf = [0u8; 64];
                        if let Ok(n) = s.read(&mut buf) {
                            let _ = s.write_all(&buf[..n]);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// A UDP echo server on `port` of every address of `ns` (IPv4 and IPv6).
    fn udp(&mut self, ns: &NetNs, port: u16) {
        let socket = ns
            .run_in(move || UdpSocket::bind(("::", port)))
            .unwrap()
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::clone(&self.stop);
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        }));
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether a TCP connection from `from` to `to:port` is made and echoes (so the replies
/// came back too).
fn tcp(from: &NetNs, to: &str, port: u16) -> bool {
    tcp_to(from, SocketAddr::new(ip(to), port))
}

/// Whether a TCP connection from `from` to the node's link-local gateway `fe80::1` (on the
/// pod's `eth0`) and `port` is made and echoes.
fn tcp_to_gateway6(from: &NetNs, port: u16) -> bool {
    let eth0 = crate::netlink::Netlink::in_netns(from)
        .unwrap()
        .link_by_name("eth0")
        .unwrap()
        .unwrap();
    let gateway: std::net::Ipv6Addr = GATEWAY6.parse().unwrap();
    tcp_to(
        from,
        SocketAddr::V6(std::net::SocketAddrV6::new(gateway, port, 0, eth0.index)),
    )
}

fn tcp_to(from: &NetNs, to: SocketAddr) -> bool {
    from.run_in(move || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, PATIENCE) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(PATIENCE));
        let mut buf = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello"
    })
    .unwrap()
}

/// Whether a UDP datagram from `from` to `to:port` is echoed back.
fn udp(from: &NetNs, to: &str, port: u16) -> bool {
    let to = SocketAddr::new(ip(to), port);
    from.run_in(move || {
        let any = if to.is_ipv4() { "0.0.0.0" } else { "::" };
        let s = UdpSocket::bind((any, 0)).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.send_to(b"hello", to).unwrap();
        let mut buf = [0u8; 5];
        matches!(s.recv_from(&mut buf), Ok((5, from)) if from.ip().to_canonical() == to.ip())
            && &buf == b"hello"
    })
    .unwrap()
}

/// Whether `check` holds within a few tries (a few seconds at most): what must pass is
/// given a moment for neighbour discovery; what must not is tried once.
fn eventually(check: impl Fn() -> bool) -> bool {
    (0..5).any(|_| check())
}

#[test]
fn the_policy_table_judges_real_traffic() {
    let test = "the_policy_table_judges_real_traffic";
    if !have_root(test) || !have_nft(test) {
        return;
    }
    let node = new_netns();
    for forwarding in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns_name(&node),
                "sysctl",
                "-qw",
                forwarding,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let web = add_pod(&node, "snwa", "10.0.1.1", "fd00:1::1");
    let client = add_pod(&node, "snwb", "10.0.1.2", "fd00:1::2");
    let other = add_pod(&node, "snwc", "10.0.1.3", "fd00:1::3");
    let db = add_pod(&node, "snwd", "10.0.1.4", "fd00:1::4");
    let newcomer = add_pod(&node, "snwe", "10.0.1.5", "fd00:1::5");
    let (web_ip, other_ip, db_ip, newcomer_ip) = ("10.0.1.1", "10.0.1.3", "10.0.1.4", "10.0.1.5");
    let (web6, other6, db6) = ("fd00:1::1", "fd00:1::3", "fd00:1::4");

    let mut servers = Servers::default();
    for pod in [&web, &other, &db, &newcomer] {
        servers.tcp(pod, 80);
    }
    servers.tcp(&web, 81);
    servers.udp(&web, 5005);
    servers.udp(&web, 6000);
    servers.tcp(&node, 8080);

    // Without the table every pod reaches every pod: the network itself works.
    assert!(tcp(&other, web_ip, 80));
    assert!(tcp(&newcomer, db_ip, 80));
    assert!(udp(&other, web_ip, 6000));
    // (the first neighbour discovery of a new link may take a moment)
    assert!(eventually(|| tcp(&other, web6, 80)));
    assert!(tcp(&web, other6, 80));
    assert!(eventually(|| tcp_to_gateway6(&web, 8080)));

    let table = golden(true);
    let mut nl = Nftables::in_netns(&node).unwrap();
    nl.replace_table(&table).unwrap();
    // Neighbours are found again under the table (what the node and the pods learnt before
    // is forgotten; the pods' pinned gateways stay).
    for ns in [&node, &web, &client, &other, &db, &newcomer] {
        ip_cmd(&ns_name(ns), "neigh flush all");
    }

    // web-1 is isolated for ingress: TCP 80 from the client only, UDP 5000-5010 from
    // 10.0.1.2/31; its replies pass although its egress is isolated too (conntrack)
    assert!(
        eventually(|| tcp(&client, web_ip, 80)),
        "the allowed source and port"
    );
    assert!(!tcp(&other, web_ip, 80), "another source");
    assert!(!tcp(&client, web_ip, 81), "another port");
    assert!(
        eventually(|| udp(&other, web_ip, 5005)),
        "a port range from an address range"
    );
    assert!(!udp(&other, web_ip, 6000), "outside the port range");
    // web-1 is isolated for egress: TCP 80 to db only, and not to its node either
    assert!(
        eventually(|| tcp(&web, db_ip, 80)),
        "the allowed destination"
    );
    assert!(!tcp(&web, other_ip, 80), "egress denied is dropped");
    assert!(
        !tcp(&web, GATEWAY, 8080),
        "egress to the node is judged in input"
    );
    assert!(
        eventually(|| tcp(&client, GATEWAY, 8080)),
        "a pod no policy isolates reaches its node"
    );
    // and not over its node's link-local address either, which it reaches without a table
    assert!(
        !tcp_to_gateway6(&web, 8080),
        "egress to the node's link-local address is judged in input"
    );
    assert!(eventually(|| tcp_to_gateway6(&client, 8080)));
    // the same over IPv6
    assert!(
        eventually(|| tcp(&client, web6, 80)),
        "IPv6: the allowed source and port"
    );
    assert!(!tcp(&other, web6, 80), "IPv6: another source");
    assert!(
        eventually(|| tcp(&web, db6, 80)),
        "IPv6: the allowed destination"
    );
    assert!(!tcp(&web, other6, 80), "IPv6: egress denied is dropped");
    assert!(eventually(|| tcp(&other, db6, 80)));
    // pods no policy isolates pass both ways
    assert!(eventually(|| tcp(&other, db_ip, 80)));
    assert!(eventually(|| tcp(&db, other_ip, 80)));
    // an interface not programmed yet is held both ways
    assert!(!tcp(&newcomer, db_ip, 80), "held: nothing leaves");
    assert!(!tcp(&db, newcomer_ip, 80), "held: nothing enters");

    // programmed by an update (one element added): it passes
    let mut programmed = table.clone();
    programmed
        .sets
        .iter_mut()
        .find(|s| s.name == "programmed")
        .unwrap()
        .elements
        .push(Element::key([Value::IfName("snwe".into())]));
    nl.update_table(&table, &programmed).unwrap();
    assert!(eventually(|| tcp(&newcomer, db_ip, 80)));
    assert!(eventually(|| tcp(&db, newcomer_ip, 80)));

    // without the table, everything passes again
    nl.delete_table(TABLE).unwrap();
    assert!(eventually(|| tcp(&other, web_ip, 80)));
}

/// The drop counters of each direction and of held interfaces.
fn drops(nl: &mut Nftables) -> [u64; 3] {
    let mut read = |name: &str| nl.counter(TABLE, name).unwrap().unwrap().packets;
    [
        read("dropped-ingress"),
        read("dropped-egress"),
        read(crate::nft::policy::HELD_COUNTER),
    ]
}

#[test]
fn the_policy_table_counts_what_it_drops_per_direction_across_updates() {
    let test = "the_policy_table_counts_what_it_drops_per_direction_across_updates";
    if !have_root(test) {
        return;
    }
    let node = new_netns();
    sysctl(&node, "net.ipv4.ip_forward=1");
    let web = add_pod(&node, "snwa", "10.0.1.1", "fd00:1::1");
    let client = add_pod(&node, "snwb", "10.0.1.2", "fd00:1::2");
    let other = add_pod(&node, "snwc", "10.0.1.3", "fd00:1::3");
    let newcomer = add_pod(&node, "snwe", "10.0.1.5", "fd00:1::5");
    let mut servers = Servers::default();
    for pod in [&web, &other, &client] {
        servers.tcp(pod, 80);
    }
    assert!(
        eventually(|| tcp(&other, "10.0.1.1", 80)),
        "the network works"
    );

    let mut nl = Nftables::in_netns(&node).unwrap();
    assert!(nl.counter(TABLE, "dropped-ingress").unwrap().is_none());
    nl.replace_table(&golden(false)).unwrap();
    assert_eq!(drops(&mut nl), [0, 0, 0]);
    assert!(eventually(|| tcp(&client, "10.0.1.1", 80)), "allowed");
    assert_eq!(drops(&mut nl), [0, 0, 0], "what passes is not counted");

    // Denied ingress (another source to web-1) counts in ingress only.
    assert!(!tcp(&other, "10.0.1.1", 80));
    let [ingress, egress, held] = drops(&mut nl);
    assert!(ingress > 0, "ingress {ingress}");
    assert_eq!((egress, held), (0, 0));
    let bytes = nl.counter(TABLE, "dropped-ingress").unwrap().unwrap().bytes;
    assert!(bytes >= ingress * 40, "{bytes} bytes for {ingress} packets");

    // An update that flushes and refills the class chains (the drop log on) keeps the values.
    nl.update_table(&golden(false), &golden(true)).unwrap();
    assert_eq!(
        drops(&mut nl),
        [ingress, 0, 0],
        "the counters survive an update"
    );

    // Denied egress (web-1 to another pod) counts in egress only.
    assert!(!tcp(&web, "10.0.1.3", 80));
    let [ingress2, egress, held] = drops(&mut nl);
    assert_eq!(ingress2, ingress);
    assert!(egress > 0, "egress {egress}");
    assert_eq!(held, 0);

    // An interface not programmed yet is held, and counted as such.
    assert!(!tcp(&newcomer, "10.0.1.3", 80));
    let [ingress3, egress3, held] = drops(&mut nl);
    assert_eq!((ingress3, egress3), (ingress, egress));
    assert!(held > 0, "held {held}");
}

#[test]
fn a_denied_packet_reaches_the_drop_log_listener() {
    let test = "a_denied_packet_reaches_the_drop_log_listener";
    if !have_root(test) {
        return;
    }
    let node = new_netns();
    sysctl(&node, "net.ipv4.ip_forward=1");
    let web = add_pod(&node, "snwa", "10.0.1.1", "fd00:1::1");
    let other = add_pod(&node, "snwc", "10.0.1.3", "fd00:1::3");
    let mut servers = Servers::default();
    servers.tcp(&web, 80);
    assert!(
        eventually(|| tcp(&other, "10.0.1.1", 80)),
        "the network works"
    );
    let web_index = crate::netlink::Netlink::in_netns(&node)
        .unwrap()
        .link_by_name("snwa")
        .unwrap()
        .unwrap()
        .index;

    let mut listener = crate::nflog::Nflog::bind_in_netns(
        &node,
        crate::nft::policy::LOG_GROUP,
        Duration::from_millis(200),
    )
    .unwrap();
    let mut nl = Nftables::in_netns(&node).unwrap();
    nl.replace_table(&golden(true)).unwrap();
    assert!(!tcp(&other, "10.0.1.1", 80), "denied");
    let mut logged = Vec::new();
    for _ in 0..10 {
        logged.extend(listener.recv().unwrap());
        if !logged.is_empty() {
            break;
        }
    }
    let first = logged.first().expect("a denied packet logged");
    assert_eq!(first.prefix, "ingress-0 default/allow-web");
    assert_eq!(first.out_interface, Some(web_index));
    assert!(first.in_interface.is_some_and(|i| i != web_index));
    let packet = first.packet.unwrap();
    assert_eq!(packet.source, ip("10.0.1.3"));
    assert_eq!(packet.destination, ip("10.0.1.1"));
    assert_eq!((packet.protocol, packet.destination_port), (6, Some(80)));

    // Without the log rules nothing more arrives.
    nl.update_table(&golden(true), &golden(false)).unwrap();
    while !listener.recv().unwrap().is_empty() {}
    assert!(!tcp(&other, "10.0.1.1", 80), "denied");
    assert_eq!(listener.recv().unwrap(), Vec::new());
}

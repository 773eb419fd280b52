//! What the table declares for given pools, peers and host ports, and how it behaves in the
//! kernel: traffic masqueraded and filtered, the plugin's host-port elements.

use super::*;
use sinew_node_lib::netns::NetNs;
use sinew_node_lib::netns::test_support::{have_root, new_netns};
use sinew_node_lib::nft::golden::{have_nft, listing};
use sinew_node_lib::nft::{Value, text};

/// The table in `nft` syntax for these pools and peers, without host ports.
fn render(pools: &[NatPool], vxlan: &VxlanPeers) -> String {
    text::replace_script(&table(pools, vxlan, &[]))
}

#[test]
fn masquerades_only_nat_pools_towards_outside_every_pool() {
    let pools = [
        NatPool {
            cidr: "10.244.0.0/16".parse().unwrap(),
            nat_outgoing: true,
        },
        NatPool {
            cidr: "10.245.0.0/16".parse().unwrap(),
            nat_outgoing: false,
        },
        NatPool {
            cidr: "fd00::/56".parse().unwrap(),
            nat_outgoing: true,
        },
    ];
    let s = render(&pools, &peers());
    assert!(s.contains("set pods4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/16, 10.245.0.0/16 }; }"), "{s}");
    assert!(
        s.contains("set nat4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 }; }"),
        "{s}"
    );
    assert!(
        s.contains("set nat6 { type ipv6_addr; flags interval; elements = { fd00::/56 }; }"),
        "{s}"
    );
    assert!(s.contains("ip saddr @nat4 ip daddr != @pods4 masquerade"));
    assert!(
        s.starts_with("table inet sinew {}\ndelete table inet sinew\n"),
        "replaced in one transaction"
    );
}

pub(super) fn peers() -> VxlanPeers {
    VxlanPeers {
        port: 4789,
        nodes: vec!["10.99.0.10".parse().unwrap(), "10.99.1.11".parse().unwrap()],
    }
}

#[test]
fn vxlan_is_accepted_only_from_node_addresses() {
    let s = render(&[], &peers());
    assert!(
        s.contains("set nodes4 { type ipv4_addr; flags interval; elements = { 10.99.0.10/32, 10.99.1.11/32 }; }"),
        "{s}"
    );
    assert!(
        s.contains("set nodes6 { type ipv6_addr; flags interval; }"),
        "{s}"
    );
    assert!(
        s.contains("ip saddr != @nodes4 udp dport 4789 counter drop"),
        "{s}"
    );
    assert!(
        s.contains("ip6 saddr != @nodes6 udp dport 4789 counter drop"),
        "{s}"
    );
}

#[test]
fn empty_and_nested_sets_are_valid() {
    let s = render(
        &[
            NatPool {
                cidr: "10.0.0.0/8".parse().unwrap(),
                nat_outgoing: false,
            },
            NatPool {
                cidr: "10.1.0.0/16".parse().unwrap(),
                nat_outgoing: false,
            },
        ],
        &peers(),
    );
    assert!(
        s.contains("set nat4 { type ipv4_addr; flags interval; }"),
        "{s}"
    );
    assert!(
        s.contains("elements = { 10.0.0.0/8 }"),
        "nested prefixes collapse: {s}"
    );
}

#[test]
fn host_ports_are_declared_with_the_table() {
    use sinew_node_lib::hostport::{PortMapping, host_ports};
    let without = table(&[], &peers(), &[]);
    let empty = text::replace_script(&without);
    assert!(
        empty.contains("    map hostports4 { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }"),
        "{empty}"
    );
    assert!(
        empty.contains("        fib daddr type local jump hostports\n"),
        "{empty}"
    );
    let ports = host_ports(
        &[PortMapping {
            host_port: 54323,
            container_port: 8080,
            protocol: Protocol::Udp,
            host_ip: Some("10.99.0.10".parse().unwrap()),
        }],
        ["10.244.1.5".parse().unwrap()],
    );
    let with = table(&[], &peers(), &ports);
    let s = text::replace_script(&with);
    assert!(
        s.contains("elements = { udp . 10.99.0.10 . 54323 : 10.244.1.5 . 8080 }"),
        "{s}"
    );
    assert!(s.contains("elements = { 10.244.1.5 . 10.244.1.5 }"), "{s}");
    assert_ne!(
        with, without,
        "a new host port changes the table: the agent re-applies"
    );
    assert!(s.ends_with("    }\n}\n"), "{s}");
}

/// The elements of the set named `name`.
fn elements(t: &Table, name: &str) -> Vec<Value> {
    let set = t.sets.iter().find(|s| s.name == name).unwrap();
    set.elements.iter().flat_map(|e| e.key.clone()).collect()
}

#[test]
fn sets_are_sorted_without_duplicates_or_nested_prefixes() {
    let pools = [
        pool("10.244.0.0/16", true),
        pool("10.244.8.0/24", true),
        pool("10.245.0.0/16", false),
        pool("fd00::/56", true),
    ];
    let peers = VxlanPeers {
        port: 8472,
        nodes: vec![
            ip("10.99.1.11"),
            ip("fd99::1"),
            ip("10.99.0.10"),
            ip("10.99.1.11"),
        ],
    };
    let t = table(&pools, &peers, &[]);
    let host = |s: &str| Value::Prefix(Cidr::host(ip(s)));
    assert_eq!(
        (elements(&t, "nodes4"), elements(&t, "nodes6")),
        (
            vec![host("10.99.0.10"), host("10.99.1.11")],
            vec![host("fd99::1")]
        ),
        "sorted, without duplicates"
    );
    assert_eq!(
        elements(&t, "nat4").len() + elements(&t, "nat6").len(),
        2,
        "10.244.8.0/24 is inside 10.244.0.0/16"
    );
}

/// The agent re-applies when the declared table differs from the last one applied: equal
/// inputs in another order give an equal table, any change an unequal one.
#[test]
fn the_table_is_compared_as_a_value() {
    let pools = [pool("10.244.0.0/16", true), pool("fd00::/56", false)];
    let mut peers = peers();
    let t = table(&pools, &peers, &[]);
    let reversed = [pools[1].clone(), pools[0].clone()];
    peers.nodes.reverse();
    assert_eq!(table(&reversed, &peers, &[]), t);
    peers.port = 8472;
    assert_ne!(table(&pools, &peers, &[]), t);
    assert_ne!(table(&pools[..1], &self::peers(), &[]), t);
    let no_nat = [pool("10.244.0.0/16", false), pool("fd00::/56", false)];
    assert_ne!(table(&no_nat, &self::peers(), &[]), t);
}

pub(super) fn pool(cidr: &str, nat_outgoing: bool) -> NatPool {
    NatPool {
        cidr: cidr.parse().unwrap(),
        nat_outgoing,
    }
}

pub(super) fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// Two IPv4 pools (one with natOutgoing), one IPv6 pool with natOutgoing, three nodes.
fn realistic() -> Table {
    let pools = [
        pool("10.244.0.0/16", true),
        pool("10.245.0.0/16", false),
        pool("fd00:10:244::/56", true),
    ];
    let peers = VxlanPeers {
        port: 4789,
        nodes: vec![ip("192.168.10.11"), ip("192.168.10.12"), ip("fd00:99::13")],
    };
    table(&pools, &peers, &[])
}

/// The plugin's element operations against the table the agent declares: ADD before the
/// agent declared the maps fails, a leftover element of the same key is replaced, DEL
/// removes only what still maps to its pod and tolerates what is gone, CHECK names each
/// difference.
#[test]
fn host_ports_are_added_replaced_checked_and_removed() {
    use sinew_node_lib::hostport::{self, PortMapping};
    let test = "host_ports_are_added_replaced_checked_and_removed";
    if !have_root(test) || !have_nft(test) {
        return;
    }
    let mapping = |protocol, host_ip: Option<&str>| PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol,
        host_ip: host_ip.map(ip),
    };
    let pod_a = hostport::host_ports(
        &[
            mapping(Protocol::Tcp, None),
            mapping(Protocol::Udp, Some("10.78.0.1")),
        ],
        [ip("10.244.1.5"), ip("fd00:10:244::5")],
    );
    assert_eq!(pod_a.len(), 3);
    let ns = new_netns();
    let mut nl = Nftables::in_netns(&ns).unwrap();
    let err = nl.add_host_ports(&pod_a).unwrap_err();
    assert!(err.is_not_found(), "no table yet: {err}");
    nl.remove_host_ports(&pod_a).unwrap();

    nl.replace_table(&realistic()).unwrap();
    assert_eq!(
        nl.host_port_differences(&pod_a).unwrap().len(),
        5,
        "3 ports, 2 hairpins"
    );
    nl.add_host_ports(&pod_a).unwrap();
    nl.add_host_ports(&pod_a).unwrap();
    assert_eq!(
        nl.host_port_differences(&pod_a).unwrap(),
        Vec::<String>::new()
    );
    let got = listing(&ns, TABLE).0;
    for line in [
        "tcp . 8080 : 10.244.1.5 . 80",
        "udp . 10.78.0.1 . 8080 : 10.244.1.5 . 80",
        "tcp . 8080 : fd00:10:244::5 . 80",
        "10.244.1.5 . 10.244.1.5",
        "fd00:10:244::5 . fd00:10:244::5",
    ] {
        assert!(got.contains(line), "{line:?} missing from\n{got}");
    }

    // A leftover of a pod that is gone holds udp/8080 on 10.78.0.1: the next pod with
    // that key takes it over.
    let pod_b = hostport::host_ports(
        &[mapping(Protocol::Udp, Some("10.78.0.1"))],
        [ip("10.244.1.6")],
    );
    nl.add_host_ports(&pod_b).unwrap();
    assert_eq!(
        nl.host_port_differences(&pod_b).unwrap(),
        Vec::<String>::new()
    );
    let a_now = nl.host_port_differences(&pod_a).unwrap();
    assert_eq!(
        a_now,
        vec!["host port udp 10.78.0.1 port 8080 -> 10.244.1.5:80 maps elsewhere".to_string()]
    );
    // Removing A leaves B's element alone, and takes A's hairpins.
    nl.remove_host_ports(&pod_a).unwrap();
    assert_eq!(
        nl.host_port_differences(&pod_b).unwrap(),
        Vec::<String>::new()
    );
    let got = listing(&ns, TABLE).0;
    assert!(!got.contains("10.244.1.5"), "{got}");
    assert!(!got.contains("fd00:10:244::5"), "{got}");
    assert!(
        got.contains("udp . 10.78.0.1 . 8080 : 10.244.1.6 . 80"),
        "{got}"
    );
    nl.remove_host_ports(&pod_a).unwrap();
    nl.remove_host_ports(&pod_b).unwrap();
    assert_eq!(nl.host_port_differences(&pod_b).unwrap().len(), 2);
    nl.delete_table(TABLE).unwrap();
    assert_eq!(
        nl.host_port_differences(&pod_b).unwrap().len(),
        2,
        "no table: all missing"
    );
}

/// Writes a sysctl of the namespace (from a thread inside it).
fn sysctl(ns: &NetNs, path: &'static str, value: &'static str) {
    ns.run_in(|| std::fs::write(path, value))
        .unwrap()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
}

fn udp_socket(ns: &NetNs, addr: &'static str) -> std::net::UdpSocket {
    let s = ns
        .run_in(|| std::net::UdpSocket::bind(addr))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_millis(1500)))
        .unwrap();
    s
}

/// A pod behind a node that routes to an outside host: the pod's packets leave
/// masqueraded; VXLAN from a host that is not a node is dropped (and counted).
#[test]
fn pods_are_masqueraded_and_vxlan_is_filtered() {
    use sinew_node_lib::netlink::{Netlink, Route};
    let test = "pods_are_masqueraded_and_vxlan_is_filtered";
    if !have_root(test) || !have_nft(test) {
        return;
    }
    let (node, pod, outside) = (new_netns(), new_netns(), new_netns());
    let mut nl = Netlink::in_netns(&node).unwrap();
    nl.create_veth("to-pod", "eth0", &pod, 1500).unwrap();
    nl.create_veth("to-out", "eth0", &outside, 1500).unwrap();
    for (name, addr) in [("to-pod", "10.244.1.1"), ("to-out", "192.0.2.1")] {
        let link = nl.link_by_name(name).unwrap().unwrap();
        nl.add_address(link.index, ip(addr), 24, false).unwrap();
        nl.set_link_up(link.index).unwrap();
    }
    for (ns, addr, dst, prefix, gw) in [
        (&pod, "10.244.1.2", "0.0.0.0", 0, "10.244.1.1"),
        // a route back to the pods: without NAT the pod's own address would arrive
        (&outside, "192.0.2.2", "10.244.0.0", 16, "192.0.2.1"),
    ] {
        let mut nl = Netlink::in_netns(ns).unwrap();
        let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
        nl.add_address(eth0.index, ip(addr), 24, false).unwrap();
        nl.set_link_up(eth0.index).unwrap();
        nl.add_route(&Route {
            gateway: Some(ip(gw)),
            ..Route::new(ip(dst), prefix)
        })
        .unwrap();
    }
    sysctl(&node, "/proc/sys/net/ipv4/conf/all/forwarding", "1");

    let mut nft_nl = Nftables::in_netns(&node).unwrap();
    let pools = [pool("10.244.0.0/16", true)];
    let mut peers = VxlanPeers {
        port: 4789,
        nodes: vec![ip("192.0.2.9")],
    };
    nft_nl.replace_table(&table(&pools, &peers, &[])).unwrap();

    let rx = udp_socket(&outside, "192.0.2.2:9999");
    let tx = udp_socket(&pod, "10.244.1.2:0");
    tx.send_to(b"masq", "192.0.2.2:9999").unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = rx.recv_from(&mut buf).expect("the pod's packet arrives");
    assert_eq!(&buf[..n], b"masq");
    assert_eq!(
        from.ip(),
        ip("192.0.2.1"),
        "masqueraded to the node's address"
    );

    // VXLAN from 192.0.2.2, which is not a node: dropped before any socket sees it
    let vxlan = udp_socket(&node, "0.0.0.0:4789");
    let sender = udp_socket(&outside, "192.0.2.2:0");
    sender.send_to(b"vxlan", "192.0.2.1:4789").unwrap();
    assert!(vxlan.recv_from(&mut buf).is_err(), "dropped");
    let listed = listing(&node, TABLE).0;
    assert!(
        listed.contains("ip saddr != @nodes4 udp dport 4789 counter packets 1 bytes 33 drop"),
        "{listed}"
    );
    // once it is a node, its VXLAN packets pass
    peers.nodes.push(ip("192.0.2.2"));
    nft_nl.replace_table(&table(&pools, &peers, &[])).unwrap();
    sender.send_to(b"vxlan", "192.0.2.1:4789").unwrap();
    let (n, from) = vxlan
        .recv_from(&mut buf)
        .expect("a node's VXLAN packet arrives");
    assert_eq!((&buf[..n], from.ip()), (&b"vxlan"[..], ip("192.0.2.2")));
}

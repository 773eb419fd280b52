//! Golden copies of the table for representative inputs (`testdata/nftables`, one `nft -f`
//! script each): the rendering must equal them, and the kernel must hold the same table
//! whether sinew programs it or `nft -f` does.

use super::tests::{ip, peers, pool};
use super::*;
use sinew_node_lib::netns::test_support::{have_root, new_netns};
use sinew_node_lib::nft::golden::{self, have_nft, nft_input};

/// One representative input: the agent's pools, VXLAN peers and host ports.
struct Case {
    name: &'static str,
    pools: Vec<NatPool>,
    peers: VxlanPeers,
    host_ports: Vec<HostPort>,
}

impl Case {
    fn table(&self) -> Table {
        table(&self.pools, &self.peers, &self.host_ports)
    }

    fn golden_path(&self) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(GOLDEN_DIR)
            .join(format!("{}.nft", self.name))
    }
}

/// Where the golden copies of the table live (one `nft -f` script per case).
const GOLDEN_DIR: &str = "testdata/nftables";

fn cases() -> Vec<Case> {
    use sinew_node_lib::hostport::{PortMapping, host_ports};
    let mapping = |host_port, protocol, host_ip: Option<&str>| PortMapping {
        host_port,
        container_port: 8080,
        protocol,
        host_ip: host_ip.map(ip),
    };
    // The conformance spec's three pods on one port (127.0.0.1/TCP, node IP/TCP, node
    // IP/UDP), and a dual-stack pod on every local address plus SCTP on the node's IPv6.
    let mut ports = host_ports(
        &[mapping(54323, Protocol::Tcp, Some("127.0.0.1"))],
        [ip("10.77.1.5")],
    );
    ports.extend(host_ports(
        &[mapping(54323, Protocol::Tcp, Some("10.99.0.10"))],
        [ip("10.77.1.6")],
    ));
    ports.extend(host_ports(
        &[mapping(54323, Protocol::Udp, Some("10.99.0.10"))],
        [ip("10.77.1.7")],
    ));
    ports.extend(host_ports(
        &[
            mapping(80, Protocol::Tcp, None),
            mapping(5000, Protocol::Sctp, Some("fd99::10")),
        ],
        [ip("10.77.1.8"), ip("fd77::8")],
    ));
    ports.sort();
    vec![
        Case {
            name: "one-ipv4-pool",
            pools: vec![pool("10.244.0.0/16", true)],
            peers: peers(),
            host_ports: Vec::new(),
        },
        Case {
            name: "dual-stack-vxlan-peers",
            pools: vec![
                pool("10.244.0.0/16", true),
                pool("10.244.8.0/24", true),
                pool("10.245.0.0/16", false),
                pool("fd00:10:244::/56", true),
            ],
            peers: VxlanPeers {
                port: 8472,
                nodes: vec![
                    ip("10.99.1.11"),
                    ip("fd99::1"),
                    ip("10.99.0.10"),
                    ip("10.99.1.11"),
                ],
            },
            host_ports: Vec::new(),
        },
        Case {
            name: "host-ports",
            pools: vec![pool("10.77.0.0/16", true), pool("fd77::/64", true)],
            peers: VxlanPeers {
                port: 4789,
                nodes: vec![ip("10.99.0.10"), ip("fd99::10")],
            },
            host_ports: ports,
        },
        Case {
            name: "nat-outgoing-off",
            pools: vec![
                pool("10.244.0.0/16", false),
                pool("fd00:10:244::/56", false),
            ],
            peers: VxlanPeers {
                port: 4789,
                nodes: vec![ip("fd99::1"), ip("fd99::2")],
            },
            host_ports: Vec::new(),
        },
    ]
}

/// Every case's table in `nft` syntax is its golden copy, and every golden copy is a
/// case's.
#[test]
fn the_table_is_its_golden_copy() {
    let cases: Vec<(&str, Table)> = cases().iter().map(|c| (c.name, c.table())).collect();
    golden::check(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN_DIR),
        &cases,
        "SINEW_BLESS=1 cargo test -p sinew-node-agent nat::",
    );
}

/// For every case, the kernel's view of the table sinew programs (over netlink) is its
/// view of the golden copy as `nft -f` programs it, each in a throwaway namespace.
#[test]
fn the_kernel_holds_what_the_golden_copy_says() {
    let test = "the_kernel_holds_what_the_golden_copy_says";
    if !have_root(test) || !have_nft(test) {
        return;
    }
    for case in cases() {
        let golden = std::fs::read_to_string(case.golden_path()).unwrap();
        let by_nft = new_netns();
        nft_input(&by_nft, &["-f", "-"], &golden);
        let by_sinew = new_netns();
        let mut nl = Nftables::in_netns(&by_sinew).unwrap();
        assert!(!nl.table_exists(TABLE).unwrap());
        nl.replace_table(&case.table()).unwrap();
        assert!(nl.table_exists(TABLE).unwrap());
        let (got, want) = (
            golden::listing(&by_sinew, TABLE),
            golden::listing(&by_nft, TABLE),
        );
        assert_eq!(got.0, want.0, "{}", case.name);
        assert_eq!(got.1, want.1, "{}", case.name);
        assert!(got.0.contains("chain pod-sources-only"), "{}", got.0);
        if case.name == "dual-stack-vxlan-peers" {
            for line in [
                "elements = { 10.244.0.0/16, 10.245.0.0/16 }",
                "elements = { 10.99.0.10, 10.99.1.11 }",
                "elements = { fd99::1 }",
                "type nat hook postrouting priority srcnat; policy accept;",
                "ip6 saddr @nat6 ip6 daddr != @pods6 masquerade",
                "type filter hook input priority filter - 10; policy accept;",
                "ip saddr != @nodes4 udp dport 8472 counter packets 0 bytes 0 drop",
            ] {
                assert!(got.0.contains(line), "{line:?} missing from\n{}", got.0);
            }
        }
    }
}

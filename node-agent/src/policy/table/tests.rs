use super::*;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use sinew_node_lib::netlink::nftables::Nftables;
use sinew_node_lib::netns::test_support::{have_root, new_netns};
use sinew_node_lib::nft::policy::TABLE;
use sinew_policy::{NamespaceView, PodView, PolicyView, compile};

use sinew_node_lib::nft::golden::{self, have_nft, nft_input};

fn golden_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policy")
}

fn namespace(name: &str, labels: serde_json::Value) -> NamespaceView {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels}
    }))
    .unwrap();
    NamespaceView::from(&ns)
}

fn pod(ns: &str, name: &str, node: &str, labels: serde_json::Value, ips: &[&str]) -> PodView {
    let ips: Vec<serde_json::Value> = ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
    let p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIPs": ips}
    }))
    .unwrap();
    PodView::from(&p)
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> PolicyView {
    let p: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap();
    PolicyView::from(&p)
}

/// A small cluster: `web` pods on n1 accept the clients of their namespace on the named
/// port `http` and a monitoring range except a hole; `db` on n1 sends only to DNS.
fn world() -> World {
    World::new(
        [
            namespace("shop", serde_json::json!({"team": "shop"})),
            namespace("kube-system", serde_json::json!({})),
        ],
        [
            pod(
                "shop",
                "web-1",
                "n1",
                serde_json::json!({"app": "web"}),
                &["10.244.1.2", "fd00:244::2"],
            ),
            pod(
                "shop",
                "web-2",
                "n1",
                serde_json::json!({"app": "web"}),
                &["10.244.1.3"],
            ),
            pod(
                "shop",
                "db-1",
                "n1",
                serde_json::json!({"app": "db"}),
                &["10.244.1.4"],
            ),
            pod(
                "shop",
                "client-1",
                "n2",
                serde_json::json!({"app": "client"}),
                &["10.244.2.2", "fd00:244:0:1::2"],
            ),
            pod(
                "kube-system",
                "dns-1",
                "n2",
                serde_json::json!({"k8s-app": "kube-dns"}),
                &["10.244.2.9"],
            ),
        ],
        [
            policy(
                "shop",
                "web-ingress",
                serde_json::json!({
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [
                        {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                         "ports": [{"port": "http"}]},
                        {"from": [{"ipBlock": {"cidr": "192.168.50.0/24", "except": ["192.168.50.128/25"]}}]}
                    ]
                }),
            ),
            policy(
                "shop",
                "db-egress",
                serde_json::json!({
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]
                }),
            ),
        ],
    )
}

fn interfaces() -> Vec<PodInterface> {
    let at = |interface: &str, pod: Option<(&str, &str)>| PodInterface {
        interface: interface.into(),
        pod: pod.map(|(ns, n)| ObjectKey::new(ns, n)),
    };
    vec![
        at("snw1", Some(("shop", "web-1"))),
        at("snw2", Some(("shop", "web-2"))),
        at("snw3", Some(("shop", "db-1"))),
        // A container no Kubernetes pod owns: never selected, programmed at once.
        at("snw4", None),
        // A pod the agent has not seen yet: held.
        at("snw5", Some(("shop", "web-3"))),
    ]
}

fn cases() -> Vec<(&'static str, Table)> {
    let w = world();
    let ready = programmable(&interfaces(), &w);
    let plan = compile(&w, "n1");
    vec![
        ("shop", render(&plan, &w, &ready, false)),
        ("shop-drop-log", render(&plan, &w, &ready, true)),
        (
            "no-policy",
            render(
                &compile(&World::default(), "n1"),
                &World::default(),
                &[],
                false,
            ),
        ),
    ]
}

#[test]
fn the_table_is_its_golden_copy() {
    golden::check(
        &golden_dir(),
        &cases(),
        "SINEW_BLESS=1 cargo test -p sinew-node-agent policy::table",
    );
}

#[test]
fn a_pod_not_seen_yet_stays_held_and_a_foreign_container_is_programmed() {
    let ready = programmable(&interfaces(), &world());
    let names: Vec<&str> = ready.iter().map(|i| i.interface.as_str()).collect();
    assert_eq!(names, ["snw1", "snw2", "snw3", "snw4"]);
}

/// Pods of one class share one chain; every member maps to its class in each direction.
#[test]
fn pods_treated_alike_share_a_chain() {
    let w = world();
    let t = render(
        &compile(&w, "n1"),
        &w,
        &programmable(&interfaces(), &w),
        false,
    );
    let map = |name: &str| {
        t.sets
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .elements
            .iter()
            .map(|e| (e.key[0].clone(), e.data[0].clone()))
            .collect::<Vec<_>>()
    };
    let ifname = |s: &str| Value::IfName(s.into());
    assert_eq!(
        map("ingress-classes"),
        [
            (ifname("snw1"), Value::jump("ingress-0")),
            (ifname("snw2"), Value::jump("ingress-0"))
        ]
    );
    assert_eq!(
        map("egress-classes"),
        [(ifname("snw3"), Value::jump("egress-0"))]
    );
}

/// What sinew programs over netlink is what `nft -f` programs from the golden copy, in a
/// throwaway namespace.
#[test]
fn the_kernel_holds_what_the_golden_copy_says() {
    let test = "policy::table::the_kernel_holds_what_the_golden_copy_says";
    if !have_root(test) || !have_nft(test) {
        return;
    }
    for (name, table) in cases() {
        let text = std::fs::read_to_string(golden_dir().join(format!("{name}.nft"))).unwrap();
        let by_nft = new_netns();
        nft_input(&by_nft, &["-f", "-"], &text);
        let by_sinew = new_netns();
        Nftables::in_netns(&by_sinew)
            .unwrap()
            .replace_table(&table)
            .unwrap();
        assert_eq!(
            golden::listing(&by_sinew, TABLE),
            golden::listing(&by_nft, TABLE),
            "{name}"
        );
    }
}

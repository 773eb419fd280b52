//! A timing check to run by hand (not a test): a synthetic cluster of 10,000 pods in 500
//! namespaces on 100 nodes with 1,000 policies, compiled for one node and for every node.
//!
//!     cargo run --release -p sinew-policy --example compile_time [hostile]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use sinew_policy::{NamedPort, NamespaceView, PodView, PolicyView, Protocol, World, compile};

const PODS: usize = 10_000;
const NAMESPACES: usize = 500;
const NODES: usize = 100;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn policy(ns: usize, name: &str, spec: serde_json::Value) -> PolicyView {
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": format!("ns{ns}"), "name": name},
        "spec": spec,
    }))
    .expect("a valid policy");
    PolicyView::from(&np)
}

fn main() {
    let namespaces: Vec<NamespaceView> = (0..NAMESPACES)
        .map(|i| NamespaceView {
            name: format!("ns{i}"),
            labels: labels(&[("team", format!("t{}", i % 20))]),
        })
        .collect();
    let pods: Vec<PodView> = (0..PODS)
        .map(|i| {
            let v4 = IpAddr::from([10, 244, (i / 250) as u8, (i % 250) as u8 + 1]);
            let v6 = IpAddr::from([
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                (i / 250) as u16,
                (i % 250) as u16 + 1,
            ]);
            PodView {
                namespace: format!("ns{}", i % NAMESPACES),
                name: format!("pod{i}"),
                node: Some(format!("node{}", i % NODES)),
                labels: labels(&[
                    ("app", format!("app{}", i % 50)),
                    ("tier", format!("{}", i % 3)),
                ]),
                ips: vec![v4, v6],
                named_ports: vec![NamedPort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8000 + (i % 4) as u16,
                }],
                host_network: false,
                terminated: false,
            }
        })
        .collect();
    let mut policies = Vec::new();
    for ns in 0..NAMESPACES {
        policies.push(policy(
            ns,
            "ingress",
            json!({
                "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["0", "1"]}]},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", ns % 50)}}}],
                     "ports": [{"port": "http"}, {"port": 443}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % 20)}},
                               "podSelector": {}}],
                     "ports": [{"port": 9000, "endPort": 9100}]},
                    {"from": [{"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24", "172.17.0.0/16"]}}]}
                ]
            }),
        ));
        policies.push(policy(
            ns,
            "egress",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"namespaceSelector": {"matchLabels": {"team": "t0"}}}],
                     "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]},
                    {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "0"}}}],
                     "ports": [{"port": "http"}]},
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}}]}
                ]
            }),
        ));
    }
    let t = Instant::now();
    let world = World::new(namespaces, pods, policies);
    let built = t.elapsed();

    let t = Instant::now();
    let plan = compile(&world, "node0");
    let one = t.elapsed();
    let elements: usize = plan
        .ingress
        .iter()
        .chain(&plan.egress)
        .map(|c| c.element_count())
        .sum();

    // `compile_time hostile` skips the every-node pass (to profile the hostile part alone).
    let every_node = std::env::args().nth(1).as_deref() != Some("hostile");
    let t = Instant::now();
    let mut total = 0usize;
    for n in (0..NODES).filter(|_| every_node) {
        total += compile(&world, &format!("node{n}")).egress.len();
    }
    let all = t.elapsed();
    println!(
        "{PODS} pods, {NAMESPACES} namespaces, {} policies, {NODES} nodes",
        world.policies().count()
    );
    println!("world built in {built:?}");
    println!(
        "node0: {:?} ({} ingress + {} egress classes, {elements} elements, {} problems)",
        one,
        plan.ingress.len(),
        plan.egress.len(),
        plan.problems.len()
    );
    println!("all {NODES} nodes: {all:?} ({total} egress classes)");

    // Hostile: 100 more policies in ns0 selecting every pod, each allowing a different port
    // range from everywhere and from every pod, one with 20,000 excepts.
    let mut world = world;
    for i in 0..100u16 {
        let except: Vec<String> = if i == 0 {
            (0..20_000u32)
                .map(|j| format!("11.{}.{}.0/25", j / 256, j % 256))
                .collect()
        } else {
            Vec::new()
        };
        world.upsert_policy(policy(
            0,
            &format!("hostile{i}"),
            json!({
                "podSelector": {},
                "ingress": [
                    {"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": except}}],
                     "ports": [{"port": 100 + i, "endPort": 65535}]},
                    {"from": [{"namespaceSelector": {}}], "ports": [{"port": 1000 + i}, {"port": "http"}]},
                    {"ports": [{"port": "nosuch"}]}
                ]
            }),
        ));
    }
    let t = Instant::now();
    let plan = compile(&world, "node0");
    let hostile = t.elapsed();
    let elements: usize = plan
        .ingress
        .iter()
        .chain(&plan.egress)
        .map(|c| c.element_count())
        .sum();
    let reasons: usize = plan
        .ingress
        .iter()
        .flat_map(|c| &c.reasons)
        .map(Vec::len)
        .sum();
    println!(
        "node0 with 100 hostile policies: {hostile:?} ({} ingress classes, {elements} elements, {reasons} reasons in distinct sets, {} problems)",
        plan.ingress.len(),
        plan.problems.len()
    );
}

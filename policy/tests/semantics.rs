//! One small test per NetworkPolicy v1 behaviour. Each asks the reference evaluator and, via
//! `decide_checked`, the compiled plan of the pods' node, which must agree.

mod common;

use common::*;
use serde_json::json;
use sinew_policy::semantics::{Grant, Judgement};
use sinew_policy::{ObjectKey, Protocol, World};

const A: &str = "10.0.0.1";
const B: &str = "10.0.0.2";
const C: &str = "10.0.1.3";

/// Namespaces `a` (team=x) and `b` (team=y); pods a/client (A), a/server (B, app=db),
/// b/other (C, app=db).
fn base(policies: Vec<sinew_policy::PolicyView>) -> World {
    World::new(
        [ns("a", &[("team", "x")]), ns("b", &[("team", "y")])],
        [
            pod("a", "client", &[A], &[("app", "client")]),
            pod("a", "server", &[B], &[("app", "db")]),
            pod("b", "other", &[C], &[("app", "db")]),
        ],
        policies,
    )
}

/// An ingress policy on a/server with one rule.
fn ingress_on_server(rule: serde_json::Value) -> World {
    base(vec![np(
        "a",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [rule]}),
    )])
}

#[test]
fn no_policy_allows_everything() {
    let w = base(vec![]);
    let d = tcp(&w, A, B, 80);
    assert!(matches!(d.ingress.unwrap().1, Judgement::NotIsolated));
    assert!(matches!(d.egress.unwrap().1, Judgement::NotIsolated));
}

#[test]
fn policy_without_rules_denies_all_ingress_and_names_itself() {
    let w = base(vec![np("a", "deny", json!({"podSelector": {}}))]);
    let d = tcp(&w, C, B, 80);
    assert_eq!(
        d.ingress.unwrap().1,
        Judgement::Denied(vec![ObjectKey::new("a", "deny")])
    );
    // Egress is not isolated by an ingress-only policy.
    assert!(matches!(d.egress.unwrap().1, Judgement::NotIsolated));
}

#[test]
fn empty_pod_selector_selects_every_pod_of_its_namespace_only() {
    let w = base(vec![np("a", "deny", json!({"podSelector": {}}))]);
    assert!(!ingress_passes(&tcp(&w, C, A, 80)));
    assert!(!ingress_passes(&tcp(&w, C, B, 80)));
    assert!(ingress_passes(&tcp(&w, A, C, 80)));
}

#[test]
fn rule_with_no_from_allows_every_source() {
    let w = ingress_on_server(json!({}));
    let d = tcp(&w, C, B, 80);
    assert_eq!(
        d.ingress.unwrap().1,
        Judgement::Allowed(vec![Grant {
            policy: ObjectKey::new("a", "p"),
            rule: 0,
            peer: None,
            port: None
        }])
    );
    assert!(ingress_passes(&tcp(&w, "192.0.2.9", B, 80)));
}

#[test]
fn pod_selector_peer_alone_means_the_policy_namespace() {
    let w =
        ingress_on_server(json!({"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}));
    assert!(ingress_passes(&tcp(&w, A, B, 80)));
    // b/other has other labels anyway; give it the client label in b: still refused.
    let mut w2 = w.clone();
    w2.upsert_pod(pod("b", "other", &[C], &[("app", "client")]));
    assert!(!ingress_passes(&tcp(&w2, C, B, 80)));
}

#[test]
fn namespace_selector_peer_admits_every_pod_of_matching_namespaces() {
    let w =
        ingress_on_server(json!({"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}));
    assert!(ingress_passes(&tcp(&w, C, B, 80)));
    assert!(!ingress_passes(&tcp(&w, A, B, 80)));
}

#[test]
fn empty_namespace_selector_means_every_namespace() {
    let w = ingress_on_server(json!({"from": [{"namespaceSelector": {}}]}));
    assert!(ingress_passes(&tcp(&w, C, B, 80)));
    assert!(ingress_passes(&tcp(&w, A, B, 80)));
    // Not addresses that are no pod.
    assert!(!ingress_passes(&tcp(&w, "192.0.2.9", B, 80)));
}

#[test]
fn both_selectors_in_one_peer_must_both_match() {
    let w = ingress_on_server(json!({"from": [{
        "namespaceSelector": {"matchLabels": {"team": "y"}},
        "podSelector": {"matchLabels": {"app": "client"}}
    }]}));
    // b/other is in team=y but is app=db.
    assert!(!ingress_passes(&tcp(&w, C, B, 80)));
    let mut w2 = w.clone();
    w2.upsert_pod(pod("b", "other", &[C], &[("app", "client")]));
    assert!(ingress_passes(&tcp(&w2, C, B, 80)));
}

#[test]
fn separate_peers_are_alternatives() {
    let w = ingress_on_server(json!({"from": [
        {"namespaceSelector": {"matchLabels": {"team": "y"}}},
        {"podSelector": {"matchLabels": {"app": "client"}}}
    ]}));
    assert!(ingress_passes(&tcp(&w, C, B, 80)));
    assert!(ingress_passes(&tcp(&w, A, B, 80)));
}

#[test]
fn match_expressions_in_a_peer_selector() {
    let w = ingress_on_server(json!({"from": [{"namespaceSelector": {
        "matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["x"]}]
    }}]}));
    assert!(ingress_passes(&tcp(&w, C, B, 80)));
    assert!(!ingress_passes(&tcp(&w, A, B, 80)));
}

#[test]
fn ip_block_admits_its_cidr_minus_except() {
    let w = ingress_on_server(
        json!({"from": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}),
    );
    assert!(ingress_passes(&tcp(&w, "192.0.2.1", B, 80)));
    assert!(ingress_passes(&tcp(&w, "192.0.2.127", B, 80)));
    assert!(!ingress_passes(&tcp(&w, "192.0.2.128", B, 80)));
    assert!(!ingress_passes(&tcp(&w, "192.0.3.1", B, 80)));
}

#[test]
fn ip_block_includes_pod_addresses() {
    let w = ingress_on_server(json!({"from": [{"ipBlock": {"cidr": "10.0.1.0/24"}}]}));
    assert!(ingress_passes(&tcp(&w, C, B, 80)));
    assert!(!ingress_passes(&tcp(&w, A, B, 80)));
}

#[test]
fn numeric_port_with_protocol_defaulting_to_tcp() {
    let w = ingress_on_server(json!({"ports": [{"port": 5432}]}));
    assert!(ingress_passes(&tcp(&w, A, B, 5432)));
    assert!(!ingress_passes(&tcp(&w, A, B, 5433)));
    assert!(!ingress_passes(&send(&w, A, B, Protocol::Udp, 5432)));
}

#[test]
fn protocol_without_port_means_every_port_of_that_protocol() {
    let w = ingress_on_server(json!({"ports": [{"protocol": "UDP"}]}));
    assert!(ingress_passes(&send(&w, A, B, Protocol::Udp, 1)));
    assert!(ingress_passes(&send(&w, A, B, Protocol::Udp, 65535)));
    assert!(ingress_passes(&send(&w, A, B, Protocol::Udp, 0)));
    assert!(!ingress_passes(&tcp(&w, A, B, 53)));
}

#[test]
fn absent_or_empty_ports_allow_every_protocol() {
    for rule in [json!({}), json!({"ports": []})] {
        let w = ingress_on_server(rule);
        assert!(ingress_passes(&send(&w, A, B, Protocol::Other(1), 0)));
        assert!(ingress_passes(&send(&w, A, B, Protocol::Sctp, 9)));
    }
}

#[test]
fn rules_with_ports_never_admit_protocols_without_ports() {
    let w = ingress_on_server(json!({"ports": [{"protocol": "TCP"}]}));
    assert!(!ingress_passes(&send(&w, A, B, Protocol::Other(1), 0)));
}

#[test]
fn end_port_is_an_inclusive_range() {
    let w = ingress_on_server(json!({"ports": [{"port": 8000, "endPort": 8080}]}));
    for (port, want) in [
        (7999, false),
        (8000, true),
        (8040, true),
        (8080, true),
        (8081, false),
    ] {
        assert_eq!(ingress_passes(&tcp(&w, A, B, port)), want, "port {port}");
    }
}

#[test]
fn a_full_port_range_of_65535() {
    let w = ingress_on_server(json!({"ports": [{"port": 1, "endPort": 65535}]}));
    assert!(ingress_passes(&tcp(&w, A, B, 1)));
    assert!(ingress_passes(&tcp(&w, A, B, 65535)));
    assert!(!ingress_passes(&tcp(&w, A, B, 0)));
}

#[test]
fn sctp_rules_are_compiled_like_tcp() {
    let w = ingress_on_server(json!({"ports": [{"protocol": "SCTP", "port": 9}]}));
    assert!(ingress_passes(&send(&w, A, B, Protocol::Sctp, 9)));
    assert!(!ingress_passes(&tcp(&w, A, B, 9)));
}

#[test]
fn named_port_in_ingress_resolves_on_each_destination_pod() {
    let mut w = base(vec![np(
        "a",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
    )]);
    w.upsert_pod(named(
        pod("a", "client", &[A], &[]),
        &[("http", Protocol::Tcp, 8080)],
    ));
    w.upsert_pod(named(
        pod("a", "server", &[B], &[]),
        &[("http", Protocol::Tcp, 9090)],
    ));
    assert!(ingress_passes(&tcp(&w, C, A, 8080)));
    assert!(!ingress_passes(&tcp(&w, C, A, 9090)));
    assert!(ingress_passes(&tcp(&w, C, B, 9090)));
    assert!(!ingress_passes(&tcp(&w, C, B, 8080)));
}

#[test]
fn named_port_must_match_the_protocol_too() {
    let mut w = base(vec![np(
        "a",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}),
    )]);
    w.upsert_pod(named(
        pod("a", "server", &[B], &[]),
        &[("dns", Protocol::Tcp, 53)],
    ));
    assert!(!ingress_passes(&send(&w, C, B, Protocol::Udp, 53)));
    assert!(!ingress_passes(&tcp(&w, C, B, 53)));
}

#[test]
fn named_port_no_pod_has_allows_nothing() {
    let w = ingress_on_server(json!({"ports": [{"port": "nosuch"}]}));
    assert!(!ingress_passes(&tcp(&w, A, B, 80)));
}

#[test]
fn named_port_in_egress_resolves_on_the_peer_pod_and_never_on_other_addresses() {
    let mut w = base(vec![np(
        "a",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"port": "http"}]}]}),
    )]);
    w.upsert_pod(named(
        pod("a", "server", &[B], &[("app", "db")]),
        &[("http", Protocol::Tcp, 8080)],
    ));
    w.upsert_pod(named(
        pod("b", "other", &[C], &[("app", "db")]),
        &[("http", Protocol::Tcp, 9090)],
    ));
    assert!(egress_passes(&tcp(&w, A, B, 8080)));
    assert!(!egress_passes(&tcp(&w, A, B, 9090)));
    assert!(egress_passes(&tcp(&w, A, C, 9090)));
    assert!(!egress_passes(&tcp(&w, A, "192.0.2.1", 8080)));
}

#[test]
fn egress_rules_imply_egress_isolation() {
    let w = base(vec![np(
        "a",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "client"}},
               "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}),
    )]);
    assert!(egress_passes(&tcp(&w, A, B, 80)));
    assert!(!egress_passes(&tcp(&w, A, C, 80)));
    // And ingress isolation by default.
    assert!(!ingress_passes(&tcp(&w, B, A, 80)));
}

#[test]
fn egress_only_policy_types_leave_ingress_open() {
    let w = base(vec![np(
        "a",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )]);
    let d = tcp(&w, A, B, 80);
    assert!(!egress_passes(&d));
    assert!(ingress_passes(&tcp(&w, C, B, 80)));
}

#[test]
fn policy_types_ingress_ignores_egress_rules() {
    let w = base(vec![np(
        "a",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]}]}),
    )]);
    assert!(egress_passes(&tcp(&w, A, C, 80)));
}

#[test]
fn several_policies_selecting_a_pod_add_up() {
    let w = base(vec![
        np(
            "a",
            "one",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
                   "ingress": [{"from": [{"podSelector": {}}]}]}),
        ),
        np(
            "a",
            "two",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.1.0/24"}}], "ports": [{"port": 80}]}]}),
        ),
    ]);
    assert!(ingress_passes(&tcp(&w, A, B, 1)));
    assert!(ingress_passes(&tcp(&w, C, B, 80)));
    assert!(!ingress_passes(&tcp(&w, C, B, 81)));
    let d = tcp(&w, C, B, 81);
    assert_eq!(
        d.ingress.unwrap().1,
        Judgement::Denied(vec![ObjectKey::new("a", "one"), ObjectKey::new("a", "two")])
    );
}

#[test]
fn host_network_pods_are_never_selected_nor_pod_peers() {
    let mut host = pod("a", "host", &["172.18.0.2"], &[("app", "db")]);
    host.host_network = true;
    let mut w = ingress_on_server(json!({"from": [{"podSelector": {}}]}));
    w.upsert_pod(host);
    // Not a pod policy applies to: neither end is judged there.
    let d = tcp(&w, B, "172.18.0.2", 80);
    assert!(d.ingress.is_none());
    // As a source it is only an address: the pod selector does not admit it.
    assert!(!ingress_passes(&tcp(&w, "172.18.0.2", B, 80)));
}

#[test]
fn host_network_pod_addresses_pass_an_ip_block() {
    let mut host = pod("a", "host", &["172.18.0.2"], &[]);
    host.host_network = true;
    let mut w = ingress_on_server(json!({"from": [{"ipBlock": {"cidr": "172.18.0.0/16"}}]}));
    w.upsert_pod(host);
    assert!(ingress_passes(&tcp(&w, "172.18.0.2", B, 80)));
}

#[test]
fn terminated_pods_are_neither_selected_nor_peers() {
    let mut done = pod("a", "done", &["10.0.0.9"], &[("app", "db")]);
    done.terminated = true;
    let mut w = ingress_on_server(json!({"from": [{"podSelector": {}}]}));
    w.upsert_pod(done);
    assert!(tcp(&w, A, "10.0.0.9", 80).ingress.is_none());
    assert!(!ingress_passes(&tcp(&w, "10.0.0.9", B, 80)));
}

#[test]
fn pods_without_addresses_are_no_peers_but_stay_isolated() {
    let mut w = ingress_on_server(json!({"from": [{"podSelector": {}}]}));
    w.upsert_pod(pod("a", "new", &[], &[("app", "db")]));
    let plan = sinew_policy::compile(&w, "n1");
    let class = plan
        .class_of(
            &ObjectKey::new("a", "new"),
            sinew_policy::Direction::Ingress,
        )
        .expect("a selected pod is isolated before its addresses are known");
    // Its peers are the pods with addresses: a/client and a/server.
    assert_eq!(class.v4.any.len(), 1);
    assert_eq!(class.v4.any[0].addrs.start, ip(A));
    assert_eq!(class.v4.any[0].addrs.end, ip(B));
}

#[test]
fn ipv6_rules_and_dual_stack_pods() {
    let w = World::new(
        [ns("a", &[])],
        [
            pod(
                "a",
                "client",
                &["10.0.0.1", "fd00::1"],
                &[("app", "client")],
            ),
            pod("a", "server", &["10.0.0.2", "fd00::2"], &[("app", "db")]),
        ],
        [np(
            "a",
            "p",
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 80}]},
                {"from": [{"ipBlock": {"cidr": "fd00:9::/64", "except": ["fd00:9::/120"]}}]}
            ]}),
        )],
    );
    assert!(ingress_passes(&tcp(&w, "fd00::1", "fd00::2", 80)));
    assert!(ingress_passes(&tcp(&w, "10.0.0.1", "10.0.0.2", 80)));
    assert!(!ingress_passes(&tcp(&w, "fd00::1", "fd00::2", 81)));
    assert!(ingress_passes(&tcp(&w, "fd00:9::1:0", "fd00::2", 5)));
    assert!(!ingress_passes(&tcp(&w, "fd00:9::ff", "fd00::2", 5)));
    assert!(!ingress_passes(&tcp(&w, "10.0.9.1", "10.0.0.2", 5)));
}

#[test]
fn a_policy_selects_only_pods_of_its_own_namespace() {
    let w = base(vec![np(
        "b",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "db"}}}),
    )]);
    assert!(ingress_passes(&tcp(&w, A, B, 80)));
    assert!(!ingress_passes(&tcp(&w, A, C, 80)));
}

#[test]
fn cross_node_pods_are_each_judged_by_their_own_node_plan() {
    let mut w =
        ingress_on_server(json!({"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}));
    w.upsert_pod(on(pod("a", "client", &[A], &[("app", "client")]), "n2"));
    assert!(ingress_passes(&tcp(&w, A, B, 80)));
    let n2 = sinew_policy::compile(&w, "n2");
    assert!(n2.ingress.is_empty() && n2.egress.is_empty());
}

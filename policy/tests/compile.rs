//! The plan's shape: classes, elements, hostile input, failing closed, and the trace text.

mod common;

use common::*;
use serde_json::json;
use sinew_policy::explain::{Outcome, explain_at};
use sinew_policy::{
    Direction, Limits, ObjectKey, Packet, Protocol, World, compile, compile_with, explain,
};

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

#[test]
fn pods_with_equal_allow_lists_share_a_class_and_named_port_numbers_split_it() {
    let spec = json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]});
    let w = World::new(
        [ns("a", &[])],
        [
            named(
                pod("a", "x", &["10.0.0.1"], &[]),
                &[("http", Protocol::Tcp, 80)],
            ),
            named(
                pod("a", "y", &["10.0.0.2"], &[]),
                &[("http", Protocol::Tcp, 80)],
            ),
            named(
                pod("a", "z", &["10.0.0.3"], &[]),
                &[("http", Protocol::Tcp, 81)],
            ),
        ],
        [np("a", "p", spec)],
    );
    let plan = compile(&w, "n1");
    assert_eq!(plan.ingress.len(), 2);
    assert_eq!(plan.ingress[0].pods, [key("a", "x"), key("a", "y")]);
    assert_eq!(plan.ingress[1].pods, [key("a", "z")]);
    assert_eq!(plan.ingress[1].v4.ports[0].ports, (81, 81));
    assert!(plan.egress.is_empty());
    assert_eq!(plan.policies, [key("a", "p")]);
}

#[test]
fn an_ip_block_with_twenty_thousand_excepts_compiles_to_disjoint_ranges() {
    let except: Vec<String> = (0..20_000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let w = World::new(
        [ns("a", &[])],
        [pod("a", "x", &["10.200.0.1"], &[])],
        [np(
            "a",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": except}}]}]}),
        )],
    );
    let plan = compile(&w, "n1");
    let any = &plan.ingress[0].v4.any;
    // 20,000 adjacent /24s cut from the start of 10/8 leave one range after them.
    assert_eq!(any.len(), 1);
    assert_eq!(any[0].addrs.start, ip("10.78.32.0"));
    assert_eq!(any[0].addrs.end, ip("10.255.255.255"));
    let d = tcp(&w, "10.0.5.1", "10.200.0.1", 80);
    assert!(!ingress_passes(&d));
}

#[test]
fn scattered_excepts_become_one_element_per_gap() {
    let except: Vec<String> = (0..10_000u32)
        .map(|i| format!("10.{}.{}.0/25", i / 256, i % 256))
        .collect();
    let w = World::new(
        [ns("a", &[])],
        [pod("a", "x", &["192.168.0.1"], &[])],
        [np(
            "a",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": except}}], "ports": [{"port": 1, "endPort": 65535}]}]}),
        )],
    );
    let class = &compile(&w, "n1").ingress[0];
    // The block starts with an except, so each except is followed by one gap.
    assert_eq!(class.v4.ports.len(), 10_000);
    assert!(class.v4.ports.iter().all(|e| e.ports == (1, 65535)));
}

#[test]
fn a_named_port_no_pod_has_isolates_and_allows_nothing() {
    let w = World::new(
        [ns("a", &[])],
        [pod("a", "x", &["10.0.0.1"], &[])],
        [np(
            "a",
            "p",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "nosuch"}]}]}),
        )],
    );
    let plan = compile(&w, "n1");
    assert_eq!(plan.ingress.len(), 1);
    assert_eq!(plan.ingress[0].element_count(), 0);
    assert!(!plan.ingress[0].failed_closed);
}

#[test]
fn over_the_element_limit_a_class_is_deny_all_and_the_plan_names_its_policies() {
    let w = World::new(
        [ns("a", &[])],
        [
            pod("a", "x", &["10.0.0.1"], &[]),
            pod("a", "y", &["10.0.0.3"], &[]),
        ],
        [
            np(
                "a",
                "wide",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]}),
            ),
            np("a", "other", json!({"podSelector": {}, "ingress": [{}]})),
        ],
    );
    // Two port elements (x and y) and an `ADDR` element per family (the rule with no peers).
    let limits = Limits {
        elements_per_class: 3,
    };
    let plan = compile_with(&w, "n1", &limits);
    let class = &plan.ingress[0];
    assert!(class.failed_closed);
    assert_eq!(class.element_count(), 0);
    assert_eq!(plan.problems.len(), 1);
    assert_eq!(plan.problems[0].direction, Direction::Ingress);
    assert_eq!(
        plan.problems[0].policies,
        [key("a", "other"), key("a", "wide")]
    );
    assert_eq!(plan.problems[0].pods, [key("a", "x"), key("a", "y")]);
    assert!(
        !plan
            .verdict(
                &key("a", "x"),
                Direction::Ingress,
                ip("10.0.0.3"),
                Protocol::Tcp,
                80
            )
            .passes()
    );
    // Within the limit the same world compiles normally.
    let plan = compile_with(
        &w,
        "n1",
        &Limits {
            elements_per_class: 4,
        },
    );
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert!(
        plan.verdict(
            &key("a", "x"),
            Direction::Ingress,
            ip("10.0.0.3"),
            Protocol::Tcp,
            80
        )
        .passes()
    );
}

#[test]
fn too_many_rule_items_fail_closed_before_cutting() {
    // 3 peers x 3 ports = 9 items, over 4 x 2.
    let w = World::new(
        [ns("a", &[])],
        [pod("a", "x", &["10.0.0.1"], &[])],
        [np(
            "a",
            "p",
            json!({"podSelector": {}, "ingress": [{
                "from": [{"ipBlock": {"cidr": "10.1.0.0/16"}}, {"ipBlock": {"cidr": "10.2.0.0/16"}},
                         {"ipBlock": {"cidr": "10.3.0.0/16"}}],
                "ports": [{"port": 1}, {"port": 2}, {"port": 3}]}]}),
        )],
    );
    let plan = compile_with(
        &w,
        "n1",
        &Limits {
            elements_per_class: 2,
        },
    );
    assert!(plan.ingress[0].failed_closed);
    assert_eq!(
        plan.problems[0].message,
        "more than 8 rule items (peers x ports); compiled as deny-all"
    );
    assert_eq!(plan.problems[0].policies, [key("a", "p")]);
    // With room for its items the rule is one element: the three /16s touch, and so do the
    // three ports.
    let room = Limits {
        elements_per_class: 3,
    };
    let plan = compile_with(&w, "n1", &room);
    assert!(plan.problems.is_empty());
    assert_eq!(plan.ingress[0].element_count(), 1);
    let e = &plan.ingress[0].v4.ports[0];
    assert_eq!(e.addrs.to_string(), "10.1.0.0-10.3.255.255");
    assert_eq!(e.ports, (1, 3));
}

#[test]
fn element_reasons_name_every_rule_merged_into_them() {
    let w = World::new(
        [ns("a", &[])],
        [pod("a", "x", &["10.0.0.1"], &[])],
        [
            np(
                "a",
                "one",
                json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/25"}}]}]}),
            ),
            np(
                "a",
                "two",
                json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.128/25"}}]}]}),
            ),
        ],
    );
    let plan = compile(&w, "n1");
    let any = &plan.ingress[0].v4.any;
    assert_eq!(any.len(), 1, "adjacent ranges merge: {any:?}");
    assert_eq!(plan.ingress[0].reasons(any[0].reasons).len(), 2);
    // The trace keeps only the rule that covers the packet.
    let out = explain_at(
        &plan,
        &w,
        &key("a", "x"),
        Direction::Ingress,
        ip("192.0.2.200"),
        Protocol::Tcp,
        1,
    );
    let Outcome::Allowed(because) = out else {
        panic!("{out:?}")
    };
    assert_eq!(because.len(), 1);
    assert_eq!(because[0].grant.policy, key("a", "two"));
    assert_eq!(because[0].peer, "ipBlock 192.0.2.128/25");
}

#[test]
fn the_trace_names_policy_rule_selector_and_port_or_the_isolating_policies() {
    let w = World::new(
        [ns("a", &[("team", "x")]), ns("b", &[])],
        [
            on(pod("a", "client", &["10.0.0.1"], &[("app", "web")]), "n2"),
            named(
                pod("a", "db", &["10.0.0.2"], &[("app", "db")]),
                &[("pg", Protocol::Tcp, 5432)],
            ),
        ],
        [
            np(
                "a",
                "db-from-web",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
                    {"from": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.0/28"]}}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}},
                               "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}}],
                     "ports": [{"port": "pg"}]}
                ]}),
            ),
            np(
                "a",
                "deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            ),
        ],
    );
    let packet = Packet {
        src: ip("10.0.0.1"),
        dst: ip("10.0.0.2"),
        protocol: Protocol::Tcp,
        port: 5432,
    };
    let trace = explain(&w, &packet, &Limits::default());
    assert_eq!(
        trace.to_string(),
        "10.0.0.1 -> 10.0.0.2 TCP 5432\n  \
         egress at a/client: denied: isolated by a/deny-all and nothing allows it\n  \
         ingress at a/db: allowed by policy a/db-from-web ingress rule 1, \
         podSelector app in (web,api) in namespaceSelector team=x, TCP port \"pg\""
    );
    let other = explain(
        &w,
        &Packet {
            src: ip("192.0.2.1"),
            ..packet
        },
        &Limits::default(),
    );
    assert_eq!(
        other.to_string(),
        "192.0.2.1 -> 10.0.0.2 TCP 5432\n  \
         egress: 192.0.2.1 is not a pod; not judged\n  \
         ingress at a/db: denied: isolated by a/db-from-web, a/deny-all and nothing allows it"
    );
    let from_block = explain(
        &w,
        &Packet {
            src: ip("192.0.2.99"),
            ..packet
        },
        &Limits::default(),
    );
    assert!(from_block.passes());
    assert!(
        from_block
            .to_string()
            .ends_with("rule 0, ipBlock 192.0.2.0/24 except 192.0.2.0/28, all traffic"),
        "{from_block}"
    );
}

#[test]
fn a_plan_reads_as_text() {
    let w = World::new(
        [ns("a", &[]), ns("b", &[("team", "x")])],
        [
            named(
                pod("a", "db", &["10.0.0.2", "fd00::2"], &[("app", "db")]),
                &[("pg", Protocol::Tcp, 5432)],
            ),
            pod("a", "web", &["10.0.0.3", "fd00::3"], &[("app", "web")]),
            on(pod("b", "client", &["10.0.1.7"], &[]), "n2"),
        ],
        [
            np(
                "a",
                "db",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                              {"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                     "ports": [{"port": "pg"}, {"port": 9000, "endPort": 9100}]},
                    {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}
                ]}),
            ),
            np(
                "a",
                "web-out",
                json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"], "egress": [
                    {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "pg"}]},
                    {"ports": [{"port": 53, "protocol": "UDP"}]}
                ]}),
            ),
        ],
    );
    let text = compile(&w, "n1").to_string();
    assert_eq!(text, GOLDEN);
}

const GOLDEN: &str = "\
node n1
ingress class 0: pods a/db
  isolated by a/db
  192.168.0.0/24 all traffic  <- a/db rule 1 peer 0
  192.168.2.0-192.168.255.255 all traffic  <- a/db rule 1 peer 0
  10.0.0.3 TCP 5432  <- a/db rule 0 peer 0 port 0
  10.0.0.3 TCP 9000-9100  <- a/db rule 0 peer 0 port 1
  10.0.1.7 TCP 5432  <- a/db rule 0 peer 1 port 0
  10.0.1.7 TCP 9000-9100  <- a/db rule 0 peer 1 port 1
  fd00::3 TCP 5432  <- a/db rule 0 peer 0 port 0
  fd00::3 TCP 9000-9100  <- a/db rule 0 peer 0 port 1
egress class 0: pods a/web
  isolated by a/web-out
  0.0.0.0-10.0.0.1 UDP 53  <- a/web-out rule 1 port 0
  10.0.0.2 TCP 5432  <- a/web-out rule 0 peer 0 port 0
  10.0.0.2 UDP 53  <- a/web-out rule 1 port 0
  10.0.0.3-255.255.255.255 UDP 53  <- a/web-out rule 1 port 0
  ::-fd00::1 UDP 53  <- a/web-out rule 1 port 0
  fd00::2 TCP 5432  <- a/web-out rule 0 peer 0 port 0
  fd00::2 UDP 53  <- a/web-out rule 1 port 0
  fd00::3-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff UDP 53  <- a/web-out rule 1 port 0
";

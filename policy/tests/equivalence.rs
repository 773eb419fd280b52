//! Property tests on random small worlds (namespaces with labels; pods with labels, IPv4
//! and IPv6 addresses, named ports, some on the host network or terminated; policies with
//! random selectors, ipBlocks, ports, endPorts and policyTypes):
//! - the compiled plan's verdict equals the reference evaluator's for every packet between
//!   a pool of addresses (both directions, both families, TCP/UDP/SCTP/ICMP, several ports),
//!   and the trace names exactly the grants the evaluator finds;
//! - the plan is the same, byte for byte, whatever order the objects arrive in;
//! - every element list is sorted and disjoint.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use sinew_policy::explain::{Outcome, explain_at};
use sinew_policy::semantics::{Judgement, decide, pod_at};
use sinew_policy::view::PortMatch;
use sinew_policy::{
    Direction, Elements, Limits, NamespaceView, Packet, Plan, PodView, PolicyView, Protocol, World,
    compile,
};

const NODES: [&str; 2] = ["n1", "n2"];

fn v4(i: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, i])
}

fn v6(i: u16) -> IpAddr {
    IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i])
}

/// The addresses packets use: the pods' pool, just outside it, and far away.
fn addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = (0..9).map(v4).collect();
    out.push(IpAddr::from([192, 0, 2, 1]));
    out.extend((0..9).map(v6));
    out.push(IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]));
    out
}

fn label_pair() -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(vec!["app", "team"]),
        prop::sample::select(vec!["a", "b"]),
    )
        .prop_map(|(k, v)| (k.to_string(), v.to_string()))
}

fn labels_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(label_pair(), 0..3)
}

fn selector() -> impl Strategy<Value = Value> {
    let expr = (
        prop::sample::select(vec!["app", "team"]),
        prop_oneof![
            3 => prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
            1 => Just("Bogus"),
        ],
        prop::collection::vec(prop::sample::select(vec!["a", "b"]), 1..3),
    )
        .prop_map(|(k, op, vals)| {
            if op == "Exists" || op == "DoesNotExist" {
                json!({"key": k, "operator": op})
            } else {
                json!({"key": k, "operator": op, "values": vals})
            }
        });
    let some = (
        prop::option::of(label_pair()),
        prop::collection::vec(expr, 0..2),
    )
        .prop_map(|(ml, exprs)| {
            let mut s = serde_json::Map::new();
            if let Some((k, v)) = ml {
                s.insert("matchLabels".into(), json!({ k: v }));
            }
            if !exprs.is_empty() {
                s.insert("matchExpressions".into(), Value::Array(exprs));
            }
            Value::Object(s)
        });
    prop_oneof![1 => Just(json!({})), 2 => some]
}

/// A prefix over the pods' pool (or wider, or elsewhere), as its family's first address
/// plus an aligned offset, and excepts cut from inside it.
fn ip_block() -> impl Strategy<Value = Value> {
    let prefix = (
        any::<bool>(),
        prop::sample::select(vec![0u8, 24, 28, 29, 30, 31, 32]),
        0u32..16,
    );
    let excepts = prop::collection::vec((1u8..5, 0u32..16), 0..3);
    // Excepts that fall outside the prefix are dropped (the API server refuses them).
    (prefix, excepts).prop_map(|((is_v6, len4, offset), excepts)| {
        let base = |off: u32| if is_v6 { v6(off as u16) } else { v4(off as u8) };
        let len = |l4: u8| if is_v6 { 96 + l4 } else { l4 };
        let outer = sinew_core::Cidr::new_truncating(base(offset), len(len4)).unwrap();
        let ex: Vec<String> = excepts
            .into_iter()
            .filter(|(more, _)| len4 + more <= 32)
            .map(|(more, off)| {
                sinew_core::Cidr::new_truncating(base(off), len(len4 + more)).unwrap()
            })
            .filter(|e| outer.contains_cidr(e))
            .map(|e| e.to_string())
            .collect();
        if ex.is_empty() {
            json!({"ipBlock": {"cidr": outer.to_string()}})
        } else {
            json!({"ipBlock": {"cidr": outer.to_string(), "except": ex}})
        }
    })
}

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({ "podSelector": s })),
        selector().prop_map(|s| json!({ "namespaceSelector": s })),
        (selector(), selector())
            .prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
        ip_block(),
        Just(json!({"ipBlock": {"cidr": "192.0.2.0/24"}})),
    ]
}

fn port_entry() -> impl Strategy<Value = Value> {
    let proto = prop_oneof![
        2 => Just(None),
        1 => prop::sample::select(vec!["TCP", "UDP", "SCTP"]).prop_map(Some),
    ];
    let port = prop_oneof![
        1 => Just(Value::Null),
        2 => prop::sample::select(vec![53u16, 79, 80, 81, 8080]).prop_map(|p| json!(p)),
        2 => prop::sample::select(vec!["http", "http", "dns", "nosuch"]).prop_map(|p| json!(p)),
    ];
    (proto, port, prop::option::of(0u16..8000)).prop_map(|(proto, port, end)| {
        let mut e = serde_json::Map::new();
        if let Some(p) = proto {
            e.insert("protocol".into(), json!(p));
        }
        if let Some(n) = port.as_u64() {
            e.insert("port".into(), json!(n));
            if let Some(k) = end {
                e.insert("endPort".into(), json!(n + u64::from(k)));
            }
        } else if port.is_string() {
            e.insert("port".into(), port);
        }
        Value::Object(e)
    })
}

fn rule(peer_key: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(port_entry(), 0..3)),
    )
        .prop_map(move |(peers, ports)| {
            let mut r = serde_json::Map::new();
            if let Some(p) = peers {
                r.insert(peer_key.into(), Value::Array(p));
            }
            if let Some(p) = ports {
                r.insert("ports".into(), Value::Array(p));
            }
            Value::Object(r)
        })
}

fn policy(i: usize) -> impl Strategy<Value = PolicyView> {
    (
        0..3usize,
        selector(),
        prop::sample::select(vec![
            None,
            Some(vec!["Ingress"]),
            Some(vec!["Egress"]),
            Some(vec!["Ingress", "Egress"]),
        ]),
        prop::option::of(prop::collection::vec(rule("from"), 0..3)),
        prop::option::of(prop::collection::vec(rule("to"), 0..3)),
    )
        .prop_map(move |(ns, sel, types, ingress, egress)| {
            let mut spec = serde_json::Map::new();
            spec.insert("podSelector".into(), sel);
            if let Some(t) = types {
                spec.insert("policyTypes".into(), json!(t));
            }
            if let Some(r) = ingress {
                spec.insert("ingress".into(), Value::Array(r));
            }
            if let Some(r) = egress {
                spec.insert("egress".into(), Value::Array(r));
            }
            np(&format!("ns{ns}"), &format!("p{i}"), Value::Object(spec))
        })
}

fn pod_strategy(i: usize) -> impl Strategy<Value = PodView> {
    (
        0..3usize,
        labels_strategy(),
        prop::option::of(0u8..8),
        prop::option::of(0u16..8),
        prop::collection::vec(
            prop::sample::select(vec![
                ("http", Protocol::Tcp, 80u16),
                ("http", Protocol::Tcp, 8080),
                ("http", Protocol::Udp, 80),
                ("dns", Protocol::Udp, 53),
                ("dns", Protocol::Tcp, 53),
            ]),
            0..4,
        ),
        0..10u8,
        0..2usize,
    )
        .prop_map(move |(ns, l, a4, a6, ports, kind, node)| {
            let mut ips = Vec::new();
            ips.extend(a4.map(v4));
            ips.extend(a6.map(v6));
            let ls: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut p = pod(&format!("ns{ns}"), &format!("pod{i}"), &[], &ls);
            p.ips = ips;
            p.node = Some(NODES[node].into());
            p.host_network = kind == 0;
            p.terminated = kind == 1;
            named(p, &ports)
        })
}

#[derive(Debug, Clone)]
struct Input {
    namespaces: Vec<NamespaceView>,
    pods: Vec<PodView>,
    policies: Vec<PolicyView>,
}

fn input() -> impl Strategy<Value = Input> {
    let nss = prop::collection::vec(labels_strategy(), 3).prop_map(|ls| {
        ls.into_iter()
            .enumerate()
            .map(|(i, l)| {
                let ls: Vec<(&str, &str)> =
                    l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                ns(&format!("ns{i}"), &ls)
            })
            .collect::<Vec<_>>()
    });
    let pods = (0..8usize).map(pod_strategy).collect::<Vec<_>>();
    let policies = (0..4usize).map(policy).collect::<Vec<_>>();
    (nss, pods, 2..=8usize, policies, 1..=4usize).prop_map(
        |(namespaces, pods, np_, policies, npol)| {
            // Live pods hold distinct addresses (a host-network or terminated pod may share one).
            let mut taken = BTreeSet::new();
            let pods = pods
                .into_iter()
                .take(np_)
                .map(|mut p| {
                    if p.is_policy_pod() {
                        p.ips.retain(|ip| taken.insert(*ip));
                    }
                    p
                })
                .collect();
            Input {
                namespaces,
                pods,
                policies: policies.into_iter().take(npol).collect(),
            }
        },
    )
}

fn world(i: &Input) -> World {
    World::new(i.namespaces.clone(), i.pods.clone(), i.policies.clone())
}

fn check_disjoint(els: &Elements, class: &sinew_policy::Class) {
    for w in els.any.windows(2) {
        assert!(w[0].addrs.end < w[1].addrs.start, "any overlaps: {w:?}");
    }
    for w in els.ports.windows(2) {
        let key = |e: &sinew_policy::plan::PortElement| (e.addrs.start, e.protocol, e.ports.0);
        assert!(key(&w[0]) < key(&w[1]), "ports unsorted: {w:?}");
    }
    for (i, a) in els.ports.iter().enumerate() {
        assert!(a.ports.0 <= a.ports.1 && a.addrs.start <= a.addrs.end);
        assert!(!class.reasons(a.reasons).is_empty());
        for b in &els.ports[i + 1..] {
            let addr_overlap = a.addrs.start <= b.addrs.end && b.addrs.start <= a.addrs.end;
            let port_overlap =
                a.protocol == b.protocol && a.ports.0 <= b.ports.1 && b.ports.0 <= a.ports.1;
            assert!(
                !(addr_overlap && port_overlap),
                "ports overlap: {a:?} {b:?}"
            );
        }
    }
    assert!(els.any.iter().all(|e| !class.reasons(e.reasons).is_empty()));
}

fn check_plan(plan: &Plan) {
    for class in plan.ingress.iter().chain(&plan.egress) {
        check_disjoint(&class.v4, class);
        check_disjoint(&class.v6, class);
        assert!(
            class
                .v4
                .any
                .iter()
                .all(|e| e.addrs.start.is_ipv4() && e.addrs.end.is_ipv4())
        );
        assert!(
            class
                .v6
                .ports
                .iter()
                .all(|e| e.addrs.start.is_ipv6() && e.addrs.end.is_ipv6())
        );
    }
}

const PROTOCOLS: [Protocol; 4] = [
    Protocol::Tcp,
    Protocol::Udp,
    Protocol::Sctp,
    Protocol::Other(1),
];
const PORTS: [u16; 7] = [0, 53, 79, 80, 81, 8080, 9000];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plan_verdicts_equal_the_kubernetes_rules(input in input()) {
        let w = world(&input);
        let plans: Vec<Plan> = NODES.iter().map(|n| compile(&w, n)).collect();
        let plan_of = |ip: IpAddr| {
            let pod = pod_at(&w, ip)?;
            let i = NODES.iter().position(|n| Some(*n) == pod.node.as_deref())?;
            Some((pod.key(), &plans[i]))
        };
        let addrs = addresses();
        for &src in &addrs {
            for &dst in addrs.iter().filter(|d| d.is_ipv4() == src.is_ipv4()) {
                for protocol in PROTOCOLS {
                    for port in PORTS {
                        let packet = Packet { src, dst, protocol, port };
                        let d = decide(&w, &packet);
                        for (judged, at, peer, dir) in [
                            (&d.egress, src, dst, Direction::Egress),
                            (&d.ingress, dst, src, Direction::Ingress),
                        ] {
                            let Some((key, plan)) = plan_of(at) else {
                                prop_assert!(judged.is_none());
                                continue;
                            };
                            let (_, j) = judged.as_ref().unwrap();
                            let v = plan.verdict(&key, dir, peer, protocol, port);
                            prop_assert_eq!(v.passes(), j.passes(), "{} at {} for {:?}: plan {:?} rules {:?}", dir, key, packet, v, j);
                            let outcome = explain_at(plan, &w, &key, dir, peer, protocol, port);
                            match (j, outcome) {
                                (Judgement::Allowed(grants), Outcome::Allowed(because)) => {
                                    let named: Vec<_> = because.into_iter().map(|b| b.grant).collect();
                                    prop_assert_eq!(grants, &named);
                                }
                                (Judgement::Denied(a), Outcome::Denied { policies, .. }) => {
                                    prop_assert_eq!(a, &policies);
                                }
                                (Judgement::NotIsolated, Outcome::NotIsolated) => {}
                                (j, o) => prop_assert!(false, "{:?} vs {:?}", j, o),
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn plans_do_not_depend_on_input_order(
        input in input(),
        seed in prop::collection::vec(any::<u32>(), 24),
    ) {
        let mut shuffled = input.clone();
        let order = |n: usize, salt: usize| {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by_key(|i| seed[(i + salt) % seed.len()]);
            idx
        };
        shuffled.namespaces = order(input.namespaces.len(), 0).into_iter().map(|i| input.namespaces[i].clone()).collect();
        shuffled.pods = order(input.pods.len(), 7).into_iter().map(|i| input.pods[i].clone()).collect();
        shuffled.policies = order(input.policies.len(), 13).into_iter().map(|i| input.policies[i].clone()).collect();
        let (a, b) = (world(&input), world(&shuffled));
        for n in NODES {
            let (pa, pb) = (compile(&a, n), compile(&b, n));
            prop_assert_eq!(serde_json::to_string(&pa).unwrap(), serde_json::to_string(&pb).unwrap());
        }
    }

    #[test]
    fn every_element_list_is_sorted_and_disjoint(input in input()) {
        let w = world(&input);
        for n in NODES {
            check_plan(&compile(&w, n));
        }
    }

    #[test]
    fn updating_the_world_object_by_object_gives_the_plan_of_a_fresh_world(input in input(), drop_pod in 0..8usize, drop_policy in 0..4usize) {
        // Build incrementally, including a removal and a re-insertion of one pod and policy.
        let mut w = World::default();
        for p in &input.policies { w.upsert_policy(p.clone()); }
        for p in &input.pods { w.upsert_pod(p.clone()); }
        for n in &input.namespaces { w.upsert_namespace(n.clone()); }
        if let Some(p) = input.pods.get(drop_pod) {
            w.remove_pod(&p.key());
            w.upsert_pod(p.clone());
        }
        if let Some(p) = input.policies.get(drop_policy) {
            w.remove_policy(&p.key());
            w.upsert_policy(p.clone());
        }
        let fresh = world(&input);
        for n in NODES {
            prop_assert_eq!(compile(&w, n), compile(&fresh, n));
        }
    }

    #[test]
    fn a_class_over_the_element_limit_denies_everything_and_says_so(input in input()) {
        let w = world(&input);
        let tight = Limits { elements_per_class: 1 };
        for n in NODES {
            let full = compile(&w, n);
            let plan = sinew_policy::compile_with(&w, n, &tight);
            check_plan(&plan);
            for (dir, classes) in [(Direction::Ingress, &plan.ingress), (Direction::Egress, &plan.egress)] {
                for c in classes {
                    if c.failed_closed {
                        prop_assert_eq!(c.element_count(), 0);
                        prop_assert!(plan.problems.iter().any(|p| p.direction == dir && p.pods == c.pods && !p.policies.is_empty()));
                    } else {
                        prop_assert!(c.element_count() <= 1);
                    }
                }
                // The same pods are isolated either way.
                let pods = |cs: &[sinew_policy::Class]| cs.iter().flat_map(|c| c.pods.clone()).collect::<BTreeSet<_>>();
                prop_assert_eq!(pods(classes), pods(full.classes(dir)));
            }
        }
    }
}

/// The worlds above are only as good as the cases they reach: enough isolated pods, allowed
/// and denied packets, and packets allowed by a named port (fixed seed, so this is stable).
#[test]
fn the_generator_reaches_the_interesting_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut denied, mut allowed, mut by_name) = (0, 0, 0);
    for _ in 0..256 {
        let w = world(&input().new_tree(&mut runner).unwrap().current());
        for &src in &addresses() {
            for &dst in addresses().iter().filter(|d| d.is_ipv4() == src.is_ipv4()) {
                for protocol in PROTOCOLS {
                    for port in PORTS {
                        let d = decide(
                            &w,
                            &Packet {
                                src,
                                dst,
                                protocol,
                                port,
                            },
                        );
                        for (dir, judged) in [
                            (Direction::Egress, &d.egress),
                            (Direction::Ingress, &d.ingress),
                        ] {
                            match judged.as_ref().map(|(_, j)| j) {
                                Some(Judgement::Denied(_)) => denied += 1,
                                Some(Judgement::Allowed(grants)) => {
                                    allowed += 1;
                                    let named = grants.iter().any(|g| {
                                        let rule = &w.policy(&g.policy).unwrap().rules(dir)[g.rule];
                                        g.port.is_some_and(|i| {
                                            matches!(rule.ports[i].port, PortMatch::Named(_))
                                        })
                                    });
                                    by_name += usize::from(named);
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(denied > 10_000, "denied {denied}");
    assert!(allowed > 10_000, "allowed {allowed}");
    assert!(by_name > 20, "allowed by a named port {by_name}");
}

//! Builders shared by the integration tests: small worlds written as JSON policies, and a
//! check that the compiled plan and the reference evaluator agree on every packet asked.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use sinew_policy::semantics::{Judgement, pod_at};
use sinew_policy::{
    Decision, Direction, NamedPort, NamespaceView, Packet, PodView, PolicyView, Protocol, World,
    compile, decide,
};

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn ns(name: &str, l: &[(&str, &str)]) -> NamespaceView {
    NamespaceView {
        name: name.into(),
        labels: labels(l),
    }
}

/// A running pod on node `n1`.
pub fn pod(namespace: &str, name: &str, ips: &[&str], l: &[(&str, &str)]) -> PodView {
    PodView {
        namespace: namespace.into(),
        name: name.into(),
        node: Some("n1".into()),
        labels: labels(l),
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        named_ports: Vec::new(),
        host_network: false,
        terminated: false,
    }
}

pub fn named(mut p: PodView, ports: &[(&str, Protocol, u16)]) -> PodView {
    p.named_ports = ports
        .iter()
        .map(|(n, protocol, port)| NamedPort {
            name: n.to_string(),
            protocol: *protocol,
            port: *port,
        })
        .collect();
    p
}

pub fn on(mut p: PodView, node: &str) -> PodView {
    p.node = Some(node.into());
    p
}

/// A policy from its `spec` as JSON.
pub fn np(namespace: &str, name: &str, spec: serde_json::Value) -> PolicyView {
    let obj: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }))
    .unwrap();
    PolicyView::from(&obj)
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The reference decision on a packet, after checking that each end's compiled plan gives
/// the same verdict and that the plan's reasons include every grant the evaluator found.
pub fn decide_checked(world: &World, packet: &Packet) -> Decision {
    let d = decide(world, packet);
    let side = |addr: IpAddr, dir: Direction, peer: IpAddr, judged: &Option<_>| {
        let Some(pod) = pod_at(world, addr) else {
            assert!(judged.is_none());
            return;
        };
        let Some(node) = &pod.node else { return };
        let plan = compile(world, node);
        let verdict = plan.verdict(&pod.key(), dir, peer, packet.protocol, packet.port);
        let (_, j): &(_, Judgement) = judged.as_ref().unwrap();
        assert_eq!(
            verdict.passes(),
            j.passes(),
            "{dir} at {}: plan {verdict:?}, rules {j:?}",
            pod.key()
        );
        match (j, &verdict) {
            (Judgement::Allowed(grants), sinew_policy::Verdict::Allowed(reasons)) => {
                for g in grants {
                    assert!(
                        reasons.contains(g),
                        "{dir}: plan lacks {g:?} in {reasons:?}"
                    );
                }
            }
            (Judgement::Denied(a), sinew_policy::Verdict::Denied(b)) => assert_eq!(a, b),
            _ => {}
        }
    };
    side(packet.src, Direction::Egress, packet.dst, &d.egress);
    side(packet.dst, Direction::Ingress, packet.src, &d.ingress);
    d
}

pub fn tcp(world: &World, src: &str, dst: &str, port: u16) -> Decision {
    send(world, src, dst, Protocol::Tcp, port)
}

pub fn send(world: &World, src: &str, dst: &str, protocol: Protocol, port: u16) -> Decision {
    decide_checked(
        world,
        &Packet {
            src: ip(src),
            dst: ip(dst),
            protocol,
            port,
        },
    )
}

/// The ingress judgement's passing, which must exist.
pub fn ingress_passes(d: &Decision) -> bool {
    d.ingress.as_ref().expect("destination is a pod").1.passes()
}

pub fn egress_passes(d: &Decision) -> bool {
    d.egress.as_ref().expect("source is a pod").1.passes()
}

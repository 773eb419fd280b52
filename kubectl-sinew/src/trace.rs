//! `kubectl sinew trace POD POD`: the path between two pods as sinew programmed it: the pool
//! and mode of the destination's block, the path that mode gives between the two nodes
//! (`PoolMode::forwarding`, the same function the agent programs from), the route, device and
//! MTU at each hop, and what the source node's probe mesh reports for the destination node.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use serde::Serialize;
use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport, ProblemKind};
use std::collections::BTreeMap;

use sinew_crds::{
    Cidr, ClusterNetwork, Family, Forwarding, IPBlock, IPBlockUsage, IPBlockUsageStatus, IPPool,
};

/// One end of the trace.
#[derive(Debug, Clone, Serialize)]
pub struct End {
    pub pod: String,
    pub ip: String,
    pub node: String,
    pub block: Option<String>,
    pub pool: Option<String>,
    pub host_veth: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub from: End,
    pub to: End,
    pub mode: Option<String>,
    pub path: String,
    pub mtu: Option<u32>,
    pub hops: Vec<String>,
    pub probe: String,
    /// What NetworkPolicy decides for the connection (filled in by the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy_trace::PolicyTrace>,
}

fn end(
    pod: &Pod,
    blocks: &[IPBlock],
    usage: &BTreeMap<String, IPBlockUsageStatus>,
) -> Result<End, String> {
    let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let status = pod.status.clone().unwrap_or_default();
    let ip = status
        .pod_ip
        .clone()
        .ok_or_else(|| format!("pod {name} has no IP yet"))?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .ok_or_else(|| format!("pod {name} is not scheduled"))?;
    let holder = blocks.iter().find_map(|b| {
        let a = usage
            .get(&b.name_any())?
            .allocations
            .iter()
            .find(|a| a.ip == ip)?
            .clone();
        Some((b, a))
    });
    Ok(End {
        pod: name,
        ip,
        node,
        block: holder.as_ref().map(|(b, _)| b.spec.cidr.clone()),
        pool: holder.as_ref().map(|(b, _)| b.spec.pool.clone()),
        host_veth: holder
            .map(|(_, a)| sinew_node_lib::consts::host_veth_name(&a.container_id, &a.interface)),
    })
}

fn report(nodes: &[Node], name: &str) -> Option<NodeReport> {
    nodes
        .iter()
        .find(|n| n.name_any() == name)?
        .annotations()
        .get(NODE_STATE_ANNOTATION)
        .and_then(|a| NodeReport::parse(a))
}

/// What node `from`'s probes of node `to` found: its PeerUnreachable and MTUMismatch
/// problems that name `to`.
fn probe_result(report: Option<&NodeReport>, from: &str, to: &str) -> String {
    if from == to {
        return "same node: nothing crosses the underlay".into();
    }
    let Some(report) = report else {
        return format!("node {from} has not reported yet");
    };
    let named = format!("node {to}'s");
    let found: Vec<String> = report
        .problems
        .iter()
        .filter(|p| {
            matches!(
                p.kind,
                ProblemKind::PeerUnreachable | ProblemKind::MtuMismatch
            )
        })
        .filter(|p| p.message.contains(&named))
        .map(|p| format!("{}: {} ({})", p.kind, p.message, p.evidence.join("; ")))
        .collect();
    if found.is_empty() {
        format!(
            "ok: node {from} probes node {to} every 2 s over this path, small and at the pod MTU, and reports no problem"
        )
    } else {
        found.join("\n       ")
    }
}

/// The trace from `a` to `b`.
pub fn trace(
    a: &Pod,
    b: &Pod,
    blocks: &[IPBlock],
    usages: &[IPBlockUsage],
    pools: &[IPPool],
    nodes: &[Node],
    network: Option<&ClusterNetwork>,
) -> Result<Trace, String> {
    let usage = sinew_crds::usage_by_block(blocks, usages);
    let (from, to) = (end(a, blocks, &usage)?, end(b, blocks, &usage)?);
    let pool = to
        .pool
        .as_ref()
        .and_then(|p| pools.iter().find(|x| x.name_any() == *p));
    let Some(pool) = pool else {
        return Err(format!(
            "{} ({}) is in no sinew IPBlock: not a sinew address, or its node has not reported it yet",
            to.pod, to.ip
        ));
    };
    let mode = pool.spec.mode;
    let block_family = to
        .ip
        .parse()
        .map(Family::of)
        .map_err(|e| format!("{}: {e}", to.ip))?;
    let veth = |e: &End| e.host_veth.clone().unwrap_or_else(|| "?".into());
    let mut hops = vec![format!(
        "{} eth0 ({}) -> default route via the node's gateway -> {} on node {}",
        from.pod,
        from.ip,
        veth(&from),
        from.node
    )];
    let (path, mtu) = if from.node == to.node {
        ("same node: no underlay".to_string(), None)
    } else {
        let (ra, rb) = (report(nodes, &from.node), report(nodes, &to.node));
        let under = |r: &Option<NodeReport>| -> Option<Cidr> {
            r.as_ref()?.underlay.as_ref()?.parse().ok()
        };
        let (ua, ub) = (under(&ra), under(&rb));
        let Some(ua) = ua else {
            return Err(format!("node {} has not reported its underlay", from.node));
        };
        let same_subnet = ub.is_some_and(|ub| ub == ua);
        let forwarding = mode.forwarding(same_subnet, block_family, ua.family());
        let underlay_mtu = ra.as_ref().and_then(|r| r.underlay_mtu).unwrap_or(1500);
        let fixed = network.and_then(|n| n.spec.fixed_mtu());
        let mtu = mode.pod_mtu(underlay_mtu, ua.family(), block_family, fixed);
        let block = to.block.clone().unwrap_or_default();
        match forwarding {
            Forwarding::Routed => hops.push(format!(
                "node {}: route {block} via {}'s node address on the underlay (proto 116, routed: same subnet {ua})",
                from.node, to.node
            )),
            Forwarding::Vxlan => hops.push(format!(
                "node {}: route {block} dev sinew.vxlan onlink (proto 116) -> VXLAN to node {} ({})",
                from.node,
                to.node,
                if same_subnet { "mode VXLAN" } else { "different subnets" }
            )),
            Forwarding::Unreachable => hops.push(format!(
                "node {}: NO route to {block}: pool {} is Routed and nodes {} and {} are on different subnets",
                from.node, pool.name_any(), from.node, to.node
            )),
        }
        (format!("{forwarding:?}"), Some(mtu))
    };
    hops.push(format!(
        "node {}: route {}/{} dev {} proto 115 (pod route)",
        to.node,
        to.ip,
        block_family.bits(),
        veth(&to)
    ));
    hops.push(format!("{} eth0 ({})", to.pod, to.ip));
    Ok(Trace {
        probe: probe_result(report(nodes, &from.node).as_ref(), &from.node, &to.node),
        policy: None,
        from,
        to,
        mode: Some(mode.to_string()),
        path,
        mtu,
        hops,
    })
}

pub fn render(t: &Trace) -> String {
    let mut s = format!(
        "{} -> {}\npool {} mode {}: {}{}\n",
        t.from.pod,
        t.to.pod,
        t.to.pool.clone().unwrap_or_default(),
        t.mode.clone().unwrap_or_default(),
        t.path,
        t.mtu.map(|m| format!(", pod MTU {m}")).unwrap_or_default()
    );
    for (i, h) in t.hops.iter().enumerate() {
        s += &format!("  {}. {h}\n", i + 1);
    }
    s += &format!("probe: {}\n", t.probe);
    if let Some(p) = &t.policy {
        s += &p.text;
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sinew_crds::node::Problem;

    fn pod(name: &str, ip: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": []},
            "status": {"podIP": ip},
        }))
        .unwrap()
    }

    fn block(cidr: &str, node: &str, ip: &str, id: &str) -> (IPBlock, IPBlockUsage) {
        let (name, spec) = (
            cidr.replace(['.', '/'], "-"),
            json!({"pool": "p", "cidr": cidr, "node": node}),
        );
        let block = serde_json::from_value(json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlock",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        let usage = serde_json::from_value(json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
            "metadata": {"name": name}, "spec": spec,
            "status": {"allocated": 1, "allocations": [
                {"ip": ip, "containerId": id, "interface": "eth0", "generation": 1}]},
        }))
        .unwrap();
        (block, usage)
    }

    fn node(name: &str, report: &NodeReport) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name,
                         "annotations": {NODE_STATE_ANNOTATION: report.to_annotation()}},
        }))
        .unwrap()
    }

    fn report(underlay: &str, problems: Vec<Problem>) -> NodeReport {
        NodeReport {
            ready: true,
            underlay: Some(underlay.into()),
            underlay_mtu: Some(1500),
            problems,
            ..Default::default()
        }
    }

    #[test]
    fn a_trace_across_subnets_goes_through_vxlan_and_carries_the_probe_verdict() {
        let pool: IPPool = serde_json::from_value(json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "p"},
            "spec": {"cidr": "10.244.0.0/16", "blockSize": 26, "mode": "Auto"},
        }))
        .unwrap();
        let (a, b) = (pod("a", "10.244.0.2", "n0"), pod("b", "10.244.0.66", "n1"));
        let (blocks, usages): (Vec<_>, Vec<_>) = [
            block("10.244.0.0/26", "n0", "10.244.0.2", "c1"),
            block("10.244.0.64/26", "n1", "10.244.0.66", "c2"),
        ]
        .into_iter()
        .unzip();
        let unreachable = Problem::new(
            ProblemKind::PeerUnreachable,
            "pods here cannot reach node n1's pods: it does not answer over VXLAN (dev sinew.vxlan)",
        )
        .with_evidence(vec!["the node does not answer over the underlay either".into()]);
        let healthy = [
            node("n0", &report("10.99.0.0/24", vec![])),
            node("n1", &report("10.99.1.0/24", vec![])),
        ];
        let t = trace(
            &a,
            &b,
            &blocks,
            &usages,
            std::slice::from_ref(&pool),
            &healthy,
            None,
        )
        .unwrap();
        assert_eq!((t.path.as_str(), t.mtu), ("Vxlan", Some(1450)));
        assert!(
            t.hops.iter().any(|h| h.contains("dev sinew.vxlan")),
            "{t:?}"
        );
        assert!(
            t.probe.starts_with("ok: node n0 probes node n1"),
            "{}",
            t.probe
        );

        let broken = [
            node("n0", &report("10.99.0.0/24", vec![unreachable])),
            node("n1", &report("10.99.1.0/24", vec![])),
        ];
        let t = trace(&a, &b, &blocks, &usages, &[pool], &broken, None).unwrap();
        assert!(
            t.probe
                .starts_with("PeerUnreachable: pods here cannot reach node n1's"),
            "{}",
            t.probe
        );
        assert!(render(&t).contains("does not answer over the underlay either"));
    }
}

//! The NetworkPolicy part of `kubectl sinew trace`: the plans of both pods' nodes compiled
//! from the cluster's pods, namespaces and policies with the same code the agents program from
//! (`sinew-policy`), and the rule, peer and port entry that allow the connection in each
//! direction, or the policies that isolate a pod when nothing allows it.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;
use sinew_policy::{Limits, NamespaceView, Packet, PodView, PolicyView, Protocol, World, explain};

/// The verdict, and its text.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyTrace {
    pub enforced: bool,
    pub passes: bool,
    pub text: String,
}

impl PolicyTrace {
    pub fn not_enforced() -> PolicyTrace {
        PolicyTrace {
            enforced: false,
            passes: true,
            text: "NetworkPolicy: not enforced (ClusterNetwork spec.networkPolicy is Disabled)"
                .into(),
        }
    }
}

/// The connection to judge: `--port PORT/PROTOCOL`, else the destination's first container
/// port, else 80/TCP.
pub fn connection(port: Option<&str>, to: &Pod) -> Result<(Protocol, u16), String> {
    if let Some(spec) = port {
        let (number, protocol) = spec.split_once('/').unwrap_or((spec, "TCP"));
        let number: u16 = number
            .parse()
            .map_err(|_| format!("--port {spec}: {number:?} is not a port number"))?;
        let protocol = Protocol::parse(Some(&protocol.to_ascii_uppercase()))
            .ok_or_else(|| format!("--port {spec}: the protocol is TCP, UDP or SCTP"))?;
        return Ok((protocol, number));
    }
    let first = to
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .next();
    Ok(match first {
        Some(p) => (
            Protocol::parse(p.protocol.as_deref()).unwrap_or(Protocol::Tcp),
            u16::try_from(p.container_port).unwrap_or(80),
        ),
        None => (Protocol::Tcp, 80),
    })
}

pub fn world(namespaces: Vec<Namespace>, pods: Vec<Pod>, policies: Vec<NetworkPolicy>) -> World {
    World::new(
        namespaces.iter().map(NamespaceView::from),
        pods.iter().map(PodView::from),
        policies.iter().map(PolicyView::from),
    )
}

fn address(pod: &Pod) -> Result<IpAddr, String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            format!(
                "pod {} has no IP yet",
                pod.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

/// What the nodes of `from` and `to` decide for a connection from `from` to `to`.
pub fn trace(
    world: &World,
    from: &Pod,
    to: &Pod,
    (protocol, port): (Protocol, u16),
) -> Result<PolicyTrace, String> {
    let packet = Packet {
        src: address(from)?,
        dst: address(to)?,
        protocol,
        port,
    };
    let t = explain(world, &packet, &Limits::default());
    Ok(PolicyTrace {
        enforced: true,
        passes: t.passes(),
        text: format!("NetworkPolicy: {t}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, node: &str, app: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"containerPort": 8080, "name": "http"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .unwrap()
    }

    fn cluster() -> (World, Pod, Pod, Pod) {
        let web = pod("web", "10.244.1.2", "n1", "web");
        let client = pod("client", "10.244.2.2", "n2", "client");
        let other = pod("other", "10.244.2.3", "n2", "other");
        let policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "web-from-client", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                  "ports": [{"port": "http"}]}]}
        }))
        .unwrap();
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap();
        let w = world(
            vec![ns],
            vec![web.clone(), client.clone(), other.clone()],
            vec![policy],
        );
        (w, web, client, other)
    }

    /// The trace names the policy and the selector that allowed the connection, and the
    /// policy that isolates the pod when nothing allows it.
    #[test]
    fn the_trace_names_the_rule_and_selector_that_decided() {
        let (w, web, client, other) = cluster();
        let port = connection(None, &web).unwrap();
        assert_eq!(port, (Protocol::Tcp, 8080), "the destination's first port");
        let allowed = trace(&w, &client, &web, port).unwrap();
        assert!(allowed.passes, "{}", allowed.text);
        assert!(
            allowed.text.contains("shop/web-from-client"),
            "{}",
            allowed.text
        );
        assert!(allowed.text.contains("app=client"), "{}", allowed.text);
        let denied = trace(&w, &other, &web, port).unwrap();
        assert!(!denied.passes, "{}", denied.text);
        assert!(
            denied.text.contains("shop/web-from-client"),
            "{}",
            denied.text
        );
        let other_port = trace(&w, &client, &web, (Protocol::Tcp, 9090)).unwrap();
        assert!(!other_port.passes, "{}", other_port.text);
    }

    #[test]
    fn ports_are_read_as_kubectl_writes_them() {
        let (_, web, ..) = cluster();
        assert_eq!(
            connection(Some("53/udp"), &web).unwrap(),
            (Protocol::Udp, 53)
        );
        assert_eq!(connection(Some("443"), &web).unwrap(), (Protocol::Tcp, 443));
        assert!(connection(Some("x/TCP"), &web).is_err());
        assert!(connection(Some("53/ICMP"), &web).is_err());
    }
}

//! The pruned views the agent keeps of pods, namespaces and NetworkPolicies: only what policy
//! needs (labels, addresses, named ports, host network, phase; the parsed rules), converted
//! from the Kubernetes objects once, so the compiler never parses strings.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sinew_core::Cidr;

/// The label every namespace carries with its own name (the API server sets it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespaced object's name: a pod's or a policy's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A packet's transport protocol. Rules name only TCP, UDP and SCTP; anything else (ICMP, …)
/// is `Other` and passes only rules without ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Other(u8),
}

impl Protocol {
    /// The protocol of a rule or container port: absent means TCP; an unknown name is `None`.
    pub fn parse(name: Option<&str>) -> Option<Protocol> {
        match name.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Whether packets of this protocol carry ports that rules can name.
    pub fn has_ports(self) -> bool {
        !matches!(self, Protocol::Other(_))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Other(n) => write!(f, "protocol {n}"),
        }
    }
}

/// A container port with a name, which rules can refer to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What policy needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
    pub host_network: bool,
    /// Phase `Succeeded` or `Failed`: neither selected nor a peer (its address may be reused).
    pub terminated: bool,
}

impl PodView {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// Whether policy applies to this pod at all: a pod network pod that is not terminated.
    /// (Selection does not need addresses: a pod is isolated before its addresses are known.)
    pub fn is_policy_pod(&self) -> bool {
        !self.host_network && !self.terminated
    }

    /// The port numbers `name` means on this pod for `protocol`.
    pub fn resolve<'a>(
        &'a self,
        name: &'a str,
        protocol: Protocol,
    ) -> impl Iterator<Item = u16> + 'a {
        self.named_ports
            .iter()
            .filter(move |p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

impl From<&Pod> for PodView {
    fn from(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        ips.sort();
        ips.dedup();
        let mut named_ports: Vec<NamedPort> = spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        named_ports.sort();
        named_ports.dedup();
        let phase = status.and_then(|s| s.phase.as_deref());
        PodView {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            named_ports,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminated: matches!(phase, Some("Succeeded" | "Failed")),
        }
    }
}

/// What policy needs of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl From<&Namespace> for NamespaceView {
    fn from(ns: &Namespace) -> Self {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| name.clone());
        NamespaceView { name, labels }
    }
}

/// Ingress or egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Which namespaces a pod peer draws from.
#[derive(Debug, Clone, PartialEq)]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the policy's own namespace.
    Own,
    /// A `namespaceSelector` (empty: every namespace).
    Selector(LabelSelector),
}

/// One peer of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`: the live pods they select (an absent
    /// `podSelector` selects every pod of the namespaces).
    Pods {
        namespaces: NamespaceScope,
        pods: LabelSelector,
    },
    /// `ipBlock`: the addresses in `cidr` and in none of `except` (pod addresses included).
    Block { cidr: Cidr, except: Vec<Cidr> },
    /// A peer the API server should have refused (nothing set, a CIDR that does not parse):
    /// it matches nothing, so it can only take away, never grant (fail closed).
    Invalid(String),
}

/// What a port entry allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// `port` absent: every port of the protocol.
    All,
    /// `port` (and `endPort`): `lo..=hi`; empty when `endPort < port`.
    Range { lo: u16, hi: u16 },
    /// A container port name, resolved on the destination pod.
    Named(String),
    /// An entry the API server should have refused (unknown protocol, port out of range).
    Invalid(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortView {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// One ingress or egress rule: empty `peers` means every peer, empty `ports` every port and
/// protocol.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleView {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortView>,
}

/// What policy needs of a NetworkPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyView {
    pub namespace: String,
    pub name: String,
    /// Selects pods of `namespace` (empty: all of them).
    pub pod_selector: LabelSelector,
    /// Whether the policy isolates the pods it selects for ingress, and for egress
    /// (`policyTypes`, or its default: ingress always, egress when egress rules exist).
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    pub ingress: Vec<RuleView>,
    pub egress: Vec<RuleView>,
}

impl PolicyView {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    pub fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    pub fn rules(&self, direction: Direction) -> &[RuleView] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

impl From<&NetworkPolicy> for PolicyView {
    fn from(np: &NetworkPolicy) -> Self {
        let spec = np.spec.clone().unwrap_or_default();
        let ingress: Vec<RuleView> = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| rule(r.from.as_deref(), r.ports.as_deref()))
            .collect();
        let egress: Vec<RuleView> = spec
            .egress
            .iter()
            .flatten()
            .map(|r| rule(r.to.as_deref(), r.ports.as_deref()))
            .collect();
        let types = spec.policy_types.unwrap_or_default();
        let (isolates_ingress, isolates_egress) = if types.is_empty() {
            (true, !egress.is_empty())
        } else {
            (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            )
        };
        PolicyView {
            namespace: np.metadata.namespace.clone().unwrap_or_default(),
            name: np.metadata.name.clone().unwrap_or_default(),
            pod_selector: spec.pod_selector.unwrap_or_default(),
            isolates_ingress,
            isolates_egress,
            ingress,
            egress,
        }
    }
}

fn rule(peers: Option<&[NetworkPolicyPeer]>, ports: Option<&[NetworkPolicyPort]>) -> RuleView {
    RuleView {
        peers: peers.unwrap_or_default().iter().map(peer).collect(),
        ports: ports.unwrap_or_default().iter().map(port).collect(),
    }
}

fn peer(p: &NetworkPolicyPeer) -> Peer {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (Some(block), None, None) => ip_block(block),
        (None, None, None) => Peer::Invalid("a peer with no selector and no ipBlock".into()),
        (Some(_), _, _) => Peer::Invalid("an ipBlock combined with a selector".into()),
        (None, ns, pods) => Peer::Pods {
            namespaces: ns
                .clone()
                .map_or(NamespaceScope::Own, NamespaceScope::Selector),
            pods: pods.clone().unwrap_or_default(),
        },
    }
}

fn ip_block(block: &IPBlock) -> Peer {
    let Some(cidr) = parse_cidr(&block.cidr) else {
        return Peer::Invalid(format!("ipBlock cidr {:?} does not parse", block.cidr));
    };
    let mut except = Vec::new();
    for e in block.except.iter().flatten() {
        match parse_cidr(e) {
            Some(c) => except.push(c),
            None => return Peer::Invalid(format!("ipBlock except {e:?} does not parse")),
        }
    }
    except.sort();
    except.dedup();
    Peer::Block { cidr, except }
}

/// `address/len`, host bits allowed (older API servers accepted them; they are masked off).
pub fn parse_cidr(s: &str) -> Option<Cidr> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Cidr::new_truncating(addr, len.parse().ok()?).ok()
}

fn port(p: &NetworkPolicyPort) -> PortView {
    let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
        return PortView {
            protocol: Protocol::Tcp,
            port: PortMatch::Invalid(format!("unknown protocol {:?}", p.protocol)),
        };
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::All,
        (None, Some(_)) => PortMatch::Invalid("endPort without port".into()),
        (Some(IntOrString::String(name)), None) => PortMatch::Named(name.clone()),
        (Some(IntOrString::String(_)), Some(_)) => {
            PortMatch::Invalid("endPort with a named port".into())
        }
        (Some(IntOrString::Int(n)), end) => {
            match (u16::try_from(*n), end.map(u16::try_from).transpose()) {
                (Ok(lo), Ok(hi)) => PortMatch::Range {
                    lo,
                    hi: hi.unwrap_or(lo),
                },
                _ => PortMatch::Invalid(format!("port {n} or endPort {end:?} out of range")),
            }
        }
    };
    PortView { protocol, port }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodIP, PodSpec, PodStatus};
    use k8s_openapi::api::networking::v1::{
        NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicySpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn pod_view_takes_addresses_named_ports_phase_and_host_network() {
        let pod = Pod {
            metadata: meta("a", "web"),
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    ports: Some(vec![
                        ContainerPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            ..Default::default()
                        },
                        ContainerPort {
                            name: Some("dns".into()),
                            container_port: 53,
                            protocol: Some("UDP".into()),
                            ..Default::default()
                        },
                        ContainerPort {
                            container_port: 9000,
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ips: Some(vec![
                    PodIP {
                        ip: "fd00::5".into(),
                    },
                    PodIP {
                        ip: "10.0.0.5".into(),
                    },
                ]),
                ..Default::default()
            }),
        };
        let v = PodView::from(&pod);
        assert_eq!(v.key().to_string(), "a/web");
        assert_eq!(v.node.as_deref(), Some("n1"));
        assert_eq!(
            v.ips,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(v.resolve("http", Protocol::Tcp).collect::<Vec<_>>(), [8080]);
        assert_eq!(v.resolve("http", Protocol::Udp).count(), 0);
        assert_eq!(v.resolve("dns", Protocol::Udp).collect::<Vec<_>>(), [53]);
        assert!(v.is_policy_pod());

        let mut done = pod.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!PodView::from(&done).is_policy_pod());
        let mut host = pod;
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert!(!PodView::from(&host).is_policy_pod());
    }

    #[test]
    fn namespace_view_carries_its_name_label() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("team-a".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            NamespaceView::from(&ns).labels.get(NAMESPACE_NAME_LABEL),
            Some(&"team-a".to_string())
        );
    }

    fn policy(spec: NetworkPolicySpec) -> PolicyView {
        PolicyView::from(&NetworkPolicy {
            metadata: meta("a", "p"),
            spec: Some(spec),
        })
    }

    #[test]
    fn policy_types_default_to_ingress_and_to_egress_when_egress_rules_exist() {
        let p = policy(NetworkPolicySpec::default());
        assert!(p.isolates_ingress && !p.isolates_egress);
        let p = policy(NetworkPolicySpec {
            egress: Some(vec![NetworkPolicyEgressRule::default()]),
            ..Default::default()
        });
        assert!(p.isolates_ingress && p.isolates_egress);
        let p = policy(NetworkPolicySpec {
            egress: Some(vec![]),
            ..Default::default()
        });
        assert!(p.isolates_ingress && !p.isolates_egress);
        let p = policy(NetworkPolicySpec {
            policy_types: Some(vec!["Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule::default()]),
            ..Default::default()
        });
        assert!(!p.isolates_ingress && p.isolates_egress);
    }

    #[test]
    fn peers_and_ports_parse_and_invalid_ones_match_nothing() {
        let p = policy(NetworkPolicySpec {
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: "10.1.2.3/16".into(),
                            except: Some(vec!["10.1.1.0/24".into()]),
                        }),
                        ..Default::default()
                    },
                    NetworkPolicyPeer::default(),
                    NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector::default()),
                        ..Default::default()
                    },
                ]),
                ports: Some(vec![
                    NetworkPolicyPort {
                        port: Some(IntOrString::Int(80)),
                        end_port: Some(90),
                        ..Default::default()
                    },
                    NetworkPolicyPort {
                        port: Some(IntOrString::String("http".into())),
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    },
                    NetworkPolicyPort {
                        protocol: Some("ICMP".into()),
                        ..Default::default()
                    },
                ]),
            }]),
            ..Default::default()
        });
        let r = &p.ingress[0];
        assert_eq!(
            r.peers[0],
            Peer::Block {
                cidr: "10.1.0.0/16".parse().unwrap(),
                except: vec!["10.1.1.0/24".parse().unwrap()]
            }
        );
        assert!(matches!(r.peers[1], Peer::Invalid(_)));
        assert_eq!(
            r.peers[2],
            Peer::Pods {
                namespaces: NamespaceScope::Own,
                pods: LabelSelector::default()
            }
        );
        assert_eq!(r.ports[0].port, PortMatch::Range { lo: 80, hi: 90 });
        assert_eq!(r.ports[0].protocol, Protocol::Tcp);
        assert_eq!(r.ports[1].port, PortMatch::Named("http".into()));
        assert_eq!(r.ports[1].protocol, Protocol::Udp);
        assert!(matches!(r.ports[2].port, PortMatch::Invalid(_)));
    }
}

//! The two node contracts, typed once and used by both of their sides:
//!
//! - [`NodeState`]: what the node agent tells the per-pod plugin, in `node.json` under the
//!   node's state directory (read and written by `sinew_node_lib::node_state`);
//! - [`NodeReport`]: what the node agent tells the operator, in the Node annotation
//!   [`NODE_STATE_ANNOTATION`].
//!
//! Modes travel as [`PoolMode`] on both, never as free strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Cidr, Family, PoolMode};

/// Default node-local state directory (IPAM store, node state, block requests).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sinew";
/// File name of the plugin binary in the CNI bin directory, and its `type` in the conflist.
pub const PLUGIN_BINARY: &str = "sinew";
/// Node annotation holding the agent's [`NodeReport`] (JSON).
pub const NODE_STATE_ANNOTATION: &str = "sinew.dev/node-state";
/// Node annotation holding the MAC address of the node's VXLAN device.
pub const VTEP_MAC_ANNOTATION: &str = "sinew.dev/vtep-mac";
/// Annotation (on a pod or its namespace) naming the pools to take addresses from.
pub const POOL_ANNOTATION: &str = "sinew.dev/ippool";

/// What the agent tells the plugin about one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolState {
    pub name: String,
    pub cidr: String,
    pub mode: PoolMode,
    /// MTU for new pod interfaces of this pool.
    pub mtu: u32,
    #[serde(default)]
    pub disabled: bool,
    /// Addresses or CIDRs never handed out.
    #[serde(default)]
    pub reserved: Vec<String>,
    /// Blocks of this pool owned by this node, in claim order.
    #[serde(default)]
    pub blocks: Vec<String>,
    /// The pool had no unclaimed block left when this node last needed one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exhausted: bool,
}

impl PoolState {
    pub fn family(&self) -> Option<Family> {
        self.cidr.parse::<Cidr>().ok().map(|c| c.family())
    }
}

/// The whole node state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub node: String,
    /// Pools whose node selector matches this node, in preference order.
    pub pools: Vec<PoolState>,
    /// The kernel boot and network namespace (`<boot id>/netns-<cookie>`, see
    /// `sinew_node_lib::node_state::current_boot_id`) in which the agent last completed a
    /// whole pass (blocks, peer routes, VXLAN, NAT, forwarding). After a reboot, or a restart
    /// of a node that is a container (its network namespace is new, its disk kept), the file
    /// is still there but the kernel state is not: until the agent's first complete pass
    /// there, ADD answers "try again" and STATUS "not available". `None` only in files written
    /// without an agent (tests and tools), which are not gated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_boot: Option<String>,
}

impl NodeState {
    pub fn pool(&self, name: &str) -> Option<&PoolState> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Why the node cannot serve pods yet in the kernel network state `now` (boot and
    /// namespace), if it cannot (see `ready_boot`).
    pub fn not_ready_in_boot(&self, now: &str) -> Option<String> {
        let ready = self.ready_boot.as_deref()?;
        (!is_current(ready, now)).then(|| {
            format!(
                "the sinew node agent has not completed a pass since this node booted (routes, VXLAN and NAT of node {} are not programmed yet)",
                self.node
            )
        })
    }
}

/// Whether `ready` (a `ready_boot`) names the kernel network state `now`. A value without a
/// namespace part was written by an agent that did not record it (or on a kernel without
/// namespace cookies): it is compared with the boot alone, as that agent meant.
pub fn is_current(ready: &str, now: &str) -> bool {
    !ready.is_empty()
        && (ready == now
            || (!ready.contains('/') && now.split_once('/').is_some_and(|(boot, _)| boot == ready)))
}

/// Where the runtime's choice of CNI configuration stands on a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstallReport {
    /// sinew's conflist file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflist_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_sha256: Option<String>,
    /// The file the runtime loads (the first in lexical order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// Other files sorting before sinew's: they win.
    #[serde(default)]
    pub shadowing: Vec<String>,
    /// Other files sorting after sinew's.
    #[serde(default)]
    pub others: Vec<String>,
}

impl InstallReport {
    /// Another vendor's configuration is the one the runtime loads.
    pub fn shadowed(&self) -> bool {
        self.chosen.is_some() && self.chosen != self.conflist
    }
}

/// The kinds of problem sinew diagnoses. The name is the `reason` users see in
/// `ClusterNetwork.status.problems`, in Events and in `sinew_node_problem{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProblemKind {
    /// Another vendor's conflist wins the runtime's choice.
    ConflistShadowed,
    /// IP forwarding is off and the agent could not turn it on.
    ForwardingOff,
    /// A route or policy rule sinew does not own captures pod traffic.
    RouteConflict,
    /// A block this node held now belongs to another node (or is gone).
    BlockLost,
    /// A pool a pod asked for hands out no addresses.
    PoolUnusable,
    /// Some peers cannot be programmed yet (no VTEP, no address, unreachable in `Routed`).
    PeersIncomplete,
    BlockClaimFailed,
    BlockReleaseFailed,
    NftablesFailed,
    /// An IPBlock names this node but fails the trust checks.
    UntrustedBlock,
    /// A pool has few addresses left.
    PoolNearlyExhausted,
    /// Leftovers of another CNI: its bridges, tunnels and veths.
    ForeignInterfaces,
    /// Host-side veths of pods that no longer exist.
    DanglingVeth,
    /// The node waits for pods to go before cleaning up.
    CleanUpWaiting,
    /// Packets of the pod MTU do not reach a peer over the path its pool uses, or the
    /// underlay MTUs of the two nodes leave pods here with a larger MTU than the path carries.
    #[serde(rename = "MTUMismatch")]
    MtuMismatch,
    /// A peer does not answer probes over the path its pool uses.
    PeerUnreachable,
    /// Strict reverse-path filtering drops traffic sinew forwards on an interface it uses.
    #[serde(rename = "RPFilterStrict")]
    RpFilterStrict,
    /// Two nodes publish the same VTEP MAC, or one publishes the MAC another node's name
    /// derives: neither is given VXLAN traffic until it is resolved.
    #[serde(rename = "VTEPConflict")]
    VtepConflict,
    /// A step of the agent's pass failed on the node (netlink, node files); the steps that do
    /// not depend on it went on.
    StepFailed,
    /// The node's NetworkPolicy table could not be programmed: its pods keep the last table
    /// programmed (new pods are held, passing nothing).
    PolicyFailed,
    /// A NetworkPolicy class needed more set elements than a class may hold: its pods are
    /// denied everything in that direction (fail closed) until the policies shrink.
    PolicyLimited,
    /// A kind this build does not know (a newer agent).
    #[serde(other)]
    Other,
}

/// How bad a problem is, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// Pods on the node (or of the pool) lose networking or cannot start.
    Critical,
    /// Something degrades or will break.
    Warning,
    /// Worth knowing; nothing breaks.
    Info,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::ConflistShadowed => "ConflistShadowed",
            ProblemKind::ForwardingOff => "ForwardingOff",
            ProblemKind::RouteConflict => "RouteConflict",
            ProblemKind::BlockLost => "BlockLost",
            ProblemKind::PoolUnusable => "PoolUnusable",
            ProblemKind::PeersIncomplete => "PeersIncomplete",
            ProblemKind::BlockClaimFailed => "BlockClaimFailed",
            ProblemKind::BlockReleaseFailed => "BlockReleaseFailed",
            ProblemKind::NftablesFailed => "NftablesFailed",
            ProblemKind::UntrustedBlock => "UntrustedBlock",
            ProblemKind::PoolNearlyExhausted => "PoolNearlyExhausted",
            ProblemKind::ForeignInterfaces => "ForeignInterfaces",
            ProblemKind::DanglingVeth => "DanglingVeth",
            ProblemKind::CleanUpWaiting => "CleanUpWaiting",
            ProblemKind::MtuMismatch => "MTUMismatch",
            ProblemKind::PeerUnreachable => "PeerUnreachable",
            ProblemKind::RpFilterStrict => "RPFilterStrict",
            ProblemKind::VtepConflict => "VTEPConflict",
            ProblemKind::StepFailed => "StepFailed",
            ProblemKind::PolicyFailed => "PolicyFailed",
            ProblemKind::PolicyLimited => "PolicyLimited",
            ProblemKind::Other => "Other",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            ProblemKind::ConflistShadowed
            | ProblemKind::ForwardingOff
            | ProblemKind::RouteConflict
            | ProblemKind::BlockLost
            | ProblemKind::PoolUnusable
            | ProblemKind::MtuMismatch
            | ProblemKind::PeerUnreachable
            | ProblemKind::RpFilterStrict
            | ProblemKind::VtepConflict
            | ProblemKind::StepFailed
            | ProblemKind::PolicyFailed
            | ProblemKind::PolicyLimited => Severity::Critical,
            ProblemKind::PeersIncomplete
            | ProblemKind::BlockClaimFailed
            | ProblemKind::BlockReleaseFailed
            | ProblemKind::NftablesFailed
            | ProblemKind::UntrustedBlock
            | ProblemKind::PoolNearlyExhausted
            | ProblemKind::ForeignInterfaces
            | ProblemKind::Other => Severity::Warning,
            ProblemKind::DanglingVeth | ProblemKind::CleanUpWaiting => Severity::Info,
        }
    }

    /// Every kind, for metrics that report zero for the absent ones.
    pub const ALL: [ProblemKind; 21] = [
        ProblemKind::ConflistShadowed,
        ProblemKind::ForwardingOff,
        ProblemKind::RouteConflict,
        ProblemKind::BlockLost,
        ProblemKind::PoolUnusable,
        ProblemKind::PeersIncomplete,
        ProblemKind::BlockClaimFailed,
        ProblemKind::BlockReleaseFailed,
        ProblemKind::NftablesFailed,
        ProblemKind::UntrustedBlock,
        ProblemKind::PoolNearlyExhausted,
        ProblemKind::ForeignInterfaces,
        ProblemKind::DanglingVeth,
        ProblemKind::CleanUpWaiting,
        ProblemKind::MtuMismatch,
        ProblemKind::PeerUnreachable,
        ProblemKind::RpFilterStrict,
        ProblemKind::VtepConflict,
        ProblemKind::StepFailed,
        ProblemKind::PolicyFailed,
        ProblemKind::PolicyLimited,
    ];
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem: its kind, what is wrong (the cause), what shows it, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
    /// What sinew saw: routes, rules, interfaces, files, numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Problem {
    pub fn new(kind: ProblemKind, message: impl Into<String>) -> Problem {
        Problem {
            kind,
            message: message.into(),
            evidence: Vec::new(),
            fix: None,
        }
    }

    pub fn with_evidence(mut self, evidence: Vec<String>) -> Problem {
        self.evidence = evidence;
        self
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Problem {
        self.fix = Some(fix.into());
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// One node agent's report to the operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The node serves pods: its conflist is installed and its routes are programmed.
    #[serde(default)]
    pub ready: bool,
    /// Hash of the `ClusterNetwork` spec the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// The node's underlay subnet (CIDR of the interface holding its address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
    /// MTU of the node's underlay interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallReport>,
    /// Pool -> mode the node has programmed.
    #[serde(default)]
    pub modes: BTreeMap<String, PoolMode>,
    /// The node's own addresses on its VXLAN device, from its blocks: the source of its
    /// traffic into the tunnel; peers probe routed paths with them, so that an underlay that
    /// drops pod-addressed packets shows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel: Vec<std::net::IpAddr>,
    #[serde(default)]
    pub problems: Vec<Problem>,
    /// The node has removed everything sinew put on it (the network is being deleted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleaned_up: bool,
    /// Pools being deleted from which this node hands out no more addresses: disabled in its
    /// node state, their blocks retired in its IPAM store (no ADD in flight can allocate from
    /// them), and their `IPBlock` status written after that. The operator deletes a deleted
    /// pool's blocks only once every node holding one says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drained: Vec<String>,
    /// Problems left out of `problems` by [`NodeReport::bounded`] (the least severe), counted
    /// per kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<OmittedProblems>,
    /// NetworkPolicy on this node, when the network enforces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyReport>,
}

/// Whether a node's NetworkPolicy table is in line with the cluster's policies. Only what
/// changes with the policies themselves is here: what changes with every pod somewhere in the
/// cluster (set elements, interfaces held for a moment, the time of the last change) is in the
/// agent's metrics, so that pod churn never rewrites Node objects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// The table holds the policies as the agent last saw them (its last programming
    /// succeeded; it runs on every change).
    pub programmed: bool,
    /// Classes (groups of this node's pods treated alike) programmed.
    pub classes: u32,
}

/// How many problems of one kind a bounded report left out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OmittedProblems {
    pub kind: ProblemKind,
    pub count: u32,
}

/// The most problems one report carries: a report lives in one Node annotation (the API server
/// caps a Node's annotations at 256 KiB together) and the operator copies problems into the
/// one `ClusterNetwork`, so what one node says must not grow with the cluster (a node that
/// cannot reach 400 peers says so in 16 problems and a count).
pub const REPORT_PROBLEMS: usize = 16;
/// The longest message or fix of a reported problem, in bytes.
pub const PROBLEM_TEXT_BYTES: usize = 512;
/// The most evidence lines of a reported problem, and the longest line.
pub const PROBLEM_EVIDENCE_LINES: usize = 8;
pub const EVIDENCE_LINE_BYTES: usize = 256;
/// What the problems of a bounded report take at most in its annotation (the bounds above,
/// with room for the JSON around them).
pub const REPORT_PROBLEM_BYTES: usize = 64 * 1024;

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    const MARK: &str = " [...]";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

impl Problem {
    /// The problem with its texts cut to the report's bounds.
    fn bounded(self) -> Problem {
        let lines = self.evidence.len();
        // Over the bound, the last line kept says how many were left out.
        let kept = if lines > PROBLEM_EVIDENCE_LINES {
            PROBLEM_EVIDENCE_LINES - 1
        } else {
            lines
        };
        let mut evidence: Vec<String> = self
            .evidence
            .iter()
            .take(kept)
            .map(|e| truncated(e, EVIDENCE_LINE_BYTES))
            .collect();
        if kept < lines {
            evidence.push(format!("... {} more lines", lines - kept));
        }
        Problem {
            kind: self.kind,
            message: truncated(&self.message, PROBLEM_TEXT_BYTES),
            evidence,
            fix: self.fix.map(|f| truncated(&f, PROBLEM_TEXT_BYTES)),
        }
    }
}

impl NodeReport {
    /// Parses the annotation's value; `None` when it is not a report this build can read.
    /// The report is read within its bounds, whoever wrote it.
    pub fn parse(annotation: &str) -> Option<NodeReport> {
        serde_json::from_str(annotation)
            .ok()
            .map(NodeReport::bounded)
    }

    /// The report within its bounds: the [`REPORT_PROBLEMS`] most severe problems (then by
    /// kind and message), each cut to the text bounds; the rest counted per kind in `omitted`.
    pub fn bounded(mut self) -> NodeReport {
        let mut problems = std::mem::take(&mut self.problems);
        problems.sort_by(|a, b| {
            (a.kind.severity(), a.kind, &a.message).cmp(&(b.kind.severity(), b.kind, &b.message))
        });
        let rest = problems.split_off(problems.len().min(REPORT_PROBLEMS));
        let mut omitted: BTreeMap<ProblemKind, u32> =
            self.omitted.iter().map(|o| (o.kind, o.count)).collect();
        for p in rest {
            *omitted.entry(p.kind).or_default() += 1;
        }
        self.problems = problems.into_iter().map(Problem::bounded).collect();
        self.omitted = omitted
            .into_iter()
            .map(|(kind, count)| OmittedProblems { kind, count })
            .collect();
        self
    }

    /// How many problems the node has, reported or counted.
    pub fn problem_count(&self) -> usize {
        self.problems.len() + self.omitted.iter().map(|o| o.count as usize).sum::<usize>()
    }

    /// The annotation's value: the report within its bounds (see [`NodeReport::bounded`]).
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(&self.clone().bounded()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_roundtrips_with_typed_modes_and_problems() {
        let report = NodeReport {
            ready: true,
            modes: BTreeMap::from([("p".to_string(), PoolMode::Vxlan)]),
            problems: vec![Problem::new(
                ProblemKind::ForwardingOff,
                "net.ipv4.ip_forward=0",
            )],
            ..NodeReport::default()
        };
        let text = report.to_annotation();
        assert!(text.contains(r#""modes":{"p":"VXLAN"}"#), "{text}");
        assert!(text.contains(r#""kind":"ForwardingOff""#), "{text}");
        assert_eq!(NodeReport::parse(&text), Some(report));
        // A newer agent's kind is read, not dropped.
        let newer = r#"{"problems":[{"kind":"SomethingNew","message":"m"}]}"#;
        assert_eq!(
            NodeReport::parse(newer).unwrap().problems[0].kind,
            ProblemKind::Other
        );
        assert_eq!(NodeReport::parse("not json"), None);
    }

    /// A node failing against every peer of a large cluster still writes a small report that
    /// keeps its worst problems and counts the others.
    #[test]
    fn a_report_does_not_grow_with_the_problems() {
        let long = "x".repeat(10_000);
        let mut problems: Vec<Problem> = (0..5_000)
            .map(|i| {
                Problem::new(ProblemKind::PeerUnreachable, format!("peer {i}: {long}"))
                    .with_evidence(vec![long.clone(); 50])
                    .with_fix(long.clone())
            })
            .collect();
        problems.push(Problem::new(ProblemKind::DanglingVeth, "snw1"));
        problems.push(Problem::new(
            ProblemKind::ForwardingOff,
            "net.ipv4.ip_forward=0",
        ));
        let report = NodeReport {
            problems,
            ..NodeReport::default()
        }
        .bounded();
        let text = report.to_annotation();
        assert!(text.len() < REPORT_PROBLEM_BYTES, "{} bytes", text.len());
        assert_eq!(report.problems.len(), REPORT_PROBLEMS);
        assert_eq!(
            report.problems[0].kind,
            ProblemKind::ForwardingOff,
            "worst first"
        );
        assert_eq!(report.problem_count(), 5_002);
        assert_eq!(
            report.omitted,
            vec![
                OmittedProblems {
                    kind: ProblemKind::DanglingVeth,
                    count: 1
                },
                OmittedProblems {
                    kind: ProblemKind::PeerUnreachable,
                    count: 4_985
                },
            ]
        );
        let p = &report.problems[1];
        assert!(p.message.len() <= PROBLEM_TEXT_BYTES && p.message.ends_with("[...]"));
        assert_eq!(p.evidence.len(), PROBLEM_EVIDENCE_LINES);
        assert_eq!(p.evidence[PROBLEM_EVIDENCE_LINES - 1], "... 43 more lines");
        assert!(NodeReport::parse(&text) == Some(report.clone()));
        assert!(
            report.clone().bounded() == report,
            "bounding twice changes nothing"
        );
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncated("short", 10), "short");
        let cut = truncated(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with(" [...]"), "{cut}");
    }

    #[test]
    fn readiness_is_per_boot() {
        let mut s = NodeState {
            node: "n1".into(),
            pools: vec![],
            ready_boot: None,
        };
        assert_eq!(s.not_ready_in_boot("b1"), None, "ungated without an agent");
        s.ready_boot = Some(String::new());
        assert!(s.not_ready_in_boot("b1").is_some(), "no pass completed yet");
        s.ready_boot = Some("b0".into());
        assert!(
            s.not_ready_in_boot("b1")
                .unwrap()
                .contains("since this node booted")
        );
        assert_eq!(s.not_ready_in_boot("b0"), None);
    }

    /// A restarted container node: same boot, new network namespace (kind's `docker restart`).
    #[test]
    fn readiness_is_per_network_namespace() {
        let now = "b1/netns-42";
        assert!(is_current(now, now));
        assert!(
            !is_current("b1/netns-7", now),
            "another namespace of this boot"
        );
        assert!(!is_current("b0/netns-42", now), "another boot");
        assert!(is_current("b1", now), "written by an agent without cookies");
        assert!(!is_current("b0", now));
        assert!(!is_current("", now));
    }
}

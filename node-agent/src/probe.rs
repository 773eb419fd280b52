//! The probe mesh: every two seconds the agent sends DF-marked ICMP echoes to peers that
//! hold blocks (all of them up to 64, else a rotating sample of 64, see [`sample`]), over the path the peer's pools use (into `sinew.vxlan` for VXLAN, over the
//! underlay for routed pools), once small and once at the pod MTU of that path. A peer that
//! stops answering is [`ProblemKind::PeerUnreachable`] (with the last answer and, for VXLAN,
//! whether the node still answers on the underlay: the failing hop); a peer that answers
//! small packets but drops those of the pod MTU is [`ProblemKind::MtuMismatch`], with the
//! largest size that passes (found in a few more batches). Peers' reported underlay MTUs are
//! compared too: a peer whose links carry less than this node's pods send is a mismatch
//! before a single packet is lost.
//!
//! The probing runs on its own thread; passes read the verdicts ([`Mesh::problems`]) and the
//! thread wakes a pass whenever a verdict changes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sinew_crds::node::{Problem, ProblemKind};
use sinew_crds::{Family, vxlan_overhead};
use sinew_node_lib::consts::VXLAN_DEVICE;
use sinew_node_lib::icmp::{self, Outcome, Probe};
use tokio::sync::Notify;

use crate::peers::{BlockInfo, Nodes, PeerPath, Plan};

/// How often a round of probes leaves.
const ROUND_EVERY: Duration = Duration::from_secs(2);
/// The most targets one round probes (two echoes each): what a node sends does not grow with
/// the cluster. Larger meshes are covered in turn (see [`sample`]).
const ROUND_TARGETS: usize = 64;
/// How long one batch waits for answers.
const ANSWER_WITHIN: Duration = Duration::from_millis(400);
/// Rounds in a row a probe must fail before it is reported (one lost packet is not a problem).
const FAILED_ROUNDS: u32 = 2;
/// Size of the small probe (well under any MTU).
const SMALL: usize = 96;

/// One peer over one path, with the size pods send on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub peer: String,
    pub ip: IpAddr,
    /// This node's underlay address: the source of every probe (the peer answers to it).
    pub src: IpAddr,
    pub path: PeerPath,
    /// The largest pod MTU of the pools using this path to this peer.
    pub mtu: usize,
    /// The MTU of the peer's underlay, as it reports it.
    pub peer_underlay_mtu: Option<u32>,
    /// For a routed path: this node's and the peer's tunnel addresses (pod-network addresses
    /// from their blocks), the probes' source and destination, so that they are addressed as
    /// pods' packets are and an underlay that drops those (a cloud VPC) shows. `None` until
    /// both are known: the nodes' own addresses are probed then.
    pub pod_addresses: Option<(IpAddr, IpAddr)>,
}

/// Pod-network addresses the probes of routed paths use: this node's and each peer's tunnel
/// addresses.
#[derive(Debug, Clone)]
pub struct PodAddresses<'a> {
    pub own: Vec<IpAddr>,
    pub peers: &'a BTreeMap<String, Vec<IpAddr>>,
}

impl Target {
    fn device(&self) -> Option<String> {
        (self.path == PeerPath::Vxlan).then(|| VXLAN_DEVICE.to_string())
    }

    fn key(&self) -> (String, PeerPath) {
        (self.peer.clone(), self.path)
    }

    /// Where the probes go.
    fn dst(&self) -> IpAddr {
        self.pod_addresses.map_or(self.ip, |(_, dst)| dst)
    }

    fn path_name(&self) -> String {
        match self.path {
            PeerPath::Vxlan => format!("VXLAN (dev {VXLAN_DEVICE})"),
            PeerPath::Routed => "a plain route over the underlay".to_string(),
        }
    }

    /// The most the peer's underlay carries of a pod's packet on this path.
    fn peer_carries(&self) -> Option<usize> {
        let m = self.peer_underlay_mtu? as usize;
        Some(match self.path {
            PeerPath::Routed => m,
            PeerPath::Vxlan => m.saturating_sub(vxlan_overhead(Family::of(self.ip)) as usize),
        })
    }
}

/// The targets of a peer plan: one per peer and path its routes use, probed at the largest
/// pod MTU of the pools whose blocks take that path (pure).
pub fn targets(
    src: IpAddr,
    plan: &Plan,
    blocks: &[BlockInfo],
    pod_mtus: &BTreeMap<String, u32>,
    peers: &Nodes,
    peer_underlay_mtus: &BTreeMap<String, u32>,
    pod_addresses: &PodAddresses<'_>,
) -> Vec<Target> {
    let family = |ip: &&IpAddr| Family::of(**ip) == Family::of(src);
    // Looked up per route: thousands of peers and blocks in a large cluster.
    let pools: HashMap<_, &str> = blocks.iter().map(|b| (b.cidr, b.pool.as_str())).collect();
    let mut out: BTreeMap<(&str, PeerPath), Target> = BTreeMap::new();
    for route in &plan.routes {
        let Some(peer) = peers.get(&route.peer) else {
            continue;
        };
        let Some(mtu) = pools.get(&route.dst).and_then(|pool| pod_mtus.get(*pool)) else {
            continue;
        };
        let t = out
            .entry((peer.name.as_str(), route.path))
            .or_insert_with(|| Target {
                peer: peer.name.clone(),
                ip: peer.ip,
                src,
                path: route.path,
                mtu: 0,
                peer_underlay_mtu: peer_underlay_mtus.get(&peer.name).copied(),
                pod_addresses: match route.path {
                    PeerPath::Vxlan => None,
                    PeerPath::Routed => pod_addresses.own.iter().find(family).zip(
                        pod_addresses
                            .peers
                            .get(&peer.name)
                            .and_then(|a| a.iter().find(family)),
                    ),
                }
                .map(|(own, theirs)| (*own, *theirs)),
            });
        t.mtu = t.mtu.max(*mtu as usize);
    }
    out.into_values().collect()
}

/// What the probes of one target found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Rounds in a row without an answer to the small probe.
    pub lost_rounds: u32,
    /// Rounds in a row where the small probe passed and the pod-MTU one did not.
    pub oversize_rounds: u32,
    pub last_answer: Option<SystemTime>,
    /// Why the last small probe failed (`sendto`'s error, or no answer).
    pub failure: Option<String>,
    /// For a VXLAN target that does not answer: whether the node answers on the underlay.
    pub underlay_answers: Option<bool>,
    /// The largest size that passed when the pod MTU did not.
    pub largest: Option<usize>,
}

/// The verdict a pass reports; a change wakes a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Fine,
    Unreachable,
    Oversize(Option<usize>),
}

impl Health {
    fn verdict(&self) -> Verdict {
        if self.lost_rounds >= FAILED_ROUNDS {
            Verdict::Unreachable
        } else if self.oversize_rounds >= FAILED_ROUNDS {
            Verdict::Oversize(self.largest)
        } else {
            Verdict::Fine
        }
    }
}

#[derive(Default)]
struct State {
    targets: Vec<Target>,
    health: BTreeMap<(String, PeerPath), Health>,
    /// Where the next round's rotation starts among the targets.
    cursor: usize,
    /// Why the last round could not probe at all (no raw socket).
    error: Option<String>,
}

/// The mesh shared by the probing thread and the passes.
#[derive(Clone)]
pub struct Mesh {
    state: Arc<Mutex<State>>,
}

impl Mesh {
    /// Starts the probing thread; it wakes `wake` when a verdict changes.
    pub fn start(wake: Arc<Notify>) -> std::io::Result<Mesh> {
        // Nodes start their rotations at different places, so that a large mesh probes
        // every peer from some node in every round.
        let cursor = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize);
        let mesh = Mesh {
            state: Arc::new(Mutex::new(State {
                cursor,
                ..State::default()
            })),
        };
        let worker = mesh.clone();
        std::thread::Builder::new()
            .name("sinew-probe".into())
            .spawn(move || {
                loop {
                    let started = std::time::Instant::now();
                    if worker.round() {
                        wake.notify_one();
                    }
                    std::thread::sleep(ROUND_EVERY.saturating_sub(started.elapsed()));
                }
            })?;
        Ok(mesh)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the targets (each pass); health of targets that stay is kept.
    pub fn set_targets(&self, targets: Vec<Target>) {
        let mut state = self.lock();
        let keys: Vec<_> = targets.iter().map(Target::key).collect();
        state.health.retain(|k, _| keys.contains(k));
        state.targets = targets;
    }

    /// The problems the probes and the peers' underlay MTUs show now.
    pub fn problems(&self) -> Vec<Problem> {
        let state = self.lock();
        state
            .targets
            .iter()
            .filter_map(|t| problem(t, state.health.get(&t.key())))
            .collect()
    }

    /// One round over the sampled targets; whether any verdict changed.
    fn round(&self) -> bool {
        self.round_by(probe_round)
    }

    /// Test seam: a mesh without its thread; the test runs its rounds.
    #[cfg(test)]
    pub fn by_hand() -> Mesh {
        Mesh {
            state: Arc::default(),
        }
    }

    /// Test seam: one round in which a probe of `size` bytes to a target is answered where
    /// `answers` says; whether any verdict changed.
    #[cfg(test)]
    pub fn round_answered(&self, answers: impl Fn(&Target, usize) -> bool) -> bool {
        let outcome = |t: &Target, size| {
            Some(if answers(t, size) {
                Outcome::Answered(Duration::from_millis(1))
            } else {
                Outcome::Lost
            })
        };
        self.round_by(|targets| {
            Ok(targets
                .iter()
                .map(|t| Found {
                    small: outcome(t, SMALL),
                    full: outcome(t, t.mtu),
                    ..Found::default()
                })
                .collect())
        })
    }

    /// The targets the passes set.
    #[cfg(test)]
    pub fn targets(&self) -> Vec<Target> {
        self.lock().targets.clone()
    }

    /// One round over the sampled targets, probed by `probe_round`.
    fn round_by(&self, probe_round: impl FnOnce(&[Target]) -> std::io::Result<Vec<Found>>) -> bool {
        let targets = {
            let mut guard = self.lock();
            let state = &mut *guard;
            sample(
                &state.targets,
                &state.health,
                &mut state.cursor,
                ROUND_TARGETS,
            )
        };
        if targets.is_empty() {
            return false;
        }
        let results = match probe_round(&targets) {
            Ok(results) => results,
            Err(e) => {
                let e = e.to_string();
                let mut state = self.lock();
                if state.error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "cannot probe peers; PeerUnreachable and MTUMismatch are not checked");
                    state.error = Some(e);
                }
                return false;
            }
        };
        let mut state = self.lock();
        state.error = None;
        let mut changed = false;
        for (target, found) in targets.iter().zip(results) {
            // Targets replaced while the round ran are not updated.
            if !state.targets.contains(target) {
                continue;
            }
            let health = state.health.entry(target.key()).or_default();
            let before = health.verdict();
            health.update(found);
            changed |= health.verdict() != before;
        }
        changed
    }
}

/// The targets of one round, at most `max`: every target while there are no more than that;
/// else first those whose last probe failed (up to half the round, so a suspect is confirmed
/// or cleared on the next round and a dead peer is reported after two rounds in a row, as in
/// a small mesh), then the next healthy ones in turn from `cursor`, which moves on. Every
/// target is probed at least once every `ceil(targets / (max / 2))` rounds: with 5,000 peers,
/// 157 rounds of 2 s; across the cluster each peer is probed by about 64 nodes per round.
fn sample(
    targets: &[Target],
    health: &BTreeMap<(String, PeerPath), Health>,
    cursor: &mut usize,
    max: usize,
) -> Vec<Target> {
    if targets.len() <= max {
        return targets.to_vec();
    }
    let suspect = |t: &Target| {
        health
            .get(&t.key())
            .is_some_and(|h| h.lost_rounds > 0 || h.oversize_rounds > 0)
    };
    let mut picked: Vec<Target> = targets
        .iter()
        .filter(|t| suspect(t))
        .take(max / 2)
        .cloned()
        .collect();
    let start = *cursor % targets.len();
    let mut taken = 0;
    for t in targets[start..].iter().chain(&targets[..start]) {
        if picked.len() >= max {
            break;
        }
        taken += 1;
        if !picked.contains(t) {
            picked.push(t.clone());
        }
    }
    *cursor = (start + taken) % targets.len();
    picked
}

/// What one round found for one target.
#[derive(Debug, Clone, Default)]
struct Found {
    small: Option<Outcome>,
    full: Option<Outcome>,
    underlay_answers: Option<bool>,
    largest: Option<usize>,
}

impl Health {
    fn update(&mut self, found: Found) {
        let small_ok = found.small.as_ref().is_some_and(Outcome::answered);
        if small_ok {
            self.lost_rounds = 0;
            self.last_answer = Some(SystemTime::now());
            self.failure = None;
            self.underlay_answers = None;
        } else {
            self.lost_rounds += 1;
            self.failure = Some(match &found.small {
                Some(Outcome::NotSent(e)) => format!("not sent: {e}"),
                _ => format!("no answer within {} ms", ANSWER_WITHIN.as_millis()),
            });
            self.underlay_answers = found.underlay_answers;
        }
        if small_ok && !found.full.as_ref().is_some_and(Outcome::answered) {
            self.oversize_rounds += 1;
            self.largest = found.largest;
        } else if small_ok {
            self.oversize_rounds = 0;
            self.largest = None;
        }
    }
}

fn probe(target: &Target, size: usize, device: Option<String>) -> Probe {
    let (src, dst) = target.pod_addresses.unwrap_or((target.src, target.ip));
    Probe {
        dst,
        device,
        src: Some(src),
        size,
    }
}

/// A small probe between the two nodes' own addresses over the underlay.
fn underlay_probe(target: &Target) -> Probe {
    Probe {
        dst: target.ip,
        device: None,
        src: Some(target.src),
        size: SMALL,
    }
}

/// Sends the round's batches: small + pod-MTU probes to every target; for targets that
/// answer small but not full, sizes in between (three batches narrow it down to the byte);
/// for VXLAN targets that do not answer, a small probe over the underlay.
fn probe_round(targets: &[Target]) -> std::io::Result<Vec<Found>> {
    let mut found = vec![Found::default(); targets.len()];
    let batch: Vec<Probe> = targets
        .iter()
        .flat_map(|t| [probe(t, SMALL, t.device()), probe(t, t.mtu, t.device())])
        .collect();
    let out = icmp::echo(&batch, ANSWER_WITHIN)?;
    for (i, f) in found.iter_mut().enumerate() {
        f.small = Some(out[2 * i].clone());
        f.full = Some(out[2 * i + 1].clone());
    }
    // Largest passing size: [lo passes, hi fails], narrowed 16-fold per batch.
    let mut ranges: Vec<(usize, usize, usize)> = found
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            f.small.as_ref().is_some_and(Outcome::answered)
                && !f.full.as_ref().is_some_and(Outcome::answered)
        })
        .map(|(i, _)| (i, SMALL, targets[i].mtu))
        .collect();
    for _ in 0..3 {
        // Ranges narrowed to one byte are done; the others get 15 sizes each.
        let open: Vec<usize> = (0..ranges.len())
            .filter(|&k| ranges[k].2.saturating_sub(ranges[k].1) > 1)
            .collect();
        if open.is_empty() {
            break;
        }
        let sizes: Vec<Vec<usize>> = open
            .iter()
            .map(|&k| {
                let (_, lo, hi) = ranges[k];
                let step = (hi - lo).div_ceil(16).max(1);
                (1..16).map(|j| lo + j * step).filter(|&s| s < hi).collect()
            })
            .collect();
        let batch: Vec<Probe> = open
            .iter()
            .zip(&sizes)
            .flat_map(|(&k, s)| {
                let t = &targets[ranges[k].0];
                s.iter().map(move |&n| probe(t, n, t.device()))
            })
            .collect();
        let Ok(out) = icmp::echo(&batch, ANSWER_WITHIN) else {
            break;
        };
        let mut answers = out.iter();
        for (&k, s) in open.iter().zip(&sizes) {
            let (_, lo, hi) = &mut ranges[k];
            for &n in s {
                if answers.next().is_some_and(Outcome::answered) {
                    *lo = (*lo).max(n);
                } else {
                    *hi = (*hi).min(n);
                }
            }
            if *lo >= *hi {
                *hi = *lo + 1;
            }
        }
    }
    for (i, lo, _) in ranges {
        found[i].largest = Some(lo);
    }
    // The failing hop of a VXLAN path (does the node answer without the tunnel?) or of a
    // routed one probed with pod addresses (does it answer to its own address?).
    let lost: Vec<usize> = (0..targets.len())
        .filter(|&i| {
            (targets[i].path == PeerPath::Vxlan || targets[i].pod_addresses.is_some())
                && !found[i].small.as_ref().is_some_and(Outcome::answered)
        })
        .collect();
    if !lost.is_empty() {
        let batch: Vec<Probe> = lost.iter().map(|&i| underlay_probe(&targets[i])).collect();
        if let Ok(out) = icmp::echo(&batch, ANSWER_WITHIN) {
            for (&i, o) in lost.iter().zip(out) {
                found[i].underlay_answers = Some(o.answered());
            }
        }
    }
    Ok(found)
}

/// When the peer last answered, as a time that stays the same while it does not (the report,
/// and so the Node, is written only when a problem changes).
fn last_answer(then: Option<SystemTime>) -> String {
    match then.and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok()) {
        Some(t) => format!(
            "last answer at {}",
            t.round(k8s_openapi::jiff::Unit::Second).unwrap_or(t)
        ),
        None => "no answer since the agent started".to_string(),
    }
}

/// The problem one target shows, if any (pure).
fn problem(target: &Target, health: Option<&Health>) -> Option<Problem> {
    let peer = &target.peer;
    let path = target.path_name();
    if let Some(h) = health.filter(|h| h.verdict() == Verdict::Unreachable) {
        let mut evidence = vec![
            format!(
                "{SMALL}-byte echo to {} over {path}: {}",
                target.dst(),
                h.failure.as_deref().unwrap_or("no answer")
            ),
            format!(
                "{FAILED_ROUNDS} or more rounds in a row without an answer; {}",
                last_answer(h.last_answer)
            ),
        ];
        let fix = match h.underlay_answers {
            Some(true) if target.path == PeerPath::Routed => {
                evidence.push(format!(
                    "the node answers to its own address {} over the same underlay: packets addressed to pods are what is dropped (a cloud VPC's source/destination check, or a firewall that knows only node addresses)",
                    target.ip
                ));
                "this underlay does not carry pod-addressed packets: set the pools' spec.mode to VXLAN (Auto routes peers on one subnet directly), or turn the source/destination check off for the nodes and route the pools' CIDRs to them in the VPC".to_string()
            }
            Some(true) => {
                evidence.push(format!(
                    "the node answers over the underlay ({} without the tunnel): the VXLAN packets are what is dropped",
                    target.ip
                ));
                format!(
                    "allow sinew's VXLAN port (UDP, ClusterNetwork spec.vxlan.port) between the nodes in every firewall and security group, and check that sinew's agent runs on {peer}"
                )
            }
            Some(false) => {
                evidence.push(format!(
                    "the node does not answer over the underlay either ({})",
                    target.ip
                ));
                format!(
                    "check that {peer} is up and that this node's route to {} works (a blackhole, a firewall or a down link on the way)",
                    target.ip
                )
            }
            None => format!(
                "check that {peer} is up, that nothing on the way drops traffic to {} and that the nodes allow ICMP between them",
                target.ip
            ),
        };
        return Some(
            Problem::new(
                ProblemKind::PeerUnreachable,
                format!(
                    "pods here cannot reach node {peer}'s pods: it does not answer over {path}"
                ),
            )
            .with_evidence(evidence)
            .with_fix(fix),
        );
    }
    let mut evidence = Vec::new();
    let mut carried = None;
    if let Some(h) = health.filter(|h| matches!(h.verdict(), Verdict::Oversize(_))) {
        evidence.push(format!(
            "{}-byte echoes (the pod MTU) to {} over {path} with Don't Fragment are lost; {SMALL}-byte ones pass",
            target.mtu, target.ip
        ));
        if let Some(largest) = h.largest {
            evidence.push(format!("the largest packet that passes is {largest} bytes"));
            carried = Some(largest);
        }
    }
    if let Some(peer_max) = target.peer_carries().filter(|&m| m < target.mtu) {
        evidence.push(format!(
            "{peer} reports an underlay MTU of {}: it carries pods' packets of at most {peer_max} bytes over {path}, this node's pods send up to {}",
            target.peer_underlay_mtu.unwrap_or_default(),
            target.mtu
        ));
        carried = Some(carried.map_or(peer_max, |c: usize| c.min(peer_max)));
    }
    if evidence.is_empty() {
        return None;
    }
    let fit = carried
        .map(|c| format!("set the ClusterNetwork's spec.mtu to {c} or less, or "))
        .unwrap_or_default();
    Some(
        Problem::new(
            ProblemKind::MtuMismatch,
            format!(
                "packets of the pod MTU ({} bytes) from this node to node {peer}'s pods over {path} are dropped: large transfers stall",
                target.mtu
            ),
        )
        .with_evidence(evidence)
        .with_fix(format!(
            "{fit}give every node's underlay the same MTU (links, switches and tunnels on the way included)"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::NodeInfo;

    fn target(path: PeerPath, peer_mtu: Option<u32>) -> Target {
        Target {
            peer: "b".into(),
            ip: "10.99.1.11".parse().unwrap(),
            src: "10.99.0.10".parse().unwrap(),
            path,
            mtu: 1450,
            peer_underlay_mtu: peer_mtu,
            pod_addresses: None,
        }
    }

    fn found(small: bool, full: bool) -> Found {
        let o = |ok| {
            if ok {
                Outcome::Answered(Duration::ZERO)
            } else {
                Outcome::Lost
            }
        };
        Found {
            small: Some(o(small)),
            full: Some(o(full)),
            underlay_answers: (!small).then_some(true),
            largest: (small && !full).then_some(1350),
        }
    }

    fn peer(i: usize) -> Target {
        Target {
            peer: format!("n{i:04}"),
            ..target(PeerPath::Vxlan, None)
        }
    }

    #[test]
    fn a_small_mesh_is_probed_whole_every_round() {
        let targets: Vec<Target> = (0..10).map(peer).collect();
        let mut cursor = 3;
        assert_eq!(sample(&targets, &BTreeMap::new(), &mut cursor, 64), targets);
    }

    /// A round never probes more than its bound, and every peer of a 5,000-node mesh is
    /// probed within ceil(5,000 / 32) rounds even while 100 peers fail.
    #[test]
    fn a_large_mesh_is_probed_in_turn_within_a_bounded_time() {
        let targets: Vec<Target> = (0..5_000).map(peer).collect();
        let health: BTreeMap<_, _> = (0..100)
            .map(|i| {
                (
                    peer(i * 50).key(),
                    Health {
                        lost_rounds: 1,
                        ..Health::default()
                    },
                )
            })
            .collect();
        let mut cursor = 4_990;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5_000usize.div_ceil(32) {
            let round = sample(&targets, &health, &mut cursor, 64);
            assert!(round.len() <= 64, "{}", round.len());
            assert!(
                round
                    .iter()
                    .filter(|t| health.contains_key(&t.key()))
                    .count()
                    >= 32,
                "suspects come first, up to half the round"
            );
            seen.extend(round.into_iter().map(|t| t.peer));
        }
        assert_eq!(seen.len(), 5_000);
    }

    #[test]
    fn one_lost_round_is_not_a_problem_two_are() {
        let t = target(PeerPath::Vxlan, Some(1500));
        let mut h = Health::default();
        h.update(found(true, true));
        assert!(problem(&t, Some(&h)).is_none());
        h.update(found(false, false));
        assert!(problem(&t, Some(&h)).is_none(), "one lost round");
        h.update(found(false, false));
        let p = problem(&t, Some(&h)).unwrap();
        assert_eq!(p.kind, ProblemKind::PeerUnreachable);
        assert!(
            p.evidence
                .iter()
                .any(|e| e.contains("answers over the underlay")),
            "{p:?}"
        );
        assert!(p.fix.unwrap().contains("UDP"));
        h.update(found(true, true));
        assert!(problem(&t, Some(&h)).is_none(), "cleared by an answer");
    }

    /// A routed path probed with pod addresses that fail while the node answers to its own:
    /// the underlay drops pod-addressed packets (a cloud VPC), and the fix says VXLAN.
    #[test]
    fn an_underlay_dropping_pod_addresses_is_named_with_vxlan_as_the_fix() {
        let mut t = target(PeerPath::Routed, Some(1500));
        t.pod_addresses = Some(("10.244.0.1".parse().unwrap(), "10.244.1.1".parse().unwrap()));
        let mut h = Health::default();
        h.update(found(false, false));
        h.update(found(false, false));
        let p = problem(&t, Some(&h)).unwrap();
        assert_eq!(p.kind, ProblemKind::PeerUnreachable);
        assert!(p.evidence[0].contains("to 10.244.1.1"), "{p:?}");
        assert!(
            p.evidence.iter().any(|e| e.contains("addressed to pods")),
            "{p:?}"
        );
        assert!(p.fix.unwrap().contains("VXLAN"));
    }

    #[test]
    fn routed_targets_take_both_nodes_tunnel_addresses_once_known() {
        let plan = Plan {
            routes: vec![crate::peers::PeerRoute {
                dst: "10.244.1.0/26".parse().unwrap(),
                via: "10.99.0.11".parse().unwrap(),
                path: PeerPath::Routed,
                peer: "b".into(),
            }],
            ..Plan::default()
        };
        let blocks = [BlockInfo {
            cidr: "10.244.1.0/26".parse().unwrap(),
            node: "b".into(),
            pool: "p".into(),
        }];
        let mtus = BTreeMap::from([("p".to_string(), 1500)]);
        let peers = Nodes::new(vec![NodeInfo {
            name: "b".into(),
            ip: "10.99.0.11".parse().unwrap(),
            vtep_mac: None,
        }]);
        let src = "10.99.0.10".parse().unwrap();
        let own = vec!["fd00::1".parse().unwrap(), "10.244.0.1".parse().unwrap()];
        let unknown = BTreeMap::new();
        let pods = PodAddresses {
            own: own.clone(),
            peers: &unknown,
        };
        let t = targets(src, &plan, &blocks, &mtus, &peers, &BTreeMap::new(), &pods);
        assert_eq!(t[0].pod_addresses, None, "the peer's is not known yet");
        let known = BTreeMap::from([("b".to_string(), vec!["10.244.1.1".parse().unwrap()])]);
        let pods = PodAddresses { own, peers: &known };
        let t = targets(src, &plan, &blocks, &mtus, &peers, &BTreeMap::new(), &pods);
        assert_eq!(
            t[0].pod_addresses,
            Some(("10.244.0.1".parse().unwrap(), "10.244.1.1".parse().unwrap()))
        );
        assert_eq!(probe(&t[0], SMALL, None).dst, t[0].pod_addresses.unwrap().1);
    }

    #[test]
    fn dropped_pod_mtu_names_the_largest_size_that_passes() {
        let t = target(PeerPath::Vxlan, Some(1500));
        let mut h = Health::default();
        h.update(found(true, false));
        h.update(found(true, false));
        let p = problem(&t, Some(&h)).unwrap();
        assert_eq!(p.kind, ProblemKind::MtuMismatch);
        assert!(
            p.evidence
                .iter()
                .any(|e| e.contains("largest packet that passes is 1350")),
            "{p:?}"
        );
        assert!(p.fix.unwrap().contains("spec.mtu to 1350"));
    }

    #[test]
    fn a_peer_underlay_smaller_than_the_pod_mtu_is_a_mismatch_before_any_loss() {
        // VXLAN over IPv4: a 1400-byte underlay carries 1350-byte pod packets.
        let p = problem(&target(PeerPath::Vxlan, Some(1400)), None).unwrap();
        assert_eq!(p.kind, ProblemKind::MtuMismatch);
        assert!(p.evidence[0].contains("at most 1350 bytes"), "{p:?}");
        assert!(problem(&target(PeerPath::Vxlan, Some(1500)), None).is_none());
        assert!(problem(&target(PeerPath::Routed, Some(1450)), None).is_none());
        assert!(problem(&target(PeerPath::Routed, Some(1449)), None).is_some());
    }
}

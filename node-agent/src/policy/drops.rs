//! What the policy table drops (decision 94): counted by its named counters, which
//! [`count`] reads back and exports as Prometheus counters; and, when the `ClusterNetwork`
//! asks (`spec.networkPolicyDropLog: Enabled`), logged: [`log`] listens on the table's nflog
//! group and writes one event per dropped packet ([`MESSAGE`]), rate-limited, naming the
//! pod (from the interface), the peer, the protocol and port, and the class and policies
//! (from the log prefix). `kubectl sinew drops` reads these events from the agents' logs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sinew_node_lib::netlink::Netlink;
use sinew_node_lib::netlink::nftables::Nftables;
use sinew_node_lib::nflog::{Logged, Nflog};
use sinew_node_lib::nft::policy::{Direction, HELD_COUNTER, LOG_GROUP, TABLE};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::http::Metrics;

/// The fixed message of a drop event (what `kubectl sinew drops` looks for).
pub const MESSAGE: &str = "policy dropped a packet";
/// How often the counters are read back.
const COUNT_EVERY: Duration = Duration::from_secs(10);
/// At most this many drop events a second per node (the table limits each class to 10 a
/// second already; this bounds a node with many classes).
const EVENTS_PER_SECOND: u32 = 20;

/// The exported counters' labels: `ingress`, `egress`, `held`.
const DIRECTIONS: [&str; 3] = ["ingress", "egress", "held"];

fn counter_name(direction: &str) -> String {
    match direction {
        "ingress" => Direction::Ingress.counter(),
        "egress" => Direction::Egress.counter(),
        _ => HELD_COUNTER.to_string(),
    }
}

/// Turns the kernel's absolute counter values into increments of a monotonic counter: a
/// value below the last one read means the counter started again (the table was replaced),
/// so all of it is new.
#[derive(Debug, Default)]
pub struct Increments {
    last: BTreeMap<String, u64>,
}

impl Increments {
    /// How much `key` grew since the last reading `value`.
    pub fn observe(&mut self, key: &str, value: u64) -> u64 {
        let last = self.last.insert(key.to_string(), value).unwrap_or(0);
        if value >= last { value - last } else { value }
    }
}

/// Reads the drop counters every [`COUNT_EVERY`] while policy is on and adds what they grew
/// by to the agent's metrics.
pub async fn count(metrics: Arc<Metrics>, mut on: watch::Receiver<bool>) {
    let mut increments = Increments::default();
    loop {
        if *on.borrow_and_update() {
            match read_counters() {
                Ok(values) => {
                    for (direction, packets, bytes) in values {
                        let p = increments.observe(&format!("{direction}/packets"), packets);
                        let b = increments.observe(&format!("{direction}/bytes"), bytes);
                        metrics.policy_dropped(direction, p, b);
                    }
                }
                Err(e) => warn!(error = %e, "reading the policy table's drop counters failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(COUNT_EVERY) => {}
            changed = on.changed() => if changed.is_err() { return },
        }
    }
}

/// `(direction, packets, bytes)` per counter the table holds (none before it is in).
fn read_counters()
-> Result<Vec<(&'static str, u64, u64)>, sinew_node_lib::netlink::nftables::NftError> {
    let mut nl = Nftables::new()?;
    let mut out = Vec::new();
    for direction in DIRECTIONS {
        if let Some(v) = nl.counter(TABLE, &counter_name(direction))? {
            out.push((direction, v.packets, v.bytes));
        }
    }
    Ok(out)
}

/// One dropped packet as the log writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    pub direction: &'static str,
    /// `namespace/name`, or the interface's name when no pod is known for it.
    pub pod: String,
    pub peer: Option<IpAddr>,
    pub protocol: String,
    pub port: Option<u16>,
    pub class: String,
    pub policies: String,
}

/// The event for a logged packet; `pod_of` names the pod behind an interface index.
pub fn event(logged: &Logged, pod_of: &dyn Fn(u32) -> Option<String>) -> Option<DropEvent> {
    let (class, policies) = logged
        .prefix
        .split_once(' ')
        .unwrap_or((logged.prefix.as_str(), ""));
    let (direction, interface) = if class.starts_with("ingress-") {
        ("ingress", logged.out_interface)
    } else if class.starts_with("egress-") {
        ("egress", logged.in_interface)
    } else {
        return None;
    };
    let packet = logged.packet.as_ref();
    let peer = packet.map(|p| match direction {
        "ingress" => p.source,
        _ => p.destination,
    });
    let protocol = match packet.map(|p| p.protocol) {
        Some(6) => "tcp".to_string(),
        Some(17) => "udp".to_string(),
        Some(132) => "sctp".to_string(),
        Some(1) => "icmp".to_string(),
        Some(58) => "icmpv6".to_string(),
        Some(n) => n.to_string(),
        None => "?".to_string(),
    };
    Some(DropEvent {
        direction,
        pod: interface
            .and_then(pod_of)
            .unwrap_or_else(|| "?".to_string()),
        peer,
        protocol,
        port: packet.and_then(|p| p.destination_port),
        class: class.to_string(),
        policies: policies.to_string(),
    })
}

/// At most `per_second` events a second; what is left out is counted for the next one.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    window: Option<Instant>,
    used: u32,
    pub suppressed: u64,
}

impl RateLimit {
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether an event at `now` may be written.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Listens on the drop log's nflog group while `on` (policy enforced) and `log` (drop
/// logging asked) both hold; the socket closes when either goes off.
pub async fn log(
    mut on: watch::Receiver<bool>,
    mut log: watch::Receiver<bool>,
    state_dir: PathBuf,
) {
    loop {
        let wanted = *on.borrow_and_update() && *log.borrow_and_update();
        let stop = Arc::new(AtomicBool::new(false));
        let listener = wanted.then(|| {
            let (stop, state_dir) = (stop.clone(), state_dir.clone());
            tokio::task::spawn_blocking(move || listen(&stop, &state_dir))
        });
        let ended = tokio::select! {
            r = on.changed() => r.is_err(),
            r = log.changed() => r.is_err(),
        };
        stop.store(true, Ordering::Relaxed);
        if let Some(listener) = listener {
            let _ = listener.await;
        }
        if ended {
            return;
        }
    }
}

/// The listener's thread: binds the group (retrying while that fails) and writes an event
/// per packet until `stop`.
fn listen(stop: &AtomicBool, state_dir: &std::path::Path) {
    let mut nflog = None;
    let mut limit = RateLimit::new(EVENTS_PER_SECOND);
    let mut pods: BTreeMap<String, String> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let socket = match &mut nflog {
            Some(s) => s,
            None => match Nflog::bind(LOG_GROUP, Duration::from_millis(500)) {
                Ok(s) => {
                    info!(group = LOG_GROUP, "NetworkPolicy drop log on: listening");
                    nflog.insert(s)
                }
                Err(e) => {
                    warn!(group = LOG_GROUP, error = %e, "listening for dropped packets failed; retrying");
                    std::thread::sleep(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let logged = match socket.recv() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "reading dropped packets failed; listening again");
                nflog = None;
                continue;
            }
        };
        if logged.is_empty() {
            continue;
        }
        let mut names: BTreeMap<u32, Option<String>> = BTreeMap::new();
        let mut name_of = |index: u32| -> Option<String> {
            names
                .entry(index)
                .or_insert_with(|| {
                    Netlink::new()
                        .ok()?
                        .link_by_index(index)
                        .ok()
                        .flatten()
                        .map(|l| l.name)
                })
                .clone()
        };
        for l in &logged {
            if !limit.allow(Instant::now()) {
                continue;
            }
            let resolved: BTreeMap<u32, String> = [l.in_interface, l.out_interface]
                .into_iter()
                .flatten()
                .filter_map(|i| name_of(i).map(|n| (i, n)))
                .collect();
            if resolved.values().any(|n| !pods.contains_key(n)) {
                pods = pod_names(state_dir);
            }
            let pod_of = |index: u32| {
                let name = resolved.get(&index)?;
                Some(pods.get(name).cloned().unwrap_or_else(|| name.clone()))
            };
            let Some(e) = event(l, &pod_of) else {
                continue;
            };
            let suppressed = std::mem::take(&mut limit.suppressed);
            info!(
                direction = %e.direction,
                pod = %e.pod,
                peer = %e.peer.map_or_else(|| "?".to_string(), |p| p.to_string()),
                protocol = %e.protocol,
                port = e.port.unwrap_or(0),
                class = %e.class,
                policies = %e.policies,
                suppressed,
                "{MESSAGE}"
            );
        }
    }
}

/// This node's pod interfaces and their pods (`namespace/name`), from the IPAM store.
fn pod_names(state_dir: &std::path::Path) -> BTreeMap<String, String> {
    super::engine::interfaces(state_dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| Some((i.interface, i.pod?.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use sinew_node_lib::nflog::Packet;

    use super::*;

    fn logged(prefix: &str) -> Logged {
        Logged {
            prefix: prefix.to_string(),
            in_interface: Some(3),
            out_interface: Some(7),
            packet: Some(Packet {
                source: "10.0.1.3".parse().unwrap(),
                destination: "10.0.1.1".parse().unwrap(),
                protocol: 6,
                source_port: Some(40000),
                destination_port: Some(80),
            }),
        }
    }

    fn pods(index: u32) -> Option<String> {
        match index {
            3 => Some("default/client-1".into()),
            7 => Some("default/web-1".into()),
            _ => None,
        }
    }

    #[test]
    fn a_logged_packet_becomes_an_event_of_its_direction() {
        let e = event(&logged("ingress-0 default/allow-web,default/b"), &pods).unwrap();
        assert_eq!(e.direction, "ingress");
        assert_eq!(e.pod, "default/web-1", "the pod it was going to");
        assert_eq!(e.peer, Some("10.0.1.3".parse().unwrap()), "the source");
        assert_eq!((e.protocol.as_str(), e.port), ("tcp", Some(80)));
        assert_eq!(e.class, "ingress-0");
        assert_eq!(e.policies, "default/allow-web,default/b");
        let e = event(&logged("egress-2 default/web-egress"), &pods).unwrap();
        assert_eq!(e.direction, "egress");
        assert_eq!(e.pod, "default/client-1", "the pod it came from");
        assert_eq!(e.peer, Some("10.0.1.1".parse().unwrap()), "the destination");
        // another rule's log, or none: no event
        assert_eq!(event(&logged("something else"), &pods), None);
        let mut unknown = logged("egress-0");
        unknown.in_interface = Some(99);
        unknown.packet = None;
        let e = event(&unknown, &pods).unwrap();
        assert_eq!(
            (e.pod.as_str(), e.peer, e.protocol.as_str()),
            ("?", None, "?")
        );
        assert_eq!(e.policies, "");
    }

    #[test]
    fn counters_grow_by_what_the_kernel_added_and_start_again_with_a_new_table() {
        let mut i = Increments::default();
        assert_eq!(i.observe("ingress", 5), 5);
        assert_eq!(i.observe("ingress", 5), 0);
        assert_eq!(i.observe("ingress", 9), 4);
        assert_eq!(i.observe("egress", 1), 1);
        assert_eq!(i.observe("ingress", 2), 2, "the table was replaced");
    }

    #[test]
    fn events_are_limited_per_second_and_the_rest_counted() {
        let mut limit = RateLimit::new(2);
        let t = Instant::now();
        assert!(limit.allow(t));
        assert!(limit.allow(t + Duration::from_millis(10)));
        assert!(!limit.allow(t + Duration::from_millis(20)));
        assert_eq!(limit.suppressed, 1);
        assert!(limit.allow(t + Duration::from_millis(1000)));
    }
}

//! The node's kernel settings a pass keeps right: IP forwarding for the families of the node's
//! pools, and loose reverse-path filtering where sinew's paths need it. What is wanted comes
//! from [`crate::sysctl`]'s pure rules; this module applies it through a [`Sysctls`] and turns
//! what went wrong into problems for the node's report.

use std::path::PathBuf;

use sinew_crds::Family;
use sinew_crds::node::{Problem, ProblemKind};
use tracing::info;

use crate::sysctl::{self, Sysctls};

/// What keeping forwarding on gave.
#[derive(Debug, Default)]
pub struct Forwarding {
    /// Every wanted setting holds.
    pub complete: bool,
    pub problems: Vec<Problem>,
    /// The setting files and the values they must keep (for the node node_watch).
    pub watched: Vec<(PathBuf, String)>,
}

/// Turns on the forwarding pools of `families` need. `served` says the node served pods
/// already in this process: a setting found off then was turned off under sinew, which is
/// reported even though it is right again.
pub fn ensure_forwarding(
    sys: &dyn Sysctls,
    families: &[Family],
    underlay: &str,
    served: bool,
) -> Forwarding {
    let accept_ra = sys.read(&sysctl::accept_ra_key(underlay)).ok();
    let wanted = sysctl::forwarding_wanted(families, underlay, accept_ra.as_deref());
    let mut out = Forwarding {
        complete: true,
        problems: Vec::new(),
        watched: wanted
            .iter()
            .map(|(k, v)| (sys.path(k), v.to_string()))
            .collect(),
    };
    for (key, value) in wanted {
        match sysctl::ensure(sys, &key, value) {
            Ok(true) => {
                info!(setting = %key, value, "node setting applied");
                if served {
                    out.problems.push(
                        Problem::new(
                            ProblemKind::ForwardingOff,
                            format!("{} was turned off while sinew ran: pods lost traffic between nodes until sinew turned it on again", key.replace('/', ".")),
                        )
                        .with_fix("find what turns it off (a sysctl.d file, a hardening baseline, another agent) and stop it"),
                    );
                }
            }
            Ok(false) => {}
            Err(e) => {
                out.complete = false;
                out.problems
                    .push(Problem::new(ProblemKind::ForwardingOff, e.to_string()));
            }
        }
    }
    out
}

/// Sets `device`'s reverse-path filter to loose where the effective mode is strict (`conf/all`
/// is never touched); a problem naming what strict filtering `drops` where it cannot.
pub fn loosen_rp_filter(sys: &dyn Sysctls, device: &str, drops: &str) -> Option<Problem> {
    let all = sysctl::read_number(sys, &sysctl::rp_filter_key("all"));
    let key = sysctl::rp_filter_key(device);
    if !sysctl::rp_filter_strict(all, sysctl::read_number(sys, &key)) {
        return None;
    }
    match sysctl::ensure(sys, &key, "2") {
        Ok(_) => {
            info!(setting = %key, value = "2", "node setting applied");
            None
        }
        Err(e) => Some(
            Problem::new(
                ProblemKind::RpFilterStrict,
                format!("strict reverse-path filtering on {device} drops {drops}"),
            )
            .with_evidence(vec![e.to_string()])
            .with_fix(format!("set net.ipv4.conf.{device}.rp_filter=2 (loose) on the node, or let sinew's agent write the host's /proc/sys/net")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysctl::Fake;

    #[test]
    fn forwarding_off_by_default_is_turned_on_without_a_problem() {
        let sys = Fake::with(&[
            ("net/ipv4/ip_forward", "0"),
            ("net/ipv6/conf/all/forwarding", "0"),
            ("net/ipv6/conf/eth0/accept_ra", "1"),
        ]);
        let out = ensure_forwarding(&sys, &[Family::V4, Family::V6], "eth0", false);
        assert!(out.complete);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(sys.get("net/ipv4/ip_forward").as_deref(), Some("1"));
        assert_eq!(
            sys.get("net/ipv6/conf/all/forwarding").as_deref(),
            Some("1")
        );
        assert_eq!(
            sys.get("net/ipv6/conf/eth0/accept_ra").as_deref(),
            Some("2")
        );
        assert_eq!(
            out.watched,
            [
                (PathBuf::from("/proc/sys/net/ipv4/ip_forward"), "1".into()),
                (
                    PathBuf::from("/proc/sys/net/ipv6/conf/eth0/accept_ra"),
                    "2".into()
                ),
                (
                    PathBuf::from("/proc/sys/net/ipv6/conf/all/forwarding"),
                    "1".into()
                ),
            ]
        );
    }

    #[test]
    fn forwarding_turned_off_while_serving_is_restored_and_reported() {
        let sys = Fake::with(&[("net/ipv4/ip_forward", "0")]);
        let out = ensure_forwarding(&sys, &[Family::V4], "eth0", true);
        assert!(out.complete);
        assert_eq!(sys.get("net/ipv4/ip_forward").as_deref(), Some("1"));
        assert_eq!(out.problems.len(), 1);
        assert_eq!(out.problems[0].kind, ProblemKind::ForwardingOff);
        assert!(
            out.problems[0]
                .message
                .starts_with("net.ipv4.ip_forward was turned off while sinew ran"),
            "{}",
            out.problems[0].message
        );
        let again = ensure_forwarding(&sys, &[Family::V4], "eth0", true);
        assert!(again.problems.is_empty(), "said once, while it stays on");
    }

    #[test]
    fn forwarding_that_cannot_be_written_leaves_the_node_incomplete() {
        let sys = Fake {
            read_only: true,
            ..Fake::with(&[("net/ipv4/ip_forward", "0")])
        };
        let out = ensure_forwarding(&sys, &[Family::V4], "eth0", false);
        assert!(!out.complete);
        assert_eq!(out.problems[0].kind, ProblemKind::ForwardingOff);
        assert!(out.problems[0].message.contains("read-only"));
    }

    #[test]
    fn strict_filtering_is_loosened_on_the_device_only() {
        let sys = Fake::with(&[
            ("net/ipv4/conf/all/rp_filter", "1"),
            ("net/ipv4/conf/eth0/rp_filter", "0"),
        ]);
        assert_eq!(loosen_rp_filter(&sys, "eth0", "probes"), None);
        assert_eq!(
            sys.get("net/ipv4/conf/eth0/rp_filter").as_deref(),
            Some("2")
        );
        assert_eq!(
            sys.get("net/ipv4/conf/all/rp_filter").as_deref(),
            Some("1"),
            "conf/all is the node's own choice"
        );
        let off = Fake::with(&[
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/eth0/rp_filter", "0"),
        ]);
        assert_eq!(loosen_rp_filter(&off, "eth0", "probes"), None);
        assert_eq!(
            off.get("net/ipv4/conf/eth0/rp_filter").as_deref(),
            Some("0"),
            "off stays off"
        );
    }

    #[test]
    fn strict_filtering_that_cannot_be_loosened_is_a_problem_with_its_fix() {
        let sys = Fake {
            read_only: true,
            ..Fake::with(&[("net/ipv4/conf/all/rp_filter", "1")])
        };
        let p = loosen_rp_filter(&sys, "sinew.vxlan", "the probes of peers").unwrap();
        assert_eq!(p.kind, ProblemKind::RpFilterStrict);
        assert_eq!(
            p.message,
            "strict reverse-path filtering on sinew.vxlan drops the probes of peers"
        );
        assert!(
            p.fix
                .unwrap()
                .contains("net.ipv4.conf.sinew.vxlan.rp_filter=2")
        );
    }
}

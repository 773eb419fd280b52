//! IP forwarding on the node: pods' traffic is routed by the node, so a node with forwarding off
//! (the kernel's default) drops every packet between pods of different nodes and every packet
//! leaving a pod for the outside. The agent turns it on for the families its pools use, keeps it
//! on (every pass checks), and says precisely why when it cannot.
//!
//! The settings are written under a sysctl directory: `/proc/sys` on a host, or the host's
//! `/proc/sys/net` mounted into the agent's container (`SINEW_SYSCTL_DIR`), because a container
//! runtime mounts the container's own `/proc/sys` read-only.

use std::io;
use std::path::{Path, PathBuf};

use sinew_crds::Family;

/// A setting that could not be read or made right.
#[derive(Debug, thiserror::Error)]
#[error(
    "{key} must be {wanted} for pod traffic to be routed, but {action} {path} failed: {source}{hint}"
)]
pub struct ForwardingError {
    pub key: String,
    pub wanted: String,
    action: &'static str,
    path: PathBuf,
    source: io::Error,
    hint: String,
}

fn hint_for(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(30) => "; the sysctl directory is read-only here (a container's /proc/sys is): mount the host's /proc/sys/net into the agent and point SINEW_SYSCTL_DIR at it, or turn forwarding on in the node's own configuration".into(),
        Some(13) | Some(1) => "; the agent lacks CAP_NET_ADMIN over the node's network namespace".into(),
        _ => String::new(),
    }
}

/// Sets `key` (`net/ipv4/ip_forward`) to `value` under `dir` unless it already is; returns
/// whether it changed anything.
pub fn ensure(dir: &Path, key: &str, value: &str) -> Result<bool, ForwardingError> {
    let path = dir.join(key);
    let err = |action, source: io::Error| ForwardingError {
        key: key.replace('/', "."),
        wanted: value.into(),
        action,
        hint: hint_for(&source),
        path: path.clone(),
        source,
    };
    let current = std::fs::read_to_string(&path).map_err(|e| err("reading", e))?;
    if current.trim() == value {
        return Ok(false);
    }
    std::fs::write(&path, value).map_err(|e| err("writing", e))?;
    Ok(true)
}

/// The settings a node needs for pools of `families`, as (key, value), in the order to apply
/// them. Turning IPv6 forwarding on makes the kernel ignore router advertisements on
/// interfaces with `accept_ra=1`, which would silently drop a node's RA-learned default route
/// later: the underlay is moved to `accept_ra=2` (accept even when forwarding) first, only
/// where it accepted them before.
pub fn wanted(dir: &Path, families: &[Family], underlay: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if families.contains(&Family::V4) {
        out.push(("net/ipv4/ip_forward".to_string(), "1"));
    }
    if families.contains(&Family::V6) {
        let accept_ra = format!("net/ipv6/conf/{underlay}/accept_ra");
        if std::fs::read_to_string(dir.join(&accept_ra)).is_ok_and(|v| v.trim() == "1") {
            out.push((accept_ra, "2"));
        }
        out.push(("net/ipv6/conf/all/forwarding".to_string(), "1"));
    }
    out
}

/// Reverse-path filtering on `device`: the kernel applies the larger of `conf/all` and
/// `conf/<device>` (0 off, 1 strict, 2 loose). Strict drops what arrives on `device` from a
/// source routed out of another interface, which is what the probe mesh's VXLAN echoes are
/// (their source is the peer's node address); loose keeps the anti-spoofing check (the source
/// must be routable) without that. Returns the setting to write when the effective mode is
/// strict.
pub fn rp_filter_loosened(dir: &Path, device: &str) -> Option<(String, &'static str)> {
    let read = |key: &str| -> u8 {
        std::fs::read_to_string(dir.join(key))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let key = format!("net/ipv4/conf/{device}/rp_filter");
    (read("net/ipv4/conf/all/rp_filter").max(read(&key)) == 1).then_some((key, "2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_reverse_path_filtering_is_loosened_on_the_device_only() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net/ipv4/conf");
        for d in ["all", "sinew.vxlan"] {
            std::fs::create_dir_all(conf.join(d)).unwrap();
        }
        let set = |d: &str, v: &str| std::fs::write(conf.join(d).join("rp_filter"), v).unwrap();
        set("all", "0");
        set("sinew.vxlan", "0");
        assert_eq!(
            rp_filter_loosened(dir.path(), "sinew.vxlan"),
            None,
            "off stays off"
        );
        set("all", "1");
        assert_eq!(
            rp_filter_loosened(dir.path(), "sinew.vxlan"),
            Some(("net/ipv4/conf/sinew.vxlan/rp_filter".into(), "2")),
            "strict via conf/all (RHEL's default)"
        );
        set("sinew.vxlan", "2");
        assert_eq!(
            rp_filter_loosened(dir.path(), "sinew.vxlan"),
            None,
            "max(1, 2) is loose"
        );
    }

    fn tree(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (k, v) in entries {
            let p = dir.path().join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        dir
    }

    #[test]
    fn turns_forwarding_on_once_and_keeps_ra_working() {
        let dir = tree(&[
            ("net/ipv4/ip_forward", "0\n"),
            ("net/ipv6/conf/all/forwarding", "0\n"),
            ("net/ipv6/conf/eth0/accept_ra", "1\n"),
        ]);
        let want = wanted(dir.path(), &[Family::V4, Family::V6], "eth0");
        assert_eq!(
            want,
            [
                ("net/ipv4/ip_forward".to_string(), "1"),
                ("net/ipv6/conf/eth0/accept_ra".to_string(), "2"),
                ("net/ipv6/conf/all/forwarding".to_string(), "1"),
            ]
        );
        for (k, v) in &want {
            assert!(ensure(dir.path(), k, v).unwrap(), "{k} changed");
            assert!(!ensure(dir.path(), k, v).unwrap(), "{k} already right");
        }
        assert_eq!(
            wanted(dir.path(), &[Family::V4], "eth0"),
            [("net/ipv4/ip_forward".to_string(), "1")]
        );
    }

    #[test]
    fn a_missing_setting_is_an_error_naming_it() {
        let dir = tree(&[]);
        let e = ensure(dir.path(), "net/ipv4/ip_forward", "1").unwrap_err();
        assert!(
            e.to_string().starts_with("net.ipv4.ip_forward must be 1"),
            "{e}"
        );
    }
}

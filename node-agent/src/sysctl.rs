//! The node's kernel settings (sysctls) the agent depends on, behind one effect boundary.
//!
//! Pods' traffic is routed by the node, so a node with IP forwarding off (the kernel's default)
//! drops every packet between pods of different nodes and every packet leaving a pod for the
//! outside; strict reverse-path filtering drops what sinew forwards over asymmetric paths. The
//! agent decides what it wants from values it read ([`forwarding_wanted`], [`rp_filter_strict`],
//! pure), and reads and writes them through [`Sysctls`]: [`SysctlDir`] on a node, [`Fake`] in
//! tests.
//!
//! The settings live under a sysctl directory: `/proc/sys` on a host, or the host's
//! `/proc/sys/net` mounted into the agent's container (`SINEW_SYSCTL_DIR`), because a container
//! runtime mounts the container's own `/proc/sys` read-only.

use std::io;
use std::path::PathBuf;

use sinew_crds::Family;

/// Reads and writes sysctls by key (`net/ipv4/ip_forward`).
pub trait Sysctls {
    fn read(&self, key: &str) -> io::Result<String>;
    fn write(&self, key: &str, value: &str) -> io::Result<()>;
    /// Where the setting lives (what error messages and the node sentinel name).
    fn path(&self, key: &str) -> PathBuf;
}

/// The settings under a directory (`/proc/sys`, or the host's `/proc/sys/net` mounted).
pub struct SysctlDir(pub PathBuf);

impl Sysctls for SysctlDir {
    fn read(&self, key: &str) -> io::Result<String> {
        std::fs::read_to_string(self.path(key))
    }
    fn write(&self, key: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.path(key), value)
    }
    fn path(&self, key: &str) -> PathBuf {
        self.0.join(key)
    }
}

/// A setting that could not be read or made right.
#[derive(Debug, thiserror::Error)]
#[error(
    "{key} must be {wanted} for pod traffic to be routed, but {action} {path} failed: {source}{hint}"
)]
pub struct SysctlError {
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

/// Sets `key` to `value` unless it already is; returns whether it changed anything.
pub fn ensure(sys: &dyn Sysctls, key: &str, value: &str) -> Result<bool, SysctlError> {
    let err = |action, source: io::Error| SysctlError {
        key: key.replace('/', "."),
        wanted: value.into(),
        action,
        hint: hint_for(&source),
        path: sys.path(key),
        source,
    };
    let current = sys.read(key).map_err(|e| err("reading", e))?;
    if current.trim() == value {
        return Ok(false);
    }
    sys.write(key, value).map_err(|e| err("writing", e))?;
    Ok(true)
}

/// The key of the underlay's `accept_ra`, which [`forwarding_wanted`] needs read.
pub fn accept_ra_key(underlay: &str) -> String {
    format!("net/ipv6/conf/{underlay}/accept_ra")
}

/// The settings a node needs for pools of `families`, as (key, value), in the order to apply
/// them; `accept_ra` is the underlay's current value. Turning IPv6 forwarding on makes the
/// kernel ignore router advertisements on interfaces with `accept_ra=1`, which would silently
/// drop a node's RA-learned default route later: the underlay is moved to `accept_ra=2`
/// (accept even when forwarding) first, only where it accepted them before.
pub fn forwarding_wanted(
    families: &[Family],
    underlay: &str,
    accept_ra: Option<&str>,
) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if families.contains(&Family::V4) {
        out.push(("net/ipv4/ip_forward".to_string(), "1"));
    }
    if families.contains(&Family::V6) {
        if accept_ra.is_some_and(|v| v.trim() == "1") {
            out.push((accept_ra_key(underlay), "2"));
        }
        out.push(("net/ipv6/conf/all/forwarding".to_string(), "1"));
    }
    out
}

/// The key of `device`'s reverse-path filter.
pub fn rp_filter_key(device: &str) -> String {
    format!("net/ipv4/conf/{device}/rp_filter")
}

/// Whether reverse-path filtering on a device is strict, from `conf/all` and the device's own
/// value: the kernel applies the larger (0 off, 1 strict, 2 loose). Strict drops what arrives
/// on the device from a source routed out of another interface, which is what the probe mesh's
/// VXLAN echoes are (their source is the peer's node address); loose (2) keeps the
/// anti-spoofing check (the source must be routable) without that. An unreadable value counts
/// as 0.
pub fn rp_filter_strict(all: Option<u8>, device: Option<u8>) -> bool {
    all.unwrap_or(0).max(device.unwrap_or(0)) == 1
}

/// Reads a numeric setting; `None` where it is missing or not a number.
pub fn read_number(sys: &dyn Sysctls, key: &str) -> Option<u8> {
    sys.read(key).ok()?.trim().parse().ok()
}

/// Settings in memory, for tests: a missing key reads as not found; `read_only` makes every
/// write fail the way a container's `/proc/sys` does.
#[cfg(test)]
#[derive(Default)]
pub struct Fake {
    pub values: std::cell::RefCell<std::collections::BTreeMap<String, String>>,
    pub read_only: bool,
}

#[cfg(test)]
impl Fake {
    pub fn with(entries: &[(&str, &str)]) -> Fake {
        Fake {
            values: std::cell::RefCell::new(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            read_only: false,
        }
    }
    pub fn get(&self, key: &str) -> Option<String> {
        self.values.borrow().get(key).cloned()
    }
}

#[cfg(test)]
impl Sysctls for Fake {
    fn read(&self, key: &str) -> io::Result<String> {
        self.get(key)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn write(&self, key: &str, value: &str) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(30));
        }
        self.values.borrow_mut().insert(key.into(), value.into());
        Ok(())
    }
    fn path(&self, key: &str) -> PathBuf {
        PathBuf::from("/proc/sys").join(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_is_the_larger_of_all_and_the_device() {
        assert!(!rp_filter_strict(Some(0), Some(0)), "off stays off");
        assert!(!rp_filter_strict(None, None), "unreadable counts as off");
        assert!(
            rp_filter_strict(Some(1), Some(0)),
            "strict via conf/all (RHEL's default)"
        );
        assert!(rp_filter_strict(Some(0), Some(1)), "strict on the device");
        assert!(!rp_filter_strict(Some(1), Some(2)), "max(1, 2) is loose");
    }

    #[test]
    fn forwarding_keeps_router_advertisements_working() {
        assert_eq!(
            forwarding_wanted(&[Family::V4, Family::V6], "eth0", Some("1\n")),
            [
                ("net/ipv4/ip_forward".to_string(), "1"),
                ("net/ipv6/conf/eth0/accept_ra".to_string(), "2"),
                ("net/ipv6/conf/all/forwarding".to_string(), "1"),
            ]
        );
        assert_eq!(
            forwarding_wanted(&[Family::V6], "eth0", Some("0")),
            [("net/ipv6/conf/all/forwarding".to_string(), "1")],
            "a node that ignores RAs keeps ignoring them"
        );
        assert_eq!(
            forwarding_wanted(&[Family::V4], "eth0", Some("1")),
            [("net/ipv4/ip_forward".to_string(), "1")]
        );
    }

    #[test]
    fn ensure_writes_once() {
        let sys = Fake::with(&[("net/ipv4/ip_forward", "0\n")]);
        assert!(ensure(&sys, "net/ipv4/ip_forward", "1").unwrap());
        assert!(!ensure(&sys, "net/ipv4/ip_forward", "1").unwrap());
        assert_eq!(sys.get("net/ipv4/ip_forward").as_deref(), Some("1"));
    }

    #[test]
    fn a_missing_setting_is_an_error_naming_it() {
        let e = ensure(&Fake::default(), "net/ipv4/ip_forward", "1").unwrap_err();
        assert!(
            e.to_string().starts_with("net.ipv4.ip_forward must be 1"),
            "{e}"
        );
    }

    #[test]
    fn a_read_only_directory_says_how_to_fix_it() {
        let sys = Fake {
            read_only: true,
            ..Fake::with(&[("net/ipv4/ip_forward", "0")])
        };
        let e = ensure(&sys, "net/ipv4/ip_forward", "1").unwrap_err();
        assert!(e.to_string().contains("SINEW_SYSCTL_DIR"), "{e}");
    }

    #[test]
    fn the_directory_is_read_and_written_as_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0\n").unwrap();
        let sys = SysctlDir(dir.path().to_path_buf());
        assert!(ensure(&sys, "net/ipv4/ip_forward", "1").unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        assert_eq!(read_number(&sys, "net/ipv4/ip_forward"), Some(1));
        assert_eq!(read_number(&sys, "net/ipv4/conf/all/rp_filter"), None);
    }
}

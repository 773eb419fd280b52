//! The `CNI_*` environment of one plugin invocation, validated per the CNI spec and libcni's
//! own rules before anything touches the system.

use std::collections::BTreeMap;

use crate::error::{CniError, CniResult, Code};

/// Operation requested through `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> CniResult<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!(
                        "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                    ),
                ));
            }
        })
    }
}

/// Kubernetes identity of the pod, from `CNI_ARGS` (`K8S_POD_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub infra_container_id: Option<String>,
}

/// A validated invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    pub pod: PodRef,
    pub cni_path: Option<String>,
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`: the rule for container IDs and network names.
pub fn is_valid_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Interface names: 1-15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("is {} bytes long; the limit is 15", name.len()));
    }
    if name == "." || name == ".." {
        return Err("may not be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("contains the forbidden character {c:?}"));
    }
    Ok(())
}

fn invalid_env(var: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(Code::InvalidEnvironment, format!("{var} {why}"))
}

/// Parses `CNI_ARGS` (`K=V;K=V`). Unknown keys are ignored, as the spec asks.
fn parse_cni_args(raw: &str) -> CniResult<PodRef> {
    let mut map = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| invalid_env("CNI_ARGS", format!("entry {pair:?} is not KEY=VALUE")))?;
        map.insert(k.to_string(), v.to_string());
    }
    let mut take = |k: &str| map.remove(k).filter(|v| !v.is_empty());
    let pod = PodRef {
        namespace: take("K8S_POD_NAMESPACE"),
        name: take("K8S_POD_NAME"),
        uid: take("K8S_POD_UID"),
        infra_container_id: take("K8S_POD_INFRA_CONTAINER_ID"),
    };
    for (k, v) in [
        ("K8S_POD_NAMESPACE", &pod.namespace),
        ("K8S_POD_NAME", &pod.name),
    ] {
        if let Some(v) = v
            && (v.len() > 253 || !is_valid_identifier(v))
        {
            return Err(invalid_env("CNI_ARGS", format!("{k} is not a valid name")));
        }
    }
    Ok(pod)
}

impl Invocation {
    /// Reads and validates the environment through `get` (the process environment in the
    /// binary, a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> CniResult<Invocation> {
        let command_raw =
            get("CNI_COMMAND").ok_or_else(|| invalid_env("CNI_COMMAND", "is not set"))?;
        let command = Command::parse(&command_raw)?;
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);

        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        if needs_container && !is_valid_identifier(&container_id) {
            return Err(invalid_env(
                "CNI_CONTAINERID",
                "must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$",
            ));
        }
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if needs_container {
            validate_ifname(&ifname).map_err(|why| invalid_env("CNI_IFNAME", why))?;
        }
        let netns = get("CNI_NETNS").filter(|n| !n.is_empty());
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(invalid_env("CNI_NETNS", "is required for ADD and CHECK"));
        }
        let pod = match get("CNI_ARGS") {
            Some(raw) => parse_cni_args(&raw)?,
            None => PodRef::default(),
        };
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            pod,
            cni_path: get("CNI_PATH"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1",
        ),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = ADD
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend_from_slice(over);
        v
    }

    #[test]
    fn parses_a_kubernetes_add() {
        let inv = Invocation::from_env(env(ADD)).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.pod.namespace.as_deref(), Some("default"));
        assert_eq!(inv.pod.name.as_deref(), Some("web-0"));
        assert_eq!(inv.pod.uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn rejects_hostile_container_ids() {
        for bad in ["", "-abc", "../etc", "a/b", "a b", "ab\n", "ab;c"] {
            let e = Invocation::from_env(env(&with(&[("CNI_CONTAINERID", bad)]))).unwrap_err();
            assert_eq!(e.code, 4, "{bad:?}");
            assert!(e.msg.contains("CNI_CONTAINERID"));
        }
    }

    #[test]
    fn rejects_bad_interface_names() {
        for bad in ["", ".", "..", "a/b", "eth:0", "eth 0", "abcdefghijklmnop"] {
            let e = Invocation::from_env(env(&with(&[("CNI_IFNAME", bad)]))).unwrap_err();
            assert_eq!(e.code, 4, "{bad:?}");
            assert!(e.msg.contains("CNI_IFNAME"), "{}", e.msg);
        }
        assert!(Invocation::from_env(env(&with(&[("CNI_IFNAME", "abcdefghijklmno")]))).is_ok());
    }

    #[test]
    fn requires_netns_for_add_but_not_del() {
        let e = Invocation::from_env(env(&with(&[("CNI_NETNS", "")]))).unwrap_err();
        assert!(e.msg.contains("CNI_NETNS"));
        let del = with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]);
        assert!(Invocation::from_env(env(&del)).is_ok());
    }

    #[test]
    fn rejects_unknown_commands_and_malformed_args() {
        assert_eq!(
            Invocation::from_env(env(&with(&[("CNI_COMMAND", "RESET")])))
                .unwrap_err()
                .code,
            4
        );
        assert_eq!(
            Invocation::from_env(env(&with(&[("CNI_ARGS", "novalue")])))
                .unwrap_err()
                .code,
            4
        );
        assert_eq!(
            Invocation::from_env(env(&with(&[("CNI_ARGS", "K8S_POD_NAME=../../x")])))
                .unwrap_err()
                .code,
            4
        );
    }

    #[test]
    fn status_and_gc_need_no_container() {
        for cmd in ["STATUS", "GC", "VERSION"] {
            let inv = Invocation::from_env(env(&[("CNI_COMMAND", cmd)])).unwrap();
            assert!(inv.container_id.is_empty());
        }
    }
}

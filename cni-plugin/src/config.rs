//! The network configuration on stdin: bounded in size, decoded with the path of any wrong
//! field in the error, unknown fields tolerated, and never logged verbatim.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;
use sinew_node_lib::hostport::{PortMapping, Protocol};

use crate::error::{CniError, CniResult, Code};
use crate::invocation::is_valid_identifier;
use crate::version::Version;

/// Largest configuration accepted on stdin. Real conflists are a few KiB.
pub const MAX_STDIN_BYTES: u64 = 1 << 20;

/// Where sinew keeps node-local state unless the configuration says otherwise.
pub use sinew_node_lib::consts::DEFAULT_STATE_DIR;

/// Log verbosity of the plugin (the same levels as `ClusterNetwork.spec.logLevel`).
pub use sinew_core::LogLevel;

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Runtime-provided values (libcni `capabilities` -> `runtimeConfig`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The pod's annotations, passed by containerd/CRI-O when the conflist declares the
    /// `io.kubernetes.cri.pod-annotations` capability. Race-free pool choice per pod.
    #[serde(rename = "io.kubernetes.cri.pod-annotations", default)]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// The pod's host ports, passed when the conflist declares the `portMappings`
    /// capability. Kept undecoded here: only ADD reads them ([`port_mappings`]), so DEL, CHECK
    /// and GC work from the record even if a runtime sent something unreadable.
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Option<serde_json::Value>,
}

/// One `runtimeConfig.portMappings` entry as runtimes send it: the CNI convention's
/// `hostPort`, ... (CRI-O, libcni) or Go's field names `HostPort`, ... (containerd, through
/// go-cni's untagged struct; Go's JSON matches names case-insensitively, so the reference
/// `portmap` plugin reads both).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePortMapping {
    #[serde(alias = "HostPort")]
    host_port: i64,
    #[serde(alias = "ContainerPort")]
    container_port: i64,
    #[serde(default, alias = "Protocol")]
    protocol: Option<String>,
    #[serde(rename = "hostIP", alias = "HostIP", alias = "hostIp", default)]
    host_ip: Option<String>,
}

/// Decodes and validates `runtimeConfig.portMappings` (for ADD). A wrong type is code 6, a
/// value out of range code 7, each naming the field (`runtimeConfig.portMappings[1].hostPort`)
/// without echoing the value. A missing protocol is TCP, as in Kubernetes; an empty or missing
/// `hostIP` means every local address.
pub fn port_mappings(value: Option<&serde_json::Value>) -> CniResult<Vec<PortMapping>> {
    const FIELD: &str = "runtimeConfig.portMappings";
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let wire: Vec<WirePortMapping> =
        serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                FIELD.to_string()
            } else {
                format!("{FIELD}{path}")
            };
            let inner = redact(&e.into_inner().to_string());
            CniError::new(
                Code::Decode,
                format!("field {field:?} of the network configuration is invalid: {inner}"),
            )
        })?;
    let invalid = |i: usize, name: &str, what: &str| {
        CniError::new(
            Code::InvalidNetworkConfig,
            format!("field \"{FIELD}[{i}].{name}\" {what}"),
        )
    };
    let port = |i: usize, name: &str, value: i64| {
        u16::try_from(value)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(i, name, "must be a port number from 1 to 65535"))
    };
    wire.iter()
        .enumerate()
        .map(|(i, w)| {
            let protocol = match w.protocol.as_deref() {
                None | Some("") => Protocol::Tcp,
                Some(p) => Protocol::parse(p)
                    .ok_or_else(|| invalid(i, "protocol", "must be tcp, udp or sctp"))?,
            };
            let host_ip = match w.host_ip.as_deref() {
                None | Some("") => None,
                Some(ip) => Some(
                    ip.parse()
                        .map_err(|_| invalid(i, "hostIP", "must be an IP address or empty"))?,
                ),
            };
            Ok(PortMapping {
                host_port: port(i, "hostPort", w.host_port)?,
                container_port: port(i, "containerPort", w.container_port)?,
                protocol,
                host_ip,
            })
        })
        .collect()
}

/// sinew's plugin configuration, as libcni hands it to one plugin of a conflist.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Node-local state written by the node agent and the IPAM store.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Log file; stderr when unset. The plugin never logs to stdout.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub log_level: LogLevel,
    /// Result of the previous plugin of the chain, if sinew is not first.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// GC: every attachment the runtime still uses; everything else is released.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

impl NetConf {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}

/// Reads stdin up to [`MAX_STDIN_BYTES`]; more is an error rather than a truncation.
pub fn read_bounded(mut input: impl Read) -> CniResult<Vec<u8>> {
    let mut buf = Vec::new();
    input
        .by_ref()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            CniError::new(
                Code::Io,
                format!("reading the network configuration from stdin: {e}"),
            )
        })?;
    if buf.len() as u64 > MAX_STDIN_BYTES {
        return Err(CniError::new(
            Code::Decode,
            format!("the network configuration on stdin exceeds {MAX_STDIN_BYTES} bytes"),
        ));
    }
    Ok(buf)
}

/// Decodes `T`, naming the offending field on a type error. The input itself is never
/// echoed: only its path and serde's description of the problem. Syntax is checked first, so
/// a wrong type is never reported as malformed JSON.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> CniResult<T> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            Code::Decode,
            format!(
                "the network configuration is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if !value.is_object() {
        // serde would otherwise read a JSON array positionally as the struct's fields.
        return Err(CniError::new(
            Code::Decode,
            "the network configuration must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = redact(&e.into_inner().to_string());
        let what = if path == "." {
            format!("the network configuration is invalid: {inner}")
        } else {
            format!("field {path:?} of the network configuration is invalid: {inner}")
        };
        CniError::new(Code::Decode, what)
    })
}

/// Drops the offending value from serde's message ("invalid type: string \"s3cr3t\", expected
/// u32" becomes "invalid type, expected u32"), so configuration values never reach a log.
pub fn redact(message: &str) -> String {
    for kind in [
        "invalid type",
        "invalid value",
        "unknown variant",
        "unknown field",
        "invalid length",
    ] {
        if let Some(rest) = message.strip_prefix(kind) {
            return match rest.find(", expected") {
                Some(i) => format!("{kind}{}", &rest[i..]),
                None => kind.to_string(),
            };
        }
    }
    message.to_string()
}

/// Decodes and validates a full configuration (ADD, DEL, CHECK, STATUS, GC).
pub fn parse(bytes: &[u8]) -> CniResult<(NetConf, Version)> {
    let conf: NetConf = decode(bytes)?;
    let version = Version::parse_supported(&conf.cni_version)?;
    if !is_valid_identifier(&conf.name) {
        return Err(CniError::new(
            Code::InvalidNetworkConfig,
            format!(
                "field \"name\" ({:?}) must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$",
                conf.name.chars().take(64).collect::<String>()
            ),
        ));
    }
    if let Some(dir) = &conf.state_dir
        && !dir.is_absolute()
    {
        return Err(CniError::new(
            Code::InvalidNetworkConfig,
            "field \"stateDir\" must be an absolute path",
        ));
    }
    Ok((conf, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.1.0","name":"sinew","type":"sinew","stateDir":"/tmp/s","someFutureField":{"x":1}}"#;

    #[test]
    fn parses_and_tolerates_unknown_fields() {
        let (conf, v) = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(v, Version::V1_1_0);
        assert_eq!(conf.state_dir(), PathBuf::from("/tmp/s"));
        assert_eq!(conf.log_level, LogLevel::Info);
    }

    #[test]
    fn wrong_types_name_the_field_with_code_6() {
        let e =
            parse(br#"{"cniVersion":"1.0.0","name":"n","type":"sinew","logLevel":7}"#).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("\"logLevel\""), "{}", e.msg);
        let e = parse(br#"{"cniVersion":"1.0.0","name":"n","type":"sinew","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":1}}}"#).unwrap_err();
        assert!(
            e.msg
                .contains("runtimeConfig.io.kubernetes.cri.pod-annotations.a"),
            "{}",
            e.msg
        );
        let e = parse(br#"{"cniVersion":"1.0.0","type":"sinew"}"#).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("name"), "{}", e.msg);
    }

    #[test]
    fn values_are_not_echoed_in_errors() {
        let e = parse(br#"{"cniVersion":"1.0.0","name":"n","type":"sinew","logLevel":"s3cr3t"}"#)
            .unwrap_err();
        assert!(!e.msg.contains("s3cr3t"), "{}", e.msg);
        assert!(
            e.msg.contains("unknown variant, expected one of"),
            "{}",
            e.msg
        );
        let e = parse(br#""s3cr3t-token""#).unwrap_err();
        assert!(!e.msg.contains("s3cr3t"), "{}", e.msg);
        assert_eq!(
            redact("invalid length 3, expected 2"),
            "invalid length, expected 2"
        );
    }

    #[test]
    fn only_objects_are_configurations() {
        let e = parse(br#"["1.0.0", "n", "sinew"]"#).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("JSON object"), "{}", e.msg);
    }

    #[test]
    fn syntax_errors_do_not_echo_the_input() {
        let e = parse(br#"{"cniVersion":"1.0.0","name":"secret-token-abc"#).unwrap_err();
        assert_eq!(e.code, 6);
        assert!(!e.msg.contains("secret-token-abc"), "{}", e.msg);
    }

    #[test]
    fn invalid_names_and_versions() {
        let e = parse(br#"{"cniVersion":"1.0.0","name":"../x","type":"sinew"}"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("\"name\""));
        let e = parse(br#"{"cniVersion":"9.9.9","name":"x","type":"sinew"}"#).unwrap_err();
        assert_eq!(e.code, 1);
        let e = parse(br#"{"cniVersion":"1.0.0","name":"x","type":"sinew","stateDir":"rel"}"#)
            .unwrap_err();
        assert_eq!(e.code, 7);
    }

    fn mappings(json: &str) -> CniResult<Vec<PortMapping>> {
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"sinew","runtimeConfig":{{"portMappings":{json}}}}}"#
        );
        // Any command parses the configuration whatever the mappings hold; ADD decodes them.
        let (conf, _) = parse(conf.as_bytes()).unwrap();
        port_mappings(conf.runtime_config.port_mappings.as_ref())
    }

    #[test]
    fn port_mappings_are_read_as_runtimes_send_them() {
        let m = mappings(
            r#"[{"hostPort":54323,"containerPort":8080,"protocol":"TCP","hostIP":"127.0.0.1"},
                {"hostPort":54323,"containerPort":8080,"protocol":"udp","hostIP":""},
                {"hostPort":80,"containerPort":80,"protocol":"sctp","hostIP":"fd00::1"},
                {"hostPort":8080,"containerPort":80}]"#,
        )
        .unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(
            (m[0].host_port, m[0].container_port, m[0].protocol),
            (54323, 8080, Protocol::Tcp)
        );
        assert_eq!(m[0].host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((m[1].protocol, m[1].host_ip), (Protocol::Udp, None));
        assert_eq!(m[2].protocol, Protocol::Sctp);
        assert_eq!(m[3].protocol, Protocol::Tcp, "Kubernetes' default");
        // containerd (go-cni) sends Go's field names.
        let go = mappings(
            r#"[{"HostPort":54323,"ContainerPort":8080,"Protocol":"udp","HostIP":"10.0.0.1"}]"#,
        )
        .unwrap();
        assert_eq!(
            (go[0].host_port, go[0].container_port, go[0].protocol),
            (54323, 8080, Protocol::Udp)
        );
        assert_eq!(go[0].host_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(mappings("null").unwrap(), vec![]);
        assert_eq!(mappings("[]").unwrap(), vec![]);
        let (conf, _) = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(
            port_mappings(conf.runtime_config.port_mappings.as_ref()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn bad_port_mappings_name_the_field() {
        for (json, code, field) in [
            (r#"{"hostPort":1}"#, 6, "\"runtimeConfig.portMappings\""),
            (
                r#"[{"hostPort":"80","containerPort":80}]"#,
                6,
                "\"runtimeConfig.portMappings[0].hostPort\"",
            ),
            (
                r#"[{"hostPort":80}]"#,
                6,
                "\"runtimeConfig.portMappings[0]\"",
            ),
            (
                r#"[{"hostPort":80,"containerPort":80},{"hostPort":0,"containerPort":80}]"#,
                7,
                "\"runtimeConfig.portMappings[1].hostPort\"",
            ),
            (
                r#"[{"hostPort":80,"containerPort":65536}]"#,
                7,
                "\"runtimeConfig.portMappings[0].containerPort\"",
            ),
            (
                r#"[{"hostPort":-1,"containerPort":80}]"#,
                7,
                "\"runtimeConfig.portMappings[0].hostPort\"",
            ),
            (
                r#"[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]"#,
                7,
                "\"runtimeConfig.portMappings[0].protocol\"",
            ),
            (
                r#"[{"hostPort":80,"containerPort":80,"hostIP":"10.0.0.300"}]"#,
                7,
                "\"runtimeConfig.portMappings[0].hostIP\"",
            ),
            (
                r#"[{"hostPort":80,"containerPort":80,"hostIP":7}]"#,
                6,
                "\"runtimeConfig.portMappings[0].hostIP\"",
            ),
        ] {
            let e = mappings(json).unwrap_err();
            assert_eq!(e.code, code, "{json}: {}", e.msg);
            assert!(e.msg.contains(field), "{json}: {}", e.msg);
            assert!(
                !e.msg.contains("300") && !e.msg.contains("icmp"),
                "values are not echoed: {}",
                e.msg
            );
        }
    }

    #[test]
    fn stdin_is_bounded() {
        let big = vec![b' '; MAX_STDIN_BYTES as usize + 1];
        assert_eq!(read_bounded(&big[..]).unwrap_err().code, 6);
        let ok = [b' '; 10];
        assert_eq!(read_bounded(&ok[..]).unwrap().len(), 10);
    }
}

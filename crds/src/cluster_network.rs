//! `ClusterNetwork`: the cluster-wide settings of sinew. A singleton named `default`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::json_schema;
use serde::{Deserialize, Serialize};

/// The only name a `ClusterNetwork` may have.
pub const CLUSTER_NETWORK_NAME: &str = "default";

/// Cluster-wide network settings: MTU, VXLAN parameters, how the plugin is installed on nodes
/// and how addresses are garbage-collected. There is exactly one, named `default`.
// The derive's repeated `printcolumn(type_ = ...)` arguments trip this lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "sinew.dev",
    version = "v1alpha1",
    kind = "ClusterNetwork",
    plural = "clusternetworks",
    singular = "clusternetwork",
    shortname = "cn",
    category = "sinew",
    status = "ClusterNetworkStatus",
    derive = "PartialEq",
    doc = "Cluster-wide settings of the sinew network. A singleton: the only accepted name is `default`.",
    validation = Rule::new("self.metadata.name == 'default'").message("metadata.name must be 'default': ClusterNetwork is a singleton"),
    printcolumn(name = "MTU", type_ = "string", json_path = ".spec.mtu"),
    printcolumn(name = "Ready Nodes", type_ = "string", json_path = ".status.nodes.summary"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkSpec {
    /// MTU of pod interfaces: `auto` (the node's underlay MTU minus the encapsulation overhead
    /// of the pool's mode: 50 bytes for VXLAN over IPv4, 70 over IPv6) or a number from 1280
    /// to 9000.
    #[serde(default = "default_mtu")]
    #[x_kube(validation = Rule::new("type(self) == string ? self == 'auto' : (self >= 1280 && self <= 9000)").message("must be 'auto' or a number from 1280 to 9000"))]
    pub mtu: IntOrString,

    /// VXLAN parameters for pools in `VXLAN` or `Auto` mode.
    #[serde(default)]
    pub vxlan: VxlanSettings,

    /// Where and how the CNI configuration and plugin are installed on each node.
    #[serde(default)]
    pub cni: CniSettings,

    /// How the node agent DaemonSet is scheduled.
    #[serde(default)]
    pub installer: InstallerSettings,

    /// Address garbage collection.
    #[serde(default)]
    pub ipam: IpamSettings,

    /// Log level of the node agent and the plugin.
    #[serde(default)]
    pub log_level: LogLevel,

    /// Whether the agents enforce `networking.k8s.io/v1` NetworkPolicy on their nodes
    /// (`Enabled`, the default), or program no policy table at all and remove theirs
    /// (`Disabled`).
    #[serde(default, skip_serializing_if = "NetworkPolicyMode::is_enabled")]
    pub network_policy: NetworkPolicyMode,

    /// Whether the agents log the packets NetworkPolicy drops (`Enabled`: each node logs
    /// them, rate-limited, as events `kubectl sinew drops` shows), or not (`Disabled`, the
    /// default: the drop path does nothing more than count).
    #[serde(default, skip_serializing_if = "DropLogMode::is_disabled")]
    pub network_policy_drop_log: DropLogMode,
}

/// Logging of the packets NetworkPolicy drops (decision 94).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DropLogMode {
    /// Drops are counted, not logged.
    #[default]
    Disabled,
    /// Each node logs the packets its policy table drops, at most 10 a second per class.
    Enabled,
}

impl DropLogMode {
    /// The default, left out of a serialized spec (the spec's hash does not change for
    /// clusters that never set it).
    pub fn is_disabled(&self) -> bool {
        *self == DropLogMode::Disabled
    }
}

/// NetworkPolicy enforcement (decision 91).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum NetworkPolicyMode {
    /// Every node enforces NetworkPolicy: a pod's interface carries only what its policies
    /// allow, from the moment it is created.
    #[default]
    Enabled,
    /// No node enforces NetworkPolicy.
    Disabled,
}

impl NetworkPolicyMode {
    /// The default, left out of a serialized spec (so that the spec's hash, and the agents'
    /// rollout, do not change for clusters that never set it).
    pub fn is_enabled(&self) -> bool {
        *self == NetworkPolicyMode::Enabled
    }
}

fn default_mtu() -> IntOrString {
    IntOrString::String("auto".to_string())
}

impl ClusterNetworkSpec {
    /// The pod MTU the spec fixes, or `None` for `auto` (derived per node and pool mode).
    pub fn fixed_mtu(&self) -> Option<u32> {
        match &self.mtu {
            IntOrString::Int(n) => u32::try_from(*n).ok(),
            IntOrString::String(_) => None,
        }
    }

    /// Hash of the whole spec: what every node should have applied. Agents report the hash
    /// they run with; the operator compares (and rolls the DaemonSet when it changes).
    pub fn config_hash(&self) -> String {
        use sha2::Digest;
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        sha2::Sha256::digest(&bytes)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Default for ClusterNetworkSpec {
    /// The same values the API server fills in for `spec: {}`.
    fn default() -> Self {
        Self {
            mtu: default_mtu(),
            vxlan: VxlanSettings::default(),
            cni: CniSettings::default(),
            installer: InstallerSettings::default(),
            ipam: IpamSettings::default(),
            log_level: LogLevel::default(),
            network_policy: NetworkPolicyMode::default(),
            network_policy_drop_log: DropLogMode::default(),
        }
    }
}

/// VXLAN device parameters, identical on every node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VxlanSettings {
    /// VXLAN network identifier.
    #[serde(default = "default_vni")]
    #[schemars(range(min = 1, max = 16_777_215))]
    pub vni: u32,

    /// UDP destination port of VXLAN traffic.
    #[serde(default = "default_vxlan_port")]
    #[schemars(range(min = 1, max = 65_535))]
    pub port: u16,
}

fn default_vni() -> u32 {
    4096
}

fn default_vxlan_port() -> u16 {
    4789
}

impl Default for VxlanSettings {
    fn default() -> Self {
        Self {
            vni: default_vni(),
            port: default_vxlan_port(),
        }
    }
}

/// CNI installation on each node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CniSettings {
    /// Directory the container runtime reads network configurations from.
    #[serde(default = "default_conf_dir")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("must be an absolute path"))]
    #[schemars(length(min = 1, max = 256))]
    pub conf_dir: String,

    /// Directory the container runtime looks up plugin binaries in.
    #[serde(default = "default_bin_dir")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("must be an absolute path"))]
    #[schemars(length(min = 1, max = 256))]
    pub bin_dir: String,

    /// Numeric prefix of the conflist file name (`10-sinew.conflist`); runtimes pick the
    /// lexicographically first file, so a lower number wins over other configurations.
    #[serde(default = "default_conf_priority")]
    #[schemars(range(min = 0, max = 99))]
    pub conf_priority: u8,

    /// Reference plugins appended to the conflist after `sinew`, in order (for example
    /// `portmap`, `bandwidth`, `tuning`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub chain: Vec<ChainedPlugin>,

    /// `cniVersion` of the conflist. `1.1.0` lets the runtime use STATUS and GC; chained
    /// plugins that only speak `1.0.0` (e.g. containernetworking-plugins before 1.5) need
    /// `1.0.0`.
    #[serde(default)]
    pub cni_version: ConflistVersion,
}

/// CNI specification version of the rendered conflist.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ConflistVersion {
    #[serde(rename = "1.0.0")]
    V1_0_0,
    #[default]
    #[serde(rename = "1.1.0")]
    V1_1_0,
}

impl ConflistVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflistVersion::V1_0_0 => "1.0.0",
            ConflistVersion::V1_1_0 => "1.1.0",
        }
    }
}

fn default_conf_dir() -> String {
    "/etc/cni/net.d".to_string()
}

fn default_bin_dir() -> String {
    "/opt/cni/bin".to_string()
}

fn default_conf_priority() -> u8 {
    10
}

impl Default for CniSettings {
    fn default() -> Self {
        Self {
            conf_dir: default_conf_dir(),
            bin_dir: default_bin_dir(),
            conf_priority: default_conf_priority(),
            chain: Vec::new(),
            cni_version: ConflistVersion::default(),
        }
    }
}

/// A plugin chained after `sinew` in the conflist.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainedPlugin {
    /// The plugin's `type`: the name of its binary in the CNI bin directory.
    #[serde(rename = "type")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
    )]
    pub plugin_type: String,

    /// Further keys of the plugin's configuration object, copied as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Scheduling of the node agent DaemonSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstallerSettings {
    /// Image of the node agent; defaults to the operator's own release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Only nodes with these labels run the agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations added to the agent's own (it already tolerates every taint by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Resource requests and limits of the agent container. Default: requests of 50m CPU and
    /// 64Mi memory, no limit (with NetworkPolicy on, an agent's memory grows with the
    /// cluster's pods, 1 to 4 KiB each, and an agent killed for memory stops programming its
    /// node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Garbage collection of leaked addresses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpamSettings {
    /// How often allocations are checked against existing pods (e.g. `5m`).
    #[serde(default = "default_gc_interval")]
    #[schemars(
        length(min = 2, max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
    )]
    pub gc_interval: String,

    /// How long an allocation's pod must have been seen missing before the address is
    /// released (e.g. `10m`).
    #[serde(default = "default_leak_grace_period")]
    #[schemars(
        length(min = 2, max = 32),
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
    )]
    pub leak_grace_period: String,
}

fn default_gc_interval() -> String {
    "5m".to_string()
}

fn default_leak_grace_period() -> String {
    "10m".to_string()
}

/// Parses a duration the way the schema allows it (`1h30m`, `90s`, `1.5m`, `250ms`).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let (unit, seconds) = if rest.starts_with("ms") {
            ("ms", 0.001)
        } else if rest.starts_with('s') {
            ("s", 1.0)
        } else if rest.starts_with('m') {
            ("m", 60.0)
        } else if rest.starts_with('h') {
            ("h", 3600.0)
        } else {
            return None;
        };
        total += value * seconds;
        rest = &rest[unit.len()..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

impl IpamSettings {
    /// The GC interval and the leak grace period, as durations (defaults where unparsable,
    /// which the schema already prevents).
    pub fn durations(&self) -> (std::time::Duration, std::time::Duration) {
        (
            parse_duration(&self.gc_interval).unwrap_or(std::time::Duration::from_secs(300)),
            parse_duration(&self.leak_grace_period).unwrap_or(std::time::Duration::from_secs(600)),
        )
    }
}

impl Default for IpamSettings {
    fn default() -> Self {
        Self {
            gc_interval: default_gc_interval(),
            leak_grace_period: default_leak_grace_period(),
        }
    }
}

pub use sinew_core::LogLevel;

/// Observed state of the cluster network, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Hash of the node configuration every node should have installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,

    /// Node counts of the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,

    /// Nodes' problems, the most severe first (foreign conflist winning, install failed, ...),
    /// at most 64; `kubectl sinew doctor` lists every node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<NodeProblem>,

    /// Problems the nodes have beyond those listed in `problems`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted_problems: Option<u32>,
}

/// How far the rollout has come.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes that should run the agent.
    pub desired: u32,
    /// Nodes whose agent installed the plugin and conflist.
    pub installed: u32,
    /// Nodes ready to serve pods.
    pub ready: u32,
    /// Nodes running the current configuration hash.
    pub up_to_date: u32,
    /// Nodes whose NetworkPolicy table is in line with the policies (absent while the network
    /// does not enforce policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_programmed: Option<u32>,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
}

/// A problem seen on one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeProblem {
    pub node: String,
    /// CamelCase reason, e.g. `ForeignConflistWins`.
    pub reason: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_as_the_schema_writes_them() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5d"), None);
    }

    #[test]
    fn the_drop_log_is_off_by_default_and_left_out_of_the_spec_hash_then() {
        let spec = ClusterNetworkSpec::default();
        assert_eq!(spec.network_policy_drop_log, DropLogMode::Disabled);
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json.get("networkPolicyDropLog").is_none(), "{json}");
        let mut on = spec.clone();
        on.network_policy_drop_log = DropLogMode::Enabled;
        assert_eq!(
            serde_json::to_value(&on).unwrap()["networkPolicyDropLog"],
            "Enabled"
        );
        assert_ne!(on.config_hash(), spec.config_hash());
        let back: ClusterNetworkSpec =
            serde_json::from_value(serde_json::json!({"networkPolicyDropLog": "Enabled"})).unwrap();
        assert_eq!(back.network_policy_drop_log, DropLogMode::Enabled);
    }
}

//! `IPBlock`: internal record of one block of a pool claimed by one node. Its allocations are
//! not here but in its [`crate::IPBlockUsage`]: every agent watches every block (a block is a
//! route), and only the operator and users read allocations (decision 95).
//!
//! Its name is derived from its CIDR alone ([`crate::cidr::Cidr::object_name`]), so the API
//! server arbitrates claims: two nodes racing for the same block cannot both create it. The
//! CRD refuses any other name ([`IPBlockSpec::CANONICAL_NAME_RULE`]); that a block lies inside
//! its pool and has the pool's block size is checked by the chart's admission policy
//! (`charts/sinew/templates/ipblock-policy.yaml`), which can see the pool.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;

/// A block of addresses claimed by one node. Managed by sinew; not meant to be edited.
// The derive's repeated `printcolumn(type_ = ...)` arguments trip this lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[kube(
    group = "sinew.dev",
    version = "v1alpha1",
    kind = "IPBlock",
    plural = "ipblocks",
    singular = "ipblock",
    shortname = "ipb",
    category = "sinew",
    derive = "PartialEq",
    doc = "A block of a pool claimed by one node (managed by sinew, named after its CIDR). Its allocations are in the IPBlockUsage of the same name: kubectl get ipblockusages.",
    selectable = ".spec.node",
    selectable = ".spec.pool",
    // Peers turn every block into a route, and the name is what makes a claim unique: a name
    // that is not the one derived from spec.cidr would let two blocks cover the same
    // addresses, or squat the name of another block. See `Cidr::object_name`.
    validation = Rule::new(IPBlockSpec::CANONICAL_NAME_RULE)
        .message(Message::Expression(IPBlockSpec::CANONICAL_NAME_MESSAGE.into())),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("an IPBlock's spec is immutable; release the block and claim another"))]
pub struct IPBlockSpec {
    /// Name of the `IPPool` the block belongs to.
    #[schemars(length(min = 1, max = 253))]
    pub pool: String,

    /// The block's addresses.
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self) == cidr(self).masked()").message("must be a network address in CIDR form"))]
    #[schemars(length(min = 3, max = 43))]
    pub cidr: String,

    /// Node that owns the block; only this node allocates from it.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
}

impl IPBlockSpec {
    /// CEL (on the object): `metadata.name` is [`Cidr::object_name`] of `spec.cidr`.
    ///
    /// Written so that CEL's cost estimate stays bounded (the CRD is refused otherwise): only
    /// strings of known maximum length are transformed. An IPv4 `spec.cidr` is already in
    /// canonical form (the CIDR library refuses leading zeros, and another rule refuses host
    /// bits), so its name is the text with `.` and `/` turned into `-`; the prefix is compared
    /// with the parsed one as well, so that no spelling of it other than the plain number
    /// passes. IPv6, whose zero-padded groups CEL cannot print, is checked the other way
    /// round: the name must have the canonical shape (eight groups of four lower-case hex
    /// digits, then the prefix), and its groups read back as an address, and its prefix, must
    /// be `spec.cidr`'s.
    pub const CANONICAL_NAME_RULE: &'static str = "!isCIDR(self.spec.cidr) || (cidr(self.spec.cidr).ip().family() == 4 \
        ? (self.metadata.name == self.spec.cidr.replace('.', '-').replace('/', '-') \
           && self.metadata.name.substring(self.metadata.name.lastIndexOf('-') + 1) == string(cidr(self.spec.cidr).prefixLength())) \
        : (self.metadata.name.matches('^([0-9a-f]{4}-){8}[0-9]{1,3}$') \
           && isIP(self.metadata.name.substring(0, 39).replace('-', ':')) \
           && ip(self.metadata.name.substring(0, 39).replace('-', ':')) == cidr(self.spec.cidr).masked().ip() \
           && self.metadata.name.substring(40) == string(cidr(self.spec.cidr).prefixLength())))";

    /// The refusal of [`Self::CANONICAL_NAME_RULE`], with the expected name for IPv4.
    pub const CANONICAL_NAME_MESSAGE: &'static str = "'metadata.name must be the canonical name of spec.cidr ' + self.spec.cidr + ': ' + (cidr(self.spec.cidr).ip().family() == 4 \
        ? self.spec.cidr.replace('.', '-').replace('/', '-') \
        : 'the eight groups of its address written out in four lower-case hex digits each, then the prefix length, joined by dashes (fd00-0000-0000-0000-0000-0000-0000-0040-122)')";
}

/// Label agents put on their `IPBlock`s naming the node (for selection).
pub const NODE_LABEL: &str = "sinew.dev/node";
/// Label agents put on their `IPBlock`s naming the pool (the operator's trigger reads it).
pub const POOL_LABEL: &str = "sinew.dev/pool";

/// Annotation on an `IPBlock` by which the operator asks the block's agent to release
/// leaked allocations: a JSON list of [`ReleaseRequest`]. Only the agent frees addresses
/// (it alone writes its node's store), and only an allocation that still matches the request
/// exactly (same address, slot generation and pod UID).
pub const RELEASE_ANNOTATION: &str = "sinew.dev/release";

/// One allocation the operator found leaked, with the evidence it acted on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRequest {
    pub ip: String,
    pub generation: u64,
    pub pod_uid: String,
    /// `namespace/name` of the pod the allocation was made for.
    pub pod: String,
    /// When the pod was first seen missing from the API server (RFC 3339).
    pub missing_since: String,
}

impl ReleaseRequest {
    /// Whether `allocation` is exactly the one this request is about.
    pub fn matches(&self, allocation: &Allocation) -> bool {
        allocation.ip == self.ip
            && allocation.generation == self.generation
            && allocation.pod_uid.as_deref() == Some(self.pod_uid.as_str())
    }
}

impl IPBlock {
    /// The release requests the operator left on this block.
    pub fn release_requests(&self) -> Vec<ReleaseRequest> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RELEASE_ANNOTATION))
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default()
    }

    /// The object name a block of `cidr` must have.
    pub fn name_for(cidr: &Cidr) -> String {
        cidr.object_name()
    }
}

/// One address held by one pod interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub ip: String,
    /// Container (sandbox) ID the runtime passed to the plugin.
    pub container_id: String,
    /// Interface name inside the pod.
    pub interface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Generation of the address slot: bumped each time the address is handed out, so a
    /// stale release can never free an address that was given to another pod since.
    pub generation: u64,
}

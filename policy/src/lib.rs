//! sinew's NetworkPolicy compiler, pure (decision 91): pruned views of pods, namespaces and
//! policies ([`view`], [`world`]) -> one node's [`Plan`] ([`compile`]): classes of pods with
//! disjoint set elements, each traceable to the rule that produced it. [`semantics`] is the
//! Kubernetes rules written down directly, the oracle the plan is tested against; [`explain`]
//! is the trace `kubectl sinew trace` prints. No Kubernetes client, no kernel.

#![forbid(unsafe_code)]

pub mod compile;
mod disjoint;
pub mod explain;
pub mod plan;
pub mod selector;
pub mod semantics;
mod text;
pub mod view;
pub mod world;

pub use compile::{compile, compile_with};
pub use explain::{Trace, explain};
pub use plan::{Class, Elements, Limits, Plan, Verdict};
pub use semantics::{Decision, Grant, Judgement, Packet, decide};
pub use view::{Direction, NamedPort, NamespaceView, ObjectKey, PodView, PolicyView, Protocol};
pub use world::World;

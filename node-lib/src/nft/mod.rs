//! nftables tables as data: [`model`] declares a table (sets and maps with their elements,
//! chains with their hooks, rules as typed expressions), [`text`] writes it in `nft` syntax,
//! [`diff`] lists what turns one table into another.
//! The netlink encoder ([`crate::netlink::nftables`]) programs the same model into the kernel,
//! so what a table's text says and what the kernel holds come from one value; whoever keeps a
//! table in line compares models, not text.
//!
//! Which tables and rules exist is the caller's policy: the node agent declares sinew's table
//! in one function; this module knows nothing of pools, nodes or host ports beyond the
//! element vocabulary the plugin shares ([`crate::hostport`]).

pub mod diff;
#[cfg(any(test, feature = "testutils"))]
pub mod golden;
pub mod model;
pub mod policy;
pub mod text;

pub use diff::{Change, diff};
pub use model::{
    BaseChain, Chain, ChainKind, CtState, DataType, Dir, Element, Expr, Field, Hook, Icmpv6Type,
    NamedPriority, Op, Policy, Priority, Range, Rule, Set, Table, TimeUnit, Value, Verdict,
};

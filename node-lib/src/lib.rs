//! sinew's node library: what the per-pod plugin and the node agent both do to a node.
//!
//! - [`netlink`]: a small synchronous rtnetlink client (links, addresses, routes,
//!   neighbours, VXLAN forwarding entries);
//! - [`netns`]: network namespaces (open, enter, run code inside); creating named ones is
//!   test-only (feature `testutils`);
//! - [`kernel_watch`]: whether links, addresses, routes or rules changed (rtnetlink groups);
//! - [`ipam`]: the node-local address store, crash-safe and locked;
//! - [`hostport`]: pods' host ports (`portMappings`) as entries of sinew's nftables table;
//! - [`nft`]: nftables tables as data (the model the agent declares, in `nft` syntax), which
//!   [`netlink::nftables`] programs;
//! - [`node_state`]: the agent → plugin state file and the plugin → agent block requests;
//! - [`nflog`]: the packets an nftables `log group` sends (the agent's drop log);
//! - [`icmp`]: DF-marked ICMP echo probes (the agent's peer and path-MTU checks);
//! - [`fsutil`]: atomic file replacement and file locks;
//! - [`state_watch`]: inotify wake-ups when the plugin changes node-local state;
//! - [`consts`]: names and numbers the plugin, the agent and the tests must agree on.
//!
//! No Kubernetes, no async runtime: the plugin is exec'd once per pod.

pub mod consts;
pub mod fsutil;
pub mod hostport;
pub mod icmp;
pub mod ipam;
pub mod kernel_watch;
pub mod netlink;
pub mod netns;
pub mod nflog;
pub mod nft;
pub mod node_state;
pub mod state_watch;

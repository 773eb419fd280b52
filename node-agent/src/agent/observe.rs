//! What the node checks look at, gathered once per pass: interfaces, routes (but sinew's peer
//! routes) and rules of every table (netlink) and the host veths the IPAM store records.

use sinew_crds::Family;
use sinew_node_lib::consts::PEER_ROUTE_PROTOCOL;
use sinew_node_lib::ipam;
use sinew_node_lib::netlink::RouteEntry;

use super::error::{Error, Result};
use crate::datapath::Kernel;
use crate::diagnose::{self, Observed};

/// `kept_routes`: the routes of the last full look, where nobody but the agent changed the
/// kernel's routes since (decision 98); `None` dumps them.
pub fn observe(
    nl: &mut dyn Kernel,
    store: &ipam::Store,
    kept_routes: Option<Vec<RouteEntry>>,
) -> Result<Observed> {
    let links = nl.links()?;
    let mut seen = Observed::default();
    for link in &links {
        if diagnose::wants_addresses(&link.name) {
            seen.addresses.insert(link.index, nl.addresses(link.index)?);
        }
    }
    seen.links = links;
    let dump = kept_routes.is_none();
    seen.routes = kept_routes.unwrap_or_default();
    for family in [Family::V4, Family::V6] {
        if dump {
            // sinew's peer routes (5,000 at 5,000 peers) are no check's business.
            seen.routes.extend(
                nl.all_routes(family)?
                    .into_iter()
                    .filter(|r| r.protocol != PEER_ROUTE_PROTOCOL),
            );
        }
        seen.rules.extend(nl.rules(family)?);
    }
    seen.recorded_veths = store
        .snapshot()
        .map_err(Error::files("reading the IPAM store"))?
        .attachments
        .values()
        .map(|a| a.host_veth.clone())
        .collect();
    Ok(seen)
}

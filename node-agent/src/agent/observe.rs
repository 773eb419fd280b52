//! What the node checks look at, gathered once per pass: interfaces, routes and rules of
//! every table (netlink) and the host veths the IPAM store records.

use sinew_crds::Family;
use sinew_node_lib::ipam;
use sinew_node_lib::netlink::Netlink;

use super::error::{Error, Result};
use crate::diagnose::{self, Observed};

pub fn observe(nl: &mut Netlink, store: &ipam::Store) -> Result<Observed> {
    let links = nl.links()?;
    let mut seen = Observed::default();
    for link in &links {
        if diagnose::wants_addresses(&link.name) {
            seen.addresses.insert(link.index, nl.addresses(link.index)?);
        }
    }
    seen.links = links;
    for family in [Family::V4, Family::V6] {
        seen.routes.extend(nl.all_routes(family)?);
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

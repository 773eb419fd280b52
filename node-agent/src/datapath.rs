//! Applies a [`Plan`] to the kernel through netlink, touching only what sinew owns: routes with
//! protocol [`PEER_ROUTE_PROTOCOL`], the [`VXLAN_DEVICE`] and its neighbour and FDB entries.
//! Every pass diffs desired against actual state, so stale entries (departed peers, released
//! blocks, a changed mode) are removed and nothing foreign is ever changed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use sinew_crds::{Cidr, Family};
use sinew_node_lib::netlink::{Link, Netlink, NetlinkError, Route};

use crate::peers::{PeerPath, Plan};

/// Route protocol of the routes towards peers (`ip route show proto 116`); pod routes made
/// by the plugin use 115.
pub use sinew_node_lib::consts::PEER_ROUTE_PROTOCOL;
/// The node's VXLAN device.
pub use sinew_node_lib::consts::VXLAN_DEVICE;
use sinew_node_lib::consts::{MAIN_TABLE, VXLAN_ANCHOR_V4};
use sinew_node_lib::netlink::NUD_PERMANENT;

/// The interface carrying the node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub ip: IpAddr,
    pub subnet: Cidr,
    pub mtu: u32,
}

/// Finds the interface that holds `ip`.
pub fn find_underlay(nl: &mut Netlink, ip: IpAddr) -> Result<Option<Underlay>, NetlinkError> {
    for link in nl.links()? {
        for (addr, prefix) in nl.addresses(link.index)? {
            if addr == ip {
                let subnet =
                    Cidr::new_truncating(addr, prefix).unwrap_or_else(|_| Cidr::host(addr));
                return Ok(Some(Underlay {
                    index: link.index,
                    name: link.name,
                    ip,
                    subnet,
                    mtu: link.mtu,
                }));
            }
        }
    }
    Ok(None)
}

/// VXLAN parameters the device was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: u32,
    pub port: u16,
}

/// Why the existing device does not match what this node needs, if it does not: the kernel's
/// own view (VNI, port, local address, underlay device) is compared, never the agent's memory,
/// so a change made while the agent was down (a new VNI, a new node address) is still applied.
fn vxlan_mismatch(
    link: &Link,
    params: VxlanParams,
    underlay: &Underlay,
    mac: [u8; 6],
) -> Option<String> {
    let Some(info) = link.vxlan else {
        return Some(format!("{VXLAN_DEVICE} is not a VXLAN device"));
    };
    if link.mac != Some(mac) {
        // Peers derive this node's VTEP MAC from its name (`vtep_mac`): a device made by an
        // older agent, or changed by hand, is made again with it.
        return Some(format!(
            "{VXLAN_DEVICE} has MAC {:?}, this node's VTEP MAC is {mac:02x?}",
            link.mac
        ));
    }
    let wanted = (
        Some(params.vni),
        Some(params.port),
        Some(underlay.ip),
        Some(underlay.index),
    );
    let actual = (info.vni, info.port, info.local, info.link);
    (wanted != actual).then(|| {
        format!(
            "{VXLAN_DEVICE} has (vni, port, local, link) {actual:?}, this node needs {wanted:?}"
        )
    })
}

/// Makes sure the VXLAN device exists with these parameters and MAC on this underlay, is up
/// and has the right MTU; a device that differs (as the kernel reports it) is recreated.
pub fn ensure_vxlan(
    nl: &mut Netlink,
    params: VxlanParams,
    underlay: &Underlay,
    mac: [u8; 6],
) -> Result<Link, NetlinkError> {
    let mtu = underlay
        .mtu
        .saturating_sub(sinew_crds::vxlan_overhead(Family::of(underlay.ip)));
    let mut existing = nl.link_by_name(VXLAN_DEVICE)?;
    if let Some(why) = existing
        .as_ref()
        .and_then(|link| vxlan_mismatch(link, params, underlay, mac))
    {
        tracing::info!(reason = %why, "recreating the VXLAN device");
        nl.delete_link_by_name(VXLAN_DEVICE)?;
        existing = None;
    }
    if existing.is_none() {
        nl.create_vxlan(
            VXLAN_DEVICE,
            params.vni,
            params.port,
            Some(underlay.ip),
            Some(underlay.index),
            Some(mtu),
            Some(mac),
        )?;
    }
    let link = nl
        .link_by_name(VXLAN_DEVICE)?
        .ok_or_else(|| NetlinkError::InvalidArgument {
            op: "ensure vxlan",
            message: format!("{VXLAN_DEVICE} vanished after creation"),
        })?;
    if link.mtu != mtu {
        nl.set_mtu(link.index, mtu)?;
    }
    if !link.up {
        nl.set_link_up(link.index)?;
    }
    if underlay.ip.is_ipv4()
        && !nl
            .addresses(link.index)?
            .contains(&(IpAddr::V4(VXLAN_ANCHOR_V4), 32))
    {
        nl.add_host_scope_address(link.index, VXLAN_ANCHOR_V4)?;
    }
    Ok(link)
}

fn route_key(r: &Route) -> (IpAddr, u8, Option<IpAddr>, Option<u32>, bool) {
    (r.dst, r.prefix, r.gateway, r.oif, r.onlink)
}

/// What one pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    /// Routes not added because a route sinew does not own has the same prefix.
    pub skipped: usize,
}

/// Programs the plan: peer routes, then the VXLAN neighbour and FDB entries.
pub fn apply(
    nl: &mut Netlink,
    plan: &Plan,
    underlay: &Underlay,
    vxlan: Option<&Link>,
) -> Result<Changes, NetlinkError> {
    let mut changes = Changes::default();
    let desired: Vec<Route> = plan
        .routes
        .iter()
        .filter_map(|r| {
            let (oif, onlink) = match r.path {
                PeerPath::Routed => (underlay.index, false),
                PeerPath::Vxlan => (vxlan?.index, true),
            };
            Some(Route {
                dst: r.dst.network(),
                prefix: r.dst.prefix_len(),
                gateway: Some(r.via),
                oif: Some(oif),
                scope_link: false,
                onlink,
                table: MAIN_TABLE,
                protocol: PEER_ROUTE_PROTOCOL,
                mtu: None,
                src: None,
            })
        })
        .collect();
    let wanted: BTreeSet<_> = desired.iter().map(route_key).collect();

    // Neighbours and FDB entries first, so a new VXLAN route never points at nothing. Only
    // what the kernel lacks is written: a pass with nothing to change costs two dumps, not a
    // request per peer.
    if let Some(vx) = vxlan {
        let mut have_neighbors = BTreeSet::new();
        for n in nl.neighbors(vx.index)? {
            if n.state & NUD_PERMANENT == 0 {
                continue;
            }
            if plan.neighbors.get(&n.ip) == n.mac.as_ref() {
                have_neighbors.insert(n.ip);
            } else {
                nl.del_neighbor(vx.index, n.ip)?;
                changes.removed += 1;
            }
        }
        for (ip, mac) in &plan.neighbors {
            if !have_neighbors.contains(ip) {
                nl.add_neighbor(vx.index, *ip, *mac)?;
                changes.added += 1;
            }
        }
        let mut have_fdb = BTreeSet::new();
        for (mac, dst) in nl.fdb(vx.index)? {
            // sinew owns the whole device: an entry for no peer, the all-zero default entry
            // included (it would flood unknown MACs to one node), is removed.
            if plan.fdb.get(&mac) == Some(&dst) {
                have_fdb.insert(mac);
            } else {
                nl.del_fdb(vx.index, mac)?;
                changes.removed += 1;
            }
        }
        for (mac, dst) in &plan.fdb {
            if !have_fdb.contains(mac) {
                nl.add_fdb(vx.index, *mac, *dst)?;
                changes.added += 1;
            }
        }
    }

    let mut existing = Vec::new();
    let mut foreign = BTreeSet::new();
    for v6 in [false, true] {
        for r in nl.routes(v6, MAIN_TABLE)? {
            if r.protocol == PEER_ROUTE_PROTOCOL {
                existing.push(r);
            } else {
                foreign.insert((r.dst, r.prefix));
            }
        }
    }
    let have: BTreeSet<_> = existing.iter().map(route_key).collect();
    for r in &desired {
        // Adding replaces a route to the same prefix: never one sinew does not own (the
        // node checks report it as a RouteConflict, naming it).
        if foreign.contains(&(r.dst, r.prefix)) {
            changes.skipped += 1;
            continue;
        }
        if !have.contains(&route_key(r)) {
            nl.add_route(r)?;
            changes.added += 1;
        }
    }
    let wanted_prefixes: BTreeSet<_> = desired.iter().map(|d| (d.dst, d.prefix)).collect();
    for r in existing.iter().filter(|r| !wanted.contains(&route_key(r))) {
        // A mode switch replaces a route in place (same destination): already done above.
        if !wanted_prefixes.contains(&(r.dst, r.prefix)) {
            nl.del_route(r)?;
            changes.removed += 1;
        }
    }
    Ok(changes)
}

/// Removes every peer route and the VXLAN device (node clean-up).
pub fn remove_all(nl: &mut Netlink) -> Result<(), NetlinkError> {
    for v6 in [false, true] {
        for r in nl
            .routes(v6, MAIN_TABLE)?
            .into_iter()
            .filter(|r| r.protocol == PEER_ROUTE_PROTOCOL)
        {
            nl.del_route(&r)?;
        }
    }
    nl.delete_link_by_name(VXLAN_DEVICE)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_node_lib::netlink::VxlanInfo;

    fn underlay() -> Underlay {
        Underlay {
            index: 2,
            name: "eth0".into(),
            ip: "10.99.0.10".parse().unwrap(),
            subnet: "10.99.0.0/24".parse().unwrap(),
            mtu: 1500,
        }
    }

    const MAC: [u8; 6] = [0x0a, 1, 2, 3, 4, 5];

    fn device(vni: u32, port: u16, local: &str, link: u32) -> Link {
        Link {
            index: 7,
            name: VXLAN_DEVICE.into(),
            mac: Some(MAC),
            mtu: 1450,
            up: true,
            kind: Some("vxlan".into()),
            vxlan: Some(VxlanInfo {
                vni: Some(vni),
                port: Some(port),
                local: local.parse().ok(),
                link: Some(link),
            }),
        }
    }

    /// What the kernel says decides, so a change made while the agent was down (a new VNI in
    /// the ClusterNetwork, a new node address) is applied after a restart.
    #[test]
    fn the_kernels_device_is_compared_not_the_agents_memory() {
        let params = VxlanParams {
            vni: 4096,
            port: 4789,
        };
        let u = underlay();
        assert_eq!(
            vxlan_mismatch(&device(4096, 4789, "10.99.0.10", 2), params, &u, MAC),
            None
        );
        let mut other_mac = device(4096, 4789, "10.99.0.10", 2);
        other_mac.mac = Some([0x0a, 9, 9, 9, 9, 9]);
        assert!(vxlan_mismatch(&other_mac, params, &u, MAC).is_some());
        for stale in [
            device(7, 4789, "10.99.0.10", 2),
            device(4096, 8472, "10.99.0.10", 2),
            device(4096, 4789, "10.99.0.99", 2),
            device(4096, 4789, "10.99.0.10", 3),
        ] {
            assert!(
                vxlan_mismatch(&stale, params, &u, MAC).is_some(),
                "{stale:?}"
            );
        }
        let mut not_vxlan = device(4096, 4789, "10.99.0.10", 2);
        not_vxlan.vxlan = None;
        assert!(vxlan_mismatch(&not_vxlan, params, &u, MAC).is_some());
    }
}

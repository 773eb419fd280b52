//! Applies a [`Plan`] to the node's kernel ([`Kernel`]: netlink on a node), touching only
//! what sinew owns: routes with protocol [`PEER_ROUTE_PROTOCOL`], the [`VXLAN_DEVICE`] and
//! its neighbour and FDB entries. A full pass diffs desired against actual state, so stale
//! entries (departed peers, released blocks, a changed mode) are removed and nothing foreign
//! is ever changed; the passes between full ones diff desired against what the last one left
//! (decision 98). An entry the kernel refuses is reported and keeps no other out (decision
//! 103).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sinew_crds::node::{Problem, ProblemKind};
use sinew_crds::{Cidr, Family};
use sinew_node_lib::netlink::{Link, NetlinkError, Route};

use crate::peers::{PeerPath, Plan};

#[cfg(test)]
pub mod fake;
mod kernel;

pub use kernel::Kernel;

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
pub fn find_underlay(nl: &mut dyn Kernel, ip: IpAddr) -> Result<Option<Underlay>, NetlinkError> {
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
    nl: &mut dyn Kernel,
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
        nl.create_vxlan(params, underlay, mtu, mac)?;
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

/// What an apply left in the kernel: sinew's peer routes, neighbour and FDB entries, the
/// prefixes of routes sinew does not own, and the devices they hang on. The passes between
/// full comparisons change only what their plan changes (decision 98).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Programmed {
    routes: BTreeMap<(IpAddr, u8), Route>,
    /// Prefixes of the main table's routes sinew does not own, at the last full comparison.
    foreign: BTreeSet<(IpAddr, u8)>,
    neighbors: BTreeMap<IpAddr, [u8; 6]>,
    fdb: BTreeMap<[u8; 6], IpAddr>,
    /// The underlay's and the VXLAN device's interface indexes.
    devices: (u32, Option<u32>),
}

impl Programmed {
    /// What `plan` asks of the kernel (pure): its routes, except where a route sinew does not
    /// own (`foreign`) has the prefix, and, with a VXLAN device, its neighbours and FDB.
    fn wanted(
        plan: &Plan,
        underlay: &Underlay,
        vxlan: Option<&Link>,
        foreign: BTreeSet<(IpAddr, u8)>,
    ) -> Programmed {
        let routes = plan
            .routes
            .iter()
            .filter_map(|r| {
                let (oif, onlink) = match r.path {
                    PeerPath::Routed => (underlay.index, false),
                    PeerPath::Vxlan => (vxlan?.index, true),
                };
                let route = Route {
                    gateway: Some(r.via),
                    oif: Some(oif),
                    onlink,
                    table: MAIN_TABLE,
                    protocol: PEER_ROUTE_PROTOCOL,
                    ..Route::new(r.dst.network(), r.dst.prefix_len())
                };
                Some(((route.dst, route.prefix), route))
            })
            .collect();
        let (neighbors, fdb) = match vxlan {
            Some(_) => (plan.neighbors.clone(), plan.fdb.clone()),
            None => Default::default(),
        };
        Programmed {
            routes,
            foreign,
            neighbors,
            fdb,
            devices: (underlay.index, vxlan.map(|v| v.index)),
        }
    }

    /// Routes wanted but not added: a route sinew does not own has the prefix (the node
    /// checks report it as a RouteConflict, naming it). Adding would replace it.
    fn skipped(&self) -> impl Iterator<Item = &(IpAddr, u8)> {
        self.routes.keys().filter(|k| self.foreign.contains(k))
    }

    fn added(&self) -> impl Iterator<Item = &Route> {
        self.routes
            .iter()
            .filter(|(k, _)| !self.foreign.contains(k))
            .map(|(_, r)| r)
    }
}

/// What one pass changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    /// Routes not added because a route sinew does not own has the same prefix.
    pub skipped: usize,
    /// Writes the kernel refused, each with its reason; the others went in.
    pub refused: Vec<String>,
}

impl Changes {
    /// The problem of the writes the kernel refused (none when it took every one): how many,
    /// the first few with the kernel's reasons.
    pub fn refused_problem(&self) -> Option<Problem> {
        const SHOWN: usize = 3;
        let n = self.refused.len();
        if n == 0 {
            return None;
        }
        let mut shown = self.refused[..n.min(SHOWN)].join("; ");
        if n > SHOWN {
            shown.push_str(&format!("; and {} more", n - SHOWN));
        }
        Some(Problem::new(
            ProblemKind::PeersIncomplete,
            format!(
                "the kernel refused {n} write(s) of peer routes, neighbours or FDB entries; every other peer is programmed, and the refused ones are tried again at the next pass: {shown}"
            ),
        ))
    }

    /// Counts a write of `what` (`added` or `removed` when the kernel took it, `refused`
    /// when it said no); an error of the socket itself, after which nothing can be written,
    /// is returned.
    fn count<T>(
        &mut self,
        added: bool,
        what: impl FnOnce() -> String,
        written: Result<T, NetlinkError>,
    ) -> Result<(), NetlinkError> {
        match written {
            Ok(_) if added => self.added += 1,
            Ok(_) => self.removed += 1,
            Err(e @ NetlinkError::Kernel { .. }) => self.refused.push(format!("{}: {e}", what())),
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

fn neighbor_text(ip: IpAddr) -> String {
    format!("neighbour {ip} on {VXLAN_DEVICE}")
}

fn fdb_text(mac: [u8; 6], dst: Option<IpAddr>) -> String {
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    match dst {
        Some(dst) => format!("FDB entry {mac} to {dst}"),
        None => format!("FDB entry {mac}"),
    }
}

fn route_text(r: &Route) -> String {
    match r.gateway {
        Some(via) => format!("route to {}/{} via {via}", r.dst, r.prefix),
        None => format!("route to {}/{}", r.dst, r.prefix),
    }
}

/// Programs the plan, comparing it with the whole kernel: peer routes, then the VXLAN
/// neighbour and FDB entries. Returns what it changed and what the kernel now holds (as the
/// plan wants it: where [`Changes::refused`] lists a write, the kernel differs, and the next
/// apply should compare the whole kernel again).
pub fn apply(
    nl: &mut dyn Kernel,
    plan: &Plan,
    underlay: &Underlay,
    vxlan: Option<&Link>,
) -> Result<(Changes, Programmed), NetlinkError> {
    let mut changes = Changes::default();
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
                let gone = nl.del_neighbor(vx.index, n.ip);
                changes.count(false, || neighbor_text(n.ip), gone)?;
            }
        }
        for (ip, mac) in &plan.neighbors {
            if !have_neighbors.contains(ip) {
                let added = nl.add_neighbor(vx.index, *ip, *mac);
                changes.count(true, || neighbor_text(*ip), added)?;
            }
        }
        let mut have_fdb = BTreeSet::new();
        for (mac, dst) in nl.fdb(vx.index)? {
            // sinew owns the whole device: an entry for no peer, the all-zero default entry
            // included (it would flood unknown MACs to one node), is removed.
            if plan.fdb.get(&mac) == Some(&dst) {
                have_fdb.insert(mac);
            } else {
                let gone = nl.del_fdb(vx.index, mac);
                changes.count(false, || fdb_text(mac, None), gone)?;
            }
        }
        for (mac, dst) in &plan.fdb {
            if !have_fdb.contains(mac) {
                let added = nl.add_fdb(vx.index, *mac, *dst);
                changes.count(true, || fdb_text(*mac, Some(*dst)), added)?;
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
    let programmed = Programmed::wanted(plan, underlay, vxlan, foreign);
    changes.skipped = programmed.skipped().count();
    let have: BTreeSet<_> = existing.iter().map(route_key).collect();
    for r in programmed.added() {
        if !have.contains(&route_key(r)) {
            let added = nl.add_route(r);
            changes.count(true, || route_text(r), added)?;
        }
    }
    let wanted: BTreeSet<_> = programmed.added().map(route_key).collect();
    for r in existing.iter().filter(|r| !wanted.contains(&route_key(r))) {
        // A mode switch replaces a route in place (same destination): already done above.
        if !programmed.routes.contains_key(&(r.dst, r.prefix)) {
            let gone = nl.del_route(r);
            changes.count(false, || route_text(r), gone)?;
        }
    }
    Ok((changes, programmed))
}

/// What turns one [`Programmed`] into another (pure): entries to write (new or changed; a
/// write replaces) and entries to remove.
#[derive(Debug, Default, PartialEq, Eq)]
struct Diff<'a> {
    neighbors: Vec<(IpAddr, [u8; 6])>,
    neighbors_gone: Vec<IpAddr>,
    fdb: Vec<([u8; 6], IpAddr)>,
    fdb_gone: Vec<[u8; 6]>,
    routes: Vec<&'a Route>,
    routes_gone: Vec<&'a Route>,
}

fn diff<'a>(before: &'a Programmed, after: &'a Programmed) -> Diff<'a> {
    let kept: BTreeMap<&(IpAddr, u8), &Route> = before
        .routes
        .iter()
        .filter(|(k, _)| !before.foreign.contains(k))
        .collect();
    Diff {
        neighbors: after
            .neighbors
            .iter()
            .filter(|(ip, mac)| before.neighbors.get(ip) != Some(mac))
            .map(|(ip, mac)| (*ip, *mac))
            .collect(),
        neighbors_gone: before
            .neighbors
            .keys()
            .filter(|ip| !after.neighbors.contains_key(ip))
            .copied()
            .collect(),
        fdb: after
            .fdb
            .iter()
            .filter(|(mac, dst)| before.fdb.get(*mac) != Some(dst))
            .map(|(mac, dst)| (*mac, *dst))
            .collect(),
        fdb_gone: before
            .fdb
            .keys()
            .filter(|mac| !after.fdb.contains_key(*mac))
            .copied()
            .collect(),
        routes: after
            .added()
            .filter(|r| kept.get(&(r.dst, r.prefix)) != Some(r))
            .collect(),
        // A route whose prefix is still wanted is replaced in place by the write.
        routes_gone: kept
            .into_iter()
            .filter(|(k, _)| !after.routes.contains_key(k))
            .map(|(_, r)| r)
            .collect(),
    }
}

/// Programs `plan` on top of what the last apply left (`before`), writing and removing only
/// what differs: no dump of the kernel's thousands of routes, neighbours and FDB entries.
/// Sound while nobody else changed those (the agent compares the whole kernel at each
/// resync and after anyone else's change); where a device changed since, it compares the
/// whole kernel at once.
pub fn apply_changes(
    nl: &mut dyn Kernel,
    before: &Programmed,
    plan: &Plan,
    underlay: &Underlay,
    vxlan: Option<&Link>,
) -> Result<(Changes, Programmed), NetlinkError> {
    if before.devices != (underlay.index, vxlan.map(|v| v.index)) {
        return apply(nl, plan, underlay, vxlan);
    }
    let after = Programmed::wanted(plan, underlay, vxlan, before.foreign.clone());
    let d = diff(before, &after);
    let mut changes = Changes {
        skipped: after.skipped().count(),
        ..Changes::default()
    };
    if let Some(vx) = vxlan {
        for ip in &d.neighbors_gone {
            let gone = nl.del_neighbor(vx.index, *ip);
            changes.count(false, || neighbor_text(*ip), gone)?;
        }
        for (ip, mac) in &d.neighbors {
            let added = nl.add_neighbor(vx.index, *ip, *mac);
            changes.count(true, || neighbor_text(*ip), added)?;
        }
        for mac in &d.fdb_gone {
            let gone = nl.del_fdb(vx.index, *mac);
            changes.count(false, || fdb_text(*mac, None), gone)?;
        }
        for (mac, dst) in &d.fdb {
            let added = nl.add_fdb(vx.index, *mac, *dst);
            changes.count(true, || fdb_text(*mac, Some(*dst)), added)?;
        }
    }
    for r in &d.routes {
        let added = nl.add_route(r);
        changes.count(true, || route_text(r), added)?;
    }
    for r in &d.routes_gone {
        let gone = nl.del_route(r);
        changes.count(false, || route_text(r), gone)?;
    }
    Ok((changes, after))
}

/// Removes every peer route and the VXLAN device (node clean-up).
pub fn remove_all(nl: &mut dyn Kernel) -> Result<(), NetlinkError> {
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
    use super::fake::FakeKernel;
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

    /// A plan of `routes` (block, gateway, path), each gateway a VXLAN neighbour and FDB
    /// entry when the path is VXLAN.
    fn plan(routes: &[(&str, &str, PeerPath)]) -> Plan {
        let mut p = Plan::default();
        for (i, (dst, via, path)) in routes.iter().enumerate() {
            let via: IpAddr = via.parse().unwrap();
            p.routes.push(crate::peers::PeerRoute {
                dst: dst.parse().unwrap(),
                via,
                path: *path,
                peer: format!("n{i}"),
            });
            if *path == PeerPath::Vxlan {
                let mac = [0x0a, 0, 0, 0, 0, i as u8];
                p.neighbors.insert(via, mac);
                p.fdb
                    .insert(mac, format!("10.99.0.{}", 20 + i).parse().unwrap());
            }
        }
        p
    }

    fn programmed(p: &Plan, foreign: &[(&str, u8)]) -> Programmed {
        let foreign = foreign
            .iter()
            .map(|(ip, len)| (ip.parse().unwrap(), *len))
            .collect();
        Programmed::wanted(
            p,
            &underlay(),
            Some(&device(4096, 4789, "10.99.0.10", 2)),
            foreign,
        )
    }

    #[test]
    fn a_pass_between_full_ones_writes_and_removes_only_what_its_plan_changed() {
        use PeerPath::{Routed, Vxlan};
        let before = programmed(
            &plan(&[
                ("10.1.0.0/26", "10.99.0.11", Routed),
                ("10.1.0.64/26", "169.254.1.2", Vxlan),
                ("10.1.0.128/26", "169.254.1.3", Vxlan),
            ]),
            &[],
        );
        assert_eq!(diff(&before, &before), Diff::default(), "nothing changed");
        // A new block; a mode switch of the first (same prefix, now over VXLAN); the third
        // peer gone.
        let after = programmed(
            &plan(&[
                ("10.1.0.0/26", "169.254.1.1", Vxlan),
                ("10.1.0.64/26", "169.254.1.2", Vxlan),
                ("10.1.0.192/26", "10.99.0.14", Routed),
            ]),
            &[],
        );
        let d = diff(&before, &after);
        let dsts = |rs: &[&Route]| rs.iter().map(|r| r.dst.to_string()).collect::<Vec<_>>();
        assert_eq!(dsts(&d.routes), ["10.1.0.0", "10.1.0.192"]);
        assert_eq!(
            dsts(&d.routes_gone),
            ["10.1.0.128"],
            "the switched route is replaced in place"
        );
        assert_eq!(
            d.neighbors,
            [("169.254.1.1".parse().unwrap(), [0x0a, 0, 0, 0, 0, 0])]
        );
        assert_eq!(d.neighbors_gone, ["169.254.1.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(d.fdb.len(), 1);
        assert_eq!(d.fdb_gone, [[0x0a, 0, 0, 0, 0, 2]]);
    }

    #[test]
    fn a_route_sinew_does_not_own_is_never_replaced_between_full_passes() {
        let p = plan(&[("10.1.0.0/26", "10.99.0.11", PeerPath::Routed)]);
        let before = programmed(&Plan::default(), &[("10.1.0.0", 26)]);
        let after = programmed(&p, &[("10.1.0.0", 26)]);
        assert_eq!(after.skipped().count(), 1);
        assert_eq!(diff(&before, &after), Diff::default());
        // Nor removed when sinew stops wanting the prefix.
        assert_eq!(diff(&after, &before), Diff::default());
    }

    fn vxlan() -> Link {
        device(4096, 4789, "10.99.0.10", 2)
    }

    #[test]
    fn a_route_the_kernel_refuses_keeps_no_other_peer_out_and_is_tried_again() {
        use PeerPath::{Routed, Vxlan};
        let p = plan(&[
            ("10.1.0.0/26", "10.99.0.11", Routed),
            ("10.1.0.64/26", "169.254.1.2", Vxlan),
            ("10.1.0.128/26", "169.254.1.3", Vxlan),
        ]);
        let mut kernel = FakeKernel::default();
        kernel.state().refuse.insert("10.1.0.64".parse().unwrap());
        let (changes, _) = apply(&mut kernel, &p, &underlay(), Some(&vxlan())).unwrap();
        assert_eq!(kernel.dsts(), ["10.1.0.0/26", "10.1.0.128/26"]);
        let st = kernel.state();
        assert_eq!((st.neighbors.len(), st.fdb.len()), (2, 2));
        drop(st);
        assert_eq!(changes.added, 6, "2 routes, 2 neighbours, 2 FDB entries");
        assert_eq!(
            changes.refused,
            [
                "route to 10.1.0.64/26 via 169.254.1.2: add route: Network is unreachable (errno 101)"
            ]
        );
        let problem = changes.refused_problem().unwrap();
        assert_eq!(problem.kind, ProblemKind::PeersIncomplete);
        assert!(
            problem.message.contains("refused 1 write(s)"),
            "{problem:?}"
        );

        // The kernel takes it now: the next full apply adds only it.
        kernel.state().refuse.clear();
        let (changes, _) = apply(&mut kernel, &p, &underlay(), Some(&vxlan())).unwrap();
        assert_eq!((changes.added, changes.removed), (1, 0));
        assert!(changes.refused.is_empty() && changes.refused_problem().is_none());
        assert_eq!(kernel.dsts().len(), 3);
    }

    #[test]
    fn between_full_passes_a_refused_write_keeps_no_other_out() {
        use PeerPath::{Routed, Vxlan};
        let first = plan(&[("10.1.0.0/26", "10.99.0.11", Routed)]);
        let mut kernel = FakeKernel::default();
        let (_, before) = apply(&mut kernel, &first, &underlay(), Some(&vxlan())).unwrap();
        kernel.state().refuse.insert("10.1.0.64".parse().unwrap());
        let next = plan(&[
            ("10.1.0.0/26", "10.99.0.11", Routed),
            ("10.1.0.64/26", "169.254.1.2", Vxlan),
            ("10.1.0.128/26", "169.254.1.3", Vxlan),
        ]);
        let (changes, _) =
            apply_changes(&mut kernel, &before, &next, &underlay(), Some(&vxlan())).unwrap();
        assert_eq!(kernel.dsts(), ["10.1.0.0/26", "10.1.0.128/26"]);
        assert_eq!(changes.refused.len(), 1);
        assert_eq!(changes.added, 5, "1 route, 2 neighbours, 2 FDB entries");
    }

    #[test]
    fn a_full_apply_removes_what_no_peer_wants_and_leaves_foreign_routes() {
        let p = plan(&[("10.1.0.0/26", "169.254.1.1", PeerPath::Vxlan)]);
        let foreign = Route {
            gateway: Some("10.99.0.1".parse().unwrap()),
            oif: Some(2),
            protocol: sinew_node_lib::netlink::RTPROT_STATIC,
            ..Route::new("10.1.0.64".parse().unwrap(), 26)
        };
        let stale = Route {
            dst: "10.1.0.128".parse().unwrap(),
            protocol: PEER_ROUTE_PROTOCOL,
            ..foreign.clone()
        };
        let mut kernel = FakeKernel::default();
        {
            let mut st = kernel.state();
            st.routes = vec![foreign.clone(), stale];
            st.neighbors =
                BTreeMap::from([("169.254.9.9".parse().unwrap(), [0x0a, 9, 9, 9, 9, 9])]);
            st.fdb = BTreeMap::from([([0; 6], "10.99.0.99".parse().unwrap())]);
        }
        let (changes, _) = apply(&mut kernel, &p, &underlay(), Some(&vxlan())).unwrap();
        assert_eq!(kernel.dsts(), ["10.1.0.0/26", "10.1.0.64/26"]);
        let st = kernel.state();
        assert!(st.routes.contains(&foreign));
        assert_eq!(
            st.neighbors.keys().collect::<Vec<_>>(),
            [&"169.254.1.1".parse::<IpAddr>().unwrap()]
        );
        assert!(!st.fdb.contains_key(&[0; 6]), "the all-zero entry goes");
        assert_eq!((changes.added, changes.removed), (3, 3));
    }

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

    #[test]
    fn the_vxlan_device_is_made_fixed_in_place_or_made_again_as_the_kernel_shows_it() {
        let params = VxlanParams {
            vni: 4096,
            port: 4789,
        };
        let u = underlay();
        let anchor = (IpAddr::V4(VXLAN_ANCHOR_V4), 32);
        let mut kernel = FakeKernel::with_underlay(u.ip, 24, u.mtu);
        let link = ensure_vxlan(&mut kernel, params, &u, MAC).unwrap();
        let made = kernel.link(VXLAN_DEVICE).unwrap();
        assert_eq!(
            (made.index, made.mtu, made.up),
            (101, 1450, true),
            "{made:?}"
        );
        assert_eq!(link.index, made.index);
        assert_eq!(kernel.addresses_of(VXLAN_DEVICE), [anchor]);

        // Taken down and given another MTU by someone: fixed in place.
        if let Some(l) = kernel.state().links.iter_mut().find(|l| l.index == 101) {
            (l.up, l.mtu) = (false, 9000);
        }
        ensure_vxlan(&mut kernel, params, &u, MAC).unwrap();
        let fixed = kernel.link(VXLAN_DEVICE).unwrap();
        assert_eq!((fixed.index, fixed.mtu, fixed.up), (101, 1450, true));
        assert_eq!(
            kernel.addresses_of(VXLAN_DEVICE),
            [anchor],
            "the anchor is not added twice"
        );

        // A new VNI in the ClusterNetwork: the device is made again, with its anchor.
        let renumbered = VxlanParams { vni: 7, ..params };
        ensure_vxlan(&mut kernel, renumbered, &u, MAC).unwrap();
        let again = kernel.link(VXLAN_DEVICE).unwrap();
        assert_eq!((again.index, again.vxlan.unwrap().vni), (102, Some(7)));
        assert!(again.up);
        assert_eq!(kernel.addresses_of(VXLAN_DEVICE), [anchor]);
        assert_eq!(
            kernel.addresses_of("eth0"),
            [(u.ip, 24)],
            "the underlay is left alone"
        );
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

//! The kernel in memory, for tests: what a pass writes stays, and it can refuse writes as a
//! kernel does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sinew_crds::Family;
use sinew_node_lib::netlink::{
    Link, NUD_PERMANENT, Neighbor, NetlinkError, Route, RouteEntry, Rule, VxlanInfo,
};

use super::{Kernel, Underlay, VXLAN_DEVICE, VxlanParams};

/// The kernel in memory (one device); it refuses to add a route to any of `refuse`, as
/// a kernel refuses a route whose gateway it cannot reach.
#[derive(Default)]
pub struct FakeKernel {
    /// The VXLAN device, once made.
    pub link: Option<Link>,
    /// Devices created so far (each takes the next index).
    pub created: u32,
    /// The device's addresses.
    pub addresses: Vec<(IpAddr, u8)>,
    pub routes: Vec<Route>,
    pub neighbors: BTreeMap<IpAddr, [u8; 6]>,
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
    pub refuse: BTreeSet<IpAddr>,
}

impl FakeKernel {
    /// The routes' destinations, sorted.
    pub fn dsts(&self) -> Vec<String> {
        let mut dsts: Vec<String> = self
            .routes
            .iter()
            .map(|r| format!("{}/{}", r.dst, r.prefix))
            .collect();
        dsts.sort();
        dsts
    }
}

impl Kernel for FakeKernel {
    fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        Ok(self.link.iter().cloned().collect())
    }
    fn add_address(&mut self, _: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        self.addresses.push((addr, prefix));
        Ok(())
    }
    fn del_address(&mut self, _: u32, addr: IpAddr, prefix: u8) -> Result<bool, NetlinkError> {
        let before = self.addresses.len();
        self.addresses.retain(|a| *a != (addr, prefix));
        Ok(self.addresses.len() < before)
    }
    fn all_routes(&mut self, _: Family) -> Result<Vec<RouteEntry>, NetlinkError> {
        Ok(Vec::new())
    }
    fn rules(&mut self, _: Family) -> Result<Vec<Rule>, NetlinkError> {
        Ok(Vec::new())
    }
    fn input_accepted(&mut self, _: IpAddr, _: IpAddr, _: u32) -> Result<bool, NetlinkError> {
        Ok(true)
    }
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.link.clone().filter(|l| l.name == name))
    }
    fn delete_link_by_name(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let gone = self.link.take_if(|l| l.name == name).is_some();
        if gone {
            self.addresses.clear();
        }
        Ok(gone)
    }
    fn create_vxlan(
        &mut self,
        params: VxlanParams,
        underlay: &Underlay,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.created += 1;
        self.link = Some(Link {
            index: 100 + self.created,
            name: VXLAN_DEVICE.into(),
            mac: Some(mac),
            mtu,
            up: false,
            kind: Some("vxlan".into()),
            vxlan: Some(VxlanInfo {
                vni: Some(params.vni),
                port: Some(params.port),
                local: Some(underlay.ip),
                link: Some(underlay.index),
            }),
        });
        Ok(())
    }
    fn set_mtu(&mut self, _: u32, mtu: u32) -> Result<(), NetlinkError> {
        if let Some(l) = self.link.as_mut() {
            l.mtu = mtu;
        }
        Ok(())
    }
    fn set_link_up(&mut self, _: u32) -> Result<(), NetlinkError> {
        if let Some(l) = self.link.as_mut() {
            l.up = true;
        }
        Ok(())
    }
    fn addresses(&mut self, _: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        Ok(self.addresses.clone())
    }
    fn add_host_scope_address(
        &mut self,
        _: u32,
        addr: std::net::Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        self.addresses.push((IpAddr::V4(addr), 32));
        Ok(())
    }
    fn neighbors(&mut self, _: u32) -> Result<Vec<Neighbor>, NetlinkError> {
        Ok(self
            .neighbors
            .iter()
            .map(|(ip, mac)| Neighbor {
                ip: *ip,
                mac: Some(*mac),
                state: NUD_PERMANENT,
            })
            .collect())
    }
    fn add_neighbor(&mut self, _: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), NetlinkError> {
        self.neighbors.insert(ip, mac);
        Ok(())
    }
    fn del_neighbor(&mut self, _: u32, ip: IpAddr) -> Result<bool, NetlinkError> {
        Ok(self.neighbors.remove(&ip).is_some())
    }
    fn fdb(&mut self, _: u32) -> Result<Vec<([u8; 6], IpAddr)>, NetlinkError> {
        Ok(self.fdb.iter().map(|(m, d)| (*m, *d)).collect())
    }
    fn add_fdb(&mut self, _: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError> {
        self.fdb.insert(mac, dst);
        Ok(())
    }
    fn del_fdb(&mut self, _: u32, mac: [u8; 6]) -> Result<bool, NetlinkError> {
        Ok(self.fdb.remove(&mac).is_some())
    }
    fn routes(&mut self, v6: bool, _: u32) -> Result<Vec<Route>, NetlinkError> {
        Ok(self
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv6() == v6)
            .cloned()
            .collect())
    }
    fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        if self.refuse.contains(&route.dst) {
            return Err(NetlinkError::Kernel {
                op: "add route",
                errno: 101,
                message: "Network is unreachable".into(),
            });
        }
        self.routes
            .retain(|r| (r.dst, r.prefix) != (route.dst, route.prefix));
        self.routes.push(route.clone());
        Ok(())
    }
    fn del_route(&mut self, route: &Route) -> Result<bool, NetlinkError> {
        let before = self.routes.len();
        self.routes.retain(|r| r != route);
        Ok(self.routes.len() < before)
    }
}

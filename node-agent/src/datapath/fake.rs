//! The kernel in memory, for tests: what a pass writes stays (clones share it, so a test
//! reads what an agent's passes left), and it refuses writes as a kernel does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sinew_crds::Family;
use sinew_node_lib::netlink::{
    Link, NUD_PERMANENT, Neighbor, NetlinkError, Route, RouteEntry, Rule, VxlanInfo,
};

use sinew_node_lib::netlink::nftables::NftError;
use sinew_node_lib::nft::Table;

use super::{Kernel, Underlay, VXLAN_DEVICE, VxlanParams};
use crate::nat::NatError;
use crate::policy::engine::PolicyKernel;

/// What the kernel holds.
#[derive(Debug, Default)]
pub struct State {
    pub links: Vec<Link>,
    /// Each device's addresses, by index.
    pub addresses: BTreeMap<u32, Vec<(IpAddr, u8)>>,
    pub routes: Vec<Route>,
    /// The VXLAN device's neighbours and FDB.
    pub neighbors: BTreeMap<IpAddr, [u8; 6]>,
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
    /// Destinations it refuses a route to, as a kernel refuses a route whose gateway it
    /// cannot reach.
    pub refuse: BTreeSet<IpAddr>,
    /// sinew's nftables table, as last replaced.
    pub nat: Option<Table>,
    /// NetworkPolicy's table, as the policy loop last wrote it, and whether writes of it
    /// are refused.
    pub policy: Option<Table>,
    pub refuse_policy: bool,
    /// Dumps of the routing table, and routes added or deleted (what a pass costs).
    pub route_dumps: u32,
    pub route_writes: u32,
    /// Devices created so far (each takes the next index from 101).
    created: u32,
}

/// A handle on one in-memory kernel.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel(Arc<Mutex<State>>);

impl FakeKernel {
    /// A kernel with the node's underlay device `eth0` (index 2) holding `ip/prefix`.
    pub fn with_underlay(ip: IpAddr, prefix: u8, mtu: u32) -> FakeKernel {
        let kernel = FakeKernel::default();
        {
            let mut st = kernel.state();
            st.links.push(Link {
                index: 2,
                name: "eth0".into(),
                mac: Some([0x02, 0, 0, 0, 0, 2]),
                mtu,
                up: true,
                kind: None,
                vxlan: None,
            });
            st.addresses.insert(2, vec![(ip, prefix)]);
        }
        kernel
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The device called `name`.
    pub fn link(&self, name: &str) -> Option<Link> {
        self.state().links.iter().find(|l| l.name == name).cloned()
    }

    /// The addresses of the device called `name`.
    pub fn addresses_of(&self, name: &str) -> Vec<(IpAddr, u8)> {
        let index = self.link(name).map(|l| l.index);
        index
            .and_then(|i| self.state().addresses.get(&i).cloned())
            .unwrap_or_default()
    }

    /// The routes' destinations, sorted.
    pub fn dsts(&self) -> Vec<String> {
        let mut dsts: Vec<String> = self
            .state()
            .routes
            .iter()
            .map(|r| format!("{}/{}", r.dst, r.prefix))
            .collect();
        dsts.sort();
        dsts
    }

    fn with_link(&self, index: u32, change: impl FnOnce(&mut Link)) {
        if let Some(l) = self.state().links.iter_mut().find(|l| l.index == index) {
            change(l);
        }
    }
}

impl Kernel for FakeKernel {
    fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        Ok(self.state().links.clone())
    }
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.link(name))
    }
    fn delete_link_by_name(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let mut st = self.state();
        let Some(at) = st.links.iter().position(|l| l.name == name) else {
            return Ok(false);
        };
        let gone = st.links.remove(at);
        st.addresses.remove(&gone.index);
        Ok(true)
    }
    fn create_vxlan(
        &mut self,
        params: VxlanParams,
        underlay: &Underlay,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let mut st = self.state();
        st.created += 1;
        let index = 100 + st.created;
        st.links.push(Link {
            index,
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
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.with_link(index, |l| l.mtu = mtu);
        Ok(())
    }
    fn set_link_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.with_link(index, |l| l.up = true);
        Ok(())
    }
    fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        Ok(self
            .state()
            .addresses
            .get(&index)
            .cloned()
            .unwrap_or_default())
    }
    fn add_host_scope_address(
        &mut self,
        index: u32,
        addr: std::net::Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        self.add_address(index, IpAddr::V4(addr), 32)
    }
    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        self.state()
            .addresses
            .entry(index)
            .or_default()
            .push((addr, prefix));
        Ok(())
    }
    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<bool, NetlinkError> {
        let mut st = self.state();
        let Some(list) = st.addresses.get_mut(&index) else {
            return Ok(false);
        };
        let before = list.len();
        list.retain(|a| *a != (addr, prefix));
        Ok(list.len() < before)
    }
    fn all_routes(&mut self, _: Family) -> Result<Vec<RouteEntry>, NetlinkError> {
        Ok(Vec::new())
    }
    fn rules(&mut self, _: Family) -> Result<Vec<Rule>, NetlinkError> {
        Ok(Vec::new())
    }
    /// Every packet is accepted: this kernel has no reverse-path filter (what strict filtering
    /// drops is tested against real kernels, in the root e2e tier).
    fn input_accepted(&mut self, _: IpAddr, _: IpAddr, _: u32) -> Result<bool, NetlinkError> {
        Ok(true)
    }
    fn nat_table_exists(&mut self) -> bool {
        self.state().nat.is_some()
    }
    fn replace_nat_table(&mut self, table: &Table) -> Result<(), NatError> {
        self.state().nat = Some(table.clone());
        Ok(())
    }
    fn remove_table(&mut self, name: &str) -> Result<(), NatError> {
        let mut st = self.state();
        match name {
            crate::nat::TABLE => st.nat = None,
            sinew_node_lib::nft::policy::TABLE => st.policy = None,
            _ => {}
        }
        Ok(())
    }
    fn neighbors(&mut self, _: u32) -> Result<Vec<Neighbor>, NetlinkError> {
        Ok(self
            .state()
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
        self.state().neighbors.insert(ip, mac);
        Ok(())
    }
    fn del_neighbor(&mut self, _: u32, ip: IpAddr) -> Result<bool, NetlinkError> {
        Ok(self.state().neighbors.remove(&ip).is_some())
    }
    fn fdb(&mut self, _: u32) -> Result<Vec<([u8; 6], IpAddr)>, NetlinkError> {
        Ok(self.state().fdb.iter().map(|(m, d)| (*m, *d)).collect())
    }
    fn add_fdb(&mut self, _: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError> {
        self.state().fdb.insert(mac, dst);
        Ok(())
    }
    fn del_fdb(&mut self, _: u32, mac: [u8; 6]) -> Result<bool, NetlinkError> {
        Ok(self.state().fdb.remove(&mac).is_some())
    }
    fn routes(&mut self, v6: bool, _: u32) -> Result<Vec<Route>, NetlinkError> {
        let mut st = self.state();
        st.route_dumps += 1;
        Ok(st
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv6() == v6)
            .cloned()
            .collect())
    }
    fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let mut st = self.state();
        st.route_writes += 1;
        if st.refuse.contains(&route.dst) {
            return Err(NetlinkError::Kernel {
                op: "add route",
                errno: 101,
                message: "Network is unreachable".into(),
            });
        }
        st.routes
            .retain(|r| (r.dst, r.prefix) != (route.dst, route.prefix));
        st.routes.push(route.clone());
        Ok(())
    }
    fn del_route(&mut self, route: &Route) -> Result<bool, NetlinkError> {
        let mut st = self.state();
        st.route_writes += 1;
        let before = st.routes.len();
        st.routes.retain(|r| r != route);
        Ok(st.routes.len() < before)
    }
}

/// The policy loop's side of the same kernel.
impl PolicyKernel for FakeKernel {
    fn exists(&mut self) -> Result<bool, NftError> {
        Ok(self.state().policy.is_some())
    }
    fn replace(&mut self, table: &Table) -> Result<(), NftError> {
        let mut st = self.state();
        if st.refuse_policy {
            return Err(NftError::Kernel {
                op: format!("add table inet {}", table.name),
                errno: 12,
                message: "Cannot allocate memory".into(),
            });
        }
        st.policy = Some(table.clone());
        Ok(())
    }
    fn update(&mut self, _: &Table, new: &Table) -> Result<(), NftError> {
        self.replace(new)
    }
    fn delete(&mut self) -> Result<(), NftError> {
        self.state().policy = None;
        Ok(())
    }
}

//! The kernel as a pass reads and writes it, behind one trait: [`Netlink`] on a node, the
//! in-memory kernel of `fake.rs` in tests.

use std::net::IpAddr;

use sinew_crds::Family;
use sinew_node_lib::netlink::{Link, Neighbor, Netlink, NetlinkError, Route, RouteEntry, Rule};
use sinew_node_lib::nft::Table;

use super::{Underlay, VXLAN_DEVICE, VxlanParams};
use crate::nat::NatError;

/// The kernel as a pass reads and writes it: devices and their addresses, peer routes, the
/// VXLAN device's neighbours and FDB, and what the node checks look at (every route and
/// rule, the input route of a packet). [`Netlink`] on a node, a fake in the tests.
pub trait Kernel: Send {
    fn links(&mut self) -> Result<Vec<Link>, NetlinkError>;
    /// The device called `name`, if there is one.
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError>;
    fn delete_link_by_name(&mut self, name: &str) -> Result<bool, NetlinkError>;
    /// Creates [`VXLAN_DEVICE`] (no learning, no multicast group) on `underlay`, down.
    fn create_vxlan(
        &mut self,
        params: VxlanParams,
        underlay: &Underlay,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError>;
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError>;
    fn set_link_up(&mut self, index: u32) -> Result<(), NetlinkError>;
    /// A device's addresses, with their prefix lengths.
    fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError>;
    /// Adds `addr/32` with host scope.
    fn add_host_scope_address(
        &mut self,
        index: u32,
        addr: std::net::Ipv4Addr,
    ) -> Result<(), NetlinkError>;
    /// Adds `addr/prefix` without duplicate address detection.
    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError>;
    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<bool, NetlinkError>;
    /// Every route of every table of `family`, with its kind.
    fn all_routes(&mut self, family: Family) -> Result<Vec<RouteEntry>, NetlinkError>;
    fn rules(&mut self, family: Family) -> Result<Vec<Rule>, NetlinkError>;
    /// Whether the kernel accepts a packet from `src` to `dst` arriving on `iif` (its input
    /// route lookup, reverse-path filter included).
    fn input_accepted(&mut self, src: IpAddr, dst: IpAddr, iif: u32) -> Result<bool, NetlinkError>;
    /// Whether sinew's nftables table (`inet sinew`) is in the kernel (`false` where that
    /// cannot be told).
    fn nat_table_exists(&mut self) -> bool;
    /// Replaces sinew's nftables table with `table`, atomically.
    fn replace_nat_table(&mut self, table: &Table) -> Result<(), NatError>;
    /// Removes sinew's nftables table `name` (`inet sinew`, or NetworkPolicy's) where it is.
    fn remove_table(&mut self, name: &str) -> Result<(), NatError>;
    fn neighbors(&mut self, vxlan: u32) -> Result<Vec<Neighbor>, NetlinkError>;
    fn add_neighbor(&mut self, vxlan: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), NetlinkError>;
    fn del_neighbor(&mut self, vxlan: u32, ip: IpAddr) -> Result<bool, NetlinkError>;
    fn fdb(&mut self, vxlan: u32) -> Result<Vec<([u8; 6], IpAddr)>, NetlinkError>;
    fn add_fdb(&mut self, vxlan: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError>;
    fn del_fdb(&mut self, vxlan: u32, mac: [u8; 6]) -> Result<bool, NetlinkError>;
    /// The routes of `table` of one family.
    fn routes(&mut self, v6: bool, table: u32) -> Result<Vec<Route>, NetlinkError>;
    fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError>;
    fn del_route(&mut self, route: &Route) -> Result<bool, NetlinkError>;
}

impl Kernel for Netlink {
    fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        Netlink::links(self)
    }
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Netlink::link_by_name(self, name)
    }
    fn delete_link_by_name(&mut self, name: &str) -> Result<bool, NetlinkError> {
        Netlink::delete_link_by_name(self, name)
    }
    fn create_vxlan(
        &mut self,
        params: VxlanParams,
        underlay: &Underlay,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        Netlink::create_vxlan(
            self,
            VXLAN_DEVICE,
            params.vni,
            params.port,
            Some(underlay.ip),
            Some(underlay.index),
            Some(mtu),
            Some(mac),
        )
    }
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        Netlink::set_mtu(self, index, mtu)
    }
    fn set_link_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        Netlink::set_link_up(self, index)
    }
    fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        Netlink::addresses(self, index)
    }
    fn add_host_scope_address(
        &mut self,
        index: u32,
        addr: std::net::Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        Netlink::add_host_scope_address(self, index, addr)
    }
    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        Netlink::add_address(self, index, addr, prefix, true)
    }
    fn del_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<bool, NetlinkError> {
        Netlink::del_address(self, index, addr, prefix)
    }
    fn all_routes(&mut self, family: Family) -> Result<Vec<RouteEntry>, NetlinkError> {
        Netlink::all_routes(self, family)
    }
    fn rules(&mut self, family: Family) -> Result<Vec<Rule>, NetlinkError> {
        Netlink::rules(self, family)
    }
    fn input_accepted(&mut self, src: IpAddr, dst: IpAddr, iif: u32) -> Result<bool, NetlinkError> {
        Netlink::input_accepted(self, src, dst, iif)
    }
    fn nat_table_exists(&mut self) -> bool {
        crate::nat::table_exists()
    }
    fn replace_nat_table(&mut self, table: &Table) -> Result<(), NatError> {
        crate::nat::apply(table)
    }
    fn remove_table(&mut self, name: &str) -> Result<(), NatError> {
        crate::nat::remove_table(name)
    }
    fn neighbors(&mut self, vxlan: u32) -> Result<Vec<Neighbor>, NetlinkError> {
        Netlink::neighbors(self, vxlan)
    }
    fn add_neighbor(&mut self, vxlan: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), NetlinkError> {
        Netlink::add_neighbor(self, vxlan, ip, mac)
    }
    fn del_neighbor(&mut self, vxlan: u32, ip: IpAddr) -> Result<bool, NetlinkError> {
        Netlink::del_neighbor(self, vxlan, ip)
    }
    fn fdb(&mut self, vxlan: u32) -> Result<Vec<([u8; 6], IpAddr)>, NetlinkError> {
        Netlink::fdb(self, vxlan)
    }
    fn add_fdb(&mut self, vxlan: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), NetlinkError> {
        Netlink::add_fdb(self, vxlan, mac, dst)
    }
    fn del_fdb(&mut self, vxlan: u32, mac: [u8; 6]) -> Result<bool, NetlinkError> {
        Netlink::del_fdb(self, vxlan, mac)
    }
    fn routes(&mut self, v6: bool, table: u32) -> Result<Vec<Route>, NetlinkError> {
        Netlink::routes(self, v6, table)
    }
    fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        Netlink::add_route(self, route)
    }
    fn del_route(&mut self, route: &Route) -> Result<bool, NetlinkError> {
        Netlink::del_route(self, route)
    }
}

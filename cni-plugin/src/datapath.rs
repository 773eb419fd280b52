//! The pod's side of the datapath, programmed through netlink (no `ip`, no shell).
//!
//! Per pod: a veth pair, `eth0` in the pod with its addresses as /32 and /128, a default route
//! via a link-local gateway (`169.254.1.1`, `fe80::1`) whose MAC is pinned to the host end with
//! a permanent neighbour entry, so no bridge, no gateway address per node and no proxy ARP are
//! needed; on the host, a /32 (/128) route to each address through the host end. IPv6 addresses
//! are added with `IFA_F_NODAD`: duplicate address detection would otherwise hold them
//! "tentative" for seconds. Everything sinew adds carries route protocol [`ROUTE_PROTOCOL`].
//!
//! A pod's host ports are elements of the agent's `inet sinew` nftables table, added last in
//! setup and removed first in teardown ([`sinew_node_lib::hostport`]); one on `127.0.0.1`
//! (a `hostIP` of loopback, or none) also needs `route_localnet` on the pod's host veth, or the
//! kernel drops the node's DNATed loopback packets as martians.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sinew_core::Family;

use crate::result::{CniOutput, Interface, IpConfig, RouteConfig};
use sinew_node_lib::hostport::{self, HostPort};
use sinew_node_lib::ipam::Attachment;
use sinew_node_lib::netlink::nftables::{NftError, Nftables};
use sinew_node_lib::netlink::{Netlink, NetlinkError, Route};
use sinew_node_lib::netns::{NetNs, NetnsError};

/// The pod's IPv4 default gateway: link-local, never on the wire, pinned to the host veth.
pub const GATEWAY_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
/// The pod's IPv6 default gateway, also configured on the host end of the veth.
pub const GATEWAY_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
/// Prefix of every host-side veth sinew creates.
pub use sinew_node_lib::consts::HOST_VETH_PREFIX;
use sinew_node_lib::consts::MAIN_TABLE;
/// Route protocol id marking routes sinew owns (`ip route show proto 115`).
pub use sinew_node_lib::consts::POD_ROUTE_PROTOCOL as ROUTE_PROTOCOL;

/// Failure while programming the kernel.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Missing(String),
    #[error("host ports: {0}")]
    HostPorts(#[from] NftError),
    #[error("host ports: {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What setup learnt, for the CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupInfo {
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
}

/// The kernel-facing half of the plugin, behind a trait so command logic is testable alone.
pub trait Datapath {
    /// Creates (or, for a repeated ADD, re-asserts) the pod's interface, addresses and routes.
    fn setup(&self, attachment: &Attachment, netns: &NetNs) -> Result<SetupInfo, DatapathError>;
    /// Removes everything `setup` created; succeeds when it is already gone.
    fn teardown(&self, attachment: &Attachment) -> Result<(), DatapathError> {
        self.remove_host_veth(&attachment.host_veth)
    }
    /// Deletes a host veth (and with it the pod end and the host routes) if it exists.
    fn remove_host_veth(&self, name: &str) -> Result<(), DatapathError>;
    /// Differences between the recorded attachment and the kernel; empty when they agree.
    fn check(&self, attachment: &Attachment, netns: &NetNs) -> Vec<String>;
    /// Deletes sinew veths that belong to no live attachment.
    fn remove_stray_host_veths(&self, live: &BTreeSet<String>) -> Result<(), DatapathError>;
}

pub use sinew_node_lib::consts::host_veth_name;

fn gateway(family: Family) -> IpAddr {
    match family {
        Family::V4 => GATEWAY_V4,
        Family::V6 => GATEWAY_V6,
    }
}

fn host_prefix(ip: IpAddr) -> u8 {
    Family::of(ip).bits()
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The CNI result of an attachment: host veth, pod interface, addresses, default routes.
pub fn result_for(attachment: &Attachment, setup: &SetupInfo) -> CniOutput {
    let mut families = BTreeSet::new();
    CniOutput {
        interfaces: vec![
            Interface {
                name: attachment.host_veth.clone(),
                mac: Some(mac_string(setup.host_mac)),
                sandbox: None,
                mtu: Some(attachment.mtu),
            },
            Interface {
                name: attachment.ifname.clone(),
                mac: Some(mac_string(setup.pod_mac)),
                sandbox: attachment.netns.clone(),
                mtu: Some(attachment.mtu),
            },
        ],
        ips: attachment
            .addresses
            .iter()
            .map(|a| IpConfig {
                address: format!("{}/{}", a.ip, host_prefix(a.ip)),
                gateway: Some(gateway(Family::of(a.ip))),
                interface: Some(1),
            })
            .collect(),
        routes: attachment
            .addresses
            .iter()
            .map(|a| Family::of(a.ip))
            .filter(|f| families.insert(*f))
            .map(|f| RouteConfig {
                dst: match f {
                    Family::V4 => "0.0.0.0/0".into(),
                    Family::V6 => "::/0".into(),
                },
                gw: Some(gateway(f)),
            })
            .collect(),
        dns: serde_json::Value::Null,
    }
}

/// The real datapath, in the network namespace the plugin runs in (the node's).
#[derive(Debug, Default)]
pub struct KernelDatapath;

fn host_route(ip: IpAddr, host_index: u32) -> Route {
    Route {
        dst: ip,
        prefix: host_prefix(ip),
        gateway: None,
        oif: Some(host_index),
        scope_link: true,
        onlink: false,
        table: MAIN_TABLE,
        protocol: ROUTE_PROTOCOL,
        mtu: None,
        src: None,
    }
}

fn default_route(family: Family, pod_index: u32) -> Route {
    let dst = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    Route {
        dst,
        prefix: 0,
        gateway: Some(gateway(family)),
        oif: Some(pod_index),
        scope_link: false,
        onlink: family == Family::V4,
        table: MAIN_TABLE,
        protocol: ROUTE_PROTOCOL,
        mtu: None,
        src: None,
    }
}

fn families(attachment: &Attachment) -> BTreeSet<Family> {
    attachment
        .addresses
        .iter()
        .map(|a| Family::of(a.ip))
        .collect()
}

impl Datapath for KernelDatapath {
    fn setup(&self, attachment: &Attachment, netns: &NetNs) -> Result<SetupInfo, DatapathError> {
        let mut host = Netlink::new()?;
        let mut pod = netlink_in(netns)?;
        // A first ADD creates the pair at once; the kernel refuses a name already taken (a
        // repeated ADD, a half-made pair, a foreign interface in the pod), and only then do
        // we look at what is there.
        match host.create_veth(
            &attachment.host_veth,
            &attachment.ifname,
            netns,
            attachment.mtu,
        ) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {
                reuse_or_replace_pair(&mut host, &mut pod, attachment, netns)?
            }
            Err(e) => return Err(e.into()),
        }
        let host_link = host.link_by_name(&attachment.host_veth)?.ok_or_else(|| {
            DatapathError::Missing(format!("host veth {} vanished", attachment.host_veth))
        })?;
        let pod_link = pod.link_by_name(&attachment.ifname)?.ok_or_else(|| {
            DatapathError::Missing(format!("pod interface {} vanished", attachment.ifname))
        })?;
        let host_mac = host_link.mac.unwrap_or_default();

        // Pod side: addresses, pinned gateway neighbours, default routes.
        for a in &attachment.addresses {
            pod.add_address(pod_link.index, a.ip, host_prefix(a.ip), true)?;
        }
        pod.set_link_up(pod_link.index)?;
        for family in families(attachment) {
            pod.add_neighbor(pod_link.index, gateway(family), host_mac)?;
            pod.add_route(&default_route(family, pod_link.index))?;
        }

        // Host side: the IPv6 gateway address, the link up, a route per pod address.
        if families(attachment).contains(&Family::V6) {
            host.add_address(host_link.index, GATEWAY_V6, 64, true)?;
        }
        host.set_link_up(host_link.index)?;
        for a in &attachment.addresses {
            host.add_route(&host_route(a.ip, host_link.index))?;
        }
        map_host_ports(attachment)?;
        Ok(SetupInfo {
            host_mac,
            pod_mac: pod_link.mac.unwrap_or_default(),
        })
    }

    fn teardown(&self, attachment: &Attachment) -> Result<(), DatapathError> {
        let ports = hostport::of_attachment(attachment);
        if !ports.is_empty() {
            match Nftables::new() {
                // No nf_tables in this kernel: nothing can be mapped.
                Err(e) if e.is_unsupported() => {}
                nft => nft?.remove_host_ports(&ports)?,
            }
        }
        self.remove_host_veth(&attachment.host_veth)
    }

    fn remove_host_veth(&self, name: &str) -> Result<(), DatapathError> {
        Netlink::new()?.delete_link_by_name(name)?;
        Ok(())
    }

    fn check(&self, attachment: &Attachment, netns: &NetNs) -> Vec<String> {
        match check_kernel(attachment, netns) {
            Ok(problems) => problems,
            Err(e) => vec![e.to_string()],
        }
    }

    fn remove_stray_host_veths(&self, live: &BTreeSet<String>) -> Result<(), DatapathError> {
        let mut nl = Netlink::new()?;
        for link in nl.links()? {
            if link.name.starts_with(HOST_VETH_PREFIX)
                && link.kind.as_deref() == Some("veth")
                && !live.contains(&link.name)
            {
                nl.delete_link(link.index)?;
            }
        }
        Ok(())
    }
}

/// `/proc/sys/net/ipv4/conf/<veth>/route_localnet` (of the node: the plugin runs there).
fn route_localnet_path(host_veth: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{host_veth}/route_localnet")
}

/// Adds the attachment's host ports to the agent's table, after `route_localnet` on its host
/// veth when one answers on `127.0.0.1`.
fn map_host_ports(attachment: &Attachment) -> Result<(), DatapathError> {
    let ports = hostport::of_attachment(attachment);
    if ports.is_empty() {
        return Ok(());
    }
    if hostport::needs_route_localnet(&ports) {
        let path = route_localnet_path(&attachment.host_veth);
        std::fs::write(&path, "1").map_err(|source| DatapathError::Sysctl { path, source })?;
    }
    match Nftables::new().and_then(|mut nft| nft.add_host_ports(&ports)) {
        Err(e) if e.is_not_found() || e.is_unsupported() => Err(DatapathError::Missing(format!(
            "host ports cannot be mapped: the nftables table inet {} has no host-port maps yet (the sinew node agent declares them): {e}",
            sinew_node_lib::consts::NFT_TABLE
        ))),
        other => Ok(other?),
    }
}

/// Differences between the attachment's host ports and the kernel.
fn check_host_ports(attachment: &Attachment, ports: &[HostPort]) -> Vec<String> {
    let mut problems = match Nftables::new().and_then(|mut nft| nft.host_port_differences(ports)) {
        Ok(p) => p,
        Err(e) => vec![format!("host ports cannot be read: {e}")],
    };
    if hostport::needs_route_localnet(ports) {
        let path = route_localnet_path(&attachment.host_veth);
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => problems.push(format!(
                "route_localnet is off on {} (host ports on 127.0.0.1 need it)",
                attachment.host_veth
            )),
            Err(e) => problems.push(format!("{path}: {e}")),
        }
    }
    problems
}

/// A netlink socket inside `netns`, opened by this thread entering the namespace and coming
/// back (two `setns`), which costs far less than a helper thread. The socket keeps talking to
/// `netns` afterwards.
fn netlink_in(netns: &NetNs) -> Result<Netlink, DatapathError> {
    let guard = netns.enter()?;
    let opened = Netlink::new();
    guard.restore()?;
    Ok(opened?)
}

/// The slow path of setup, when the host veth or the pod interface name is taken: keeps a
/// complete pair (a repeated ADD), replaces a half-made one from an interrupted ADD, and
/// refuses an interface in the pod that is not sinew's.
fn reuse_or_replace_pair(
    host: &mut Netlink,
    pod: &mut Netlink,
    attachment: &Attachment,
    netns: &NetNs,
) -> Result<(), DatapathError> {
    let existing_host = host.link_by_name(&attachment.host_veth)?;
    let existing_pod = pod.link_by_name(&attachment.ifname)?;
    if existing_host.is_none() || existing_pod.is_none() {
        host.delete_link_by_name(&attachment.host_veth)?;
        if existing_pod.is_some() {
            return Err(DatapathError::Missing(format!(
                "interface {} already exists in the pod and is not sinew's",
                attachment.ifname
            )));
        }
        host.create_veth(
            &attachment.host_veth,
            &attachment.ifname,
            netns,
            attachment.mtu,
        )?;
    }
    Ok(())
}

fn check_kernel(attachment: &Attachment, netns: &NetNs) -> Result<Vec<String>, DatapathError> {
    let mut problems = Vec::new();
    let mut host = Netlink::new()?;
    let mut pod = netlink_in(netns)?;
    let Some(host_link) = host.link_by_name(&attachment.host_veth)? else {
        return Ok(vec![format!(
            "host veth {} is missing",
            attachment.host_veth
        )]);
    };
    let Some(pod_link) = pod.link_by_name(&attachment.ifname)? else {
        return Ok(vec![format!(
            "pod interface {} is missing",
            attachment.ifname
        )]);
    };
    if !host_link.up || !pod_link.up {
        problems.push(format!(
            "{} or {} is down",
            attachment.host_veth, attachment.ifname
        ));
    }
    let pod_addrs = pod.addresses(pod_link.index)?;
    for a in &attachment.addresses {
        if !pod_addrs.contains(&(a.ip, host_prefix(a.ip))) {
            problems.push(format!(
                "address {} is missing on {}",
                a.ip, attachment.ifname
            ));
        }
    }
    for (ip, prefix) in &pod_addrs {
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if !link_local && !attachment.addresses.iter().any(|a| a.ip == *ip) {
            problems.push(format!(
                "unexpected address {ip}/{prefix} on {}",
                attachment.ifname
            ));
        }
    }
    for family in families(attachment) {
        let routes = pod.routes(family == Family::V6, MAIN_TABLE)?;
        if !routes
            .iter()
            .any(|r| r.prefix == 0 && r.gateway == Some(gateway(family)))
        {
            problems.push(format!(
                "the {family} default route via {} is missing in the pod",
                gateway(family)
            ));
        }
        let host_routes = host.routes(family == Family::V6, MAIN_TABLE)?;
        for a in attachment
            .addresses
            .iter()
            .filter(|a| Family::of(a.ip) == family)
        {
            if !host_routes.iter().any(|r| {
                r.dst == a.ip && r.prefix == host_prefix(a.ip) && r.oif == Some(host_link.index)
            }) {
                problems.push(format!(
                    "the host route to {} via {} is missing",
                    a.ip, attachment.host_veth
                ));
            }
        }
    }
    let ports = hostport::of_attachment(attachment);
    if !ports.is_empty() {
        problems.extend(check_host_ports(attachment, &ports));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(HOST_VETH_PREFIX));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
    }
}

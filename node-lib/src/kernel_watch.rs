//! Tells whether the kernel's network configuration changed: links, addresses, routes and
//! policy rules of both families (an rtnetlink socket subscribed to their multicast groups,
//! read without blocking). The agent re-runs its node checks soon after, instead of at its
//! next resync.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `RTNLGRP_*` numbers of the groups watched (the socket joins group `n` as bit `n - 1`).
/// Not neighbours: their states change on their own with any traffic (and the agent's probes).
const GROUPS: [u32; 7] = [
    1,  // RTNLGRP_LINK
    5,  // RTNLGRP_IPV4_IFADDR
    7,  // RTNLGRP_IPV4_ROUTE
    8,  // RTNLGRP_IPV4_RULE
    9,  // RTNLGRP_IPV6_IFADDR
    11, // RTNLGRP_IPV6_ROUTE
    19, // RTNLGRP_IPV6_RULE
];

#[derive(Debug)]
pub struct KernelWatch {
    fd: OwnedFd,
}

impl KernelWatch {
    /// Subscribes in the calling thread's network namespace.
    pub fn new() -> io::Result<KernelWatch> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor this value now owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = GROUPS.iter().fold(0, |g, n| g | 1 << (n - 1));
        // SAFETY: the address is live and of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelWatch { fd })
    }

    /// Whether anything changed since the last call (consumes every pending notification).
    /// A full socket buffer (`ENOBUFS`: notifications were lost) counts as a change.
    pub fn changed(&self) -> io::Result<bool> {
        let mut buf = [0u8; 16384];
        let mut changed = false;
        loop {
            // SAFETY: `buf` is valid for writes of its length; the descriptor is open.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                changed = true;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                _ if n == 0 => return Ok(changed),
                Some(libc::EAGAIN) => return Ok(changed),
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => changed = true,
                _ => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::netlink::Netlink;
    use crate::netns::test_support::{have_root, new_netns};

    #[test]
    fn a_new_link_and_route_are_changes_and_quiet_is_not() {
        let test = "a_new_link_and_route_are_changes_and_quiet_is_not";
        if !have_root(test) {
            return;
        }
        let (node, other) = (new_netns(), new_netns());
        let watch = node.run_in(KernelWatch::new).unwrap().unwrap();
        assert!(!watch.changed().unwrap(), "nothing happened yet");
        let mut nl = Netlink::in_netns(&node).unwrap();
        nl.create_veth("eth0", "eth0", &other, 1500).unwrap();
        assert!(watch.changed().unwrap(), "a link appeared");
        assert!(!watch.changed().unwrap(), "drained");
        let link = nl.link_by_name("eth0").unwrap().unwrap();
        nl.add_address(link.index, "192.0.2.1".parse().unwrap(), 24, false)
            .unwrap();
        assert!(watch.changed().unwrap(), "an address (and its routes)");
    }
}

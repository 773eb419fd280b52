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

    /// What changed since the last call (consumes every pending notification). A full
    /// socket buffer (`ENOBUFS`: notifications were lost) counts as a change by others.
    pub fn changed(&self) -> io::Result<Changed> {
        let mut buf = [0u8; 16384];
        let mut changed = Changed::default();
        loop {
            // SAFETY: `buf` is valid for writes of its length; the descriptor is open.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if let Ok(len @ 1..) = usize::try_from(n) {
                changed.add(&buf[..len.min(buf.len())], crate::netlink::made_here);
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                _ if n == 0 => return Ok(changed),
                Some(libc::EAGAIN) => return Ok(changed),
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => changed.by_others = true,
                _ => return Err(e),
            }
        }
    }
}

/// Whose changes the notifications since the last look report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// Changes this process asked for (through its latest rtnetlink sockets).
    pub by_us: bool,
    /// Changes anyone else made, the kernel included.
    pub by_others: bool,
}

impl Changed {
    /// Reads one datagram of notifications: each message's header names the port of the
    /// socket whose request caused it (0: the kernel's own doing). A datagram that cannot be
    /// read counts as a change by others.
    fn add(&mut self, datagram: &[u8], ours: impl Fn(u32) -> bool) {
        let mut rest = datagram;
        while !rest.is_empty() {
            let field = |at: usize| {
                rest.get(at..at + 4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
            };
            let (Some(len), Some(port)) = (field(0), field(12)) else {
                self.by_others = true;
                return;
            };
            let len = len as usize;
            if len < 16 {
                self.by_others = true;
                return;
            }
            if ours(port) {
                self.by_us = true;
            } else {
                self.by_others = true;
            }
            // Messages are 4-byte aligned.
            rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notification header (`nlmsghdr`) of `len` bytes from `port`, padded to `len`.
    fn message(len: u32, port: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend(len.to_ne_bytes());
        m.extend(24u16.to_ne_bytes()); // RTM_NEWROUTE
        m.extend(0u16.to_ne_bytes());
        m.extend(1u32.to_ne_bytes());
        m.extend(port.to_ne_bytes());
        m.resize(len.next_multiple_of(4) as usize, 0);
        m
    }

    fn read(datagram: &[u8]) -> Changed {
        let mut c = Changed::default();
        c.add(datagram, |port| port == 7);
        c
    }

    #[test]
    fn each_notification_is_told_by_the_port_that_asked_for_it() {
        assert_eq!(read(&[]), Changed::default());
        let ours = read(&[message(20, 7), message(18, 7)].concat());
        assert_eq!((ours.by_us, ours.by_others), (true, false));
        let both = read(&[message(20, 7), message(20, 0)].concat());
        assert_eq!((both.by_us, both.by_others), (true, true));
        let theirs = read(&message(32, 4242));
        assert_eq!((theirs.by_us, theirs.by_others), (false, true));
        // Cut short or nonsensical: counted as someone else's change, never as nothing.
        assert!(read(&message(20, 7)[..10]).by_others);
        assert!(read(&message(8, 7)[..8]).by_others);
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::netlink::Netlink;
    use crate::netns::test_support::{have_root, new_netns};

    #[test]
    fn changes_are_told_apart_by_who_made_them() {
        let test = "changes_are_told_apart_by_who_made_them";
        if !have_root(test) {
            return;
        }
        let (node, other) = (new_netns(), new_netns());
        let watch = node.run_in(KernelWatch::new).unwrap().unwrap();
        assert_eq!(
            watch.changed().unwrap(),
            Changed::default(),
            "nothing happened yet"
        );
        let mut nl = Netlink::in_netns(&node).unwrap();
        nl.create_veth("eth0", "eth0", &other, 1500).unwrap();
        assert_ne!(
            watch.changed().unwrap(),
            Changed::default(),
            "a link appeared"
        );
        assert_eq!(watch.changed().unwrap(), Changed::default(), "drained");
        let link = nl.link_by_name("eth0").unwrap().unwrap();
        nl.add_address(link.index, "192.0.2.1".parse().unwrap(), 24, false)
            .unwrap();
        nl.set_link_up(link.index).unwrap();
        assert_ne!(
            watch.changed().unwrap(),
            Changed::default(),
            "an address (and its routes)"
        );
        // A route this process adds is its own change, and no one else's.
        let route = crate::netlink::Route {
            gateway: Some("192.0.2.2".parse().unwrap()),
            oif: Some(link.index),
            ..crate::netlink::Route::new("198.51.100.0".parse().unwrap(), 24)
        };
        nl.add_route(&route).unwrap();
        let ours = watch.changed().unwrap();
        assert_eq!((ours.by_us, ours.by_others), (true, false), "{ours:?}");
        // Another program's change (`ip`, run in the node's namespace) is someone else's.
        let status = std::process::Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(["ip", "route", "del", "198.51.100.0/24"])
            .status()
            .expect("nsenter and ip (iproute2) must be installed");
        assert!(status.success(), "ip route del: {status}");
        let theirs = watch.changed().unwrap();
        assert_eq!(
            (theirs.by_us, theirs.by_others),
            (false, true),
            "{theirs:?}"
        );
    }
}

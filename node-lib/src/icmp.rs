//! ICMP echo probes with the Don't-Fragment bit set, at a chosen packet size and optionally
//! out of a chosen device: what the agent's peer checks send over each path pods use
//! (`sinew.vxlan` or the underlay), to tell a peer that is unreachable from one that drops
//! packets of the pod MTU.
//!
//! Raw sockets (`CAP_NET_RAW`): one unbound receiver per family (a socket bound to a device
//! only hears that device, and the answer to a probe sent into the VXLAN device comes back
//! over the underlay), plus one sender per device. Path-MTU discovery is in "probe" mode:
//! the DF bit is set, the kernel's cached path MTU is ignored, and a packet larger than the
//! device's own MTU fails at `sendto` (`EMSGSIZE`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// IPv4 and ICMP header bytes an echo carries besides its payload.
const V4_HEADERS: usize = 20 + 8;
/// IPv6 and ICMPv6 header bytes (no extension headers).
const V6_HEADERS: usize = 40 + 8;

/// One echo to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub dst: IpAddr,
    /// Send out of this device (`SO_BINDTODEVICE`) whatever the routes say.
    pub device: Option<String>,
    /// Source address (the kernel's choice if `None`).
    pub src: Option<IpAddr>,
    /// Size of the IP packet, headers included (what an MTU limits).
    pub size: usize,
}

/// What became of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered(Duration),
    /// Sent, no answer before the deadline.
    Lost,
    /// The local kernel refused to send it (no route, a blackhole, larger than the device).
    NotSent(String),
}

impl Outcome {
    pub fn answered(&self) -> bool {
        matches!(self, Outcome::Answered(_))
    }
}

/// The smallest packet a probe can be.
pub fn min_size(dst: IpAddr) -> usize {
    match dst {
        IpAddr::V4(_) => V4_HEADERS,
        IpAddr::V6(_) => V6_HEADERS,
    }
}

static NEXT_ID: AtomicU16 = AtomicU16::new(0);

/// Sends every probe at once and waits (up to `timeout`) for their answers.
pub fn echo(probes: &[Probe], timeout: Duration) -> io::Result<Vec<Outcome>> {
    if probes.len() > usize::from(u16::MAX) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many probes in one batch",
        ));
    }
    let id = (std::process::id() as u16) ^ NEXT_ID.fetch_add(0x9e37, Ordering::Relaxed);
    let mut outcomes = vec![Outcome::Lost; probes.len()];
    let mut sent_at = vec![None; probes.len()];
    let mut receivers = Vec::new();
    for v6 in [false, true] {
        let mine: Vec<usize> = (0..probes.len())
            .filter(|&i| probes[i].dst.is_ipv6() == v6)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let receiver = raw_socket(v6)?;
        type Sender = ((Option<String>, Option<IpAddr>), OwnedFd);
        let mut senders: Vec<Sender> = Vec::new();
        for &i in &mine {
            let probe = &probes[i];
            let key = (probe.device.clone(), probe.src);
            if !senders.iter().any(|(k, _)| *k == key) {
                let fd = raw_socket(v6)?;
                set_probe_mode(&fd, v6)?;
                if let Some(dev) = &probe.device {
                    bind_device(&fd, dev)?;
                }
                if let Some(src) = probe.src {
                    bind_source(&fd, src)?;
                }
                senders.push((key.clone(), fd));
            }
            let Some((_, fd)) = senders.iter().find(|(k, _)| *k == key) else {
                continue;
            };
            let packet = echo_request(v6, id, i as u16, probe.size.saturating_sub(headers(v6)));
            match send_to(fd, &packet, probe.dst) {
                Ok(()) => sent_at[i] = Some(Instant::now()),
                Err(e) => outcomes[i] = Outcome::NotSent(e.to_string()),
            }
        }
        receivers.push((v6, receiver));
    }
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    let waiting = |sent_at: &[Option<Instant>], outcomes: &[Outcome]| {
        sent_at
            .iter()
            .zip(outcomes)
            .any(|(s, o)| s.is_some() && *o == Outcome::Lost)
    };
    while waiting(&sent_at, &outcomes) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut fds: Vec<libc::pollfd> = receivers
            .iter()
            .map(|(_, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a live, correctly sized array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (k, pfd) in fds.iter().enumerate() {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            let (v6, fd) = &receivers[k];
            while let Some((len, from)) = recv_from(fd, &mut buf)? {
                let Some(seq) = parse_reply(*v6, &buf[..len], id) else {
                    continue;
                };
                let i = usize::from(seq);
                if i < probes.len()
                    && probes[i].dst == from
                    && let Some(at) = sent_at[i]
                    && outcomes[i] == Outcome::Lost
                {
                    outcomes[i] = Outcome::Answered(at.elapsed());
                }
            }
        }
    }
    Ok(outcomes)
}

fn headers(v6: bool) -> usize {
    if v6 { V6_HEADERS } else { V4_HEADERS }
}

fn last_error<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn raw_socket(v6: bool) -> io::Result<OwnedFd> {
    let (domain, protocol) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return last_error("opening a raw ICMP socket (needs CAP_NET_RAW)");
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return last_error("setsockopt");
    }
    Ok(())
}

/// DF set, the cached path MTU ignored, oversize packets refused locally.
fn set_probe_mode(fd: &OwnedFd, v6: bool) -> io::Result<()> {
    if v6 {
        set_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        set_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    }
}

fn bind_device(fd: &OwnedFd, device: &str) -> io::Result<()> {
    // SAFETY: the option value is the device name's bytes, of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            device.as_ptr().cast(),
            device.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return last_error(&format!("binding a probe socket to {device}"));
    }
    Ok(())
}

fn bind_source(fd: &OwnedFd, src: IpAddr) -> io::Result<()> {
    let (addr, len) = sockaddr(src);
    // SAFETY: the address is live and of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc != 0 {
        return last_error(&format!("binding a probe socket to {src}"));
    }
    Ok(())
}

/// `ip` as a socket address (port 0).
fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sa = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: as above.
            let sa = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request; for ICMPv6 the kernel fills in the checksum (it covers a pseudo-header).
fn echo_request(v6: bool, id: u16, seq: u16, payload: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + payload);
    p.push(if v6 { 128 } else { 8 });
    p.push(0);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..payload).map(|i| (i % 251) as u8));
    if !v6 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The sequence number of an echo reply carrying `id`, if `packet` is one. IPv4 raw sockets
/// deliver the IP header too; IPv6 ones only the ICMPv6 message.
fn parse_reply(v6: bool, packet: &[u8], id: u16) -> Option<u16> {
    let icmp = if v6 {
        packet
    } else {
        let ihl = usize::from(*packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    };
    let want = if v6 { 129 } else { 0 };
    if icmp.len() < 8 || icmp[0] != want || icmp[1] != 0 {
        return None;
    }
    (u16::from_be_bytes([icmp[4], icmp[5]]) == id).then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn send_to(fd: &OwnedFd, packet: &[u8], dst: IpAddr) -> io::Result<()> {
    let (addr, len) = sockaddr(dst);
    // SAFETY: buffer and address are live and of the sizes passed.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram and its source, or `None` when nothing is queued.
fn recv_from(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<(usize, IpAddr)>> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: buffer and address are live and of the sizes passed.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    let addr = match i32::from(from.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into the storage.
            let sa =
                unsafe { &*(&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            IpAddr::V4(Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6) into the storage.
            let sa =
                unsafe { &*(&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr))
        }
        _ => return Ok(Some((0, IpAddr::V4(Ipv4Addr::UNSPECIFIED)))),
    };
    Ok(Some((n as usize, addr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_asked_size_and_a_valid_checksum() {
        let p = echo_request(false, 0x1234, 7, 1450 - V4_HEADERS);
        assert_eq!(p.len() + 20, 1450);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(echo_request(true, 1, 2, 0)[0], 128);
    }

    #[test]
    fn replies_are_matched_by_id_and_type() {
        // An IPv4 reply: 20-byte header, then type 0.
        let mut v4 = vec![0x45u8; 1];
        v4.extend([0u8; 19]);
        v4.extend([0, 0, 0, 0, 0xab, 0xcd, 0, 3]);
        assert_eq!(parse_reply(false, &v4, 0xabcd), Some(3));
        assert_eq!(parse_reply(false, &v4, 0xabce), None, "another prober's id");
        v4[20] = 8;
        assert_eq!(
            parse_reply(false, &v4, 0xabcd),
            None,
            "a request is no reply"
        );
        let v6 = [129u8, 0, 0, 0, 0xab, 0xcd, 0, 9];
        assert_eq!(parse_reply(true, &v6, 0xabcd), Some(9));
        assert_eq!(parse_reply(true, &v6[..5], 0xabcd), None, "truncated");
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::netlink::Netlink;
    use crate::netns::test_support::{have_root, new_netns};

    /// Two namespaces on a veth: every size answers until the far end's MTU is lowered, then
    /// packets over it are dropped (what a switch does), and a probe with no route fails at `sendto`.
    #[test]
    fn oversize_probes_are_lost_and_unroutable_ones_refused() {
        let test = "oversize_probes_are_lost_and_unroutable_ones_refused";
        if !have_root(test) {
            return;
        }
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (a, b) = (new_netns(), new_netns());
        let mut nl = Netlink::in_netns(&a).unwrap();
        nl.create_veth("to-b", "eth0", &b, 1500).unwrap();
        let link = nl.link_by_name("to-b").unwrap().unwrap();
        nl.add_address(link.index, ip("192.0.2.1"), 24, false)
            .unwrap();
        nl.set_link_up(link.index).unwrap();
        let mut nlb = Netlink::in_netns(&b).unwrap();
        let eth0 = nlb.link_by_name("eth0").unwrap().unwrap();
        nlb.add_address(eth0.index, ip("192.0.2.2"), 24, false)
            .unwrap();
        nlb.set_link_up(eth0.index).unwrap();
        let probes = |sizes: &[usize], device: Option<&str>| -> Vec<Probe> {
            sizes
                .iter()
                .map(|&size| Probe {
                    dst: ip("192.0.2.2"),
                    device: device.map(str::to_string),
                    src: Some(ip("192.0.2.1")),
                    size,
                })
                .collect()
        };
        let run = |p: Vec<Probe>| {
            a.run_in(move || echo(&p, Duration::from_millis(500)))
                .unwrap()
                .unwrap()
        };

        // The first packets may go while the veth's carrier comes up.
        let start = Instant::now();
        while !run(probes(&[64], None))[0].answered() {
            assert!(start.elapsed() < Duration::from_secs(5), "b never answers");
        }
        let all = run(probes(&[64, 1400, 1500], Some("to-b")));
        assert!(all.iter().all(Outcome::answered), "{all:?}");
        assert_eq!(
            run(probes(&[1501], None)),
            vec![Outcome::NotSent("Message too long (os error 90)".into())],
            "larger than the device: refused locally"
        );

        nlb.set_mtu(eth0.index, 1400).unwrap();
        // (a veth lets a frame through up to a VLAN header over its MTU)
        let lowered = run(probes(&[64, 1400, 1405, 1500], None));
        assert!(
            lowered[0].answered() && lowered[1].answered(),
            "{lowered:?}"
        );
        assert_eq!(
            lowered[2..],
            [Outcome::Lost, Outcome::Lost],
            "dropped on the way"
        );

        let nowhere = vec![Probe {
            dst: ip("198.51.100.1"),
            device: None,
            src: None,
            size: 64,
        }];
        let refused = run(nowhere);
        assert!(
            matches!(&refused[0], Outcome::NotSent(_)),
            "no route: {refused:?}"
        );
    }
}

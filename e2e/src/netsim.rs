//! Simulated hosts for network tests: nodes and pods as network namespaces the test creates
//! (and removes on drop, even when the test fails), commands run inside them, and real TCP
//! traffic between them. Nothing here touches the host's own network namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sinew_node_lib::netlink::Netlink;
use sinew_node_lib::netns::NetNs;

/// A unique, short namespace name for this test process: `snt-<pid>-<tag>-<n>`.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "snt{}-{tag}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Creates an owned namespace with a unique name (removed on drop).
pub fn netns(tag: &str) -> NetNs {
    NetNs::create(&unique_name(tag)).expect("creating a test network namespace")
}

/// Writes a sysctl inside `ns` (`/proc/sys/net` resolves against the writer's namespace).
pub fn sysctl(ns: &NetNs, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ns.run_in(|| std::fs::write(&path, value))
        .expect("entering the namespace")
        .unwrap_or_else(|e| panic!("writing {path}: {e}"));
}

/// A namespace playing a freshly booted node: forwarding off for both families, as the
/// kernel starts (a new namespace would otherwise inherit the host's IPv4 settings). Whatever
/// a node needs beyond that, sinew must do or report.
pub fn node_netns(tag: &str) -> NetNs {
    let ns = netns(tag);
    sysctl(&ns, "net.ipv4.ip_forward", "0");
    sysctl(&ns, "net.ipv6.conf.all.forwarding", "0");
    ns
}

/// Reads a sysctl inside `ns`.
pub fn read_sysctl(ns: &NetNs, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ns.run_in(|| std::fs::read_to_string(&path))
        .expect("entering the namespace")
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .trim()
        .to_string()
}

/// Makes `cmd` run inside `ns`: the child joins the namespace between fork and exec.
pub fn in_netns(cmd: &mut Command, ns: &NetNs) {
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe and `fd` stays open in the parent (and so in the
    // child) until exec, because `ns` outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Adds `addr` (as a host address) to `lo` inside `ns`, giving the namespace an identity.
pub fn add_loopback_address(ns: &NetNs, addr: IpAddr) {
    let mut nl = Netlink::in_netns(ns).expect("netlink in namespace");
    let lo = nl
        .link_by_name("lo")
        .expect("looking up lo")
        .expect("lo exists");
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    nl.add_address(lo.index, addr, prefix, true)
        .expect("adding a loopback address");
}

/// A TCP server inside a namespace that answers every connection with `reply` after reading
/// one line. Stops when dropped (after the next connection attempt or its timeout).
pub struct EchoServer {
    pub addr: SocketAddr,
    handle: Option<JoinHandle<()>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl EchoServer {
    pub fn start(ns: &NetNs, addr: SocketAddr) -> EchoServer {
        let listener = ns
            .run_in(|| TcpListener::bind(addr))
            .expect("entering the namespace")
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("listener address");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 256];
                        let n = s.read(&mut buf).unwrap_or(0);
                        let _ = s.write_all(format!("{peer} ").as_bytes());
                        let _ = s.write_all(&buf[..n]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        EchoServer {
            addr,
            handle: Some(handle),
            stop,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from inside `ns` to `addr`, sends a line and returns the server's reply, which
/// starts with the source address the server saw (so callers can assert "no NAT").
pub fn tcp_exchange(ns: &NetNs, addr: SocketAddr) -> Result<String, String> {
    ns.run_in(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"hello\n").map_err(|e| e.to_string())?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        Ok(reply)
    })
    .map_err(|e| e.to_string())?
}

/// A long-lived TCP connection from one namespace to a server in another, carrying a
/// continuous stream of bytes; used to prove that established connections survive changes.
pub struct TcpStreamProbe {
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpStreamProbe {
    /// Listens on `server_addr` in `server`, connects from `client`, and keeps sending.
    pub fn start(server: &NetNs, client: &NetNs, server_addr: SocketAddr) -> TcpStreamProbe {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::{Arc, Mutex};
        let listener = server
            .run_in(|| TcpListener::bind(server_addr))
            .expect("entering the namespace")
            .expect("binding the stream server");
        let addr = listener.local_addr().expect("address");
        let conn = client
            .run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
            .expect("entering the namespace")
            .expect("connecting the stream");
        let (mut inbound, _) = listener.accept().expect("accepting the stream");
        let received = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, f1, s1) = (received.clone(), failed.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let _ = inbound.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = vec![0u8; 64 * 1024];
            while !s1.load(Ordering::SeqCst) {
                match inbound.read(&mut buf) {
                    Ok(0) => {
                        if !s1.load(Ordering::SeqCst) {
                            *f1.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some("the stream was closed".into());
                        }
                        return;
                    }
                    Ok(n) => {
                        r.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) => {
                        *f1.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("receiving: {e}"));
                        return;
                    }
                }
            }
        });
        let (f2, s2) = (failed.clone(), stop.clone());
        let mut out = conn;
        let writer = std::thread::spawn(move || {
            let _ = out.set_write_timeout(Some(Duration::from_secs(10)));
            let chunk = vec![0x5au8; 1400];
            while !s2.load(Ordering::SeqCst) {
                if let Err(e) = out.write_all(&chunk) {
                    *f2.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("sending: {e}"));
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = out.shutdown(std::net::Shutdown::Both);
        });
        TcpStreamProbe {
            received,
            failed,
            stop,
            threads: vec![reader, writer],
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// The first failure of the connection, if any.
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `more` further bytes arrived, or fails with the reason.
    pub fn expect_progress(&self, more: u64, within: Duration) -> Result<(), String> {
        let target = self.received() + more;
        let deadline = std::time::Instant::now() + within;
        while self.received() < target {
            if let Some(f) = self.failure() {
                return Err(f);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("the stream stalled at {} bytes", self.received()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for TcpStreamProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends `bytes` over a fresh connection from `client` to a sink in `server`, in large
/// segments (exercises the path MTU); returns how many bytes the sink received.
pub fn bulk_transfer(
    server: &NetNs,
    client: &NetNs,
    server_addr: SocketAddr,
    bytes: usize,
) -> Result<usize, String> {
    let listener = server
        .run_in(|| TcpListener::bind(server_addr))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let sink = std::thread::spawn(move || -> Result<usize, String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .map_err(|e| e.to_string())?;
        let mut total = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) => return Err(format!("after {total} bytes: {e}")),
            }
        }
    });
    client
        .run_in(|| -> Result<(), String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            s.set_write_timeout(Some(Duration::from_secs(15)))
                .map_err(|e| e.to_string())?;
            let chunk = vec![0xa5u8; 64 * 1024];
            let mut sent = 0;
            while sent < bytes {
                let n = chunk.len().min(bytes - sent);
                s.write_all(&chunk[..n])
                    .map_err(|e| format!("sending after {sent} bytes: {e}"))?;
                sent += n;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())??;
    sink.join()
        .map_err(|_| "sink thread panicked".to_string())?
}

/// Joins `a` and `b` with a plain veth pair (`veth0` on each side), addressed `a_ip` and
/// `b_ip` with `prefix` and brought up: the shortest path two namespaces can have, as a
/// baseline for what a CNI adds on top.
pub fn veth_pair(
    a: &NetNs,
    b: &NetNs,
    (a_ip, b_ip): (IpAddr, IpAddr),
    prefix: u8,
) -> Result<(), String> {
    let mut nl_a = Netlink::in_netns(a).map_err(|e| format!("netlink in {:?}: {e}", a.path()))?;
    nl_a.create_veth("veth0", "veth0", b, 0)
        .map_err(|e| format!("creating the veth pair: {e}"))?;
    let mut nl_b = Netlink::in_netns(b).map_err(|e| format!("netlink in {:?}: {e}", b.path()))?;
    for (nl, ip) in [(&mut nl_a, a_ip), (&mut nl_b, b_ip)] {
        let link = nl
            .link_by_name("veth0")
            .map_err(|e| format!("looking up veth0: {e}"))?
            .ok_or("veth0 vanished after creation")?;
        nl.add_address(link.index, ip, prefix, true)
            .map_err(|e| format!("adding {ip}/{prefix} to veth0: {e}"))?;
        nl.set_link_up(link.index)
            .map_err(|e| format!("bringing veth0 up: {e}"))?;
    }
    Ok(())
}

/// A VXLAN datagram's payload (RFC 7348 header, inner Ethernet, IPv4 and UDP) carrying
/// `payload` from `src` to `dst:port` inside VNI `vni`, addressed to the VTEP MAC `dst_mac`:
/// what a peer's kernel would send, built by hand so a test can send it from anywhere.
pub fn vxlan_udp_frame(
    vni: u32,
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0x08, 0, 0, 0];
    f.extend_from_slice(&(vni << 8).to_be_bytes());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[0x02, 0, 0, 0xbe, 0xef, 0x01]);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

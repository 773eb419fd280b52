//! Simulated hosts for network tests: nodes and pods as network namespaces the test creates
//! (and removes on drop, even when the test fails), commands run inside them, and real TCP
//! traffic between them. Nothing here touches the host's own network namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sinew_cni::netlink::Netlink;
use sinew_cni::netns::NetNs;

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

/// A namespace playing a node: forwarding on for both families.
pub fn node_netns(tag: &str) -> NetNs {
    let ns = netns(tag);
    sysctl(&ns, "net.ipv4.ip_forward", "1");
    sysctl(&ns, "net.ipv6.conf.all.forwarding", "1");
    ns
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

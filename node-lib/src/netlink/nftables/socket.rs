//! The `NETLINK_NETFILTER` socket: sending a batch or a request and reading the kernel's
//! acknowledgements and replies. No encoding of objects here ([`super::encode`]).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::encode::{Batch, nft_type};
use super::uapi::{NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN};
use super::{NftError, Result};
use crate::netns::NetNs;

/// How long to wait for the kernel's acknowledgements (it answers while handling the send,
/// so this only guards against a kernel that never answers).
const RECV_TIMEOUT_SECS: u8 = 10;
const RECV_BUFFER_LEN: usize = 64 * 1024;

/// A blocking `NETLINK_NETFILTER` socket bound to one network namespace.
#[derive(Debug)]
pub struct Nftables {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nftables {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn new() -> Result<Nftables> {
        let io_err = |syscall| move |source| NftError::Io { syscall, source };
        let socket = crate::netlink::connected(NETLINK_NETFILTER)
            .map_err(|(syscall, source)| NftError::Io { syscall, source })?;
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS.into(),
            tv_usec: 0,
        };
        setsockopt(&socket, libc::SO_RCVTIMEO, &timeout).map_err(io_err("setsockopt"))?;
        // Sequence numbers only need to differ from another socket's in-flight ones.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        Ok(Nftables {
            socket,
            seq,
            buf: vec![0; RECV_BUFFER_LEN],
        })
    }

    /// Opens a socket inside `ns` (on a short-lived thread). The socket keeps talking
    /// to `ns` from whatever thread uses it afterwards.
    pub fn in_netns(ns: &NetNs) -> Result<Nftables> {
        ns.run_in(Nftables::new)?
    }

    /// A new batch, starting after the last sequence number used.
    pub(super) fn batch(&mut self) -> Batch {
        self.seq = self.seq.wrapping_add(1);
        Batch::new(self.seq)
    }

    /// The next sequence number for a request outside a batch.
    pub(super) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one `GET` request (`seq`) and returns the payload of the object the kernel
    /// answers with (a message of type `reply`); `None` when it says there is none (`ENOENT`).
    pub(super) fn get_object(
        &mut self,
        op: &str,
        request: &[u8],
        seq: u32,
        reply: u16,
    ) -> Result<Option<Vec<u8>>> {
        self.send(request)?;
        let mut found = None;
        loop {
            let len = self.recv(op)?;
            for m in Messages::new(&self.buf[..len]) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR => {
                        return match m.error(op) {
                            None => Ok(found),
                            Some(e) if e.is_not_found() => Ok(None),
                            Some(e) => Err(e),
                        };
                    }
                    NLMSG_DONE => return Ok(found),
                    t if t == nft_type(reply) => found = Some(m.payload.to_vec()),
                    _ => {}
                }
            }
        }
    }

    /// Sends the batch and reads an acknowledgement for each of its messages.
    pub(super) fn commit(&mut self, batch: Batch) -> Result<()> {
        let (bytes, ops, begin_seq, end_seq) = batch.finish();
        self.seq = end_seq;
        self.ensure_sndbuf(bytes.len())?;
        self.send(&bytes)?;
        let mut pending = ops.clone();
        let mut errors: BTreeMap<u32, NftError> = BTreeMap::new();
        let whole = "commit nftables batch".to_string();
        while !pending.is_empty() {
            let len = match self.recv(&whole) {
                Ok(len) => len,
                // Replies stopped: report what the kernel refused, if anything.
                Err(e) if !errors.is_empty() => {
                    tracing::debug!(error = %e, "no further nftables acknowledgements");
                    break;
                }
                Err(e) => return Err(e),
            };
            for m in Messages::new(&self.buf[..len]) {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                if m.seq == begin_seq || m.seq == end_seq {
                    // The batch as a whole was refused (e.g. no nf_tables in this kernel).
                    if let Some(e) = m.error(&whole) {
                        return Err(e);
                    }
                    continue;
                }
                if let Some(op) = pending.remove(&m.seq)
                    && let Some(e) = m.error(&op)
                {
                    errors.insert(m.seq, e);
                }
            }
        }
        // The first refused message explains the others (which fail because of it).
        match errors.into_values().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A batch is one datagram: make sure the socket may send it.
    fn ensure_sndbuf(&self, len: usize) -> Result<()> {
        let want = len.saturating_add(4096);
        let fd = self.socket.as_raw_fd();
        let mut current: libc::c_int = 0;
        let mut optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `current` and `optlen` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut current as *mut libc::c_int).cast(),
                &mut optlen,
            )
        };
        if rc == 0 && usize::try_from(current).is_ok_and(|c| c >= want) {
            return Ok(());
        }
        let value = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
        // SO_SNDBUFFORCE ignores wmem_max (needs CAP_NET_ADMIN, which programming
        // nftables needs anyway); SO_SNDBUF is the fallback.
        setsockopt(&self.socket, libc::SO_SNDBUFFORCE, &value)
            .or_else(|_| setsockopt(&self.socket, libc::SO_SNDBUF, &value))
            .map_err(|source| NftError::Io {
                syscall: "setsockopt",
                source,
            })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        loop {
            match self.socket.send(bytes, 0) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    let message = format!("sent {n} of {} bytes", bytes.len());
                    return Err(NftError::Io {
                        syscall: "send",
                        source: io::Error::other(message),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(NftError::Io {
                        syscall: "send",
                        source,
                    });
                }
            }
        }
    }

    /// Receives one datagram into `self.buf`, growing it first if the datagram is larger.
    fn recv(&mut self, op: &str) -> Result<usize> {
        let pending = self.recv_once(op, libc::MSG_PEEK | libc::MSG_TRUNC, true)?;
        if pending > self.buf.len() {
            self.buf.resize(pending, 0);
        }
        self.recv_once(op, 0, false)
    }

    fn recv_once(&mut self, op: &str, flags: libc::c_int, peek: bool) -> Result<usize> {
        loop {
            let result = if peek {
                self.socket.recv(&mut &mut [0u8; 0][..], flags)
            } else {
                self.socket.recv(&mut &mut self.buf[..], flags)
            };
            match result {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NftError::Protocol {
                        op: op.to_string(),
                        message: format!("no answer from the kernel within {RECV_TIMEOUT_SECS} s"),
                    });
                }
                Err(source) => {
                    return Err(NftError::Io {
                        syscall: "recv",
                        source,
                    });
                }
            }
        }
    }
}

/// `setsockopt(SOL_SOCKET, name, value)` on a netlink socket (also the nflog listener's).
pub(crate) fn setsockopt<T>(socket: &Socket, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `value` points to a live `T` of `len` bytes for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ----- decoding replies -----

/// One netlink message of a datagram.
pub(super) struct Message<'a> {
    pub(super) ty: u16,
    pub(super) flags: u16,
    pub(super) seq: u32,
    pub(super) payload: &'a [u8],
}

impl Message<'_> {
    /// For an `NLMSG_ERROR`: `None` for an acknowledgement, the error otherwise.
    pub(super) fn error(&self, op: &str) -> Option<NftError> {
        let code = i32::from_ne_bytes(self.payload.get(..4)?.try_into().ok()?);
        if code == 0 {
            return None;
        }
        let ext =
            crate::netlink::error_ext_ack(self.flags, self.payload.get(4..).unwrap_or_default());
        let errno = code.checked_abs().unwrap_or(i32::MAX);
        let text = io::Error::from_raw_os_error(errno).to_string();
        let text = text
            .trim_end_matches(&format!(" (os error {errno})"))
            .to_string();
        let message = match ext {
            Some(ext) if !ext.is_empty() => format!("{text}: {ext}"),
            _ => text,
        };
        Some(NftError::Kernel {
            op: op.to_string(),
            errno,
            message,
        })
    }
}

/// Iterates over the messages of a datagram, stopping at the first malformed header.
pub(super) struct Messages<'a> {
    data: &'a [u8],
}

impl<'a> Messages<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Messages { data }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let h = self.data.get(..NLMSG_HDRLEN)?;
        let len = u32::from_ne_bytes(h[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > self.data.len() {
            self.data = &[];
            return None;
        }
        let m = Message {
            ty: u16::from_ne_bytes(h[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(h[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(h[8..12].try_into().ok()?),
            payload: &self.data[NLMSG_HDRLEN..len],
        };
        self.data = self
            .data
            .get(crate::netlink::align4(len)..)
            .unwrap_or_default();
        Some(m)
    }
}

//! Node-local IPAM: which address of this node's blocks is held by which attachment.
//!
//! One JSON file (`<stateDir>/ipam/store.json`) holds every slot and attachment of the node.
//! Every change happens under an exclusive `flock` and is written with
//! [`atomic_write`](crate::fsutil::atomic_write), so a kill -9 at any instant leaves either the
//! state before the change or the state after it, and many concurrent plugin invocations
//! serialise on the lock. The allocator logic ([`IpamState`]) is pure and knows nothing about
//! files.
//!
//! Each address slot carries a generation that is bumped whenever the address is handed out;
//! a release names the generation it means, so a stale release can never free an address that
//! was given to someone else in between.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sinew_core::{Cidr, Family, PoolMode};

use crate::fsutil::{FileLock, atomic_replace, atomic_write};
use crate::hostport::PortMapping;
use sinew_core::node::PoolState;

const STORE_VERSION: u32 = 1;

/// Identity of one attachment: container ID and interface name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

impl AttachmentKey {
    pub fn new(container_id: &str, ifname: &str) -> Self {
        AttachmentKey {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        }
    }

    fn encoded(&self) -> String {
        format!("{}/{}", self.container_id, self.ifname)
    }

    fn decode(s: &str) -> Option<AttachmentKey> {
        s.split_once('/').map(|(c, i)| AttachmentKey::new(c, i))
    }
}

/// An address slot ever used on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    pub generation: u64,
    /// Encoded attachment key of the holder, if the address is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// One address held by an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldAddress {
    pub ip: IpAddr,
    pub pool: String,
    pub block: String,
    pub generation: u64,
    pub mode: PoolMode,
}

/// Everything DEL and CHECK need, recorded at ADD time so they never depend on today's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub host_veth: String,
    pub mtu: u32,
    pub addresses: Vec<HeldAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The CNI network (`name` of the configuration) that made it: GC of one network never
    /// touches another's attachments (Multus can attach a pod to two sinew networks).
    /// `None` in records written before it was kept: those count for every network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The pod's host ports (`runtimeConfig.portMappings` at ADD), so DEL and CHECK remove
    /// and verify what ADD mapped, and the agent declares them with its table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
}

impl Attachment {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey::new(&self.container_id, &self.ifname)
    }
}

/// The persisted IPAM state of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamState {
    #[serde(default)]
    pub version: u32,
    /// Every address ever handed out here, by address.
    #[serde(default)]
    pub slots: BTreeMap<IpAddr, Slot>,
    /// Live attachments by `containerID/ifname`.
    #[serde(default)]
    pub attachments: BTreeMap<String, Attachment>,
    /// Last address handed out per pool: allocation continues after it, so a just-released
    /// address is not reused at once.
    #[serde(default)]
    pub cursors: BTreeMap<String, IpAddr>,
    /// Blocks the agent is giving back: never allocated from, even if an older `node.json`
    /// still lists them. Changed only under the store lock, so a release cannot race an ADD.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retired: BTreeSet<String>,
    /// The node's own addresses on its VXLAN device, at most one per family, from one of its
    /// blocks: the source of the node's traffic into the tunnel, so that replies come back
    /// through it. Never handed to a pod; the block holding one is not empty. Chosen by the
    /// agent under the store's lock, so no ADD can take the same address meanwhile.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tunnel: BTreeSet<IpAddr>,
}

/// Why no address could be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("pool {pool} has no free address in the blocks of this node")]
    Exhausted { pool: String },
    #[error("pool {pool} has an invalid CIDR or block {value:?}")]
    BadPool { pool: String, value: String },
}

fn is_unusable(pool_cidr: &Cidr, ip: IpAddr) -> bool {
    // The pool's own network and broadcast addresses are legal /32s, but enough software
    // mistreats them that they are never handed out.
    pool_cidr.family() == Family::V4 && (ip == pool_cidr.network() || ip == pool_cidr.last())
}

impl IpamState {
    pub fn attachment(&self, key: &AttachmentKey) -> Option<&Attachment> {
        self.attachments.get(&key.encoded())
    }

    /// Hands out one free address of `pool` to `key`, scanning the node's blocks after the
    /// pool's cursor and wrapping around.
    pub fn allocate(
        &mut self,
        pool: &PoolState,
        key: &AttachmentKey,
    ) -> Result<HeldAddress, AllocError> {
        let bad = |value: &str| AllocError::BadPool {
            pool: pool.name.clone(),
            value: value.to_string(),
        };
        let pool_cidr: Cidr = pool.cidr.parse().map_err(|_| bad(&pool.cidr))?;
        let reserved: Vec<Cidr> = pool
            .reserved
            .iter()
            .map(|r| sinew_core::cidr::parse_ip_or_cidr(r).map_err(|_| bad(r)))
            .collect::<Result<_, _>>()?;
        let mut candidates: Vec<(Cidr, IpAddr)> = Vec::new();
        for block in pool.blocks.iter().filter(|b| !self.retired.contains(*b)) {
            let cidr: Cidr = block.parse().map_err(|_| bad(block))?;
            if !pool_cidr.contains_cidr(&cidr) {
                return Err(bad(block));
            }
            let size = cidr.size().min(1 << 16);
            candidates.extend((0..size).filter_map(|i| cidr.nth(i)).map(|ip| (cidr, ip)));
        }
        let start = self
            .cursors
            .get(&pool.name)
            .and_then(|c| candidates.iter().position(|(_, ip)| ip == c))
            .map_or(0, |i| i + 1);
        let n = candidates.len();
        let chosen = (0..n).map(|i| candidates[(start + i) % n]).find(|(_, ip)| {
            !is_unusable(&pool_cidr, *ip)
                && !reserved.iter().any(|r| r.contains(*ip))
                && !self.tunnel.contains(ip)
                && self.slots.get(ip).is_none_or(|s| s.holder.is_none())
        });
        let (block, ip) = chosen.ok_or_else(|| AllocError::Exhausted {
            pool: pool.name.clone(),
        })?;
        let slot = self.slots.entry(ip).or_default();
        slot.generation += 1;
        slot.holder = Some(key.encoded());
        self.cursors.insert(pool.name.clone(), ip);
        Ok(HeldAddress {
            ip,
            pool: pool.name.clone(),
            block: block.to_string(),
            generation: slot.generation,
            mode: pool.mode,
        })
    }

    /// Records a new attachment (its addresses must have been allocated to its key).
    pub fn insert_attachment(&mut self, attachment: Attachment) {
        self.attachments
            .insert(attachment.key().encoded(), attachment);
    }

    /// Frees `ip` only if it is still held at `generation` by `key`. Returns whether it did.
    pub fn release_ip(&mut self, ip: IpAddr, generation: u64, key: &AttachmentKey) -> bool {
        match self.slots.get_mut(&ip) {
            Some(slot)
                if slot.generation == generation
                    && slot.holder.as_deref() == Some(key.encoded().as_str()) =>
            {
                slot.holder = None;
                true
            }
            _ => false,
        }
    }

    /// Removes an attachment and frees its addresses (generation-checked).
    pub fn remove_attachment(&mut self, key: &AttachmentKey) -> Option<Attachment> {
        let attachment = self.attachments.remove(&key.encoded())?;
        for a in &attachment.addresses {
            self.release_ip(a.ip, a.generation, key);
        }
        Some(attachment)
    }

    /// Frees every slot whose holder has no attachment record (left by a crash between
    /// allocation and recording), returning the addresses freed.
    pub fn free_orphaned_slots(&mut self) -> Vec<IpAddr> {
        let mut freed = Vec::new();
        for (ip, slot) in self.slots.iter_mut() {
            if let Some(holder) = &slot.holder
                && !self.attachments.contains_key(holder)
            {
                slot.holder = None;
                freed.push(*ip);
            }
        }
        freed
    }

    /// Attachments whose key is not in `valid` (for GC).
    pub fn stale_attachments(
        &self,
        network: &str,
        valid: &BTreeSet<AttachmentKey>,
    ) -> Vec<AttachmentKey> {
        self.attachments
            .iter()
            .filter(|(_, a)| a.network.as_deref().is_none_or(|n| n == network))
            .filter_map(|(k, _)| AttachmentKey::decode(k))
            .filter(|k| !valid.contains(k))
            .collect()
    }

    /// Forgets retired blocks that `node.json` no longer lists (`keep` holds those it does), and
    /// the free slots inside them: the block belongs to this node no more, so neither its
    /// retirement nor its slots' generations can matter here again (a block claimed anew
    /// starts with no release request on it). Keeps the store as small as the blocks owned.
    pub fn forget_retired_except(&mut self, keep: &BTreeSet<String>) {
        let gone: Vec<Cidr> = self
            .retired
            .iter()
            .filter(|r| !keep.contains(*r))
            .filter_map(|r| r.parse().ok())
            .collect();
        self.retired.retain(|r| keep.contains(r));
        self.slots
            .retain(|ip, slot| slot.holder.is_some() || !gone.iter().any(|b| b.contains(*ip)));
    }

    /// Marks `block` retired if no address in it is held; returns whether it did. After this,
    /// no ADD can allocate from it, so its `IPBlock` can be released.
    pub fn retire_if_empty(&mut self, block: &Cidr) -> bool {
        let held = self
            .slots
            .iter()
            .any(|(ip, s)| s.holder.is_some() && block.contains(*ip))
            || self.tunnel.iter().any(|ip| block.contains(*ip));
        if !held {
            self.retired.insert(block.to_string());
        }
        !held
    }

    /// Whether `ip` may become the node's tunnel address: not held by a pod, not a pool's
    /// edge (see [`IpamState::allocate`]).
    pub fn free_for_node(&self, pool_cidr: &Cidr, ip: IpAddr) -> bool {
        !is_unusable(pool_cidr, ip) && self.slots.get(&ip).is_none_or(|s| s.holder.is_none())
    }

    /// Number of addresses currently held.
    pub fn held(&self) -> usize {
        self.slots.values().filter(|s| s.holder.is_some()).count()
    }
}

/// The on-disk store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    durable: bool,
}

impl Store {
    /// The store of `state_dir`; every change is durable when [`Store::update`] returns.
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join("ipam"),
            durable: true,
        }
    }

    /// The same store with changes atomic for every process of this boot but not flushed to
    /// the disk (see [`atomic_replace`]): what the plugin uses, so that no ADD or DEL waits for
    /// the disk. A kill -9 at any instant still leaves the state before or after a change. A
    /// power loss may bring back an older store, or a torn one on some file systems; neither
    /// matters to the pods it recorded, which died with the boot. ADD waits for the agent's
    /// first pass in a new boot, and that pass repairs a torn store first
    /// ([`Store::set_aside_if_torn`]). The agent's own changes (block retirement) stay durable.
    pub fn unflushed(mut self) -> Store {
        self.durable = false;
        self
    }

    /// Moves an unreadable store file aside (`store.json.torn-<unix seconds>`) so that the
    /// node starts from an empty store; returns where it went, or `None` when the store reads
    /// fine or does not exist. Only for a node that has not served pods in this boot: the
    /// records of a previous boot name pods that are gone (see [`Store::unflushed`]).
    pub fn set_aside_if_torn(&self) -> io::Result<Option<PathBuf>> {
        fs::create_dir_all(&self.dir)?;
        let _lock = FileLock::acquire(&self.dir.join("lock"))?;
        match self.snapshot() {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let aside = self.dir.join(format!("store.json.torn-{secs}"));
                fs::rename(self.path(), &aside)?;
                Ok(Some(aside))
            }
            Err(e) => Err(e),
            Ok(_) => Ok(None),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("store.json")
    }

    /// Reads the current state without locking (a consistent snapshot: the file is only ever
    /// replaced whole).
    pub fn snapshot(&self) -> io::Result<IpamState> {
        self.parse(self.read()?.as_deref())
    }

    /// The store file's bytes; `None` if there is none yet.
    fn read(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path()) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn parse(&self, bytes: Option<&[u8]>) -> io::Result<IpamState> {
        match bytes {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is corrupt: {e}", self.path().display()),
                )
            }),
            None => Ok(IpamState {
                version: STORE_VERSION,
                ..IpamState::default()
            }),
        }
    }

    /// Runs `f` on the state under the store lock and persists the result if it changed.
    pub fn update<R>(&self, f: impl FnOnce(&mut IpamState) -> R) -> io::Result<R> {
        fs::create_dir_all(&self.dir)?;
        let _lock = FileLock::acquire(&self.dir.join("lock"))?;
        self.update_locked(f)
    }

    /// Runs `f` on the state while holding the store lock, changing nothing: no ADD or DEL
    /// can record or drop an attachment until `f` returns. The agent replaces its nftables
    /// table this way, so the host ports it declares are exactly the recorded ones.
    pub fn read_locked<R>(&self, f: impl FnOnce(&IpamState) -> R) -> io::Result<R> {
        fs::create_dir_all(&self.dir)?;
        let _lock = FileLock::acquire(&self.dir.join("lock"))?;
        Ok(f(&self.snapshot()?))
    }

    fn update_locked<R>(&self, f: impl FnOnce(&mut IpamState) -> R) -> io::Result<R> {
        let before = self.snapshot()?;
        let mut state = before.clone();
        let r = f(&mut state);
        if state != before {
            state.version = STORE_VERSION;
            let bytes = serde_json::to_vec(&state).map_err(io::Error::other)?;
            if self.durable {
                atomic_write(&self.path(), &bytes)?;
            } else {
                atomic_replace(&self.path(), &bytes)?;
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(blocks: &[&str], reserved: &[&str]) -> PoolState {
        PoolState {
            name: "p".into(),
            cidr: "10.0.0.0/16".into(),
            mode: PoolMode::Vxlan,
            mtu: 1450,
            disabled: false,
            reserved: reserved.iter().map(|s| s.to_string()).collect(),
            blocks: blocks.iter().map(|s| s.to_string()).collect(),
            exhausted: false,
        }
    }

    fn key(i: usize) -> AttachmentKey {
        AttachmentKey::new(&format!("c{i}"), "eth0")
    }

    #[test]
    fn skips_reserved_and_pool_edges_and_exhausts() {
        let p = pool(&["10.0.0.0/30"], &["10.0.0.2"]);
        let mut s = IpamState::default();
        let a = s.allocate(&p, &key(1)).unwrap();
        assert_eq!(
            a.ip.to_string(),
            "10.0.0.1",
            "the pool's network address is skipped"
        );
        let b = s.allocate(&p, &key(2)).unwrap();
        assert_eq!(b.ip.to_string(), "10.0.0.3", "reserved address skipped");
        assert_eq!(
            s.allocate(&p, &key(3)),
            Err(AllocError::Exhausted { pool: "p".into() })
        );
    }

    /// The node's tunnel address is never handed to a pod, and keeps its block from being
    /// retired.
    #[test]
    fn the_tunnel_address_is_not_allocated_and_keeps_its_block() {
        let p = pool(&["10.0.0.4/30"], &[]);
        let mut s = IpamState::default();
        s.tunnel.insert("10.0.0.4".parse().unwrap());
        let got: Vec<HeldAddress> = (1..=3).map(|i| s.allocate(&p, &key(i)).unwrap()).collect();
        let ips: Vec<String> = got.iter().map(|h| h.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.5", "10.0.0.6", "10.0.0.7"]);
        assert!(s.allocate(&p, &key(4)).is_err());
        for (i, h) in (1..=3).zip(&got) {
            assert!(s.release_ip(h.ip, h.generation, &key(i)));
        }
        assert!(!s.retire_if_empty(&"10.0.0.4/30".parse().unwrap()));
        s.tunnel.clear();
        assert!(s.retire_if_empty(&"10.0.0.4/30".parse().unwrap()));
    }

    #[test]
    fn released_addresses_are_not_reused_at_once() {
        let p = pool(&["10.0.1.0/29"], &[]);
        let mut s = IpamState::default();
        let first = s.allocate(&p, &key(1)).unwrap();
        assert!(s.release_ip(first.ip, first.generation, &key(1)));
        let second = s.allocate(&p, &key(2)).unwrap();
        assert_ne!(first.ip, second.ip);
    }

    #[test]
    fn stale_release_cannot_free_a_reused_address() {
        let p = pool(&["10.0.1.0/31"], &[]);
        let mut s = IpamState::default();
        let a = s.allocate(&p, &key(1)).unwrap();
        let _other = s.allocate(&p, &key(9)).unwrap();
        assert!(s.release_ip(a.ip, a.generation, &key(1)));
        // The block wraps around: the address goes to key 2 with a new generation.
        let b = s.allocate(&p, &key(2)).unwrap();
        assert_eq!(a.ip, b.ip);
        assert!(b.generation > a.generation);
        assert!(
            !s.release_ip(a.ip, a.generation, &key(1)),
            "stale release freed a reused address"
        );
        assert!(
            !s.release_ip(b.ip, b.generation, &key(1)),
            "release by the wrong holder"
        );
        assert!(s.release_ip(b.ip, b.generation, &key(2)));
    }

    #[test]
    fn retired_blocks_are_never_allocated_from() {
        let p = pool(&["10.0.6.0/30", "10.0.7.0/30"], &[]);
        let mut s = IpamState::default();
        let a = s.allocate(&p, &key(1)).unwrap();
        assert_eq!(a.block, "10.0.6.0/30");
        assert!(
            !s.retire_if_empty(&"10.0.6.0/30".parse().unwrap()),
            "a block in use is kept"
        );
        assert!(s.retire_if_empty(&"10.0.7.0/30".parse().unwrap()));
        for i in 2..5 {
            let got = s.allocate(&p, &key(i)).unwrap();
            assert_eq!(got.block, "10.0.6.0/30", "allocated from a retired block");
        }
        assert!(s.allocate(&p, &key(9)).is_err());
    }

    #[test]
    fn forgetting_a_given_back_block_drops_its_slots_too() {
        let p = pool(&["10.0.8.0/29", "10.0.9.0/29"], &[]);
        let mut s = IpamState::default();
        let a = s.allocate(&p, &key(1)).unwrap();
        let b = s.allocate(&p, &key(2)).unwrap();
        assert!(s.release_ip(b.ip, b.generation, &key(2)));
        assert_eq!(a.block, b.block);
        // Retire the other, empty block and forget it.
        let other = if a.block == "10.0.8.0/29" {
            "10.0.9.0/29"
        } else {
            "10.0.8.0/29"
        };
        assert!(s.retire_if_empty(&other.parse().unwrap()));
        s.forget_retired_except(&BTreeSet::from([a.block.clone()]));
        assert!(s.retired.is_empty());
        assert!(s.slots.contains_key(&a.ip), "a held slot stays");
        // A retired block still listed in node.json keeps its mark.
        assert!(s.retire_if_empty(&other.parse().unwrap()));
        s.forget_retired_except(&BTreeSet::from([other.to_string()]));
        assert!(s.retired.contains(other));
    }

    #[test]
    fn gc_of_one_network_never_sees_another_networks_attachments() {
        let p = pool(&["10.0.10.0/28"], &[]);
        let mut s = IpamState::default();
        for (i, network) in [(1, Some("net-a")), (2, Some("net-b")), (3, None)] {
            let held = s.allocate(&p, &key(i)).unwrap();
            s.insert_attachment(Attachment {
                container_id: format!("c{i}"),
                ifname: "eth0".into(),
                netns: None,
                host_veth: format!("v{i}"),
                mtu: 1450,
                addresses: vec![held],
                pod_namespace: None,
                pod_name: None,
                pod_uid: None,
                network: network.map(String::from),
                port_mappings: Vec::new(),
            });
        }
        let stale = s.stale_attachments("net-a", &BTreeSet::new());
        assert_eq!(
            stale,
            vec![key(1), key(3)],
            "net-b's attachment is not net-a's to collect"
        );
    }

    #[test]
    fn orphaned_slots_are_freed() {
        let p = pool(&["10.0.2.0/28"], &[]);
        let mut s = IpamState::default();
        let a = s.allocate(&p, &key(1)).unwrap();
        assert_eq!(s.free_orphaned_slots(), vec![a.ip]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn store_updates_are_persisted_under_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let p = pool(&["10.0.3.0/28"], &[]);
        let ip = store
            .update(|s| s.allocate(&p, &key(1)).unwrap().ip)
            .unwrap();
        assert_eq!(
            store.snapshot().unwrap().slots[&ip].holder.as_deref(),
            Some("c1/eth0")
        );
        fs::write(dir.path().join("ipam/store.json"), b"{not json").unwrap();
        let err = store.update(|_| ()).unwrap_err();
        assert!(
            err.to_string().contains("corrupt"),
            "a corrupt store must not be silently reset"
        );
    }

    #[test]
    fn a_torn_store_is_set_aside_and_a_sound_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).unflushed();
        assert_eq!(store.set_aside_if_torn().unwrap(), None, "no store yet");
        let p = pool(&["10.0.6.0/28"], &[]);
        store
            .update(|s| s.allocate(&p, &key(1)).map(drop))
            .unwrap()
            .unwrap();
        assert_eq!(
            store.set_aside_if_torn().unwrap(),
            None,
            "a sound store stays"
        );
        assert_eq!(store.snapshot().unwrap().held(), 1);
        // What a power loss can leave of an unflushed replacement: an empty or cut file.
        for torn in [&b""[..], &b"{\"version\":1,\"slo"[..]] {
            fs::write(dir.path().join("ipam/store.json"), torn).unwrap();
            assert!(store.snapshot().is_err(), "the plugin refuses a torn store");
            let aside = store.set_aside_if_torn().unwrap().expect("set aside");
            assert_eq!(fs::read(&aside).unwrap(), torn, "kept for a post-mortem");
            assert_eq!(store.snapshot().unwrap().held(), 0, "an empty store");
            fs::remove_file(aside).unwrap();
        }
        // The plugin's writes leave no temporary file behind.
        store
            .update(|s| s.allocate(&p, &key(2)).map(drop))
            .unwrap()
            .unwrap();
        let files: Vec<_> = fs::read_dir(dir.path().join("ipam"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            files.iter().all(|f| !f.ends_with(".tmp")),
            "no temporary file left: {files:?}"
        );
    }

    proptest! {
        #[test]
        fn allocations_never_duplicate(ops in proptest::collection::vec((0usize..40, any::<bool>()), 1..200)) {
            let p = pool(&["10.0.4.0/28", "10.0.5.0/29"], &["10.0.4.7"]);
            let mut s = IpamState::default();
            let mut live: BTreeMap<usize, HeldAddress> = BTreeMap::new();
            for (who, alloc) in ops {
                if alloc && !live.contains_key(&who) {
                    if let Ok(a) = s.allocate(&p, &key(who)) {
                        prop_assert!(live.values().all(|l| l.ip != a.ip), "duplicate {}", a.ip);
                        prop_assert_ne!(a.ip.to_string(), "10.0.4.7");
                        live.insert(who, a);
                    } else {
                        prop_assert_eq!(live.len(), 16 + 8 - 1);
                    }
                } else if let Some(a) = live.remove(&who) {
                    prop_assert!(s.release_ip(a.ip, a.generation, &key(who)));
                }
                prop_assert_eq!(s.held(), live.len());
            }
        }
    }
}

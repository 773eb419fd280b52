//! nftables over netlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_NFTABLES`), without
//! the `nft` program or libnftnl: tables of the model ([`crate::nft`]) replaced whole in one
//! transaction, or changed in place by one transaction of the steps [`crate::nft::diff`]
//! lists, and single elements added, removed and read.
//!
//! - `uapi`: the kernel's numbers;
//! - `compile`: a rule's typed expressions as the kernel's register machine runs them;
//! - `encode`: the model as nf_tables messages in one nfnetlink batch
//!   (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`: the kernel applies every message of it
//!   or none);
//! - `socket`: the socket, sending and reading acknowledgements (each message asks for one
//!   and every one is read, so the first refused message is reported with the kernel's
//!   errno and extended-ack text);
//! - `hostports`: the plugin's element operations on the host-port maps.

mod compile;
mod encode;
mod hostports;
mod socket;
pub(crate) use socket::setsockopt;
mod uapi;

use std::io;

pub use socket::Nftables;

use crate::netns::NetnsError;
use crate::nft::{Change, Element, Table};
use encode::{KernelElement, request};
use uapi::*;

/// Errors of nftables operations.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A system call on the netlink socket failed.
    #[error("nftables netlink {syscall} failed: {source}")]
    Io {
        /// The failed call (socket, bind, connect, setsockopt, send, recv).
        syscall: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a message (the whole batch was then rolled back).
    #[error("nftables: {op}: {message} (errno {errno})")]
    Kernel {
        /// The refused message, e.g. "add set inet sinew nodes4".
        op: String,
        /// The positive errno, e.g. `libc::ENOENT`.
        errno: i32,
        /// The error text, with the kernel's extended-ack message when it sent one.
        message: String,
    },
    /// The kernel's replies were not what the protocol promises.
    #[error("nftables: {op}: {message}")]
    Protocol {
        /// What was being done.
        op: String,
        /// What went wrong.
        message: String,
    },
    /// Entering the network namespace for the socket failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl NftError {
    /// The kernel's errno, if the kernel refused a message.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True when the kernel said the object does not exist (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }

    /// True when this kernel has no nf_tables at all (module absent or disabled).
    pub fn is_unsupported(&self) -> bool {
        match self {
            NftError::Io { syscall, source } => {
                *syscall == "socket" && source.raw_os_error() == Some(libc::EPROTONOSUPPORT)
            }
            NftError::Kernel { errno, .. } => {
                matches!(*errno, libc::EOPNOTSUPP | libc::EPROTONOSUPPORT)
            }
            _ => false,
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = NftError> = std::result::Result<T, E>;

/// How the kernel holds an element, compared with the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementState {
    /// Its key is not there (nor perhaps the set or the table).
    Missing,
    /// Its key is there, mapping to the same value (for a map).
    Same,
    /// Its key is there, mapping to another value.
    Different,
}

impl Nftables {
    /// Whether table `inet NAME` exists.
    pub fn table_exists(&mut self, table: &str) -> Result<bool> {
        let op = format!("get table inet {table}");
        let seq = self.next_seq();
        let bytes = request(NFT_MSG_GETTABLE, seq, |a| a.str(NFTA_TABLE_NAME, table));
        Ok(self
            .get_object(&op, &bytes, seq, NFT_MSG_NEWTABLE)?
            .is_some())
    }

    /// Replaces table `inet NAME` by `t` in one transaction: whoever lists the ruleset sees
    /// the old table or the new one, never a mix or none.
    pub fn replace_table(&mut self, t: &Table) -> Result<()> {
        let mut batch = self.batch();
        batch.delete_table(&t.name);
        batch.table(t);
        self.commit(batch)
    }

    /// Turns table `inet NAME`, which holds `old`, into `new` (of the same name) in one
    /// transaction, without rebuilding it ([`crate::nft::diff`]): sets and chains that stay
    /// keep working throughout. Nothing to do when the tables are equal.
    pub fn update_table(&mut self, old: &Table, new: &Table) -> Result<()> {
        if old.name != new.name {
            return Err(NftError::Protocol {
                op: format!("update table inet {}", new.name),
                message: format!("the table it starts from is inet {}", old.name),
            });
        }
        let changes = crate::nft::diff(old, new);
        self.apply_changes(new, &changes)
    }

    /// Applies `changes` (as [`crate::nft::diff`] lists them) to table `inet NAME`, which
    /// holds the table they start from; `new` is the table they lead to.
    pub fn apply_changes(&mut self, new: &Table, changes: &[Change]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = self.batch();
        batch.changes(new, changes);
        self.commit(batch)
    }

    /// The packets and bytes named counter `NAME` of table `inet TABLE` holds; `None` when
    /// there is no such counter (or table).
    pub fn counter(&mut self, table: &str, name: &str) -> Result<Option<CounterValue>> {
        let op = format!("get counter inet {table} {name}");
        let seq = self.next_seq();
        let bytes = request(NFT_MSG_GETOBJ, seq, |a| {
            a.str(NFTA_OBJ_TABLE, table);
            a.str(NFTA_OBJ_NAME, name);
            a.be32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
        });
        let Some(payload) = self.get_object(&op, &bytes, seq, NFT_MSG_NEWOBJ)? else {
            return Ok(None);
        };
        counter_value(&payload).map(Some).ok_or(NftError::Protocol {
            op,
            message: "the reply holds no counter values".to_string(),
        })
    }

    /// Deletes table `inet NAME` if it exists.
    pub fn delete_table(&mut self, table: &str) -> Result<()> {
        let mut batch = self.batch();
        batch.delete_table(table);
        self.commit(batch)
    }

    /// How the kernel holds `element` in `set` of `table`.
    pub fn element_state(
        &mut self,
        table: &str,
        set: &str,
        element: &Element,
    ) -> Result<ElementState> {
        let want = KernelElement::of(element);
        let op = format!("get {}", describe(table, set, element));
        let seq = self.next_seq();
        let bytes = request(NFT_MSG_GETSETELEM, seq, |a| {
            a.str(NFTA_SET_ELEM_LIST_TABLE, table);
            a.str(NFTA_SET_ELEM_LIST_SET, set);
            a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                list.nest(NFTA_LIST_ELEM, |el| {
                    el.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &want.key));
                });
            });
        });
        let found = self.get_object(&op, &bytes, seq, NFT_MSG_NEWSETELEM)?;
        Ok(match found {
            None => ElementState::Missing,
            Some(payload) => {
                let data = element_data(&payload).unwrap_or_default();
                if data == want.data.unwrap_or_default() {
                    ElementState::Same
                } else {
                    ElementState::Different
                }
            }
        })
    }
}

/// What a named counter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// The values in a `NFT_MSG_NEWOBJ` reply of a counter (after its `nfgenmsg`).
fn counter_value(payload: &[u8]) -> Option<CounterValue> {
    let data = attribute(payload.get(4..)?, NFTA_OBJ_DATA)?;
    let be64 = |ty| Some(u64::from_be_bytes(attribute(data, ty)?.try_into().ok()?));
    Some(CounterValue {
        packets: be64(NFTA_COUNTER_PACKETS)?,
        bytes: be64(NFTA_COUNTER_BYTES)?,
    })
}

/// How errors and logs name an element, in `nft` words.
fn describe(table: &str, set: &str, element: &Element) -> String {
    format!("element {element} of inet {table} {set}")
}

/// Walks netlink attributes: `(type without flags, payload)`.
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(data.get(..2)?.try_into().ok()?));
        let ty = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?) & !NLA_F_NESTED;
        let value = data.get(4..len)?;
        data = data.get(crate::netlink::align4(len)..).unwrap_or_default();
        Some((ty, value))
    })
}

/// The value of the first attribute of type `ty`.
fn attribute(data: &[u8], ty: u16) -> Option<&[u8]> {
    attributes(data).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

/// The data of the element in a `NFT_MSG_NEWSETELEM` reply (after its `nfgenmsg`).
fn element_data(payload: &[u8]) -> Option<Vec<u8>> {
    let list = attribute(payload.get(4..)?, NFTA_SET_ELEM_LIST_ELEMENTS)?;
    let element = attribute(list, NFTA_LIST_ELEM)?;
    let data = attribute(element, NFTA_SET_ELEM_DATA)?;
    attribute(data, NFTA_DATA_VALUE).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod datapath_tests;
#[cfg(test)]
pub(crate) mod policy_fixture;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod update_tests;
#[cfg(test)]
mod vocabulary_tests;

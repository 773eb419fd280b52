//! The plugin's side of host ports ([`crate::hostport`]): a pod's elements added to the maps
//! of `inet sinew` at ADD, removed at DEL, compared at CHECK. The agent declares the maps
//! (with every stored pod's elements) when it replaces the table.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::encode::{Batch, KernelElement};
use super::{ElementState, Nftables, Result, describe};
use crate::consts::NFT_TABLE;
use crate::hostport::{self, HostPort};
use crate::nft::Element;

/// Appends the addition (or deletion) of one element of a host-port map or hairpin set.
fn element(batch: &mut Batch, set: &str, element: &Element, delete: bool) {
    let verb = if delete { "delete" } else { "add" };
    batch.element(
        format!("{verb} {}", describe(NFT_TABLE, set, element)),
        NFT_TABLE,
        set,
        &KernelElement::of(element),
        delete,
    );
}

impl Nftables {
    /// Maps `ports` (one pod's host ports) in sinew's table, whose maps the agent declared.
    /// An element of the same key mapping elsewhere is replaced: the IPAM store gives a key to
    /// one pod at a time, so such an element is a leftover of a pod that is gone. Fails with
    /// `ENOENT` when the table or its maps do not exist (yet).
    pub fn add_host_ports(&mut self, ports: &[HostPort]) -> Result<()> {
        let elements = hostport::elements(ports);
        if elements.is_empty() {
            return Ok(());
        }
        let mut batch = self.batch();
        for (set, e) in &elements {
            element(&mut batch, set, e, false);
        }
        match self.commit(batch) {
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            other => return other,
        }
        for (set, e) in &elements {
            let mut batch = self.batch();
            element(&mut batch, set, e, false);
            match self.commit(batch) {
                Err(err) if err.errno() == Some(libc::EEXIST) => {
                    tracing::info!(element = %describe(NFT_TABLE, set, e), "replacing a host port left by a pod that is gone");
                    let mut batch = self.batch();
                    element(&mut batch, set, e, true);
                    element(&mut batch, set, e, false);
                    self.commit(batch)?;
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Removes `ports` (one pod's host ports) from sinew's table, each element only while it
    /// still maps to this pod (added and deleted in one transaction: the add fails for an
    /// element mapping elsewhere). What is already gone, the table included, is fine.
    pub fn remove_host_ports(&mut self, ports: &[HostPort]) -> Result<()> {
        let elements = hostport::elements(ports);
        if elements.is_empty() {
            return Ok(());
        }
        let remove = |nft: &mut Nftables, elements: &[(&str, Element)]| {
            let mut batch = nft.batch();
            for (set, e) in elements {
                element(&mut batch, set, e, false);
                element(&mut batch, set, e, true);
            }
            nft.commit(batch)
        };
        match remove(self, &elements) {
            Err(e) if e.is_not_found() || e.is_unsupported() => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                for one in &elements {
                    match remove(self, std::slice::from_ref(one)) {
                        Err(e) if e.errno() == Some(libc::EEXIST) => {
                            tracing::debug!(element = %describe(NFT_TABLE, one.0, &one.1), "maps to another pod now; left alone");
                        }
                        Err(e) if e.is_not_found() => {}
                        other => other?,
                    }
                }
                Ok(())
            }
            other => other,
        }
    }

    /// The host ports of `ports` that the kernel does not map as recorded (missing, or to
    /// another pod), each with what is wrong; empty when all are in place.
    pub fn host_port_differences(&mut self, ports: &[HostPort]) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for hp in ports {
            let (map, want) = hostport::map_element(hp);
            match self.element_state(NFT_TABLE, map, &want)? {
                ElementState::Missing => problems.push(format!("host port {hp} is not mapped")),
                ElementState::Different => problems.push(format!("host port {hp} maps elsewhere")),
                ElementState::Same => {}
            }
        }
        let pods: BTreeSet<IpAddr> = ports.iter().map(|p| p.pod_ip).collect();
        for pod in pods {
            let (set, want) = hostport::hairpin_element(pod);
            if self.element_state(NFT_TABLE, set, &want)? == ElementState::Missing {
                problems.push(format!("the hairpin entry of {pod} is missing"));
            }
        }
        Ok(problems)
    }
}

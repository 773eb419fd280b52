//! This node's blocks: claimed as its pools need them, the tunnel's address taken from
//! them, given back when empty, drained when their pool is deleted, and their usage written.

use super::*;

impl Agent {
    pub(super) fn store(&self) -> ipam::Store {
        ipam::Store::new(&self.settings.state_dir)
    }

    pub(super) fn block_usage(&self) -> Result<BlockUsage> {
        let snapshot = self
            .store()
            .snapshot()
            .map_err(Error::files("reading the IPAM store"))?;
        Ok(BlockUsage::of(&snapshot))
    }

    /// Claims what [`blocks::claims`] says, and claims orphaned blocks again. Each pool on
    /// its own: an API error for one pool becomes a problem and the others go on.
    pub(super) async fn claim_blocks(&mut self, pools: &PoolView) -> Result<Vec<Problem>> {
        let holdings = self.block_usage()?;
        self.memory.requests_read = node_state::block_requests(&self.settings.state_dir)
            .map_err(Error::files("reading block requests"))?
            .into_iter()
            .collect();
        let requested: BTreeSet<String> = self.memory.requests_read.keys().cloned().collect();
        let mut problems = Vec::new();
        for orphan in blocks::orphans(self.node(), &holdings, &pools.facts, &pools.blocks) {
            match &orphan.owner {
                // Another node's trusted block covers addresses pods here hold: nothing to
                // claim, but both nodes hand them out.
                Some(owner) => {
                    warn!(node = %self.node(), block = %orphan.block, pool = %orphan.pool, owner = %owner, addresses = orphan.addresses, "block lost: another node owns addresses pods here hold");
                    problems.push(blocks::lost_problem(&orphan, owner));
                }
                None => problems.extend(self.api.reassert(&orphan).await),
            }
        }
        let selected: Vec<String> = pools.selected.iter().map(|p| p.name_any()).collect();
        let plan = blocks::claims(
            self.node(),
            &selected,
            &pools.facts,
            &pools.blocks,
            &holdings,
            &requested,
            self.settings.min_free,
        );
        problems.extend(plan.problems);
        // Every block name in the cluster, read only when a block is to be claimed.
        let mut taken = None;
        for (name, need) in plan.needs {
            let BlockNeed::Block { free } = need else {
                self.memory.exhausted.remove(&name);
                continue;
            };
            let Some(fact) = pools.facts.get(&name) else {
                continue;
            };
            let free = free as u64;
            match self
                .api
                .claim(
                    &name,
                    &fact.cidr,
                    fact.block_size,
                    &pools.blocks,
                    taken.get_or_insert_with(|| self.cluster.block_names()),
                )
                .await
            {
                Ok(Some(block)) => {
                    // A block this node gave back earlier may come back to it.
                    self.store()
                        .update(|s| s.retired.remove(&block.to_string()))
                        .map_err(Error::files("updating the IPAM store"))?;
                    self.memory.exhausted.remove(&name);
                    self.metrics.blocks_claimed.inc();
                    info!(node = %self.node(), pool = %name, block = %block, free, "claimed block")
                }
                Ok(None) => {
                    if self.memory.exhausted.insert(name.clone()) {
                        warn!(node = %self.node(), pool = %name, free, "pool has no unclaimed block left");
                    }
                }
                Err(e) => {
                    warn!(node = %self.node(), pool = %name, error = %e, "claiming a block failed");
                    problems.push(Problem::new(
                        ProblemKind::BlockClaimFailed,
                        format!("pool {name}: {e}"),
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// Gives the VXLAN device its address from this node's blocks (see [`tunnel`]): chosen in
    /// the IPAM store under its lock, then put on the device; any other address sinew put
    /// there before (a moved or dropped choice) is removed. A node without peers (`peered`
    /// false) holds none.
    pub(super) fn ensure_tunnel_addresses(
        &mut self,
        nl: &mut dyn Kernel,
        vxlan: &Link,
        pools: &PoolView,
        peered: bool,
    ) -> Result<BTreeSet<IpAddr>> {
        let candidates = if peered {
            decide::tunnel_candidates(self.node(), pools)
        } else {
            Vec::new()
        };
        let wanted = self
            .store()
            .update(|s| tunnel::update(s, &candidates))
            .map_err(Error::files("updating the IPAM store"))?;
        let (remove, add) = tunnel::device_changes(&nl.addresses(vxlan.index)?, &wanted);
        for (ip, prefix) in remove {
            nl.del_address(vxlan.index, ip, prefix)?;
            info!(node = %self.node(), address = %ip, device = VXLAN_DEVICE, "tunnel address removed");
        }
        for (ip, prefix) in add {
            nl.add_address(vxlan.index, ip, prefix)?;
            info!(node = %self.node(), address = %ip, device = VXLAN_DEVICE, "tunnel address set");
        }
        Ok(wanted)
    }

    /// This node's blocks of pools being deleted (CIDRs as the store writes them).
    pub(super) fn draining_blocks(&self) -> BTreeSet<String> {
        let deleting = self.cluster.deleting_pools();
        self.cluster
            .blocks_of(self.node())
            .iter()
            .filter(|b| deleting.contains(&b.spec.pool))
            .filter_map(|b| b.spec.cidr.parse::<Cidr>().ok())
            .map(|c| c.to_string())
            .collect()
    }

    /// The pools being deleted from which this node provably hands out no more addresses:
    /// `node.json` no longer offers them (just written), their blocks here are retired in the
    /// store, under its lock (an ADD that read an older `node.json` cannot allocate from them
    /// any more, and one that did has committed), and the blocks' status was written after
    /// that, so it shows every address still held. The operator deletes a deleted pool's
    /// blocks only once every node holding one reports it here, not after a fixed delay.
    pub(super) async fn drain_deleted_pools(&mut self) -> Vec<String> {
        let deleting: Vec<String> = self.cluster.deleting_pools().into_iter().collect();
        if deleting.is_empty() {
            return Vec::new();
        }
        let blocks = self.draining_blocks();
        let store = self.store();
        let missing = match store.snapshot() {
            Ok(st) => blocks.iter().any(|b| !st.retired.contains(b)),
            Err(e) => {
                warn!(node = %self.node(), error = %e, "reading the IPAM store failed; the pools being deleted are not reported drained");
                return Vec::new();
            }
        };
        if missing && let Err(e) = store.update(|st| st.retired.extend(blocks.iter().cloned())) {
            warn!(node = %self.node(), error = %e, "retiring the blocks of pools being deleted failed");
            return Vec::new();
        }
        if let Err(e) = self.sync_block_status().await {
            warn!(node = %self.node(), kind = e.label(), error = %e, "status sync failed; the pools being deleted are not reported drained");
            return Vec::new();
        }
        deleting
    }

    /// Removes the block requests this pass read, now that `node.json` answers them: with a
    /// new block, or with the pool's state (exhausted, disabled) and a problem in the report.
    /// A request the plugin made again meanwhile stays for the next pass.
    pub(super) fn answer_requests(&mut self) {
        for (pool, made) in std::mem::take(&mut self.memory.requests_read) {
            match node_state::clear_block_request_made(&self.settings.state_dir, &pool, made) {
                Ok(true) => debug!(node = %self.node(), pool = %pool, "block request answered"),
                Ok(false) => {}
                Err(e) => {
                    warn!(node = %self.node(), pool = %pool, error = %e, "cannot remove a block request")
                }
            }
        }
    }

    /// Gives back what [`blocks::releases`] says: each block is first retired in the IPAM
    /// store under its lock (so no ADD can allocate from it any more), then deleted.
    /// The tunnel address leaves a block that is given back: the block is retired with it
    /// (under the store's lock), and the device takes a new address before the `IPBlock` goes.
    /// Each block on its own: one that cannot go now (its deletion refused, the device's
    /// address not moved) is a problem, stays retired, and is tried again next pass.
    pub(super) async fn release_blocks(
        &mut self,
        pools: &PoolView,
        nl: &mut dyn Kernel,
        vxlan: Option<&Link>,
    ) -> Result<Vec<Problem>> {
        let holdings = self.block_usage()?;
        let releasable = blocks::releases(
            &self.settings.node_name,
            &decide::usable_selected(pools),
            &pools.blocks,
            &holdings,
            &mut self.memory.empty_since,
            Instant::now(),
            self.settings.block_release_grace,
            self.settings.min_free,
        );
        let mut problems = Vec::new();
        for block in releasable {
            let (retired, moved) = self
                .store()
                .update(|s| blocks::retire_for_release(s, &block))
                .map_err(Error::files("updating the IPAM store"))?;
            if !retired {
                continue;
            }
            if moved
                && let Some(vxlan) = vxlan
                // Another of this node's blocks (retired ones are never chosen) gives it.
                && let Err(e) = self.ensure_tunnel_addresses(nl, vxlan, pools, true)
            {
                problems.push(Problem::new(
                    ProblemKind::BlockReleaseFailed,
                    format!("block {block}: {VXLAN_DEVICE} still holds its address ({e})"),
                ));
                continue;
            }
            let name = sinew_crds::IPBlock::name_for(&block);
            let uid = self
                .cluster
                .blocks_of(self.node())
                .iter()
                .find(|b| b.name_any() == name)
                .and_then(|b| b.metadata.uid.clone());
            if let Err(e) = self.api.release(&block, uid).await {
                warn!(node = %self.node(), block = %block, error = %e, "releasing a block failed");
                problems.push(Problem::new(
                    ProblemKind::BlockReleaseFailed,
                    format!("block {block}: {e}"),
                ));
                continue;
            }
            info!(node = %self.node(), block = %block, "released empty block");
            self.memory.empty_since.remove(&block.to_string());
        }
        Ok(problems)
    }

    /// Writes each owned block's allocations into its `IPBlockUsage` when they changed: the
    /// first time in this agent's life the usage object itself (owned by the block, so created
    /// once and removed with the block), then its status. Returns whether any was written.
    pub async fn sync_block_status(&mut self) -> Result<bool> {
        // No agent watches usages: one deleted by hand is written again within this time.
        if self
            .memory
            .usages_asserted
            .is_none_or(|t| t.elapsed() >= USAGE_REASSERT)
        {
            self.memory.reported_blocks.clear();
            self.memory.usages_asserted = Some(Instant::now());
        }
        let snapshot = self
            .store()
            .snapshot()
            .map_err(Error::files("reading the IPAM store"))?;
        let mut per_pool: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut owned = BTreeSet::new();
        let mut failed = None;
        let mut written_any = false;
        for block in self.cluster.blocks_of(self.node()) {
            let Ok(cidr) = block.spec.cidr.parse::<Cidr>() else {
                continue;
            };
            let status = block_usage(&snapshot, &cidr);
            let entry = per_pool.entry(block.spec.pool.clone()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(status.allocated);
            // Keyed by UID: a block released and claimed again is a new object, with a new usage.
            let key = block.uid().unwrap_or_default();
            owned.insert(key.clone());
            if self.memory.reported_blocks.get(&key) == Some(&status) {
                continue;
            }
            let name = block.name_any();
            // One block's failure (the usage of a released block of the same name not yet
            // collected, say) does not hold up the others'.
            let written = async {
                if !self.memory.reported_blocks.contains_key(&key) {
                    self.api.create_usage(&block).await?;
                }
                self.api.usage_status(&name, &status).await
            }
            .await;
            match written {
                Ok(()) => {
                    written_any = true;
                    debug!(block = %name, allocated = status.allocated, "block usage synced");
                    self.memory.reported_blocks.insert(key, status);
                }
                Err(e) => {
                    // Written again in full (the object too: it may be gone) on the next sync.
                    self.memory.reported_blocks.remove(&key);
                    warn!(block = %name, error = %e, "writing the block's usage failed; retried");
                    failed.get_or_insert(e);
                }
            }
        }
        self.memory.reported_blocks.retain(|k, _| owned.contains(k));
        self.metrics.set_pools(&per_pool);
        failed.map_or(Ok(written_any), Err)
    }
}

/// The allocations of `block` in the store, as its `IPBlockUsage` shows them.
fn block_usage(store: &ipam::IpamState, block: &Cidr) -> IPBlockUsageStatus {
    let mut allocations: Vec<Allocation> = store
        .attachments
        .values()
        .flat_map(|a| {
            a.addresses
                .iter()
                .filter(|h| block.contains(h.ip))
                .map(move |h| Allocation {
                    ip: h.ip.to_string(),
                    container_id: a.container_id.clone(),
                    interface: a.ifname.clone(),
                    pod_namespace: a.pod_namespace.clone(),
                    pod_name: a.pod_name.clone(),
                    pod_uid: a.pod_uid.clone(),
                    generation: h.generation,
                })
        })
        .collect();
    allocations.sort_by(|a, b| a.ip.cmp(&b.ip));
    IPBlockUsageStatus {
        allocated: u32::try_from(allocations.len()).unwrap_or(u32::MAX),
        allocations,
    }
}

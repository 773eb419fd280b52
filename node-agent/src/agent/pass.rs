//! One reconcile pass, step by step (see [`Agent::pass`]).

use super::*;

/// What one pass acts on (see [`Agent::view`]).
struct PassView {
    pools: PoolView,
    /// Why blocks were not trusted.
    vet_problems: Vec<Problem>,
    peers: Arc<peers::Nodes>,
    peering: Arc<decide::Peering>,
    /// The nodes' count of changes the view was read at.
    nodes_at: u64,
}

/// How far a pass brought its peers (see [`Agent::program_peers`]).
struct Peered {
    /// The VXLAN device (`None` where it could not be made).
    vxlan: Option<Link>,
    /// The device is there and the peers' plan was applied (entries the kernel refused are
    /// reported, and do not hold the node back: decision 103).
    complete: bool,
    /// The plan routes any peer.
    any_route: bool,
    /// The whole kernel was compared (the node checks look at all of it too).
    full: bool,
}

impl Agent {
    /// One reconcile pass: reads what the cluster and the node say, decides (see [`decide`]),
    /// and carries the decisions out. Each step's failure is contained and reported (a
    /// `StepFailed` problem, and the pass-failure metric): peers are programmed before any
    /// block is claimed, one pool's claim trouble leaves the others alone, and a failed
    /// netlink call, NAT, forwarding or file write holds back only what depends on it.
    /// A `resync` pass compares the whole kernel with what it wants, whatever else says so.
    pub async fn pass(&mut self, resync: bool) -> Result<()> {
        let Some(network) = self.cluster.network() else {
            debug!("no ClusterNetwork yet");
            return Ok(());
        };
        if network.metadata.deletion_timestamp.is_some() {
            self.memory.programmed = None;
            if let Some(mesh) = &self.mesh {
                mesh.set_targets(Vec::new());
            }
            return self.clean_up(&network).await;
        }
        self.memory.cleaned = false;
        self.policy
            .set_enabled(network.spec.network_policy == NetworkPolicyMode::Enabled);
        self.policy
            .set_drop_log(network.spec.network_policy_drop_log == DropLogMode::Enabled);
        let Some(local) = self.local()? else {
            debug!(node = %self.node(), "Node object or its address not known yet");
            return Ok(());
        };
        if !self.memory.pass_completed {
            self.repair_store_of_a_past_boot(&local).await?;
        }
        let view = self.view(&local);
        let mut problems = view.vet_problems.clone();
        let forwarding_on = self.ensure_forwarding(&view.pools, &local, &mut problems);
        let mut kernel = (self.kernel)()?;
        let nl = &mut *kernel;
        let peered = self.program_peers(nl, &network, &local, &view, resync, &mut problems);
        let tunnel = self
            .keep_blocks(nl, &view.pools, &peered, &mut problems)
            .await;
        if forwarding_on && peered.complete && !self.memory.pass_completed {
            info!(node = %self.node(), "first complete pass in this boot: the node serves pods");
            self.memory.pass_completed = true;
        }
        // The plugin's block requests are answered by `node.json`, and a pool being deleted is
        // drained only once `node.json` no longer offers it: both wait for the write.
        let drained = match self.store_node_state(&network, &local, &view.pools) {
            Ok(()) => {
                self.answer_requests();
                self.drain_deleted_pools().await
            }
            Err(e) => {
                self.step_failed(&mut problems, "writing the node state for the plugin", e);
                Vec::new()
            }
        };
        self.probe_peers(&local, &view, &tunnel);
        self.keep_for_pods(nl, &network, &local, &view, &mut problems)
            .await;

        let install = self.serve(&network, &mut problems);
        let ready = install.is_some();
        self.metrics.set_ready(ready);
        problems.extend(self.diagnose(nl, install.as_ref(), &view.pools, peered.full));
        if let Some(mesh) = &self.mesh {
            problems.extend(mesh.problems());
        }
        let (policy, policy_problems) = self.policy.report();
        problems.extend(policy_problems);
        problems.sort();
        problems.dedup();
        self.metrics.set_problems(&problems);
        self.record_problem_events(&local, &problems).await;
        let report = NodeReport {
            ready,
            spec_hash: Some(network.spec.config_hash()),
            underlay: Some(local.underlay.subnet.to_string()),
            underlay_mtu: Some(local.underlay.mtu),
            install,
            modes: view.peering.modes.clone(),
            tunnel: tunnel.into_iter().collect(),
            problems,
            cleaned_up: false,
            drained,
            omitted: Vec::new(),
            policy,
        };
        // Without the device (a failed step), the MAC it will have: the annotation is applied
        // server-side, and leaving it out would withdraw it from every peer.
        let vtep = match &peered.vxlan {
            Some(link) => link.mac,
            None => Some(sinew_node_lib::consts::vtep_mac(self.node())),
        };
        self.publish(&local, vtep, report).await
    }

    /// What this pass acts on, from the watched stores: the pools and their vetted blocks, the
    /// peers, and how to reach them. Each part is kept between passes while the stores it
    /// comes from are unchanged (decision 100).
    fn view(&mut self, local: &LocalNode) -> PassView {
        // The change counts before the stores: a change in between derives again next pass.
        let changes = &self.cluster.changes;
        let (nodes_at, pools_at, blocks_at) = (
            changes.nodes.count(),
            changes.pools.count(),
            changes.blocks.count(),
        );
        let all = self.cluster.pools.state();
        let facts = vetting::pools(&all);
        let (blocks, vet_problems) = self
            .memory
            .vetted
            .get((pools_at, blocks_at), || {
                let (blocks, problems) = vetting::blocks(&self.cluster.blocks.state(), &facts);
                (blocks.into(), problems)
            })
            .clone();
        let pools = PoolView {
            selected: Cluster::selected_pools(&all, &local.labels),
            all,
            facts,
            blocks,
        };
        let peers = self
            .memory
            .nodes
            .get(nodes_at, || {
                Arc::new(peers::Nodes::new(self.cluster.peers()))
            })
            .clone();
        let modes = self.memory.modes.get((nodes_at, pools_at), || {
            let nodes = self.cluster.nodes.state();
            decide::peer_modes(
                &pools.all,
                &nodes.iter().map(|n| n.labels()).collect::<Vec<_>>(),
            )
        });
        let peering = self
            .memory
            .peering
            .get(
                (nodes_at, pools_at, blocks_at, local.underlay.clone()),
                || {
                    Arc::new(decide::peering(
                        &self.settings.node_name,
                        &local.underlay,
                        modes.clone(),
                        &peers,
                        &pools.blocks,
                        self.settings.peer_selector.is_some(),
                    ))
                },
            )
            .clone();
        PassView {
            pools,
            vet_problems,
            peers,
            peering,
            nodes_at,
        }
    }

    /// Brings the VXLAN device, the tunnel's reverse-path filter and the peers' routes,
    /// neighbours and FDB in line with the view's plan: the changes since the last pass, or the
    /// whole kernel compared at a `resync`, after someone else changed the node's network, and
    /// after a failed apply. Reports what it could not do.
    fn program_peers(
        &mut self,
        nl: &mut dyn Kernel,
        network: &ClusterNetwork,
        local: &LocalNode,
        view: &PassView,
        resync: bool,
        problems: &mut Vec<Problem>,
    ) -> Peered {
        let plan = &view.peering.plan;
        let params = VxlanParams {
            vni: network.spec.vxlan.vni,
            port: network.spec.vxlan.port,
        };
        let vxlan = match datapath::ensure_vxlan(
            nl,
            params,
            &local.underlay,
            sinew_node_lib::consts::vtep_mac(self.node()),
        ) {
            Ok(vxlan) => Some(vxlan),
            Err(e) => {
                self.step_failed(problems, "creating the VXLAN device", e.into());
                None
            }
        };
        let sys = self.sysctls();
        for (device, drops) in &view.peering.loosen {
            if device != VXLAN_DEVICE || vxlan.is_some() {
                problems.extend(sysctls::loosen_rp_filter(&sys, device, drops));
            }
        }
        let kernel_changed = self
            .node_watch
            .as_ref()
            .is_none_or(NodeWatch::take_kernel_changed);
        let full = resync || kernel_changed || self.memory.programmed.is_none();
        let applied = match self.memory.programmed.take() {
            Some(before) if !full => {
                datapath::apply_changes(nl, &before, plan, &local.underlay, vxlan.as_ref())
            }
            _ => datapath::apply(nl, plan, &local.underlay, vxlan.as_ref()),
        };
        let programmed = match applied {
            Ok((changes, kept)) => {
                if changes.added + changes.removed + changes.skipped > 0 {
                    info!(node = %self.node(), added = changes.added, removed = changes.removed, skipped = changes.skipped, routes = plan.routes.len(), "peers programmed");
                }
                if let Some(problem) = changes.refused_problem() {
                    warn!(node = %self.node(), refused = changes.refused.len(), first = %changes.refused[0], "the kernel refused some peer entries; the others are in");
                    problems.push(problem);
                } else {
                    // Where the kernel refused a write it differs from `kept`: the next pass
                    // compares the whole kernel and tries again.
                    self.memory.programmed = Some(kept);
                }
                true
            }
            Err(e) => {
                self.step_failed(
                    problems,
                    "programming peer routes, neighbours and FDB",
                    e.into(),
                );
                false
            }
        };
        self.metrics.peer_routes.set(plan.routes.len() as i64);
        problems.extend(
            plan.problems
                .iter()
                .map(|p| Problem::new(ProblemKind::PeersIncomplete, p.clone())),
        );
        problems.extend(plan.vtep_conflicts.iter().map(|c| {
            Problem::new(ProblemKind::VtepConflict, c.clone()).with_fix(
                "give each node a unique name and run sinew-node of this version on it (its VTEP MAC is derived from the node's name); find who wrote the annotation sinew.dev/vtep-mac on the named nodes",
            )
        }));
        if let Some(vxlan) = &vxlan {
            let drops = self.reverse_drops(nl, plan, local, vxlan);
            problems.extend(diagnose::reverse_path_dropped(&drops));
        }
        Peered {
            complete: programmed && vxlan.is_some(),
            vxlan,
            any_route: !plan.routes.is_empty(),
            full,
        }
    }

    /// Claims the blocks the node needs, gives the VXLAN device its address from them and
    /// gives back the empty ones; the tunnel addresses the device holds.
    async fn keep_blocks(
        &mut self,
        nl: &mut dyn Kernel,
        pools: &PoolView,
        peered: &Peered,
        problems: &mut Vec<Problem>,
    ) -> BTreeSet<IpAddr> {
        match self.claim_blocks(pools).await {
            Ok(claim_problems) => problems.extend(claim_problems),
            Err(e) => self.step_failed(problems, "claiming blocks", e),
        }
        // Without a peer route the node sends nothing to remote pods: no address is spent.
        let tunnel = match &peered.vxlan {
            Some(vxlan) => match self.ensure_tunnel_addresses(nl, vxlan, pools, peered.any_route) {
                Ok(addresses) => addresses,
                Err(e) => {
                    warn!(node = %self.node(), error = %e, "cannot give the VXLAN device its pod-network address");
                    problems.push(Problem::new(
                        ProblemKind::PeersIncomplete,
                        format!("{VXLAN_DEVICE} has no address of this node's blocks ({e}): traffic from this node to remote pods over VXLAN leaves with the node's address, and replies that a cloud underlay or strict reverse-path filtering drops never come back"),
                    ));
                    BTreeSet::new()
                }
            },
            None => BTreeSet::new(),
        };
        match self.release_blocks(pools, nl, peered.vxlan.as_ref()).await {
            Ok(release_problems) => problems.extend(release_problems),
            Err(e) => problems.push(Problem::new(ProblemKind::BlockReleaseFailed, e.to_string())),
        }
        tunnel
    }

    /// Installs the plugin and its conflist once the node can serve pods: its first complete
    /// pass in this boot is done, NetworkPolicy's table is in where policy is on (no pod
    /// starts unpoliced), and a pool offers a block here. What was installed, if it was.
    fn serve(
        &mut self,
        network: &ClusterNetwork,
        problems: &mut Vec<Problem>,
    ) -> Option<InstallReport> {
        let serving = self.memory.pass_completed
            && self.policy.ready()
            && self
                .memory
                .node_state
                .as_ref()
                .is_some_and(|st| st.pools.iter().any(|p| !p.disabled && !p.blocks.is_empty()));
        if !serving {
            return None;
        }
        self.install(network)
            .map_err(|e| self.step_failed(problems, "installing the plugin and its conflist", e))
            .ok()
    }

    /// Gives the probe mesh this pass's targets: each peer over each path its pools use, at
    /// the pod MTU the plugin hands out (the node state just stored).
    fn probe_peers(&mut self, local: &LocalNode, view: &PassView, tunnel: &BTreeSet<IpAddr>) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        if self.memory.peer_reports_at != Some(view.nodes_at) {
            self.memory
                .peer_reports
                .refresh(&self.cluster.nodes.state());
            self.memory.peer_reports_at = Some(view.nodes_at);
        }
        let Some(state) = &self.memory.node_state else {
            return;
        };
        let pod_mtus = state
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.mtu))
            .collect();
        mesh.set_targets(probe::targets(
            local.underlay.ip,
            &view.peering.plan,
            &view.pools.blocks,
            &pod_mtus,
            &view.peers,
            &self.memory.peer_reports.underlay_mtus,
            &probe::PodAddresses {
                own: tunnel.iter().copied().collect(),
                peers: &self.memory.peer_reports.tunnels,
            },
        ));
    }

    /// The rest of what the node keeps for its pods: sinew's nftables table, the namespaces'
    /// pools for the plugin, and addresses leaked by pods that are gone.
    async fn keep_for_pods(
        &mut self,
        nl: &mut dyn Kernel,
        network: &ClusterNetwork,
        local: &LocalNode,
        view: &PassView,
        problems: &mut Vec<Problem>,
    ) {
        if let Err(e) = self.apply_nft(nl, network.spec.vxlan.port, &view.pools.all, &view.peers) {
            problems.push(Problem::new(
                ProblemKind::NftablesFailed,
                format!("natOutgoing, the VXLAN source filter and host ports are not applied: {e}"),
            ));
        }
        if let Err(e) = self.mirror_namespace_pools() {
            self.step_failed(problems, "mirroring namespace pools for the plugin", e);
        }
        if let Err(e) = self.release_leaks(nl, local).await {
            self.step_failed(problems, "releasing leaked addresses", e);
        }
    }

    /// A step of the pass failed: counted, logged and reported; the pass goes on.
    pub(super) fn step_failed(&self, problems: &mut Vec<Problem>, step: &str, e: Error) {
        self.metrics.pass_failed(e.label());
        warn!(node = %self.node(), step, kind = e.label(), error = %e, "a step of the pass failed; the others go on");
        problems.push(Problem::new(
            ProblemKind::StepFailed,
            format!("{step}: {e}"),
        ));
    }
}

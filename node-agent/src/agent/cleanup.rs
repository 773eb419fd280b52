//! Removing everything sinew put on the node once the `ClusterNetwork` is being deleted.

use sinew_crds::ClusterNetwork;
use sinew_crds::node::{NodeReport, Problem, ProblemKind};
use sinew_node_lib::consts::PLUGIN_BINARY;
use sinew_node_lib::node_state;
use tracing::info;

use super::error::{Error, Result};
use super::{Agent, PassMemory};
use crate::{conflist, datapath, install, nat};

impl Agent {
    /// Removes everything sinew put on this node, without stranding a running pod: first no
    /// pool hands out new addresses here any more (`node.json`), then, once no pod on this
    /// node holds a sinew address (or no pool is left), the conflist, the plugin binary, the
    /// routes, the VXLAN device and the nftables table go, in that order. Until then the
    /// runtime still finds the conflist and the plugin, so every pod's DEL runs and its
    /// traffic flows until it is torn down (a runtime cannot tear down a pod whose network
    /// configuration is gone). Says which on the Node.
    pub(super) async fn clean_up(&mut self, network: &ClusterNetwork) -> Result<()> {
        if self.memory.cleaned {
            return Ok(());
        }
        let state_dir = &self.settings.state_dir;
        if let Some(mut state) =
            node_state::load(state_dir).map_err(Error::files("reading node.json"))?
            && state.pools.iter().any(|p| !p.disabled)
        {
            for pool in &mut state.pools {
                pool.disabled = true;
            }
            node_state::store(&state, state_dir).map_err(Error::files("writing node.json"))?;
            self.memory.node_state = None;
        }
        let attached = self
            .store()
            .snapshot()
            .map_err(Error::files("reading the IPAM store"))?
            .attachments
            .len();
        let pools_left = !self.cluster.pools.state().is_empty();
        if attached > 0 && pools_left {
            let waiting = format!(
                "{attached} pod interfaces still hold sinew addresses on this node: the conflist, plugin, routes and VXLAN stay until they are deleted (no new pod gets a sinew address)"
            );
            if self.memory.published.as_deref() != Some(waiting.as_str()) {
                info!(node = %self.node(), attached, "waiting for pods to go before cleaning the node");
                self.api
                    .report(&NodeReport {
                        problems: vec![Problem::new(ProblemKind::CleanUpWaiting, waiting.clone())],
                        ..NodeReport::default()
                    })
                    .await?;
                self.memory.published = Some(waiting);
            }
            return Ok(());
        }
        let conf = self
            .conf_dir(network)
            .join(conflist::file_name(&network.spec.cni));
        let bin = self.bin_dir(network).join(PLUGIN_BINARY);
        for file in [&conf, &bin] {
            install::remove_file(file)
                .map_err(Error::files(format!("removing {}", file.display())))?;
        }
        let mut kernel = (self.kernel)()?;
        datapath::remove_all(&mut *kernel)?;
        // The loop stops enforcing; the table goes now, not when the loop next looks.
        self.policy.set_enabled(false);
        kernel.remove_table(nat::TABLE)?;
        kernel.remove_table(sinew_node_lib::nft::policy::TABLE)?;
        info!(node = %self.node(), "node cleaned up: conflist, plugin, routes, VXLAN device and nftables tables removed");
        self.api
            .report(&NodeReport {
                cleaned_up: true,
                ..NodeReport::default()
            })
            .await?;
        self.memory = PassMemory {
            cleaned: true,
            ..PassMemory::default()
        };
        Ok(())
    }
}

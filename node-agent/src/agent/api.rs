//! The agent's writes to the API server: block claims and releases, the Node report and
//! condition, Events and its blocks' `IPBlockUsage`s. No decisions here: the planners made them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use sinew_crds::ip_block::{NODE_LABEL, POOL_LABEL};
use sinew_crds::node::{NODE_STATE_ANNOTATION, NodeReport, Problem, ProblemKind};
use sinew_crds::{Cidr, IPBlock, IPBlockSpec, IPBlockUsage, IPBlockUsageSpec, IPBlockUsageStatus};
use sinew_runtime::node::NodeFacts;

use super::error::Result;
use super::settings::field_manager;
use crate::blocks::Orphan;
use crate::peers::BlockInfo;

/// The API effector of one node's agent.
pub struct ApiWriter {
    client: Client,
    node: String,
    recorder: Recorder,
}

/// How many claims may be refused (409: another node won the block, the cache had not shown
/// it yet) in one search before it gives up for this pass. Blocks the cache shows as claimed
/// cost no attempt: the search skips them (see [`crate::blocks::free_blocks`]).
const CLAIM_CONFLICTS: usize = 256;

impl ApiWriter {
    pub fn new(client: Client, node: &str) -> ApiWriter {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "sinew-node".into(),
                instance: Some(node.to_string()),
            },
        );
        ApiWriter {
            client,
            node: node.to_string(),
            recorder,
        }
    }

    fn apply_params(&self) -> PatchParams {
        PatchParams::apply(&field_manager(&self.node))
    }

    fn post_params(&self) -> PostParams {
        PostParams {
            field_manager: Some(field_manager(&self.node)),
            ..PostParams::default()
        }
    }

    /// The `IPBlock` this node creates to claim `block` of `pool`.
    fn block_object(&self, pool: &str, block: &Cidr) -> IPBlock {
        IPBlock {
            metadata: ObjectMeta {
                name: Some(IPBlock::name_for(block)),
                labels: Some(BTreeMap::from([
                    (NODE_LABEL.to_string(), self.node.clone()),
                    (POOL_LABEL.to_string(), pool.to_string()),
                ])),
                ..ObjectMeta::default()
            },
            spec: IPBlockSpec {
                pool: pool.to_string(),
                cidr: block.to_string(),
                node: self.node.clone(),
            },
        }
    }

    /// Creates the `IPBlock` of the first unclaimed block of `cidr`, starting at an offset
    /// derived from the node name so that nodes racing for blocks mostly try different ones.
    /// A 409 means another node won that block: try the next. `None`: nothing left (every
    /// block of the pool was looked at).
    pub async fn claim(
        &self,
        pool: &str,
        cidr: &Cidr,
        size: u8,
        blocks: &[BlockInfo],
        taken: &BTreeSet<String>,
    ) -> Result<Option<Cidr>> {
        let total = cidr.block_count(size);
        if total == 0 {
            return Ok(None);
        }
        let start = u128::from(name_hash(&self.node)) % total;
        let api: Api<IPBlock> = Api::all(self.client.clone());
        let mut conflicts = 0;
        for block in crate::blocks::free_blocks(cidr, size, start, blocks) {
            let name = IPBlock::name_for(&block);
            // An IPBlock of that name the trust checks refused (it is still taken).
            if taken.contains(&name) {
                continue;
            }
            if conflicts >= CLAIM_CONFLICTS {
                return Err(super::error::Error::Node(format!(
                    "{conflicts} claims of pool {pool} were refused because other nodes had just claimed those blocks; trying again next pass"
                )));
            }
            match api
                .create(&self.post_params(), &self.block_object(pool, &block))
                .await
            {
                Ok(_) => return Ok(Some(block)),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Ours already (the watch lags behind an earlier claim)? Then it is claimed.
                    if let Ok(existing) = api.get(&name).await
                        && existing.spec.node == self.node
                        && existing.spec.cidr == block.to_string()
                    {
                        return Ok(Some(block));
                    }
                    conflicts += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Claims an orphaned block again under its own name; a problem when another node owns
    /// it by now (`BlockLost`) or the claim fails.
    pub async fn reassert(&self, orphan: &Orphan) -> Option<Problem> {
        let Orphan {
            block,
            pool,
            addresses,
            ..
        } = orphan;
        let api: Api<IPBlock> = Api::all(self.client.clone());
        let name = IPBlock::name_for(block);
        match api
            .create(&self.post_params(), &self.block_object(pool, block))
            .await
        {
            Ok(_) => {
                tracing::warn!(node = %self.node, pool = %pool, block = %block, addresses, "IPBlock was deleted while pods here hold its addresses: claimed it again");
                None
            }
            Err(kube::Error::Api(e)) if e.code == 409 => match api.get(&name).await {
                Ok(other) if other.spec.node != self.node => {
                    Some(crate::blocks::lost_problem(orphan, &other.spec.node))
                }
                _ => None,
            },
            Err(e) => Some(Problem::new(
                ProblemKind::BlockClaimFailed,
                format!(
                    "re-claiming {block} (pool {pool}, {addresses} addresses in use here): {e}"
                ),
            )),
        }
    }

    /// Deletes the `IPBlock` of a block given back (gone already is fine). With `uid` (the
    /// object the agent read) as a precondition: a block deleted and claimed again meanwhile
    /// is another object, and stays.
    pub async fn release(&self, block: &Cidr, uid: Option<String>) -> Result<()> {
        let api: Api<IPBlock> = Api::all(self.client.clone());
        let params = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&IPBlock::name_for(block), &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies this agent's annotations on its Node.
    pub async fn annotate(&self, annotations: &BTreeMap<String, String>) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node, "annotations": annotations},
        });
        nodes
            .patch(&self.node, &self.apply_params(), &Patch::Apply(&patch))
            .await?;
        Ok(())
    }

    /// Publishes only the report (clean-up states).
    pub async fn report(&self, report: &NodeReport) -> Result<()> {
        self.annotate(&BTreeMap::from([(
            NODE_STATE_ANNOTATION.to_string(),
            report.to_annotation(),
        )]))
        .await
    }

    /// Sets the Node's `NetworkUnavailable` condition to False (the node serves pods).
    pub async fn network_available(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now = k8s_openapi::jiff::Timestamp::now();
        let condition = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node},
            "status": {"conditions": [{
                "type": "NetworkUnavailable", "status": "False", "reason": "SinewIsUp",
                "message": "sinew installed the CNI configuration and programmed the routes of this node",
                "lastTransitionTime": now.to_string(), "lastHeartbeatTime": now.to_string(),
            }]},
        });
        nodes
            .patch_status(
                &self.node,
                &self.apply_params(),
                &Patch::Strategic(&condition),
            )
            .await?;
        Ok(())
    }

    /// Records an Event on the Node.
    pub async fn event(&self, node: &NodeFacts, event: &Event) -> Result<()> {
        self.recorder
            .publish(event, &node.object_ref(&()))
            .await
            .map_err(Into::into)
    }

    /// Creates (server-side apply) the `IPBlockUsage` of `block`, owned by it so that the
    /// garbage collector deletes it with the block.
    pub async fn create_usage(&self, block: &IPBlock) -> Result<()> {
        let api: Api<IPBlockUsage> = Api::all(self.client.clone());
        let name = block.name_any();
        let owner = block.controller_owner_ref(&()).map(|mut r| {
            // The block's deletion is never held up by its usage.
            r.block_owner_deletion = None;
            r
        });
        let patch = json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
            "metadata": {"name": name, "ownerReferences": owner.into_iter().collect::<Vec<_>>()},
            "spec": IPBlockUsageSpec::of(&block.spec),
        });
        api.patch(&name, &self.apply_params(), &Patch::Apply(&patch))
            .await?;
        Ok(())
    }

    /// Writes one block's allocations into the status of its `IPBlockUsage`.
    pub async fn usage_status(&self, name: &str, status: &IPBlockUsageStatus) -> Result<()> {
        let api: Api<IPBlockUsage> = Api::all(self.client.clone());
        let patch = json!({
            "apiVersion": "sinew.dev/v1alpha1", "kind": "IPBlockUsage",
            "metadata": {"name": name},
            "status": status,
        });
        api.patch_status(name, &self.apply_params(), &Patch::Apply(&patch))
            .await?;
        Ok(())
    }
}

/// The Event for where the runtime's choice of conflist stands: a Warning when another file
/// wins over ours (sinew never renames or deletes it), Normal otherwise.
pub fn conflist_event(ours: &str, chosen: &str, shadowing: &[String]) -> Event {
    if chosen == ours {
        Event {
            type_: EventType::Normal,
            reason: "ConflistInstalled".into(),
            note: Some(format!("{ours} installed; the runtime loads it")),
            action: "Install".into(),
            secondary: None,
        }
    } else {
        Event {
            type_: EventType::Warning,
            reason: "ForeignConflistWins".into(),
            note: Some(format!(
                "the container runtime loads {chosen}, not {ours}: files sorting before it ({}) shadow sinew; sinew never renames or deletes other vendors' files, lower cni.confPriority or remove them",
                shadowing.join(", ")
            )),
            action: "Install".into(),
            secondary: None,
        }
    }
}

/// FNV-1a of a node name: where its block search starts.
fn name_hash(name: &str) -> u64 {
    sinew_node_lib::consts::fnv1a(name.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_search_starts_differ_between_nodes() {
        assert_ne!(name_hash("node-a") % 64, name_hash("node-b") % 64);
    }

    #[test]
    fn a_shadowed_conflist_is_a_warning_naming_the_winner() {
        let e = conflist_event(
            "10-sinew.conflist",
            "05-x.conflist",
            &["05-x.conflist".into()],
        );
        assert_eq!(e.type_, EventType::Warning);
        assert!(
            e.note
                .unwrap()
                .contains("loads 05-x.conflist, not 10-sinew.conflist")
        );
        let e = conflist_event("10-sinew.conflist", "10-sinew.conflist", &[]);
        assert_eq!(e.type_, EventType::Normal);
    }
}

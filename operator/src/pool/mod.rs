//! The `IPPool` reconciler: what the schema cannot check (overlap with other pools, Service
//! CIDRs and node addresses), status aggregated from the pool's `IPBlock`s and the nodes'
//! reports, and a finalizer that keeps a pool while addresses of it are still in use.
//!
//! This module is the reconcile entry and its wiring; the decisions are pure and live beside
//! it: [`conflict`], [`capacity`], [`mode_plan`], [`status`], [`affected`] (the watch
//! mappers). The API effects are here, in [`drain`] (a deleted pool) and in [`departed`] (the
//! blocks of nodes that are gone).

pub mod affected;
pub mod capacity;
pub mod conflict;
pub mod departed;
pub mod drain;
#[cfg(test)]
mod fixtures;
pub mod mode_plan;
pub mod pacing;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use sinew_crds::node::ProblemKind;
use sinew_crds::{IPPool, IPPoolStatus};

use crate::context::{Context, Error, apply_status, ensure_finalizer};

/// Reconciles one `IPPool`.
pub async fn reconcile(pool: Arc<IPPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pool.meta().deletion_timestamp.is_some() {
        return drain::drain(&pool, &ctx).await;
    }
    let name = pool.name_any();
    let blocks = ctx.blocks.state();
    let api: Api<IPPool> = Api::all(ctx.client.clone());
    ensure_finalizer(&api, pool.as_ref()).await?;
    let waiting = departed::release_blocks_of_departed_nodes(&pool, &ctx).await?;
    let nodes = ctx.nodes.state();
    let found = conflict::conflict(
        &pool,
        &ctx.pools.state(),
        &conflict::service_cidrs(&ctx.service_cidrs.state()),
        &conflict::addresses_of_nodes(&nodes),
    );
    let fixed_mtu = ctx
        .networks
        .get(&ObjectRef::new(sinew_crds::CLUSTER_NETWORK_NAME))
        .and_then(|n| n.spec.fixed_mtu());
    let usage = ctx.usage_of(blocks.iter().filter(|b| b.spec.pool == name));
    let mut st = status::status(&pool, &blocks, &usage, &nodes, found.as_ref(), fixed_mtu);
    let rate = ctx
        .usage
        .record(&name, std::time::Instant::now(), st.allocated.unwrap_or(0));
    let was_nearly_exhausted = pool.status.as_ref().is_some_and(capacity::nearly_exhausted);
    if let Some(note) = capacity::forecast_exhaustion(&name, &mut st, rate, was_nearly_exhausted) {
        let event = Event {
            type_: EventType::Warning,
            reason: ProblemKind::PoolNearlyExhausted.to_string(),
            note: Some(note),
            action: "Allocate".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
            tracing::warn!(pool = %name, error = %e, "recording an Event failed");
        }
    }
    ctx.metrics.pool(
        &name,
        Some(crate::http::PoolUsage {
            capacity: st.capacity.unwrap_or(0),
            allocated: st.allocated.unwrap_or(0),
            blocks: st.blocks.unwrap_or(0),
        }),
    );
    // Counts alone are paced: every agent receives every write of a pool's status.
    let now = std::time::Instant::now();
    if let Some(wait) = ctx
        .status_writes
        .wait(&name, pool.status.as_ref(), &st, now)
    {
        return Ok(Action::requeue(wait));
    }
    write_status(&pool, &ctx, &st).await?;
    ctx.status_writes
        .wrote(&name, pool.status.as_ref(), &st, now);
    Ok(Action::requeue(Duration::from_secs(if waiting {
        3
    } else {
        30
    })))
}

/// Writes `status` as the pool's status unless it is unchanged (see [`apply_status`]).
async fn write_status(pool: &IPPool, ctx: &Context, status: &IPPoolStatus) -> Result<(), Error> {
    apply_status::<IPPool, _>(ctx, &pool.name_any(), pool.status.as_ref(), status).await
}

//! The policy loop: on every change policy reads (a pod, a namespace, a policy, this node's
//! pod interfaces), compile the node's plan, render its table and bring the kernel's in line
//! by one batch of the differences (the whole table only when it is missing or an update was
//! refused). It runs beside the passes, so a policy edit costs a compile and a small batch,
//! never a pass. What it did is shared with the passes for the node's report.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sinew_crds::node::{PolicyReport, Problem, ProblemKind};
use sinew_node_lib::ipam;
use sinew_node_lib::netlink::nftables::{NftError, Nftables};
use sinew_node_lib::nft::Table;
use sinew_node_lib::nft::policy::TABLE;
use sinew_policy::{ObjectKey, World, compile};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::inputs::Inputs;
use super::table::{PodInterface, programmable, render};
use crate::http::Metrics;

/// The kernel side of the loop: sinew's policy table (a fake in tests).
pub trait PolicyKernel {
    fn exists(&mut self) -> Result<bool, NftError>;
    fn replace(&mut self, table: &Table) -> Result<(), NftError>;
    fn update(&mut self, old: &Table, new: &Table) -> Result<(), NftError>;
    fn delete(&mut self) -> Result<(), NftError>;
}

impl<K: PolicyKernel + ?Sized> PolicyKernel for Box<K> {
    fn exists(&mut self) -> Result<bool, NftError> {
        (**self).exists()
    }
    fn replace(&mut self, table: &Table) -> Result<(), NftError> {
        (**self).replace(table)
    }
    fn update(&mut self, old: &Table, new: &Table) -> Result<(), NftError> {
        (**self).update(old, new)
    }
    fn delete(&mut self) -> Result<(), NftError> {
        (**self).delete()
    }
}

/// The node's own nf_tables, over netlink.
pub struct Kernel;

impl PolicyKernel for Kernel {
    fn exists(&mut self) -> Result<bool, NftError> {
        Nftables::new()?.table_exists(TABLE)
    }

    fn replace(&mut self, table: &Table) -> Result<(), NftError> {
        Nftables::new()?.replace_table(table)
    }

    fn update(&mut self, old: &Table, new: &Table) -> Result<(), NftError> {
        Nftables::new()?.update_table(old, new)
    }

    fn delete(&mut self) -> Result<(), NftError> {
        Nftables::new()?.delete_table(TABLE)
    }
}

/// What one programming did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    /// The table changed (and was written).
    pub changed: bool,
    pub report: PolicyReport,
    /// Set elements programmed, and pod interfaces held because their pod is not known yet
    /// (metrics only: they change with pods anywhere).
    pub elements: u32,
    pub held: u32,
    pub problems: Vec<Problem>,
}

/// The table last programmed, and the kernel it goes to.
pub struct Engine<K> {
    kernel: K,
    last: Option<Table>,
    /// Render the drop log's rules (`spec.networkPolicyDropLog`).
    log: bool,
}

impl<K: PolicyKernel> Engine<K> {
    pub fn new(kernel: K) -> Engine<K> {
        Engine {
            kernel,
            last: None,
            log: false,
        }
    }

    /// Whether the table logs what it drops (from the next programming on).
    pub fn set_log(&mut self, on: bool) {
        self.log = on;
    }

    /// Compiles `node`'s plan from `world`, renders it with the node's pod `interfaces`, and
    /// brings the kernel's table in line: by the differences from the table last programmed
    /// when the kernel still holds it, else whole. Never half a table: one batch either way.
    pub fn program(
        &mut self,
        world: &World,
        node: &str,
        interfaces: &[PodInterface],
    ) -> Result<Programmed, NftError> {
        let plan = compile(world, node);
        let ready = programmable(interfaces, world);
        let table = render(&plan, world, &ready, self.log);
        let exists = self.kernel.exists()?;
        let changed = match (&self.last, exists) {
            (Some(last), true) if *last == table => false,
            (Some(last), true) => {
                if let Err(e) = self.kernel.update(last, &table) {
                    warn!(error = %e, "updating the policy table was refused; replacing it whole");
                    self.last = None;
                    self.kernel.replace(&table)?;
                }
                true
            }
            _ => {
                self.last = None;
                self.kernel.replace(&table)?;
                true
            }
        };
        let report = PolicyReport {
            programmed: true,
            classes: (plan.ingress.len() + plan.egress.len()) as u32,
        };
        let elements = plan
            .ingress
            .iter()
            .chain(&plan.egress)
            .map(|c| c.element_count() as u32)
            .sum();
        let held = (interfaces.len() - ready.len()) as u32;
        let problems = plan
            .problems
            .iter()
            .map(|p| {
                Problem::new(
                    ProblemKind::PolicyLimited,
                    format!("{} ({} of pods {})", p.message, p.direction, names(&p.pods)),
                )
                .with_fix("split the policies that select these pods, or narrow their peers and ports (fewer ipBlocks and excepts, port ranges instead of lists)")
            })
            .collect();
        self.last = Some(table);
        Ok(Programmed {
            changed,
            report,
            elements,
            held,
            problems,
        })
    }

    /// Removes sinew's policy table (policy disabled).
    pub fn remove(&mut self) -> Result<bool, NftError> {
        self.last = None;
        if !self.kernel.exists()? {
            return Ok(false);
        }
        self.kernel.delete()?;
        Ok(true)
    }
}

fn names(pods: &[ObjectKey]) -> String {
    let shown: Vec<String> = pods.iter().take(3).map(ToString::to_string).collect();
    match pods.len().saturating_sub(shown.len()) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// This node's pod interfaces, from the IPAM store (each attachment's host veth and pod).
pub fn interfaces(state_dir: &Path) -> std::io::Result<Vec<PodInterface>> {
    let state = ipam::Store::new(state_dir).snapshot()?;
    let mut out: Vec<PodInterface> = state
        .attachments
        .values()
        .map(|a| PodInterface {
            interface: a.host_veth.clone(),
            pod: a
                .pod_namespace
                .as_ref()
                .zip(a.pod_name.as_ref())
                .map(|(ns, name)| ObjectKey::new(ns, name)),
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// What the loop shares with the passes.
#[derive(Debug, Default, Clone, PartialEq)]
struct Shared {
    /// Policy is on and its table has been programmed at least once since.
    ready: bool,
    report: Option<PolicyReport>,
    problems: Vec<Problem>,
}

impl Shared {
    fn acted_on(&self) -> (bool, Option<bool>, &[Problem]) {
        (
            self.ready,
            self.report.as_ref().map(|r| r.programmed),
            &self.problems,
        )
    }
}

/// The passes' handle on the policy loop.
pub struct Policy {
    enabled: watch::Sender<bool>,
    drop_log: watch::Sender<bool>,
    shared: Arc<Mutex<Shared>>,
}

impl Policy {
    /// Starts the loop (idle until policy is enabled: no watch of pods or policies before),
    /// and the drop counters and log beside it.
    pub fn start(l: Loop) -> Policy {
        let (metrics, state_dir) = (l.metrics.clone(), l.state_dir.clone());
        let (policy, on, log) = Policy::start_loop(l);
        tokio::spawn(super::drops::count(metrics, on.clone()));
        tokio::spawn(super::drops::log(on, log, state_dir));
        policy
    }

    /// Starts the loop alone: the enabled and drop-log switches it follows, for the drop
    /// counters and log.
    fn start_loop(l: Loop) -> (Policy, watch::Receiver<bool>, watch::Receiver<bool>) {
        let (enabled, on) = watch::channel(false);
        let (drop_log, log) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared::default()));
        tokio::spawn(run(l, on.clone(), log.clone(), shared.clone()));
        let policy = Policy {
            enabled,
            drop_log,
            shared,
        };
        (policy, on, log)
    }

    /// Test seam: the loop without the drop counters and log (which read the node's own
    /// nf_tables and nflog).
    #[cfg(test)]
    pub(crate) fn start_without_drops(l: Loop) -> Policy {
        Policy::start_loop(l).0
    }

    /// Test seam: policy without its loop (off until enabled; never programmed).
    #[cfg(test)]
    pub(crate) fn without_loop() -> Policy {
        Policy {
            enabled: watch::channel(false).0,
            drop_log: watch::channel(false).0,
            shared: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Turns enforcement on or off (each pass, from the `ClusterNetwork`).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.send_if_modified(|now| {
            let changed = *now != on;
            *now = on;
            changed
        });
    }

    /// Turns the drop log on or off (each pass, from the `ClusterNetwork`).
    pub fn set_drop_log(&self, on: bool) {
        self.drop_log.send_if_modified(|now| {
            let changed = *now != on;
            *now = on;
            changed
        });
    }

    /// Whether new pods may start: policy is off, or its table is in (the first pods of a
    /// node must not start before it).
    pub fn ready(&self) -> bool {
        !*self.enabled.borrow() || self.lock().ready
    }

    /// The report and problems for the node's report (`None` while policy is off).
    pub fn report(&self) -> (Option<PolicyReport>, Vec<Problem>) {
        if !*self.enabled.borrow() {
            return (None, Vec::new());
        }
        let shared = self.lock();
        (
            Some(shared.report.clone().unwrap_or_default()),
            shared.problems.clone(),
        )
    }
}

/// What the loop works with.
pub struct Loop {
    pub client: kube::Client,
    /// Where sinew's policy table goes.
    pub kernel: Box<dyn PolicyKernel + Send>,
    pub node: String,
    pub state_dir: PathBuf,
    /// Changes of the IPAM store (a pod interface added or removed).
    pub local: Arc<Notify>,
    /// Whether `local` is woken (an inotify watch runs); else the store is polled.
    pub local_watched: bool,
    /// The passes' wake-up, when what they read of the loop changes (the table in for the
    /// first time lets the conflist in; the report changes).
    pub pass: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

/// The loop (see the module's documentation).
async fn run(
    l: Loop,
    mut on: watch::Receiver<bool>,
    mut log: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
) {
    let Loop {
        client,
        kernel,
        node,
        state_dir,
        local,
        local_watched,
        pass,
        metrics,
    } = l;
    // Without the watch, a new pod interface is found by reading the store this often.
    let idle = if local_watched {
        Duration::from_secs(30)
    } else {
        Duration::from_millis(500)
    };
    let wake = Arc::new(Notify::new());
    let mut inputs: Option<Inputs> = None;
    let mut engine = Engine::new(kernel);
    // Changes what the passes read: wakes one when what they act on changed (the table in for
    // the first time, programmed or not, the problems), not for a new count of classes (a
    // policy flapping must not make every node write its report as often).
    let set = |f: &dyn Fn(&mut Shared)| {
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let before = s.clone();
        f(&mut s);
        if s.acted_on() != before.acted_on() {
            pass.notify_one();
        }
    };
    // What the last run was woken by: a change elsewhere in the cluster is programmed only
    // when it changed what the compiler reads.
    let mut elsewhere = false;
    loop {
        let last_run = Instant::now();
        let enabled = *on.borrow_and_update();
        engine.set_log(*log.borrow_and_update());
        if enabled {
            let inputs = match &mut inputs {
                Some(inputs) => inputs,
                None => {
                    let mut started = Inputs::watch(&client, &node, &wake, &metrics);
                    if let Err(e) = started.synced().await {
                        warn!(error = %e, "the watches NetworkPolicy needs ended; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    info!(node = %node, "NetworkPolicy enabled: pods, namespaces and policies watched");
                    elsewhere = false;
                    inputs.insert(started)
                }
            };
            let changed = inputs.update();
            if changed || !elsewhere {
                let started = Instant::now();
                let outcome = interfaces(&state_dir)
                    .map_err(|e| format!("reading the IPAM store: {e}"))
                    .and_then(|ifs| {
                        engine
                            .program(inputs.world(), &node, &ifs)
                            .map_err(|e| format!("programming table inet {TABLE}: {e}"))
                    });
                match outcome {
                    Ok(done) => {
                        let took = started.elapsed();
                        if done.changed {
                            metrics.policy_applied.inc();
                            metrics.policy_program_us.set(took.as_micros() as i64);
                            debug!(node = %node, classes = done.report.classes, elements = done.elements, held = done.held, took_us = took.as_micros() as u64, "policy table in line");
                        }
                        metrics.policy_classes.set(i64::from(done.report.classes));
                        metrics.policy_elements.set(i64::from(done.elements));
                        metrics.policy_held.set(i64::from(done.held));
                        set(&|s| {
                            s.ready = true;
                            s.report = Some(done.report.clone());
                            s.problems = done.problems.clone();
                        });
                    }
                    Err(e) => {
                        warn!(node = %node, error = %e, "NetworkPolicy not programmed; retrying");
                        set(&|s| {
                            let mut report = s.report.clone().unwrap_or_default();
                            report.programmed = false;
                            s.report = Some(report);
                            s.problems = vec![Problem::new(ProblemKind::PolicyFailed, e.clone())];
                        });
                        elsewhere = false;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
        } else {
            // The watches end: what they held is freed.
            inputs = None;
            match engine.remove() {
                Ok(true) => {
                    info!(node = %node, "NetworkPolicy disabled: table inet {TABLE} removed")
                }
                Ok(false) => {}
                Err(e) => warn!(node = %node, error = %e, "removing table inet {TABLE} failed"),
            }
            set(&|s| *s = Shared::default());
        }
        elsewhere = tokio::select! {
            _ = wake.notified() => true,
            _ = local.notified() => false,
            _ = on.changed() => false,
            _ = log.changed() => false,
            _ = tokio::time::sleep(idle) => false,
        };
        // A change elsewhere in the cluster waits out the interval (changes arriving meanwhile
        // are taken together); one of this node's interfaces does not.
        let since = last_run.elapsed();
        if elsewhere && since < CLUSTER_CHANGES_EVERY {
            tokio::select! {
                _ = tokio::time::sleep(CLUSTER_CHANGES_EVERY - since) => {}
                _ = local.notified() => elsewhere = false,
            }
        }
    }
}

/// Changes elsewhere in the cluster (pods, namespaces, policies) are programmed at most this
/// often: at a large cluster's pod churn a compile per change would keep a core busy. A new
/// pod interface on this node is programmed at once (it passes nothing until then).
const CLUSTER_CHANGES_EVERY: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests;

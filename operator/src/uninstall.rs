//! `sinew-operator uninstall`: what Helm's pre-delete hook runs, while the operator and agents
//! still run.
//!
//! 1. It checks, changing nothing, whether any pod still holds a pod-network address (the
//!    `IPBlock`s' allocations, and the Pods whose address lies in a pool). If one does, it
//!    refuses ([`Error::PodsHoldAddresses`], exit code 3) naming each pod and its node: a pool
//!    cannot drain while its addresses are held, and a node cleaned under a running pod leaves
//!    that pod without the CNI configuration its runtime needs to tear it down.
//! 2. Otherwise it deletes every `IPPool` and waits until they are gone (drained, blocks
//!    released),
//! 3. and only then deletes the `ClusterNetwork` and waits until every node is clean and the
//!    DaemonSet gone.
//!
//! A pod that gets an address between the check and the pools' deletion keeps its pool
//! draining: the wait then ends at the timeout naming it, before the `ClusterNetwork` is
//! touched, so every node keeps what that pod's teardown needs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use sinew_crds::cidr::Cidr;
use sinew_crds::{ClusterNetwork, IPBlock, IPPool};
use tracing::{error, info};

use crate::context::delete_if_present;

/// Exit code of `sinew-operator uninstall` when pods still hold addresses (nothing deleted):
/// the chart's hook Job fails at once on it instead of retrying.
pub const EXIT_PODS_HOLD_ADDRESSES: u8 = 3;

/// Why an uninstall did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Delete(#[from] crate::context::Error),
    #[error(
        "{holders}Nothing was deleted; sinew keeps running. Delete or scale down these workloads \
         (CoreDNS too, e.g. `kubectl -n kube-system scale deployment coredns --replicas=0`), \
         then run `helm uninstall` again. (`helm uninstall --no-hooks` skips this check and the \
         clean-up: nodes keep sinew's conflist, plugin and routes, and the ClusterNetwork and \
         IPPools stay behind their finalizers.)"
    )]
    PodsHoldAddresses { holders: Holders },
    #[error("still present after {seconds}s: {waiting}{holders}")]
    Timeout {
        seconds: u64,
        waiting: String,
        holders: Holders,
    },
}

/// A pod (or an allocation without a known pod) holding a pod-network address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `namespace/name`, or `container <id>` when the allocation names no pod.
    pub pod: String,
    pub node: String,
    pub ip: String,
}

/// The pods holding addresses; displayed as a sentence and one line per pod (empty: nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders(pub Vec<Holder>);

impl fmt::Display for Holders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        writeln!(f, "{} pods still hold pod-network addresses:", self.0.len())?;
        for h in &self.0 {
            writeln!(f, "  {} on node {} ({})", h.pod, h.node, h.ip)?;
        }
        Ok(())
    }
}

/// What a remaining object is waiting for: its `Ready` condition's message, if any.
fn waiting_on<K>(
    obj: &K,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> String
where
    K: Resource<DynamicType = ()>,
{
    let why = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!(": {}", c.message))
        .unwrap_or_default();
    format!("{} {}{why}", K::kind(&()), obj.name_any())
}

/// Every pod-network address still held: the blocks' allocations (what keeps a pool
/// draining), then running Pods whose address lies in a pool but that no allocation lists yet
/// (the agents mirror their stores into `IPBlock` status within a second). By address.
pub fn holders(pools: &[IPPool], blocks: &[IPBlock], pods: &[Pod]) -> Vec<Holder> {
    let mut found: BTreeMap<String, Holder> = BTreeMap::new();
    for b in blocks {
        let Some(status) = &b.status else { continue };
        for a in &status.allocations {
            let pod = match (&a.pod_namespace, &a.pod_name) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                _ => format!("container {}", a.container_id),
            };
            found.insert(
                a.ip.clone(),
                Holder {
                    pod,
                    node: b.spec.node.clone(),
                    ip: a.ip.clone(),
                },
            );
        }
        // An agent that counts more than it lists (an older one): say so rather than hide it.
        let unlisted = (status.allocated as usize).saturating_sub(status.allocations.len());
        if unlisted > 0 {
            found.insert(
                format!("~{}", b.spec.cidr),
                Holder {
                    pod: format!("{unlisted} unlisted allocations of block {}", b.spec.cidr),
                    node: b.spec.node.clone(),
                    ip: b.spec.cidr.clone(),
                },
            );
        }
    }
    let cidrs: Vec<Cidr> = pools
        .iter()
        .filter_map(|p| p.spec.parsed_cidr().ok())
        .collect();
    for p in pods {
        let (Some(spec), Some(status)) = (&p.spec, &p.status) else {
            continue;
        };
        if spec.host_network == Some(true)
            || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
        {
            continue;
        }
        let ips = status
            .pod_ips
            .iter()
            .flatten()
            .map(|i| i.ip.clone())
            .chain(status.pod_ip.clone());
        for ip in ips {
            let in_pool = ip
                .parse::<IpAddr>()
                .is_ok_and(|addr| cidrs.iter().any(|c| c.contains(addr)));
            if in_pool && !found.contains_key(&ip) {
                found.insert(
                    ip.clone(),
                    Holder {
                        pod: format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                        node: spec.node_name.clone().unwrap_or_else(|| "?".into()),
                        ip,
                    },
                );
            }
        }
    }
    found.into_values().collect()
}

/// Reads the pools, blocks and pods and says who holds an address.
async fn find_holders(client: &kube::Client) -> Result<Holders, kube::Error> {
    let lp = ListParams::default();
    let pools = Api::<IPPool>::all(client.clone()).list(&lp).await?.items;
    let blocks = Api::<IPBlock>::all(client.clone()).list(&lp).await?.items;
    let pods = if pools.is_empty() {
        Vec::new()
    } else {
        Api::<Pod>::all(client.clone()).list(&lp).await?.items
    };
    Ok(Holders(holders(&pools, &blocks, &pods)))
}

/// How long the check lets addresses that are being given back go: a pod deleted just before
/// `helm uninstall` has had its DEL run, but its agent mirrors the release into `IPBlock` status
/// within about a second.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Checks that no pod holds an address, then deletes every pool, waits until they are gone,
/// deletes the `ClusterNetwork` and waits until it is gone (each wait up to `timeout`).
pub async fn uninstall(client: kube::Client, timeout: Duration) -> Result<(), Error> {
    uninstall_polling(client, timeout, SETTLE, Duration::from_secs(1)).await
}

/// [`uninstall`], refusing only once addresses stay held for `settle`, polling every `poll`.
pub async fn uninstall_polling(
    client: kube::Client,
    timeout: Duration,
    settle: Duration,
    poll: Duration,
) -> Result<(), Error> {
    let start = Instant::now();
    let mut held = find_holders(&client).await?;
    while !held.0.is_empty() && start.elapsed() < settle {
        tokio::time::sleep(poll).await;
        held = find_holders(&client).await?;
    }
    if !held.0.is_empty() {
        for h in &held.0 {
            error!(pod = %h.pod, node = %h.node, ip = %h.ip, "still holds a pod-network address");
        }
        error!(
            pods = held.0.len(),
            "uninstall refused: pods still hold pod-network addresses; nothing was deleted"
        );
        return Err(Error::PodsHoldAddresses { holders: held });
    }
    info!("no pod holds a pod-network address: removing the pools, then the ClusterNetwork");
    let pools: Api<IPPool> = Api::all(client.clone());
    for p in pools.list(&ListParams::default()).await? {
        delete_if_present(&pools, &p.name_any()).await?;
        info!(pool = %p.name_any(), "IPPool deleted");
    }
    wait_gone(&client, &pools, timeout, poll, |p| {
        p.status.as_ref().map_or(&[][..], |s| &s.conditions)
    })
    .await?;
    info!("every IPPool is gone");
    let networks: Api<ClusterNetwork> = Api::all(client.clone());
    for n in networks.list(&ListParams::default()).await? {
        delete_if_present(&networks, &n.name_any()).await?;
        info!(network = %n.name_any(), "ClusterNetwork deleted; nodes are cleaning up");
    }
    wait_gone(&client, &networks, timeout, poll, |n| {
        n.status.as_ref().map_or(&[][..], |s| &s.conditions)
    })
    .await?;
    info!("every sinew object is gone");
    Ok(())
}

/// Waits until `api` lists nothing; on timeout says what each object waits for and who still
/// holds an address.
async fn wait_gone<K>(
    client: &kube::Client,
    api: &Api<K>,
    timeout: Duration,
    poll: Duration,
    conditions: impl Fn(&K) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + fmt::Debug,
{
    let start = Instant::now();
    loop {
        let waiting: Vec<String> = api
            .list(&ListParams::default())
            .await?
            .iter()
            .map(|o| waiting_on(o, conditions(o)))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            let holders = find_holders(client).await.unwrap_or_default();
            let mut waiting = waiting.join("; ");
            if !holders.0.is_empty() {
                waiting.push('\n');
            }
            return Err(Error::Timeout {
                seconds: timeout.as_secs(),
                waiting,
                holders,
            });
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};
    use sinew_crds::{Allocation, IPBlockSpec, IPBlockStatus};

    fn pool(cidr: &str) -> IPPool {
        IPPool::new("p", crate::scenarios::pool_spec(cidr))
    }

    fn pod(ns: &str, name: &str, node: &str, ip: &str, host: bool, phase: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.spec = Some(PodSpec {
            node_name: Some(node.into()),
            host_network: Some(host),
            ..PodSpec::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..PodStatus::default()
        });
        p
    }

    #[test]
    fn allocations_and_pods_in_a_pool_hold_addresses() {
        let mut block = IPBlock::new(
            "10-0-0-0-26",
            IPBlockSpec {
                pool: "p".into(),
                cidr: "10.0.0.0/26".into(),
                node: "n1".into(),
            },
        );
        block.status = Some(IPBlockStatus {
            allocated: 2,
            allocations: vec![
                Allocation {
                    ip: "10.0.0.5".into(),
                    container_id: "c5".into(),
                    interface: "eth0".into(),
                    pod_namespace: Some("kube-system".into()),
                    pod_name: Some("coredns-1".into()),
                    pod_uid: Some("u5".into()),
                    generation: 1,
                },
                Allocation {
                    ip: "10.0.0.6".into(),
                    container_id: "c6".into(),
                    interface: "eth0".into(),
                    pod_namespace: None,
                    pod_name: None,
                    pod_uid: None,
                    generation: 1,
                },
            ],
        });
        let pods = [
            // Listed by its allocation already: once.
            pod(
                "kube-system",
                "coredns-1",
                "n1",
                "10.0.0.5",
                false,
                "Running",
            ),
            // Not mirrored into the block's status yet.
            pod("default", "web", "n2", "10.0.0.70", false, "Running"),
            // Host network, finished, outside every pool: none of them.
            pod(
                "kube-system",
                "kube-proxy",
                "n2",
                "172.18.0.3",
                true,
                "Running",
            ),
            pod("default", "done", "n2", "10.0.0.71", false, "Succeeded"),
            pod(
                "default",
                "elsewhere",
                "n2",
                "192.168.0.9",
                false,
                "Running",
            ),
        ];
        let found = holders(&[pool("10.0.0.0/16")], &[block], &pods);
        let lines: Vec<String> = found
            .iter()
            .map(|h| format!("{} {} {}", h.pod, h.node, h.ip))
            .collect();
        assert_eq!(
            lines,
            [
                "kube-system/coredns-1 n1 10.0.0.5",
                "container c6 n1 10.0.0.6",
                "default/web n2 10.0.0.70",
            ]
        );
        let text = Error::PodsHoldAddresses {
            holders: Holders(found),
        }
        .to_string();
        assert!(
            text.starts_with("3 pods still hold pod-network addresses:\n"),
            "{text}"
        );
        assert!(
            text.contains("  kube-system/coredns-1 on node n1 (10.0.0.5)\n"),
            "{text}"
        );
        assert!(text.contains("Nothing was deleted"), "{text}");
        assert!(text.contains("CoreDNS too"), "{text}");
        assert!(text.contains("helm uninstall --no-hooks"), "{text}");
    }

    #[test]
    fn nothing_holds_an_address_without_allocations_or_pods_in_a_pool() {
        let pods = [pod(
            "kube-system",
            "kube-proxy",
            "n1",
            "172.18.0.3",
            true,
            "Running",
        )];
        assert!(holders(&[pool("10.0.0.0/16")], &[], &pods).is_empty());
        assert_eq!(Holders::default().to_string(), "");
    }
}

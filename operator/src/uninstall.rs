//! `sinew-operator uninstall`: what Helm's pre-delete hook runs, while the operator and agents
//! still run.
//!
//! 1. It checks, changing nothing, whether any pod still holds a pod-network address (the
//!    `IPBlock`s' allocations in their `IPBlockUsage`s, and the Pods whose address lies in a pool). If one does, it
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
//!
//! The hook runs in a small container (64 MiB) on clusters of any size: blocks and pods are
//! read [`PAGE`] at a time (`limit`/`continue`), pods only those that can hold a pod-network
//! address (a field selector) and only the fields the check reads, and the refusal names the
//! first [`NAMED`] holders by address and counts the rest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use kube::core::ObjectList;
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use sinew_crds::cidr::Cidr;
use sinew_crds::{ClusterNetwork, IPBlock, IPBlockUsage, IPBlockUsageSpec, IPPool};
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

/// Holders the refusal names; the others are counted ("and N more").
pub const NAMED: usize = 50;
/// Objects per list request.
pub const PAGE: u32 = 250;

/// The pods holding addresses: the first [`NAMED`] by address, and how many more there are;
/// displayed as a sentence and one line per pod (empty: nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    pub named: Vec<Holder>,
    pub more: usize,
}

impl Holders {
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.more == 0
    }

    pub fn total(&self) -> usize {
        self.named.len() + self.more
    }
}

impl fmt::Display for Holders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return Ok(());
        }
        writeln!(f, "{} pods still hold pod-network addresses:", self.total())?;
        for h in &self.named {
            writeln!(f, "  {} on node {} ({})", h.pod, h.node, h.ip)?;
        }
        if self.more > 0 {
            writeln!(f, "  and {} more", self.more)?;
        }
        Ok(())
    }
}

/// A pod as the check reads it: nothing else of it is decoded or kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAddresses {
    #[serde(default)]
    pub metadata: PodName,
    #[serde(default)]
    pub spec: PodPlacement,
    #[serde(default)]
    pub status: PodIps,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodName {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPlacement {
    pub node_name: Option<String>,
    pub host_network: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodIps {
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodIp {
    #[serde(default)]
    pub ip: String,
}

/// Who holds an address, gathered page by page in bounded memory: every address seen (to count
/// each once) and the first [`NAMED`] holders by address.
#[derive(Debug, Default)]
pub struct Census {
    seen: HashSet<String>,
    named: BTreeMap<String, Holder>,
    pools: Vec<Cidr>,
    /// The blocks, by name: a usage counts only when it agrees with its block.
    blocks: HashMap<String, IPBlockUsageSpec>,
}

impl Census {
    /// A census of the addresses of `pools`.
    pub fn new(pools: &[IPPool]) -> Census {
        Census {
            pools: pools
                .iter()
                .filter_map(|p| p.spec.parsed_cidr().ok())
                .collect(),
            ..Census::default()
        }
    }

    fn add(&mut self, key: String, holder: impl FnOnce() -> Holder) {
        if !self.seen.insert(key.clone()) {
            return;
        }
        let cap_reached = self.named.len() >= NAMED;
        if cap_reached
            && self
                .named
                .last_key_value()
                .is_some_and(|(last, _)| *last < key)
        {
            return;
        }
        self.named.insert(key, holder());
        if self.named.len() > NAMED {
            self.named.pop_last();
        }
    }

    /// The blocks (read before their usages).
    pub fn blocks(&mut self, blocks: &[IPBlock]) {
        self.blocks.extend(
            blocks
                .iter()
                .map(|b| (b.name_any(), IPBlockUsageSpec::of(&b.spec))),
        );
    }

    /// The blocks' allocations (what keeps a pool draining): the usages of the blocks read.
    pub fn usages(&mut self, usages: &[IPBlockUsage]) {
        for u in usages {
            let Some(status) = &u.status else { continue };
            if self.blocks.get(&u.name_any()) != Some(&u.spec) {
                continue;
            }
            for a in &status.allocations {
                self.add(a.ip.clone(), || Holder {
                    pod: match (&a.pod_namespace, &a.pod_name) {
                        (Some(ns), Some(name)) => format!("{ns}/{name}"),
                        _ => format!("container {}", a.container_id),
                    },
                    node: u.spec.node.clone(),
                    ip: a.ip.clone(),
                });
            }
            // An agent that counts more than it lists (an older one): say so rather than hide it.
            let unlisted = (status.allocated as usize).saturating_sub(status.allocations.len());
            if unlisted > 0 {
                self.add(format!("~{}", u.spec.cidr), || Holder {
                    pod: format!("{unlisted} unlisted allocations of block {}", u.spec.cidr),
                    node: u.spec.node.clone(),
                    ip: u.spec.cidr.clone(),
                });
            }
        }
    }

    /// Running Pods whose address lies in a pool but that no allocation lists yet (the agents
    /// mirror their stores into `IPBlockUsage`s within a second).
    pub fn pods(&mut self, pods: &[PodAddresses]) {
        for p in pods {
            if p.spec.host_network == Some(true)
                || matches!(p.status.phase.as_deref(), Some("Succeeded" | "Failed"))
            {
                continue;
            }
            let ips = p
                .status
                .pod_ips
                .iter()
                .map(|i| i.ip.clone())
                .chain(p.status.pod_ip.clone());
            for ip in ips {
                let in_pool = ip
                    .parse::<IpAddr>()
                    .is_ok_and(|addr| self.pools.iter().any(|c| c.contains(addr)));
                if in_pool {
                    self.add(ip.clone(), || Holder {
                        pod: format!("{}/{}", p.metadata.namespace, p.metadata.name),
                        node: p.spec.node_name.clone().unwrap_or_else(|| "?".into()),
                        ip,
                    });
                }
            }
        }
    }

    /// What the census found.
    pub fn holders(self) -> Holders {
        let named: Vec<Holder> = self.named.into_values().collect();
        Holders {
            more: self.seen.len().saturating_sub(named.len()),
            named,
        }
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

/// Every pod-network address still held: the blocks' allocations, then running Pods whose
/// address lies in a pool but that no allocation lists yet. By address.
pub fn holders(
    pools: &[IPPool],
    blocks: &[IPBlock],
    usages: &[IPBlockUsage],
    pods: &[PodAddresses],
) -> Holders {
    let mut census = Census::new(pools);
    census.blocks(blocks);
    census.usages(usages);
    census.pods(pods);
    census.holders()
}

/// Lists every object of `api` page by page, handing each page to `take`.
async fn for_each_page<K>(api: &Api<K>, mut take: impl FnMut(&[K])) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut lp = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&lp).await?;
        take(&page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// The field selector of the pods that can hold a pod-network address.
const POD_NETWORK_PODS: &str =
    "spec.hostNetwork=false,status.phase!=Succeeded,status.phase!=Failed";

/// Reads the pools, then the blocks and pods page by page, and says who holds an address.
async fn find_holders(client: &kube::Client) -> Result<Holders, kube::Error> {
    let pools = Api::<IPPool>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut census = Census::new(&pools);
    for_each_page(&Api::all(client.clone()), |page: &[IPBlock]| {
        census.blocks(page)
    })
    .await?;
    for_each_page(&Api::all(client.clone()), |page: &[IPBlockUsage]| {
        census.usages(page)
    })
    .await?;
    if pools.is_empty() {
        return Ok(census.holders());
    }
    let mut lp = ListParams::default().fields(POD_NETWORK_PODS).limit(PAGE);
    loop {
        let request = kube::core::Request::new("/api/v1/pods")
            .list(&lp)
            .map_err(kube::Error::BuildRequest)?;
        let page: ObjectList<PodAddresses> = client.request(request).await?;
        census.pods(&page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => break,
        }
    }
    Ok(census.holders())
}

/// How long the check lets addresses that are being given back go: a pod deleted just before
/// `helm uninstall` has had its DEL run, but its agent mirrors the release into the block's `IPBlockUsage`
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
    while !held.is_empty() && start.elapsed() < settle {
        tokio::time::sleep(poll).await;
        held = find_holders(&client).await?;
    }
    if !held.is_empty() {
        for h in &held.named {
            error!(pod = %h.pod, node = %h.node, ip = %h.ip, "still holds a pod-network address");
        }
        error!(
            pods = held.total(),
            unnamed = held.more,
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
            if !holders.is_empty() {
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
    use sinew_crds::{Allocation, IPBlockSpec, IPBlockUsageStatus};

    fn pool(cidr: &str) -> IPPool {
        IPPool::new("p", crate::scenarios::pool_spec(cidr))
    }

    fn pod(ns: &str, name: &str, node: &str, ip: &str, host: bool, phase: &str) -> PodAddresses {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "uid": "u", "labels": {"a": "b"}},
            "spec": {"nodeName": node, "hostNetwork": host, "containers": [{"name": "c"}]},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.1"},
        }))
        .unwrap()
    }

    #[test]
    fn allocations_and_pods_in_a_pool_hold_addresses() {
        let block = IPBlock::new(
            "10-0-0-0-26",
            IPBlockSpec {
                pool: "p".into(),
                cidr: "10.0.0.0/26".into(),
                node: "n1".into(),
            },
        );
        let mut usage = IPBlockUsage::new("10-0-0-0-26", IPBlockUsageSpec::of(&block.spec));
        // Another node's usage under the block's name does not count.
        let mut forged = IPBlockUsage::new(
            "10-0-0-0-26",
            IPBlockUsageSpec {
                node: "n9".into(),
                ..IPBlockUsageSpec::of(&block.spec)
            },
        );
        forged.status = Some(IPBlockUsageStatus {
            allocated: 40,
            allocations: Vec::new(),
        });
        usage.status = Some(IPBlockUsageStatus {
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
        let found = holders(&[pool("10.0.0.0/16")], &[block], &[usage, forged], &pods);
        let lines: Vec<String> = found
            .named
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
        let text = Error::PodsHoldAddresses { holders: found }.to_string();
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
        assert!(holders(&[pool("10.0.0.0/16")], &[], &[], &pods).is_empty());
        assert_eq!(Holders::default().to_string(), "");
    }

    #[test]
    fn the_refusal_names_the_first_holders_by_address_and_counts_the_rest() {
        // Pages arrive in any order: the named ones are the lowest addresses all the same.
        let pods: Vec<PodAddresses> = (0..120)
            .rev()
            .map(|i| {
                pod(
                    "shop",
                    &format!("web-{i:03}"),
                    "n1",
                    &format!("10.0.{}.{}", i / 100, i % 100),
                    false,
                    "Running",
                )
            })
            .collect();
        let mut census = Census::new(&[pool("10.0.0.0/16")]);
        for page in pods.chunks(7) {
            census.pods(page);
        }
        // The same address twice counts once.
        census.pods(&pods[..3]);
        let found = census.holders();
        assert_eq!(
            (found.named.len(), found.more, found.total()),
            (NAMED, 70, 120)
        );
        let first: Vec<&str> = found.named.iter().take(2).map(|h| h.ip.as_str()).collect();
        assert_eq!(first, ["10.0.0.0", "10.0.0.1"]);
        let text = found.to_string();
        assert!(text.starts_with("120 pods still hold"), "{text}");
        assert!(text.ends_with("  and 70 more\n"), "{text}");
        assert_eq!(text.lines().count(), 1 + NAMED + 1);
    }
}

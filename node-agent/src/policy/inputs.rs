//! What the node's policy is compiled from: every pod (pruned to what policy reads: labels,
//! addresses, named ports, node, host network, phase), every NetworkPolicy, and the
//! namespaces' labels (from the agent's namespace watch). Each change that policy reads wakes
//! the policy loop; a pod's other status changes (conditions, container states) do not.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use sinew_policy::{NamespaceView, PodView, PolicyView, World};
use sinew_runtime::watch::{Fingerprint, Wake, fingerprint, prune_meta, reflect};
use tokio::sync::Notify;

/// The watched pods, policies and namespaces (metadata only).
pub struct Inputs {
    pub pods: Store<Pod>,
    pub policies: Store<NetworkPolicy>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Inputs {
    /// Starts the watches; a change policy reads wakes `wake`.
    pub fn watch(client: &kube::Client, wake: &Arc<Notify>) -> Inputs {
        let pod_fingerprint: Fingerprint<Pod> =
            Arc::new(|p: &Pod| fingerprint(&p.metadata, &(&p.spec, &p.status)));
        let policy_fingerprint: Fingerprint<NetworkPolicy> =
            Arc::new(|p: &NetworkPolicy| fingerprint(&p.metadata, &p.spec));
        let namespace_fingerprint: Fingerprint<PartialObjectMeta<Namespace>> =
            Arc::new(|ns: &PartialObjectMeta<Namespace>| {
                fingerprint(
                    &ObjectMeta {
                        name: ns.metadata.name.clone(),
                        labels: ns.metadata.labels.clone(),
                        ..ObjectMeta::default()
                    },
                    &(),
                )
            });
        Inputs {
            pods: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                prune_pod,
                Some(Wake {
                    notify: wake.clone(),
                    fingerprint: pod_fingerprint,
                }),
            ),
            policies: reflect(
                Api::all(client.clone()),
                watcher::Config::default(),
                prune_policy,
                Some(Wake {
                    notify: wake.clone(),
                    fingerprint: policy_fingerprint,
                }),
            ),
            // Metadata only: names and labels are all policy reads of a namespace.
            namespaces: reflect(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
                prune_meta,
                Some(Wake {
                    notify: wake.clone(),
                    fingerprint: namespace_fingerprint,
                }),
            ),
        }
    }

    /// Waits until every store holds its initial list.
    pub async fn synced(&self) -> Result<(), String> {
        for (what, ready) in [
            ("pods", self.pods.wait_until_ready().await),
            ("networkpolicies", self.policies.wait_until_ready().await),
            ("namespaces", self.namespaces.wait_until_ready().await),
        ] {
            ready.map_err(|e| format!("watch of {what} ended: {e}"))?;
        }
        Ok(())
    }

    /// The world the compiler reads, as the stores hold it now.
    pub fn world(&self) -> World {
        World::new(
            self.namespaces
                .state()
                .iter()
                .map(|ns| namespace_view(&ns.metadata)),
            self.pods.state().iter().map(|p| PodView::from(p.as_ref())),
            self.policies
                .state()
                .iter()
                .map(|p| PolicyView::from(p.as_ref())),
        )
    }
}

/// A namespace's view from its metadata (the API server labels every namespace with its name;
/// the view adds that label where it is missing).
fn namespace_view(meta: &ObjectMeta) -> NamespaceView {
    NamespaceView::from(&Namespace {
        metadata: ObjectMeta {
            name: meta.name.clone(),
            labels: meta.labels.clone(),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    })
}

/// Keeps of a pod what policy reads: name, namespace, UID and labels; node, host network and
/// the containers' named ports; phase and addresses. A pod is most of the agent's memory with
/// policy on (every pod of the cluster is a possible peer).
pub fn prune_pod(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        labels: meta.labels,
        resource_version: meta.resource_version,
        ..ObjectMeta::default()
    };
    pod.spec = pod.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        host_network: s.host_network,
        containers: s
            .containers
            .into_iter()
            .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
            .map(|c| Container {
                name: c.name,
                ports: c.ports.map(|ports| {
                    ports
                        .into_iter()
                        .filter(|p| p.name.is_some())
                        .map(|p| ContainerPort {
                            name: p.name,
                            protocol: p.protocol,
                            container_port: p.container_port,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..PodStatus::default()
    });
}

/// Keeps of a policy its name, namespace, labels and spec.
pub fn prune_policy(policy: &mut NetworkPolicy) {
    let meta = std::mem::take(&mut policy.metadata);
    policy.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        ..ObjectMeta::default()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u1",
                         "labels": {"app": "web"},
                         "annotations": {"big": "x".repeat(4096)},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "web", "image": "nginx", "env": [{"name": "A", "value": "b"}],
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                           {"containerPort": 9999}]},
                {"name": "sidecar", "image": "envoy"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                       "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    /// Pruning keeps exactly what the compiler reads: the view is the same before and after.
    #[test]
    fn a_pruned_pod_reads_as_the_whole_pod_and_is_small() {
        let whole = pod();
        let mut pruned = whole.clone();
        prune_pod(&mut pruned);
        assert_eq!(PodView::from(&pruned), PodView::from(&whole));
        let size = |p: &Pod| serde_json::to_vec(p).unwrap().len();
        assert!(
            size(&pruned) * 10 < size(&whole),
            "{} of {}",
            size(&pruned),
            size(&whole)
        );
        let view = PodView::from(&pruned);
        assert_eq!(view.named_ports.len(), 1);
        assert_eq!(view.ips.len(), 2);
    }

    #[test]
    fn namespaces_are_labelled_with_their_name() {
        let view = namespace_view(&ObjectMeta {
            name: Some("prod".into()),
            ..ObjectMeta::default()
        });
        assert_eq!(
            view.labels
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("prod")
        );
    }
}

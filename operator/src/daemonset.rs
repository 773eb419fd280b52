//! Renders the node agent DaemonSet from the `ClusterNetwork` (pure).

use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::json;
use sinew_crds::ClusterNetwork;

/// Name of the DaemonSet (and of the agent's ServiceAccount).
pub const NAME: &str = "sinew-node";
/// Pod template annotation carrying the configuration hash: a spec change rolls the agents.
pub const CONFIG_HASH_ANNOTATION: &str = "sinew.dev/config-hash";
/// Where the agent keeps node-local state, on the host.
pub use sinew_crds::node::DEFAULT_STATE_DIR as STATE_DIR;
/// Where the plugin logs, on the host.
pub const LOG_DIR: &str = "/var/log/sinew";

/// Inputs that do not come from the `ClusterNetwork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub namespace: String,
    /// Agent image when the `ClusterNetwork` does not name one.
    pub default_image: String,
}

/// The DaemonSet: `hostNetwork`, only the capabilities netlink and nftables need, the CNI and
/// state directories from the host, `system-node-critical`, tolerating every taint (it must
/// run on NotReady nodes: it is what makes them Ready), rolling 10% at a time.
pub fn render(
    network: &ClusterNetwork,
    settings: &Settings,
) -> Result<DaemonSet, serde_json::Error> {
    let spec = &network.spec;
    let image = spec
        .installer
        .image
        .clone()
        .unwrap_or_else(|| settings.default_image.clone());
    let labels = json!({
        "app.kubernetes.io/name": NAME,
        "app.kubernetes.io/part-of": "sinew",
        "app.kubernetes.io/component": "node-agent",
        "app.kubernetes.io/managed-by": "sinew-operator",
    });
    let mut node_selector = json!({"kubernetes.io/os": "linux"});
    for (k, v) in &spec.installer.node_selector {
        node_selector[k] = json!(v);
    }
    let mut tolerations = vec![json!({"operator": "Exists"})];
    tolerations.extend(spec.installer.tolerations.iter().map(|t| json!(t)));
    let resources = spec.installer.resources.clone().map_or_else(
        || json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}),
        |r| json!(r),
    );
    let host_path = |name: &str, path: &str| json!({"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}});
    let mounts = json!([
        {"name": "cni-conf", "mountPath": spec.cni.conf_dir},
        {"name": "cni-bin", "mountPath": spec.cni.bin_dir},
        {"name": "state", "mountPath": STATE_DIR},
        {"name": "log", "mountPath": LOG_DIR},
        // The runtime mounts the container's own /proc/sys read-only; the host's net sysctls
        // (forwarding) are written here instead. `net` entries resolve against the writer's
        // network namespace, which for this host-network pod is the node's.
        {"name": "proc-sys-net", "mountPath": "/host/proc/sys/net"},
    ]);
    let env = json!([
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "SINEW_STATE_DIR", "value": STATE_DIR},
        {"name": "SINEW_CNI_LOG_FILE", "value": format!("{LOG_DIR}/cni.log")},
        {"name": "SINEW_PLUGIN", "value": "/usr/local/bin/sinew"},
        {"name": "SINEW_SYSCTL_DIR", "value": "/host/proc/sys"},
    ]);
    let security = json!({
        "runAsUser": 0,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
    });
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {CONFIG_HASH_ANNOTATION: spec.config_hash()},
                },
                "spec": {
                    "hostNetwork": true,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "serviceAccountName": NAME,
                    "priorityClassName": "system-node-critical",
                    "terminationGracePeriodSeconds": 10,
                    "nodeSelector": node_selector,
                    "tolerations": tolerations,
                    "initContainers": [{
                        "name": "install-plugin",
                        "image": image,
                        "args": ["install"],
                        "env": [{"name": "SINEW_CNI_BIN_DIR", "value": spec.cni.bin_dir},
                                {"name": "SINEW_PLUGIN", "value": "/usr/local/bin/sinew"}],
                        "volumeMounts": [{"name": "cni-bin", "mountPath": spec.cni.bin_dir}],
                        "securityContext": security,
                    }],
                    "containers": [{
                        "name": "agent",
                        "image": image,
                        "args": ["run"],
                        "env": env,
                        "ports": [{"name": "metrics", "containerPort": 9465, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9465}, "periodSeconds": 5},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 9465}, "periodSeconds": 10, "failureThreshold": 6},
                        "resources": resources,
                        "volumeMounts": mounts,
                        "securityContext": security,
                    }],
                    "volumes": [
                        host_path("cni-conf", &spec.cni.conf_dir),
                        host_path("cni-bin", &spec.cni.bin_dir),
                        host_path("state", STATE_DIR),
                        host_path("log", LOG_DIR),
                        {"name": "proc-sys-net", "hostPath": {"path": "/proc/sys/net", "type": "Directory"}},
                    ],
                },
            },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_crds::ClusterNetworkSpec;

    fn settings() -> Settings {
        Settings {
            namespace: "sinew-system".into(),
            default_image: "ghcr.io/sinew-dev/sinew-node:0.1.0".into(),
        }
    }

    #[test]
    fn renders_a_host_network_critical_daemonset() {
        let cn = ClusterNetwork::new("default", ClusterNetworkSpec::default());
        let ds = render(&cn, &settings()).unwrap();
        let spec = ds.spec;
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        assert_eq!(
            pod.tolerations.unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        let agent = &pod.containers[0];
        assert_eq!(
            agent.image.as_deref(),
            Some("ghcr.io/sinew-dev/sinew-node:0.1.0")
        );
        let caps = agent
            .security_context
            .clone()
            .unwrap()
            .capabilities
            .unwrap();
        assert_eq!(
            caps.add.unwrap(),
            vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]
        );
        let rolling = spec.update_strategy.unwrap().rolling_update.unwrap();
        assert_eq!(
            rolling.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("10%".into()))
        );
    }

    #[test]
    fn a_spec_change_changes_the_config_hash() {
        let a = ClusterNetwork::new("default", ClusterNetworkSpec::default());
        let mut b = a.clone();
        b.spec.vxlan.port = 8472;
        let hash = |cn: &ClusterNetwork| {
            render(cn, &settings())
                .unwrap()
                .spec
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&a.clone()));
    }
}

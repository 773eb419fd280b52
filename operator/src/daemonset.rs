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
/// The agent's probe listener (`SINEW_PROBE_ADDR`, on loopback: pods cannot reach it).
pub const PROBE_PORT: u16 = 9464;
/// The agent's metrics listener (on the Node's address).
pub const METRICS_PORT: u16 = 9465;
/// Where the plugin logs, on the host.
pub const LOG_DIR: &str = "/var/log/sinew";

/// Inputs that do not come from the `ClusterNetwork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub namespace: String,
    /// Agent image when the `ClusterNetwork` does not name one.
    pub default_image: String,
    /// Secrets (in `namespace`) the kubelet pulls the agent image with (the chart's
    /// `image.pullSecrets`).
    pub pull_secrets: Vec<String>,
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
        // No memory limit (decision 99): with NetworkPolicy on, an agent holds every pod of
        // the cluster (about 230 MiB at 150,000 pods), and one killed for memory stops
        // programming its node.
        || json!({"requests": {"cpu": "50m", "memory": "64Mi"}}),
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
        {"name": "SINEW_PROBE_ADDR", "value": format!("127.0.0.1:{PROBE_PORT}")},
        {"name": "SINEW_METRICS_ADDR", "value": format!("node:{METRICS_PORT}")},
    ]);
    // The kubelet probes the agent on loopback (the pod shares the node's network namespace),
    // where pods cannot reach and no flood of the metrics port can starve the probes. The
    // startup probe gives the first sync of every watch five minutes (an API server slow after
    // an outage answers every agent's lists at once); liveness takes over once it passed.
    let probe = |path: &str, period: i32, failures: i32| {
        json!({
            "httpGet": {"host": "127.0.0.1", "path": path, "port": PROBE_PORT},
            "periodSeconds": period, "timeoutSeconds": 1, "failureThreshold": failures,
        })
    };
    let security = json!({
        "runAsUser": 0,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
    });
    let mut daemonset = json!({
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
                        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
                        "startupProbe": probe("/healthz", 5, 60),
                        "readinessProbe": probe("/readyz", 5, 3),
                        "livenessProbe": probe("/healthz", 10, 6),
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
    });
    // Only when there are any: an empty list would change the pod template (and roll every
    // agent) for nothing.
    if !settings.pull_secrets.is_empty() {
        daemonset["spec"]["template"]["spec"]["imagePullSecrets"] = settings
            .pull_secrets
            .iter()
            .map(|name| json!({"name": name}))
            .collect();
    }
    serde_json::from_value(daemonset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinew_crds::ClusterNetworkSpec;

    fn settings() -> Settings {
        Settings {
            namespace: "sinew-system".into(),
            default_image: "ghcr.io/sinew-dev/sinew-node:0.1.0".into(),
            pull_secrets: Vec::new(),
        }
    }

    #[test]
    fn pull_secrets_reach_the_pod_template() {
        let cn = ClusterNetwork::new("default", ClusterNetworkSpec::default());
        let none = render(&cn, &settings()).unwrap();
        let secrets = |ds: DaemonSet| -> Vec<String> {
            ds.spec
                .template
                .spec
                .unwrap()
                .image_pull_secrets
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        assert!(secrets(none).is_empty());
        let with = Settings {
            pull_secrets: vec!["regcred".into(), "mirror".into()],
            ..settings()
        };
        assert_eq!(secrets(render(&cn, &with).unwrap()), ["regcred", "mirror"]);
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
    fn probes_go_to_the_loopback_probe_listener_and_a_startup_probe_covers_the_first_sync() {
        let cn = ClusterNetwork::new("default", ClusterNetworkSpec::default());
        let pod = render(&cn, &settings())
            .unwrap()
            .spec
            .template
            .spec
            .unwrap();
        let agent = &pod.containers[0];
        let env: Vec<(String, Option<String>)> = agent
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect();
        assert!(
            env.contains(&(
                "SINEW_PROBE_ADDR".into(),
                Some(format!("127.0.0.1:{PROBE_PORT}"))
            )),
            "{env:?}"
        );
        let probes = [
            ("startup", agent.startup_probe.clone(), "/healthz"),
            ("liveness", agent.liveness_probe.clone(), "/healthz"),
            ("readiness", agent.readiness_probe.clone(), "/readyz"),
        ];
        for (which, probe, path) in probes {
            let probe = probe.unwrap_or_else(|| panic!("no {which} probe"));
            let get = probe.http_get.clone().unwrap();
            assert_eq!(get.host.as_deref(), Some("127.0.0.1"), "{which}");
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(PROBE_PORT.into()),
                "{which}"
            );
            assert_eq!(get.path.as_deref(), Some(path), "{which}");
        }
        // The start (the first list of every watch, against a slow API server) gets minutes,
        // not the liveness probe's minute.
        let startup = agent.startup_probe.clone().unwrap();
        let budget = startup.period_seconds.unwrap() * startup.failure_threshold.unwrap();
        assert!(budget >= 300, "{budget} s");
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

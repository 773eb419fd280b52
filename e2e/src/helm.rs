//! Installing sinew the way users do: the real `helm` (built from its pinned module) and the
//! chart in `charts/sinew`, then the operator and agents running under the identities the
//! chart creates (service-account tokens from the TokenRequest API; no kubelet runs here, so
//! the test plays its part: it requests the tokens a kubelet would mount).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::ControlPlane;
use crate::process::Supervised;
use crate::tools::repo_root;

/// Namespace the chart is installed into.
pub const NAMESPACE: &str = "sinew-system";
/// Release name.
pub const RELEASE: &str = "sinew";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `helm` against one control plane, with its own cache and config directories.
pub struct Helm {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Helm {
    pub fn new(cp: &ControlPlane) -> Result<Helm, crate::Error> {
        Ok(Helm {
            bin: cp.tools().path("helm")?,
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            home: cp.dir().join("helm"),
        })
    }

    /// The chart's directory.
    pub fn chart() -> String {
        repo_root().join("charts/sinew").display().to_string()
    }

    /// Runs `helm args…`; stdout on success, stdout and stderr in the error otherwise.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .output()
            .map_err(|e| format!("running helm: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "helm {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `helm install sinew charts/sinew -n sinew-system --create-namespace` plus `extra`.
    pub fn install(&self, extra: &[&str]) -> Result<String, String> {
        let chart = Helm::chart();
        let mut args = vec![
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--create-namespace",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `helm upgrade sinew charts/sinew -n sinew-system` plus `extra`.
    pub fn upgrade(&self, extra: &[&str]) -> Result<String, String> {
        let chart = Helm::chart();
        let mut args = vec!["upgrade", RELEASE, &chart, "--namespace", NAMESPACE];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

/// Where an API server is and the CA that signed its certificate.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub ca: PathBuf,
}

impl Endpoint {
    pub fn of(cp: &ControlPlane) -> Endpoint {
        Endpoint {
            url: cp.url().to_string(),
            ca: cp.dir().join("ca.crt"),
        }
    }
}

/// A kubeconfig file at `path` authenticating with `token`.
fn token_kubeconfig(api: &Endpoint, token: &str, path: &Path) -> Result<(), BoxError> {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: '{}', certificate-authority: '{}'}}}}]\nusers: [{{name: u, user: {{token: '{token}'}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
        api.url,
        api.ca.display()
    );
    std::fs::write(path, yaml)?;
    Ok(())
}

/// Requests a token of service account `sa` (bound to `pod` when given, as the kubelet does
/// for a pod's projected token) and writes a kubeconfig using it to `path`.
pub async fn service_account_kubeconfig(
    api: &Endpoint,
    client: &kube::Client,
    sa: &str,
    pod: Option<&Pod>,
    path: &Path,
) -> Result<(), BoxError> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["https://kubernetes.default.svc".into()]),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
            }),
            expiration_seconds: Some(3600 * 6),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let token = sas
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("token for service account {sa}: {e}"))?
        .status
        .and_then(|s| s.token)
        .ok_or("no token in the TokenRequest status")?;
    token_kubeconfig(api, &token, path)
}

/// The agent's identity on `node`: a Pod object of the agent on that node (what the
/// DaemonSet would create) and a token bound to it, so the API server knows the node
/// (`authentication.kubernetes.io/node-name`) and the chart's admission policy applies.
pub async fn agent_kubeconfig(
    api: &Endpoint,
    client: &kube::Client,
    node: &str,
    path: &Path,
) -> Result<(), BoxError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let name = format!("sinew-node-{node}");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/name": "sinew-node"}},
                     "spec": {"nodeName": node, "serviceAccountName": "sinew-node",
                              "containers": [{"name": "agent", "image": "sinew-node"}]}});
    let pod = pods
        .patch(&name, &PatchParams::apply("sinew-e2e"), &Patch::Apply(&pod))
        .await
        .map_err(|e| format!("agent pod object for {node}: {e}"))?;
    service_account_kubeconfig(api, client, "sinew-node", Some(&pod), path).await
}

/// Starts `sinew-operator` as a process the way the chart's Deployment runs it: with a token
/// of the `sinew-operator` service account and the literal environment of the Deployment
/// the chart installed (only the metrics address is moved off the shared host port).
pub async fn start_operator(
    cp: &ControlPlane,
    client: &kube::Client,
    identity: &str,
) -> Result<Supervised, BoxError> {
    let kubeconfig = cp.dir().join(format!("operator-{identity}.kubeconfig"));
    service_account_kubeconfig(
        &Endpoint::of(cp),
        client,
        "sinew-operator",
        None,
        &kubeconfig,
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deployment = deployments
        .get("sinew-operator")
        .await
        .map_err(|e| format!("the chart's operator Deployment: {e}"))?;
    let env: Vec<(String, String)> = deployment
        .spec
        .template
        .spec
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.env)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect();
    let bin = crate::plugin::workspace_binary("sinew-operator", "sinew-operator");
    let mut cmd = Command::new(bin);
    cmd.envs(env)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("POD_NAME", identity)
        .env("SINEW_METRICS_ADDR", "127.0.0.1:0")
        // Replicas share the host's loopback here: any free port for the probes.
        .env("SINEW_PROBE_ADDR", "127.0.0.1:0");
    // SINEW_E2E_OPERATOR_LOG overrides the chart's log level when debugging a test.
    if let Ok(level) = std::env::var("SINEW_E2E_OPERATOR_LOG") {
        cmd.env("SINEW_LOG", level);
    }
    Ok(Supervised::spawn(
        &format!("sinew-operator {identity}"),
        cmd,
        &cp.dir().join(format!("operator-{identity}.log")),
    )?)
}

/// A client with the identity in kubeconfig `path`.
pub async fn client_from(path: &Path) -> Result<kube::Client, BoxError> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Whether `client`'s identity may `verb` `group/resource` (in `namespace`, or cluster-wide),
/// asked of the API server itself (a SelfSubjectAccessReview, what `kubectl auth can-i` does).
pub async fn can_i(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Result<bool, BoxError> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(Into::into),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

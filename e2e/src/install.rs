//! Installing sinew's CRDs into a test control plane, the way the chart and operator do.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// Server-side applies every sinew CRD and waits until the API server reports each one
/// `Established` (its schema accepted and its endpoints served).
pub async fn install_crds(client: &kube::Client) -> Result<Vec<String>, String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("sinew-e2e").force();
    let mut names = Vec::new();
    for crd in sinew_crds::generate::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|e| format!("applying CRD {name}: {e}"))?;
        names.push(name);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in &names {
        loop {
            let crd = api
                .get(name)
                .await
                .map_err(|e| format!("reading CRD {name}: {e}"))?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            if conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "CRD {name} not Established after 30s: {conditions:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(names)
}

//! Installing sinew's CRDs into a test control plane, the way the chart and operator do.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use serde::Deserialize;

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

/// Server-side applies every document of a multi-document YAML manifest (kinds resolved
/// through API discovery), in order.
pub async fn apply_manifest(client: &kube::Client, yaml: &str) -> Result<Vec<String>, String> {
    apply_manifest_with(client, yaml, false).await
}

/// The objects of a multi-document YAML manifest (empty documents skipped).
fn parse_manifest(yaml: &str) -> Result<Vec<DynamicObject>, String> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| format!("YAML: {e}"))?;
        if !value.is_null() {
            objects.push(serde_yaml::from_value(value).map_err(|e| format!("object: {e}"))?);
        }
    }
    Ok(objects)
}

/// The API of `obj`'s kind (resolved through discovery), its kind and its name.
fn api_for(
    client: &kube::Client,
    discovery: &Discovery,
    obj: &DynamicObject,
) -> Result<(Api<DynamicObject>, String, String), String> {
    let types = obj
        .types
        .clone()
        .ok_or("a document without apiVersion/kind")?;
    let gvk = kube::api::GroupVersionKind::try_from(&types).map_err(|e| e.to_string())?;
    let (resource, caps) = discovery
        .resolve_gvk(&gvk)
        .ok_or_else(|| format!("{} {} is not served", types.api_version, types.kind))?;
    let api = match (&caps.scope, &obj.metadata.namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    };
    Ok((
        api,
        types.kind,
        obj.metadata.name.clone().unwrap_or_default(),
    ))
}

async fn discover(client: &kube::Client) -> Result<Discovery, String> {
    Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| format!("API discovery: {e}"))
}

/// [`apply_manifest`], optionally as a server-side dry run (validated and defaulted by the API
/// server, admission included, nothing stored).
pub async fn apply_manifest_with(
    client: &kube::Client,
    yaml: &str,
    dry_run: bool,
) -> Result<Vec<String>, String> {
    let objects = parse_manifest(yaml)?;
    let discovery = discover(client).await?;
    let mut params = PatchParams::apply("sinew-e2e").force();
    params.dry_run = dry_run;
    let mut applied = Vec::new();
    for obj in objects {
        let (api, kind, name) = api_for(client, &discovery, &obj)?;
        api.patch(&name, &params, &Patch::Apply(&obj))
            .await
            .map_err(|e| format!("applying {kind} {name}: {e}"))?;
        applied.push(format!("{kind}/{name}"));
    }
    Ok(applied)
}

/// Deletes every object of a multi-document YAML manifest (missing ones are fine).
pub async fn delete_manifest(client: &kube::Client, yaml: &str) -> Result<(), String> {
    let objects = parse_manifest(yaml)?;
    let discovery = discover(client).await?;
    for obj in objects {
        let (api, kind, name) = api_for(client, &discovery, &obj)?;
        match api.delete(&name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("deleting {kind} {name}: {e}")),
        }
    }
    Ok(())
}

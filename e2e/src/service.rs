//! The service cluster: clients, the project's CRDs, throw-away namespaces.

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::env::{EnvFile, random_hex};
use crate::poll::{DEFAULT_TIMEOUT, poll_until};

/// Field manager of objects the tests and the benchmark write.
pub const FIELD_MANAGER: &str = "e2e";

/// Create parameters naming the e2e field manager.
pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Patch parameters (merge or JSON patches) naming the e2e field manager.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Admin client of the service cluster.
pub async fn client(env: &EnvFile) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&env.service_kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The project's CRDs, parsed from `crds/*.yaml`.
pub fn project_crds() -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let dir = crate::checkout::root()?.join("crds");
    let mut crds = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let yaml = std::fs::read_to_string(&path)?;
            crds.push(
                serde_saphyr::from_str(&yaml)
                    .with_context(|| format!("parsing {}", path.display()))?,
            );
        }
    }
    Ok(crds)
}

/// Applies the project's CRDs and waits until each is established.
pub async fn apply_project_crds(client: &Client) -> anyhow::Result<()> {
    for crd in project_crds()? {
        apply_crd(client, &crd).await?;
    }
    Ok(())
}

/// Creates a namespace `<prefix>-<random>` and returns its name.
pub async fn create_namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}-{}", random_hex(4)?);
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&post_params(), &namespace)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(name)
}

/// Deletes a namespace made by [`create_namespace`].
pub async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting namespace {name}"))?;
    Ok(())
}

/// Server-side applies `crd` and waits until it is established.
pub async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) -> anyhow::Result<()> {
    let name = crd.metadata.name.clone().context("the CRD has no name")?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .with_context(|| format!("applying CRD {name}"))?;
    poll_until(
        &format!("CRD {name} to be established"),
        DEFAULT_TIMEOUT,
        async || {
            let crd = api.get(&name).await.map_err(|e| e.to_string())?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(())
            } else {
                Err("not established yet".into())
            }
        },
    )
    .await
}

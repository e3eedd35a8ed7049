//! Syncing one object: the kcp object is the source of truth for everything
//! but `status`, which comes back from the local copy.
//!
//! Steps: read the kcp object; apply the resource filter; find the local
//! copy by its identity labels; on deletion delete the copy first and drop
//! the finalizer once it is gone; otherwise make sure the finalizer is set,
//! create (or adopt) the copy, patch it to match, and copy its status back.

use std::time::Duration;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::SelectorExt;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::identity::{FINALIZER, RemoteKey};
use super::naming::{self, DEFAULT_NAME, DEFAULT_NAMESPACE, NamingContext, NamingError};
use super::object::{new_local, update_patch};
use super::worker::WorkerConfig;
use crate::controller::{Context, FIELD_MANAGER};
use crate::dns;
use crate::kcp::retarget_url;

/// Requeue after a write, to confirm the result (as upstream).
const AFTER_WRITE: Duration = Duration::from_secs(5);

/// Why an object could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A request to kcp failed.
    #[error("kcp: {0}")]
    Kcp(#[source] kube::Error),
    /// A request to the service cluster failed.
    #[error("service cluster: {0}")]
    Service(#[source] kube::Error),
    /// The naming rules produced no valid name.
    #[error(transparent)]
    Naming(#[from] NamingError),
    /// A rendered name is not a valid Kubernetes name.
    #[error("naming rules produced {0:?}, which is not a valid {1}")]
    InvalidName(String, &'static str),
    /// An object could not be converted (a bug, or a malformed object).
    #[error("malformed object: {0}")]
    Malformed(String),
    /// More than one local object claims to be the copy.
    #[error("{0} local objects carry the identity of this object; remove the extra ones")]
    Ambiguous(usize),
}

impl SyncError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Kcp(_) => "kcp",
            SyncError::Service(_) => "service_cluster",
            SyncError::Naming(_) | SyncError::InvalidName(..) => "naming",
            SyncError::Ambiguous(_) => "ambiguous",
            SyncError::Malformed(_) => "malformed",
        }
    }
}

/// Which object, through which endpoint.
#[derive(Debug)]
pub struct Target<'a> {
    /// The virtual workspace endpoint serving the object's workspace.
    pub endpoint: &'a str,
    /// The object.
    pub key: &'a RemoteKey,
}

fn kcp_api(
    client: Client,
    resource: &ApiResource,
    namespaced: bool,
    namespace: &str,
) -> Api<DynamicObject> {
    if namespaced {
        Api::namespaced_with(client, namespace, resource)
    } else {
        Api::all_with(client, resource)
    }
}

/// Syncs one object; returns when to look at it again, if at all.
pub async fn reconcile(
    ctx: &Context,
    config: &WorkerConfig,
    target: &Target<'_>,
) -> Result<Option<Duration>, SyncError> {
    let key = target.key;
    let kcp_client = retarget_url(
        &ctx.kcp.slice_config,
        &format!("{}/clusters/{}", target.endpoint, key.cluster),
    )
    .ok()
    .and_then(|c| Client::try_from(c).ok())
    .ok_or_else(|| SyncError::Malformed(format!("endpoint URL {}", target.endpoint)))?;
    let remote_api = kcp_api(
        kcp_client,
        &config.remote,
        config.remote_namespaced,
        &key.namespace,
    );
    let Some(remote) = remote_api
        .get_opt(&key.name)
        .await
        .map_err(SyncError::Kcp)?
    else {
        return Ok(None);
    };
    if let Some(selector) = &config.resource_filter
        && !selector.matches(remote.labels())
    {
        debug!(object = %key, "Filtered out");
        return Ok(None);
    }

    let local_api: Api<DynamicObject> = Api::all_with(ctx.service.clone(), &config.local);
    let found = local_api
        .list(
            &ListParams::default()
                .labels(&key.selector(&ctx.agent_name))
                .limit(2),
        )
        .await
        .map_err(SyncError::Service)?
        .items;
    if found.len() > 1 {
        return Err(SyncError::Ambiguous(found.len()));
    }
    let local = found.into_iter().next();

    if remote.metadata.deletion_timestamp.is_some() {
        return delete(ctx, config, &remote_api, &remote, local).await;
    }
    let remote = if remote.finalizers().iter().any(|f| f == FINALIZER) {
        remote
    } else {
        let mut finalizers = remote.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        finalizers.sort();
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": remote.resource_version()}});
        remote_api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(SyncError::Kcp)?
    };
    let remote_value = serde_json::to_value(&remote).unwrap_or_default();

    let local = match local {
        Some(local) => local,
        None => return create(ctx, config, key, &remote_value).await,
    };
    if local.metadata.deletion_timestamp.is_some() {
        // Someone deleted the copy; it is recreated once it is gone.
        return Ok(Some(AFTER_WRITE));
    }
    let local_value = serde_json::to_value(&local).unwrap_or_default();
    let local_namespace = local.namespace();
    let local_ns_api: Api<DynamicObject> = match &local_namespace {
        Some(ns) => Api::namespaced_with(ctx.service.clone(), ns, &config.local),
        None => Api::all_with(ctx.service.clone(), &config.local),
    };
    let mut wrote = false;
    if let Some(patch) = update_patch(&remote_value, &local_value, key, &ctx.agent_name) {
        local_ns_api
            .patch(
                &local.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(SyncError::Service)?;
        ctx.metrics
            .objects_synced
            .with_label_values(&[config.published_resource.as_str(), "update"])
            .inc();
        debug!(object = %key, "Updated the local copy");
        wrote = true;
    }

    if config.local_status && local_value.get("status") != remote_value.get("status") {
        let mut updated = remote_value.clone();
        match local_value.get("status") {
            Some(status) => updated["status"] = status.clone(),
            None => {
                if let Some(object) = updated.as_object_mut() {
                    object.remove("status");
                }
            }
        }
        let updated: DynamicObject =
            serde_json::from_value(updated).map_err(|e| SyncError::Malformed(e.to_string()))?;
        remote_api
            .replace_status(
                &key.name,
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &updated,
            )
            .await
            .map_err(SyncError::Kcp)?;
        ctx.metrics
            .objects_synced
            .with_label_values(&[config.published_resource.as_str(), "status"])
            .inc();
        debug!(object = %key, "Copied the status to kcp");
    }
    Ok(wrote.then_some(AFTER_WRITE))
}

async fn create(
    ctx: &Context,
    config: &WorkerConfig,
    key: &RemoteKey,
    remote: &Value,
) -> Result<Option<Duration>, SyncError> {
    let context = NamingContext {
        object: remote,
        cluster_name: &key.cluster,
        cluster_path: "",
    };
    let name_pattern = config
        .naming
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            if key.namespace.is_empty() {
                // Cluster-scoped in kcp: there is no namespace to hash.
                "{{ .Object.metadata.name | sha3short }}".into()
            } else {
                DEFAULT_NAME.into()
            }
        });
    let mut name = naming::render(&name_pattern, &context)?;
    if !config.local_namespaced && config.naming.name.as_deref().is_none_or(str::is_empty) {
        // One namespace-less space for every workspace: keep copies apart.
        name = format!("{}-{name}", key.cluster);
    }
    if !dns::is_dns1123_subdomain(&name) {
        return Err(SyncError::InvalidName(name, "object name"));
    }
    let namespace = if config.local_namespaced {
        let pattern = config
            .naming
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        let namespace = naming::render(&pattern, &context)?;
        if !dns::is_dns1123_label(&namespace) {
            return Err(SyncError::InvalidName(namespace, "namespace name"));
        }
        ensure_namespace(&ctx.service, &namespace).await?;
        Some(namespace)
    } else {
        None
    };
    let object = new_local(
        remote,
        &config.local.api_version,
        &config.local.kind,
        &name,
        namespace.as_deref(),
        key,
        &ctx.agent_name,
    );
    let object: DynamicObject =
        serde_json::from_value(object).map_err(|e| SyncError::Malformed(e.to_string()))?;
    let api: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(ctx.service.clone(), ns, &config.local),
        None => Api::all_with(ctx.service.clone(), &config.local),
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, &object).await {
        Ok(_) => {
            info!(object = %key, local = %name, namespace = ?namespace, "Placed the local copy");
            ctx.metrics
                .objects_synced
                .with_label_values(&[config.published_resource.as_str(), "create"])
                .inc();
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Adopt an existing object of that name by giving it our identity.
            let existing = api.get(&name).await.map_err(SyncError::Service)?;
            if existing.metadata.deletion_timestamp.is_none() {
                let patch = json!({"metadata": {"labels": object.metadata.labels, "annotations": key.annotations()}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(SyncError::Service)?;
                info!(object = %key, local = %name, "Adopted an existing local object");
            }
        }
        Err(error) => return Err(SyncError::Service(error)),
    }
    Ok(Some(AFTER_WRITE))
}

async fn ensure_namespace(client: &Client, name: &str) -> Result<(), SyncError> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if api
        .get_opt(name)
        .await
        .map_err(SyncError::Service)?
        .is_some()
    {
        return Ok(());
    }
    let namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap_or_default();
    match api.create(&PostParams::default(), &namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(SyncError::Service(error)),
    }
}

async fn delete(
    ctx: &Context,
    config: &WorkerConfig,
    remote_api: &Api<DynamicObject>,
    remote: &DynamicObject,
    local: Option<DynamicObject>,
) -> Result<Option<Duration>, SyncError> {
    if let Some(local) = local {
        if local.metadata.deletion_timestamp.is_none() {
            let api: Api<DynamicObject> = match local.namespace() {
                Some(ns) => Api::namespaced_with(ctx.service.clone(), &ns, &config.local),
                None => Api::all_with(ctx.service.clone(), &config.local),
            };
            api.delete(&local.name_any(), &DeleteParams::background())
                .await
                .map_err(SyncError::Service)?;
            info!(local = %local.name_any(), "Deleting the local copy");
            ctx.metrics
                .objects_synced
                .with_label_values(&[config.published_resource.as_str(), "delete"])
                .inc();
        }
        return Ok(Some(Duration::from_secs(1)));
    }
    if remote.finalizers().iter().any(|f| f == FINALIZER) {
        let finalizers: Vec<&String> = remote
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": remote.resource_version()}});
        remote_api
            .patch(
                &remote.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(SyncError::Kcp)?;
        info!(object = %remote.name_any(), "The local copy is gone; released the kcp object");
    }
    Ok(None)
}

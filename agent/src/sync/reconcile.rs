//! Syncing one object: the kcp object is the source of truth for everything
//! but `status`, which comes back from the local copy.
//!
//! Steps: read the kcp object; apply the resource filter; find the local
//! copy by its identity labels; on deletion delete the copy first and drop
//! the finalizer once it is gone; otherwise make sure the finalizer is set,
//! create (or adopt) the copy, patch it to match, and copy its status back.

use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PostParams};
use kube::core::SelectorExt;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::config::{CopyMirror, WorkerConfig};
use super::error::SyncError;
use super::events::EventSink;
use super::identity::{AGENT_LABEL, FINALIZER, REMOTE_CLUSTER_LABEL, RemoteKey, Side};
use super::mirror::Mirror;
use super::naming::{self, DEFAULT_NAME, DEFAULT_NAMESPACE, NamingContext};
use super::object::{Owner, finalizer_patch, new_local, update_patch};
use super::related;
use crate::api::dns;
use crate::context::{Context, FIELD_MANAGER, patch_params};

/// How often objects with unwatched related resources are looked at again.
const RELATED_RESYNC: Duration = Duration::from_secs(5);
/// How often objects whose related resources are all watched are looked at again.
const WATCHED_RELATED_RESYNC: Duration = Duration::from_secs(60);

/// Requeue after a write, to confirm the result (as upstream).
const AFTER_WRITE: Duration = Duration::from_secs(5);

/// What a reconcile did and whether to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// When to look at the object again, if at all.
    pub requeue: Option<Duration>,
    /// Whether the service cluster was written to.
    pub wrote: bool,
}

impl Outcome {
    /// Nothing more to do.
    pub const DONE: Self = Self {
        requeue: None,
        wrote: false,
    };

    /// Wrote, and nothing more to do until a watch reports a change.
    pub const WROTE: Self = Self {
        requeue: None,
        wrote: true,
    };

    fn wait(after: Duration) -> Self {
        Self {
            requeue: Some(after),
            wrote: false,
        }
    }
}

/// Which object, through which client.
pub struct Target<'a> {
    /// Client for the object's workspace through its virtual workspace endpoint.
    pub client: &'a Client,
    /// The object.
    pub key: &'a RemoteKey,
    /// The kcp objects as the worker's watch of that endpoint last saw them.
    pub objects: &'a Mirror<RemoteKey>,
    /// The local copies as the worker's watch last saw them.
    pub copies: &'a CopyMirror,
    /// Where events on the consumer's object go.
    pub events: &'a EventSink,
}

impl Target<'_> {
    /// Records a write: its watch event is an echo, and the next reconcile
    /// reads the written version.
    fn wrote(&self, config: &WorkerConfig, side: Side, object: &DynamicObject) {
        config.echoes.wrote(self.key, side, object);
        match side {
            Side::Kcp => self.objects.apply(object),
            Side::Service => self.copies.apply(object),
        }
    }
}

impl std::fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("key", self.key).finish()
    }
}

/// A client for one consumer workspace behind a virtual workspace endpoint.
pub fn workspace_client(ctx: &Context, endpoint: &str, cluster: &str) -> Result<Client, SyncError> {
    ctx.kcp
        .endpoints
        .cluster(endpoint, cluster)
        .map_err(|error| SyncError::Malformed(error.to_string()))
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
) -> Result<Outcome, SyncError> {
    let key = target.key;
    let kcp_client = target.client.clone();
    let remote_api = kcp_api(
        kcp_client.clone(),
        &config.remote,
        config.remote_namespaced,
        &key.namespace,
    );
    let Some(remote) = target
        .objects
        .get(key)
        .first()
        .map(|o| DynamicObject::clone(o))
    else {
        config.echoes.forget(key);
        return Ok(Outcome::DONE);
    };
    let result = sync_object(ctx, config, target, &remote_api, remote.clone()).await;
    if result.as_ref().is_err_and(|e| !e.is_conflict()) {
        // The consumer learns that something is wrong, not the provider's internals.
        KcpEvents {
            sink: target.events,
            client: &kcp_client,
            object: &remote,
        }
        .warning(
            "ReconcilingError",
            "the provider could not sync this object yet; it retries",
        );
    }
    result
}

async fn sync_object(
    ctx: &Context,
    config: &WorkerConfig,
    target: &Target<'_>,
    remote_api: &Api<DynamicObject>,
    remote: DynamicObject,
) -> Result<Outcome, SyncError> {
    let (key, kcp_client) = (target.key, target.client);
    // A deleted object is cleaned up whatever the filters say (and even if
    // they cannot be evaluated any more).
    let matches = remote.metadata.deletion_timestamp.is_some()
        || filters_match(config, kcp_client, &remote).await?;
    let events = KcpEvents {
        sink: target.events,
        client: kcp_client,
        object: &remote,
    };

    let found = target.copies.get(&key.labels());
    if found.len() > 1 {
        return Err(SyncError::Ambiguous(found.len()));
    }
    let local = found.first().map(|o| DynamicObject::clone(o));

    if remote.metadata.deletion_timestamp.is_some() || !matches {
        if !matches && local.is_none() && !remote.finalizers().iter().any(|f| f == FINALIZER) {
            debug!(object = %key, "Filtered out");
            return Ok(Outcome::DONE);
        }
        // Deleted in kcp, or no longer selected: the copy goes, then the finalizer.
        return delete(ctx, config, target, remote_api, &remote, local, &events).await;
    }
    let remote = match finalizer_patch(&remote, FINALIZER, true) {
        None => remote,
        Some(patch) => {
            let patched = remote_api
                .patch(&key.name, &patch_params(), &Patch::Merge(&patch))
                .await
                .map_err(SyncError::Kcp)?;
            target.wrote(config, Side::Kcp, &patched);
            events.normal(
                "ObjectAccepted",
                "the object will be synced to the service cluster",
            );
            patched
        }
    };
    let events = KcpEvents {
        sink: target.events,
        client: kcp_client,
        object: &remote,
    };
    let workspace_path = if config.workspace_paths {
        Some(workspace_path(kcp_client).await?)
    } else {
        None
    };
    let owner = Owner {
        key,
        agent: &ctx.agent_name,
        workspace_path: workspace_path.as_deref(),
    };
    let original = serde_json::to_value(&remote).unwrap_or_default();
    let local_before = local.as_ref().and_then(|l| serde_json::to_value(l).ok());
    let mut remote_value = original.clone();
    config
        .spec_mutator
        .apply(&mut remote_value, local_before.as_ref())?;

    let local = match local {
        Some(local) => local,
        None => return create(ctx, config, target, owner, &remote_value, &events).await,
    };
    if local.metadata.deletion_timestamp.is_some() {
        // Someone deleted the copy; it is recreated once it is gone.
        return Ok(Outcome::wait(AFTER_WRITE));
    }
    let local_value = serde_json::to_value(&local).unwrap_or_default();
    let local_namespace = local.namespace();
    let local_ns_api: Api<DynamicObject> = match &local_namespace {
        Some(ns) => Api::namespaced_with(ctx.service.clone(), ns, &config.local),
        None => Api::all_with(ctx.service.clone(), &config.local),
    };
    let mut wrote = false;
    if let Some(patch) = update_patch(&remote_value, &local_value, owner) {
        let patched = local_ns_api
            .patch(&local.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(SyncError::Service)?;
        target.wrote(config, Side::Service, &patched);
        // A patch that changed nothing on the server is not a write; coming
        // back for it would only repeat it.
        if patched.resource_version() != local.resource_version() {
            ctx.metrics
                .objects_synced
                .with_label_values(&[config.published_resource.as_str(), "update"])
                .inc();
            debug!(object = %key, "Updated the local copy");
            events.normal(
                "ObjectSynced",
                "the change was synced to the service cluster",
            );
            wrote = true;
        }
    }

    let mut for_status = local_value.clone();
    config
        .status_mutator
        .apply(&mut for_status, Some(&remote_value))?;
    if config.local_status && for_status.get("status") != original.get("status") {
        let mut updated = original.clone();
        match for_status.get("status") {
            Some(status) => updated["status"] = status.clone(),
            None => {
                if let Some(object) = updated.as_object_mut() {
                    object.remove("status");
                }
            }
        }
        let updated: DynamicObject =
            serde_json::from_value(updated).map_err(|e| SyncError::Malformed(e.to_string()))?;
        let replaced = remote_api
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
        target.wrote(config, Side::Kcp, &replaced);
        ctx.metrics
            .objects_synced
            .with_label_values(&[config.published_resource.as_str(), "status"])
            .inc();
        debug!(object = %key, "Copied the status to kcp");
        events.normal(
            "ObjectStatusSynced",
            "the status was updated from the service cluster",
        );
    }
    if !config.related.is_empty() {
        let primaries = related::Primaries {
            kcp: kcp_client,
            service: &ctx.service,
            remote: &original,
            local: &local_value,
            cluster: &key.cluster,
            cluster_path: owner.workspace_path.unwrap_or_default(),
        };
        let synced = related::sync(
            &config.related,
            &config.kinds,
            &primaries,
            &ctx.related_finalizer,
        )
        .await?;
        wrote |= synced.wrote;
        if !synced.missing.is_empty() {
            events.normal(
                "RelatedResourceMissing",
                &format!("waiting for related objects: {}", synced.missing.join(", ")),
            );
        }
        let current = remote.annotations();
        let missing: serde_json::Map<String, Value> = synced
            .annotations
            .into_iter()
            .filter(|(k, v)| current.get(k).map(String::as_str) != v.as_str())
            .collect();
        if !missing.is_empty() {
            let patched = remote_api
                .patch(
                    &key.name,
                    &patch_params(),
                    &Patch::Merge(&json!({"metadata": {"annotations": missing}})),
                )
                .await
                .map_err(SyncError::Kcp)?;
            target.wrote(config, Side::Kcp, &patched);
        }
        // Related resources without a watch are only noticed by looking
        // again; watched ones wake their primary up, with a slow safety net.
        let every_one_watched = config.related.iter().all(|r| r.watch.is_some());
        let requeue = if every_one_watched {
            WATCHED_RELATED_RESYNC
        } else {
            RELATED_RESYNC
        };
        return Ok(Outcome {
            requeue: Some(requeue),
            wrote,
        });
    }
    // The watches bring any later change (the echoes of these writes aside).
    Ok(if wrote { Outcome::WROTE } else { Outcome::DONE })
}

fn remote_cluster(remote: &DynamicObject) -> String {
    remote
        .annotations()
        .get(crate::api::kcp::CLUSTER_ANNOTATION)
        .cloned()
        .unwrap_or_default()
}

async fn create(
    ctx: &Context,
    config: &WorkerConfig,
    target: &Target<'_>,
    owner: Owner<'_>,
    remote: &Value,
    events: &KcpEvents<'_>,
) -> Result<Outcome, SyncError> {
    let key = owner.key;
    let context = NamingContext {
        object: remote,
        cluster_name: &key.cluster,
        cluster_path: owner.workspace_path.unwrap_or_default(),
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
        ctx.ensure_service_namespace(&namespace)
            .await
            .map_err(SyncError::Service)?;
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
        owner,
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
        Ok(created) => {
            target.wrote(config, Side::Service, &created);
            info!(object = %key, local = %name, namespace = ?namespace, "Placed the local copy");
            events.normal(
                "ObjectPlaced",
                "the object was created on the service cluster",
            );
            ctx.metrics
                .objects_synced
                .with_label_values(&[config.published_resource.as_str(), "create"])
                .inc();
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Adopt an existing object of that name by giving it our identity,
            // unless it already is the copy of something else.
            let existing = api.get(&name).await.map_err(SyncError::Service)?;
            let owner_labels = key.labels();
            let foreign = existing
                .labels()
                .get(REMOTE_CLUSTER_LABEL)
                .is_some_and(|_| {
                    owner_labels
                        .iter()
                        .any(|(k, v)| existing.labels().get(k) != Some(v))
                        || existing.labels().get(AGENT_LABEL) != Some(&ctx.agent_name)
                });
            if foreign {
                return Err(SyncError::NameTaken(name));
            }
            if existing.metadata.deletion_timestamp.is_none() {
                let patch = json!({"metadata": {"labels": object.metadata.labels, "annotations": object.metadata.annotations}});
                let adopted = api
                    .patch(&name, &patch_params(), &Patch::Merge(&patch))
                    .await
                    .map_err(SyncError::Service)?;
                target.wrote(config, Side::Service, &adopted);
                info!(object = %key, local = %name, "Adopted an existing local object");
            }
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {
            // The namespace was deleted since the agent made sure of it.
            if let Some(namespace) = &namespace {
                ctx.forget_service_namespace(namespace);
            }
            return Err(SyncError::Service(kube::Error::Api(status)));
        }
        Err(error) => return Err(SyncError::Service(error)),
    }
    if config.related.is_empty() {
        Ok(Outcome::WROTE)
    } else {
        // Related objects are synced against an existing copy: at once.
        Ok(Outcome {
            requeue: Some(Duration::ZERO),
            wrote: true,
        })
    }
}

async fn delete(
    ctx: &Context,
    config: &WorkerConfig,
    target: &Target<'_>,
    remote_api: &Api<DynamicObject>,
    remote: &DynamicObject,
    local: Option<DynamicObject>,
    events: &KcpEvents<'_>,
) -> Result<Outcome, SyncError> {
    let foreign = remote.finalizers().iter().any(|f| f != FINALIZER);
    if ctx.wait_for_foreign_finalizers && remote.metadata.deletion_timestamp.is_some() && foreign {
        debug!(object = %remote.name_any(), "Waiting for other finalizers before deleting the copy");
        return Ok(Outcome::wait(AFTER_WRITE));
    }
    if let Some(local) = local {
        if !config.related.is_empty() && local.metadata.deletion_timestamp.is_none() {
            // Related objects first: their copies may need both primaries.
            let (remote_value, local_value) = (
                serde_json::to_value(remote).unwrap_or_default(),
                serde_json::to_value(&local).unwrap_or_default(),
            );
            let primaries = related::Primaries {
                kcp: target.client,
                service: &ctx.service,
                remote: &remote_value,
                local: &local_value,
                cluster: &remote_cluster(remote),
                cluster_path: "",
            };
            if !related::cleanup(
                &config.related,
                &config.kinds,
                &primaries,
                &ctx.related_finalizer,
            )
            .await?
            {
                return Ok(Outcome::wait(Duration::from_secs(2)));
            }
        }
        if local.metadata.deletion_timestamp.is_some() {
            // Held by finalizers of its own; its watch event brings the
            // object back here once it is gone.
            return Ok(Outcome::wait(Duration::from_secs(2)));
        }
        let api: Api<DynamicObject> = match local.namespace() {
            Some(ns) => Api::namespaced_with(ctx.service.clone(), &ns, &config.local),
            None => Api::all_with(ctx.service.clone(), &config.local),
        };
        let held = match api
            .delete(&local.name_any(), &DeleteParams::background())
            .await
            .map(|response| response.left())
        {
            // Returned with finalizers of its own still on it.
            Ok(Some(deleting)) if !deleting.finalizers().is_empty() => {
                target.copies.apply(&deleting);
                true
            }
            Ok(_) => {
                target.copies.remove(&local);
                false
            }
            // Already gone; the mirror had not heard yet.
            Err(kube::Error::Api(status)) if status.code == 404 => {
                target.copies.remove(&local);
                return Ok(Outcome::wait(Duration::ZERO));
            }
            Err(error) => return Err(SyncError::Service(error)),
        };
        info!(local = %local.name_any(), "Deleting the local copy");
        events.normal(
            "ObjectCleanup",
            "the copy on the service cluster is being deleted",
        );
        ctx.metrics
            .objects_synced
            .with_label_values(&[config.published_resource.as_str(), "delete"])
            .inc();
        if held {
            return Ok(Outcome::wait(Duration::from_secs(2)));
        }
    }
    if let Some(patch) = finalizer_patch(remote, FINALIZER, false) {
        let released = remote_api
            .patch(&remote.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(SyncError::Kcp)?;
        target.objects.apply(&released);
        info!(object = %remote.name_any(), "The local copy is gone; released the kcp object");
        events.normal("ObjectDeleted", "the copy on the service cluster is gone");
    }
    Ok(Outcome::DONE)
}

/// Whether the kcp object passes the resource and namespace filters.
async fn filters_match(
    config: &WorkerConfig,
    client: &Client,
    remote: &DynamicObject,
) -> Result<bool, SyncError> {
    if let Some(selector) = &config.resource_filter
        && !selector.matches(remote.labels())
    {
        return Ok(false);
    }
    if let (Some(selector), Some(namespace)) = (&config.namespace_filter, remote.namespace()) {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let labels = namespaces
            .get(&namespace)
            .await
            .map_err(SyncError::Kcp)?
            .metadata
            .labels
            .unwrap_or_default();
        if !selector.matches(&labels) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The workspace path of the object's workspace (`kcp.io/path` of its LogicalCluster).
async fn workspace_path(client: &Client) -> Result<String, SyncError> {
    let cluster = Api::<crate::api::kcp::core_v1alpha1::LogicalCluster>::all(client.clone())
        .get(crate::api::kcp::core_v1alpha1::LOGICAL_CLUSTER_NAME)
        .await
        .map_err(SyncError::Kcp)?;
    Ok(cluster
        .annotations()
        .get(crate::api::kcp::PATH_ANNOTATION)
        .cloned()
        .unwrap_or_default())
}

/// The events of one reconcile, on the consumer's object.
struct KcpEvents<'a> {
    sink: &'a EventSink,
    client: &'a Client,
    object: &'a DynamicObject,
}

impl KcpEvents<'_> {
    fn normal(&self, reason: &str, message: &str) {
        self.sink.normal(self.client, self.object, reason, message);
    }

    fn warning(&self, reason: &str, message: &str) {
        self.sink.warning(self.client, self.object, reason, message);
    }
}

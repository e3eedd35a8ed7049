//! Syncing one object: the kcp object is the source of truth for everything
//! but `status`, which comes back from the local copy.
//!
//! Steps: read the kcp object; apply the resource filter; find the local
//! copy by its identity labels; on deletion delete the copy first and drop
//! the finalizer once it is gone; otherwise make sure the finalizer is set,
//! create (or adopt) the copy, patch it to match, and copy its status back.

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info, instrument};

use super::config::{CopyMirror, WorkerConfig};
use super::copy::{Deleted, Engine, Placed, as_value};
use super::error::SyncError;
use super::events::EventSink;
use super::identity::{FINALIZER, LOCAL_OBJECT_ANNOTATION, MARKS, RemoteKey, Side};
use super::mirror::Mirror;
use super::naming::{NamingContext, Placement};
use super::object::{LAST_KNOWN_ANNOTATION, Owner, lacks_state, new_copy};
use super::related;
use super::related_copies;
use super::stale_namespaces::{self, Verdict};
use super::workspace::{filters_match, workspace_path};
use crate::context::{Context, patch_params};

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

fn service_api(
    ctx: &Context,
    config: &WorkerConfig,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(ctx.service.clone(), ns, &config.local),
        None => Api::all_with(ctx.service.clone(), &config.local),
    }
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
#[instrument(
    name = "reconcile",
    skip_all,
    fields(
        published_resource = %config.published_resource,
        cluster = %target.key.cluster,
        namespace = %target.key.namespace,
        name = %target.key.name,
    )
)]
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
    let Some(remote) = target.objects.get(key).into_iter().next() else {
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

    let record = |side: Side, object: &DynamicObject| target.wrote(config, side, object);
    let engine = Engine {
        source: Side::Kcp,
        finalizer: Some(FINALIZER),
        record: &record,
    };
    let found = target.copies.get(&key.copy_key());
    if found.len() > 1 {
        return Err(SyncError::Ambiguous(found.len()));
    }
    let local = found.into_iter().next();

    if remote.metadata.deletion_timestamp.is_some() || !matches {
        if !matches && local.is_none() && !remote.finalizers().iter().any(|f| f == FINALIZER) {
            debug!(object = %key, "Filtered out");
            return Ok(Outcome::DONE);
        }
        // Deleted in kcp, or no longer selected: the copy goes, then the finalizer.
        return delete(ctx, config, target, &engine, remote_api, &remote, local).await;
    }
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
    let local_before = local.as_ref().and_then(|l| serde_json::to_value(l).ok());
    // The mutated object decides the copy; holding it changes only its
    // finalizers and annotations, which are not copied.
    let mut remote_value = as_value(&remote);
    config
        .spec_mutator
        .apply(&mut remote_value, local_before.as_ref())?;
    let placement = match &local {
        Some(local) => Placement {
            name: local.name_any(),
            namespace: local.namespace(),
        },
        None => config.naming.resolve(&NamingContext {
            object: &remote_value,
            cluster_name: &key.cluster,
            cluster_path: owner.workspace_path.unwrap_or_default(),
        })?,
    };
    let (remote, accepted) = engine
        .hold(remote_api, remote, &owner.marks(&placement))
        .await?;
    let events = KcpEvents {
        sink: target.events,
        client: kcp_client,
        object: &remote,
    };
    if accepted {
        events.normal(
            "ObjectAccepted",
            "the object will be synced to the service cluster",
        );
    }
    let original = as_value(&remote);

    let local = match local {
        Some(local) => local,
        None => {
            return create(
                ctx,
                config,
                &engine,
                owner,
                &remote_value,
                placement,
                &events,
            )
            .await;
        }
    };
    if local.metadata.deletion_timestamp.is_some() {
        // Someone deleted the copy; it is recreated once it is gone.
        return Ok(Outcome::wait(AFTER_WRITE));
    }
    if let (Some(_), Some(namespace)) = (&config.namespace_metadata, local.namespace()) {
        // Kept up to date for copies made before (asks the server once).
        ensure_namespace(ctx, config, &namespace).await?;
    }
    let local_value = as_value(&local);
    let local_api = service_api(ctx, config, local.namespace().as_deref());
    let stamp = owner.stamp(&remote_value);
    // A copy an upstream agent made: its last-known state is in a Secret.
    let upstream = match &ctx.upstream_states {
        Some(states) if lacks_state(&remote_value, &local_value) => states
            .find(key, &remote_value)
            .await
            .map_err(SyncError::Service)?,
        _ => None,
    };
    let updated = engine
        .update(
            &local_api,
            &remote_value,
            &local,
            &stamp,
            upstream.as_ref().map(|state| &state.fields),
        )
        .await?;
    // Upstream's Secret goes once our own state is on the copy (a state
    // too large to record leaves the Secret where it is).
    if let (Some(states), Some(state), Some(copy)) = (&ctx.upstream_states, &upstream, &updated)
        && copy.annotations().contains_key(LAST_KNOWN_ANNOTATION)
    {
        states.consumed(key, state).await;
    }
    let mut wrote = updated.is_some();
    if wrote {
        debug!(object = %key, "Updated the local copy");
        synced(
            ctx,
            config,
            &events,
            "update",
            (
                "ObjectSynced",
                "the change was synced to the service cluster",
            ),
        );
    }

    let mut for_status = local_value.clone();
    config
        .status_mutator
        .apply(&mut for_status, Some(&remote_value))?;
    if config.local_status
        && engine
            .copy_status(remote_api, Side::Kcp, &original, for_status.get("status"))
            .await?
            .is_some()
    {
        debug!(object = %key, "Copied the status to kcp");
        synced(
            ctx,
            config,
            &events,
            "status",
            (
                "ObjectStatusSynced",
                "the status was updated from the service cluster",
            ),
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
            templates: &config.templates,
        };
        let synced = related_copies::sync(
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

/// Makes sure the namespace of a copy exists, with the metadata the
/// PublishedResource keeps on it.
async fn ensure_namespace(
    ctx: &Context,
    config: &WorkerConfig,
    namespace: &str,
) -> Result<(), SyncError> {
    match &config.namespace_metadata {
        Some(metadata) => ctx.ensure_managed_namespace(namespace, metadata).await,
        None => ctx.ensure_service_namespace(namespace).await,
    }
    .map_err(SyncError::Service)
}

async fn create(
    ctx: &Context,
    config: &WorkerConfig,
    engine: &Engine<'_>,
    owner: Owner<'_>,
    remote: &Value,
    Placement { name, namespace }: Placement,
    events: &KcpEvents<'_>,
) -> Result<Outcome, SyncError> {
    let key = owner.key;
    // No namespace of this agent is deleted while a copy is placed into it.
    let _placing = match &namespace {
        Some(namespace) => Some(ctx.placing_into(namespace).await),
        None => None,
    };
    if let Some(namespace) = &namespace {
        ensure_namespace(ctx, config, namespace).await?;
    }
    let object = new_copy(
        remote,
        &config.local.api_version,
        &config.local.kind,
        &name,
        namespace.as_deref(),
        &owner.stamp(remote),
    );
    let object: DynamicObject =
        serde_json::from_value(object).map_err(|e| SyncError::Malformed(e.to_string()))?;
    let api = service_api(ctx, config, namespace.as_deref());
    match engine
        .create_or_adopt(&api, &object, &owner.identity())
        .await
    {
        Ok(Placed::Created(_)) => {
            info!(object = %key, local = %name, namespace = ?namespace, "Placed the local copy");
            synced(
                ctx,
                config,
                events,
                "create",
                (
                    "ObjectPlaced",
                    "the object was created on the service cluster",
                ),
            );
        }
        Ok(Placed::Adopted) => {
            info!(object = %key, local = %name, "Adopted an existing local object");
        }
        Ok(Placed::Deleting) => {}
        Err(SyncError::Service(kube::Error::Api(status))) if namespace_gone(&status) => {
            // The namespace was deleted since the agent made sure of it.
            if let Some(namespace) = &namespace {
                ctx.forget_service_namespace(namespace);
            }
            return Err(SyncError::Service(kube::Error::Api(status)));
        }
        Err(error) => return Err(error),
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
    engine: &Engine<'_>,
    remote_api: &Api<DynamicObject>,
    remote: &DynamicObject,
    local: Option<DynamicObject>,
) -> Result<Outcome, SyncError> {
    let events = KcpEvents {
        sink: target.events,
        client: target.client,
        object: remote,
    };
    // Where the copy is (or was: its kcp object names it until released).
    let copy_namespace = local.as_ref().and_then(ResourceExt::namespace).or_else(|| {
        remote
            .annotations()
            .get(LOCAL_OBJECT_ANNOTATION)
            .and_then(|local| local.split_once('/'))
            .map(|(namespace, _)| namespace.to_string())
    });
    let foreign = remote.finalizers().iter().any(|f| f != FINALIZER);
    if ctx.wait_for_foreign_finalizers && remote.metadata.deletion_timestamp.is_some() && foreign {
        debug!(object = %remote.name_any(), "Waiting for other finalizers before deleting the copy");
        return Ok(Outcome::wait(AFTER_WRITE));
    }
    if let Some(local) = local {
        if !config.related.is_empty() && local.metadata.deletion_timestamp.is_none() {
            // Related objects first: their copies may need both primaries.
            let (remote_value, local_value) = (as_value(remote), as_value(&local));
            let primaries = related::Primaries {
                kcp: target.client,
                service: &ctx.service,
                remote: &remote_value,
                local: &local_value,
                cluster: &remote_cluster(remote),
                cluster_path: "",
                templates: &config.templates,
            };
            if !related_copies::cleanup(
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
        let api = service_api(ctx, config, local.namespace().as_deref());
        let held = match engine.delete(&api, &local).await? {
            Deleted::Held(deleting) => {
                target.copies.apply(&deleting);
                true
            }
            Deleted::Gone => {
                target.copies.remove(&local);
                false
            }
            // Already gone; the mirror had not heard yet.
            Deleted::Missing => {
                target.copies.remove(&local);
                return Ok(Outcome::wait(Duration::ZERO));
            }
        };
        info!(local = %local.name_any(), "Deleting the local copy");
        synced(
            ctx,
            config,
            &events,
            "delete",
            (
                "ObjectCleanup",
                "the copy on the service cluster is being deleted",
            ),
        );
        if held {
            return Ok(Outcome::wait(Duration::from_secs(2)));
        }
    }
    // The copy is gone: its namespace may go too, before the kcp object is
    // released (its release tells that the namespace was looked at).
    if let (true, Some(namespace)) = (config.delete_empty_namespaces, &copy_namespace) {
        let since_deletion = remote.metadata.deletion_timestamp.as_ref().map(|deleted| {
            Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(deleted.0))
                .unwrap_or_default()
        });
        if stale_namespaces::clear(ctx, namespace, &config.local, since_deletion).await
            == Verdict::Wait
        {
            return Ok(Outcome::wait(Duration::from_secs(2)));
        }
    }
    if let Some(released) = engine.release(remote_api, remote, &MARKS).await? {
        target.objects.apply(&released);
        info!(object = %remote.name_any(), "The local copy is gone; released the kcp object");
        events.normal("ObjectDeleted", "the copy on the service cluster is gone");
    }
    Ok(Outcome::DONE)
}

/// Whether a create failed because its namespace is gone or being deleted.
fn namespace_gone(status: &kube::core::Status) -> bool {
    let terminating = |details: &kube::core::response::StatusDetails| {
        details
            .causes
            .iter()
            .any(|cause| cause.reason == "NamespaceTerminating")
    };
    status.code == 404 || (status.code == 403 && status.details.as_ref().is_some_and(terminating))
}

/// Counts a write (`action`) and tells the consumer about it (`event`:
/// reason and message).
fn synced(
    ctx: &Context,
    config: &WorkerConfig,
    events: &KcpEvents<'_>,
    action: &str,
    (reason, message): (&str, &str),
) {
    ctx.metrics
        .objects_synced
        .with_label_values(&[config.published_resource.as_str(), action])
        .inc();
    events.normal(reason, message);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(value: Value) -> kube::core::Status {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_create_in_a_namespace_gone_or_being_deleted_forgets_it_and_no_other_refusal_does() {
        assert!(namespace_gone(&status(
            json!({"code": 404, "reason": "NotFound", "message": "namespaces \"c1\" not found"})
        )));
        assert!(namespace_gone(&status(json!({
            "code": 403, "reason": "Forbidden",
            "message": "unable to create new content in namespace c1 because it is being terminated",
            "details": {"name": "w", "kind": "widgets",
                        "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]},
        }))));
        assert!(!namespace_gone(&status(json!({
            "code": 403, "reason": "Forbidden",
            "message": "widgets is forbidden: User cannot create resource",
        }))));
    }
}

//! The `sync` controller: keeps exactly one sync worker per enabled
//! PublishedResource. A worker starts once the PublishedResource's schema is
//! published; any change of its spec, its schema or the export's endpoints
//! stops the old worker before the new one starts (never two at once);
//! deleting or disabling the PublishedResource stops it.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, ApiResource};
use kube::core::GroupVersionKind;
use kube_runtime::reflector::{self, Store};
use kube_runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, instrument, warn};

use crate::api::condition::{condition, set_condition};
use crate::api::kcp::apis_v1alpha1::APIExportEndpointSlice;
use crate::api::published_resource::{PublishedResource, ResourceFilter, SYNCING_CONDITION};
use crate::context::{Context, FIELD_MANAGER};
use crate::controller::ready::Synced;
use crate::controller::watched::{self, Watched};
use crate::mutation::Mutator;
use crate::schema;
use crate::source;
use crate::sync::config::WorkerConfig;
use crate::sync::namespaces::ManagedMetadata;
use crate::sync::naming::Naming;
use crate::sync::related;
use crate::sync::worker;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Name of the controller in `--disabled-controllers`.
pub const NAME: &str = worker::CONTROLLER;
/// How often endpoints and PublishedResources are re-checked without events.
const RESYNC: Duration = Duration::from_secs(10);

struct Running {
    fingerprint: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Runs the controller until `shutdown` resolves.
/// `synced` reports the cache of PublishedResources filled.
pub async fn run(
    ctx: Arc<Context>,
    synced: Synced,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut synced = Some(synced);
    let prs: Api<Watched> = Api::all(ctx.service.clone());
    let (store, writer) = reflector::store();
    let mut changes = std::pin::pin!(
        watcher(prs, watcher::Config::default().labels(&ctx.selector))
            .default_backoff()
            .reflect(writer)
    );
    let mut shutdown = std::pin::pin!(shutdown);
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Every event counts, the end of the initial list included: that
            // is when the store turns ready and the workers can start.
            change = changes.next() => {
                if let Some(Err(error)) = change {
                    warn!(%error, "Watching PublishedResources failed; retrying");
                    continue;
                }
            }
            _ = tick.tick() => {}
        }
        // The store fills only while the stream is polled: never wait on it here.
        if futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok()) {
            if let Some(synced) = synced.take() {
                synced.done();
            }
            converge(&ctx, &store, &mut running).await;
        }
    }
    for (_, worker) in running.drain() {
        stop(worker).await;
    }
    ctx.metrics.sync_workers.set(0);
}

#[instrument(skip_all)]
async fn converge(
    ctx: &Arc<Context>,
    store: &Store<Watched>,
    running: &mut HashMap<String, Running>,
) {
    let endpoints = match endpoints(ctx).await {
        Ok(endpoints) => endpoints,
        Err(error) => {
            warn!(%error, "Reading the endpoint slice failed");
            return;
        }
    };
    let mut wanted: HashMap<String, (u64, Arc<PublishedResource>)> = HashMap::new();
    for pr in watched::readable(store.state()) {
        let enabled = pr.spec.synchronization.as_ref().is_none_or(|s| s.enabled);
        let schema = pr
            .status
            .as_ref()
            .and_then(|s| s.resource_schema_name.clone());
        if !enabled || schema.is_none() || pr.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let mut hasher = DefaultHasher::new();
        serde_json::to_string(&pr.spec)
            .unwrap_or_default()
            .hash(&mut hasher);
        schema.hash(&mut hasher);
        endpoints.hash(&mut hasher);
        wanted.insert(
            pr.uid().unwrap_or_else(|| pr.name_any()),
            (hasher.finish(), pr),
        );
    }
    let stale: Vec<String> = running
        .iter()
        .filter(|(uid, worker)| {
            // A worker that ended on its own is restarted.
            worker.task.is_finished()
                || wanted
                    .get(*uid)
                    .is_none_or(|(f, _)| *f != worker.fingerprint)
        })
        .map(|(uid, _)| uid.clone())
        .collect();
    for uid in stale {
        if let Some(worker) = running.remove(&uid) {
            stop(worker).await;
        }
    }
    for (uid, (fingerprint, pr)) in wanted {
        if running.contains_key(&uid) {
            // Writes only when the condition changed (for example after a
            // conflicting write was lost).
            report(ctx, &pr, Ok(())).await;
            continue;
        }
        match worker_config(ctx, &pr, endpoints.clone()).await {
            Ok(config) => {
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(worker::run(ctx.clone(), Arc::new(config), stopped));
                running.insert(
                    uid,
                    Running {
                        fingerprint,
                        stop,
                        task,
                    },
                );
                report(ctx, &pr, Ok(())).await;
            }
            Err(error) => {
                warn!(published_resource = %pr.name_any(), %error, "Cannot start syncing yet");
                report(ctx, &pr, Err(&error)).await;
            }
        }
    }
    ctx.metrics
        .sync_workers
        .set(i64::try_from(running.len()).unwrap_or(i64::MAX));
    // Each worker reconciles up to `CONCURRENCY` objects at a time.
    ctx.metrics
        .declare(NAME, running.len().saturating_mul(worker::CONCURRENCY));
}

/// How long a stopping worker may take before it is aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

async fn stop(worker: Running) {
    let _ = worker.stop.send(true);
    let abort = worker.task.abort_handle();
    match tokio::time::timeout(STOP_TIMEOUT, worker.task).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "A sync worker ended abnormally"),
        Err(_) => {
            warn!("A sync worker did not stop in time; aborting it");
            abort.abort();
        }
    }
}

async fn endpoints(ctx: &Context) -> Result<Vec<String>, kube::Error> {
    let slice = Api::<APIExportEndpointSlice>::all(ctx.kcp.slice_client.clone())
        .get(&ctx.kcp.slice_name)
        .await?;
    let mut urls: Vec<String> = slice
        .status
        .map(|s| s.endpoints)
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.url)
        .collect();
    urls.sort();
    Ok(urls)
}

/// Why a worker cannot be started.
#[derive(Debug, thiserror::Error)]
enum ConfigError {
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Projection(#[from] schema::ProjectionError),
    #[error("{0} has no storage version")]
    NoStorage(String),
    #[error("invalid resource filter: {0}")]
    Filter(String),
    #[error(transparent)]
    Mutation(#[from] crate::mutation::MutationError),
    #[error("spec.naming: {0}")]
    Naming(#[from] crate::sync::naming::NamingError),
}

impl ConfigError {
    fn reason(&self) -> &'static str {
        match self {
            ConfigError::Source(_) => "SourceNotFound",
            ConfigError::Projection(_) => "InvalidProjection",
            ConfigError::NoStorage(_) => "InvalidSourceSchema",
            ConfigError::Filter(_) => "InvalidFilter",
            ConfigError::Mutation(_) => "InvalidMutation",
            ConfigError::Naming(_) => "InvalidNaming",
        }
    }
}

async fn worker_config(
    ctx: &Context,
    pr: &PublishedResource,
    endpoints: Vec<String>,
) -> Result<WorkerConfig, ConfigError> {
    let resource = &pr.spec.resource;
    let source = source::find(&ctx.service, &resource.api_group, &resource.kind).await?;
    let projected = schema::project(&source.spec, &pr.spec)?;
    let storage = |spec: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionSpec| {
        spec.versions.iter().find(|v| v.storage).cloned().ok_or_else(|| ConfigError::NoStorage(spec.names.kind.clone()))
    };
    let local_version = storage(&source.spec)?;
    let remote_version = storage(&projected.spec)?;
    let api_resource = |spec: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionSpec, version: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(&spec.group, version, &spec.names.kind),
            &spec.names.plural,
        )
    };
    let selector = |pick: fn(&ResourceFilter) -> Option<LabelSelector>| {
        pr.spec
            .filter
            .as_ref()
            .and_then(pick)
            .map(kube::core::Selector::try_from)
            .transpose()
            .map_err(|e| ConfigError::Filter(e.to_string()))
    };
    let resource_filter = selector(|f| f.resource.clone())?;
    let namespace_filter = selector(|f| f.namespace.clone())?;
    let local_namespaced = source.spec.scope == "Namespaced";
    let naming = Naming::compile(
        &pr.spec.naming.clone().unwrap_or_default(),
        local_namespaced,
    )?;
    let related = pr.spec.related.clone().unwrap_or_default();
    let mutations = pr.spec.mutation.clone().unwrap_or_default();
    let config = WorkerConfig {
        published_resource: pr.name_any(),
        remote: api_resource(&projected.spec, &remote_version.name),
        remote_namespaced: projected.spec.scope == "Namespaced",
        local: api_resource(&source.spec, &local_version.name),
        local_namespaced,
        local_status: local_version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some()),
        naming,
        namespace_metadata: pr
            .spec
            .naming
            .as_ref()
            .and_then(|n| n.namespace_metadata.as_ref())
            .filter(|_| local_namespaced)
            .map(|metadata| ManagedMetadata::new(FIELD_MANAGER, &pr.name_any(), metadata)),
        delete_empty_namespaces: local_namespaced
            && pr
                .spec
                .naming
                .as_ref()
                .and_then(|n| n.delete_empty_namespaces)
                == Some(true),
        templates: Arc::new(related::templates(&related)),
        related,
        kinds: Arc::default(),
        echoes: Arc::default(),
        resource_filter,
        namespace_filter,
        spec_mutator: Arc::new(Mutator::compile(
            &mutations.spec.clone().unwrap_or_default(),
            "spec.mutation.spec",
        )?),
        status_mutator: Arc::new(Mutator::compile(
            &mutations.status.clone().unwrap_or_default(),
            "spec.mutation.status",
        )?),
        workspace_paths: pr.spec.enable_workspace_paths == Some(true),
        endpoints,
    };
    info!(published_resource = %pr.name_any(), remote = %config.remote.api_version, local = %config.local.api_version, "Sync worker configured");
    Ok(config)
}

/// Records on the PublishedResource whether its objects are being synced and,
/// if not, why (condition `Syncing`, and a Warning event on failures).
async fn report(ctx: &Context, pr: &PublishedResource, outcome: Result<(), &ConfigError>) {
    let (ok, reason, message) = match outcome {
        Ok(()) => (true, "Running", "objects are synced".to_string()),
        Err(error) => (false, error.reason(), error.to_string()),
    };
    let mut conditions = pr
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let changed = set_condition(
        &mut conditions,
        condition(
            SYNCING_CONDITION,
            ok,
            reason,
            message.clone(),
            pr.metadata.generation,
        ),
    );
    if !ok {
        let event = kube_runtime::events::Event {
            type_: kube_runtime::events::EventType::Warning,
            reason: "ReconcilingError".into(),
            note: Some(format!("{reason}: {message}")),
            action: "StartSync".into(),
            secondary: None,
        };
        if let Err(error) = ctx
            .service_events
            .publish(&event, &kube::Resource::object_ref(pr, &()))
            .await
        {
            warn!(%error, "Recording an event failed");
        }
    }
    if !changed {
        return;
    }
    let patch = serde_json::json!({"metadata": {"resourceVersion": pr.resource_version()},
                                   "status": {"conditions": conditions}});
    let api: Api<PublishedResource> = Api::all(ctx.service.clone());
    if let Err(error) = api
        .patch_status(
            &pr.name_any(),
            &crate::context::patch_params(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        warn!(%error, published_resource = %pr.name_any(), "Updating the Syncing condition failed; retrying");
    }
}

//! One sync worker per PublishedResource: watches the projected kind in every
//! consumer workspace through each endpoint of the export's virtual
//! workspace (`<endpoint>/clusters/*`) and the local copies on the service
//! cluster, and reconciles each object with [`super::reconcile`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::{Client, ResourceExt};
use kube_runtime::{WatchStreamExt, watcher};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use super::identity::{AGENT_LABEL, RemoteKey};
use super::reconcile::{self, Target};
use crate::api::kcp::CLUSTER_ANNOTATION;
use crate::api::published_resource::ResourceNaming;
use crate::controller::Context;
use crate::kcp::retarget_url;
use crate::mutation::Mutator;

/// Objects reconciled at the same time by one worker.
const CONCURRENCY: usize = 4;
/// Delay before a failed object is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Everything a worker needs to know about its PublishedResource.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Name of the PublishedResource.
    pub published_resource: String,
    /// The kind as consumers see it in kcp (storage version).
    pub remote: ApiResource,
    /// Whether kcp objects live in namespaces.
    pub remote_namespaced: bool,
    /// The kind on the service cluster (storage version).
    pub local: ApiResource,
    /// Whether local copies live in namespaces.
    pub local_namespaced: bool,
    /// Whether the local kind has a status subresource to copy back.
    pub local_status: bool,
    /// Naming templates.
    pub naming: ResourceNaming,
    /// Label selector on kcp objects, if any.
    pub resource_filter: Option<kube::core::Selector>,
    /// Label selector on the namespaces of kcp objects, if any.
    pub namespace_filter: Option<kube::core::Selector>,
    /// Whether to record workspace paths (`enableWorkspacePaths`).
    pub workspace_paths: bool,
    /// Virtual workspace endpoints of the export.
    pub endpoints: Vec<String>,
    /// Rules applied to kcp objects before they are written locally.
    pub spec_mutator: Arc<Mutator>,
    /// Rules applied to local copies before their status goes to kcp.
    pub status_mutator: Arc<Mutator>,
}

/// Runs a worker until `stop` flips to true.
pub async fn run(ctx: Arc<Context>, config: Arc<WorkerConfig>, stop: watch::Receiver<bool>) {
    info!(published_resource = %config.published_resource, endpoints = ?config.endpoints, "Starting sync worker");
    let (queue, mut keys) = mpsc::unbounded_channel::<RemoteKey>();
    let routes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let observed: Arc<Mutex<HashMap<RemoteKey, Instant>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();

    for endpoint in &config.endpoints {
        let Some(client) = wait_until_served(&ctx, &config, endpoint, stop.clone()).await else {
            return;
        };
        let api: Api<DynamicObject> = Api::all_with(client, &config.remote);
        let (queue, routes, endpoint, observed) = (
            queue.clone(),
            routes.clone(),
            endpoint.clone(),
            observed.clone(),
        );
        tasks.spawn(async move {
            let mut events = std::pin::pin!(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .touched_objects()
            );
            while let Some(event) = events.next().await {
                match event {
                    Ok(object) => {
                        let Some(cluster) = object.annotations().get(CLUSTER_ANNOTATION).cloned()
                        else {
                            continue;
                        };
                        routes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(cluster.clone(), endpoint.clone());
                        let key = RemoteKey {
                            cluster,
                            namespace: object.namespace().unwrap_or_default(),
                            name: object.name_any(),
                        };
                        // The change is seen now; its latency runs until the local write.
                        observed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(key.clone())
                            .or_insert_with(Instant::now);
                        let _ = queue.send(key);
                    }
                    Err(error) => warn!(%error, %endpoint, "Watching kcp objects failed; retrying"),
                }
            }
        });
    }

    let local: Api<DynamicObject> = Api::all_with(ctx.service.clone(), &config.local);
    let selector = format!("{AGENT_LABEL}={}", ctx.agent_name);
    let local_queue = queue.clone();
    tasks.spawn(async move {
        let mut events = std::pin::pin!(
            watcher(local, watcher::Config::default().labels(&selector))
                .default_backoff()
                .touched_objects()
        );
        while let Some(event) = events.next().await {
            match event {
                Ok(object) => {
                    let labels = object.labels().clone();
                    if let Some(key) = RemoteKey::from_local(&labels, object.annotations()) {
                        let _ = local_queue.send(key);
                    }
                }
                Err(error) => warn!(%error, "Watching local copies failed; retrying"),
            }
        }
    });

    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let state: Arc<Mutex<(HashSet<RemoteKey>, HashSet<RemoteKey>)>> = Arc::default();
    let mut stop = stop;
    loop {
        let key = tokio::select! {
            key = keys.recv() => match key { Some(key) => key, None => break },
            _ = stop.wait_for(|s| *s) => break,
        };
        {
            let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
            let (in_flight, dirty) = &mut *guard;
            if in_flight.contains(&key) {
                dirty.insert(key);
                continue;
            }
            in_flight.insert(key.clone());
        }
        let Some(endpoint) = routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key.cluster)
            .cloned()
        else {
            // Not seen through any endpoint (yet); the kcp watch will bring it.
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .remove(&key);
            continue;
        };
        let (ctx, config, permits, state, queue, observed) = (
            ctx.clone(),
            config.clone(),
            permits.clone(),
            state.clone(),
            queue.clone(),
            observed.clone(),
        );
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let target = Target {
                endpoint: &endpoint,
                key: &key,
            };
            let requeue = match reconcile::reconcile(&ctx, &config, &target).await {
                Ok(outcome) => {
                    let seen = observed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    if let (true, Some(seen)) = (outcome.wrote, seen) {
                        ctx.metrics
                            .sync_latency
                            .with_label_values(&[config.published_resource.as_str()])
                            .observe(seen.elapsed().as_secs_f64());
                    }
                    outcome.requeue
                }
                Err(error) => {
                    warn!(object = %key, reason = error.reason(), %error, "Syncing failed");
                    ctx.metrics
                        .sync_errors
                        .with_label_values(&[config.published_resource.as_str(), error.reason()])
                        .inc();
                    Some(RETRY)
                }
            };
            let rerun = {
                let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
                guard.0.remove(&key);
                guard.1.remove(&key)
            };
            if rerun {
                let _ = queue.send(key);
            } else if let Some(after) = requeue {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = queue.send(key);
                });
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
    info!(published_resource = %config.published_resource, "Stopped sync worker");
}

/// Waits until the projected kind is served at `<endpoint>/clusters/*`, so
/// watches do not fail while the export is being set up.
async fn wait_until_served(
    ctx: &Context,
    config: &WorkerConfig,
    endpoint: &str,
    mut stop: watch::Receiver<bool>,
) -> Option<Client> {
    let client = match retarget_url(&ctx.kcp.slice_config, &format!("{endpoint}/clusters/*"))
        .and_then(|c| Client::try_from(c).map_err(|e| crate::kcp::KcpError::Url(e.to_string())))
    {
        Ok(client) => client,
        Err(error) => {
            warn!(%error, %endpoint, "Cannot build a client for the virtual workspace");
            return None;
        }
    };
    let group_version = config.remote.api_version.clone();
    let path = if config.remote.group.is_empty() {
        format!("/api/{group_version}")
    } else {
        format!("/apis/{group_version}")
    };
    loop {
        let request = http::Request::get(&path).body(Vec::new()).ok()?;
        match client
            .request::<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList>(request)
            .await
        {
            Ok(list)
                if list
                    .resources
                    .iter()
                    .any(|r| r.name == config.remote.plural) =>
            {
                return Some(client);
            }
            Ok(_) => debug!(%endpoint, "The projected kind is not served yet"),
            Err(error) => debug!(%endpoint, %error, "The projected kind is not served yet"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

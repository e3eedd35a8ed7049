//! One sync worker per PublishedResource: watches the projected kind in every
//! consumer workspace through each endpoint of the export's virtual
//! workspace (`<endpoint>/clusters/*`) and the local copies on the service
//! cluster, and reconciles each object with [`super::reconcile`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::api::{Api, DynamicObject};
use kube::{Client, ResourceExt};
use kube_runtime::watcher::Event;
use kube_runtime::{WatchStreamExt, watcher};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::config::{CopyMirror, WorkerConfig};
use super::error::SyncError;
use super::events::EventSink;
use super::identity::{AGENT_LABEL, RemoteKey, copy_key};
use super::mirror::Mirror;
use super::queue::{Claim, WorkQueue};
use super::reconcile::{self, Outcome, Target};
use crate::api::kcp::CLUSTER_ANNOTATION;
use crate::api::published_resource::{RelatedResourceOrigin, RelatedResourceSpec};
use crate::context::Context;
use crate::runtime::backoff::Backoff;
use crate::runtime::shrink::Shrink;
use crate::sync::related;

/// Objects reconciled at the same time by one worker.
pub const CONCURRENCY: usize = 4;
/// The controller object reconciles are counted under in the
/// `controller_runtime_*` metrics (`controller::sync` runs the workers).
pub const CONTROLLER: &str = "sync";
/// Retries of a failing object: 1 s, doubling up to 5 min.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// Longest time one object's reconcile may take.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time one discovery request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an endpoint that refuses the agent's credentials is warned about.
const REFUSED_WARNING_EVERY: Duration = Duration::from_secs(60);
/// How often a worker forgets what it no longer needs: expired tombstones
/// and idle workspace clients.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);
/// A workspace's client unused this long is dropped at the next
/// housekeeping. Each holds a request buffer and the task that drains it
/// (tens of KiB), so a thousand workspaces synced once would otherwise keep
/// a thousand of them.
const CLIENT_IDLE: Duration = Duration::from_secs(60);

/// The object a watch event is about, unless it only marks a (re)list.
fn touched(event: &Event<DynamicObject>) -> Option<&DynamicObject> {
    match event {
        Event::Apply(object) | Event::InitApply(object) | Event::Delete(object) => Some(object),
        Event::Init | Event::InitDone => None,
    }
}

/// The kcp objects as each endpoint's watch last saw them.
type KcpMirrors = HashMap<String, Arc<Mirror<RemoteKey>>>;

/// Runs a worker until `stop` flips to true.
pub async fn run(ctx: Arc<Context>, config: Arc<WorkerConfig>, stop: watch::Receiver<bool>) {
    info!(published_resource = %config.published_resource, endpoints = ?config.endpoints, "Starting sync worker");
    let unmatched = ctx.kcp.endpoints.rewrites().unmatched(&config.endpoints);
    if !unmatched.is_empty() {
        warn!(published_resource = %config.published_resource, ?unmatched, endpoints = ?config.endpoints, "No endpoint is listed under these --endpoint-url-rewrite bases; check the rule if a shard's consumers are not synced");
    }
    let queue = WorkQueue::new(
        config.echoes.clone(),
        RETRY,
        ctx.metrics.queue(&config.published_resource),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let kcp_objects: Arc<KcpMirrors> = Arc::new(
        config
            .endpoints
            .iter()
            .map(|e| (e.clone(), Arc::new(Mirror::new(RemoteKey::of_kcp_object))))
            .collect(),
    );
    let copies: Arc<CopyMirror> = Arc::new(Mirror::new(copy_key));
    let (events, sender) = EventSink::new(ctx.metrics.events_dropped.clone());
    tasks.spawn(sender);

    for endpoint in config.endpoints.clone() {
        let (ctx, config, queue, stop) = (ctx.clone(), config.clone(), queue.clone(), stop.clone());
        let mirror = kcp_objects[&endpoint].clone();
        // Each endpoint on its own: one shard that is slow to serve the
        // kind does not hold up the others.
        tasks.spawn(async move {
            let Some(client) = wait_until_served(&ctx, &config, &endpoint, stop).await else {
                return;
            };
            watch_endpoint(client, &config, &endpoint, &mirror, &queue).await;
        });
    }

    for spec in config.related.iter().filter(|r| r.watch.is_some()) {
        match spec.origin {
            RelatedResourceOrigin::Service => {
                let (ctx, config, spec, queue) =
                    (ctx.clone(), config.clone(), spec.clone(), queue.clone());
                tasks.spawn(
                    async move { watch_service_related(&ctx, &config, &spec, &queue).await },
                );
            }
            RelatedResourceOrigin::Kcp => {
                for endpoint in config.endpoints.clone() {
                    let (ctx, config, spec, queue) =
                        (ctx.clone(), config.clone(), spec.clone(), queue.clone());
                    tasks.spawn(async move {
                        watch_kcp_related(&ctx, &config, &spec, &endpoint, &queue).await
                    });
                }
            }
        }
    }

    tasks.spawn(watch_copies(
        ctx.clone(),
        config.clone(),
        copies.clone(),
        queue.clone(),
    ));

    // Reconciles read the copies from the mirror: it must be complete first.
    let mut stop = stop;
    let stopped = tokio::select! {
        () = copies.wait_synced() => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    if stopped {
        tasks.shutdown().await;
        return;
    }

    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut clients = WorkspaceClients::default();
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A key is taken only when a reconcile can start: keys that wait stay
        // in the queue, where their changes coalesce, and at most
        // `CONCURRENCY` reconciles (each a large future) exist at a time.
        let next = async {
            let permit = permits.clone().acquire_owned().await.ok()?;
            Some((permit, queue.next().await))
        };
        // Taking the next key is cancel-safe: a key is popped only when
        // the claim is returned.
        let (permit, claim) = tokio::select! {
            next = next => match next {
                Some(next) => next,
                None => break,
            },
            _ = housekeeping.tick() => {
                kcp_objects.values().for_each(|m| m.sweep());
                copies.sweep();
                clients.drop_idle();
                continue;
            }
            _ = stop.wait_for(|s| *s) => break,
        };
        let client = match clients.get(&ctx, claim.endpoint(), &claim.key().cluster) {
            Ok(client) => client,
            Err(error) => {
                warn!(%error, "Cannot reach a consumer workspace");
                continue;
            }
        };
        let objects = kcp_objects[claim.endpoint()].clone();
        let (ctx, config, copies, events) =
            (ctx.clone(), config.clone(), copies.clone(), events.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let target = Target {
                client: &client,
                key: claim.key(),
                objects: &objects,
                copies: &copies,
                events: &events,
            };
            let reconcile = async {
                tokio::time::timeout(
                    RECONCILE_TIMEOUT,
                    reconcile::reconcile(&ctx, &config, &target),
                )
                .await
                .unwrap_or(Err(SyncError::Timeout(RECONCILE_TIMEOUT)))
            };
            let result = ctx.metrics.timed(CONTROLLER, reconcile).await;
            finish(&ctx, &config, claim, result);
        });
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
    info!(published_resource = %config.published_resource, "Stopped sync worker");
}

/// The workspaces' clients, kept while they are used: building one per
/// reconcile churns the allocator enough to double the agent's memory.
#[derive(Default)]
struct WorkspaceClients {
    /// By endpoint and logical cluster, with when each was last used.
    clients: HashMap<(String, String), (Client, Instant)>,
}

impl WorkspaceClients {
    /// The client of `cluster` through `endpoint`, built on first use.
    fn get(&mut self, ctx: &Context, endpoint: &str, cluster: &str) -> Result<Client, SyncError> {
        let now = Instant::now();
        let route = (endpoint.to_string(), cluster.to_string());
        if let Some((client, used)) = self.clients.get_mut(&route) {
            *used = now;
            return Ok(client.clone());
        }
        let client = reconcile::workspace_client(ctx, endpoint, cluster)?;
        self.clients.insert(route, (client.clone(), now));
        Ok(client)
    }

    /// Drops the clients unused for [`CLIENT_IDLE`].
    fn drop_idle(&mut self) {
        self.clients
            .retain(|_, (_, used)| used.elapsed() < CLIENT_IDLE);
        self.clients.shrink_when_sparse();
    }
}

/// Records one reconcile's result in the metrics and the queue.
fn finish(ctx: &Context, config: &WorkerConfig, claim: Claim, result: Result<Outcome, SyncError>) {
    let label = config.published_resource.as_str();
    match result {
        Ok(outcome) => {
            let seen = claim.succeeded(outcome.requeue);
            if let (true, Some(seen)) = (outcome.wrote, seen) {
                ctx.metrics
                    .sync_latency
                    .with_label_values(&[label])
                    .observe(seen.elapsed().as_secs_f64());
            }
        }
        Err(error) => {
            if error.is_conflict() {
                debug!(object = %claim.key(), %error, "Wrote against an outdated version; retrying");
            } else {
                warn!(object = %claim.key(), reason = error.reason(), %error, "Syncing failed");
            }
            ctx.metrics
                .sync_errors
                .with_label_values(&[label, error.reason()])
                .inc();
            ctx.metrics.failed(CONTROLLER, error.reason());
            if error.is_terminal() {
                ctx.metrics.terminal(CONTROLLER);
            }
            claim.failed();
        }
    }
}

/// Watches the local copies of this agent and queues their kcp objects.
async fn watch_copies(
    ctx: Arc<Context>,
    config: Arc<WorkerConfig>,
    copies: Arc<CopyMirror>,
    queue: WorkQueue,
) {
    let local: Api<DynamicObject> = Api::all_with(ctx.service.clone(), &config.local);
    let selector = format!("{AGENT_LABEL}={}", ctx.agent_name);
    let mut events = std::pin::pin!(
        watcher(local, watcher::Config::default().labels(&selector)).default_backoff()
    );
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                warn!(%error, "Watching local copies failed; retrying");
                continue;
            }
        };
        copies.observe(&event);
        if let Some(object) = touched(&event)
            && let Some(key) = RemoteKey::from_local(object.labels(), object.annotations())
        {
            queue.observed_local(key, object);
        }
    }
}

/// Watches the projected kind at one endpoint and queues every change.
async fn watch_endpoint(
    client: Client,
    config: &WorkerConfig,
    endpoint: &str,
    mirror: &Mirror<RemoteKey>,
    queue: &WorkQueue,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &config.remote);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                mirror.observe(&event);
                if let Some(object) = touched(&event)
                    && let Some(key) = RemoteKey::of_kcp_object(object)
                {
                    queue.observed_kcp(key, endpoint, object);
                }
            }
            Err(error) => warn!(%error, %endpoint, "Watching kcp objects failed; retrying"),
        }
    }
}

/// The changed objects of a related kind, watched through `client`;
/// `None` (logged) when the kind cannot be resolved.
async fn related_changes(
    config: &WorkerConfig,
    client: Client,
    spec: &RelatedResourceSpec,
) -> Option<impl Stream<Item = DynamicObject> + use<>> {
    let kind = match related::origin_kind(&config.kinds, &client, spec).await {
        Ok(kind) => kind,
        Err(error) => {
            warn!(identifier = %spec.identifier, %error, "Cannot watch related objects");
            return None;
        }
    };
    let api: Api<DynamicObject> = Api::all_with(client, &kind);
    Some(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .touched_objects()
            .filter_map(|change| futures::future::ready(change.ok())),
    )
}

/// Watches a service-origin related kind and wakes up the primaries its
/// objects belong to: by owner reference to the local primary, or every
/// local primary in the namespace matching `watch.bySelector`.
async fn watch_service_related(
    ctx: &Context,
    config: &WorkerConfig,
    spec: &RelatedResourceSpec,
    queue: &WorkQueue,
) {
    let Some(changes) = related_changes(config, ctx.service.clone(), spec).await else {
        return;
    };
    let mut changes = std::pin::pin!(changes);
    while let Some(object) = changes.next().await {
        let Some(namespace) = object.namespace() else {
            continue;
        };
        let primaries: Api<DynamicObject> =
            Api::namespaced_with(ctx.service.clone(), &namespace, &config.local);
        let mut found = Vec::new();
        if let Some(watch) = &spec.watch {
            if watch.by_owner.is_some() {
                for owner in object
                    .owner_references()
                    .iter()
                    .filter(|o| o.kind == config.local.kind)
                {
                    if let Ok(Some(primary)) = primaries.get_opt(&owner.name).await {
                        found.push(primary);
                    }
                }
            }
            if let Some(selector) = watch
                .by_selector
                .clone()
                .and_then(|s| kube::core::Selector::try_from(s).ok())
            {
                let params = kube::api::ListParams::default()
                    .labels(&format!("{selector},{AGENT_LABEL}={}", ctx.agent_name));
                if let Ok(list) = primaries.list(&params).await {
                    found.extend(list.items);
                }
            }
        }
        for primary in found {
            if let Some(key) = RemoteKey::from_local(primary.labels(), primary.annotations()) {
                queue.add(key);
            }
        }
    }
}

/// Watches a kcp-origin related kind through one endpoint and wakes up the
/// primaries its objects belong to: by owner reference, or every primary in
/// the namespace matching `watch.bySelector`.
async fn watch_kcp_related(
    ctx: &Context,
    config: &WorkerConfig,
    spec: &RelatedResourceSpec,
    endpoint: &str,
    queue: &WorkQueue,
) {
    let client_of = |cluster: &str| ctx.kcp.endpoints.cluster(endpoint, cluster).ok();
    let Some(wildcard) = client_of("*") else {
        return;
    };
    let Some(changes) = related_changes(config, wildcard, spec).await else {
        return;
    };
    let mut changes = std::pin::pin!(changes);
    while let Some(object) = changes.next().await {
        let (Some(cluster), Some(namespace)) = (
            object.annotations().get(CLUSTER_ANNOTATION).cloned(),
            object.namespace(),
        ) else {
            continue;
        };
        queue.route(&cluster, endpoint);
        let mut names: Vec<String> = Vec::new();
        if let Some(watch) = &spec.watch {
            if watch.by_owner.is_some() {
                names.extend(
                    object
                        .owner_references()
                        .iter()
                        .filter(|o| o.kind == config.remote.kind)
                        .map(|o| o.name.clone()),
                );
            }
            if let Some(selector) = watch
                .by_selector
                .clone()
                .and_then(|s| kube::core::Selector::try_from(s).ok())
                && let Some(client) = client_of(&cluster)
            {
                let primaries: Api<DynamicObject> =
                    Api::namespaced_with(client, &namespace, &config.remote);
                if let Ok(list) = primaries
                    .list(&kube::api::ListParams::default().labels(&selector.to_string()))
                    .await
                {
                    names.extend(list.items.iter().map(|p| p.name_any()));
                }
            }
        }
        for name in names {
            queue.add(RemoteKey {
                cluster: cluster.clone(),
                namespace: namespace.clone(),
                name,
            });
        }
    }
}

/// Waits until the projected kind is served at `<endpoint>/clusters/*`, so
/// watches do not fail while the export is being set up.
async fn wait_until_served(
    ctx: &Context,
    config: &WorkerConfig,
    endpoint: &str,
    mut stop: watch::Receiver<bool>,
) -> Option<Client> {
    let client = match ctx.kcp.endpoints.cluster(endpoint, "*") {
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
    let mut refused_warned: Option<Instant> = None;
    loop {
        let request = http::Request::get(&path).body(Vec::new()).ok()?;
        let probe = client
            .request::<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList>(request);
        match tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| Err(kube::Error::Service("discovery timed out".into())))
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
            // Not a matter of time: this shard refuses the agent's
            // credentials (on a sharded kcp, often a ServiceAccount token
            // that only its own shard can look up).
            Err(kube::Error::Api(status))
                if matches!(status.code, 401 | 403)
                    && refused_warned.is_none_or(|at| at.elapsed() >= REFUSED_WARNING_EVERY) =>
            {
                warn!(%endpoint, code = status.code, error = %status.message,
                    "The virtual workspace refuses the agent's credentials; retrying");
                refused_warned = Some(Instant::now());
            }
            Err(error) => debug!(%endpoint, %error, "The projected kind is not served yet"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_workspace_clients_are_dropped_and_used_ones_kept() {
        let client = || {
            let refuse = tower::service_fn(|_: http::Request<kube::client::Body>| async {
                Err::<http::Response<kube::client::Body>, _>(std::io::Error::other("unused"))
            });
            Client::new(refuse, "default")
        };
        let long_ago = Instant::now()
            .checked_sub(CLIENT_IDLE + Duration::from_secs(1))
            .expect("the clock runs longer than the idle time");
        let mut clients = WorkspaceClients::default();
        for (cluster, used) in [("idle", long_ago), ("busy", Instant::now())] {
            let route = ("https://endpoint".to_string(), cluster.to_string());
            clients.clients.insert(route, (client(), used));
        }
        clients.drop_idle();
        let left: Vec<&str> = clients.clients.keys().map(|(_, c)| c.as_str()).collect();
        assert_eq!(left, ["busy"]);
    }
}

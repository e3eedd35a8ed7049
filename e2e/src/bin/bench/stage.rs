//! One run's set-up on the servers (provider, agent, consumers) and the
//! watches that record when each object was first seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::agent::{AgentProcess, AgentSettings};
use e2e::kcp::TestWorkspace;
use e2e::publishing::Provider;
use e2e::scene::Scene;
use e2e::service::{patch_params, post_params};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sync_agent::api::kcp::apis_v1alpha1::APIExportEndpointSlice;
use sync_agent::api::kcp::tenancy_v1alpha1::Workspace;
use sync_agent::api::published_resource::ResourceNaming;
use sync_agent::sync::identity::{AGENT_LABEL, FINALIZER, RemoteKey};

/// How long one workspace's collection delete is retried.
const DELETE_TIMEOUT: Duration = Duration::from_secs(300);
use sync_agent::sync::naming::{Naming, NamingContext};
use sync_agent::sync::object::finalizer_patch;

use crate::config::{AGENT_LOG_FILTER, CONSUMER_NAMESPACE};

// ---------------------------------------------------------------------------
// Observing the servers: watches record when each object was first seen

/// First-seen times of keys, filled by watches.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) times: Mutex<HashMap<String, Instant>>,
    /// Watches that finished their initial list.
    pub(crate) ready: AtomicUsize,
}

impl Seen {
    pub(crate) fn record(&self, key: String, at: Instant) {
        self.lock().entry(key).or_insert(at);
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, key: &str) -> Option<Instant> {
        self.lock().get(key).copied()
    }

    /// How many keys match, and the first and last time one was seen.
    pub(crate) fn span(
        &self,
        matches: impl Fn(&str) -> bool,
    ) -> (usize, Option<Instant>, Option<Instant>) {
        let times = self.lock();
        let matching = times.iter().filter(|(k, _)| matches(k)).map(|(_, t)| *t);
        matching.fold((0, None, None), |(count, first, last), t| {
            (
                count + 1,
                Some(first.map_or(t, |f: Instant| f.min(t))),
                Some(last.map_or(t, |l: Instant| l.max(t))),
            )
        })
    }

    /// Waits until `expected` keys match; returns the first and last time.
    pub(crate) async fn wait_for_count(
        &self,
        what: &str,
        expected: usize,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(Instant, Instant)> {
        let start = Instant::now();
        let mut reported = start;
        loop {
            let (count, first, last) = self.span(&matches);
            if count >= expected
                && let (Some(first), Some(last)) = (first, last)
            {
                return Ok((first, last));
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}: {count} of {expected}");
            }
            if reported.elapsed() > Duration::from_secs(15) {
                eprintln!("bench:   {what}: {count} of {expected}");
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `key` was seen and returns when.
    pub(crate) async fn wait_for(&self, key: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let start = Instant::now();
        loop {
            if let Some(at) = self.get(key) {
                return Ok(at);
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {key}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `watches` watches have listed; the deadline grows with
    /// their number, since a thousand first lists queue on a busy kcp.
    pub(crate) async fn wait_until_ready(&self, watches: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        let timeout = Duration::from_secs(60)
            + Duration::from_millis(250) * u32::try_from(watches).unwrap_or(u32::MAX);
        loop {
            let ready = self.ready.load(Ordering::SeqCst);
            if ready >= watches {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("only {ready} of the benchmark's {watches} watches started in {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A watch task, stopped when dropped.
#[derive(Debug)]
pub(crate) struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches `api` and records `keys(object, deleted)` in `seen`.
pub(crate) fn watch(
    api: Api<DynamicObject>,
    config: watcher::Config,
    seen: Arc<Seen>,
    keys: impl Fn(&DynamicObject, bool) -> Vec<String> + Send + 'static,
) -> Watch {
    Watch(tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut listed = false;
        while let Some(event) = events.next().await {
            let now = Instant::now();
            match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    keys(&object, false)
                        .into_iter()
                        .for_each(|k| seen.record(k, now));
                }
                Ok(watcher::Event::Delete(object)) => {
                    keys(&object, true)
                        .into_iter()
                        .for_each(|k| seen.record(k, now));
                }
                Ok(watcher::Event::InitDone) if !listed => {
                    listed = true;
                    seen.ready.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(error) => eprintln!("bench: a watch failed and restarts: {error}"),
            }
        }
    }))
}

pub(crate) fn is_gone(key: &str) -> bool {
    key.starts_with("gone:")
}

// ---------------------------------------------------------------------------
// One run's servers-side set-up: provider, agent, consumers

/// A consumer workspace bound to the export.
pub(crate) struct Consumer {
    pub(crate) workspace: TestWorkspace,
    pub(crate) client: Client,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("workspace", &self.workspace.path)
            .finish()
    }
}

/// A provider with the published `Widget` kind and bound consumers, built
/// by the e2e library's `Scene`; the agent runs only when a scenario starts it.
#[derive(Debug)]
pub(crate) struct Stage {
    pub(crate) provider: Provider,
    pub(crate) resource: ApiResource,
    pub(crate) consumers: Vec<Consumer>,
    pub(crate) agent: Option<AgentProcess>,
    pub(crate) settings: AgentSettings,
    pub(crate) setup_concurrency: usize,
    /// How long making and binding the consumer workspaces took.
    pub(crate) bound_in: Duration,
}

impl Stage {
    pub(crate) async fn new(
        prefix: &str,
        workspaces: usize,
        setup_concurrency: usize,
    ) -> anyhow::Result<Self> {
        let scene = Scene::new(prefix, json!({})).await;
        let binding = Instant::now();
        let consumers = futures::stream::iter(0..workspaces)
            .map(|_| scene.consumer("bench"))
            .buffer_unordered(setup_concurrency.clamp(1, 8))
            .map(|(workspace, client)| Consumer { workspace, client })
            .collect::<Vec<_>>()
            .await;
        let bound_in = binding.elapsed();
        let Scene {
            provider,
            agent,
            resource,
        } = scene;
        // The scene's agent logs at the tests' level; the benchmark's agents
        // all run with the same settings, started by the scenarios.
        agent.stop().await?;
        let mut settings = provider.agent_settings();
        settings.log_filter = AGENT_LOG_FILTER.into();
        Ok(Self {
            provider,
            resource,
            consumers,
            agent: None,
            settings,
            setup_concurrency,
            bound_in,
        })
    }

    /// Starts the agent; returns when it was spawned (it is ready on return).
    pub(crate) async fn start_agent(&mut self) -> anyhow::Result<Instant> {
        self.stop_agent().await?;
        let spawned = Instant::now();
        self.agent = Some(AgentProcess::start(&self.provider.env, &self.settings).await?);
        Ok(spawned)
    }

    pub(crate) async fn stop_agent(&mut self) -> anyhow::Result<()> {
        if let Some(agent) = self.agent.take() {
            agent.stop().await?;
        }
        Ok(())
    }

    pub(crate) fn agent(&self) -> anyhow::Result<&AgentProcess> {
        self.agent.as_ref().context("the agent is not running")
    }

    pub(crate) fn kcp_widgets(&self, consumer: &Consumer) -> Api<DynamicObject> {
        Api::namespaced_with(consumer.client.clone(), CONSUMER_NAMESPACE, &self.resource)
    }

    pub(crate) fn copy_selector(&self) -> String {
        format!("{AGENT_LABEL}={}", self.provider.agent_name)
    }

    /// Records `<cluster>/<name>` of every copy (`gone:…` once deleted).
    pub(crate) fn watch_copies(&self) -> (Arc<Seen>, Watch) {
        let seen = Arc::new(Seen::default());
        let api = Api::all_with(self.provider.service.clone(), &self.resource);
        let config = watcher::Config::default().labels(&self.copy_selector());
        let w = watch(api, config, seen.clone(), |object, deleted| {
            RemoteKey::from_local(object.labels(), object.annotations())
                .map(|key| {
                    let gone = if deleted { "gone:" } else { "" };
                    format!("{gone}{}/{}", key.cluster, key.name)
                })
                .into_iter()
                .collect()
        });
        (seen, w)
    }

    /// Records `<cluster>/<name>` of every kcp object, `<cluster>/<name>=<phase>`
    /// for each status phase it shows, and `gone:<cluster>/<name>` once deleted.
    pub(crate) fn watch_kcp(&self) -> (Arc<Seen>, Vec<Watch>) {
        let seen = Arc::new(Seen::default());
        let watches = self
            .consumers
            .iter()
            .map(|consumer| {
                let cluster = consumer.workspace.cluster.clone();
                watch(
                    self.kcp_widgets(consumer),
                    watcher::Config::default(),
                    seen.clone(),
                    move |object, deleted| {
                        let base = format!("{cluster}/{}", object.name_any());
                        if deleted {
                            return vec![format!("gone:{base}")];
                        }
                        let mut keys = vec![base.clone()];
                        if let Some(phase) = object.data["status"]["phase"].as_str() {
                            keys.push(format!("{base}={phase}"));
                        }
                        keys
                    },
                )
            })
            .collect();
        (seen, watches)
    }

    /// Creates `per_workspace` widgets in every consumer (not measured).
    pub(crate) async fn create_objects(
        &self,
        prefix: &str,
        per_workspace: usize,
    ) -> anyhow::Result<()> {
        let jobs = self
            .consumers
            .iter()
            .flat_map(|c| (0..per_workspace).map(move |i| (c, format!("{prefix}-{i:05}"))));
        futures::stream::iter(jobs)
            .map(|(consumer, name)| async move {
                create_widget(&self.kcp_widgets(consumer), &self.resource, &name, true).await
            })
            .buffer_unordered(self.setup_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Writes `status.phase` on every copy, as a provider's operator would
    /// (not measured); returns how many.
    pub(crate) async fn set_status_on_copies(&self, phase: &str) -> anyhow::Result<usize> {
        let service = &self.provider.service;
        let copies = Api::<DynamicObject>::all_with(service.clone(), &self.resource)
            .list(&ListParams::default().labels(&self.copy_selector()))
            .await?
            .items;
        let count = copies.len();
        futures::stream::iter(copies)
            .map(|copy| async move {
                let namespace = copy.namespace().unwrap_or_default();
                Api::<DynamicObject>::namespaced_with(service.clone(), &namespace, &self.resource)
                    .patch_status(
                        &copy.name_any(),
                        &patch_params(),
                        &Patch::Merge(json!({"status": {"phase": phase}})),
                    )
                    .await
                    .map(drop)
            })
            .buffer_unordered(self.setup_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(count)
    }

    /// Deletes every widget in every consumer, one collection delete per workspace.
    pub(crate) async fn delete_all(&self) -> anyhow::Result<()> {
        futures::stream::iter(&self.consumers)
            .map(|consumer| async move {
                let widgets = self.kcp_widgets(consumer);
                // Thousands of objects marked at once can make kcp's etcd
                // time out on one collection; it is asked again.
                e2e::poll::poll_until("a collection delete", DELETE_TIMEOUT, async || {
                    widgets
                        .delete_collection(&DeleteParams::default(), &ListParams::default())
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
                .await
            })
            .buffer_unordered(self.setup_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The virtual workspace URL of the export (one shard here).
    pub(crate) async fn endpoint(&self) -> anyhow::Result<String> {
        let slice = Api::<APIExportEndpointSlice>::all(self.provider.kcp_client.clone())
            .get(&self.provider.export)
            .await?;
        slice
            .status
            .and_then(|s| s.endpoints.first().map(|e| e.url.clone()))
            .context("the APIExportEndpointSlice lists no endpoint")
    }

    /// Removes everything (not measured): with the agent stopped, releases
    /// its finalizers directly (much faster than deleting every object
    /// through the agent), deletes the workspaces, the copies' namespaces and
    /// the provider (whose CRD takes the copies with it), and waits until the
    /// workspaces are gone, so their deletion does not load the next run.
    pub(crate) async fn cleanup(mut self) -> anyhow::Result<()> {
        self.stop_agent().await?;
        for consumer in &self.consumers {
            let api = self.kcp_widgets(consumer);
            let objects = api.list(&ListParams::default()).await?.items;
            futures::stream::iter(objects.iter().filter_map(|object| {
                Some((
                    object.name_any(),
                    finalizer_patch(object, FINALIZER, false)?,
                ))
            }))
            .map(|(name, patch)| {
                let api = &api;
                async move {
                    api.patch(&name, &patch_params(), &Patch::Merge(&patch))
                        .await
                        .map(drop)
                }
            })
            .buffer_unordered(self.setup_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        }
        let namespaces: Api<Namespace> = Api::all(self.provider.service.clone());
        for consumer in &self.consumers {
            let _ = namespaces
                .delete(&consumer.workspace.cluster, &DeleteParams::default())
                .await;
            consumer.workspace.delete(&self.provider.kcp).await?;
        }
        self.provider.cleanup().await?;
        let deadline = Instant::now()
            + Duration::from_secs(600)
            + Duration::from_secs(1) * u32::try_from(self.consumers.len()).unwrap_or(u32::MAX);
        let workspaces = self
            .consumers
            .iter()
            .map(|c| &c.workspace)
            .chain([&self.provider.workspace]);
        for workspace in workspaces {
            let api: Api<Workspace> = Api::all(self.provider.kcp.client(&workspace.parent)?);
            while api.get_opt(&workspace.name).await?.is_some() {
                if Instant::now() > deadline {
                    bail!("workspace {} is still being deleted", workspace.path);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }
}

/// Cleans up after a run; a failure is reported, not fatal.
pub(crate) async fn cleanup(stage: Stage) {
    if let Err(error) = stage.cleanup().await {
        eprintln!("bench: cleaning up failed: {error:#}");
    }
}

/// Creates a widget; `retry` retries while a fresh binding settles.
pub(crate) async fn create_widget(
    api: &Api<DynamicObject>,
    resource: &ApiResource,
    name: &str,
    retry: bool,
) -> anyhow::Result<()> {
    let mut widget = DynamicObject::new(name, resource).within(CONSUMER_NAMESPACE);
    widget.data = json!({"spec": {"color": "blue"}});
    let mut attempt = 0;
    loop {
        match api.create(&post_params(), &widget).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if retry && status.code == 409 => return Ok(()),
            Err(_) if retry && attempt < 30 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).with_context(|| format!("creating widget {name}")),
        }
    }
}

/// The copy's namespace and name under the agent's default naming.
pub(crate) fn local_name(object: &Value, cluster: &str) -> anyhow::Result<(String, String)> {
    let context = NamingContext {
        object,
        cluster_name: cluster,
        cluster_path: "",
    };
    let placement = Naming::compile(&ResourceNaming::default(), true)?.resolve(&context)?;
    Ok((placement.namespace.unwrap_or_default(), placement.name))
}

//! The ceiling: a minimal client doing the writes the agent must do, with
//! the agent's concurrency.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;
use e2e::service::{patch_params, post_params};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams, Patch};
use kube::{Client, ResourceExt};
use serde_json::json;
use sync_agent::api::kcp::CLUSTER_ANNOTATION;
use sync_agent::sync::events::EventSink;
use sync_agent::sync::identity::{FINALIZER, RemoteKey};
use sync_agent::sync::object::{Owner, finalizer_patch, new_local};

use crate::config::{Cli, Figures, READY, Size, seconds};
use crate::probe::{Probe, costs};
use crate::scenarios::window_rate;
use crate::stage::{Stage, cleanup, is_gone, local_name};

pub(crate) async fn ceiling_run(
    cli: &Cli,
    probe: &Probe,
    size: Size,
    with_events: bool,
) -> anyhow::Result<Figures> {
    let total = size.total();
    let prefix = if with_events {
        "bench-ceilev"
    } else {
        "bench-ceil"
    };
    let stage = Stage::new(prefix, size.workspaces, cli.setup_concurrency).await?;
    eprintln!("bench:   creating {total} widgets");
    stage.create_objects("w", size.objects).await?;
    let endpoint = stage.endpoint().await?;
    let client = Ceiling::new(&stage, &endpoint, cli.concurrency)?;
    let me = std::process::id();
    let mut f = Figures::new();

    let (copies, copies_watch) = stage.watch_copies();
    copies.wait_until_ready(1).await?;
    let before = probe.begin(me).await;
    let start = Instant::now();
    let events = with_events.then(Events::start);
    client.sync_down(events.as_ref().map(|e| &e.sink)).await?;
    let (first, last) = copies
        .wait_for_count("copies", total, size.timeout(), |k| !is_gone(k))
        .await?;
    if let Some(events) = events {
        events.finish().await;
    }
    let after = probe.end(me).await;
    f.insert("sync.total_s".into(), seconds(start, last));
    f.insert("sync.window_s".into(), seconds(first, last));
    f.insert("sync.rate".into(), window_rate(total, first, last));
    f.extend(costs("sync", &before, &after, total, &probe.background));

    stage.set_status_on_copies(READY).await?;
    let (kcp, kcp_watches) = stage.watch_kcp();
    kcp.wait_until_ready(stage.consumers.len()).await?;
    let before = probe.begin(me).await;
    let start = Instant::now();
    let events = with_events.then(Events::start);
    client.status_up(events.as_ref().map(|e| &e.sink)).await?;
    let suffix = format!("={READY}");
    let (first, last) = kcp
        .wait_for_count("statuses in kcp", total, size.timeout(), |k| {
            k.ends_with(&suffix)
        })
        .await?;
    if let Some(events) = events {
        events.finish().await;
    }
    let after = probe.end(me).await;
    f.insert("status.total_s".into(), seconds(start, last));
    f.insert("status.rate".into(), window_rate(total, first, last));
    f.extend(costs("status", &before, &after, total, &probe.background));

    drop((copies_watch, kcp_watches));
    cleanup(stage).await;
    Ok(f)
}

/// The agent's event sink, for the ceiling, and the task writing its events.
pub(crate) struct Events {
    pub(crate) sink: EventSink,
    pub(crate) sender: tokio::task::JoinHandle<()>,
}

impl Events {
    pub(crate) fn start() -> Self {
        let dropped = prometheus::IntCounter::new("events_dropped", "events dropped")
            .expect("a valid metric name");
        let (sink, sender) = EventSink::new(dropped);
        Self {
            sink,
            sender: tokio::spawn(sender),
        }
    }

    /// Waits until every queued event is written.
    pub(crate) async fn finish(self) {
        drop(self.sink);
        if let Err(error) = self.sender.await {
            eprintln!("bench: the event sender failed: {error}");
        }
    }
}

/// The minimal client: the writes only, with reads limited to one list.
pub(crate) struct Ceiling<'a> {
    pub(crate) stage: &'a Stage,
    pub(crate) wildcard: Api<DynamicObject>,
    pub(crate) clients: HashMap<String, Client>,
    pub(crate) concurrency: usize,
}

impl std::fmt::Debug for Ceiling<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ceiling")
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl<'a> Ceiling<'a> {
    pub(crate) fn new(
        stage: &'a Stage,
        endpoint: &str,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let kcp = &stage.provider.kcp;
        let at = |path: &str| -> anyhow::Result<Client> {
            Ok(Client::try_from(
                kcp.config_at(&format!("{endpoint}/clusters/{path}"))?,
            )?)
        };
        let clients = stage
            .consumers
            .iter()
            .map(|c| Ok((c.workspace.cluster.clone(), at(&c.workspace.cluster)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            stage,
            wildcard: Api::all_with(at("*")?, &stage.resource),
            clients,
            concurrency: concurrency.max(1),
        })
    }

    pub(crate) fn client(&self, key: &RemoteKey) -> anyhow::Result<&Client> {
        self.clients
            .get(&key.cluster)
            .with_context(|| format!("no client for workspace {}", key.cluster))
    }

    pub(crate) fn remote(&self, key: &RemoteKey) -> anyhow::Result<Api<DynamicObject>> {
        Ok(Api::namespaced_with(
            self.client(key)?.clone(),
            &key.namespace,
            &self.stage.resource,
        ))
    }

    /// Lists every object through the virtual workspace, creates one
    /// namespace per workspace, then per object sets the finalizer and
    /// creates the copy, queueing the agent's `ObjectAccepted` and
    /// `ObjectPlaced` events on `events`.
    pub(crate) async fn sync_down(&self, events: Option<&EventSink>) -> anyhow::Result<()> {
        let objects = self.wildcard.list(&ListParams::default()).await?.items;
        let service = &self.stage.provider.service;
        let namespaces: Api<Namespace> = Api::all(service.clone());
        futures::stream::iter(self.clients.keys())
            .map(|cluster| {
                let namespaces = namespaces.clone();
                async move {
                    let namespace: Namespace =
                        serde_json::from_value(json!({"metadata": {"name": cluster}}))?;
                    match namespaces.create(&post_params(), &namespace).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                        Err(error) => Err(anyhow::Error::from(error)),
                    }
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let resource = &self.stage.resource;
        let agent = self.stage.provider.agent_name.as_str();
        futures::stream::iter(objects)
            .map(|object| async move {
                let key = RemoteKey {
                    cluster: object
                        .annotations()
                        .get(CLUSTER_ANNOTATION)
                        .cloned()
                        .context("an object without its workspace annotation")?,
                    namespace: object.namespace().unwrap_or_default(),
                    name: object.name_any(),
                };
                let object = match finalizer_patch(&object, FINALIZER, true) {
                    None => object,
                    Some(patch) => {
                        let patched = self
                            .remote(&key)?
                            .patch(&key.name, &patch_params(), &Patch::Merge(&patch))
                            .await?;
                        if let Some(events) = events {
                            events.normal(
                                self.client(&key)?,
                                &patched,
                                "ObjectAccepted",
                                "accepted",
                            );
                        }
                        patched
                    }
                };
                let value = serde_json::to_value(&object)?;
                let (namespace, name) = local_name(&value, &key.cluster)?;
                let owner = Owner {
                    key: &key,
                    agent,
                    workspace_path: None,
                };
                let copy = new_local(
                    &value,
                    &resource.api_version,
                    &resource.kind,
                    &name,
                    Some(&namespace),
                    owner,
                );
                Api::<DynamicObject>::namespaced_with(service.clone(), &namespace, resource)
                    .create(&post_params(), &serde_json::from_value(copy)?)
                    .await?;
                if let Some(events) = events {
                    events.normal(self.client(&key)?, &object, "ObjectPlaced", "placed");
                }
                anyhow::Ok(())
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Lists the copies and writes each one's status on its kcp object,
    /// queueing the agent's `ObjectStatusSynced` event on `events`.
    pub(crate) async fn status_up(&self, events: Option<&EventSink>) -> anyhow::Result<()> {
        let copies = Api::<DynamicObject>::all_with(
            self.stage.provider.service.clone(),
            &self.stage.resource,
        )
        .list(&ListParams::default().labels(&self.stage.copy_selector()))
        .await?
        .items;
        futures::stream::iter(copies)
            .map(|copy| async move {
                let key = RemoteKey::from_local(copy.labels(), copy.annotations())
                    .context("a copy without its identity")?;
                let patched = self
                    .remote(&key)?
                    .patch_status(
                        &key.name,
                        &patch_params(),
                        &Patch::Merge(json!({"status": copy.data["status"]})),
                    )
                    .await?;
                if let Some(events) = events {
                    events.normal(self.client(&key)?, &patched, "ObjectStatusSynced", "synced");
                }
                anyhow::Ok(())
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

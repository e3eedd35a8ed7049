//! What every controller of the agent shares: clients, recorders, metrics,
//! the agent's identity and options, and the namespaces known to exist.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_runtime::events::Recorder;
use serde_json::json;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tracing::warn;

use crate::kcp::KcpTarget;
use crate::metrics::Metrics;
use crate::options::Options;
use crate::runtime::events::recorder;
use crate::sync::namespaces::ManagedMetadata;
use crate::sync::stale_namespaces;
use crate::sync::upstream_state::UpstreamStates;

/// Field manager and event reporter of everything the agent writes.
pub const FIELD_MANAGER: &str = "sync-agent";

/// What every controller needs.
#[derive(Clone)]
pub struct Context {
    /// Client of the service cluster.
    pub service: Client,
    /// Where the export lives in kcp.
    pub kcp: KcpTarget,
    /// The agent's name (ownership label value).
    pub agent_name: String,
    /// Label selector of the PublishedResources this agent handles.
    pub selector: String,
    /// Metrics.
    pub metrics: Metrics,
    /// Events on service-cluster objects.
    pub service_events: Recorder,
    /// Events on objects in the export's workspace.
    pub kcp_events: Recorder,
    /// Wait for other finalizers on kcp objects before deleting copies.
    pub wait_for_foreign_finalizers: bool,
    /// Finalizer on kcp-origin related objects: `syncagent.kcp.io/cleanup`,
    /// or one per agent with `--per-agent-related-finalizer`.
    pub related_finalizer: String,
    /// The last-known states of an upstream agent this one takes over
    /// from (`--upstream-state-namespace`).
    pub upstream_states: Option<Arc<UpstreamStates>>,
    /// Namespaces on the service cluster the agent knows to exist.
    service_namespaces: Arc<Mutex<HashSet<String>>>,
    /// Namespace metadata applied (or found in conflict) since the start,
    /// as [`ManagedMetadata::applied_to`] names it.
    namespace_metadata: Arc<Mutex<HashSet<String>>>,
    /// A lock per service-cluster namespace in use: copies are placed under
    /// a shared hold, a namespace is inspected and deleted under an
    /// exclusive one, so that no copy lands between the two.
    namespace_locks: Arc<Mutex<HashMap<String, Arc<RwLock<()>>>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("kcp", &self.kcp)
            .field("agent_name", &self.agent_name)
            .field("selector", &self.selector)
            .finish()
    }
}

impl Context {
    /// Builds the shared context; `instance` names this replica in events.
    pub fn new(
        service: Client,
        kcp: KcpTarget,
        options: &Options,
        metrics: Metrics,
        instance: String,
        upstream_states: Option<UpstreamStates>,
    ) -> Arc<Self> {
        Arc::new(Self {
            service_events: recorder(service.clone(), FIELD_MANAGER, &instance),
            kcp_events: recorder(kcp.export_client.clone(), FIELD_MANAGER, &instance),
            service,
            kcp,
            agent_name: options.agent_name(),
            selector: options.published_resource_selector.clone(),
            metrics,
            wait_for_foreign_finalizers: options.wait_for_foreign_finalizers,
            related_finalizer: options.related_finalizer(),
            upstream_states: upstream_states.map(Arc::new),
            service_namespaces: Arc::default(),
            namespace_metadata: Arc::default(),
            namespace_locks: Arc::default(),
        })
    }

    fn known_namespaces(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.service_namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn namespace_lock(&self, name: &str) -> Arc<RwLock<()>> {
        let mut locks = self
            .namespace_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(name.to_string()).or_default().clone()
    }

    /// Held while a copy is placed into the service-cluster namespace `name`.
    pub async fn placing_into(&self, name: &str) -> OwnedRwLockReadGuard<()> {
        self.namespace_lock(name).read_owned().await
    }

    /// Held while the service-cluster namespace `name` is inspected and
    /// deleted: no copy of this agent is placed into it meanwhile.
    pub async fn clearing(&self, name: &str) -> OwnedRwLockWriteGuard<()> {
        self.namespace_lock(name).write_owned().await
    }

    /// Makes sure a namespace exists on the service cluster, asking the
    /// server only the first time; a namespace it creates is labelled as
    /// this agent's ([`stale_namespaces::CREATED_BY_LABEL`]). A namespace
    /// deleted later is noticed when a create in it fails (see
    /// [`Context::forget_service_namespace`]).
    pub async fn ensure_service_namespace(&self, name: &str) -> Result<(), kube::Error> {
        if self.known_namespaces().contains(name) {
            return Ok(());
        }
        let labels = stale_namespaces::creation_labels(&self.agent_name);
        ensure_namespace(&self.service, name, &labels).await?;
        self.known_namespaces().insert(name.to_string());
        Ok(())
    }

    /// Forgets that a namespace exists, after a create in it found it gone
    /// or being deleted, or after the agent deleted it.
    pub fn forget_service_namespace(&self, name: &str) {
        self.known_namespaces().remove(name);
        self.namespace_metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|applied| applied.split('\n').next() != Some(name));
    }

    /// Makes sure a namespace exists on the service cluster (as
    /// [`Context::ensure_service_namespace`]) and carries `metadata`,
    /// applying it once per agent start. Its failure (a conflict with
    /// another manager's value, no `patch` permission) is logged and does
    /// not stop the copy.
    pub async fn ensure_managed_namespace(
        &self,
        name: &str,
        metadata: &ManagedMetadata,
    ) -> Result<(), kube::Error> {
        self.ensure_service_namespace(name).await?;
        let applied = metadata.applied_to(name);
        let seen = |applied: &String| {
            self.namespace_metadata
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(applied)
        };
        if seen(&applied) {
            return Ok(());
        }
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.service.clone());
        let params = PatchParams::apply(&metadata.manager);
        if let Err(error) = api
            .patch(name, &params, &Patch::Apply(metadata.body(name)))
            .await
        {
            warn!(namespace = name, manager = %metadata.manager, %error, "Cannot apply the namespace metadata of the PublishedResource; keeping the namespace as it is");
        }
        self.namespace_metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(applied);
        Ok(())
    }
}

/// Patch parameters that name the agent as the field manager.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Create and replace parameters that name the agent as the field manager.
pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// Creates a namespace with `labels` unless it exists, on either side.
pub async fn ensure_namespace(
    client: &Client,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
        .unwrap_or_default();
    match api.create(&post_params(), &namespace).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

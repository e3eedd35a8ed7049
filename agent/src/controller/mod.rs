//! The agent's controllers and what they share.

pub mod apiexport;
pub mod schemas;
pub mod sync;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use kube_runtime::events::{Recorder, Reporter};

use crate::kcp::KcpTarget;
use crate::metrics::Metrics;
use crate::options::Options;

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
    /// Namespaces on the service cluster the agent knows to exist.
    service_namespaces: Arc<Mutex<HashSet<String>>>,
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
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance),
        };
        Arc::new(Self {
            service_events: Recorder::new(service.clone(), reporter.clone()),
            kcp_events: Recorder::new(kcp.export_client.clone(), reporter),
            service,
            kcp,
            agent_name: options.agent_name(),
            selector: options.published_resource_selector.clone(),
            metrics,
            wait_for_foreign_finalizers: options.wait_for_foreign_finalizers,
            related_finalizer: options.related_finalizer(),
            service_namespaces: Arc::default(),
        })
    }

    fn known_namespaces(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.service_namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure a namespace exists on the service cluster, asking the
    /// server only the first time. A namespace deleted later is noticed
    /// when a create in it fails (see [`Context::forget_service_namespace`]).
    pub async fn ensure_service_namespace(&self, name: &str) -> Result<(), kube::Error> {
        if self.known_namespaces().contains(name) {
            return Ok(());
        }
        crate::sync::related::ensure_namespace(&self.service, name).await?;
        self.known_namespaces().insert(name.to_string());
        Ok(())
    }

    /// Forgets that a namespace exists, after a create in it found it gone.
    pub fn forget_service_namespace(&self, name: &str) {
        self.known_namespaces().remove(name);
    }
}

/// Sets `condition` in `conditions`, keeping the transition time when the
/// status did not change. Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            let same_status = existing.status == condition.status;
            if same_status
                && existing.reason == condition.reason
                && existing.message == condition.message
                && existing.observed_generation == condition.observed_generation
            {
                return false;
            }
            if same_status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = condition;
            true
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// A condition stamped now.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let mut conditions = Vec::new();
        let first = condition(
            "SchemaPublished",
            false,
            "SourceNotFound",
            "a".into(),
            Some(1),
        );
        let first_time = first.last_transition_time.clone();
        assert!(set_condition(&mut conditions, first.clone()));
        assert!(!set_condition(&mut conditions, first));
        assert!(set_condition(
            &mut conditions,
            condition(
                "SchemaPublished",
                false,
                "InvalidProjection",
                "b".into(),
                Some(2)
            )
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].reason, "InvalidProjection");
        assert_eq!(conditions[0].last_transition_time, first_time);
    }
}

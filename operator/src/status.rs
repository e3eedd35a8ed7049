//! The offering's conditions, computed from what a reconcile found: pure
//! functions, so every reason is unit-tested.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use sync_agent::api::condition::{condition, set_condition};

use crate::consumers::ConsumerReport;
use crate::error::Error;

/// Condition types, `Ready` first.
pub const READY: &str = "Ready";
/// The APIExport exists and has its identity.
pub const EXPORT_READY: &str = "ExportReady";
/// The agent has a valid kcp token.
pub const CREDENTIALS_READY: &str = "CredentialsReady";
/// Every PublishedResource has its schema in the export.
pub const SCHEMAS_PUBLISHED: &str = "SchemasPublished";
/// At least one agent replica is available and no rollout is stuck.
pub const AGENT_AVAILABLE: &str = "AgentAvailable";
/// Every consumer workspace has a bound APIBinding.
pub const CONSUMERS_BOUND: &str = "ConsumersBound";

/// The order in which a failing condition explains `Ready`.
const PARTS: [&str; 5] = [
    EXPORT_READY,
    CREDENTIALS_READY,
    SCHEMAS_PUBLISHED,
    AGENT_AVAILABLE,
    CONSUMERS_BOUND,
];

/// A condition's verdict before it is stamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the condition holds.
    pub ok: bool,
    /// CamelCase reason.
    pub reason: String,
    /// What a person reads.
    pub message: String,
}

impl Verdict {
    /// A holding condition.
    pub fn ok(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A failing condition.
    pub fn failed(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// How a PublishedResource stands, as the agent reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaState {
    /// The schema is published.
    Published,
    /// The agent has not reported yet.
    Pending,
    /// The agent reported a failure with this reason and message.
    Failed(String, String),
}

/// `SchemasPublished` from each resource's state (by entry name) and the
/// kinds the service cluster does not serve.
pub fn schemas(states: &[(String, SchemaState)], missing_kinds: &[String]) -> Verdict {
    if !missing_kinds.is_empty() {
        return Verdict::failed(
            "ResourceKindNotFound",
            format!(
                "the service cluster serves no {}; install the CRD or fix the resource's apiGroup and kind",
                missing_kinds.join(", ")
            ),
        );
    }
    if let Some((name, SchemaState::Failed(reason, message))) = states
        .iter()
        .find(|(_, state)| matches!(state, SchemaState::Failed(..)))
    {
        return Verdict::failed(reason, format!("resource {name}: {message}"));
    }
    let pending: Vec<&str> = states
        .iter()
        .filter(|(_, state)| *state == SchemaState::Pending)
        .map(|(name, _)| name.as_str())
        .collect();
    if !pending.is_empty() {
        return Verdict::failed(
            "WaitingForAgent",
            format!(
                "the agent has not published {} yet; see AgentAvailable",
                pending.join(", ")
            ),
        );
    }
    Verdict::ok(
        "SchemasPublished",
        format!("{} resources published", states.len()),
    )
}

/// `AgentAvailable` from the agent Deployment's status, as the Deployment
/// controller reports it. A rollout in progress keeps the condition true
/// while replicas are available (the leader syncs with either version) and
/// says so. A rollout past its progress deadline, or held by a paused
/// Deployment, is false even if replicas of the previous version still
/// sync, since the change asked for does not happen. Conditions are read
/// only once the controller has seen the current generation: the status of
/// the previous one says nothing about the change just applied.
pub fn agent(deployment: &Deployment) -> Verdict {
    let spec = deployment.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    if desired == 0 {
        return Verdict::failed(
            "ScaledToZero",
            "the agent runs no replicas; set spec.agent.replicas above 0 to sync",
        );
    }
    let observed =
        status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let pending = !observed || updated < desired || status.replicas.unwrap_or(0) > updated;
    let condition = |type_: &str, state: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| observed && c.type_ == type_ && c.status == state)
    };
    if spec.paused == Some(true) && observed && pending {
        return Verdict::failed(
            "AgentRolloutPaused",
            format!(
                "the agent's Deployment is paused, so its change does not roll out \
                 ({available} replicas of the previous version are available); \
                 kubectl -n {} rollout resume deployment/{}",
                deployment.metadata.namespace.as_deref().unwrap_or_default(),
                deployment.metadata.name.as_deref().unwrap_or_default(),
            ),
        );
    }
    let stuck = condition("Progressing", "False")
        .filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    if let Some(stuck) = stuck {
        return Verdict::failed(
            "AgentRolloutStuck",
            format!(
                "the agent's new pods made no progress within the Deployment's deadline ({}); \
                 {available} replicas of the previous version are available; see the new pods' \
                 events and logs",
                stuck.message.as_deref().unwrap_or("no message")
            ),
        );
    }
    if available == 0 {
        let why = condition("ReplicaFailure", "True")
            .map(|c| {
                format!(
                    "pods cannot be created: {}",
                    c.message.as_deref().unwrap_or("no message")
                )
            })
            .unwrap_or_else(|| "see the agent's pods and logs".to_string());
        return Verdict::failed(
            "AgentUnavailable",
            format!("0 of {desired} agent replicas are available; {why}"),
        );
    }
    if pending {
        return Verdict::ok(
            "RollingOut",
            format!(
                "rolling out: {updated} of {desired} agent replicas updated, {available} available"
            ),
        );
    }
    Verdict::ok(
        "Available",
        format!("{available} of {desired} agent replicas are available"),
    )
}

/// `ConsumersBound` from the consumer report.
pub fn consumers(report: &ConsumerReport) -> Verdict {
    if !report.failed.is_empty() {
        let shown: Vec<String> = report
            .failed
            .iter()
            .take(3)
            .map(|(path, why)| format!("{path}: {why}"))
            .collect();
        let more = report.failed.len().saturating_sub(3);
        let tail = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        return Verdict::failed("BindingFailed", format!("{}{tail}", shown.join("; ")));
    }
    if !report.pending.is_empty() {
        return Verdict::failed(
            "BindingPending",
            format!("waiting for kcp to bind {}", report.pending.join(", ")),
        );
    }
    Verdict::ok(
        "Bound",
        format!("{} consumer workspaces bound", report.bound.len()),
    )
}

/// Sets the parts and a `Ready` summarising them: true when every part
/// holds, else the first failing part's reason and message.
pub fn set_all(
    conditions: &mut Vec<Condition>,
    parts: &[(&str, Verdict)],
    generation: Option<i64>,
) {
    for (type_, verdict) in parts {
        set_condition(
            conditions,
            condition(
                type_,
                verdict.ok,
                &verdict.reason,
                verdict.message.clone(),
                generation,
            ),
        );
    }
    let failing = PARTS.iter().find_map(|type_| {
        conditions
            .iter()
            .find(|c| c.type_ == *type_ && c.status != "True")
    });
    let ready = match failing {
        Some(part) => Verdict::failed(&part.reason, part.message.clone()),
        None => Verdict::ok("Ready", "the offering is published and its agent runs"),
    };
    set_ready(conditions, &ready, generation);
}

/// Records a failed reconcile: `Ready` and the part the error belongs to.
pub fn set_error(conditions: &mut Vec<Condition>, error: &Error, generation: Option<i64>) {
    let verdict = Verdict::failed(error.reason(), error.to_string());
    if let Some(part) = part_of(error) {
        set_condition(
            conditions,
            condition(
                part,
                false,
                &verdict.reason,
                verdict.message.clone(),
                generation,
            ),
        );
    }
    set_ready(conditions, &verdict, generation);
}

fn set_ready(conditions: &mut Vec<Condition>, verdict: &Verdict, generation: Option<i64>) {
    set_condition(
        conditions,
        condition(
            READY,
            verdict.ok,
            &verdict.reason,
            verdict.message.clone(),
            generation,
        ),
    );
    if let Some(position) = conditions.iter().position(|c| c.type_ == READY) {
        let ready = conditions.remove(position);
        conditions.insert(0, ready);
    }
}

/// The condition an error explains, besides `Ready`.
fn part_of(error: &Error) -> Option<&'static str> {
    match error {
        Error::KcpSecretMissing(_)
        | Error::InvalidKcpKubeconfig(_)
        | Error::KcpUnreachable(_)
        | Error::WorkspaceNotFound(_)
        | Error::KcpForbidden(_)
        | Error::Kcp(_)
        | Error::ExportConflict(_) => Some(EXPORT_READY),
        Error::TokenRequestFailed(_) => Some(CREDENTIALS_READY),
        Error::InvalidSpec(_)
        | Error::AgentNameConflict(_)
        | Error::ObjectConflict(_)
        | Error::ServiceCluster(_)
        | Error::Deleting(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all_ok() -> Vec<(&'static str, Verdict)> {
        PARTS
            .iter()
            .map(|p| (*p, Verdict::ok("Fine", "fine")))
            .collect()
    }

    #[test]
    fn ready_holds_when_every_part_holds_and_comes_first() {
        let mut conditions = Vec::new();
        set_all(&mut conditions, &all_ok(), Some(3));
        assert_eq!(conditions[0].type_, READY);
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].observed_generation, Some(3));
        assert_eq!(conditions.len(), 6);
    }

    #[test]
    fn ready_takes_the_first_failing_parts_reason() {
        let mut parts = all_ok();
        parts[3].1 = agent(&deployment(2, json!({"replicas": 2, "updatedReplicas": 2})));
        parts[4].1 = Verdict::failed("BindingFailed", "x");
        let mut conditions = Vec::new();
        set_all(&mut conditions, &parts, None);
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].reason, "AgentUnavailable");
        assert!(conditions[0].message.contains("0 of 2"));
    }

    #[test]
    fn an_error_sets_ready_and_its_part() {
        let mut conditions = Vec::new();
        set_all(&mut conditions, &all_ok(), None);
        set_error(
            &mut conditions,
            &Error::ExportConflict("APIExport x belongs to ns/other".into()),
            None,
        );
        let export = conditions.iter().find(|c| c.type_ == EXPORT_READY).unwrap();
        assert_eq!(export.reason, "ExportConflict");
        assert_eq!(conditions[0].reason, "ExportConflict");
        assert_eq!(conditions[0].status, "False");
    }

    #[test]
    fn missing_kinds_outrank_pending_schemas() {
        let states = vec![("dbs".to_string(), SchemaState::Pending)];
        let verdict = schemas(&states, &["Backup.db.example.io".into()]);
        assert_eq!(verdict.reason, "ResourceKindNotFound");
        assert!(verdict.message.contains("Backup.db.example.io"));
        assert_eq!(schemas(&states, &[]).reason, "WaitingForAgent");
        let failed = vec![(
            "dbs".to_string(),
            SchemaState::Failed("InvalidNaming".into(), "bad template".into()),
        )];
        assert_eq!(schemas(&failed, &[]).reason, "InvalidNaming");
    }

    #[test]
    fn consumer_failures_name_the_workspaces() {
        let report = ConsumerReport {
            failed: vec![("root:a".into(), "does not exist".into())],
            pending: vec!["root:b".into()],
            ..Default::default()
        };
        let verdict = consumers(&report);
        assert_eq!(verdict.reason, "BindingFailed");
        assert!(verdict.message.contains("root:a: does not exist"));
        let pending = ConsumerReport {
            pending: vec!["root:b".into()],
            ..Default::default()
        };
        assert_eq!(consumers(&pending).reason, "BindingPending");
        assert!(consumers(&ConsumerReport::default()).ok);
    }

    /// An agent Deployment at generation 2 wanting `replicas`, with `status`.
    fn deployment(replicas: i32, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "a", "generation": 2},
            "spec": {
                "replicas": replicas,
                "selector": {},
                "template": {},
            },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn agent_availability_follows_the_deployment_controller() {
        let settled = json!({
            "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1,
        });
        assert_eq!(agent(&deployment(0, json!({}))).reason, "ScaledToZero");
        let available = agent(&deployment(2, settled.clone()));
        assert!(available.ok);
        assert_eq!(available.reason, "Available");
        assert!(available.message.contains("1 of 2"));
        assert_eq!(agent(&deployment(2, json!({}))).reason, "AgentUnavailable");

        let mut unseen = settled.clone();
        unseen["observedGeneration"] = json!(1);
        let mut old_pods = settled.clone();
        old_pods["replicas"] = json!(3);
        let mut partly = settled.clone();
        partly["updatedReplicas"] = json!(1);
        for status in [unseen, old_pods, partly] {
            let verdict = agent(&deployment(2, status));
            assert!(verdict.ok);
            assert_eq!(verdict.reason, "RollingOut");
        }

        let mut stuck = settled;
        stuck["updatedReplicas"] = json!(1);
        stuck["conditions"] = json!([{
            "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"a-1\" has timed out progressing.",
        }]);
        let verdict = agent(&deployment(2, stuck.clone()));
        assert!(!verdict.ok);
        assert_eq!(verdict.reason, "AgentRolloutStuck");
        assert!(verdict.message.contains("timed out progressing"));

        // The status of the generation before says nothing of this one.
        stuck["observedGeneration"] = json!(1);
        assert_eq!(agent(&deployment(2, stuck)).reason, "RollingOut");
    }

    #[test]
    fn a_paused_rollout_and_failing_pod_creation_say_so() {
        let mut paused = deployment(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 0, "availableReplicas": 2}),
        );
        paused.spec.as_mut().unwrap().paused = Some(true);
        paused.metadata.namespace = Some("team".into());
        let verdict = agent(&paused);
        assert_eq!(verdict.reason, "AgentRolloutPaused");
        assert!(verdict.message.contains("rollout resume deployment/a"));
        paused.status.as_mut().unwrap().updated_replicas = Some(2);
        assert_eq!(agent(&paused).reason, "Available");

        let quota = deployment(
            2,
            json!({"observedGeneration": 2, "conditions": [{
                "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                "message": "pods \"a-1\" is forbidden: exceeded quota",
            }]}),
        );
        let verdict = agent(&quota);
        assert_eq!(verdict.reason, "AgentUnavailable");
        assert!(verdict.message.contains("exceeded quota"));
    }
}

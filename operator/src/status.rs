//! The status stage of an offering's reconcile, pure: each condition's
//! verdict from what was fetched and applied ([`report`]), `Ready` over
//! them, and whether a change of `Ready` is news or a warning
//! ([`event_type`]). Every reason is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use sync_agent::api::condition::{condition, set_condition};
use sync_agent::api::published_resource::{PublishedResource, SCHEMA_PUBLISHED_CONDITION};

use crate::api::{ExportStatus, PublishedOffering};
use crate::apply::Applied;
use crate::consumers::ConsumerReport;
use crate::error::Error;
use crate::fetch::Facts;
use crate::names::{KCP_NAMESPACE, Names};

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

/// `Ready` reasons that time resolves (kcp giving the export its
/// identity, the agent starting, kcp binding): normal progress, not for a
/// person to act on.
pub const TRANSIENT_REASONS: [&str; 4] = [
    "IdentityPending",
    "WaitingForAgent",
    "AgentUnavailable",
    "BindingPending",
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

/// What the status stage makes of a reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Each part's verdict, in the order of the conditions.
    pub parts: Vec<(&'static str, Verdict)>,
    /// Facts about the export.
    pub export: ExportStatus,
}

/// The verdicts of `offering`'s parts from what was fetched and applied.
pub fn report(
    offering: &PublishedOffering,
    names: &Names,
    facts: &Facts,
    applied: &Applied,
) -> Report {
    let identity = applied
        .export
        .status
        .as_ref()
        .map(|s| s.identity_hash.clone())
        .unwrap_or_default();
    let export = if identity.is_empty() {
        Verdict::failed(
            "IdentityPending",
            format!(
                "kcp has not given APIExport {} an identity yet",
                names.export
            ),
        )
    } else {
        Verdict::ok(
            "ExportReady",
            format!(
                "APIExport {} is ready in {}",
                names.export, offering.spec.kcp.workspace
            ),
        )
    };
    let credentials = credentials(offering, names, facts, applied);
    let states = schema_states(offering, names, &applied.published);
    Report {
        parts: vec![
            (EXPORT_READY, export),
            (CREDENTIALS_READY, credentials),
            (SCHEMAS_PUBLISHED, schemas(&states, &facts.kinds.missing)),
            (AGENT_AVAILABLE, agent(&applied.deployment)),
            (CONSUMERS_BOUND, consumers(&applied.consumers)),
        ],
        export: ExportStatus {
            name: names.export.clone(),
            logical_cluster: Some(facts.logical_cluster.clone()),
            identity_hash: (!identity.is_empty()).then_some(identity),
            endpoint_urls: applied.endpoint_urls.clone(),
        },
    }
}

/// Whether the agent's kcp credentials are accepted wherever it syncs:
/// every endpoint (one per shard with consumers) that refuses them leaves
/// that shard's consumers unsynced.
fn credentials(
    offering: &PublishedOffering,
    names: &Names,
    facts: &Facts,
    applied: &Applied,
) -> Verdict {
    let (whose, advice) = match (&facts.brought, &applied.token) {
        (Some(brought), _) => (
            format!("the kubeconfig in Secret {}", brought.location.name),
            "the credentials the provider brings must be accepted by every shard; \
             check the Secret's identity with the platform that issued it"
                .to_string(),
        ),
        (None, _) => (
            format!(
                "ServiceAccount {KCP_NAMESPACE}/{}",
                names.kcp_service_account
            ),
            "kcp v0.30 accepts a workspace's ServiceAccount token only on the shard that holds \
             the workspace (later releases look it up across shards); upgrade kcp, keep the \
             consumers on the provider workspace's shard, or give the agent credentials every \
             shard accepts in spec.agent.kcpKubeconfigSecretRef"
                .to_string(),
        ),
    };
    if applied.refusals.is_empty() {
        return match (&facts.brought, &applied.token) {
            (Some(brought), _) => Verdict::ok(
                "KubeconfigProvided",
                format!(
                    "the agent uses {whose} (kcp user {}, granted the ClusterRole {})",
                    brought.user, names.kcp_agent_role
                ),
            ),
            (None, token) => Verdict::ok(
                "TokenIssued",
                format!(
                    "the agent's kcp token ({whose}) is renewed at {}",
                    token.map(|t| t.renew_at.to_string()).unwrap_or_default()
                ),
            ),
        };
    }
    let unreachable: Vec<String> = applied
        .refusals
        .iter()
        .filter(|r| r.code == 0)
        .map(|r| {
            format!(
                "{} at {} ({})",
                r.url,
                r.reached_at.as_deref().unwrap_or_default(),
                r.message
            )
        })
        .collect();
    if !unreachable.is_empty() {
        return Verdict::failed(
            "EndpointUnreachable",
            format!(
                "the agent reaches {} of {} virtual workspace endpoints at an address \
                 spec.agent.endpointRewrites gives that takes no connection, so the consumers \
                 bound on their shards are not synced: {}. Fix the rule's `to` (or the network \
                 between the service cluster and it)",
                unreachable.len(),
                applied.endpoint_urls.len(),
                unreachable.join(", ")
            ),
        );
    }
    let refusing: Vec<String> = applied
        .refusals
        .iter()
        .map(|r| match &r.reached_at {
            Some(at) => format!("{} at {at} ({}: {})", r.url, r.code, r.message),
            None => format!("{} ({}: {})", r.url, r.code, r.message),
        })
        .collect();
    let counted = format!(
        "{} of {} virtual workspace endpoints",
        refusing.len(),
        applied.endpoint_urls.len()
    );
    let refusing = refusing.join(", ");
    // 401: the shard does not take the credentials at all; 403: it does,
    // but the agent may not use the export there.
    if applied.refusals.iter().any(|r| r.code == 401) {
        Verdict::failed(
            "TokenRefused",
            format!(
                "{counted} refuse the agent's kcp credentials ({whose}), so the consumers bound \
                 on their shards are not synced: {refusing}. {advice}"
            ),
        )
    } else {
        Verdict::failed(
            "AgentForbidden",
            format!(
                "{counted} accept the agent's kcp credentials ({whose}) but forbid it the export, \
                 so the consumers bound there are not synced: {refusing}. The ClusterRole {} and \
                 its binding in {} grant the agent the export's content; the operator writes \
                 them, so look for what removed them or denies the request",
                names.kcp_agent_role, offering.spec.kcp.workspace
            ),
        )
    }
}

/// The type of the event announcing `ready`, the new `Ready` condition:
/// Warning only when a person has to act, Normal when it holds or the
/// offering waits for something time resolves.
pub fn event_type(ready: &Condition) -> EventType {
    if ready.status == "True" || TRANSIENT_REASONS.contains(&ready.reason.as_str()) {
        EventType::Normal
    } else {
        EventType::Warning
    }
}

/// How each PublishedResource stands, by entry name.
fn schema_states(
    offering: &PublishedOffering,
    names: &Names,
    published: &[PublishedResource],
) -> Vec<(String, SchemaState)> {
    let by_name: BTreeMap<String, &PublishedResource> =
        published.iter().map(|p| (p.name_any(), p)).collect();
    offering
        .spec
        .resources
        .iter()
        .map(|resource| {
            let conditions = by_name
                .get(&names.published_resource(&resource.name))
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let failed = conditions.iter().find(|c| c.status == "False");
            let state = match failed {
                Some(c) => SchemaState::Failed(c.reason.clone(), c.message.clone()),
                None if conditions
                    .iter()
                    .any(|c| c.type_ == SCHEMA_PUBLISHED_CONDITION && c.status == "True") =>
                {
                    SchemaState::Published
                }
                None => SchemaState::Pending,
            };
            (resource.name.clone(), state)
        })
        .collect()
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

/// Workspaces a consumer message names; the rest are counted, so a
/// thousand pending bindings do not make a condition (and its event) of
/// thousands of paths.
const NAMED_WORKSPACES: usize = 3;

/// The first [`NAMED_WORKSPACES`] of `items`, then how many more there are.
fn first_few(items: impl ExactSizeIterator<Item = String>, separator: &str) -> String {
    let more = items.len().saturating_sub(NAMED_WORKSPACES);
    let shown: Vec<String> = items.take(NAMED_WORKSPACES).collect();
    let tail = if more > 0 {
        format!(" (and {more} more)")
    } else {
        String::new()
    };
    format!("{}{tail}", shown.join(separator))
}

/// `ConsumersBound` from the consumer report.
pub fn consumers(report: &ConsumerReport) -> Verdict {
    if !report.failed.is_empty() {
        let failed = report
            .failed
            .iter()
            .map(|(path, why)| format!("{path}: {why}"));
        return Verdict::failed("BindingFailed", first_few(failed, "; "));
    }
    if !report.pending.is_empty() {
        return Verdict::failed(
            "BindingPending",
            format!(
                "waiting for kcp to bind {}",
                first_few(report.pending.iter().cloned(), ", ")
            ),
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
        Error::TokenRequestFailed(_)
        | Error::AgentKubeconfigMissing(_)
        | Error::InvalidAgentKubeconfig(_) => Some(CREDENTIALS_READY),
        Error::InvalidSpec(_)
        | Error::AgentNameConflict(_)
        | Error::ObjectConflict(_)
        | Error::ServiceCluster(_)
        | Error::Deleting(_) => None,
    }
}

#[cfg(test)]
mod tests;

//! The `apiexport` controller: keeps the APIExport serving the schema of
//! every published resource and claiming the permissions the agent needs.
//!
//! Merge rules (as upstream): a PublishedResource's schema replaces the
//! export's entry for the same group/resource; entries of other
//! group/resources (added by hand, or left by deleted PublishedResources)
//! stay; the list is sorted. Permission claims are only ever added: `events`
//! always, `namespaces` when a PublishedResource filters by namespace or has
//! related resources, `core.kcp.io/logicalclusters` for workspace paths, and
//! each related resource that the export does not serve itself.
//!
//! The agent never creates the APIExport; without it, it waits.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use kube_runtime::controller::{self, Action, Controller};
use kube_runtime::events::{Event, EventType};
use kube_runtime::reflector::{self, Store};
use kube_runtime::{WatchStreamExt, watcher};
use tracing::{debug, info, instrument, warn};

use crate::api::kcp::apis_v1alpha2::{APIExport, APIExportSpec, PermissionClaim, ResourceSchema};
use crate::api::published_resource::PublishedResource;
use crate::context::{Context, FIELD_MANAGER};
use crate::controller::ready::Synced;
use crate::controller::reconciler::Reconciler;
use crate::controller::watched::{self, Watched};
use crate::runtime::backoff::Backoff;
use crate::schema::{AGENT_NAME_KEY, parse_schema_name};

/// Name of the controller in metrics and `--disabled-controllers`.
pub const NAME: &str = "apiexport";

/// How long to gather more changes before reconciling.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Reconcile now and then even without changes.
const RESYNC: Duration = Duration::from_secs(300);
/// Retries of a failed reconcile: 1 s, doubling up to a minute.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// What the controller changes on the export.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The export's spec after the merge.
    pub spec: APIExportSpec,
    /// Schemas added (or replacing another for the same group/resource).
    pub added_schemas: Vec<String>,
    /// Schemas replaced by newer ones.
    pub removed_schemas: Vec<String>,
    /// Claims added.
    pub added_claims: Vec<String>,
}

/// Merges the published resources' schemas and claims into `current`.
pub fn plan(current: &APIExportSpec, prs: &[Arc<PublishedResource>]) -> Plan {
    let mut plan = Plan {
        spec: current.clone(),
        ..Plan::default()
    };

    // Schemas: one entry per group/resource; published ones win.
    let published: Vec<(String, String, String)> = prs
        .iter()
        .filter(|pr| pr.metadata.deletion_timestamp.is_none())
        .filter_map(|pr| pr.status.as_ref()?.resource_schema_name.clone())
        .filter_map(|name| {
            parse_schema_name(&name).map(|(group, resource)| (group, resource, name))
        })
        .collect();
    let mut resources: Vec<ResourceSchema> = Vec::new();
    for (group, resource, schema) in &published {
        if resources
            .iter()
            .any(|r| &r.group == group && &r.name == resource)
        {
            continue;
        }
        let existing = current
            .resources
            .iter()
            .find(|r| &r.group == group && &r.name == resource);
        match existing {
            Some(e) if &e.schema == schema => resources.push(e.clone()),
            Some(e) => {
                plan.removed_schemas.push(e.schema.clone());
                plan.added_schemas.push(schema.clone());
                resources.push(ResourceSchema {
                    schema: schema.clone(),
                    ..e.clone()
                });
            }
            None => {
                plan.added_schemas.push(schema.clone());
                resources.push(ResourceSchema {
                    group: group.clone(),
                    name: resource.clone(),
                    schema: schema.clone(),
                    storage: serde_json::json!({"crd": {}}),
                    ..Default::default()
                });
            }
        }
    }
    for entry in &current.resources {
        if !resources
            .iter()
            .any(|r| r.group == entry.group && r.name == entry.name)
        {
            resources.push(entry.clone());
        }
    }
    resources.sort_by(|a, b| (&a.group, &a.name).cmp(&(&b.group, &b.name)));
    plan.spec.resources = resources;

    // Claims: additive.
    let served: BTreeSet<(String, String)> = plan
        .spec
        .resources
        .iter()
        .map(|r| (r.group.clone(), r.name.clone()))
        .collect();
    let mut claims = current.permission_claims.clone();
    for (group, resource, identity_hash) in required_claims(prs, &served) {
        let existing = claims.iter_mut().find(|c| {
            c.group == group && c.resource == resource && c.identity_hash == identity_hash
        });
        match existing {
            Some(claim) if claim.verbs.iter().any(|v| v == "*") => {}
            Some(claim) => {
                claim.verbs = vec!["*".into()];
                plan.added_claims.push(claim_label(&group, &resource));
            }
            None => {
                plan.added_claims.push(claim_label(&group, &resource));
                claims.push(PermissionClaim {
                    group,
                    resource,
                    verbs: vec!["*".into()],
                    identity_hash,
                    ..Default::default()
                });
            }
        }
    }
    claims.sort_by(|a, b| (&a.group, &a.resource).cmp(&(&b.group, &b.resource)));
    plan.spec.permission_claims = claims;
    plan
}

fn claim_label(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// The (group, resource, identityHash) claims the published resources need.
pub fn required_claims(
    prs: &[Arc<PublishedResource>],
    served: &BTreeSet<(String, String)>,
) -> BTreeSet<(String, String, String)> {
    let mut claims = BTreeSet::from([(String::new(), "events".to_string(), String::new())]);
    for pr in prs
        .iter()
        .filter(|pr| pr.metadata.deletion_timestamp.is_none())
    {
        let related = pr.spec.related.as_deref().unwrap_or_default();
        let filters_namespaces = pr
            .spec
            .filter
            .as_ref()
            .is_some_and(|f| f.namespace.is_some());
        if filters_namespaces || !related.is_empty() {
            claims.insert((String::new(), "namespaces".into(), String::new()));
        }
        if pr.spec.enable_workspace_paths == Some(true) {
            claims.insert((
                "core.kcp.io".into(),
                "logicalclusters".into(),
                String::new(),
            ));
        }
        for related in related {
            let (group, resource) = related.kcp_group_resource();
            if !served.contains(&(group.clone(), resource.clone())) {
                claims.insert((
                    group,
                    resource,
                    related.identity_hash.clone().unwrap_or_default(),
                ));
            }
        }
    }
    claims
}

/// Runs the controller until `shutdown` resolves: the export is reconciled
/// when it changes and when any PublishedResource does, debounced, and now
/// and then without changes. `synced` reports both caches filled.
pub async fn run(
    ctx: Arc<Context>,
    synced: Synced,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let prs: Api<Watched> = Api::all(ctx.service.clone());
    let (pr_store, writer) = reflector::store();
    let pr_changes = watcher(prs, watcher::Config::default().labels(&ctx.selector))
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .filter_map(|change| {
            futures::future::ready(match change {
                Ok(_) => Some(()),
                Err(error) => {
                    warn!(%error, "Watching PublishedResources failed; retrying");
                    None
                }
            })
        });
    let exports: Api<APIExport> = Api::all(ctx.kcp.export_client.clone());
    let name = format!("metadata.name={}", ctx.kcp.export_name);
    let controller = Controller::new(exports, watcher::Config::default().fields(&name))
        .with_config(controller::Config::default().debounce(DEBOUNCE));
    // One export, so one reconcile at a time.
    ctx.metrics.declare(NAME, 1);
    let export_store = controller.store();
    let reconciler = Arc::new(State {
        reconciler: Reconciler::new(ctx, RETRY),
        prs: pr_store.clone(),
    });
    let synced = async move {
        let (prs, exports) =
            futures::future::join(pr_store.wait_until_ready(), export_store.wait_until_ready())
                .await;
        if prs.is_ok() && exports.is_ok() {
            synced.done();
        }
    };
    let controller = controller
        .reconcile_all_on(pr_changes)
        .graceful_shutdown_on(shutdown)
        .run(reconcile_export, error_policy, reconciler)
        .for_each(|_| futures::future::ready(()));
    futures::future::join(controller, synced).await;
}

/// The reconciles' state: the PublishedResources as last listed.
struct State {
    reconciler: Reconciler,
    prs: Store<Watched>,
}

/// Reconciles the export once the PublishedResources are listed.
async fn reconcile_export(
    export: Arc<APIExport>,
    state: Arc<State>,
) -> Result<Action, kube::Error> {
    let ready = futures::FutureExt::now_or_never(state.prs.wait_until_ready());
    if ready.is_none_or(|r| r.is_err()) {
        return Ok(Action::requeue(DEBOUNCE));
    }
    reconcile(&state.reconciler.ctx, &watched::readable(state.prs.state())).await?;
    state.reconciler.succeeded(export.as_ref());
    Ok(Action::requeue(RESYNC))
}

fn error_policy(export: Arc<APIExport>, error: &kube::Error, state: Arc<State>) -> Action {
    let retry = state.reconciler.failed(export.as_ref());
    warn!(%error, retry_in = ?retry, "Reconciling the APIExport failed");
    Action::requeue(retry)
}

#[instrument(skip_all, fields(apiexport = %ctx.kcp.export_name))]
async fn reconcile(ctx: &Context, prs: &[Arc<PublishedResource>]) -> Result<(), kube::Error> {
    ctx.metrics
        .published_resources
        .set(i64::try_from(prs.len()).unwrap_or(i64::MAX));
    let result = ctx.metrics.timed(NAME, apply(ctx, prs)).await;
    if let Err(error) = &result {
        let category = match error {
            kube::Error::Api(status) if status.code == 409 => "conflict",
            _ => "kcp",
        };
        ctx.metrics.failed(NAME, category);
    }
    result
}

async fn apply(ctx: &Context, prs: &[Arc<PublishedResource>]) -> Result<(), kube::Error> {
    let api: Api<APIExport> = Api::all(ctx.kcp.export_client.clone());
    let Some(mut export) = api.get_opt(&ctx.kcp.export_name).await? else {
        debug!("The APIExport does not exist (yet); the agent never creates it");
        return Ok(());
    };
    let plan = plan(&export.spec, prs);
    let annotations = export.metadata.annotations.get_or_insert_default();
    let annotated = annotations.get(AGENT_NAME_KEY) == Some(&ctx.agent_name);
    if plan.spec == export.spec && annotated {
        return Ok(());
    }
    annotations.insert(AGENT_NAME_KEY.into(), ctx.agent_name.clone());
    export.spec = plan.spec.clone();
    // A replace carries the resourceVersion read above: a concurrent writer
    // makes it fail with a conflict and the next round starts from fresh.
    let updated = api
        .replace(
            &ctx.kcp.export_name,
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &export,
        )
        .await?;
    info!(
        added = ?plan.added_schemas,
        replaced = ?plan.removed_schemas,
        claims = ?plan.added_claims,
        "Updated the APIExport"
    );
    let reference = updated.object_ref(&());
    for (schemas, reason, type_) in [
        (
            &plan.added_schemas,
            "AddingResourceSchemas",
            EventType::Normal,
        ),
        (
            &plan.removed_schemas,
            "RemovingResourceSchemas",
            EventType::Warning,
        ),
        (
            &plan.added_claims,
            "AddingPermissionClaims",
            EventType::Normal,
        ),
    ] {
        if schemas.is_empty() {
            continue;
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(schemas.join(", ")),
            action: "UpdateAPIExport".into(),
            secondary: None,
        };
        if let Err(error) = ctx.kcp_events.publish(&event, &reference).await {
            debug!(%error, export = %updated.name_any(), "Recording an event failed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

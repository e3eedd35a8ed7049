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
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use kube_runtime::events::{Event, EventType};
use kube_runtime::reflector::{self, Store};
use kube_runtime::{WatchStreamExt, watcher};
use tracing::{debug, info, instrument, warn};

use crate::api::kcp::apis_v1alpha2::{APIExport, APIExportSpec, PermissionClaim, ResourceSchema};
use crate::api::published_resource::PublishedResource;
use crate::context::{Context, FIELD_MANAGER};
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

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let prs: Api<Watched> = Api::all(ctx.service.clone());
    let (store, writer) = reflector::store();
    let pr_changes = watcher(prs, watcher::Config::default().labels(&ctx.selector))
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .map(|r| r.map(drop).map_err(|e| e.to_string()));
    let exports: Api<APIExport> = Api::all(ctx.kcp.export_client.clone());
    let export_changes = watcher(
        exports,
        watcher::Config::default().fields(&format!("metadata.name={}", ctx.kcp.export_name)),
    )
    .default_backoff()
    .touched_objects()
    .map(|r| r.map(drop).map_err(|e| e.to_string()));
    let mut changes = std::pin::pin!(stream::select(pr_changes, export_changes));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failures = 0;
    let mut next = Instant::now() + DEBOUNCE;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            change = changes.next() => match change {
                // Gather the changes of the next moment into one reconcile;
                // a steady stream of changes cannot push it back further.
                Some(Ok(())) => next = next.min(Instant::now() + DEBOUNCE),
                Some(Err(error)) => warn!(%error, "Watch failed; retrying"),
                None => break,
            },
            () = tokio::time::sleep_until(next.into()) => {
                if !store_ready(&store) {
                    next = Instant::now() + DEBOUNCE;
                    continue;
                }
                match reconcile(&ctx, &watched::readable(store.state())).await {
                    Ok(()) => {
                        failures = 0;
                        next = Instant::now() + RESYNC;
                    }
                    Err(error) => {
                        failures += 1;
                        let retry = RETRY.after(failures);
                        warn!(%error, retry_in = ?retry, "Reconciling the APIExport failed");
                        next = Instant::now() + retry;
                    }
                }
            }
        }
    }
}

fn store_ready(store: &Store<Watched>) -> bool {
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok())
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

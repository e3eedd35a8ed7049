//! The `apiresourceschema` controller: turns each PublishedResource and the
//! current definition of its source (CRD or built-in type) into an immutable
//! APIResourceSchema in the export's workspace, and records its name in the
//! PublishedResource's status.
//!
//! Schemas are created once and never changed or deleted: a changed CRD
//! yields a new schema under a new name, and the old one stays for the
//! bindings that still use it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch};
use kube::{Resource, ResourceExt};
use kube_runtime::controller::{self, Action, Controller};
use kube_runtime::events::{Event, EventType};
use kube_runtime::reflector::ObjectRef;
use kube_runtime::watcher;
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::api::condition::{condition, set_condition};
use crate::api::kcp::apis_v1alpha1::APIResourceSchema;
use crate::api::published_resource::{PublishedResource, SCHEMA_PUBLISHED_CONDITION};
use crate::context::{Context, patch_params, post_params};
use crate::controller::ready::Synced;
use crate::controller::reconciler::Reconciler;
use crate::controller::watched::Watched;
use crate::runtime::backoff::Backoff;
use crate::schema::{self, ProjectionError};
use crate::source::{self, SourceError};

/// Name of the controller in metrics and `--disabled-controllers`.
pub const NAME: &str = "apiresourceschema";
/// PublishedResources published at the same time.
const CONCURRENCY: u16 = 4;
/// Retries of a failing PublishedResource: 1 s, doubling up to 5 min.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));

/// Why a schema could not be published.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source kind is missing or its schema unusable.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The PublishedResource's projection is invalid.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// kcp refused or failed a request.
    #[error("writing APIResourceSchema {name} to kcp: {source}")]
    Kcp {
        /// Schema name.
        name: String,
        /// The failure.
        #[source]
        source: kube::Error,
    },
    /// The status could not be written.
    #[error("updating the status of PublishedResource {name}: {source}")]
    Status {
        /// PublishedResource name.
        name: String,
        /// The failure.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Metric label and condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Source(SourceError::KindNotServed { .. }) => "SourceNotFound",
            Error::Source(SourceError::OpenApi(_)) => "InvalidSourceSchema",
            Error::Source(SourceError::Request { .. }) => "ServiceClusterError",
            Error::Projection(_) => "InvalidProjection",
            Error::Kcp { .. } => "KcpError",
            Error::Status { .. } => "ServiceClusterError",
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    synced: Synced,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let prs: Api<Watched> = Api::all(ctx.service.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.service.clone());
    let controller = Controller::new(prs, watcher::Config::default().labels(&ctx.selector))
        .with_config(controller::Config::default().concurrency(CONCURRENCY));
    ctx.metrics.declare(NAME, usize::from(CONCURRENCY));
    let store = controller.store();
    let synced = synced.when_ready(store.clone());
    let controller = controller
        .watches(crds, watcher::Config::default(), move |crd| {
            // A CRD change re-publishes every PublishedResource of its kind.
            store
                .state()
                .into_iter()
                .filter(|watched| {
                    watched.0.as_ref().is_ok_and(|pr| {
                        pr.spec.resource.api_group == crd.spec.group
                            && pr.spec.resource.kind == crd.spec.names.kind
                    })
                })
                .map(|watched| ObjectRef::from_obj(&*watched))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            error_policy,
            Arc::new(Reconciler::new(ctx, RETRY)),
        )
        .for_each(|_| futures::future::ready(()));
    futures::future::join(controller, synced).await;
}

/// One reconcile. A PublishedResource the agent cannot read gets a Warning
/// event and waits for a change; the others go on.
#[instrument(skip_all, fields(published_resource = %watched.name_any()))]
async fn reconcile(watched: Arc<Watched>, reconciler: Arc<Reconciler>) -> Result<Action, Error> {
    let ctx = &reconciler.ctx;
    let pr = match &watched.0 {
        Ok(pr) => pr,
        Err(invalid) => {
            warn!(error = %invalid, "Cannot read the PublishedResource; skipping it");
            let note = format!("The agent cannot read this PublishedResource: {invalid}");
            publish_event(ctx, watched.as_ref(), "InvalidObject", &note).await;
            return Ok(Action::await_change());
        }
    };
    if pr.metadata.deletion_timestamp.is_some() {
        // The schema outlives its PublishedResource: bindings may use it.
        return Ok(Action::await_change());
    }
    ctx.metrics.timed(NAME, publish_and_report(pr, ctx)).await?;
    reconciler.succeeded(watched.as_ref());
    Ok(Action::await_change())
}

/// Publishes `pr`'s schema and reports the outcome on its status.
async fn publish_and_report(pr: &PublishedResource, ctx: &Context) -> Result<(), Error> {
    let outcome = publish(pr, ctx).await;
    let status = match &outcome {
        Ok(name) => {
            write_status(
                pr,
                ctx,
                Some(name),
                condition(
                    SCHEMA_PUBLISHED_CONDITION,
                    true,
                    "Published",
                    format!("published as APIResourceSchema {name}"),
                    pr.metadata.generation,
                ),
            )
            .await
        }
        Err(error) => {
            warn!(reason = error.reason(), %error, "Publishing the schema failed");
            let note = format!("{}: {error}", error.reason());
            publish_event(ctx, pr, "ReconcilingError", &note).await;
            write_status(
                pr,
                ctx,
                None,
                condition(
                    SCHEMA_PUBLISHED_CONDITION,
                    false,
                    error.reason(),
                    error.to_string(),
                    pr.metadata.generation,
                ),
            )
            .await
        }
    };
    outcome.and(status.map(drop))
}

/// Input errors also wait for a change of the PublishedResource or its CRD;
/// transient ones are retried by the backoff.
fn error_policy(pr: Arc<Watched>, error: &Error, reconciler: Arc<Reconciler>) -> Action {
    reconciler.ctx.metrics.failed(NAME, error.reason());
    let retry = reconciler.failed(pr.as_ref());
    warn!(published_resource = %pr.name_any(), %error, retry_in = ?retry, "Reconcile failed");
    Action::requeue(retry)
}

/// Makes sure the schema for the PublishedResource's current source exists
/// and returns its name.
async fn publish(pr: &PublishedResource, ctx: &Context) -> Result<String, Error> {
    let resource = &pr.spec.resource;
    let source = source::find(&ctx.service, &resource.api_group, &resource.kind).await?;
    let projected = schema::project(&source.spec, &pr.spec)?;
    let schema = projected.to_schema(&ctx.agent_name, source.generation);
    let name = schema.name_any();
    let api: Api<APIResourceSchema> = Api::all(ctx.kcp.export_client.clone());
    let kcp_error = |source| Error::Kcp {
        name: name.clone(),
        source,
    };
    if api.get_opt(&name).await.map_err(kcp_error)?.is_none() {
        match api.create(&post_params(), &schema).await {
            Ok(_) => info!(schema = %name, "Created APIResourceSchema"),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(kcp_error(error)),
        }
    }
    Ok(name)
}

/// Writes `resourceSchemaName` (when known) and the condition, if either changed.
async fn write_status(
    pr: &PublishedResource,
    ctx: &Context,
    schema_name: Option<&str>,
    new_condition: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) -> Result<(), Error> {
    let status = pr.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let condition_changed = set_condition(&mut conditions, new_condition);
    let name_changed =
        schema_name.is_some_and(|n| status.resource_schema_name.as_deref() != Some(n));
    if !condition_changed && !name_changed {
        return Ok(());
    }
    // The resourceVersion makes a write based on a stale read fail, so the
    // sync controller's condition is never overwritten.
    let mut patch = json!({"metadata": {"resourceVersion": pr.resource_version()},
                           "status": {"conditions": conditions}});
    if let Some(name) = schema_name {
        patch["status"]["resourceSchemaName"] = name.into();
    }
    Api::<PublishedResource>::all(ctx.service.clone())
        .patch_status(&pr.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Status {
            name: pr.name_any(),
            source,
        })?;
    Ok(())
}

async fn publish_event(
    ctx: &Context,
    pr: &impl Resource<DynamicType = ()>,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: "PublishSchema".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .service_events
        .publish(&event, &pr.object_ref(&()))
        .await
    {
        warn!(error = %e, "Recording an event failed");
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_string(),
    }
}

//! The PublishedOffering controller: wraps the apply pipeline and the
//! cleanup in kube-runtime's finalizer, writes the status and events, and
//! backs off per offering on errors.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};
use serde_json::json;
use sync_agent::api::published_resource::PublishedResource;
use sync_agent::runtime::backoff::{Backoff, Failures};
use sync_agent::runtime::events::recorder;
use sync_agent::runtime::http::Health;
use sync_agent::runtime::metrics::ControllerMetrics;
use tracing::{info, instrument, warn};

use crate::api::{ConsumerCounts, PublishedOffering, PublishedOfferingStatus};
use crate::cleanup::cleanup;
use crate::confirmed::ConfirmedBindings;
use crate::error::Error;
use crate::kcp_secrets;
use crate::names::{FIELD_MANAGER, FINALIZER, OFFERING_NAME_LABEL, OFFERING_NAMESPACE_LABEL};
use crate::provision::{Provisioned, Settings, provision};
use crate::selections::Selections;
use crate::status;

/// The controller's name in metrics and logs.
pub const NAME: &str = "publishedoffering";
/// Offerings reconciled at the same time.
const CONCURRENCY: u16 = 4;
/// Error categories only a person can fix (the spec, credentials, an
/// object someone else owns): counted as terminal.
const TERMINAL_CATEGORIES: &[&str] = &["spec", "credentials", "conflict"];
/// How often an offering that waits for something time resolves (a
/// `Ready` reason in [`status::TRANSIENT_REASONS`]) is looked at again; any
/// other reason for `Ready=False` needs a person, and the offering is
/// looked at again with backoff.
const WAITING: Duration = Duration::from_secs(5);
/// Delays after consecutive failed reconciles of one offering: 2 s
/// doubling to 5 min.
const RETRY: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));

/// The operator's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders, with the reconcile metrics.
    pub controllers: ControllerMetrics,
    /// Agent tokens minted, first ones included.
    pub tokens_issued: IntCounter,
    /// 1 while an offering is Ready, else 0; by its namespace and name
    /// (`offering_namespace`: the scrape sets `namespace` to the operator's).
    ready: IntGaugeVec,
    /// When each offering's agent token expires (Unix seconds).
    token_expiry: IntGaugeVec,
}

/// Every metric, registered.
impl Default for Metrics {
    fn default() -> Self {
        let per_offering = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["offering_namespace", "offering"])
                .expect("valid metric")
        };
        let metrics = Self {
            controllers: ControllerMetrics::new(),
            tokens_issued: IntCounter::new(
                "offering_operator_agent_tokens_issued_total",
                "kcp tokens minted for sync agents, first ones and rotations",
            )
            .expect("valid metric"),
            ready: per_offering(
                "offering_operator_offering_ready",
                "1 while the offering's Ready condition is True, else 0",
            ),
            token_expiry: per_offering(
                "offering_operator_agent_token_expiry_timestamp_seconds",
                "When the kcp token of the offering's agent expires, in Unix seconds",
            ),
        };
        metrics.controllers.register(vec![
            Box::new(metrics.tokens_issued.clone()),
            Box::new(metrics.ready.clone()),
            Box::new(metrics.token_expiry.clone()),
        ]);
        metrics
    }
}

impl Metrics {
    /// Records whether `offering` is Ready.
    pub fn offering_ready(&self, offering: &PublishedOffering, ready: bool) {
        self.ready
            .with_label_values(&Self::labels(offering))
            .set(i64::from(ready));
    }

    /// Records when the token of `offering`'s agent expires; `None` when
    /// the agent has no minted token (its credentials are the provider's).
    pub fn token_expires(&self, offering: &PublishedOffering, expires: Option<Timestamp>) {
        let labels = Self::labels(offering);
        match expires {
            Some(expires) => self
                .token_expiry
                .with_label_values(&labels)
                .set(expires.as_second()),
            None => drop(self.token_expiry.remove_label_values(&labels)),
        }
    }

    /// Drops the series of a deleted offering.
    pub fn forget(&self, offering: &PublishedOffering) {
        let labels = Self::labels(offering);
        let _ = self.ready.remove_label_values(&labels);
        let _ = self.token_expiry.remove_label_values(&labels);
    }

    fn labels(offering: &PublishedOffering) -> [String; 2] {
        [
            offering.namespace().unwrap_or_default(),
            offering.name_any(),
        ]
    }

    /// 1 while this replica holds the Lease `lease`, else 0.
    pub fn leader_status(&self, lease: &str) -> IntGauge {
        self.controllers.leader_status(lease)
    }
}

/// A watched offering, or its metadata and why it could not be read: one
/// offering the operator cannot deserialize must not stall the others.
pub type Watched = DeserializeGuard<PublishedOffering>;

/// What every reconcile shares.
pub struct Context {
    client: Client,
    recorder: Recorder,
    settings: Settings,
    metrics: Metrics,
    failures: Failures<ObjectRef<PublishedOffering>>,
    confirmed: ConfirmedBindings,
    selections: Selections,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context writing through `client`.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        instance: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            recorder: recorder(client.clone(), FIELD_MANAGER, &instance),
            client,
            settings,
            metrics,
            failures: Failures::new(RETRY),
            confirmed: ConfirmedBindings::default(),
            selections: Selections::default(),
        })
    }

    fn backoff(&self, offering: &impl Resource) -> Duration {
        self.failures.failed(key(offering))
    }

    fn succeeded(&self, offering: &impl Resource) {
        self.failures.succeeded(&key(offering));
    }

    async fn event(
        &self,
        offering: &impl Resource<DynamicType = ()>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self
            .recorder
            .publish(&event, &offering.object_ref(&()))
            .await
        {
            warn!(%error, "Cannot record an event");
        }
    }
}

/// The backoff key of an offering, read or not.
fn key(offering: &impl Resource) -> ObjectRef<PublishedOffering> {
    ObjectRef::new(&offering.name_any()).within(&offering.namespace().unwrap_or_default())
}

/// Runs the controller over `offerings` until `shutdown` resolves. An
/// offering is looked at again when it changes, and when its Deployment,
/// its PublishedResources, its selected consumer workspaces or its kcp
/// kubeconfig Secret do.
///
/// `health` reads not ready until the controller's cache of offerings has
/// its first full listing: before that, a reconcile would see no offerings.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    health.set_ready(false);
    let client = ctx.client.clone();
    let (offerings, deployments): (Api<Watched>, Api<Deployment>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let published: Api<PublishedResource> = Api::all(client.clone());
    let controller = Controller::new(offerings, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(CONCURRENCY));
    ctx.metrics
        .controllers
        .declare(NAME, usize::from(CONCURRENCY));
    let secrets_woken = kcp_secrets::woken(
        client,
        namespace.as_deref(),
        ctx.settings.default_kcp_secret.clone(),
        controller.store(),
    );
    let store = controller.store();
    let synced = async move {
        // An error means the controller stopped before its first listing.
        if store.wait_until_ready().await.is_ok() {
            info!("The cache of PublishedOfferings is synced; ready");
            health.set_ready(true);
        }
    };
    let controller = controller
        .owns(deployments, managed.clone())
        .watches(published, managed, |resource| {
            let labels = resource.labels();
            Some(
                ObjectRef::new(labels.get(OFFERING_NAME_LABEL)?)
                    .within(labels.get(OFFERING_NAMESPACE_LABEL)?),
            )
        })
        .reconcile_on(ctx.selections.woken())
        .reconcile_on(secrets_woken)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    futures::future::join(controller, synced).await;
}

/// One reconcile: the finalizer decides between apply and cleanup. An
/// offering that cannot be read gets a Warning event and waits for a change.
#[instrument(skip_all, fields(offering = %watched.name_any(), namespace = watched.namespace().unwrap_or_default()))]
async fn reconcile(
    watched: Arc<Watched>,
    ctx: Arc<Context>,
) -> Result<Action, finalizer::Error<Error>> {
    let offering = match &watched.0 {
        Ok(offering) => Arc::new(offering.clone()),
        Err(invalid) => {
            warn!(error = %invalid, "Cannot read the offering");
            ctx.event(
                watched.as_ref(),
                EventType::Warning,
                "InvalidObject",
                format!("The operator cannot read this PublishedOffering: {invalid}"),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    let namespace = offering.namespace().unwrap_or_default();
    let api: Api<PublishedOffering> = Api::namespaced(ctx.client.clone(), &namespace);
    let reconcile = finalizer(&api, FINALIZER, offering, |event| async {
        match event {
            finalizer::Event::Apply(offering) => apply(&offering, &ctx).await,
            finalizer::Event::Cleanup(offering) => remove(&offering, &ctx).await,
        }
    });
    ctx.metrics.controllers.timed(NAME, reconcile).await
}

fn error_policy(
    offering: Arc<Watched>,
    error: &finalizer::Error<Error>,
    ctx: Arc<Context>,
) -> Action {
    let category = match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => {
            error.category()
        }
        _ => "finalizer",
    };
    ctx.metrics.controllers.failed(NAME, category);
    if TERMINAL_CATEGORIES.contains(&category) {
        ctx.metrics.controllers.terminal(NAME);
    }
    let delay = ctx.backoff(offering.as_ref());
    warn!(offering = %offering.name_any(), error = %error, retry_in = ?delay, "Reconcile failed");
    Action::requeue(delay)
}

async fn apply(offering: &PublishedOffering, ctx: &Context) -> Result<Action, Error> {
    match provision(
        &ctx.client,
        offering,
        &ctx.settings,
        &ctx.metrics.tokens_issued,
        &ctx.confirmed,
    )
    .await
    {
        Ok(provisioned) => {
            ctx.selections.follow(offering, &provisioned.kcp);
            write_provisioned(offering, ctx, &provisioned).await
        }
        Err(error) => {
            report_error(offering, ctx, &error).await;
            Err(error)
        }
    }
}

fn ready_condition(offering: &PublishedOffering) -> Option<(String, String, String)> {
    offering
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == status::READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn write_provisioned(
    offering: &PublishedOffering,
    ctx: &Context,
    provisioned: &Provisioned,
) -> Result<Action, Error> {
    let generation = offering.metadata.generation;
    let mut next = offering.status.clone().unwrap_or_default();
    status::set_all(&mut next.conditions, &provisioned.parts, generation);
    next.observed_generation = generation;
    next.export = Some(provisioned.export.clone());
    next.consumers = Some(ConsumerCounts {
        bound: count(provisioned.consumers.bound.len()),
        failed: count(provisioned.consumers.failed.len()),
        workspaces: provisioned.consumers.managed.clone(),
    });
    next.agent_leader = provisioned.agent_leader.clone();
    if let Some(token) = provisioned.token.filter(|t| t.rotated) {
        ctx.event(
            offering,
            EventType::Normal,
            "TokenIssued",
            format!(
                "Issued the agent a kcp token; it is renewed at {}",
                token.renew_at
            ),
        )
        .await;
    }
    announce(offering, ctx, &next).await;
    write_status(offering, ctx, &next).await?;
    let ready = next.conditions.first();
    ctx.metrics
        .offering_ready(offering, ready.is_some_and(|r| r.status == "True"));
    ctx.metrics
        .token_expires(offering, provisioned.token.map(|t| t.expires));
    let wait = match ready {
        Some(ready) if ready.status == "True" => {
            ctx.succeeded(offering);
            // kcp lists the endpoints a while after the first binding:
            // the status shows them soon, not a resync later.
            let unlisted = provisioned.export.endpoint_urls.is_empty()
                && !provisioned.consumers.bound.is_empty();
            if unlisted {
                WAITING
            } else {
                ctx.settings.resync
            }
        }
        Some(ready) if !status::TRANSIENT_REASONS.contains(&ready.reason.as_str()) => {
            ctx.backoff(offering).max(WAITING)
        }
        _ => {
            ctx.succeeded(offering);
            WAITING
        }
    };
    let until_renewal = provisioned.token.map_or(wait, |token| {
        token
            .renew_at
            .duration_since(Timestamp::now())
            .try_into()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
    });
    Ok(Action::requeue(wait.min(until_renewal)))
}

/// An event when `Ready` changes, of the type [`status::event_type`] says.
async fn announce(offering: &PublishedOffering, ctx: &Context, next: &PublishedOfferingStatus) {
    let Some(ready) = next.conditions.iter().find(|c| c.type_ == status::READY) else {
        return;
    };
    let now = (
        ready.status.clone(),
        ready.reason.clone(),
        ready.message.clone(),
    );
    if ready_condition(offering).as_ref() == Some(&now) {
        return;
    }
    ctx.event(
        offering,
        status::event_type(ready),
        &ready.reason,
        ready.message.clone(),
    )
    .await;
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

async fn report_error(offering: &PublishedOffering, ctx: &Context, error: &Error) {
    let generation = offering.metadata.generation;
    let mut next = offering.status.clone().unwrap_or_default();
    status::set_error(&mut next.conditions, error, generation);
    next.observed_generation = generation;
    ctx.metrics.offering_ready(offering, false);
    announce(offering, ctx, &next).await;
    if let Err(write_error) = write_status(offering, ctx, &next).await {
        warn!(error = %write_error, "Cannot write the status");
    }
}

async fn write_status(
    offering: &PublishedOffering,
    ctx: &Context,
    next: &PublishedOfferingStatus,
) -> Result<(), Error> {
    if offering.status.as_ref() == Some(next) {
        return Ok(());
    }
    let api: Api<PublishedOffering> = Api::namespaced(
        ctx.client.clone(),
        &offering.namespace().unwrap_or_default(),
    );
    api.patch_status(
        &offering.name_any(),
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({"status": next})),
    )
    .await
    .map_err(|error| Error::service("writing the offering's status", error))?;
    Ok(())
}

async fn remove(offering: &PublishedOffering, ctx: &Context) -> Result<Action, Error> {
    match cleanup(&ctx.client, offering, &ctx.settings).await {
        Ok(skipped) => {
            if let Some(why) = skipped {
                warn!(reason = %why, "Skipped the kcp side of the cleanup");
                ctx.event(offering, EventType::Warning, "KcpCleanupSkipped", why)
                    .await;
            }
            info!("Removed the offering's objects");
            ctx.metrics.forget(offering);
            ctx.confirmed.forget(&offering.uid().unwrap_or_default());
            ctx.selections.forget(offering);
            ctx.succeeded(offering);
            Ok(Action::await_change())
        }
        Err(error) => {
            report_error(offering, ctx, &error).await;
            Err(error)
        }
    }
}

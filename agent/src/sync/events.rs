//! Events on consumers' objects in kcp, with upstream's reasons. They are
//! recorded off the sync path, as client-go's recorder does for upstream:
//! a reconcile queues its events and goes on, one sender per worker writes
//! them in order, and when more than [`QUEUE`] wait the newest are dropped
//! (counted in `sync_agent_events_dropped_total`). Events need the export's
//! `events` claim; a failed write is logged, never retried or fatal.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, ObjectMeta};
use kube::{Client, ResourceExt};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tracing::debug;

use crate::context::{FIELD_MANAGER, post_params};

/// Events waiting to be written before new ones are dropped.
pub const QUEUE: usize = 1000;

/// Where a worker's reconciles queue their events.
#[derive(Debug, Clone)]
pub struct EventSink {
    queue: mpsc::Sender<(Client, Event)>,
    dropped: IntCounter,
}

impl EventSink {
    /// A sink, and the sender that writes what it queues (run it as a task).
    pub fn new(dropped: IntCounter) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, mut pending) = mpsc::channel::<(Client, Event)>(QUEUE);
        let sender = async move {
            while let Some((client, event)) = pending.recv().await {
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(client, &namespace);
                if let Err(error) = api.create(&post_params(), &event).await {
                    debug!(%error, reason = ?event.reason, "Recording an event in kcp failed");
                }
            }
        };
        (Self { queue, dropped }, sender)
    }

    /// Queues a `Normal` event on `object`, reached through `client`.
    pub fn normal(&self, client: &Client, object: &DynamicObject, reason: &str, message: &str) {
        self.record(client, object, "Normal", reason, message);
    }

    /// Queues a `Warning` event on `object`, reached through `client`.
    pub fn warning(&self, client: &Client, object: &DynamicObject, reason: &str, message: &str) {
        self.record(client, object, "Warning", reason, message);
    }

    fn record(
        &self,
        client: &Client,
        object: &DynamicObject,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
        let event = event(object, type_, reason, message);
        if self.queue.try_send((client.clone(), event)).is_err() {
            self.dropped.inc();
            debug!(reason, object = %object.name_any(), "Too many events queued; dropped one");
        }
    }
}

/// A core/v1 Event about `object`, in its namespace (`default` for
/// cluster-scoped objects).
fn event(object: &DynamicObject, type_: &str, reason: &str, message: &str) -> Event {
    let namespace = object.namespace().unwrap_or_else(|| "default".into());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let types = object.types.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", object.name_any())),
            namespace: Some(namespace),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(types.api_version),
            kind: Some(types.kind),
            name: Some(object.name_any()),
            namespace: object.namespace(),
            uid: object.uid(),
            resource_version: object.resource_version(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        source: Some(EventSource {
            component: Some(FIELD_MANAGER.into()),
            host: None,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_points_at_its_object_and_lands_in_its_namespace() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "g.io/v1", "kind": "Widget",
            "metadata": {"name": "w", "namespace": "apps", "uid": "u-1", "resourceVersion": "7"},
        }))
        .unwrap();
        let placed = event(&object, "Normal", "ObjectPlaced", "placed");
        assert_eq!(placed.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(placed.metadata.generate_name.as_deref(), Some("w."));
        let involved = &placed.involved_object;
        assert_eq!(
            (involved.kind.as_deref(), involved.api_version.as_deref()),
            (Some("Widget"), Some("g.io/v1"))
        );
        assert_eq!(involved.uid.as_deref(), Some("u-1"));
        assert_eq!(placed.reason.as_deref(), Some("ObjectPlaced"));

        let cluster_scoped: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "g.io/v1", "kind": "Widget", "metadata": {"name": "c"},
        }))
        .unwrap();
        let warning = event(&cluster_scoped, "Warning", "ReconcilingError", "retry");
        assert_eq!(warning.metadata.namespace.as_deref(), Some("default"));
    }

    #[tokio::test]
    async fn events_beyond_the_queue_are_counted_as_dropped() {
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        // The sender is not run, so nothing leaves the queue.
        let (sink, _sender) = EventSink::new(dropped.clone());
        let client = Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
            .expect("a client needs no server to exist");
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "g.io/v1", "kind": "Widget", "metadata": {"name": "w"},
        }))
        .unwrap();
        for _ in 0..QUEUE + 5 {
            sink.normal(&client, &object, "ObjectPlaced", "placed");
        }
        assert_eq!(dropped.get(), 5);
    }
}

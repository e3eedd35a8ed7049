//! The agent's metrics: controller-runtime's reconcile metrics for its
//! controllers (from `runtime::metrics`) and its own `sync_agent_*` ones, in
//! one registry served on `/metrics`.

use std::future::Future;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use crate::runtime::metrics::ControllerMetrics;
use crate::sync::queue::QueueMetrics;

/// The agent's metrics, registered in their own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    controllers: ControllerMetrics,
    /// Number of PublishedResources matching the agent's selector.
    pub published_resources: IntGauge,
    /// Running sync workers (one per enabled PublishedResource).
    pub sync_workers: IntGauge,
    /// Virtual workspace endpoints reached at a rewritten address
    /// (`--endpoint-url-rewrite`).
    pub endpoints_rewritten: IntGauge,
    /// Writes that brought a copy in line, by PublishedResource and kind of write.
    pub objects_synced: IntCounterVec,
    /// Failed object syncs, by PublishedResource and reason.
    pub sync_errors: IntCounterVec,
    /// Seconds from seeing a kcp change to the service-cluster write.
    pub sync_latency: HistogramVec,
    /// Events on kcp objects dropped because too many were queued.
    pub events_dropped: IntCounter,
    /// The sync workers' queues, by `name` (the PublishedResource).
    workqueue: WorkQueueMetrics,
}

/// controller-runtime's `workqueue_*` metrics, one series per queue.
#[derive(Clone, Debug)]
struct WorkQueueMetrics {
    depth: IntGaugeVec,
    adds: IntCounterVec,
    retries: IntCounterVec,
    queue_duration: HistogramVec,
    work_duration: HistogramVec,
}

impl WorkQueueMetrics {
    fn new() -> Self {
        let buckets = vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0];
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.clone()),
                &["name"],
            )
            .expect("valid metric")
        };
        Self {
            depth: IntGaugeVec::new(
                Opts::new("workqueue_depth", "Current depth of workqueue"),
                &["name"],
            )
            .expect("valid metric"),
            adds: IntCounterVec::new(
                Opts::new(
                    "workqueue_adds_total",
                    "Total number of adds handled by workqueue",
                ),
                &["name"],
            )
            .expect("valid metric"),
            retries: IntCounterVec::new(
                Opts::new(
                    "workqueue_retries_total",
                    "Total number of retries handled by workqueue",
                ),
                &["name"],
            )
            .expect("valid metric"),
            queue_duration: histogram(
                "workqueue_queue_duration_seconds",
                "How long in seconds an item stays in workqueue before being requested",
            ),
            work_duration: histogram(
                "workqueue_work_duration_seconds",
                "How long in seconds processing an item from workqueue takes",
            ),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.depth.clone()),
            Box::new(self.adds.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.queue_duration.clone()),
            Box::new(self.work_duration.clone()),
        ]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let controllers = ControllerMetrics::new();
        let published_resources = IntGauge::new(
            "sync_agent_published_resource",
            "Number of PublishedResources handled by this agent",
        )
        .expect("valid metric");
        let sync_workers =
            IntGauge::new("sync_agent_sync_workers", "Running sync workers").expect("valid metric");
        let endpoints_rewritten = IntGauge::new(
            "sync_agent_endpoints_rewritten",
            "Virtual workspace endpoints reached at a rewritten address (--endpoint-url-rewrite)",
        )
        .expect("valid metric");
        let objects_synced = IntCounterVec::new(
            Opts::new(
                "sync_agent_objects_synced_total",
                "Writes that brought an object in line",
            ),
            &["published_resource", "operation"],
        )
        .expect("valid metric");
        let sync_errors = IntCounterVec::new(
            Opts::new("sync_agent_sync_errors_total", "Failed object syncs"),
            &["published_resource", "reason"],
        )
        .expect("valid metric");
        let sync_latency = HistogramVec::new(
            HistogramOpts::new(
                "sync_agent_sync_latency_seconds",
                "Seconds from seeing a change in kcp to writing it to the service cluster",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["published_resource"],
        )
        .expect("valid metric");
        let events_dropped = IntCounter::new(
            "sync_agent_events_dropped_total",
            "Events on kcp objects dropped because too many were waiting to be written",
        )
        .expect("valid metric");
        let workqueue = WorkQueueMetrics::new();
        controllers.register(workqueue.collectors());
        controllers.register(vec![
            Box::new(published_resources.clone()),
            Box::new(events_dropped.clone()),
            Box::new(sync_workers.clone()),
            Box::new(endpoints_rewritten.clone()),
            Box::new(objects_synced.clone()),
            Box::new(sync_errors.clone()),
            Box::new(sync_latency.clone()),
        ]);
        Self {
            controllers,
            published_resources,
            sync_workers,
            endpoints_rewritten,
            objects_synced,
            sync_errors,
            sync_latency,
            events_dropped,
            workqueue,
        }
    }

    /// The series of the queue `name` (a sync worker's PublishedResource).
    pub fn queue(&self, name: &str) -> QueueMetrics {
        let queue = &self.workqueue;
        QueueMetrics {
            depth: queue.depth.with_label_values(&[name]),
            adds: queue.adds.with_label_values(&[name]),
            retries: queue.retries.with_label_values(&[name]),
            queue_duration: queue.queue_duration.with_label_values(&[name]),
            work_duration: queue.work_duration.with_label_values(&[name]),
        }
    }

    /// Runs one reconcile of `controller`, counted and timed.
    pub async fn timed<T, E>(
        &self,
        controller: &str,
        reconcile: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.controllers.timed(controller, reconcile).await
    }

    /// Records a failed reconcile of `controller` by error category.
    pub fn failed(&self, controller: &str, category: &str) {
        self.controllers.failed(controller, category);
    }

    /// Records a failed reconcile of `controller` that only a change fixes.
    pub fn terminal(&self, controller: &str) {
        self.controllers.terminal(controller);
    }

    /// Announces `controller` with at most `max_concurrent` reconciles.
    pub fn declare(&self, controller: &str, max_concurrent: usize) {
        self.controllers.declare(controller, max_concurrent);
    }

    /// 1 while this replica holds the Lease `lease`, else 0.
    pub fn leader_status(&self, lease: &str) -> IntGauge {
        self.controllers.leader_status(lease)
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        self.controllers.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_agents_metrics_share_one_registry_with_its_controllers() {
        let metrics = Metrics::new();
        let _: Result<(), ()> = metrics.timed("apiexport", async { Ok(()) }).await;
        metrics.published_resources.set(2);
        let text = metrics.render();
        assert!(text.contains("sync_agent_published_resource 2"), "{text}");
        assert!(
            text.contains(
                r#"controller_runtime_reconcile_total{controller="apiexport",result="success"} 1"#
            ),
            "{text}"
        );
    }
}

//! Prometheus metrics: controller-runtime's reconcile metrics under their
//! usual names (shared with the operator), and the agent's own
//! `sync_agent_*` metrics.

use std::time::Duration;

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// controller-runtime's reconcile metrics, by controller.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    reconcile_total: IntCounterVec,
    reconcile_errors: IntCounterVec,
    reconcile_time: HistogramVec,
    leader_status: IntGaugeVec,
}

/// The agent's metrics, registered in their own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    controllers: ControllerMetrics,
    /// Number of PublishedResources matching the agent's selector.
    pub published_resources: IntGauge,
    /// Running sync workers (one per enabled PublishedResource).
    pub sync_workers: IntGauge,
    /// Writes that brought a copy in line, by PublishedResource and kind of write.
    pub objects_synced: IntCounterVec,
    /// Failed object syncs, by PublishedResource and reason.
    pub sync_errors: IntCounterVec,
    /// Seconds from seeing a kcp change to the service-cluster write.
    pub sync_latency: HistogramVec,
    /// Events on kcp objects dropped because too many were queued.
    pub events_dropped: IntCounter,
}

/// How a reconcile ended, as controller-runtime labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Done; nothing to retry.
    Success,
    /// Failed; retried with backoff.
    Error,
    /// Done, and asked to run again after a delay.
    RequeueAfter,
}

impl ReconcileResult {
    fn label(self) -> &'static str {
        match self {
            ReconcileResult::Success => "success",
            ReconcileResult::Error => "error",
            ReconcileResult::RequeueAfter => "requeue_after",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    /// Creates the reconcile metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let reconcile_total = IntCounterVec::new(
            Opts::new(
                "controller_runtime_reconcile_total",
                "Total number of reconciliations per controller",
            ),
            &["controller", "result"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "controller_runtime_reconcile_errors_total",
                "Total number of reconciliation errors per controller",
            ),
            &["controller", "category"],
        )
        .expect("valid metric");
        let reconcile_time = HistogramVec::new(
            HistogramOpts::new(
                "controller_runtime_reconcile_time_seconds",
                "Length of time per reconciliation per controller",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["controller"],
        )
        .expect("valid metric");
        let leader_status = IntGaugeVec::new(
            Opts::new(
                "leader_election_master_status",
                "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master",
            ),
            &["name"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconcile_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_time.clone()),
            Box::new(leader_status.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            reconcile_total,
            reconcile_errors,
            reconcile_time,
            leader_status,
        }
    }

    /// 1 while this replica holds the Lease `lease`, else 0.
    pub fn leader_status(&self, lease: &str) -> IntGauge {
        self.leader_status.with_label_values(&[lease])
    }

    /// Records one reconcile of `controller`.
    pub fn reconciled(&self, controller: &str, result: ReconcileResult, took: Duration) {
        self.reconcile_total
            .with_label_values(&[controller, result.label()])
            .inc();
        self.reconcile_time
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
    }

    /// Records a failed reconcile of `controller` by error category.
    pub fn failed(&self, controller: &str, category: &str) {
        self.reconcile_errors
            .with_label_values(&[controller, category])
            .inc();
    }
}

/// The metrics of `registry` in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    if TextEncoder::new()
        .encode(&registry.gather(), &mut buffer)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(buffer).unwrap_or_default()
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let controllers = ControllerMetrics::register(&registry);
        let published_resources = IntGauge::new(
            "sync_agent_published_resource",
            "Number of PublishedResources handled by this agent",
        )
        .expect("valid metric");
        let sync_workers =
            IntGauge::new("sync_agent_sync_workers", "Running sync workers").expect("valid metric");
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
        for collector in [
            Box::new(published_resources.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events_dropped.clone()),
            Box::new(sync_workers.clone()),
            Box::new(objects_synced.clone()),
            Box::new(sync_errors.clone()),
            Box::new(sync_latency.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            registry,
            controllers,
            published_resources,
            sync_workers,
            objects_synced,
            sync_errors,
            sync_latency,
            events_dropped,
        }
    }

    /// Records one reconcile of `controller`.
    pub fn reconciled(&self, controller: &str, result: ReconcileResult, took: Duration) {
        self.controllers.reconciled(controller, result, took);
    }

    /// Records a failed reconcile of `controller` by error category.
    pub fn failed(&self, controller: &str, category: &str) {
        self.controllers.failed(controller, category);
    }

    /// 1 while this replica holds the Lease `lease`, else 0.
    pub fn leader_status(&self, lease: &str) -> IntGauge {
        self.controllers.leader_status(lease)
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_with_controller_runtime_names() {
        let metrics = Metrics::new();
        metrics.reconciled(
            "apiexport",
            ReconcileResult::Success,
            Duration::from_millis(3),
        );
        metrics.failed("apiexport", "kcp");
        metrics.published_resources.set(2);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"controller_runtime_reconcile_total{controller="apiexport",result="success"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"controller_runtime_reconcile_errors_total{category="kcp",controller="apiexport"} 1"#), "{text}");
        assert!(
            text.contains(
                "controller_runtime_reconcile_time_seconds_count{controller=\"apiexport\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("sync_agent_published_resource 2"), "{text}");
    }
}

//! Prometheus plumbing both binaries share: controller-runtime's reconcile
//! metrics and the `process_*` ones under their usual names, registration
//! and the text exposition.
//! Each binary keeps its own metrics beside its code (`sync_agent::metrics`,
//! the operator's `controller::Metrics`).

use std::future::Future;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// A binary's metrics registry with controller-runtime's reconcile metrics,
/// by controller, already in it; the binary registers its own beside them.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    registry: Registry,
    reconcile_total: IntCounterVec,
    reconcile_errors: IntCounterVec,
    reconcile_time: HistogramVec,
    leader_status: IntGaugeVec,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    /// A new registry holding the reconcile metrics.
    pub fn new() -> Self {
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
        let metrics = Self {
            registry: Registry::new(),
            reconcile_total,
            reconcile_errors,
            reconcile_time,
            leader_status,
        };
        metrics.register(vec![
            Box::new(metrics.reconcile_total.clone()),
            Box::new(metrics.reconcile_errors.clone()),
            Box::new(metrics.reconcile_time.clone()),
            Box::new(metrics.leader_status.clone()),
        ]);
        // `process_*`: CPU, memory, open files, start time, as client_golang
        // reports them.
        #[cfg(target_os = "linux")]
        metrics.register(vec![Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )]);
        metrics
    }

    /// Registers the binary's own collectors beside the reconcile metrics;
    /// a name registered twice is a programming error.
    pub fn register(&self, collectors: Vec<Box<dyn Collector>>) {
        for collector in collectors {
            self.registry
                .register(collector)
                .expect("metric registered once");
        }
    }

    /// Every registered metric in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// 1 while this replica holds the Lease `lease`, else 0.
    pub fn leader_status(&self, lease: &str) -> IntGauge {
        self.leader_status.with_label_values(&[lease])
    }

    /// Runs one reconcile of `controller`, counting it by result
    /// (controller-runtime's `success`/`error`) and timing it.
    pub async fn timed<T, E>(
        &self,
        controller: &str,
        reconcile: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = reconcile.await;
        self.reconciled(controller, result.is_ok(), started.elapsed());
        result
    }

    fn reconciled(&self, controller: &str, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "error" };
        self.reconcile_total
            .with_label_values(&[controller, result])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reconciles_are_counted_and_timed_with_controller_runtime_names() {
        let metrics = ControllerMetrics::new();
        let ok: Result<(), ()> = metrics.timed("apiexport", async { Ok(()) }).await;
        let failed: Result<(), ()> = metrics.timed("apiexport", async { Err(()) }).await;
        assert_eq!((ok, failed), (Ok(()), Err(())));
        metrics.failed("apiexport", "kcp");
        metrics.leader_status("agent").set(1);
        let text = metrics.render();
        for line in [
            r#"controller_runtime_reconcile_total{controller="apiexport",result="success"} 1"#,
            r#"controller_runtime_reconcile_total{controller="apiexport",result="error"} 1"#,
            r#"controller_runtime_reconcile_errors_total{category="kcp",controller="apiexport"} 1"#,
            r#"controller_runtime_reconcile_time_seconds_count{controller="apiexport"} 2"#,
            r#"leader_election_master_status{name="agent"} 1"#,
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}

//! Prometheus plumbing both binaries share: controller-runtime's reconcile
//! metrics (totals, errors, time, active workers, concurrency, panics,
//! terminal errors) and the `process_*` ones under their usual names,
//! registration and the text exposition.
//! Each binary keeps its own metrics beside its code (`sync_agent::metrics`,
//! the operator's `controller::Metrics`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
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
    active_workers: IntGaugeVec,
    max_concurrent: IntGaugeVec,
    panics: IntCounterVec,
    terminal_errors: IntCounterVec,
    leader_status: IntGaugeVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// Counts a reconcile as active until it ends, also by a panic.
struct Active(IntGauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    /// A new registry holding the reconcile metrics.
    pub fn new() -> Self {
        let reconcile_total = counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            &["controller", "result"],
        );
        let reconcile_errors = counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller",
            &["controller", "category"],
        );
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
        let leader_status = gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master",
            &["name"],
        );
        let metrics = Self {
            registry: Registry::new(),
            reconcile_total,
            reconcile_errors,
            reconcile_time,
            active_workers: gauge(
                "controller_runtime_active_workers",
                "Number of currently used workers per controller",
                &["controller"],
            ),
            max_concurrent: gauge(
                "controller_runtime_max_concurrent_reconciles",
                "Maximum number of concurrent reconciles per controller",
                &["controller"],
            ),
            panics: counter(
                "controller_runtime_reconcile_panics_total",
                "Total number of reconciliation panics per controller",
                &["controller"],
            ),
            terminal_errors: counter(
                "controller_runtime_terminal_reconcile_errors_total",
                "Total number of terminal reconciliation errors per controller",
                &["controller"],
            ),
            leader_status,
        };
        metrics.register(vec![
            Box::new(metrics.reconcile_total.clone()),
            Box::new(metrics.reconcile_errors.clone()),
            Box::new(metrics.reconcile_time.clone()),
            Box::new(metrics.active_workers.clone()),
            Box::new(metrics.max_concurrent.clone()),
            Box::new(metrics.panics.clone()),
            Box::new(metrics.terminal_errors.clone()),
            Box::new(metrics.leader_status.clone()),
            Box::new(super::rest::REQUESTS.clone()),
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

    /// Announces `controller`, which runs at most `max_concurrent`
    /// reconciles at once: its series start at zero, as controller-runtime's
    /// do, so rates and alerts see it before its first reconcile.
    pub fn declare(&self, controller: &str, max_concurrent: usize) {
        self.max_concurrent
            .with_label_values(&[controller])
            .set(i64::try_from(max_concurrent).unwrap_or(i64::MAX));
        for result in ["success", "error"] {
            self.reconcile_total
                .with_label_values(&[controller, result]);
        }
        self.active_workers.with_label_values(&[controller]);
        self.panics.with_label_values(&[controller]);
        self.terminal_errors.with_label_values(&[controller]);
    }

    /// Runs one reconcile of `controller`, counting it by result
    /// (controller-runtime's `success`/`error`), timing it and counting it
    /// active meanwhile. A panic is counted, as an error too, and goes on.
    pub async fn timed<T, E>(
        &self,
        controller: &str,
        reconcile: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let active = self.active_workers.with_label_values(&[controller]);
        active.inc();
        let _active = Active(active);
        let started = Instant::now();
        match AssertUnwindSafe(reconcile).catch_unwind().await {
            Ok(result) => {
                self.reconciled(controller, result.is_ok(), started.elapsed());
                result
            }
            Err(panic) => {
                self.panics.with_label_values(&[controller]).inc();
                self.reconciled(controller, false, started.elapsed());
                std::panic::resume_unwind(panic)
            }
        }
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

    /// Records a failed reconcile of `controller` that retrying cannot fix:
    /// it waits for someone to change the object or its surroundings.
    pub fn terminal(&self, controller: &str) {
        self.terminal_errors.with_label_values(&[controller]).inc();
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

    #[tokio::test]
    async fn a_declared_controller_counts_workers_panics_and_terminal_errors() {
        let metrics = ControllerMetrics::new();
        metrics.declare("sync", 4);
        let zero = metrics.render();
        for line in [
            r#"controller_runtime_max_concurrent_reconciles{controller="sync"} 4"#,
            r#"controller_runtime_reconcile_total{controller="sync",result="error"} 0"#,
            r#"controller_runtime_reconcile_panics_total{controller="sync"} 0"#,
            r#"controller_runtime_terminal_reconcile_errors_total{controller="sync"} 0"#,
        ] {
            assert!(zero.contains(line), "{line} missing from\n{zero}");
        }

        let (started, release) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
        let running = metrics.timed("sync", async {
            started.notify_one();
            release.notified().await;
            Ok::<(), ()>(())
        });
        let watch = async {
            started.notified().await;
            let text = metrics.render();
            release.notify_one();
            text
        };
        let (_, during) = tokio::join!(running, watch);
        assert!(
            during.contains(r#"controller_runtime_active_workers{controller="sync"} 1"#),
            "{during}"
        );

        let panicked = AssertUnwindSafe(metrics.timed("sync", async {
            if true {
                panic!("a bug");
            }
            Ok::<(), ()>(())
        }))
        .catch_unwind()
        .await;
        assert!(panicked.is_err(), "the panic goes on");
        metrics.terminal("sync");
        let after = metrics.render();
        for line in [
            r#"controller_runtime_active_workers{controller="sync"} 0"#,
            r#"controller_runtime_reconcile_panics_total{controller="sync"} 1"#,
            r#"controller_runtime_reconcile_total{controller="sync",result="error"} 1"#,
            r#"controller_runtime_terminal_reconcile_errors_total{controller="sync"} 1"#,
        ] {
            assert!(after.contains(line), "{line} missing from\n{after}");
        }
    }
}

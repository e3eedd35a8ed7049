//! The command line, the settings every scenario shares and the figures a
//! run produces, with their medians and percentiles.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use sync_agent::sync::worker::CONCURRENCY;

/// The sizes issue 9 asks for; smaller runs are marked as such in the report.
pub(crate) const DEFAULT_SIZES: &str = "10x100,100x100,10x1000";
pub(crate) const DEFAULT_RUNS: usize = 3;
pub(crate) const DEFAULT_LATENCY_SAMPLES: usize = 200;
pub(crate) const DEFAULT_DELETION: &str = "10x100";
/// The agent's log filter in every scenario (its default level).
pub(crate) const AGENT_LOG_FILTER: &str = "info";
/// Context of kcp's admin kubeconfig allowed to read `/metrics`.
pub(crate) const KCP_METRICS_CONTEXT: &str = "shard-base";
/// Namespace of the consumers' objects in kcp.
pub(crate) const CONSUMER_NAMESPACE: &str = "apps";
/// Status phase written on every copy for the status scenario.
pub(crate) const READY: &str = "Ready";
/// The agent counts as idle once it used less than this much CPU per
/// `SETTLE_STEP` for `SETTLE_QUIET` (longer than its 5 s requeue after a write).
pub(crate) const SETTLE_BUSY_SECONDS: f64 = 0.02;
pub(crate) const SETTLE_STEP: Duration = Duration::from_millis(500);
pub(crate) const SETTLE_QUIET: Duration = Duration::from_secs(6);
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// How long the idle agent is watched for its steady RSS and CPU.
pub(crate) const STEADY_WINDOW: Duration = Duration::from_secs(10);
/// How long the agent is left idle after every object is deleted before its
/// RSS counts as "after deletion": its housekeeping (every 30 s) forgets a
/// deleted object's tombstone 2 min after the deletion and a workspace's
/// client 1 min after its last use.
pub(crate) const AFTER_DELETION_WAIT: Duration = Duration::from_secs(160);
/// How long the idle servers are watched for their background CPU use.
pub(crate) const BACKGROUND_WINDOW: Duration = Duration::from_secs(10);
/// How long one latency sample may take.
pub(crate) const SAMPLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(about = "Benchmarks the sync agent on the test servers; run it through e2e/bench.sh")]
pub(crate) struct Cli {
    /// Runs of every scenario; the report quotes the median.
    #[arg(long, default_value_t = DEFAULT_RUNS)]
    pub(crate) runs: usize,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "initial,ceiling,ceiling-events,latency,deletion,operator"
    )]
    pub(crate) scenarios: Vec<Scenario>,
    /// Sizes of the initial-sync, status and ceiling runs, as
    /// `<workspaces>x<objects per workspace>`.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_SIZES)]
    pub(crate) sizes: Vec<Size>,
    /// Latency samples per path and run.
    #[arg(long, default_value_t = DEFAULT_LATENCY_SAMPLES)]
    pub(crate) latency_samples: usize,
    /// Consumer workspaces the latency samples take turns in.
    #[arg(long, default_value_t = 2)]
    pub(crate) latency_workspaces: usize,
    /// Size of the deletion runs.
    #[arg(long, default_value = DEFAULT_DELETION)]
    pub(crate) deletion: Size,
    /// Consumer workspaces of the operator run.
    #[arg(long, default_value_t = 1000)]
    pub(crate) operator_workspaces: usize,
    /// Requests the minimal client keeps in flight; the default is the
    /// agent's sync worker concurrency.
    #[arg(long, default_value_t = CONCURRENCY)]
    pub(crate) concurrency: usize,
    /// Requests in flight while the benchmark prepares objects (not measured).
    #[arg(long, default_value_t = 16)]
    pub(crate) setup_concurrency: usize,
    /// Where to write the report.
    #[arg(long, default_value_os_t = repo_dir().join("BENCHMARKS.md"))]
    pub(crate) output: PathBuf,
    /// The command line to quote in the report (`e2e/bench.sh` passes its own).
    #[arg(long, default_value = "")]
    pub(crate) command: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Initial sync and status back by the agent, with its memory and CPU.
    Initial,
    /// The same writes by a minimal client.
    Ceiling,
    /// The minimal client's writes plus the events the agent records on the
    /// consumers' objects, through the agent's own event sink.
    CeilingEvents,
    /// Create and status latency.
    Latency,
    /// Deleting objects end to end.
    Deletion,
    /// The operator binding many consumer workspaces.
    Operator,
}

/// `<workspaces>x<objects per workspace>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Size {
    pub(crate) workspaces: usize,
    pub(crate) objects: usize,
}

impl Size {
    pub(crate) fn total(self) -> usize {
        self.workspaces * self.objects
    }

    /// How long the benchmark waits for all objects of one phase.
    pub(crate) fn timeout(self) -> Duration {
        Duration::from_secs(120)
            + Duration::from_millis(200) * u32::try_from(self.total()).unwrap_or(u32::MAX)
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}", self.workspaces, self.objects)
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (w, n) = s
            .split_once(['x', 'X', '×'])
            .ok_or_else(|| format!("{s:?} is not <workspaces>x<objects>"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{s:?}: {v:?} is not a positive number"))
        };
        Ok(Self {
            workspaces: parse(w)?,
            objects: parse(n)?,
        })
    }
}

/// The checkout the benchmark runs in (found at run time).
pub(crate) fn repo_dir() -> PathBuf {
    e2e::checkout::root().unwrap_or_else(|error| panic!("{error:#}"))
}

// ---------------------------------------------------------------------------
// Figures and medians

/// One run's figures by name.
pub(crate) type Figures = BTreeMap<String, f64>;

/// The median of every figure over the runs that have it.
pub(crate) fn median(runs: &[Figures]) -> Figures {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|f| f.keys()).collect();
    keys.into_iter()
        .map(|key| {
            let mut values: Vec<f64> = runs.iter().filter_map(|f| f.get(key).copied()).collect();
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            let value = if values.len() % 2 == 1 {
                values[middle]
            } else {
                (values[middle - 1] + values[middle]) / 2.0
            };
            (key.clone(), value)
        })
        .collect()
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn seconds(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

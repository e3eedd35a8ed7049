//! The project's benchmark (issue 9, DESIGN.md §6), run by `e2e/bench.sh`
//! inside `testenv run`: initial sync, status back to kcp, latency, deletion
//! and the agent's memory and CPU, on the real test servers, against a
//! ceiling: a minimal client doing the writes the agent must do, with the
//! agent's concurrency. It prints a Markdown report and writes it to
//! `BENCHMARKS.md`.
//!
//! Every run of every scenario sets up its own provider, `Widget` kind,
//! agent and consumer workspaces with the e2e library's `Scene`, and removes
//! them afterwards. Each figure is the median over `--runs` runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use e2e::agent::{AGENT_BINARY_VARIABLE, AgentProcess, AgentSettings};
use e2e::env::{ENV_FILE_VARIABLE, EnvFile};
use e2e::kcp::TestWorkspace;
use e2e::publishing::Provider;
use e2e::scene::Scene;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use sync_agent::api::kcp::CLUSTER_ANNOTATION;
use sync_agent::api::kcp::apis_v1alpha1::APIExportEndpointSlice;
use sync_agent::api::kcp::tenancy_v1alpha1::Workspace;
use sync_agent::sync::events::EventSink;
use sync_agent::sync::identity::{AGENT_LABEL, FINALIZER, RemoteKey};
use sync_agent::sync::naming::{self, DEFAULT_NAME, DEFAULT_NAMESPACE, NamingContext};
use sync_agent::sync::object::{Owner, finalizer_patch, new_local};
use sync_agent::sync::worker::CONCURRENCY;

/// The sizes issue 9 asks for; smaller runs are marked as such in the report.
const DEFAULT_SIZES: &str = "10x100,100x100,10x1000";
const DEFAULT_RUNS: usize = 3;
const DEFAULT_LATENCY_SAMPLES: usize = 200;
const DEFAULT_DELETION: &str = "10x100";
/// The agent's log filter in every scenario (its default level).
const AGENT_LOG_FILTER: &str = "info";
/// Context of kcp's admin kubeconfig allowed to read `/metrics`.
const KCP_METRICS_CONTEXT: &str = "shard-base";
/// Namespace of the consumers' objects in kcp.
const CONSUMER_NAMESPACE: &str = "apps";
/// Status phase written on every copy for the status scenario.
const READY: &str = "Ready";
/// The agent counts as idle once it used less than this much CPU per
/// `SETTLE_STEP` for `SETTLE_QUIET` (longer than its 5 s requeue after a write).
const SETTLE_BUSY_SECONDS: f64 = 0.02;
const SETTLE_STEP: Duration = Duration::from_millis(500);
const SETTLE_QUIET: Duration = Duration::from_secs(6);
const SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// How long the idle agent is watched for its steady RSS and CPU.
const STEADY_WINDOW: Duration = Duration::from_secs(10);
/// How long the idle servers are watched for their background CPU use.
const BACKGROUND_WINDOW: Duration = Duration::from_secs(10);
/// How long one latency sample may take.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(about = "Benchmarks the sync agent on the test servers; run it through e2e/bench.sh")]
struct Cli {
    /// Runs of every scenario; the report quotes the median.
    #[arg(long, default_value_t = DEFAULT_RUNS)]
    runs: usize,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "initial,ceiling,ceiling-events,latency,deletion"
    )]
    scenarios: Vec<Scenario>,
    /// Sizes of the initial-sync, status and ceiling runs, as
    /// `<workspaces>x<objects per workspace>`.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_SIZES)]
    sizes: Vec<Size>,
    /// Latency samples per path and run.
    #[arg(long, default_value_t = DEFAULT_LATENCY_SAMPLES)]
    latency_samples: usize,
    /// Consumer workspaces the latency samples take turns in.
    #[arg(long, default_value_t = 2)]
    latency_workspaces: usize,
    /// Size of the deletion runs.
    #[arg(long, default_value = DEFAULT_DELETION)]
    deletion: Size,
    /// Requests the minimal client keeps in flight; the default is the
    /// agent's sync worker concurrency.
    #[arg(long, default_value_t = CONCURRENCY)]
    concurrency: usize,
    /// Requests in flight while the benchmark prepares objects (not measured).
    #[arg(long, default_value_t = 16)]
    setup_concurrency: usize,
    /// Where to write the report.
    #[arg(long, default_value_os_t = repo_dir().join("BENCHMARKS.md"))]
    output: PathBuf,
    /// The command line to quote in the report (`e2e/bench.sh` passes its own).
    #[arg(long, default_value = "")]
    command: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
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
}

/// `<workspaces>x<objects per workspace>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Size {
    workspaces: usize,
    objects: usize,
}

impl Size {
    fn total(self) -> usize {
        self.workspaces * self.objects
    }

    /// How long the benchmark waits for all objects of one phase.
    fn timeout(self) -> Duration {
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

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Figures and medians

/// One run's figures by name.
type Figures = BTreeMap<String, f64>;

/// The median of every figure over the runs that have it.
fn median(runs: &[Figures]) -> Figures {
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
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn seconds(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

// ---------------------------------------------------------------------------
// Processes: CPU and memory from /proc

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// User plus system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`) in bytes.
fn memory_bytes(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: f64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024.0)
}

/// Waits until the process has been idle for `SETTLE_QUIET` and returns the
/// moment its last busy step ended.
async fn settle(pid: u32) -> Instant {
    let start = Instant::now();
    let mut last_busy = start;
    let mut previous = cpu_seconds(pid).unwrap_or_default();
    loop {
        tokio::time::sleep(SETTLE_STEP).await;
        let now = Instant::now();
        let cpu = cpu_seconds(pid).unwrap_or_default();
        if cpu - previous > SETTLE_BUSY_SECONDS {
            last_busy = now;
        }
        previous = cpu;
        if now - last_busy >= SETTLE_QUIET {
            return last_busy;
        }
        if now - start >= SETTLE_LIMIT {
            eprintln!("bench: the agent did not become idle within {SETTLE_LIMIT:?}");
            return now;
        }
    }
}

// ---------------------------------------------------------------------------
// What the servers did: CPU of their processes and their request counters

/// The test servers' processes and admin clients.
struct Probe {
    servers: Vec<(String, u32)>,
    kcp: Client,
    service: Client,
    /// Servers whose metrics could not be read, reported once.
    warned: Mutex<BTreeSet<&'static str>>,
    /// Each server's CPU seconds per second while nothing runs.
    background: BTreeMap<String, f64>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("servers", &self.servers)
            .finish()
    }
}

/// CPU seconds per process and request counts per server, verb and resource.
#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    cpu: BTreeMap<String, f64>,
    requests: BTreeMap<String, f64>,
}

impl Probe {
    async fn new(env: &EnvFile, env_file: &Path) -> anyhow::Result<Self> {
        let pids = env_file.with_file_name("pids");
        let servers = std::fs::read_to_string(&pids)
            .with_context(|| format!("reading {}", pids.display()))?
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
            })
            .collect();
        // kcp's /metrics is for the shard admin, not for kcp-admin.
        let kubeconfig = Kubeconfig::read_from(&env.kcp_kubeconfig)?;
        let options = KubeConfigOptions {
            context: Some(KCP_METRICS_CONTEXT.into()),
            ..Default::default()
        };
        let kcp = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .with_context(|| format!("context {KCP_METRICS_CONTEXT} of kcp's admin kubeconfig"))?;
        Ok(Self {
            servers,
            kcp: Client::try_from(kcp)?,
            service: e2e::service::client(env).await?,
            warned: Mutex::default(),
            background: BTreeMap::new(),
        })
    }

    /// Measures the servers' CPU use while nothing else runs on them, to be
    /// subtracted from every phase.
    async fn measure_background(&mut self) {
        let before = self.begin(0).await;
        tokio::time::sleep(BACKGROUND_WINDOW).await;
        let after = self.end(0).await;
        let elapsed = seconds(before.at, after.at);
        self.background = self
            .servers
            .iter()
            .map(|(name, _)| {
                let delta = after.cpu.get(name).copied().unwrap_or_default()
                    - before.cpu.get(name).copied().unwrap_or_default();
                (name.clone(), delta / elapsed)
            })
            .collect();
    }

    /// The start of a phase: the counters are read before the CPU times,
    /// so reading them is not part of the phase. `client` is the process
    /// doing the sync: the agent or this benchmark.
    async fn begin(&self, client: u32) -> Snapshot {
        let requests = self.requests().await;
        let (at, cpu) = self.cpu(client);
        Snapshot { at, cpu, requests }
    }

    /// The end of a phase: the CPU times first, then the counters.
    async fn end(&self, client: u32) -> Snapshot {
        let (at, cpu) = self.cpu(client);
        let requests = self.requests().await;
        Snapshot { at, cpu, requests }
    }

    fn cpu(&self, client: u32) -> (Instant, BTreeMap<String, f64>) {
        let mut cpu: BTreeMap<String, f64> = self
            .servers
            .iter()
            .filter_map(|(name, pid)| Some((name.clone(), cpu_seconds(*pid)?)))
            .collect();
        cpu.insert("client".into(), cpu_seconds(client).unwrap_or_default());
        (Instant::now(), cpu)
    }

    async fn requests(&self) -> BTreeMap<String, f64> {
        let mut requests = BTreeMap::new();
        for (client, server) in [(&self.kcp, "kcp"), (&self.service, "service")] {
            match scrape_requests(client, server).await {
                Ok(counts) => requests.extend(counts),
                Err(error) => {
                    let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
                    if warned.insert(server) {
                        eprintln!("bench: cannot read the {server} server's metrics: {error}");
                    }
                }
            }
        }
        requests
    }
}

/// `apiserver_request_total` summed by verb and resource, keyed
/// `<server> <VERB> <resource>[/<subresource>]`.
async fn scrape_requests(client: &Client, server: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut counts = BTreeMap::new();
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels: HashMap<&str, &str> = labels
            .split("\",")
            .filter_map(|pair| {
                let (key, value) = pair.split_once("=\"")?;
                Some((key, value.trim_end_matches('"')))
            })
            .collect();
        let label = |key: &str| labels.get(key).copied().unwrap_or_default();
        let mut resource = label("resource").to_string();
        if resource.is_empty() {
            resource = "(other)".into();
        }
        if !label("subresource").is_empty() {
            resource = format!("{resource}/{}", label("subresource"));
        }
        *counts
            .entry(format!("{server} {} {resource}", label("verb")))
            .or_default() += value;
    }
    Ok(counts)
}

/// Per-object costs between two snapshots, as `<phase>.cpu_ms.<process>`,
/// `<phase>.req.<request>` and `<phase>.req_total.<server>`; the servers'
/// `background` CPU over the phase is subtracted.
fn costs(
    phase: &str,
    before: &Snapshot,
    after: &Snapshot,
    objects: usize,
    background: &BTreeMap<String, f64>,
) -> Figures {
    let per_object = |delta: f64| delta / objects.max(1) as f64;
    let elapsed = seconds(before.at, after.at);
    let mut figures = Figures::new();
    for (name, cpu) in &after.cpu {
        let idle = background.get(name).copied().unwrap_or_default() * elapsed;
        let delta = (cpu - before.cpu.get(name).copied().unwrap_or_default() - idle).max(0.0);
        figures.insert(format!("{phase}.cpu_ms.{name}"), per_object(delta * 1000.0));
    }
    let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
    for (key, count) in &after.requests {
        let delta = count - before.requests.get(key).copied().unwrap_or_default();
        if delta <= 0.0 {
            continue;
        }
        let server = key.split(' ').next().unwrap_or_default();
        *totals.entry(server).or_default() += delta;
        figures.insert(format!("{phase}.req.{key}"), per_object(delta));
    }
    for server in ["kcp", "service"] {
        // A server whose counters could not be read has no total.
        let prefix = format!("{server} ");
        if !after.requests.keys().any(|k| k.starts_with(&prefix)) {
            continue;
        }
        figures.insert(
            format!("{phase}.req_total.{server}"),
            per_object(totals.get(server).copied().unwrap_or_default()),
        );
    }
    figures
}

/// The sum of `sync_agent_sync_errors_total` on the agent's metrics.
async fn agent_errors(agent: &AgentProcess) -> f64 {
    agent
        .metrics()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("sync_agent_sync_errors_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

/// Waits until the agent runs a sync worker (`sync_agent_sync_workers` ≥ 1).
async fn wait_for_worker(agent: &AgentProcess) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let workers: f64 = agent
            .metrics()
            .await
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("sync_agent_sync_workers"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .fold(0.0, |sum, v| sum + v);
        if workers >= 1.0 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the agent started no sync worker");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Observing the servers: watches record when each object was first seen

/// First-seen times of keys, filled by watches.
#[derive(Debug, Default)]
struct Seen {
    times: Mutex<HashMap<String, Instant>>,
    /// Watches that finished their initial list.
    ready: AtomicUsize,
}

impl Seen {
    fn record(&self, key: String, at: Instant) {
        self.lock().entry(key).or_insert(at);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &str) -> Option<Instant> {
        self.lock().get(key).copied()
    }

    /// How many keys match, and the first and last time one was seen.
    fn span(&self, matches: impl Fn(&str) -> bool) -> (usize, Option<Instant>, Option<Instant>) {
        let times = self.lock();
        let matching = times.iter().filter(|(k, _)| matches(k)).map(|(_, t)| *t);
        matching.fold((0, None, None), |(count, first, last), t| {
            (
                count + 1,
                Some(first.map_or(t, |f: Instant| f.min(t))),
                Some(last.map_or(t, |l: Instant| l.max(t))),
            )
        })
    }

    /// Waits until `expected` keys match; returns the first and last time.
    async fn wait_for_count(
        &self,
        what: &str,
        expected: usize,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(Instant, Instant)> {
        let start = Instant::now();
        let mut reported = start;
        loop {
            let (count, first, last) = self.span(&matches);
            if count >= expected
                && let (Some(first), Some(last)) = (first, last)
            {
                return Ok((first, last));
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}: {count} of {expected}");
            }
            if reported.elapsed() > Duration::from_secs(15) {
                eprintln!("bench:   {what}: {count} of {expected}");
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `key` was seen and returns when.
    async fn wait_for(&self, key: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let start = Instant::now();
        loop {
            if let Some(at) = self.get(key) {
                return Ok(at);
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {key}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait_until_ready(&self, watches: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.ready.load(Ordering::SeqCst) < watches {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the benchmark's watches did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// A watch task, stopped when dropped.
#[derive(Debug)]
struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches `api` and records `keys(object, deleted)` in `seen`.
fn watch(
    api: Api<DynamicObject>,
    config: watcher::Config,
    seen: Arc<Seen>,
    keys: impl Fn(&DynamicObject, bool) -> Vec<String> + Send + 'static,
) -> Watch {
    Watch(tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut listed = false;
        while let Some(event) = events.next().await {
            let now = Instant::now();
            match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    keys(&object, false)
                        .into_iter()
                        .for_each(|k| seen.record(k, now));
                }
                Ok(watcher::Event::Delete(object)) => {
                    keys(&object, true)
                        .into_iter()
                        .for_each(|k| seen.record(k, now));
                }
                Ok(watcher::Event::InitDone) if !listed => {
                    listed = true;
                    seen.ready.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(error) => eprintln!("bench: a watch failed and restarts: {error}"),
            }
        }
    }))
}

fn is_gone(key: &str) -> bool {
    key.starts_with("gone:")
}

// ---------------------------------------------------------------------------
// One run's servers-side set-up: provider, agent, consumers

/// A consumer workspace bound to the export.
struct Consumer {
    workspace: TestWorkspace,
    client: Client,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("workspace", &self.workspace.path)
            .finish()
    }
}

/// A provider with the published `Widget` kind and bound consumers, built
/// by the e2e library's `Scene`; the agent runs only when a scenario starts it.
#[derive(Debug)]
struct Stage {
    provider: Provider,
    resource: ApiResource,
    consumers: Vec<Consumer>,
    agent: Option<AgentProcess>,
    settings: AgentSettings,
    setup_concurrency: usize,
}

impl Stage {
    async fn new(
        prefix: &str,
        workspaces: usize,
        setup_concurrency: usize,
    ) -> anyhow::Result<Self> {
        let scene = Scene::new(prefix, json!({})).await;
        let consumers = futures::stream::iter(0..workspaces)
            .map(|_| scene.consumer("bench"))
            .buffer_unordered(setup_concurrency.clamp(1, 8))
            .map(|(workspace, client)| Consumer { workspace, client })
            .collect::<Vec<_>>()
            .await;
        let Scene {
            provider,
            agent,
            resource,
        } = scene;
        // The scene's agent logs at the tests' level; the benchmark's agents
        // all run with the same settings, started by the scenarios.
        agent.stop().await?;
        let mut settings = provider.agent_settings();
        settings.log_filter = AGENT_LOG_FILTER.into();
        Ok(Self {
            provider,
            resource,
            consumers,
            agent: None,
            settings,
            setup_concurrency,
        })
    }

    /// Starts the agent; returns when it was spawned (it is ready on return).
    async fn start_agent(&mut self) -> anyhow::Result<Instant> {
        self.stop_agent().await?;
        let spawned = Instant::now();
        self.agent = Some(AgentProcess::start(&self.provider.env, &self.settings).await?);
        Ok(spawned)
    }

    async fn stop_agent(&mut self) -> anyhow::Result<()> {
        if let Some(agent) = self.agent.take() {
            agent.stop().await?;
        }
        Ok(())
    }

    fn agent(&self) -> anyhow::Result<&AgentProcess> {
        self.agent.as_ref().context("the agent is not running")
    }

    fn kcp_widgets(&self, consumer: &Consumer) -> Api<DynamicObject> {
        Api::namespaced_with(consumer.client.clone(), CONSUMER_NAMESPACE, &self.resource)
    }

    fn copy_selector(&self) -> String {
        format!("{AGENT_LABEL}={}", self.provider.agent_name)
    }

    /// Records `<cluster>/<name>` of every copy (`gone:…` once deleted).
    fn watch_copies(&self) -> (Arc<Seen>, Watch) {
        let seen = Arc::new(Seen::default());
        let api = Api::all_with(self.provider.service.clone(), &self.resource);
        let config = watcher::Config::default().labels(&self.copy_selector());
        let w = watch(api, config, seen.clone(), |object, deleted| {
            RemoteKey::from_local(object.labels(), object.annotations())
                .map(|key| {
                    let gone = if deleted { "gone:" } else { "" };
                    format!("{gone}{}/{}", key.cluster, key.name)
                })
                .into_iter()
                .collect()
        });
        (seen, w)
    }

    /// Records `<cluster>/<name>` of every kcp object, `<cluster>/<name>=<phase>`
    /// for each status phase it shows, and `gone:<cluster>/<name>` once deleted.
    fn watch_kcp(&self) -> (Arc<Seen>, Vec<Watch>) {
        let seen = Arc::new(Seen::default());
        let watches = self
            .consumers
            .iter()
            .map(|consumer| {
                let cluster = consumer.workspace.cluster.clone();
                watch(
                    self.kcp_widgets(consumer),
                    watcher::Config::default(),
                    seen.clone(),
                    move |object, deleted| {
                        let base = format!("{cluster}/{}", object.name_any());
                        if deleted {
                            return vec![format!("gone:{base}")];
                        }
                        let mut keys = vec![base.clone()];
                        if let Some(phase) = object.data["status"]["phase"].as_str() {
                            keys.push(format!("{base}={phase}"));
                        }
                        keys
                    },
                )
            })
            .collect();
        (seen, watches)
    }

    /// Creates `per_workspace` widgets in every consumer (not measured).
    async fn create_objects(&self, prefix: &str, per_workspace: usize) -> anyhow::Result<()> {
        let jobs = self
            .consumers
            .iter()
            .flat_map(|c| (0..per_workspace).map(move |i| (c, format!("{prefix}-{i:05}"))));
        futures::stream::iter(jobs)
            .map(|(consumer, name)| async move {
                create_widget(&self.kcp_widgets(consumer), &self.resource, &name, true).await
            })
            .buffer_unordered(self.setup_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Writes `status.phase` on every copy, as a provider's operator would
    /// (not measured); returns how many.
    async fn set_status_on_copies(&self, phase: &str) -> anyhow::Result<usize> {
        let service = &self.provider.service;
        let copies = Api::<DynamicObject>::all_with(service.clone(), &self.resource)
            .list(&ListParams::default().labels(&self.copy_selector()))
            .await?
            .items;
        let count = copies.len();
        futures::stream::iter(copies)
            .map(|copy| async move {
                let namespace = copy.namespace().unwrap_or_default();
                Api::<DynamicObject>::namespaced_with(service.clone(), &namespace, &self.resource)
                    .patch_status(
                        &copy.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"phase": phase}})),
                    )
                    .await
                    .map(drop)
            })
            .buffer_unordered(self.setup_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(count)
    }

    /// Deletes every widget in every consumer, one collection delete per workspace.
    async fn delete_all(&self) -> anyhow::Result<()> {
        futures::stream::iter(&self.consumers)
            .map(|consumer| async move {
                self.kcp_widgets(consumer)
                    .delete_collection(&DeleteParams::default(), &ListParams::default())
                    .await
                    .map(drop)
            })
            .buffer_unordered(self.setup_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The virtual workspace URL of the export (one shard here).
    async fn endpoint(&self) -> anyhow::Result<String> {
        let slice = Api::<APIExportEndpointSlice>::all(self.provider.kcp_client.clone())
            .get(&self.provider.export)
            .await?;
        slice
            .status
            .and_then(|s| s.endpoints.first().map(|e| e.url.clone()))
            .context("the APIExportEndpointSlice lists no endpoint")
    }

    /// Removes everything (not measured): with the agent stopped, releases
    /// its finalizers directly (much faster than deleting every object
    /// through the agent), deletes the workspaces, the copies' namespaces and
    /// the provider (whose CRD takes the copies with it), and waits until the
    /// workspaces are gone, so their deletion does not load the next run.
    async fn cleanup(mut self) -> anyhow::Result<()> {
        self.stop_agent().await?;
        for consumer in &self.consumers {
            let api = self.kcp_widgets(consumer);
            let objects = api.list(&ListParams::default()).await?.items;
            futures::stream::iter(objects.iter().filter_map(|object| {
                Some((
                    object.name_any(),
                    finalizer_patch(object, FINALIZER, false)?,
                ))
            }))
            .map(|(name, patch)| {
                let api = &api;
                async move {
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(drop)
                }
            })
            .buffer_unordered(self.setup_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        }
        let namespaces: Api<Namespace> = Api::all(self.provider.service.clone());
        for consumer in &self.consumers {
            let _ = namespaces
                .delete(&consumer.workspace.cluster, &DeleteParams::default())
                .await;
            consumer.workspace.delete(&self.provider.kcp).await?;
        }
        self.provider.cleanup().await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let workspaces = self
            .consumers
            .iter()
            .map(|c| &c.workspace)
            .chain([&self.provider.workspace]);
        for workspace in workspaces {
            let api: Api<Workspace> = Api::all(self.provider.kcp.client(&workspace.parent)?);
            while api.get_opt(&workspace.name).await?.is_some() {
                if Instant::now() > deadline {
                    bail!("workspace {} is still being deleted", workspace.path);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }
}

/// Cleans up after a run; a failure is reported, not fatal.
async fn cleanup(stage: Stage) {
    if let Err(error) = stage.cleanup().await {
        eprintln!("bench: cleaning up failed: {error:#}");
    }
}

/// Creates a widget; `retry` retries while a fresh binding settles.
async fn create_widget(
    api: &Api<DynamicObject>,
    resource: &ApiResource,
    name: &str,
    retry: bool,
) -> anyhow::Result<()> {
    let mut widget = DynamicObject::new(name, resource).within(CONSUMER_NAMESPACE);
    widget.data = json!({"spec": {"color": "blue"}});
    let mut attempt = 0;
    loop {
        match api.create(&PostParams::default(), &widget).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if retry && status.code == 409 => return Ok(()),
            Err(_) if retry && attempt < 30 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).with_context(|| format!("creating widget {name}")),
        }
    }
}

/// The copy's namespace and name under the agent's default naming.
fn local_name(object: &Value, cluster: &str) -> anyhow::Result<(String, String)> {
    let context = NamingContext {
        object,
        cluster_name: cluster,
        cluster_path: "",
    };
    Ok((
        naming::render(DEFAULT_NAMESPACE, &context)?,
        naming::render(DEFAULT_NAME, &context)?,
    ))
}

// ---------------------------------------------------------------------------
// Scenarios

/// The agent's initial sync of `size`, then its status sync, with memory and CPU.
async fn initial_run(cli: &Cli, probe: &Probe, size: Size) -> anyhow::Result<Figures> {
    let total = size.total();
    let mut stage = Stage::new("bench-init", size.workspaces, cli.setup_concurrency).await?;
    let mut f = Figures::new();

    // The agent with every workspace bound and no objects, once its sync
    // worker runs and it is idle.
    stage.start_agent().await?;
    let pid = stage.agent()?.pid();
    wait_for_worker(stage.agent()?).await?;
    settle(pid).await;
    f.insert(
        "rss_empty".into(),
        memory_bytes(pid, "VmRSS").unwrap_or(f64::NAN),
    );
    stage.stop_agent().await?;

    eprintln!("bench:   creating {total} widgets with the agent stopped");
    stage.create_objects("w", size.objects).await?;
    let (copies, copies_watch) = stage.watch_copies();
    copies.wait_until_ready(1).await?;

    // Sync down: the agent starts with every object waiting.
    let before = probe.begin(0).await;
    let spawned = stage.start_agent().await?;
    let pid = stage.agent()?.pid();
    let (first, last) = copies
        .wait_for_count("copies", total, size.timeout(), |k| !is_gone(k))
        .await?;
    let cpu_at_last = cpu_seconds(pid).unwrap_or_default();
    let idle = settle(pid).await;
    let after = probe.end(pid).await;
    f.insert("sync.first_s".into(), seconds(spawned, first));
    f.insert("sync.total_s".into(), seconds(spawned, last));
    f.insert("sync.window_s".into(), seconds(first, last));
    f.insert("sync.rate".into(), window_rate(total, first, last));
    f.insert("sync.tail_s".into(), seconds(last, idle));
    f.insert("sync.cpu_s_at_last".into(), cpu_at_last);
    f.insert("sync.errors".into(), agent_errors(stage.agent()?).await);
    f.extend(costs("sync", &before, &after, total, &probe.background));

    // Steady state with every object synced.
    let cpu_before = cpu_seconds(pid).unwrap_or_default();
    tokio::time::sleep(STEADY_WINDOW).await;
    let cpu_after = cpu_seconds(pid).unwrap_or_default();
    f.insert(
        "idle_cpu_percent".into(),
        100.0 * (cpu_after - cpu_before) / STEADY_WINDOW.as_secs_f64(),
    );
    f.insert("cpu_s_to_idle".into(), cpu_before);
    f.insert(
        "rss_steady".into(),
        memory_bytes(pid, "VmRSS").unwrap_or(f64::NAN),
    );
    f.insert(
        "rss_peak".into(),
        memory_bytes(pid, "VmHWM").unwrap_or(f64::NAN),
    );
    stage.stop_agent().await?;

    // Status back: every copy got a status while the agent was stopped.
    let written = stage.set_status_on_copies(READY).await?;
    if written != total {
        bail!("{written} copies carry the agent's label, expected {total}");
    }
    let (kcp, kcp_watches) = stage.watch_kcp();
    kcp.wait_until_ready(stage.consumers.len()).await?;
    let before = probe.begin(0).await;
    let spawned = stage.start_agent().await?;
    let pid = stage.agent()?.pid();
    let suffix = format!("={READY}");
    let (first, last) = kcp
        .wait_for_count("statuses in kcp", total, size.timeout(), |k| {
            k.ends_with(&suffix)
        })
        .await?;
    settle(pid).await;
    let after = probe.end(pid).await;
    f.insert("status.first_s".into(), seconds(spawned, first));
    f.insert("status.total_s".into(), seconds(spawned, last));
    f.insert("status.rate".into(), window_rate(total, first, last));
    f.insert("status.errors".into(), agent_errors(stage.agent()?).await);
    f.extend(costs("status", &before, &after, total, &probe.background));

    drop((copies_watch, kcp_watches));
    cleanup(stage).await;
    Ok(f)
}

/// Objects per second between the first and the last object seen; the
/// first object marks the start, so `total - 1` objects fall in the window.
fn window_rate(total: usize, first: Instant, last: Instant) -> f64 {
    let window = seconds(first, last);
    if total < 2 || window <= 0.0 {
        return f64::NAN;
    }
    (total - 1) as f64 / window
}

/// A minimal client doing the agent's writes for `size`: the finalizer on
/// each kcp object and the copy on the service cluster, then the status
/// back, through the export's virtual workspace like the agent. With
/// `with_events` it also records the agent's events on the kcp objects, and
/// a phase ends once they are written.
async fn ceiling_run(
    cli: &Cli,
    probe: &Probe,
    size: Size,
    with_events: bool,
) -> anyhow::Result<Figures> {
    let total = size.total();
    let prefix = if with_events {
        "bench-ceilev"
    } else {
        "bench-ceil"
    };
    let stage = Stage::new(prefix, size.workspaces, cli.setup_concurrency).await?;
    eprintln!("bench:   creating {total} widgets");
    stage.create_objects("w", size.objects).await?;
    let endpoint = stage.endpoint().await?;
    let client = Ceiling::new(&stage, &endpoint, cli.concurrency)?;
    let me = std::process::id();
    let mut f = Figures::new();

    let (copies, copies_watch) = stage.watch_copies();
    copies.wait_until_ready(1).await?;
    let before = probe.begin(me).await;
    let start = Instant::now();
    let events = with_events.then(Events::start);
    client.sync_down(events.as_ref().map(|e| &e.sink)).await?;
    let (first, last) = copies
        .wait_for_count("copies", total, size.timeout(), |k| !is_gone(k))
        .await?;
    if let Some(events) = events {
        events.finish().await;
    }
    let after = probe.end(me).await;
    f.insert("sync.total_s".into(), seconds(start, last));
    f.insert("sync.window_s".into(), seconds(first, last));
    f.insert("sync.rate".into(), window_rate(total, first, last));
    f.extend(costs("sync", &before, &after, total, &probe.background));

    stage.set_status_on_copies(READY).await?;
    let (kcp, kcp_watches) = stage.watch_kcp();
    kcp.wait_until_ready(stage.consumers.len()).await?;
    let before = probe.begin(me).await;
    let start = Instant::now();
    let events = with_events.then(Events::start);
    client.status_up(events.as_ref().map(|e| &e.sink)).await?;
    let suffix = format!("={READY}");
    let (first, last) = kcp
        .wait_for_count("statuses in kcp", total, size.timeout(), |k| {
            k.ends_with(&suffix)
        })
        .await?;
    if let Some(events) = events {
        events.finish().await;
    }
    let after = probe.end(me).await;
    f.insert("status.total_s".into(), seconds(start, last));
    f.insert("status.rate".into(), window_rate(total, first, last));
    f.extend(costs("status", &before, &after, total, &probe.background));

    drop((copies_watch, kcp_watches));
    cleanup(stage).await;
    Ok(f)
}

/// The agent's event sink, for the ceiling, and the task writing its events.
struct Events {
    sink: EventSink,
    sender: tokio::task::JoinHandle<()>,
}

impl Events {
    fn start() -> Self {
        let dropped = prometheus::IntCounter::new("events_dropped", "events dropped")
            .expect("a valid metric name");
        let (sink, sender) = EventSink::new(dropped);
        Self {
            sink,
            sender: tokio::spawn(sender),
        }
    }

    /// Waits until every queued event is written.
    async fn finish(self) {
        drop(self.sink);
        if let Err(error) = self.sender.await {
            eprintln!("bench: the event sender failed: {error}");
        }
    }
}

/// The minimal client: the writes only, with reads limited to one list.
struct Ceiling<'a> {
    stage: &'a Stage,
    wildcard: Api<DynamicObject>,
    clients: HashMap<String, Client>,
    concurrency: usize,
}

impl std::fmt::Debug for Ceiling<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ceiling")
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl<'a> Ceiling<'a> {
    fn new(stage: &'a Stage, endpoint: &str, concurrency: usize) -> anyhow::Result<Self> {
        let kcp = &stage.provider.kcp;
        let at = |path: &str| -> anyhow::Result<Client> {
            Ok(Client::try_from(
                kcp.config_at(&format!("{endpoint}/clusters/{path}"))?,
            )?)
        };
        let clients = stage
            .consumers
            .iter()
            .map(|c| Ok((c.workspace.cluster.clone(), at(&c.workspace.cluster)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            stage,
            wildcard: Api::all_with(at("*")?, &stage.resource),
            clients,
            concurrency: concurrency.max(1),
        })
    }

    fn client(&self, key: &RemoteKey) -> anyhow::Result<&Client> {
        self.clients
            .get(&key.cluster)
            .with_context(|| format!("no client for workspace {}", key.cluster))
    }

    fn remote(&self, key: &RemoteKey) -> anyhow::Result<Api<DynamicObject>> {
        Ok(Api::namespaced_with(
            self.client(key)?.clone(),
            &key.namespace,
            &self.stage.resource,
        ))
    }

    /// Lists every object through the virtual workspace, creates one
    /// namespace per workspace, then per object sets the finalizer and
    /// creates the copy, queueing the agent's `ObjectAccepted` and
    /// `ObjectPlaced` events on `events`.
    async fn sync_down(&self, events: Option<&EventSink>) -> anyhow::Result<()> {
        let objects = self.wildcard.list(&ListParams::default()).await?.items;
        let service = &self.stage.provider.service;
        let namespaces: Api<Namespace> = Api::all(service.clone());
        futures::stream::iter(self.clients.keys())
            .map(|cluster| {
                let namespaces = namespaces.clone();
                async move {
                    let namespace: Namespace =
                        serde_json::from_value(json!({"metadata": {"name": cluster}}))?;
                    match namespaces.create(&PostParams::default(), &namespace).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                        Err(error) => Err(anyhow::Error::from(error)),
                    }
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let resource = &self.stage.resource;
        let agent = self.stage.provider.agent_name.as_str();
        futures::stream::iter(objects)
            .map(|object| async move {
                let key = RemoteKey {
                    cluster: object
                        .annotations()
                        .get(CLUSTER_ANNOTATION)
                        .cloned()
                        .context("an object without its workspace annotation")?,
                    namespace: object.namespace().unwrap_or_default(),
                    name: object.name_any(),
                };
                let object = match finalizer_patch(&object, FINALIZER, true) {
                    None => object,
                    Some(patch) => {
                        let patched = self
                            .remote(&key)?
                            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await?;
                        if let Some(events) = events {
                            events.normal(
                                self.client(&key)?,
                                &patched,
                                "ObjectAccepted",
                                "accepted",
                            );
                        }
                        patched
                    }
                };
                let value = serde_json::to_value(&object)?;
                let (namespace, name) = local_name(&value, &key.cluster)?;
                let owner = Owner {
                    key: &key,
                    agent,
                    workspace_path: None,
                };
                let copy = new_local(
                    &value,
                    &resource.api_version,
                    &resource.kind,
                    &name,
                    Some(&namespace),
                    owner,
                );
                Api::<DynamicObject>::namespaced_with(service.clone(), &namespace, resource)
                    .create(&PostParams::default(), &serde_json::from_value(copy)?)
                    .await?;
                if let Some(events) = events {
                    events.normal(self.client(&key)?, &object, "ObjectPlaced", "placed");
                }
                anyhow::Ok(())
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Lists the copies and writes each one's status on its kcp object,
    /// queueing the agent's `ObjectStatusSynced` event on `events`.
    async fn status_up(&self, events: Option<&EventSink>) -> anyhow::Result<()> {
        let copies = Api::<DynamicObject>::all_with(
            self.stage.provider.service.clone(),
            &self.stage.resource,
        )
        .list(&ListParams::default().labels(&self.stage.copy_selector()))
        .await?
        .items;
        futures::stream::iter(copies)
            .map(|copy| async move {
                let key = RemoteKey::from_local(copy.labels(), copy.annotations())
                    .context("a copy without its identity")?;
                let patched = self
                    .remote(&key)?
                    .patch_status(
                        &key.name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": copy.data["status"]})),
                    )
                    .await?;
                if let Some(events) = events {
                    events.normal(self.client(&key)?, &patched, "ObjectStatusSynced", "synced");
                }
                anyhow::Ok(())
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

/// Sequential samples: create in kcp → copy seen on the service cluster,
/// then status written on the copy → status seen in kcp.
async fn latency_run(cli: &Cli, samples: usize) -> anyhow::Result<Figures> {
    let mut stage = Stage::new("bench-lat", cli.latency_workspaces, cli.setup_concurrency).await?;
    let (copies, copies_watch) = stage.watch_copies();
    let (kcp, kcp_watches) = stage.watch_kcp();
    copies.wait_until_ready(1).await?;
    kcp.wait_until_ready(stage.consumers.len()).await?;
    stage.start_agent().await?;
    let service = stage.provider.service.clone();

    // One warm-up round trip per workspace, not counted.
    for consumer in &stage.consumers {
        let api = stage.kcp_widgets(consumer);
        create_widget(&api, &stage.resource, "warm-up", true).await?;
        let key = format!("{}/warm-up", consumer.workspace.cluster);
        copies.wait_for(&key, SAMPLE_TIMEOUT).await?;
    }

    let mut objects = Vec::with_capacity(samples);
    let mut create_ms = Vec::with_capacity(samples);
    for i in 0..samples {
        let consumer = &stage.consumers[i % stage.consumers.len()];
        let name = format!("lat-{i:05}");
        let api = stage.kcp_widgets(consumer);
        let sent = Instant::now();
        create_widget(&api, &stage.resource, &name, false).await?;
        let key = format!("{}/{name}", consumer.workspace.cluster);
        let seen = copies.wait_for(&key, SAMPLE_TIMEOUT).await?;
        create_ms.push(seconds(sent, seen) * 1000.0);
        objects.push((consumer.workspace.cluster.clone(), name));
    }

    let mut status_ms = Vec::with_capacity(samples);
    for (i, (cluster, name)) in objects.iter().enumerate() {
        let object = json!({"metadata": {"name": name, "namespace": CONSUMER_NAMESPACE}});
        let (namespace, local) = local_name(&object, cluster)?;
        let phase = format!("p{i}");
        let copies_api: Api<DynamicObject> =
            Api::namespaced_with(service.clone(), &namespace, &stage.resource);
        let sent = Instant::now();
        copies_api
            .patch_status(
                &local,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": phase}})),
            )
            .await?;
        let seen = kcp
            .wait_for(&format!("{cluster}/{name}={phase}"), SAMPLE_TIMEOUT)
            .await?;
        status_ms.push(seconds(sent, seen) * 1000.0);
    }

    let mut f = Figures::new();
    for (path, mut values) in [("create", create_ms), ("status", status_ms)] {
        values.sort_by(f64::total_cmp);
        f.insert(format!("{path}.p50_ms"), percentile(&values, 50.0));
        f.insert(format!("{path}.p99_ms"), percentile(&values, 99.0));
        f.insert(format!("{path}.samples"), values.len() as f64);
    }
    f.insert("errors".into(), agent_errors(stage.agent()?).await);
    drop((copies_watch, kcp_watches));
    cleanup(stage).await;
    Ok(f)
}

/// Deleting every synced object in kcp → every object gone from kcp (the
/// agent deleted the copy, saw it gone and released its finalizer).
async fn deletion_run(cli: &Cli, probe: &Probe, size: Size) -> anyhow::Result<Figures> {
    let total = size.total();
    let mut stage = Stage::new("bench-del", size.workspaces, cli.setup_concurrency).await?;
    let (copies, copies_watch) = stage.watch_copies();
    let (kcp, kcp_watches) = stage.watch_kcp();
    copies.wait_until_ready(1).await?;
    kcp.wait_until_ready(stage.consumers.len()).await?;
    stage.start_agent().await?;
    let pid = stage.agent()?.pid();
    eprintln!("bench:   creating and syncing {total} widgets");
    stage.create_objects("d", size.objects).await?;
    copies
        .wait_for_count("copies", total, size.timeout(), |k| !is_gone(k))
        .await?;
    settle(pid).await;

    let before = probe.begin(pid).await;
    let start = Instant::now();
    stage.delete_all().await?;
    let (_, last) = kcp
        .wait_for_count("objects gone from kcp", total, size.timeout(), is_gone)
        .await?;
    let after = probe.end(pid).await;
    let left = Api::<DynamicObject>::all_with(stage.provider.service.clone(), &stage.resource)
        .list(&ListParams::default().labels(&stage.copy_selector()))
        .await?
        .items
        .len();
    let mut f = Figures::new();
    f.insert("delete.total_s".into(), seconds(start, last));
    f.insert(
        "delete.rate".into(),
        total as f64 / seconds(start, last).max(f64::EPSILON),
    );
    f.insert("delete.copies_left".into(), left as f64);
    f.insert("delete.errors".into(), agent_errors(stage.agent()?).await);
    f.extend(costs("delete", &before, &after, total, &probe.background));
    drop((copies_watch, kcp_watches));
    cleanup(stage).await;
    Ok(f)
}

// ---------------------------------------------------------------------------
// The report

#[derive(Debug, Default)]
struct Results {
    /// Per size (in `--sizes` order), the agent's runs.
    initial: Vec<Vec<Figures>>,
    /// Per size, the minimal client's runs.
    ceiling: Vec<Vec<Figures>>,
    /// Per size, the minimal client's runs with the agent's events.
    ceiling_events: Vec<Vec<Figures>>,
    latency: Vec<Figures>,
    deletion: Vec<Figures>,
}

fn value(f: &Figures, key: &str) -> Option<f64> {
    f.get(key).copied().filter(|v| v.is_finite())
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    // `+ 0.0` turns -0.0 into 0.0.
    v.map_or_else(|| "–".into(), |v| format!("{:.decimals$}", v + 0.0))
}

fn mib(v: Option<f64>) -> String {
    fmt(v.map(|b| b / (1024.0 * 1024.0)), 1)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| "---|").collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push('\n');
}

/// Facts about the machine and the versions, as `(what, value)`.
fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{:.1} GiB", kib / (1024.0 * 1024.0)),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| format!("Linux {}", s.trim()));
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .current_dir(repo_dir())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let commit = run("git", &["rev-parse", "--short", "HEAD"]).map_or_else(
        || "unknown".into(),
        |c| {
            if dirty {
                format!("{c} with local changes")
            } else {
                c
            }
        },
    );
    vec![
        ("CPU".into(), model),
        ("cores".into(), cores.to_string()),
        ("memory".into(), memory),
        ("kernel".into(), kernel),
        (
            "kcp".into(),
            go_module_version("e2e/env/kcp/go.mod", "github.com/kcp-dev/kcp"),
        ),
        (
            "kube-apiserver".into(),
            go_module_version("e2e/env/kube-apiserver/go.mod", "k8s.io/kubernetes"),
        ),
        (
            "etcd".into(),
            go_module_version("e2e/env/kube-apiserver/go.mod", "go.etcd.io/etcd/server/v3"),
        ),
        (
            "rustc".into(),
            run("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
        ),
        ("commit".into(), commit),
        (
            "date".into(),
            k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
        ),
    ]
}

/// The version a go.mod requires of a module.
fn go_module_version(file: &str, module: &str) -> String {
    std::fs::read_to_string(repo_dir().join(file))
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(module)).then(|| words.next().map(str::to_string))?
        })
        .map_or_else(|| "unknown".into(), |v| format!("{v} (`{file}`)"))
}

fn is_full_scale(cli: &Cli) -> bool {
    let default_sizes: Vec<Size> = DEFAULT_SIZES
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    cli.runs >= DEFAULT_RUNS
        && cli.sizes == default_sizes
        && cli.latency_samples >= DEFAULT_LATENCY_SAMPLES
        && cli.deletion.total() >= 1000
        && cli.scenarios.len() == Scenario::value_variants().len()
}

fn report(cli: &Cli, results: &Results, background: &BTreeMap<String, f64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    if !is_full_scale(cli) {
        let _ = writeln!(
            out,
            "> **Partial run.** Fewer scenarios, sizes, samples or runs than the \
             benchmark's defaults (issue 9), as the command below says; the figures \
             stand only for what it ran. `e2e/bench.sh` without arguments runs them all.\n"
        );
    }
    let command = if cli.command.is_empty() {
        "target/release/bench (without e2e/bench.sh)".to_string()
    } else {
        cli.command.clone()
    };
    let _ = writeln!(out, "Command: `{command}`\n");
    table(
        &mut out,
        &["", ""],
        &machine()
            .into_iter()
            .map(|(k, v)| vec![k, v])
            .collect::<Vec<_>>(),
    );
    let agent_binary = std::env::var(AGENT_BINARY_VARIABLE).map_or_else(
        |_| "target/debug/sync-agent".to_string(),
        |path| {
            Path::new(&path)
                .strip_prefix(repo_dir())
                .map_or(path.clone(), |p| p.display().to_string())
        },
    );
    let _ = writeln!(
        out,
        "Every figure is the median of {} run(s); every run sets up its own provider, \
         agent and consumer workspaces on the same servers (one `testenv` start for the \
         whole benchmark) and removes them afterwards. The agent is `{agent_binary}` with \
         `e2e::agent::AgentProcess`'s flags and `RUST_LOG={AGENT_LOG_FILTER}` in every \
         scenario; one PublishedResource (`Widget`, default naming), objects \
         `{{\"spec\": {{\"color\": \"blue\"}}}}`. Sizes are W workspaces × N objects per \
         workspace.\n",
        cli.runs
    );

    let initial: Vec<Figures> = results.initial.iter().map(|r| median(r)).collect();
    let ceiling: Vec<Figures> = results.ceiling.iter().map(|r| median(r)).collect();
    let ceiling_events: Vec<Figures> = results.ceiling_events.iter().map(|r| median(r)).collect();
    let at = |list: &[Figures], i: usize| list.get(i).cloned().unwrap_or_default();

    let _ = writeln!(out, "## Initial sync\n");
    let _ = writeln!(
        out,
        "The W×N objects are created in kcp while the agent is stopped; then the agent \
         starts. *Start → all copies* runs from spawning the agent to the last copy seen \
         by a watch on the service cluster. Throughput counts the objects between the \
         first and the last copy seen, for the agent and for the ceiling alike, so the \
         agent's start-up (in *start → first copy*) is not part of the ratio. The ceiling \
         is a minimal kube-rs client that lists the objects through the export's virtual \
         workspace once and then, {} objects at a time (the agent's sync worker \
         concurrency), adds the finalizer to the kcp object through the virtual workspace \
         and creates the copy (same content, built by the agent's own `new_local`).\n",
        cli.concurrency
    );
    let rows: Vec<Vec<String>> = cli
        .sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let (a, c) = (at(&initial, i), at(&ceiling, i));
            vec![
                size.to_string(),
                size.total().to_string(),
                fmt(value(&a, "sync.first_s"), 2),
                fmt(value(&a, "sync.total_s"), 2),
                fmt(value(&a, "sync.rate"), 1),
                fmt(value(&c, "sync.rate"), 1),
                ratio(value(&a, "sync.rate"), value(&c, "sync.rate")),
                fmt(value(&a, "sync.tail_s"), 1),
                fmt(value(&a, "sync.errors"), 0),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "W×N",
            "objects",
            "start → first copy s",
            "start → all copies s",
            "agent objects/s",
            "ceiling objects/s",
            "ratio",
            "busy after last copy s",
            "sync errors",
        ],
        &rows,
    );

    let _ = writeln!(out, "## Status back to kcp\n");
    let _ = writeln!(
        out,
        "After the initial sync the agent is stopped, every copy gets `status.phase` on \
         the service cluster, and the agent starts again; measured until a watch on each \
         consumer workspace has seen every status. The ceiling lists the copies once and \
         patches each status onto its kcp object through the virtual workspace.\n"
    );
    let rows: Vec<Vec<String>> = cli
        .sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let (a, c) = (at(&initial, i), at(&ceiling, i));
            vec![
                size.to_string(),
                size.total().to_string(),
                fmt(value(&a, "status.first_s"), 2),
                fmt(value(&a, "status.total_s"), 2),
                fmt(value(&a, "status.rate"), 1),
                fmt(value(&c, "status.rate"), 1),
                ratio(value(&a, "status.rate"), value(&c, "status.rate")),
                fmt(value(&a, "status.errors"), 0),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "W×N",
            "objects",
            "start → first status s",
            "start → all statuses s",
            "agent objects/s",
            "ceiling objects/s",
            "ratio",
            "sync errors",
        ],
        &rows,
    );

    write_bound(&mut out, cli, &initial, &ceiling, &ceiling_events);

    let _ = writeln!(out, "## Agent memory and CPU\n");
    let _ = writeln!(
        out,
        "From the initial-sync runs. *No objects*: RSS of the agent with the W workspaces \
         bound and nothing to sync, once its sync worker runs and it is idle. *Peak*: VmHWM of the agent that did the \
         initial sync. *Steady*: its VmRSS once it has been idle for {}s plus {}s. \
         Bytes/object = (steady − no objects) / objects. CPU is user + system time from \
         `/proc/<pid>/stat`, from spawn until idle.\n",
        SETTLE_QUIET.as_secs(),
        STEADY_WINDOW.as_secs()
    );
    let rows: Vec<Vec<String>> = cli
        .sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let a = at(&initial, i);
            let per_object = match (value(&a, "rss_steady"), value(&a, "rss_empty")) {
                (Some(steady), Some(empty)) => Some((steady - empty) / size.total() as f64),
                _ => None,
            };
            let cpu = value(&a, "cpu_s_to_idle");
            vec![
                size.to_string(),
                size.total().to_string(),
                mib(value(&a, "rss_empty")),
                mib(value(&a, "rss_peak")),
                mib(value(&a, "rss_steady")),
                fmt(per_object, 0),
                fmt(cpu, 2),
                fmt(cpu.map(|c| 1000.0 * c / size.total() as f64), 2),
                fmt(value(&a, "idle_cpu_percent"), 2),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "W×N",
            "objects",
            "RSS, no objects MiB",
            "peak RSS MiB",
            "steady RSS MiB",
            "bytes/object",
            "CPU s",
            "CPU ms/object",
            "idle CPU %",
        ],
        &rows,
    );

    if !results.latency.is_empty() {
        let l = median(&results.latency);
        let _ = writeln!(out, "## Latency\n");
        let _ = writeln!(
            out,
            "One object at a time, taking turns over {} workspaces, with the agent running \
             and idle (one warm-up object per workspace first). *Create*: from sending the \
             create to kcp to a watch on the service cluster seeing the copy. *Status*: from \
             sending the status patch to the copy to a watch on the consumer workspace \
             seeing it. p50/p99 per run (nearest rank), median over runs.\n",
            cli.latency_workspaces
        );
        let rows: Vec<Vec<String>> = [
            ("create in kcp → copy exists", "create"),
            ("status on the copy → visible in kcp", "status"),
        ]
        .iter()
        .map(|(label, key)| {
            vec![
                (*label).to_string(),
                fmt(value(&l, &format!("{key}.samples")), 0),
                fmt(value(&l, &format!("{key}.p50_ms")), 1),
                fmt(value(&l, &format!("{key}.p99_ms")), 1),
            ]
        })
        .collect();
        table(
            &mut out,
            &["path", "samples per run", "p50 ms", "p99 ms"],
            &rows,
        );
    }

    if !results.deletion.is_empty() {
        let d = median(&results.deletion);
        let _ = writeln!(out, "## Deletion\n");
        let _ = writeln!(
            out,
            "All objects synced and the agent idle; one collection delete per workspace in \
             kcp, measured until a watch on each workspace has seen every object deleted \
             (the agent deleted the copy, saw it gone and released its finalizer).\n"
        );
        table(
            &mut out,
            &[
                "W×N",
                "objects",
                "delete → gone from kcp s",
                "objects/s",
                "copies left",
                "sync errors",
            ],
            &[vec![
                cli.deletion.to_string(),
                cli.deletion.total().to_string(),
                fmt(value(&d, "delete.total_s"), 2),
                fmt(value(&d, "delete.rate"), 1),
                fmt(value(&d, "delete.copies_left"), 0),
                fmt(value(&d, "delete.errors"), 0),
            ]],
        );
    }

    write_costs(
        &mut out,
        cli,
        [&initial, &ceiling, &ceiling_events],
        results,
        background,
    );
    out
}

/// The processes whose CPU time a phase costs.
const PROCESSES: [&str; 4] = ["client", "kcp", "kube-apiserver", "etcd"];

/// CPU milliseconds per object of a phase, summed over the client and the
/// servers.
fn cpu_per_object(f: &Figures, phase: &str) -> Option<f64> {
    PROCESSES
        .iter()
        .map(|p| value(f, &format!("{phase}.cpu_ms.{p}")))
        .sum()
}

/// `a / b / c` of formatted values, for cells comparing the agent, the
/// ceiling and the ceiling with events.
fn triple(values: [Option<f64>; 3], decimals: usize) -> String {
    values.map(|v| fmt(v, decimals)).join(" / ")
}

/// Why the ratio is what it is: the CPU one object costs every process on
/// the machine, the cores that kept busy, and the ceiling with the agent's
/// events as a second reference.
fn write_bound(
    out: &mut String,
    cli: &Cli,
    initial: &[Figures],
    ceiling: &[Figures],
    ceiling_events: &[Figures],
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "## What bounds the ratio
"
    );
    let _ = writeln!(
        out,
        "The agent, the ceiling's client and the three servers share the machine's {cores}          cores, so a phase's throughput is at most the cores divided by the CPU one object          costs all of them. *CPU ms/object* sums the client's, kcp's, kube-apiserver's and          etcd's CPU per object (the cost table below, start-up included for the agent);          *cores busy* is that times objects/s. *Ceiling + events* is the ceiling's client          also recording, through the agent's own event sink (one write at a time, the          newest dropped beyond a queue of 1000), the events the agent records on the          consumers' objects: `ObjectAccepted` and `ObjectPlaced` per new object,          `ObjectStatusSynced` per status. Cells read agent / ceiling / ceiling + events.\n"
    );
    let mut rows = Vec::new();
    for (i, size) in cli.sizes.iter().enumerate() {
        for phase in ["sync", "status"] {
            let figures = [initial.get(i), ceiling.get(i), ceiling_events.get(i)];
            let of = |key: &str| figures.map(|f| f.and_then(|f| value(f, key)));
            let rate = of(&format!("{phase}.rate"));
            let cpu = figures.map(|f| f.and_then(|f| cpu_per_object(f, phase)));
            let busy = [0, 1, 2].map(|j| Some(rate[j]? * cpu[j]? / 1000.0));
            let events = of(&format!("{phase}.req.kcp POST events"));
            rows.push(vec![
                size.to_string(),
                phase.to_string(),
                triple(rate, 1),
                ratio(rate[0], rate[1]),
                ratio(rate[0], rate[2]),
                triple(cpu, 2),
                triple(busy, 2),
                triple(events, 2),
            ]);
        }
    }
    table(
        out,
        &[
            "W×N",
            "phase",
            "objects/s",
            "agent ÷ ceiling",
            "agent ÷ ceiling + events",
            "CPU ms/object",
            "cores busy",
            "events written/object",
        ],
        &rows,
    );
}

/// Server-side cost per object: requests and CPU, agent against ceiling
/// (and the ceiling with events, when it ran).
fn write_costs(
    out: &mut String,
    cli: &Cli,
    [initial, ceiling, ceiling_events]: [&[Figures]; 3],
    results: &Results,
    background: &BTreeMap<String, f64>,
) {
    let idle: Vec<String> = background
        .iter()
        .map(|(name, rate)| format!("{name} {:.1} %", rate * 100.0))
        .collect();
    let _ = writeln!(out, "## Cost per object on the servers\n");
    let _ = writeln!(
        out,
        "Deltas of the servers' `apiserver_request_total` and of each process's CPU time \
         over a phase, divided by the objects. *Client* is the agent (from its spawn until \
         it is idle again, start-up included) or the benchmark process running the ceiling \
         client (from its start until the last object is seen). The servers' idle CPU use, \
         measured for {}s before the first scenario ({}), times the phase's length is \
         subtracted. kcp counts a request to the virtual workspace and again the requests \
         the virtual workspace makes on its behalf (a patch through it shows as PATCH, GET \
         and PUT, plus a SubjectAccessReview for the caller), so compare the agent's column \
         with the ceiling's rather than reading absolute numbers.\n",
        BACKGROUND_WINDOW.as_secs(),
        if idle.is_empty() {
            "not measured".to_string()
        } else {
            idle.join(", ")
        }
    );
    let mut rows = Vec::new();
    let deletion = median(&results.deletion);
    for (i, size) in cli.sizes.iter().enumerate() {
        for (who, figures, phase) in [
            ("agent", initial.get(i), "sync"),
            ("ceiling", ceiling.get(i), "sync"),
            ("ceiling + events", ceiling_events.get(i), "sync"),
            ("agent", initial.get(i), "status"),
            ("ceiling", ceiling.get(i), "status"),
            ("ceiling + events", ceiling_events.get(i), "status"),
        ] {
            let Some(f) = figures else { continue };
            rows.push(cost_row(size.to_string(), phase, who, f));
        }
    }
    if !results.deletion.is_empty() {
        rows.push(cost_row(
            cli.deletion.to_string(),
            "delete",
            "agent",
            &deletion,
        ));
    }
    table(
        out,
        &[
            "W×N",
            "phase",
            "who",
            "kcp requests",
            "service requests",
            "client CPU ms",
            "kcp CPU ms",
            "kube-apiserver CPU ms",
            "etcd CPU ms",
        ],
        &rows,
    );

    // The breakdown for the largest size measured.
    let Some(largest) = (0..cli.sizes.len()).max_by_key(|&i| cli.sizes[i].total()) else {
        return;
    };
    let columns: Vec<(&str, Option<&Figures>, &str)> = [
        ("agent sync", initial.get(largest), "sync"),
        ("ceiling sync", ceiling.get(largest), "sync"),
        ("ceiling + events sync", ceiling_events.get(largest), "sync"),
        ("agent status", initial.get(largest), "status"),
        ("ceiling status", ceiling.get(largest), "status"),
        (
            "ceiling + events status",
            ceiling_events.get(largest),
            "status",
        ),
    ]
    .into_iter()
    .filter(|(_, f, _)| f.is_some())
    .collect();
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for (_, f, phase) in &columns {
        if let Some(f) = f {
            let prefix = format!("{phase}.req.");
            keys.extend(
                f.keys()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)),
            );
        }
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .filter_map(|key| {
            let values: Vec<Option<f64>> = columns
                .iter()
                .map(|(_, f, phase)| f.and_then(|f| value(f, &format!("{phase}.req.{key}"))))
                .collect();
            values
                .iter()
                .any(|v| v.is_some_and(|v| v >= 0.01))
                .then(|| {
                    std::iter::once(format!("`{key}`"))
                        .chain(values.iter().map(|v| fmt(*v, 2)))
                        .collect()
                })
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Requests per object by server, verb and resource, at {} (rows under 0.01 left out):\n",
        cli.sizes[largest]
    );
    let header: Vec<&str> = std::iter::once("request")
        .chain(columns.iter().map(|(name, _, _)| *name))
        .collect();
    table(out, &header, &rows);
}

fn cost_row(size: String, phase: &str, who: &str, f: &Figures) -> Vec<String> {
    let get = |key: &str| value(f, &format!("{phase}.{key}"));
    vec![
        size,
        phase.to_string(),
        who.to_string(),
        fmt(get("req_total.kcp"), 2),
        fmt(get("req_total.service"), 2),
        fmt(get("cpu_ms.client"), 2),
        fmt(get("cpu_ms.kcp"), 2),
        fmt(get("cpu_ms.kube-apiserver"), 2),
        fmt(get("cpu_ms.etcd"), 2),
    ]
}

// ---------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let env_file = std::env::var_os(ENV_FILE_VARIABLE)
        .map_or_else(|| repo_dir().join(".e2e-run/env"), PathBuf::from);
    let env = EnvFile::load()?;
    // `testenv run` exports the servers it started; make sure they are the
    // ones the e2e library will use.
    if let Some(kubeconfig) = std::env::var_os("KCP_KUBECONFIG")
        && env.kcp_kubeconfig.as_os_str() != kubeconfig
    {
        bail!(
            "{ENV_FILE_VARIABLE} names other servers than KCP_KUBECONFIG; run the benchmark through e2e/bench.sh"
        );
    }
    if std::env::var_os(AGENT_BINARY_VARIABLE).is_none() {
        eprintln!(
            "bench: {AGENT_BINARY_VARIABLE} is not set; benchmarking the debug build of the agent"
        );
    }
    let mut probe = Probe::new(&env, &env_file).await?;
    eprintln!("bench: measuring the idle servers' CPU use");
    probe.measure_background().await;
    let runs = |s: Scenario| cli.scenarios.contains(&s);
    let per_size = |s: Scenario| vec![Vec::new(); if runs(s) { cli.sizes.len() } else { 0 }];
    let mut results = Results {
        initial: per_size(Scenario::Initial),
        ceiling: per_size(Scenario::Ceiling),
        ceiling_events: per_size(Scenario::CeilingEvents),
        ..Default::default()
    };
    let began = Instant::now();
    for run in 1..=cli.runs {
        for (i, size) in cli.sizes.iter().enumerate() {
            if runs(Scenario::Initial) {
                eprintln!("bench: run {run}/{}: initial sync {size}", cli.runs);
                results.initial[i].push(initial_run(&cli, &probe, *size).await?);
            }
            if runs(Scenario::Ceiling) {
                eprintln!("bench: run {run}/{}: ceiling {size}", cli.runs);
                results.ceiling[i].push(ceiling_run(&cli, &probe, *size, false).await?);
            }
            if runs(Scenario::CeilingEvents) {
                eprintln!("bench: run {run}/{}: ceiling with events {size}", cli.runs);
                results.ceiling_events[i].push(ceiling_run(&cli, &probe, *size, true).await?);
            }
        }
        if runs(Scenario::Latency) {
            eprintln!(
                "bench: run {run}/{}: latency, {} samples",
                cli.runs, cli.latency_samples
            );
            results
                .latency
                .push(latency_run(&cli, cli.latency_samples).await?);
        }
        if runs(Scenario::Deletion) {
            eprintln!("bench: run {run}/{}: deletion {}", cli.runs, cli.deletion);
            results
                .deletion
                .push(deletion_run(&cli, &probe, cli.deletion).await?);
        }
    }
    eprintln!("bench: done in {:.0} s", began.elapsed().as_secs_f64());
    let report = report(&cli, &results, &probe.background);
    print!("{report}");
    std::fs::write(&cli.output, &report)
        .with_context(|| format!("writing {}", cli.output.display()))?;
    eprintln!("bench: wrote {}", cli.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(
            "10x100".parse::<Size>(),
            Ok(Size {
                workspaces: 10,
                objects: 100
            })
        );
        assert!("10".parse::<Size>().is_err());
        assert!("0x5".parse::<Size>().is_err());
    }

    #[test]
    fn medians_and_percentiles() {
        let runs: Vec<Figures> = [3.0, 1.0, 2.0]
            .iter()
            .map(|v| Figures::from([("x".to_string(), *v)]))
            .collect();
        assert_eq!(median(&runs)["x"], 2.0);
        assert_eq!(median(&runs[..2])["x"], 2.0);
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 100.0);
        assert_eq!(percentile(&samples, 99.0), 198.0);
    }

    #[test]
    fn request_costs_are_per_object() {
        let start = Instant::now();
        let before = Snapshot {
            at: start,
            cpu: BTreeMap::from([("kcp".into(), 1.0)]),
            requests: BTreeMap::from([("kcp PATCH widgets".into(), 10.0)]),
        };
        let after = Snapshot {
            at: start + Duration::from_secs(10),
            cpu: BTreeMap::from([("kcp".into(), 3.0)]),
            requests: BTreeMap::from([
                ("kcp PATCH widgets".into(), 30.0),
                ("service POST widgets".into(), 10.0),
            ]),
        };
        let f = costs(
            "sync",
            &before,
            &after,
            10,
            &BTreeMap::from([("kcp".into(), 0.1)]),
        );
        assert_eq!(
            f["sync.cpu_ms.kcp"], 100.0,
            "2 s minus 10 s at 0.1 s/s, per object"
        );
        assert_eq!(f["sync.req.kcp PATCH widgets"], 2.0);
        assert_eq!(f["sync.req_total.kcp"], 2.0);
        assert_eq!(f["sync.req_total.service"], 1.0);
    }
}

//! What a run costs: CPU and memory of processes from /proc, the servers'
//! request counters, and the agent's own metrics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::agent::AgentProcess;
use e2e::env::EnvFile;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::config::{
    BACKGROUND_WINDOW, Figures, KCP_METRICS_CONTEXT, SETTLE_BUSY_SECONDS, SETTLE_LIMIT,
    SETTLE_QUIET, SETTLE_STEP, seconds,
};

// ---------------------------------------------------------------------------
// Processes: CPU and memory from /proc

pub(crate) fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// User plus system CPU seconds of a process.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`) in bytes.
pub(crate) fn memory_bytes(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: f64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024.0)
}

/// Established TCP connections of a process to `port` on loopback: its
/// sockets (from `/proc/<pid>/fd`) found in the kernel's TCP table. An
/// HTTP/1.1 watch holds one connection for as long as it runs.
pub(crate) fn connections_to(pid: u32, port: u16) -> Option<usize> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let remote = format!(":{port:04X}");
    Some(
        table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 9 && f[2].ends_with(&remote) && f[3] == "01")
            .filter(|f| inodes.contains(f[9]))
            .count(),
    )
}

/// Waits until the process has been idle for `SETTLE_QUIET` and returns the
/// moment its last busy step ended.
pub(crate) async fn settle(pid: u32) -> Instant {
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
pub(crate) struct Probe {
    pub(crate) servers: Vec<(String, u32)>,
    pub(crate) kcp: Client,
    pub(crate) service: Client,
    /// Servers whose metrics could not be read, reported once.
    pub(crate) warned: Mutex<BTreeSet<&'static str>>,
    /// Each server's CPU seconds per second while nothing runs.
    pub(crate) background: BTreeMap<String, f64>,
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
pub(crate) struct Snapshot {
    pub(crate) at: Instant,
    pub(crate) cpu: BTreeMap<String, f64>,
    pub(crate) requests: BTreeMap<String, f64>,
}

impl Probe {
    pub(crate) async fn new(env: &EnvFile, env_file: &Path) -> anyhow::Result<Self> {
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
    pub(crate) async fn measure_background(&mut self) {
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
    pub(crate) async fn begin(&self, client: u32) -> Snapshot {
        let requests = self.requests().await;
        let (at, cpu) = self.cpu(client);
        Snapshot { at, cpu, requests }
    }

    /// The end of a phase: the CPU times first, then the counters.
    pub(crate) async fn end(&self, client: u32) -> Snapshot {
        let (at, cpu) = self.cpu(client);
        let requests = self.requests().await;
        Snapshot { at, cpu, requests }
    }

    pub(crate) fn cpu(&self, client: u32) -> (Instant, BTreeMap<String, f64>) {
        let mut cpu: BTreeMap<String, f64> = self
            .servers
            .iter()
            .filter_map(|(name, pid)| Some((name.clone(), cpu_seconds(*pid)?)))
            .collect();
        cpu.insert("client".into(), cpu_seconds(client).unwrap_or_default());
        (Instant::now(), cpu)
    }

    pub(crate) async fn requests(&self) -> BTreeMap<String, f64> {
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
pub(crate) async fn scrape_requests(
    client: &Client,
    server: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
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
pub(crate) fn costs(
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
pub(crate) async fn agent_errors(agent: &AgentProcess) -> f64 {
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
pub(crate) async fn wait_for_worker(agent: &AgentProcess) -> anyhow::Result<()> {
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

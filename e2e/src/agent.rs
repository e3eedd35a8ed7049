//! Runs the `sync-agent` binary against the test servers.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use kube::config::Kubeconfig;

use crate::env::EnvFile;
use crate::poll::poll_until;

/// Variable naming the agent binary; defaults to `<repo>/target/debug/sync-agent`.
/// It also names the binary of agent pods the operator deploys.
pub const AGENT_BINARY_VARIABLE: &str = "SYNC_AGENT_BIN";

/// Variable naming the operator binary; defaults to
/// `<repo>/target/debug/offering-operator`.
pub const OPERATOR_BINARY_VARIABLE: &str = "OFFERING_OPERATOR_BIN";

/// Writes a kubeconfig for kcp's admin pointed at `workspace`, as the agent's
/// `--kcp-kubeconfig`, and returns its path.
pub fn write_kcp_kubeconfig(env: &EnvFile, workspace: &str, name: &str) -> anyhow::Result<PathBuf> {
    let mut kubeconfig = Kubeconfig::read_from(&env.kcp_kubeconfig)?;
    let base = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == "base")
        .and_then(|c| c.cluster.clone())
        .context("kcp's admin kubeconfig has no cluster named base")?;
    let mut cluster = base;
    cluster.server = cluster
        .server
        .map(|s| format!("{}/clusters/{workspace}", s.trim_end_matches('/')));
    for named in &mut kubeconfig.clusters {
        if named.name == "base" {
            named.cluster = Some(cluster.clone());
        }
    }
    kubeconfig.current_context = Some("base".into());
    let path = env.log_dir.join(format!("{name}.kcp.kubeconfig"));
    std::fs::write(&path, serde_saphyr::to_string(&kubeconfig)?)?;
    Ok(path)
}

/// A running agent (or operator); killed when dropped.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    /// Address of its `/metrics`.
    pub metrics_address: String,
    /// Address of its `/healthz` and `/readyz`.
    pub health_address: String,
    /// Its log file.
    pub log: PathBuf,
}

/// What an agent is started with.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// `--agent-name`, also used for file names.
    pub name: String,
    /// `--apiexportendpointslice-ref`.
    pub endpoint_slice: String,
    /// Workspace path holding the endpoint slice.
    pub workspace: String,
    /// `--namespace` on the service cluster.
    pub namespace: String,
    /// `--published-resource-selector`.
    pub selector: String,
    /// Extra flags.
    pub extra_args: Vec<String>,
    /// The agent's `RUST_LOG`.
    pub log_filter: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A process to launch: binary, flags, environment, log and the addresses
/// of its health and metrics endpoints.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The executable.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// File receiving stdout and stderr.
    pub log: PathBuf,
    /// Address of `/metrics`.
    pub metrics_address: String,
    /// Address of `/healthz` and `/readyz`.
    pub health_address: String,
}

/// A free loopback address.
pub fn free_address() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// The project binary `name`: the path in its variable when set (the agent's
/// and the operator's, for the benchmark's release builds), else
/// `<checkout>/target/debug/<name>`; an error outside a checkout.
pub fn project_binary(name: &str) -> anyhow::Result<PathBuf> {
    let variable = match name {
        "sync-agent" => Some(AGENT_BINARY_VARIABLE),
        "offering-operator" => Some(OPERATOR_BINARY_VARIABLE),
        _ => None,
    };
    if let Some(path) = variable.and_then(std::env::var_os) {
        return Ok(PathBuf::from(path));
    }
    crate::checkout::binary(name)
}

impl AgentProcess {
    /// Starts an agent and waits until it reports ready.
    pub async fn start(env: &EnvFile, settings: &AgentSettings) -> anyhow::Result<Self> {
        let kcp_kubeconfig = write_kcp_kubeconfig(env, &settings.workspace, &settings.name)?;
        let metrics_address = free_address()?;
        let health_address = free_address()?;
        let log = env
            .log_dir
            .join(format!("agent-{}-{}.log", settings.name, free_port()?));
        let mut args = vec![
            format!("--kcp-kubeconfig={}", kcp_kubeconfig.display()),
            format!("--kubeconfig={}", env.service_kubeconfig.display()),
            format!("--namespace={}", settings.namespace),
            format!("--agent-name={}", settings.name),
            format!("--apiexportendpointslice-ref={}", settings.endpoint_slice),
            format!("--published-resource-selector={}", settings.selector),
            format!("--metrics-address={metrics_address}"),
            format!("--health-address={health_address}"),
            "--log-format=text".into(),
        ];
        args.extend(settings.extra_args.iter().cloned());
        Self::launch(Launch {
            binary: project_binary("sync-agent")?,
            args,
            env: vec![("RUST_LOG".into(), settings.log_filter.clone())],
            log,
            metrics_address,
            health_address,
        })
        .await
    }

    /// Starts `launch` and waits until its `/readyz` answers.
    pub async fn launch(launch: Launch) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&launch.log)?;
        let child = Command::new(&launch.binary)
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with cargo build)",
                    launch.binary.display()
                )
            })?;
        let mut process = Self {
            child,
            metrics_address: launch.metrics_address,
            health_address: launch.health_address,
            log: launch.log,
        };
        let url = format!("http://{}/readyz", process.health_address);
        let waited = poll_until(
            &format!("{} to be ready", launch.binary.display()),
            Duration::from_secs(60),
            async || {
                if let Ok(Some(status)) = process.child.try_wait() {
                    return Err(format!("the process exited with {status}"));
                }
                http_get(&url).await.map(drop)
            },
        )
        .await;
        waited.with_context(|| format!("log: {}", process.log_tail()))?;
        Ok(process)
    }

    /// The agent's `/metrics` text.
    pub async fn metrics(&self) -> Result<String, String> {
        http_get(&format!("http://{}/metrics", self.metrics_address)).await
    }

    /// Stops the agent with SIGTERM and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        poll_until("the agent to exit", Duration::from_secs(30), async || {
            self.child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_string())
        })
        .await
    }

    /// The process id, for reading its resource use from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET on loopback, returning the body of a 200 response.
pub async fn http_get(url: &str) -> Result<String, String> {
    match sync_agent::runtime::http::get(url).await {
        Ok((status, body)) if status == sync_agent::runtime::http::StatusCode::OK => Ok(body),
        Ok((status, _)) => Err(status.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

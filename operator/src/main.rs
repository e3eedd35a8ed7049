use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand};
use offering_operator::controller::{self, Context, Metrics};
use offering_operator::crdgen;
use offering_operator::credentials::{Rotation, SecretLocation};
use offering_operator::names::{FIELD_MANAGER, KUBECONFIG_KEY};
use offering_operator::provision::Settings;
use sync_agent::runtime::flags;
use sync_agent::runtime::http::{self, Health};
use sync_agent::runtime::kubeconfig;
use sync_agent::runtime::leader::{LeaseSettings, run_as_leader};
use sync_agent::runtime::logging::{self, LogFormat, LogLevel};
use sync_agent::runtime::process::{self, stopping};
use tracing::{error, info};

/// Provisions kcp APIExports, sync agents and consumer bindings from
/// PublishedOffering objects.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the project's CRDs as a YAML stream, or write one file per CRD.
    Crds {
        /// Write `<plural>.<group>.yaml` files into this directory instead of
        /// printing to standard output.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Run the operator.
    Run(Box<RunOptions>),
    /// GET an `http://` URL and fail unless it answers 200; a probe for
    /// images without a shell (the chart's `helm test` uses it).
    Probe {
        /// The URL, like `http://offering-operator:8081/readyz`.
        url: String,
    },
}

#[derive(Args, Debug)]
struct RunOptions {
    /// Kubeconfig of the service cluster; `$KUBECONFIG` or the in-cluster
    /// configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Only reconcile offerings in this namespace; all namespaces when unset.
    #[arg(long)]
    watch_namespace: Option<String>,
    /// Namespace of the operator's leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Compete for a Lease so that only one replica reconciles.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true", value_parser = flags::boolean)]
    enable_leader_election: bool,
    /// `NAMESPACE/NAME` of the Secret with the kcp kubeconfig for offerings
    /// that set no `spec.kcp.kubeconfigSecretRef`.
    #[arg(long)]
    default_kcp_secret: Option<String>,
    /// Key of the kubeconfig in the default kcp Secret.
    #[arg(long, default_value = KUBECONFIG_KEY)]
    default_kcp_secret_key: String,
    /// Agent image for offerings that set none (the chart passes the
    /// operator's own image).
    #[arg(long, env = "AGENT_IMAGE")]
    agent_image: String,
    /// kcp URL written into agents' kubeconfigs, when agents reach kcp by
    /// another address than the operator.
    #[arg(long)]
    agent_kcp_url: Option<String>,
    /// Lifetime of agent tokens, like `24h`, `1h30m` or `3600s` (at least 10m).
    #[arg(long, default_value = "24h", value_parser = flags::duration)]
    agent_token_lifetime: Duration,
    /// How long before expiry an agent token is replaced.
    #[arg(long, default_value = "8h", value_parser = flags::duration)]
    agent_token_renew_before: Duration,
    /// How often a Ready offering is looked at again without a change
    /// (export claims the agent added, drift in kcp); selected consumer
    /// workspaces are watched and bound at once. At least 1s.
    #[arg(long, default_value = "60s", value_parser = flags::duration)]
    resync_interval: Duration,
    /// Address of `/healthz` and `/readyz`; empty disables them.
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_address: String,
    /// Address of `/metrics`; empty disables it.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_address: String,
    /// Log format.
    #[arg(long, value_enum, ignore_case = true, default_value = "json")]
    log_format: LogFormat,
    /// Log level: error, warn, info, debug or trace (`RUST_LOG` overrides it).
    #[arg(long, value_enum, ignore_case = true, default_value = "info")]
    log_level: LogLevel,
}

fn address(flag: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("{flag}={value} is not an address like 0.0.0.0:8080"))
}

impl RunOptions {
    fn settings(&self) -> anyhow::Result<Settings> {
        if self.agent_token_lifetime < Duration::from_secs(600) {
            anyhow::bail!(
                "--agent-token-lifetime must be at least 10m, the shortest token kcp issues"
            );
        }
        if self.agent_token_renew_before >= self.agent_token_lifetime {
            anyhow::bail!("--agent-token-renew-before must be shorter than --agent-token-lifetime");
        }
        if self.resync_interval < Duration::from_secs(1) {
            anyhow::bail!("--resync-interval must be at least 1s");
        }
        let default_kcp_secret = match &self.default_kcp_secret {
            None => None,
            Some(reference) => {
                let (namespace, name) = reference
                    .split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
                    .with_context(|| {
                        format!("--default-kcp-secret={reference} is not NAMESPACE/NAME")
                    })?;
                Some(SecretLocation {
                    namespace: namespace.into(),
                    name: name.into(),
                    key: self.default_kcp_secret_key.clone(),
                })
            }
        };
        Ok(Settings {
            default_kcp_secret,
            agent_image: self.agent_image.clone(),
            agent_kcp_url: self.agent_kcp_url.clone(),
            rotation: Rotation {
                lifetime: self.agent_token_lifetime,
                renew_before: self.agent_token_renew_before,
            },
            resync: self.resync_interval,
        })
    }
}

/// `run` exits non-zero after logging why, in the chosen log format; the
/// one-shot subcommands print their error for the person who ran them.
#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Crds { output_dir } => write_crds(output_dir).map(|()| ExitCode::SUCCESS),
        Command::Probe { url } => probe(&url).await.map(|()| ExitCode::SUCCESS),
        Command::Run(options) => {
            logging::init_logging(options.log_format, options.log_level);
            match run(*options).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(error) => {
                    error!(error = format!("{error:#}"), "The operator stopped");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

async fn run(options: RunOptions) -> anyhow::Result<()> {
    let settings = options.settings()?;
    let stopped = process::shutdown_flag();
    let metrics = Metrics::default();
    let health = Arc::new(Health::default());
    if let Some(address) = address("--health-address", &options.health_address)? {
        tokio::spawn(http::serve_health(
            http::listen("--health-address", address).await?,
            health.clone(),
            stopping(stopped.clone()),
        ));
    }
    if let Some(address) = address("--metrics-address", &options.metrics_address)? {
        let metrics = metrics.controllers.clone();
        tokio::spawn(http::serve_metrics(
            http::listen("--metrics-address", address).await?,
            move || metrics.render(),
            stopping(stopped.clone()),
        ));
    }
    let client =
        kubeconfig::client(kubeconfig::service_config(options.kubeconfig.as_deref()).await?)?;
    client
        .apiserver_version()
        .await
        .context("reaching the service cluster")?;
    // Standby replicas are healthy and ready: they take over on failover.
    // A leader is ready once its controller's cache synced (controller::run).
    health.set_ready(options.enable_leader_election);
    let identity = process::instance_name(FIELD_MANAGER);
    let lease = options.enable_leader_election.then(|| LeaseSettings {
        client: client.clone(),
        namespace: options.namespace.clone(),
        name: FIELD_MANAGER.to_string(),
        identity: identity.clone(),
        field_manager: FIELD_MANAGER.to_string(),
        status: metrics.leader_status(FIELD_MANAGER),
    });
    let ctx = Context::new(client, settings, metrics, identity);
    run_as_leader(lease, stopped.clone(), |controllers| {
        info!(namespace = ?options.watch_namespace, "Reconciling PublishedOfferings");
        controllers.spawn(controller::run(
            ctx,
            options.watch_namespace.clone(),
            health.clone(),
            stopping(stopped.clone()),
        ));
    })
    .await?;
    Ok(())
}

async fn probe(url: &str) -> anyhow::Result<()> {
    let (status, _) = http::get(url).await?;
    if status == http::StatusCode::OK {
        println!("{url}: {status}");
        Ok(())
    } else {
        anyhow::bail!("{url} answered {status}")
    }
}

fn write_crds(output_dir: Option<PathBuf>) -> anyhow::Result<()> {
    for file in crdgen::crds() {
        let yaml = file.render().context("rendering CRD")?;
        match &output_dir {
            Some(dir) => {
                let path = dir.join(&file.file_name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

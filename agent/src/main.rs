use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use kube_lease_manager::LeaseManagerBuilder;
use sync_agent::controller::{self, Context};
use sync_agent::http::{self, Health};
use sync_agent::kcp::{KcpTarget, workspace_of};
use sync_agent::metrics::Metrics;
use sync_agent::options::{ControllerName, LogFormat, Options};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// How long a leader's Lease is valid without renewal.
const LEASE_SECONDS: u64 = 15;
/// How long before expiry the leader renews.
const LEASE_GRACE_SECONDS: u64 = 5;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    init_logging(&options);
    options.validate()?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("Shutting down");
        let _ = stop.send(true);
    });
    match run(options, stopped).await {
        Ok(()) => Ok(()),
        Err(error) => {
            error!(error = format!("{error:#}"), "The agent stopped");
            Err(error)
        }
    }
}

fn init_logging(options: &Options) {
    let default = if options.log_debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match options.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            warn!(%error, "Cannot handle SIGTERM; only Ctrl-C stops the agent gracefully");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves when the shutdown flag is raised.
async fn stopping(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

async fn run(options: Options, stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    let agent_name = options.agent_name();
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    if let Some(address) = options.health_address()? {
        tokio::spawn(http::serve_health(
            address,
            health.clone(),
            stopping(stopped.clone()),
        ));
    }
    if let Some(address) = options.metrics_address()? {
        tokio::spawn(http::serve_metrics(
            address,
            metrics.clone(),
            stopping(stopped.clone()),
        ));
    }

    let service = service_client(&options).await?;
    let kcp_config = kubeconfig(&options.kcp_kubeconfig).await?;
    if workspace_of(&kcp_config).is_none() {
        anyhow::bail!(
            "the server of {} is {}; it must point at the workspace of the APIExportEndpointSlice, \
             like https://kcp.example.com/clusters/root:providers:acme",
            options.kcp_kubeconfig.display(),
            kcp_config.cluster_url
        );
    }
    let Some(kcp) =
        resolve_with_retry(kcp_config, &options.endpoint_slice, stopped.clone()).await?
    else {
        return Ok(());
    };
    info!(export = %kcp.export_name, path = %kcp.export_path, cluster = %kcp.export_cluster, "Found the APIExport");
    health.set_ready(true);

    let identity = instance_name();
    let lease = if options.enable_leader_election {
        let manager = LeaseManagerBuilder::new(service.clone(), format!("syncagent.{agent_name}"))
            .with_namespace(&options.namespace)
            .with_identity(&identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .with_field_manager(format!("{}-{identity}", controller::FIELD_MANAGER))
            .build()
            .await
            .context("setting up leader election")?;
        let (mut leading, task) = manager.watch().await;
        info!(lease = %format!("syncagent.{agent_name}"), "Waiting for leadership");
        let mut waiting_stop = stopped.clone();
        let became_leader = tokio::select! {
            result = leading.wait_for(|l| *l) => { result.context("leader election ended")?; true }
            _ = waiting_stop.wait_for(|s| *s) => false,
        };
        if !became_leader {
            drop(leading);
            release(task).await;
            return Ok(());
        }
        info!("Became the leader");
        Some((leading, task))
    } else {
        None
    };

    let ctx = Context::new(service, kcp, &options, metrics, identity);
    let mut controllers = JoinSet::new();
    if options.runs(ControllerName::ApiResourceSchema) {
        controllers.spawn(controller::schemas::run(
            ctx.clone(),
            stopping(stopped.clone()),
        ));
    }
    if options.runs(ControllerName::ApiExport) {
        controllers.spawn(controller::apiexport::run(
            ctx.clone(),
            stopping(stopped.clone()),
        ));
    }
    if options.runs(ControllerName::Sync) {
        controllers.spawn(controller::sync::run(
            ctx.clone(),
            stopping(stopped.clone()),
        ));
    }

    match lease {
        Some((mut leading, task)) => {
            let mut waiting_stop = stopped.clone();
            let lost = tokio::select! {
                _ = leading.wait_for(|l| !*l) => true,
                _ = waiting_stop.wait_for(|s| *s) => false,
            };
            if lost {
                // Another replica may lead already: stop writing at once.
                controllers.abort_all();
            } else {
                drain(&mut controllers).await;
            }
            drop(leading);
            release(task).await;
            if lost {
                Err(anyhow::anyhow!(
                    "lost leadership; exiting so that only one replica writes"
                ))
            } else {
                Ok(())
            }
        }
        None => {
            let _ = stopped.clone().wait_for(|s| *s).await;
            drain(&mut controllers).await;
            Ok(())
        }
    }
}

async fn drain(controllers: &mut JoinSet<()>) {
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = controllers.join_next() => if next.is_none() { break },
            () = &mut deadline => {
                warn!("Controllers did not stop in time; aborting them");
                controllers.abort_all();
                break;
            }
        }
    }
}

async fn release(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) {
    match task.await {
        Ok(Ok(manager)) => {
            if let Err(error) = manager.release().await {
                warn!(%error, "Releasing the Lease failed");
            } else {
                info!("Released the Lease");
            }
        }
        Ok(Err(error)) => warn!(%error, "Leader election failed"),
        Err(error) => warn!(%error, "Leader election task failed"),
    }
}

/// Resolves the export, retrying transient failures with backoff until it
/// works or the agent is stopped (`Ok(None)`).
async fn resolve_with_retry(
    config: Config,
    slice: &str,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<Option<KcpTarget>> {
    let mut delay = Duration::from_secs(1);
    loop {
        match KcpTarget::resolve(config.clone(), slice).await {
            Ok(target) => return Ok(Some(target)),
            Err(error) if error.is_transient() => {
                warn!(%error, retry_in = ?delay, "Cannot reach the APIExport yet");
            }
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopped.wait_for(|s| *s) => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

async fn kubeconfig(path: &Path) -> anyhow::Result<Config> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))
}

async fn service_client(options: &Options) -> anyhow::Result<Client> {
    let mut config = match &options.kubeconfig {
        Some(path) => kubeconfig(path).await?,
        None => Config::infer()
            .await
            .context("finding the service cluster's configuration")?,
    };
    if !options.kubeconfig_host_override.is_empty() {
        config.cluster_url = options
            .kubeconfig_host_override
            .parse()
            .context("--kubeconfig-host-override is not a URL")?;
    }
    if !options.kubeconfig_ca_file_override.is_empty() {
        let pem = std::fs::read(&options.kubeconfig_ca_file_override)
            .context("reading --kubeconfig-ca-file-override")?;
        config.root_cert = Some(pem_certificates(&pem)?);
    }
    Client::try_from(config).context("building the service-cluster client")
}

/// DER certificates in a PEM bundle.
fn pem_certificates(bundle: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let certificates: Vec<Vec<u8>> = pem::parse_many(bundle)
        .context("--kubeconfig-ca-file-override is not PEM")?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certificates.is_empty() {
        anyhow::bail!("--kubeconfig-ca-file-override holds no certificate");
    }
    Ok(certificates)
}

/// Names this replica in events and the Lease: the pod name when set.
fn instance_name() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .unwrap_or_else(|_| "sync-agent".into());
    format!("{host}-{}", std::process::id())
}

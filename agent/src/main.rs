use anyhow::Context as _;
use clap::Parser;
use kube::{Client, Config};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use sync_agent::api::controllers::ControllerName;
use sync_agent::context::{self, Context};
use sync_agent::controller;
use sync_agent::kcp::{EndpointClients, KcpTarget, Rewrites, workspace_of};
use sync_agent::metrics::Metrics;
use sync_agent::options::Options;
use sync_agent::runtime::backoff::Backoff;
use sync_agent::runtime::http::{self, Health};
use sync_agent::runtime::kubeconfig;
use sync_agent::runtime::leader::{LeaseSettings, run_as_leader};
use sync_agent::runtime::logging;
use sync_agent::runtime::process::{self, stopping};
use sync_agent::sync::upstream_state::UpstreamStates;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// jemalloc, with its background purge threads, hands the pages of freed
/// objects back to the system within seconds: the agent's RSS follows the
/// objects it mirrors down again after they are deleted (BENCHMARKS.md),
/// which the system allocators (glibc's per-thread arenas, musl's in the
/// image) do not.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exits non-zero after logging why, in the chosen log format: no
/// plain-text `Error:` line after JSON ones.
#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    logging::init_logging(options.log_format, options.log_level());
    let result = match options.validate() {
        Ok(()) => run(options, process::shutdown_flag()).await,
        Err(invalid) => Err(invalid.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(error = format!("{error:#}"), "The agent stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options, stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    let agent_name = options.agent_name();
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    if let Some(address) = options.health_address()? {
        tokio::spawn(http::serve_health(
            http::listen("--health-address", address).await?,
            health.clone(),
            stopping(stopped.clone()),
        ));
    }
    if let Some(address) = options.metrics_address()? {
        let metrics = metrics.clone();
        tokio::spawn(http::serve_metrics(
            http::listen("--metrics-address", address).await?,
            move || metrics.render(),
            stopping(stopped.clone()),
        ));
    }

    let service = service_client(&options).await?;
    let kcp_config = kubeconfig::from_file(&options.kcp_kubeconfig).await?;
    if workspace_of(&kcp_config).is_none() {
        anyhow::bail!(
            "the server of {} is {}; it must point at the workspace of the APIExportEndpointSlice, \
             like https://kcp.example.com/clusters/root:providers:acme",
            options.kcp_kubeconfig.display(),
            kcp_config.cluster_url
        );
    }
    let rewrite_ca = match options.endpoint_url_rewrite_ca_file.as_str() {
        "" => None,
        file => Some(pem_certificates(
            "--endpoint-url-rewrite-ca-file",
            &std::fs::read(file).context("reading --endpoint-url-rewrite-ca-file")?,
        )?),
    };
    let rewrites = Rewrites::parse(&options.endpoint_url_rewrite, rewrite_ca)
        .map_err(|why| anyhow::anyhow!("--endpoint-url-rewrite {why}"))?;
    let endpoints = EndpointClients::new(
        kcp_config.clone(),
        rewrites,
        metrics.endpoints_rewritten.clone(),
    );
    let Some(kcp) = resolve_with_retry(
        kcp_config,
        &options.endpoint_slice,
        endpoints,
        stopped.clone(),
    )
    .await?
    else {
        return Ok(());
    };
    info!(export = %kcp.export_name, path = %kcp.export_path, cluster = %kcp.export_cluster, "Found the APIExport");
    // Standby replicas are ready: they take over on failover. A leader is
    // ready once its controllers' caches synced (ready_when_synced).
    health.set_ready(options.enable_leader_election);

    let identity = process::instance_name("sync-agent");
    let lease = options.enable_leader_election.then(|| {
        let name = sync_agent::options::lease_name(&agent_name);
        LeaseSettings {
            client: service.clone(),
            namespace: options.namespace.clone(),
            status: metrics.leader_status(&name),
            name,
            identity: identity.clone(),
            field_manager: context::FIELD_MANAGER.to_string(),
        }
    });
    let upstream_states = match options.upstream_state_namespace.as_str() {
        "" => None,
        namespace => Some(UpstreamStates::new(service.clone(), namespace)),
    };
    let ctx = Context::new(service, kcp, &options, metrics, identity, upstream_states);
    run_as_leader(lease, stopped.clone(), |controllers| {
        let mut reports = Vec::new();
        let mut synced = || {
            let (synced, report) = controller::ready::Synced::channel();
            reports.push(report);
            synced
        };
        if options.runs(ControllerName::ApiResourceSchema) {
            controllers.spawn(controller::schemas::run(
                ctx.clone(),
                synced(),
                stopping(stopped.clone()),
            ));
        }
        if options.runs(ControllerName::ApiExport) {
            controllers.spawn(controller::apiexport::run(
                ctx.clone(),
                synced(),
                stopping(stopped.clone()),
            ));
        }
        if options.runs(ControllerName::Sync) {
            controllers.spawn(controller::sync::run(
                ctx.clone(),
                synced(),
                stopping(stopped.clone()),
            ));
        }
        controllers.spawn(controller::ready::ready_when_synced(
            health.clone(),
            reports,
        ));
    })
    .await?;
    Ok(())
}

/// Retries of resolving the export: 1 s, doubling up to a minute.
const RESOLVE_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Resolves the export, retrying transient failures with backoff until it
/// works or the agent is stopped (`Ok(None)`).
async fn resolve_with_retry(
    config: Config,
    slice: &str,
    endpoints: EndpointClients,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<Option<KcpTarget>> {
    let mut failures = 0;
    loop {
        let delay = match KcpTarget::resolve(config.clone(), slice, endpoints.clone()).await {
            Ok(target) => return Ok(Some(target)),
            Err(error) if error.is_transient() => {
                failures += 1;
                let delay = RESOLVE_RETRY.after(failures);
                warn!(%error, retry_in = ?delay, "Cannot reach the APIExport yet");
                delay
            }
            Err(error) => return Err(error.into()),
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopped.wait_for(|s| *s) => return Ok(None),
        }
    }
}

async fn service_client(options: &Options) -> anyhow::Result<Client> {
    let mut config = kubeconfig::service_config(options.kubeconfig.as_deref()).await?;
    if !options.kubeconfig_host_override.is_empty() {
        config.cluster_url = options
            .kubeconfig_host_override
            .parse()
            .context("--kubeconfig-host-override is not a URL")?;
    }
    if !options.kubeconfig_ca_file_override.is_empty() {
        let pem = std::fs::read(&options.kubeconfig_ca_file_override)
            .context("reading --kubeconfig-ca-file-override")?;
        config.root_cert = Some(pem_certificates("--kubeconfig-ca-file-override", &pem)?);
    }
    Ok(kubeconfig::client(config)?)
}

/// DER certificates in a PEM bundle, the file of `flag`.
fn pem_certificates(flag: &str, bundle: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let certificates: Vec<Vec<u8>> = pem::parse_many(bundle)
        .with_context(|| format!("{flag} is not PEM"))?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certificates.is_empty() {
        anyhow::bail!("{flag} holds no certificate");
    }
    Ok(certificates)
}

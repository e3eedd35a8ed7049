//! What a controller process of this project needs around its controllers:
//! logging, the shutdown signal fanned out to every task, a bounded drain,
//! and Lease-based leader election. Shared by the agent and the operator.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use crate::options::LogFormat;

/// How long a leader's Lease is valid without renewal.
const LEASE_SECONDS: u64 = 15;
/// How long before expiry the leader renews.
const LEASE_GRACE_SECONDS: u64 = 5;
/// How long running controllers get to finish after the shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Logs to standard error in `format`; `RUST_LOG` overrides `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// A flag raised once on SIGTERM or Ctrl-C; every task holds a receiver.
pub fn shutdown_flag() -> watch::Receiver<bool> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("Shutting down");
        let _ = stop.send(true);
    });
    stopped
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
            warn!(%error, "Cannot handle SIGTERM; only Ctrl-C stops the process gracefully");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves when the shutdown flag is raised.
pub async fn stopping(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Waits for `controllers` to finish, aborting them after a deadline.
pub async fn drain(controllers: &mut JoinSet<()>) {
    let deadline = tokio::time::sleep(DRAIN_TIMEOUT);
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

/// Leadership of a Lease, held until released or lost.
#[derive(Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// How a leader's term ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermEnd {
    /// The shutdown flag was raised.
    Stopped,
    /// Another replica took the Lease.
    Lost,
}

impl Leadership {
    /// Competes for the Lease `name` in `namespace` until this replica
    /// leads (`Some`) or the process is stopped (`None`).
    pub async fn acquire(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        field_manager: &str,
        mut stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Self>> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .with_field_manager(format!("{field_manager}-{identity}"))
            .build()
            .await
            .map_err(|error| anyhow::anyhow!("setting up leader election: {error}"))?;
        let (mut leading, task) = manager.watch().await;
        info!(lease = %name, "Waiting for leadership");
        let became_leader = tokio::select! {
            result = leading.wait_for(|l| *l) => {
                result.map_err(|_| anyhow::anyhow!("leader election ended"))?;
                true
            }
            _ = stopped.wait_for(|s| *s) => false,
        };
        let leadership = Self { leading, task };
        if !became_leader {
            leadership.release().await;
            return Ok(None);
        }
        info!("Became the leader");
        Ok(Some(leadership))
    }

    /// Waits until the term ends: shutdown or a lost Lease.
    pub async fn term(&mut self, mut stopped: watch::Receiver<bool>) -> TermEnd {
        tokio::select! {
            _ = self.leading.wait_for(|l| !*l) => TermEnd::Lost,
            _ = stopped.wait_for(|s| *s) => TermEnd::Stopped,
        }
    }

    /// Gives the Lease up so that another replica takes over at once.
    pub async fn release(self) {
        drop(self.leading);
        match self.task.await {
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
}

/// Names this replica in events and the Lease: the pod name when set.
pub fn instance_name(fallback: &str) -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .unwrap_or_else(|_| fallback.into());
    format!("{host}-{}", std::process::id())
}

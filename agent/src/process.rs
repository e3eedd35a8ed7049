//! What a controller process of this project needs around its controllers:
//! logging, the shutdown signal fanned out to every task, a bounded drain,
//! and Lease-based leader election. Shared by the agent and the operator.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use kube_runtime::WatchStreamExt;
use kube_runtime::watcher;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use crate::options::LogFormat;

/// How long a leader's Lease is valid without renewal.
const LEASE_SECONDS: u64 = 15;
/// How long before expiry the leader renews.
const LEASE_GRACE_SECONDS: u64 = 5;
/// How long a standby waits after a failed attempt to take the Lease.
const ELECTION_RETRY: Duration = Duration::from_secs(2);
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
    ///
    /// A standby watches the Lease: when its holder releases it (a
    /// graceful shutdown), the standby takes it at once instead of waiting
    /// out the Lease's duration, which its lease manager would.
    pub async fn acquire(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        field_manager: &str,
        mut stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Self>> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let released = watcher(
            leases,
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .default_backoff()
        .applied_objects()
        .filter_map(async |lease| match lease {
            Ok(lease) if holder(&lease).is_none() => Some(()),
            Ok(_) => None,
            Err(error) => {
                warn!(%error, "Watching the Lease failed; a released Lease is noticed when it expires");
                None
            }
        });
        let mut released = std::pin::pin!(released);
        info!(lease = %name, "Waiting for leadership");
        loop {
            let manager = LeaseManagerBuilder::new(client.clone(), name)
                .with_namespace(namespace)
                .with_identity(identity)
                .with_duration(LEASE_SECONDS)
                .with_grace(LEASE_GRACE_SECONDS)
                .with_field_manager(format!("{field_manager}-{identity}"))
                .build()
                .await
                .map_err(|error| anyhow::anyhow!("setting up leader election: {error}"))?;
            // A fresh manager reads the Lease anew, so one built after a
            // release sees it free.
            let changed = tokio::select! {
                changed = manager.changed() => changed,
                Some(()) = released.next() => continue,
                _ = stopped.wait_for(|s| *s) => return Ok(None),
            };
            match changed {
                Ok(true) => {
                    let (leading, task) = manager.watch().await;
                    info!("Became the leader");
                    return Ok(Some(Self { leading, task }));
                }
                Ok(false) => {}
                Err(error) => {
                    warn!(%error, "Leader election failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(ELECTION_RETRY) => {}
                        _ = stopped.wait_for(|s| *s) => return Ok(None),
                    }
                }
            }
        }
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

/// The Lease's holder, unless nobody holds it.
fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// Names this replica in events and the Lease: the pod name when set.
pub fn instance_name(fallback: &str) -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .unwrap_or_else(|_| fallback.into());
    format!("{host}-{}", std::process::id())
}

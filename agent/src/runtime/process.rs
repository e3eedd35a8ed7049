//! What a controller process of this project needs around its controllers:
//! the shutdown signal fanned out to every task, and a bounded drain. Shared by the agent and the operator, like [`crate::runtime::leader`].

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// How long running controllers get to finish after the shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

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
                controllers.shutdown().await;
                break;
            }
        }
    }
}

/// Names this replica in events and the Lease: `<pod>-<pid>`, with the pod
/// name when set.
pub fn instance_name(fallback: &str) -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .unwrap_or_else(|_| fallback.into());
    format!("{host}-{}", std::process::id())
}

/// The pod in a Lease's holder identity: [`instance_name`]'s `<pod>-<pid>`,
/// or `<pod>_<uuid>` as Go controllers (upstream's agent) write it; any
/// other identity as it is.
pub fn instance_pod(identity: &str) -> &str {
    // Pod names never hold '_'.
    if let Some((pod, _)) = identity.split_once('_') {
        return pod;
    }
    match identity.rsplit_once('-') {
        Some((pod, pid)) if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => pod,
        _ => identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_of_a_holder_identity_drops_the_process_id_or_the_go_uuid() {
        let ours = instance_name("sync-agent");
        assert_eq!(instance_pod(&ours), ours.rsplit_once('-').unwrap().0);
        assert_eq!(
            instance_pod("team-a-databases-sync-agent-7d9f8-x2k4p-1"),
            "team-a-databases-sync-agent-7d9f8-x2k4p"
        );
        // A random pod suffix of digits only is kept: only the last part is the pid.
        assert_eq!(instance_pod("agent-7d9f8-24567-12"), "agent-7d9f8-24567");
        assert_eq!(
            instance_pod("api-syncagent-5c6d-q8wz2_0f3e8a1c-7b4d-4c2e-9a61-3d5e7f9b1c20"),
            "api-syncagent-5c6d-q8wz2"
        );
        assert_eq!(instance_pod("by-hand"), "by-hand");
    }
}

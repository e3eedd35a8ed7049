//! Lease-based leader election with client-go's semantics, so that replicas
//! of this project and of Go controllers (upstream api-syncagent) can share a
//! Lease: a holder's claim is valid for the Lease's duration after a standby
//! last saw its record change (local clocks only, no trust in the holder's
//! clock); every write carries the resourceVersion it read, so two replicas
//! never both succeed; a leader that cannot renew within the renew deadline,
//! counted from the start of its last successful attempt, steps down before
//! its claim runs out anywhere; a released Lease (empty holder) is taken at a
//! standby's next retry. Every request is bounded in time.
//!
//! [`run_as_leader`] is the term both binaries run: acquire, start the
//! controllers, and on shutdown or a lost Lease stop them, then release.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use prometheus::IntGauge;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::runtime::process::{self, stopping};

/// How long a holder's claim is valid after it was last seen renewed.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a leader keeps trying to renew before it steps down; shorter
/// than [`LEASE_DURATION`] so it stops before a standby may take over.
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a leader renews and a standby tries to take the Lease.
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Leadership of a Lease, held until released or lost.
#[derive(Debug)]
struct Leadership {
    lock: Lock,
    leading: watch::Receiver<bool>,
    renewing: JoinHandle<()>,
    status: IntGauge,
}

/// How a leader's term ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TermEnd {
    /// The shutdown flag was raised.
    Stopped,
    /// The Lease was taken by another replica or could not be renewed.
    Lost,
}

/// The Lease a replica competes for before it runs its controllers.
pub struct LeaseSettings {
    /// Client of the cluster holding the Lease.
    pub client: Client,
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's holder identity.
    pub identity: String,
    /// Field manager of the Lease writes.
    pub field_manager: String,
    /// `leader_election_master_status` for the Lease.
    pub status: IntGauge,
}

impl std::fmt::Debug for LeaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseSettings")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The replica lost its Lease while leading; it must exit so that only
/// one replica writes.
#[derive(Debug, thiserror::Error)]
#[error("lost leadership; exiting so that only one replica writes")]
pub struct LostLeadership;

/// Runs the controllers that `start` spawns into a [`JoinSet`], as leader
/// of `lease` or, without one, right away. On shutdown the controllers
/// drain (bounded); on a lost Lease they are aborted at once, since another
/// replica may lead already. The Lease is released only once they stopped.
/// Stopped before leading, nothing is started.
pub async fn run_as_leader(
    lease: Option<LeaseSettings>,
    stopped: watch::Receiver<bool>,
    start: impl FnOnce(&mut JoinSet<()>),
) -> Result<(), LostLeadership> {
    let leadership = match lease {
        Some(lease) => {
            let acquired = Leadership::acquire(
                lease.client,
                &lease.namespace,
                &lease.name,
                &lease.identity,
                &lease.field_manager,
                lease.status,
                stopped.clone(),
            )
            .await;
            match acquired {
                Some(leadership) => Some(leadership),
                None => return Ok(()),
            }
        }
        None => None,
    };
    let mut controllers = JoinSet::new();
    start(&mut controllers);
    let Some(mut leadership) = leadership else {
        stopping(stopped).await;
        process::drain(&mut controllers).await;
        return Ok(());
    };
    let mut end = leadership.term(stopped).await;
    if end == TermEnd::Stopped {
        // Drain, unless the Lease is lost meanwhile.
        tokio::select! {
            () = process::drain(&mut controllers) => {}
            () = leadership.lost() => end = TermEnd::Lost,
        }
    }
    if end == TermEnd::Lost {
        controllers.shutdown().await;
    }
    leadership.release().await;
    match end {
        TermEnd::Lost => Err(LostLeadership),
        TermEnd::Stopped => Ok(()),
    }
}

/// What this replica last saw of the Lease's record, and when it changed.
/// Metadata writes (labels, annotations) do not count as a change.
#[derive(Clone, Debug)]
struct Observed {
    spec: LeaseSpec,
    changed_at: Instant,
}

/// How an attempt to take or renew the Lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    /// This replica holds the Lease.
    Leading,
    /// Another replica's claim is valid.
    HeldByAnother,
    /// Someone wrote the Lease between our read and our write.
    Conflict,
}

/// The Lease and this replica's view of it.
#[derive(Clone, Debug)]
struct Lock {
    leases: Api<Lease>,
    name: String,
    identity: String,
    /// Field manager of every write.
    write_params: PostParams,
    observed: Option<Observed>,
}

impl Leadership {
    /// Competes for the Lease `name` in `namespace` until this replica
    /// leads (`Some`) or the process is stopped (`None`), writing as
    /// `field_manager`; `status` (controller-runtime's
    /// `leader_election_master_status`) is 1 while it leads. Errors of the
    /// API server are retried; they never end the process.
    async fn acquire(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        field_manager: &str,
        status: IntGauge,
        mut stopped: watch::Receiver<bool>,
    ) -> Option<Self> {
        status.set(0);
        let mut lock = Lock {
            leases: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            write_params: PostParams {
                field_manager: Some(field_manager.to_string()),
                ..PostParams::default()
            },
            observed: None,
        };
        info!(lease = %name, %namespace, "Waiting for leadership");
        let acquired_at = loop {
            let started = Instant::now();
            // Bounded, so that an API server that does not answer neither
            // stalls the election nor keeps the process from stopping.
            tokio::select! {
                attempt = tokio::time::timeout(RENEW_DEADLINE, lock.try_acquire_or_renew()) => {
                    match attempt {
                        Ok(Ok(Attempt::Leading)) => break started,
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => warn!(%error, lease = %name, "Leader election failed; retrying"),
                        Err(_) => warn!(lease = %name, "The API server did not answer in time; retrying"),
                    }
                }
                _ = stopped.wait_for(|s| *s) => return None,
            }
            tokio::select! {
                () = tokio::time::sleep(jittered(RETRY_PERIOD)) => {}
                _ = stopped.wait_for(|s| *s) => return None,
            }
        };
        info!(lease = %name, "Became the leader");
        status.set(1);
        let (leading_tx, leading) = watch::channel(true);
        let renewing = tokio::spawn(renew(lock.clone(), acquired_at, leading_tx, status.clone()));
        Some(Self {
            lock,
            leading,
            renewing,
            status,
        })
    }

    /// Waits until the term ends: shutdown or a lost Lease.
    async fn term(&mut self, mut stopped: watch::Receiver<bool>) -> TermEnd {
        tokio::select! {
            _ = self.leading.wait_for(|l| !*l) => TermEnd::Lost,
            _ = stopped.wait_for(|s| *s) => TermEnd::Stopped,
        }
    }

    /// Resolves once this replica no longer leads.
    async fn lost(&mut self) {
        let _ = self.leading.wait_for(|l| !*l).await;
    }

    /// Stops renewing and gives the Lease up, if this replica still holds
    /// it, so that a standby takes over at its next retry.
    async fn release(mut self) {
        self.renewing.abort();
        let _ = (&mut self.renewing).await;
        self.status.set(0);
        match tokio::time::timeout(RENEW_DEADLINE, self.lock.release()).await {
            Ok(Ok(true)) => info!("Released the Lease"),
            Ok(Ok(false)) => debug!("The Lease was no longer ours to release"),
            Ok(Err(error)) => {
                warn!(%error, "Releasing the Lease failed; a standby takes over once it expires")
            }
            Err(_) => {
                warn!("The API server did not answer; a standby takes over once the Lease expires")
            }
        }
    }
}

/// Renews every [`RETRY_PERIOD`] while the Lease is ours; says `false` on
/// `leading` when another replica holds it or no renewal succeeded within
/// [`RENEW_DEADLINE`] of the start of the last attempt that did (a standby
/// counts from when it saw that write, which is later).
async fn renew(
    mut lock: Lock,
    acquired_at: Instant,
    leading: watch::Sender<bool>,
    status: IntGauge,
) {
    let mut renewed_at = acquired_at;
    let name = lock.name.clone();
    let stepped_down = |why: &str| {
        warn!(lease = %name, "{why}; stepping down");
        status.set(0);
        let _ = leading.send(false);
    };
    loop {
        tokio::time::sleep(RETRY_PERIOD).await;
        let deadline = renewed_at + RENEW_DEADLINE;
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, lock.try_acquire_or_renew()).await {
            Ok(Ok(Attempt::Leading)) => renewed_at = started,
            Ok(Ok(Attempt::HeldByAnother)) => {
                return stepped_down("Another replica holds the Lease");
            }
            Ok(Ok(Attempt::Conflict)) if Instant::now() + RETRY_PERIOD < deadline => {
                debug!(lease = %name, "The Lease changed while renewing; retrying");
            }
            Ok(Err(error)) if Instant::now() + RETRY_PERIOD < deadline => {
                warn!(%error, lease = %name, "Renewing the Lease failed; retrying");
            }
            Ok(_) | Err(_) => return stepped_down("The Lease was not renewed in time"),
        }
    }
}

impl Lock {
    /// Takes or renews the Lease when it is free, ours, or its holder's
    /// claim ran out.
    async fn try_acquire_or_renew(&mut self) -> kube::Result<Attempt> {
        let now = Timestamp::now();
        let Some(current) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(claim(None, &self.identity, now)),
            };
            return self.write(self.leases.create(&self.write_params, &lease).await);
        };
        let spec = current.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|o| o.spec != spec) {
            self.observed = Some(Observed {
                spec: spec.clone(),
                changed_at: Instant::now(),
            });
        }
        let observed = self.observed.as_ref().expect("just set");
        if held_by_another(
            &observed.spec,
            &self.identity,
            observed.changed_at.elapsed(),
        ) {
            return Ok(Attempt::HeldByAnother);
        }
        let mut lease = current;
        lease.spec = Some(claim(Some(&spec), &self.identity, now));
        let written = self
            .leases
            .replace(&self.name, &self.write_params, &lease)
            .await;
        self.write(written)
    }

    /// Records a successful write; a conflict means someone wrote first.
    fn write(&mut self, written: kube::Result<Lease>) -> kube::Result<Attempt> {
        match written {
            Ok(lease) => {
                self.observed = Some(Observed {
                    spec: lease.spec.clone().unwrap_or_default(),
                    changed_at: Instant::now(),
                });
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
            Err(error) => Err(error),
        }
    }

    /// Empties the holder if this replica still holds the Lease.
    async fn release(&mut self) -> kube::Result<bool> {
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released(&spec, Timestamp::now()));
        let written = self
            .leases
            .replace(&self.name, &self.write_params, &lease)
            .await;
        Ok(self.write(written)? == Attempt::Leading)
    }
}

/// Whether `spec` names a holder other than `identity` whose claim is still
/// valid, `since` after this replica saw the Lease change.
fn held_by_another(spec: &LeaseSpec, identity: &str, since: Duration) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return false;
    }
    let seconds = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(LEASE_DURATION.as_secs());
    since < Duration::from_secs(seconds)
}

/// The Lease spec by which `identity` takes or renews the Lease whose spec
/// was `previous` (`None`: the Lease is new).
fn claim(previous: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseSpec {
    let Some(previous) = previous else {
        return LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
    };
    let renewing = previous.holder_identity.as_deref() == Some(identity);
    let transitions = previous.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if renewing {
            previous.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if renewing {
            transitions
        } else {
            transitions + 1
        }),
        ..previous.clone()
    }
}

/// The spec of a Lease given up at `now`: no holder, as client-go writes it.
fn released(previous: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(String::new()),
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..previous.clone()
    }
}

/// `period` plus up to a fifth more, so that standbys do not retry in step.
fn jittered(period: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    period + period.mul_f64(f64::from(nanos % 1000) / 5000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_lease_the_controllers_run_until_shutdown_and_drain() {
        let (stop, stopped) = watch::channel(false);
        let (finished, drained) = tokio::sync::oneshot::channel();
        let controller_stop = stopped.clone();
        let run = tokio::spawn(run_as_leader(None, stopped, move |controllers| {
            controllers.spawn(async move {
                stopping(controller_stop).await;
                let _ = finished.send(());
            });
        }));
        stop.send(true).expect("the run listens");
        run.await.expect("joined").expect("no Lease to lose");
        drained.await.expect("the controller ran to its end");
    }

    fn spec(holder: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(3),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_claim_is_valid_for_its_duration_after_it_was_seen() {
        let other = spec("b", 15);
        assert!(held_by_another(&other, "a", Duration::from_secs(14)));
        assert!(!held_by_another(&other, "a", Duration::from_secs(15)));
        assert!(!held_by_another(&spec("a", 15), "a", Duration::ZERO));
        assert!(!held_by_another(&spec("", 1), "a", Duration::ZERO));
        assert!(!held_by_another(&LeaseSpec::default(), "a", Duration::ZERO));
    }

    #[test]
    fn taking_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let now = Timestamp::from_second(100).unwrap();
        let taken = claim(Some(&spec("b", 15)), "a", now);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_duration_seconds, Some(15));

        let renewed = claim(Some(&spec("a", 15)), "a", now);
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));

        let fresh = claim(None, "a", now);
        assert_eq!(fresh.lease_transitions, Some(0));
        let unheld = claim(Some(&LeaseSpec::default()), "a", now);
        assert_eq!(unheld.lease_transitions, Some(1));
    }

    #[test]
    fn a_released_lease_has_no_holder() {
        let now = Timestamp::from_second(100).unwrap();
        let given_up = released(&spec("a", 15), now);
        assert_eq!(given_up.holder_identity.as_deref(), Some(""));
        assert!(!held_by_another(&given_up, "b", Duration::ZERO));
        assert_eq!(given_up.lease_transitions, Some(3));
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        let period = Duration::from_secs(2);
        let jittered = jittered(period);
        assert!(jittered >= period && jittered <= period + period / 5);
    }
}

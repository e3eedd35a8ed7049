//! The consumer bindings this operator saw bound, per offering, so that a
//! reconcile asks kcp only about workspaces that are new, not bound yet, or
//! due for another look. An offering with a thousand consumers would
//! otherwise cost two thousand requests (a read and an apply per workspace)
//! on every resync, and one new workspace would cost as much again.
//!
//! A binding counts as confirmed for [`RECONFIRM`] plus a share of
//! [`SPREAD`] that depends on its workspace, so the look-agains of a
//! thousand bindings confirmed together spread over minutes; a change of
//! what the offering wants in its bindings (another export identity, other
//! accepted claims) confirms none of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sync_agent::api::hash::sha1_hex;

/// How long a binding seen bound is trusted before kcp is asked again
/// (a consumer that deleted it gets it back at the latest then).
pub const RECONFIRM: Duration = Duration::from_secs(600);
/// Range over which the look-agains of different workspaces spread.
pub const SPREAD: Duration = Duration::from_secs(300);

/// Bindings confirmed bound, by offering UID.
#[derive(Debug, Default)]
pub struct ConfirmedBindings {
    offerings: Mutex<HashMap<String, Offering>>,
}

#[derive(Debug, Default)]
struct Offering {
    /// Hash of the binding the offering wants, when its paths were confirmed.
    desired: String,
    /// When each workspace's binding was last seen bound.
    paths: HashMap<String, Instant>,
}

/// When a binding confirmed at `at` is due for another look.
fn due(path: &str, at: Instant) -> Instant {
    let share = sha1_hex(path)
        .get(..8)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_default();
    let spread = SPREAD.as_millis() as u64;
    at + RECONFIRM + Duration::from_millis(if spread == 0 { 0 } else { share % spread })
}

/// A short digest of the binding an offering wants.
pub fn digest(desired: &serde_json::Value) -> String {
    sha1_hex(&desired.to_string())
}

impl ConfirmedBindings {
    fn offerings(&self) -> std::sync::MutexGuard<'_, HashMap<String, Offering>> {
        self.offerings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the binding in `path` was seen bound, as `desired` (a
    /// [`digest`]), recently enough to skip asking kcp.
    pub fn is_fresh(&self, offering: &str, desired: &str, path: &str, now: Instant) -> bool {
        self.offerings().get(offering).is_some_and(|o| {
            o.desired == desired && o.paths.get(path).is_some_and(|at| now < due(path, *at))
        })
    }

    /// Records that the binding in `path` is bound as `desired`; a new
    /// `desired` forgets the offering's other confirmations.
    pub fn confirm(&self, offering: &str, desired: &str, path: &str, now: Instant) {
        let mut offerings = self.offerings();
        let entry = offerings.entry(offering.to_string()).or_default();
        if entry.desired != desired {
            entry.desired = desired.to_string();
            entry.paths.clear();
        }
        entry.paths.insert(path.to_string(), now);
    }

    /// Forgets the binding in `path` (not bound, failed, or unbound).
    pub fn forget_path(&self, offering: &str, path: &str) {
        if let Some(entry) = self.offerings().get_mut(offering) {
            entry.paths.remove(path);
        }
    }

    /// Forgets an offering that is gone.
    pub fn forget(&self, offering: &str) {
        self.offerings().remove(offering);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmed_binding_is_fresh_until_it_is_due_and_only_as_confirmed() {
        let confirmed = ConfirmedBindings::default();
        let now = Instant::now();
        assert!(!confirmed.is_fresh("o", "d1", "root:a", now));
        confirmed.confirm("o", "d1", "root:a", now);
        assert!(confirmed.is_fresh("o", "d1", "root:a", now + Duration::from_secs(60)));
        assert!(
            !confirmed.is_fresh("o", "d1", "root:b", now),
            "another path"
        );
        assert!(
            !confirmed.is_fresh("p", "d1", "root:a", now),
            "another offering"
        );
        assert!(
            !confirmed.is_fresh("o", "d2", "root:a", now),
            "another binding"
        );
        assert!(!confirmed.is_fresh("o", "d1", "root:a", now + RECONFIRM + SPREAD));
    }

    #[test]
    fn a_new_binding_forgets_the_old_confirmations_and_forgetting_works() {
        let confirmed = ConfirmedBindings::default();
        let now = Instant::now();
        confirmed.confirm("o", "d1", "root:a", now);
        confirmed.confirm("o", "d2", "root:b", now);
        assert!(!confirmed.is_fresh("o", "d2", "root:a", now));
        assert!(confirmed.is_fresh("o", "d2", "root:b", now));
        confirmed.forget_path("o", "root:b");
        assert!(!confirmed.is_fresh("o", "d2", "root:b", now));
        confirmed.confirm("o", "d2", "root:b", now);
        confirmed.forget("o");
        assert!(!confirmed.is_fresh("o", "d2", "root:b", now));
    }

    #[test]
    fn look_agains_spread_over_the_range() {
        let now = Instant::now();
        let dues: std::collections::BTreeSet<Instant> =
            (0..100).map(|i| due(&format!("root:c{i}"), now)).collect();
        assert!(dues.len() > 50, "workspaces are due at different times");
        assert!(
            dues.iter()
                .all(|d| *d >= now + RECONFIRM && *d < now + RECONFIRM + SPREAD)
        );
    }
}

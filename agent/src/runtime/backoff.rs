//! The one retry policy of both binaries: exponential delays with a cap,
//! counted per key where a controller retries many objects at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use super::shrink::Shrink;

/// Delays that double from `first` after each consecutive failure, never
/// above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// A policy starting at `first` and capped at `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The delay before the next try after `failures` consecutive failures
    /// (`1` for the first): `first · 2^(failures-1)`, at most `max`. Zero
    /// failures need no delay.
    pub fn after(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(31);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// Consecutive failures per key, for a controller that backs off each
/// object on its own.
#[derive(Debug)]
pub struct Failures<K> {
    policy: Backoff,
    counts: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash> Failures<K> {
    /// No failures yet, retried by `policy`.
    pub fn new(policy: Backoff) -> Self {
        Self {
            policy,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more failure of `key` and returns how long to wait before
    /// its next try.
    pub fn failed(&self, key: K) -> Duration {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        self.policy.after(*count)
    }

    /// Forgets the failures of `key`: its next failure starts from `first`.
    pub fn succeeded(&self, key: &K) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.remove(key).is_some() {
            counts.shrink_when_sparse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

    #[test]
    fn delays_double_from_the_first_and_stop_at_the_cap() {
        let secs: Vec<u64> = (0..9).map(|n| POLICY.after(n).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(POLICY.after(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn failures_count_per_key_and_reset_on_success() {
        let failures = Failures::new(POLICY);
        assert_eq!(failures.failed("a"), Duration::from_secs(1));
        assert_eq!(failures.failed("a"), Duration::from_secs(2));
        assert_eq!(failures.failed("b"), Duration::from_secs(1));
        failures.succeeded(&"a");
        assert_eq!(failures.failed("a"), Duration::from_secs(1));
        assert_eq!(failures.failed("b"), Duration::from_secs(2));
    }
}

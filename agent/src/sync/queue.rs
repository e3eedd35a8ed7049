//! The work queue of a sync worker: which objects are waiting, being
//! reconciled, or due again. A key waits at most once; a key that changes
//! while it is being reconciled runs once more afterwards, unless the only
//! changes were the echoes of that reconcile's own writes; failures are
//! retried per key with [`Failures`]; requeues wait on a timer. Depth,
//! adds, retries and the time keys wait and take are counted as
//! controller-runtime's `workqueue_*` metrics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::DynamicObject;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge};
use tokio::sync::Notify;

use super::echo::Echoes;
use super::identity::{RemoteKey, Side};
use crate::runtime::backoff::{Backoff, Failures};
use crate::runtime::shrink::Shrink;

/// A sync worker's queue of object keys; clones share it.
#[derive(Clone, Debug)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes [`WorkQueue::next`] when a key is added.
    added: Notify,
    failures: Failures<RemoteKey>,
    echoes: Arc<Echoes>,
    metrics: QueueMetrics,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.metrics.depth.set(0);
    }
}

/// A queue's series of controller-runtime's `workqueue_*` metrics.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    /// Keys waiting (`workqueue_depth`).
    pub depth: IntGauge,
    /// Keys queued (`workqueue_adds_total`).
    pub adds: IntCounter,
    /// Keys queued again after a failure (`workqueue_retries_total`).
    pub retries: IntCounter,
    /// Seconds a key waited (`workqueue_queue_duration_seconds`).
    pub queue_duration: Histogram,
    /// Seconds a key was worked on (`workqueue_work_duration_seconds`).
    pub work_duration: Histogram,
}

impl QueueMetrics {
    /// Series registered nowhere, for a queue nobody scrapes.
    pub fn unregistered() -> Self {
        let histogram = |name: &str| {
            Histogram::with_opts(HistogramOpts::new(name, name)).expect("valid metric")
        };
        Self {
            depth: IntGauge::new("depth", "depth").expect("valid metric"),
            adds: IntCounter::new("adds", "adds").expect("valid metric"),
            retries: IntCounter::new("retries", "retries").expect("valid metric"),
            queue_duration: histogram("queue"),
            work_duration: histogram("work"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Keys waiting, oldest first with when they were queued, and the same
    /// keys as a set.
    waiting: VecDeque<(RemoteKey, Instant)>,
    queued: HashSet<RemoteKey>,
    /// Which endpoint serves each logical cluster.
    routes: HashMap<String, String>,
    /// When a kcp change to a key was first seen (for the latency metric).
    observed: HashMap<RemoteKey, Instant>,
    /// Keys being reconciled now.
    in_flight: HashSet<RemoteKey>,
    /// Keys that changed while being reconciled.
    dirty: HashSet<RemoteKey>,
    /// Versions that watches saw of keys being reconciled: rerun afterwards
    /// unless they turn out to be echoes of the reconcile's own writes.
    pending: HashMap<RemoteKey, Vec<(Side, String)>>,
    /// Keys with a retry timer pending.
    scheduled: HashSet<RemoteKey>,
}

impl State {
    fn add(&mut self, key: RemoteKey) -> bool {
        if self.in_flight.contains(&key) {
            self.dirty.insert(key);
            false
        } else if self.queued.insert(key.clone()) {
            self.waiting.push_back((key, Instant::now()));
            true
        } else {
            false
        }
    }

    /// Holds back a watch event of a key being reconciled; the reconcile's
    /// end decides whether it was an echo. Returns whether it was held back.
    fn defer(&mut self, key: &RemoteKey, side: Side, object: &DynamicObject) -> bool {
        match (self.in_flight.contains(key), object.resource_version()) {
            (true, Some(version)) => {
                self.pending
                    .entry(key.clone())
                    .or_default()
                    .push((side, version));
                true
            }
            _ => false,
        }
    }
}

impl WorkQueue {
    /// An empty queue; `echoes` are the worker's own writes, `retry` the
    /// backoff of failing keys, `metrics` where it is counted.
    pub fn new(echoes: Arc<Echoes>, retry: Backoff, metrics: QueueMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                added: Notify::new(),
                failures: Failures::new(retry),
                echoes,
                metrics,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` (once, however often it is added before it runs).
    pub fn add(&self, key: RemoteKey) {
        let queued = {
            let mut state = self.state();
            let queued = state.add(key);
            self.inner.metrics.depth.set(depth(&state));
            queued
        };
        if queued {
            self.inner.metrics.adds.inc();
            self.inner.added.notify_one();
        }
    }

    /// Records which endpoint serves a logical cluster.
    pub fn route(&self, cluster: &str, endpoint: &str) {
        let mut state = self.state();
        if state.routes.get(cluster).map(String::as_str) != Some(endpoint) {
            state
                .routes
                .insert(cluster.to_string(), endpoint.to_string());
        }
    }

    /// A kcp watch at `endpoint` saw `object`: queues it unless it is the
    /// echo of our own write (now, or once the running reconcile ends).
    pub fn observed_kcp(&self, key: RemoteKey, endpoint: &str, object: &DynamicObject) {
        if self.inner.echoes.is_echo(&key, Side::Kcp, object) {
            return;
        }
        {
            let mut state = self.state();
            if state.defer(&key, Side::Kcp, object) {
                return;
            }
            // The change is seen now; its latency runs until the local write.
            state
                .observed
                .entry(key.clone())
                .or_insert_with(Instant::now);
        }
        self.route(&key.cluster, endpoint);
        self.add(key);
    }

    /// The watch of local copies saw `object`: queues its kcp object unless
    /// the change is the echo of our own write.
    pub fn observed_local(&self, key: RemoteKey, object: &DynamicObject) {
        if self.inner.echoes.is_echo(&key, Side::Service, object)
            || self.state().defer(&key, Side::Service, object)
        {
            return;
        }
        self.add(key);
    }

    /// Waits for the next key to reconcile and marks it in flight until the
    /// returned claim is dropped. Keys of logical clusters that no endpoint
    /// serves yet are dropped: the kcp watch brings them again.
    pub async fn next(&self) -> Claim {
        loop {
            // Registered before looking, so an add in between is not lost.
            let added = self.inner.added.notified();
            if let Some(claim) = self.pop() {
                return claim;
            }
            added.await;
        }
    }

    fn pop(&self) -> Option<Claim> {
        let mut state = self.state();
        while let Some((key, queued_at)) = state.waiting.pop_front() {
            state.queued.remove(&key);
            // Drained: the room a burst took goes back; while keys wait,
            // it would only be taken again.
            if state.waiting.is_empty() {
                state.waiting.shrink_when_sparse();
                state.queued.shrink_when_sparse();
            }
            self.inner.metrics.depth.set(depth(&state));
            let Some(endpoint) = state.routes.get(&key.cluster).cloned() else {
                continue;
            };
            self.inner
                .metrics
                .queue_duration
                .observe(queued_at.elapsed().as_secs_f64());
            state.in_flight.insert(key.clone());
            return Some(Claim {
                queue: self.clone(),
                key,
                endpoint,
                started: Instant::now(),
            });
        }
        None
    }

    /// Queues `key` again after `after`, unless a timer for it is pending.
    pub fn schedule(&self, key: RemoteKey, after: Duration) {
        if !self.state().scheduled.insert(key.clone()) {
            return;
        }
        // The timer does not keep a stopped worker's queue alive.
        let queue: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(inner) = queue.upgrade() {
                let queue = WorkQueue { inner };
                let mut state = queue.state();
                state.scheduled.remove(&key);
                state.scheduled.shrink_when_sparse();
                drop(state);
                queue.add(key);
            }
        });
    }

    fn release(&self, key: &RemoteKey) {
        let rerun = {
            let mut state = self.state();
            state.in_flight.remove(key);
            let seen = state.pending.remove(key).unwrap_or_default();
            let dirty = state.dirty.remove(key);
            state.in_flight.shrink_when_sparse();
            state.pending.shrink_when_sparse();
            state.dirty.shrink_when_sparse();
            dirty
                || seen
                    .iter()
                    .any(|(side, version)| !self.inner.echoes.is_echo_version(key, *side, version))
        };
        if rerun {
            self.add(key.clone());
        }
    }
}

/// A key being reconciled. Dropping it (also when the reconcile panics)
/// ends the reconcile: a key that changed meanwhile is queued again.
#[derive(Debug)]
pub struct Claim {
    queue: WorkQueue,
    key: RemoteKey,
    endpoint: String,
    started: Instant,
}

impl Claim {
    /// The object.
    pub fn key(&self) -> &RemoteKey {
        &self.key
    }

    /// The endpoint that serves its logical cluster.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The reconcile succeeded: the key's failures are forgotten and it is
    /// looked at again after `requeue`, if given. Returns when the kcp change
    /// that woke it was first seen.
    pub fn succeeded(self, requeue: Option<Duration>) -> Option<Instant> {
        let queue = self.queue.clone();
        queue.inner.failures.succeeded(&self.key);
        let seen = {
            let mut state = queue.state();
            let seen = state.observed.remove(&self.key);
            state.observed.shrink_when_sparse();
            seen
        };
        let key = self.key.clone();
        drop(self);
        if let Some(after) = requeue {
            queue.schedule(key, after);
        }
        seen
    }

    /// The reconcile failed: the key is retried after its backoff, which is
    /// returned.
    pub fn failed(self) -> Duration {
        let queue = self.queue.clone();
        let after = queue.inner.failures.failed(self.key.clone());
        let key = self.key.clone();
        drop(self);
        queue.inner.metrics.retries.inc();
        queue.schedule(key, after);
        after
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.queue
            .inner
            .metrics
            .work_duration
            .observe(self.started.elapsed().as_secs_f64());
        self.queue.release(&self.key);
    }
}

fn depth(state: &State) -> i64 {
    i64::try_from(state.waiting.len()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;

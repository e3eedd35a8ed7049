//! What the agent's kube-runtime controllers reconcile with: the shared
//! context and the consecutive failures per object that their error
//! policies back off by (the one [`Backoff`] policy of the agent).

use std::sync::Arc;
use std::time::Duration;

use kube::{Resource, ResourceExt};

use crate::context::Context;
use crate::runtime::backoff::{Backoff, Failures};

/// The state of one controller's reconciles.
#[derive(Debug)]
pub struct Reconciler {
    /// What every controller shares.
    pub ctx: Arc<Context>,
    failures: Failures<String>,
}

impl Reconciler {
    /// Reconciles with `ctx`; failing objects are retried by `retry`.
    pub fn new(ctx: Arc<Context>, retry: Backoff) -> Self {
        Self {
            ctx,
            failures: Failures::new(retry),
        }
    }

    /// A reconcile of `object` succeeded: its next failure backs off from
    /// the start.
    pub fn succeeded(&self, object: &impl Resource) {
        self.failures.succeeded(&key(object));
    }

    /// A reconcile of `object` failed: how long to wait before the next.
    pub fn failed(&self, object: &impl Resource) -> Duration {
        self.failures.failed(key(object))
    }
}

fn key(object: &impl Resource) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

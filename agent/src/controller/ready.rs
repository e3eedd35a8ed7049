//! Readiness of a leading replica: `/readyz` turns ready once every
//! controller's watches have listed their objects once. Before that a
//! reconcile would see an incomplete picture (no PublishedResources yet).

use std::hash::Hash;
use std::sync::Arc;

use kube_runtime::reflector::{Lookup, Store};
use tokio::sync::oneshot;
use tracing::info;

use crate::runtime::http::Health;

/// A controller's report that its caches are synced; dropped unsent when
/// the controller stops before that.
#[derive(Debug)]
pub struct Synced(oneshot::Sender<()>);

impl Synced {
    /// A report and what [`ready_when_synced`] waits on.
    pub fn channel() -> (Self, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        (Self(sender), receiver)
    }

    /// Reports the caches synced.
    pub fn done(self) {
        let _ = self.0.send(());
    }

    /// Reports once `store` has its first full listing (never, if its
    /// watch stops before).
    pub async fn when_ready<K>(self, store: Store<K>)
    where
        K: Lookup + Clone + 'static,
        K::DynamicType: Eq + Hash + Clone,
    {
        if store.wait_until_ready().await.is_ok() {
            self.done();
        }
    }
}

/// Keeps `health` not ready until every controller reported its caches
/// synced.
pub async fn ready_when_synced(health: Arc<Health>, synced: Vec<oneshot::Receiver<()>>) {
    health.set_ready(false);
    for report in synced {
        if report.await.is_err() {
            // That controller stopped first: the replica is stopping.
            return;
        }
    }
    info!("The controllers' caches are synced; ready");
    health.set_ready(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_once_every_controller_synced() {
        let health = Arc::new(Health::default());
        health.set_ready(true);
        let (first, first_report) = Synced::channel();
        let (second, second_report) = Synced::channel();
        let waiting = tokio::spawn(ready_when_synced(
            health.clone(),
            vec![first_report, second_report],
        ));
        tokio::task::yield_now().await;
        assert!(!health.is_ready(), "not ready while caches fill");
        second.done();
        tokio::task::yield_now().await;
        assert!(!health.is_ready(), "one controller is still listing");
        first.done();
        waiting.await.expect("finishes");
        assert!(health.is_ready());
    }

    #[tokio::test]
    async fn a_controller_that_stopped_first_leaves_it_not_ready() {
        let health = Arc::new(Health::default());
        let (stopped, report) = Synced::channel();
        drop(stopped);
        ready_when_synced(health.clone(), vec![report]).await;
        assert!(!health.is_ready());
    }

    #[tokio::test]
    async fn a_store_reports_once_its_first_listing_is_in() {
        let (store, mut writer) =
            kube_runtime::reflector::store::<k8s_openapi::api::core::v1::ConfigMap>();
        let (synced, mut report) = Synced::channel();
        let reporting = tokio::spawn(synced.when_ready(store));
        tokio::task::yield_now().await;
        assert!(report.try_recv().is_err(), "nothing listed yet");
        writer.apply_watcher_event(&kube_runtime::watcher::Event::Init);
        writer.apply_watcher_event(&kube_runtime::watcher::Event::InitDone);
        reporting.await.expect("reports");
        assert!(report.try_recv().is_ok());
    }
}

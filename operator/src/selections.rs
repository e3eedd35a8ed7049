//! Watches of the consumer workspaces an offering selects by label: a
//! child workspace of the selector's parent that becomes Ready, or leaves
//! the selection, wakes its offering at once instead of at the next
//! resync. One watch per offering with a selector, through the offering's
//! own kcp credentials; the resync still catches anything a watch missed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use sync_agent::api::hash::sha1_hex;
use sync_agent::api::kcp::tenancy_v1alpha1::Workspace;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::api::PublishedOffering;
use crate::controller::Watched;
use crate::kcp::Kcp;

/// How long one watch request runs before kcp ends it and the watch goes
/// on from where it was; shorter than the kcp client's read timeout, so a
/// quiet watch is not taken for a dead connection.
const WATCH_SECONDS: u32 = 25;

/// How often a watch that keeps failing is warned about.
const WATCH_WARNING_EVERY: Duration = Duration::from_secs(300);

/// The selection watches of every offering, and the wake-ups they send.
#[derive(Debug)]
pub struct Selections {
    wake: mpsc::UnboundedSender<ObjectRef<Watched>>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<Watched>>>>,
    watches: Mutex<HashMap<ObjectRef<PublishedOffering>, Watch>>,
}

/// One offering's watch.
#[derive(Debug)]
struct Watch {
    /// A digest of what it watches: kcp credentials, parent and selector.
    what: String,
    task: AbortHandle,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Default for Selections {
    fn default() -> Self {
        let (wake, woken) = mpsc::unbounded_channel();
        Self {
            wake,
            woken: Mutex::new(Some(woken)),
            watches: Mutex::default(),
        }
    }
}

impl Selections {
    /// The offerings to reconcile because their selection changed, for
    /// the controller; the first call gets them, later ones an empty stream.
    pub fn woken(&self) -> impl Stream<Item = ObjectRef<Watched>> + Send + 'static {
        let woken = self.woken.lock().unwrap_or_else(|p| p.into_inner()).take();
        futures::stream::unfold(woken, |woken| async move {
            let mut woken = woken?;
            let next = woken.recv().await?;
            Some((next, Some(woken)))
        })
    }

    /// Watches the workspaces `offering` selects through `kcp`, or stops
    /// watching when it selects none; a watch of the same selection with
    /// the same credentials is kept.
    pub fn follow(&self, offering: &PublishedOffering, kcp: &Kcp) {
        let key = key(offering);
        let selector = offering
            .spec
            .consumers
            .as_ref()
            .and_then(|c| c.selector.as_ref());
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let Some(selector) = selector else {
            watches.remove(&key);
            return;
        };
        let labels = selector
            .label_selector
            .clone()
            .map(kube::core::Selector::try_from)
            .transpose();
        // An invalid selector is reported by the reconcile; nothing to watch.
        let (Ok(labels), Ok(client)) = (labels, kcp.client(&selector.parent)) else {
            watches.remove(&key);
            return;
        };
        let labels = labels.map(|l| l.to_string()).unwrap_or_default();
        let what = sha1_hex(&format!(
            "{}\n{}\n{labels}",
            serde_json::to_string(kcp.kubeconfig()).unwrap_or_default(),
            selector.parent
        ));
        if watches.get(&key).is_some_and(|w| w.what == what) {
            return;
        }
        info!(parent = %selector.parent, selector = %labels, "Watching the selected consumer workspaces");
        let mut config = watcher::Config::default().timeout(WATCH_SECONDS);
        if !labels.is_empty() {
            config = config.labels(&labels);
        }
        let task = tokio::spawn(watch(
            Api::all(client),
            config,
            ObjectRef::new(&key.name).within(key.namespace.as_deref().unwrap_or_default()),
            self.wake.clone(),
        ))
        .abort_handle();
        watches.insert(key, Watch { what, task });
    }

    /// Stops watching for `offering`.
    pub fn forget(&self, offering: &PublishedOffering) {
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(offering));
    }
}

/// Wakes `offering` whenever [`Readiness::observe`] says so.
async fn watch(
    workspaces: Api<Workspace>,
    config: watcher::Config,
    offering: ObjectRef<Watched>,
    wake: mpsc::UnboundedSender<ObjectRef<Watched>>,
) {
    let mut readiness = Readiness::default();
    let mut warned: Option<Instant> = None;
    let mut events = watcher(workspaces, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(event) => readiness.observe(&event),
            // The watch retries with backoff; meanwhile new workspaces
            // wait for the offering's resync, which a person should know.
            Err(error) if warned.is_none_or(|at| at.elapsed() >= WATCH_WARNING_EVERY) => {
                warn!(%error, "Cannot watch the selected consumer workspaces; they are bound at each resync until the watch works");
                warned = Some(Instant::now());
                false
            }
            Err(error) => {
                debug!(%error, "Watching consumer workspaces");
                false
            }
        };
        if changed && wake.send(offering.clone()).is_err() {
            return;
        }
    }
}

/// Which selected workspaces are Ready, as a watch saw them.
#[derive(Debug, Default)]
struct Readiness {
    ready: HashMap<String, bool>,
}

impl Readiness {
    /// Takes in one event; whether the offering must look again: a
    /// selected workspace turned Ready or stopped being Ready, left the
    /// selection, or the watch listed (a change may have passed unseen).
    /// Other updates of a workspace change nothing it binds.
    fn observe(&mut self, event: &watcher::Event<Workspace>) -> bool {
        match event {
            watcher::Event::Apply(ws) => {
                let now = is_ready(ws);
                self.ready.insert(ws.name_any(), now) != Some(now)
            }
            watcher::Event::Delete(ws) => self.ready.remove(&ws.name_any()).is_some(),
            watcher::Event::Init => {
                self.ready.clear();
                false
            }
            watcher::Event::InitApply(ws) => {
                self.ready.insert(ws.name_any(), is_ready(ws));
                false
            }
            // Every listing wakes the offering, the first too: a workspace
            // that changed between the reading of the reconcile that
            // started the watch and this listing was seen by neither.
            watcher::Event::InitDone => true,
        }
    }
}

fn is_ready(workspace: &Workspace) -> bool {
    workspace
        .status
        .as_ref()
        .is_some_and(|s| s.phase == "Ready")
}

fn key(offering: &PublishedOffering) -> ObjectRef<PublishedOffering> {
    ObjectRef::from_obj(offering)
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    fn workspace(name: &str, phase: &str) -> Workspace {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tenancy.kcp.io/v1alpha1", "kind": "Workspace",
            "metadata": {"name": name}, "spec": {}, "status": {"phase": phase},
        }))
        .expect("workspace")
    }

    #[test]
    fn only_readiness_changes_and_listings_wake_the_offering() {
        let mut readiness = Readiness::default();
        let first_listing = [
            Event::Init,
            Event::InitApply(workspace("a", "Ready")),
            Event::InitApply(workspace("b", "Initializing")),
            Event::InitDone,
        ];
        let (last, filling) = first_listing.split_last().expect("events");
        assert!(filling.iter().all(|e| !readiness.observe(e)));
        assert!(readiness.observe(last), "the first listing wakes once");

        assert!(
            !readiness.observe(&Event::Apply(workspace("a", "Ready"))),
            "no change"
        );
        assert!(
            readiness.observe(&Event::Apply(workspace("b", "Ready"))),
            "turned Ready"
        );
        assert!(
            readiness.observe(&Event::Apply(workspace("c", "Ready"))),
            "newly selected"
        );
        assert!(
            readiness.observe(&Event::Apply(workspace("a", "Unavailable"))),
            "not Ready"
        );
        assert!(
            readiness.observe(&Event::Delete(workspace("c", "Ready"))),
            "left"
        );
        assert!(
            !readiness.observe(&Event::Delete(workspace("c", "Ready"))),
            "already gone"
        );

        let relisting = [Event::Init, Event::InitApply(workspace("b", "Ready"))];
        assert!(relisting.iter().all(|e| !readiness.observe(e)));
        assert!(readiness.observe(&Event::InitDone), "a relist wakes once");
        assert_eq!(
            readiness.ready.len(),
            1,
            "what a relist no longer lists goes"
        );
    }
}

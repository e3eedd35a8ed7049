//! What a worker's watches last saw, kept in memory so a reconcile reads it
//! instead of asking the servers again (upstream reads through informer
//! caches the same way). A worker keeps one mirror of the kcp objects per
//! virtual workspace endpoint and one of its local copies.
//!
//! Objects are held as compact JSON without their managedFields: a parsed
//! object takes several times its JSON's bytes, and thousands of them are
//! held at once; a reconcile parses the one or two it reads.
//!
//! The agent's own writes are put into the mirror as soon as they return,
//! so the next reconcile of the object does not act on the version before
//! them. Versions only move forward: an event or write older than what the
//! mirror holds is ignored, and a deleted object keeps a short-lived
//! tombstone so a late write cannot bring it back. A stale read is
//! harmless: writes that depend on the version carry it and fail with a
//! conflict, and the watch event that makes the mirror current wakes the
//! object again.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::DynamicObject;
use kube_runtime::watcher::Event;
use tokio::sync::watch;

use crate::runtime::shrink::Shrink;

/// How long a deleted object's version is remembered at least: longer than
/// a reconcile may take, so a write that started before the deletion has
/// returned. Older tombstones go at the worker's next [`Mirror::sweep`].
const TOMBSTONE_TTL: Duration = Duration::from_secs(120);

/// Where an object lives: its `kcp.io/cluster` annotation (empty on the
/// service cluster), namespace and name.
type Address = (String, String, String);

fn address(object: &DynamicObject) -> Address {
    (
        object
            .annotations()
            .get(crate::api::kcp::CLUSTER_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        object.namespace().unwrap_or_default(),
        object.name_any(),
    )
}

fn version(object: &DynamicObject) -> Option<u64> {
    object.resource_version()?.parse().ok()
}

/// Objects by address, found by a key derived from each object.
pub struct Mirror<K> {
    state: Mutex<State<K>>,
    key_of: fn(&DynamicObject) -> Option<K>,
    synced: watch::Sender<bool>,
}

/// One object as the mirror holds it.
struct Held<K> {
    version: Option<u64>,
    key: K,
    /// The object as JSON, without its managedFields.
    json: Box<[u8]>,
}

impl<K> Held<K> {
    fn object(&self) -> Option<DynamicObject> {
        serde_json::from_slice(&self.json).ok()
    }
}

struct State<K> {
    /// Objects by address, shared with `by_key`.
    objects: HashMap<Arc<Address>, Held<K>>,
    /// Addresses by key; almost always one, so a vector, not a set.
    by_key: HashMap<K, Vec<Arc<Address>>>,
    tombstones: HashMap<Address, (u64, Instant)>,
    /// Addresses listed since the watch (re)started, until the list is done.
    relisted: Option<HashSet<Address>>,
}

impl<K> std::fmt::Debug for Mirror<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let objects = self
            .state
            .lock()
            .map(|s| s.objects.len())
            .unwrap_or_default();
        f.debug_struct("Mirror").field("objects", &objects).finish()
    }
}

impl<K: Clone + Eq + Hash> Mirror<K> {
    /// An empty mirror finding objects by `key_of`; objects without a key
    /// are not kept.
    pub fn new(key_of: fn(&DynamicObject) -> Option<K>) -> Self {
        Self {
            state: Mutex::new(State {
                objects: HashMap::new(),
                by_key: HashMap::new(),
                tombstones: HashMap::new(),
                relisted: None,
            }),
            key_of,
            synced: watch::Sender::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes in one watch event.
    pub fn observe(&self, event: &Event<DynamicObject>) {
        match event {
            Event::Apply(object) => self.apply(object),
            Event::Delete(object) => self.remove(object),
            Event::Init => self.state().relisted = Some(HashSet::new()),
            Event::InitApply(object) => {
                self.apply(object);
                if let Some(listed) = self.state().relisted.as_mut() {
                    listed.insert(address(object));
                }
            }
            Event::InitDone => {
                let mut state = self.state();
                if let Some(listed) = state.relisted.take() {
                    let gone: Vec<Arc<Address>> = state
                        .objects
                        .keys()
                        .filter(|a| !listed.contains(*a))
                        .cloned()
                        .collect();
                    for address in gone {
                        state.drop_object(&address);
                    }
                }
                state.tombstones.clear();
                state.tombstones.shrink_when_sparse();
                drop(state);
                self.synced.send_replace(true);
            }
        }
    }

    /// Takes in an object as a write or a watch returned it, unless the
    /// mirror already holds a newer version or saw it deleted.
    pub fn apply(&self, object: &DynamicObject) {
        let Some(key) = (self.key_of)(object) else {
            return;
        };
        let address = address(object);
        let incoming = version(object);
        let mut state = self.state();
        let held = state.objects.get(&address).and_then(|h| h.version);
        let deleted = state.tombstones.get(&address).map(|(v, _)| *v);
        if let Some(incoming) = incoming
            && (held.is_some_and(|h| h > incoming) || deleted.is_some_and(|d| d >= incoming))
        {
            return;
        }
        state.tombstones.remove(&address);
        // Nothing reads the field history; it is most of an object's size.
        let mut object = object.clone();
        object.metadata.managed_fields = None;
        let Ok(json) = serde_json::to_vec(&object) else {
            return;
        };
        let (address, old_key) = match state.objects.get_key_value(&address) {
            Some((shared, held)) => (shared.clone(), Some(held.key.clone())),
            None => (Arc::new(address), None),
        };
        match old_key {
            Some(old_key) if old_key == key => {}
            old_key => {
                if let Some(old_key) = old_key {
                    state.unindex(&old_key, &address);
                }
                state
                    .by_key
                    .entry(key.clone())
                    .or_default()
                    .push(address.clone());
            }
        }
        let held = Held {
            version: incoming,
            key,
            json: json.into_boxed_slice(),
        };
        state.objects.insert(address, held);
    }

    /// Forgets an object that was deleted (as the delete returned or a watch
    /// reported it).
    pub fn remove(&self, object: &DynamicObject) {
        let address = address(object);
        let mut state = self.state();
        if let Some(current) = state.objects.get(&address)
            && let (Some(held), Some(deleted)) = (current.version, version(object))
            && held > deleted
        {
            // A newer object of that name exists already.
            return;
        }
        state.drop_object(&address);
        if let Some(deleted) = version(object) {
            state.tombstones.insert(address, (deleted, Instant::now()));
        }
    }

    /// The objects with this key (more than one means ambiguity).
    pub fn get(&self, key: &K) -> Vec<DynamicObject> {
        let state = self.state();
        state
            .by_key
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|a| state.objects.get(a).and_then(Held::object))
            .collect()
    }

    /// Forgets the tombstones older than their TTL; the worker calls this
    /// periodically, so a mirror that goes quiet after a mass deletion does
    /// not keep them.
    pub fn sweep(&self) {
        let mut state = self.state();
        let now = Instant::now();
        state
            .tombstones
            .retain(|_, (_, at)| now.duration_since(*at) < TOMBSTONE_TTL);
        state.tombstones.shrink_when_sparse();
    }

    /// Waits until the watch has listed everything once.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }
}

impl<K: Eq + Hash> State<K> {
    fn drop_object(&mut self, address: &Address) {
        if let Some(held) = self.objects.remove(address) {
            self.objects.shrink_when_sparse();
            self.unindex(&held.key, address);
        }
    }

    fn unindex(&mut self, key: &K, address: &Address) {
        if let Some(addresses) = self.by_key.get_mut(key) {
            addresses.retain(|a| **a != *address);
            if addresses.is_empty() {
                self.by_key.remove(key);
                self.by_key.shrink_when_sparse();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, version: &str, color: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "g/v1", "kind": "W",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": version,
                         "labels": {"owner": color}},
        }))
        .unwrap()
    }

    fn by_owner(object: &DynamicObject) -> Option<String> {
        object.labels().get("owner").cloned()
    }

    fn versions(mirror: &Mirror<String>, key: &str) -> Vec<String> {
        let mut found: Vec<String> = mirror
            .get(&key.to_string())
            .iter()
            .map(|o| format!("{}@{}", o.name_any(), o.resource_version().unwrap()))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn versions_only_move_forward() {
        let mirror = Mirror::new(by_owner);
        mirror.apply(&object("a", "5", "x"));
        mirror.apply(&object("a", "4", "x"));
        assert_eq!(versions(&mirror, "x"), ["a@5"]);
        mirror.apply(&object("a", "6", "x"));
        assert_eq!(versions(&mirror, "x"), ["a@6"]);
    }

    #[test]
    fn a_deleted_object_is_not_brought_back_by_a_late_write() {
        let mirror = Mirror::new(by_owner);
        mirror.apply(&object("a", "5", "x"));
        mirror.remove(&object("a", "7", "x"));
        mirror.apply(&object("a", "6", "x"));
        assert!(versions(&mirror, "x").is_empty());
        // A new object of the same name comes later, with a newer version.
        mirror.apply(&object("a", "9", "x"));
        assert_eq!(versions(&mirror, "x"), ["a@9"]);
    }

    #[test]
    fn a_changed_key_moves_the_object_and_several_objects_share_a_key() {
        let mirror = Mirror::new(by_owner);
        mirror.apply(&object("a", "1", "x"));
        mirror.apply(&object("b", "2", "x"));
        assert_eq!(versions(&mirror, "x"), ["a@1", "b@2"]);
        mirror.apply(&object("a", "3", "y"));
        assert_eq!(versions(&mirror, "x"), ["b@2"]);
        assert_eq!(versions(&mirror, "y"), ["a@3"]);
    }

    #[test]
    fn a_mirror_emptied_by_deletions_gives_its_tables_back() {
        let mirror = Mirror::new(by_owner);
        let objects: Vec<DynamicObject> = (0..10_000)
            .map(|i| object(&format!("w{i}"), &(i + 1).to_string(), &format!("o{i}")))
            .collect();
        objects.iter().for_each(|o| mirror.apply(o));
        let full = mirror.state().objects.capacity();
        assert!(full >= 10_000);
        objects.iter().for_each(|o| mirror.remove(o));
        let state = mirror.state();
        assert!(state.objects.is_empty() && state.by_key.is_empty());
        assert!(
            state.objects.capacity() < 100 && state.by_key.capacity() < 100,
            "room for {} objects and {} keys left of {full}",
            state.objects.capacity(),
            state.by_key.capacity()
        );
        // Deleted within the TTL: remembered until a sweep after it.
        assert_eq!(state.tombstones.len(), 10_000);
        drop(state);
        mirror.sweep();
        assert_eq!(mirror.state().tombstones.len(), 10_000, "not expired yet");
    }

    #[test]
    fn tombstones_past_their_ttl_are_swept() {
        let mirror = Mirror::new(by_owner);
        mirror.remove(&object("a", "5", "x"));
        {
            let mut state = mirror.state();
            let old = Instant::now()
                .checked_sub(TOMBSTONE_TTL + Duration::from_secs(1))
                .expect("the clock runs longer than a TTL");
            state.tombstones.values_mut().for_each(|(_, at)| *at = old);
        }
        mirror.remove(&object("b", "6", "x"));
        mirror.sweep();
        let state = mirror.state();
        let left: Vec<&str> = state.tombstones.keys().map(|a| a.2.as_str()).collect();
        assert_eq!(left, ["b"]);
    }

    #[tokio::test]
    async fn a_relist_drops_what_is_gone_and_marks_the_mirror_synced() {
        let mirror = Mirror::new(by_owner);
        mirror.observe(&Event::Apply(object("a", "1", "x")));
        mirror.observe(&Event::Apply(object("b", "2", "x")));
        mirror.observe(&Event::Init);
        mirror.observe(&Event::InitApply(object("b", "3", "x")));
        assert_eq!(versions(&mirror, "x"), ["a@1", "b@3"]);
        mirror.observe(&Event::InitDone);
        assert_eq!(versions(&mirror, "x"), ["b@3"]);
        tokio::time::timeout(Duration::from_secs(1), mirror.wait_synced())
            .await
            .expect("synced after the first list");
    }
}

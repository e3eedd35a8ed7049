//! The echoes of a worker's own writes. Every write the agent makes to a kcp
//! object or its local copy comes back through the watches; without a filter
//! each would wake the object for a reconcile that finds nothing to do. A
//! worker records the resourceVersion each of its writes produced, and a
//! watch event carrying exactly that version is dropped. Any other change
//! bumps the version and wakes the object as before.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::ResourceExt;
use kube::api::DynamicObject;

use crate::runtime::shrink::Shrink;
use crate::sync::identity::{RemoteKey, Side};

/// The versions the last writes produced, per object and side.
#[derive(Debug, Default)]
pub struct Echoes {
    written: Mutex<HashMap<RemoteKey, [Option<String>; 2]>>,
}

fn slot(side: Side) -> usize {
    match side {
        Side::Kcp => 0,
        Side::Service => 1,
    }
}

impl Echoes {
    /// Records that a write left `object` (on `side`) at its current version.
    pub fn wrote(&self, key: &RemoteKey, side: Side, object: &DynamicObject) {
        let Some(version) = object.resource_version() else {
            return;
        };
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.entry(key.clone()).or_default()[slot(side)] = Some(version);
    }

    /// Whether a watch event of `object` on `side` is the echo of our write.
    pub fn is_echo(&self, key: &RemoteKey, side: Side, object: &DynamicObject) -> bool {
        object
            .resource_version()
            .is_some_and(|version| self.is_echo_version(key, side, &version))
    }

    /// Whether `version` on `side` is what our last write there produced.
    pub fn is_echo_version(&self, key: &RemoteKey, side: Side, version: &str) -> bool {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written
            .get(key)
            .is_some_and(|versions| versions[slot(side)].as_deref() == Some(version))
    }

    /// Forgets an object that is gone.
    pub fn forget(&self, key: &RemoteKey) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.remove(key);
        written.shrink_when_sparse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(version: &str) -> DynamicObject {
        let mut object = DynamicObject::new(
            "w",
            &kube::api::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("g", "v1", "W")),
        );
        object.metadata.resource_version = Some(version.into());
        object
    }

    #[test]
    fn only_the_written_version_on_its_side_is_an_echo() {
        let echoes = Echoes::default();
        let key = RemoteKey {
            cluster: "c".into(),
            namespace: "ns".into(),
            name: "w".into(),
        };
        echoes.wrote(&key, Side::Kcp, &object("10"));
        assert!(echoes.is_echo(&key, Side::Kcp, &object("10")));
        assert!(!echoes.is_echo(&key, Side::Kcp, &object("11")));
        assert!(!echoes.is_echo(&key, Side::Service, &object("10")));
        echoes.forget(&key);
        assert!(!echoes.is_echo(&key, Side::Kcp, &object("10")));
    }
}

//! How a local copy on the service cluster is tied to its kcp object: label
//! and annotation keys and hashes bit-exact with upstream api-syncagent, so
//! an agent replacing an upstream one finds every object it synced.

use std::collections::BTreeMap;

use crate::api::hash::sha1_hex;
use kube::ResourceExt;
use kube::api::DynamicObject;

/// Label: logical cluster name of the kcp object.
pub const REMOTE_CLUSTER_LABEL: &str = "syncagent.kcp.io/remote-object-cluster";
/// Label: SHA-1 (hex) of the kcp object's name.
pub const REMOTE_NAME_HASH_LABEL: &str = "syncagent.kcp.io/remote-object-name-hash";
/// Label: SHA-1 (hex) of the kcp object's namespace (namespaced objects only).
pub const REMOTE_NAMESPACE_HASH_LABEL: &str = "syncagent.kcp.io/remote-object-namespace-hash";
/// Label: the agent owning the copy.
pub const AGENT_LABEL: &str = crate::schema::AGENT_NAME_KEY;
/// Annotation: the kcp object's name.
pub const REMOTE_NAME_ANNOTATION: &str = "syncagent.kcp.io/remote-object-name";
/// Annotation: the kcp object's namespace.
pub const REMOTE_NAMESPACE_ANNOTATION: &str = "syncagent.kcp.io/remote-object-namespace";
/// Annotation: the kcp workspace path (with `enableWorkspacePaths`).
pub const REMOTE_PATH_ANNOTATION: &str = "syncagent.kcp.io/remote-object-workspace-path";
/// Finalizer on kcp objects while a local copy may exist.
pub const FINALIZER: &str = "syncagent.kcp.io/cleanup";
/// Annotation on a synced kcp object: the agent that syncs it (upstream
/// #117: who manages this object is visible where the consumer looks).
pub const SYNCED_BY_ANNOTATION: &str = crate::schema::AGENT_NAME_KEY;
/// Annotation on a synced kcp object: its copy on the service cluster,
/// `<namespace>/<name>`, or `<name>` for a cluster-scoped copy.
pub const LOCAL_OBJECT_ANNOTATION: &str = "syncagent.kcp.io/local-object";
/// The annotations a synced kcp object carries while it is held.
pub const MARKS: [&str; 2] = [SYNCED_BY_ANNOTATION, LOCAL_OBJECT_ANNOTATION];

/// Which side an object lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// A consumer workspace in kcp.
    Kcp,
    /// The service cluster.
    Service,
}

impl Side {
    /// `kcp` or `service`, as templates and messages name the side.
    pub fn name(self) -> &'static str {
        match self {
            Side::Kcp => "kcp",
            Side::Service => "service",
        }
    }
}

/// A kcp object's identity: workspace, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteKey {
    /// Logical cluster name.
    pub cluster: String,
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for RemoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}|{}", self.cluster, self.name)
        } else {
            write!(f, "{}|{}/{}", self.cluster, self.namespace, self.name)
        }
    }
}

impl RemoteKey {
    /// The identification labels of its local copy, without the agent label.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (REMOTE_CLUSTER_LABEL.to_string(), self.cluster.clone()),
            (REMOTE_NAME_HASH_LABEL.to_string(), sha1_hex(&self.name)),
        ]);
        if !self.namespace.is_empty() {
            labels.insert(
                REMOTE_NAMESPACE_HASH_LABEL.into(),
                sha1_hex(&self.namespace),
            );
        }
        labels
    }

    /// The identification annotations of its local copy.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut annotations =
            BTreeMap::from([(REMOTE_NAME_ANNOTATION.to_string(), self.name.clone())]);
        if !self.namespace.is_empty() {
            annotations.insert(REMOTE_NAMESPACE_ANNOTATION.into(), self.namespace.clone());
        }
        annotations
    }

    /// A label selector finding its local copy.
    pub fn selector(&self, agent: &str) -> String {
        let mut labels = self.labels();
        labels.insert(AGENT_LABEL.into(), agent.into());
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The key of a kcp object seen through a virtual workspace (which sets
    /// its `kcp.io/cluster` annotation).
    pub fn of_kcp_object(object: &DynamicObject) -> Option<Self> {
        Some(Self {
            cluster: object
                .annotations()
                .get(crate::api::kcp::CLUSTER_ANNOTATION)?
                .clone(),
            namespace: object.namespace().unwrap_or_default(),
            name: object.name_any(),
        })
    }

    /// Reads the key back from a local copy's labels and annotations.
    pub fn from_local(
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Option<Self> {
        Some(Self {
            cluster: labels.get(REMOTE_CLUSTER_LABEL)?.clone(),
            namespace: annotations
                .get(REMOTE_NAMESPACE_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            name: annotations.get(REMOTE_NAME_ANNOTATION)?.clone(),
        })
    }
}

/// What finds a local copy in a worker's mirror: the values of its
/// identification labels in one string (a map of them would take several
/// times the bytes, for each of thousands of copies).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CopyKey(Box<str>);

impl CopyKey {
    /// Label values cannot hold `/`; the number of parts tells a namespaced
    /// key from a cluster-scoped one.
    fn of<'a>(values: impl Iterator<Item = &'a String>) -> Self {
        Self(
            values
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("/")
                .into(),
        )
    }
}

impl RemoteKey {
    /// The mirror key of its local copy.
    pub fn copy_key(&self) -> CopyKey {
        CopyKey::of(self.labels().values())
    }
}

/// The mirror key of a local copy, from its identification labels (as
/// [`RemoteKey::copy_key`] has it); `None` for objects without them.
pub fn copy_key(object: &DynamicObject) -> Option<CopyKey> {
    let labels = object.labels();
    let mut found = BTreeMap::new();
    for (key, required) in [
        (REMOTE_CLUSTER_LABEL, true),
        (REMOTE_NAME_HASH_LABEL, true),
        (REMOTE_NAMESPACE_HASH_LABEL, false),
    ] {
        match labels.get(key) {
            Some(value) => {
                found.insert(key, value);
            }
            None if required => return None,
            None => {}
        }
    }
    Some(CopyKey::of(found.into_values()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_annotations_and_selector_of_a_namespaced_object() {
        let key = RemoteKey {
            cluster: "2m4x".into(),
            namespace: "team".into(),
            name: "db".into(),
        };
        let labels = key.labels();
        assert_eq!(labels[REMOTE_CLUSTER_LABEL], "2m4x");
        assert_eq!(labels[REMOTE_NAME_HASH_LABEL], sha1_hex("db"));
        assert_eq!(labels[REMOTE_NAMESPACE_HASH_LABEL], sha1_hex("team"));
        let selector = key.selector("agent-a");
        assert!(
            selector.contains("syncagent.kcp.io/agent-name=agent-a"),
            "{selector}"
        );
        assert_eq!(
            RemoteKey::from_local(&labels, &key.annotations()),
            Some(key)
        );
    }

    #[test]
    fn a_copy_is_found_by_exactly_the_labels_of_its_key() {
        let key = RemoteKey {
            cluster: "c".into(),
            namespace: "team".into(),
            name: "db".into(),
        };
        let mut labels = key.labels();
        labels.insert(AGENT_LABEL.into(), "agent-a".into());
        labels.insert("app".into(), "db".into());
        let copy: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "g/v1", "kind": "W",
            "metadata": {"name": "x", "labels": labels},
        }))
        .unwrap();
        assert_eq!(copy_key(&copy), Some(key.copy_key()));
        let unrelated: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "g/v1", "kind": "W",
            "metadata": {"name": "y", "labels": {REMOTE_CLUSTER_LABEL: "c"}},
        }))
        .unwrap();
        assert_eq!(copy_key(&unrelated), None);
    }

    #[test]
    fn cluster_scoped_objects_have_no_namespace_label() {
        let key = RemoteKey {
            cluster: "c".into(),
            namespace: String::new(),
            name: "x".into(),
        };
        assert!(!key.labels().contains_key(REMOTE_NAMESPACE_HASH_LABEL));
        assert!(!key.annotations().contains_key(REMOTE_NAMESPACE_ANNOTATION));
    }
}

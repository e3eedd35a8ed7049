//! The metadata a PublishedResource keeps on the service-cluster namespaces
//! of its copies (`naming.namespaceMetadata`, upstream #186). It is applied
//! server-side under a field manager of the PublishedResource, never
//! forced: each PublishedResource owns its own keys, a key another manager
//! holds with another value is a conflict that keeps the apply from that
//! namespace (logged, the copy is made all the same), and applying `{}`
//! takes back whatever an earlier value set.

use serde_json::{Value, json};

use crate::api::hash::sha1_hex;
use crate::api::published_resource::NamespaceMetadata;

/// Longest field manager name the API server takes.
const MANAGER_MAX: usize = 128;

/// A PublishedResource's namespace metadata, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedMetadata {
    /// The field manager that applies it.
    pub manager: String,
    metadata: Value,
}

impl ManagedMetadata {
    /// The metadata of `published_resource`, applied by the field manager
    /// `<agent_manager>:<published_resource>`.
    pub fn new(
        agent_manager: &str,
        published_resource: &str,
        metadata: &NamespaceMetadata,
    ) -> Self {
        let manager = format!("{agent_manager}:{published_resource}");
        let manager = if manager.len() > MANAGER_MAX {
            format!("{agent_manager}:{}", sha1_hex(published_resource))
        } else {
            manager
        };
        Self {
            manager,
            metadata: json!({"labels": metadata.labels, "annotations": metadata.annotations}),
        }
    }

    /// The apply body for the namespace `name`.
    pub fn body(&self, name: &str) -> Value {
        let mut metadata = self.metadata.clone();
        metadata["name"] = name.into();
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
    }

    /// Identifies this metadata applied to `namespace`: once it is, the
    /// same application need not be repeated.
    pub fn applied_to(&self, namespace: &str) -> String {
        format!("{namespace}\n{}\n{}", self.manager, self.metadata)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn metadata(label: &str) -> NamespaceMetadata {
        NamespaceMetadata {
            labels: BTreeMap::from([("team".to_string(), label.to_string())]),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn each_published_resource_applies_its_own_keys_under_its_own_manager() {
        let blue = ManagedMetadata::new("sync-agent", "dbs", &metadata("blue"));
        assert_eq!(blue.manager, "sync-agent:dbs");
        assert_eq!(
            blue.body("c1"),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "c1", "labels": {"team": "blue"}, "annotations": {}}})
        );
        let red = ManagedMetadata::new("sync-agent", "dbs", &metadata("red"));
        assert_ne!(blue.applied_to("c1"), red.applied_to("c1"));
        assert_ne!(blue.applied_to("c1"), blue.applied_to("c2"));
        let long = ManagedMetadata::new("sync-agent", &"x".repeat(200), &metadata("blue"));
        assert!(long.manager.len() <= MANAGER_MAX, "{}", long.manager);
    }
}

//! PublishedResources as the controllers watch them: each object is read
//! through a [`DeserializeGuard`], so one the agent cannot parse (a field of
//! the wrong type the CRD schema lets through) is skipped by name instead of
//! failing the whole watch and stalling every other PublishedResource.

use std::sync::Arc;

use kube::ResourceExt;
use kube::core::DeserializeGuard;
use tracing::debug;

use crate::api::published_resource::PublishedResource;

/// A watched PublishedResource, or its metadata and why it could not be read.
pub type Watched = DeserializeGuard<PublishedResource>;

/// The readable PublishedResources of a store snapshot; the unreadable ones
/// are left out (the `apiresourceschema` controller reports them).
pub fn readable(state: Vec<Arc<Watched>>) -> Vec<Arc<PublishedResource>> {
    state
        .into_iter()
        .filter_map(|watched| match &watched.0 {
            Ok(pr) => Some(Arc::new(pr.clone())),
            Err(invalid) => {
                debug!(published_resource = %watched.name_any(), error = %invalid, "Skipping an unreadable PublishedResource");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(spec: serde_json::Value, name: &str) -> Arc<Watched> {
        let object = serde_json::json!({
            "apiVersion": "syncagent.kcp.io/v1alpha1",
            "kind": "PublishedResource",
            "metadata": {"name": name},
            "spec": spec,
        });
        Arc::new(serde_json::from_value(object).expect("a guard reads any object with metadata"))
    }

    #[test]
    fn unreadable_objects_are_skipped_and_the_others_kept() {
        let good = watched(
            serde_json::json!({"resource": {"apiGroup": "example.com", "version": "v1", "kind": "Thing"}}),
            "good",
        );
        let bad = watched(serde_json::json!({"resource": "not-an-object"}), "bad");
        assert!(
            bad.0.is_err(),
            "a wrong-typed field makes the object unreadable"
        );
        assert_eq!(bad.name_any(), "bad", "its name is still known");

        let prs = readable(vec![bad, good]);
        let names: Vec<String> = prs.iter().map(|pr| pr.name_any()).collect();
        assert_eq!(names, ["good"]);
    }
}

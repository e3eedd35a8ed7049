//! Hand-written types for the kcp APIs this project reads and writes.
//!
//! No Rust crate publishes kcp's API types, so the shapes here follow kcp's own
//! Go types (`github.com/kcp-dev/sdk`). Every struct that the project may
//! update in place carries an [`UnknownFields`] map, so that fields added by a
//! newer kcp survive a read-modify-write instead of being silently dropped.
//! CRD schemas are never generated from these types; kcp owns them.

pub mod apis_v1alpha1;
pub mod apis_v1alpha2;
pub mod core_v1alpha1;
pub mod tenancy_v1alpha1;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// Fields of a kcp object that this version of the project does not know.
/// They are kept verbatim and written back unchanged.
pub type UnknownFields = BTreeMap<String, serde_json::Value>;

/// Annotation kcp sets on every object it returns: the logical cluster name of
/// the workspace the object lives in.
pub const CLUSTER_ANNOTATION: &str = "kcp.io/cluster";

/// Annotation kcp maintains on objects referred to by path (for example the
/// `cluster` LogicalCluster): the workspace path, such as `root:org:team`.
pub const PATH_ANNOTATION: &str = "kcp.io/path";

/// A kcp condition (`conditions.kcp.io/v1alpha1`). It differs from the
/// meta/v1 `Condition` by its `severity` and by having no `observedGeneration`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, for example `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// `Error`, `Warning` or `Info`; only meaningful while `status` is `False`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// When the condition last changed its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// A CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable message about the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

impl Condition {
    /// Whether the condition is present with status `True`.
    pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
        conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    }
}

#[cfg(test)]
mod tests;

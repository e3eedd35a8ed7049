//! `core.kcp.io/v1alpha1`: LogicalCluster, the singleton `cluster` in every
//! workspace that tells who the workspace is.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::{Condition, UnknownFields};

/// Name of the one LogicalCluster object in every workspace.
pub const LOGICAL_CLUSTER_NAME: &str = "cluster";

/// The logical cluster behind a workspace. Its `kcp.io/cluster` annotation is
/// the logical cluster name and `kcp.io/path` the workspace path.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "core.kcp.io",
    version = "v1alpha1",
    kind = "LogicalCluster",
    status = "LogicalClusterStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct LogicalClusterSpec {
    /// Whether the logical cluster may be deleted directly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub directly_deletable: bool,
    /// The object owning this logical cluster, usually a Workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<serde_json::Value>,
    /// Initializers that must finish before the workspace is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initializers: Vec<String>,
    /// Terminators that must finish before it is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terminators: Vec<String>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// Observed state of a LogicalCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct LogicalClusterStatus {
    /// URL of the workspace.
    #[serde(rename = "URL", default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// `Scheduling`, `Initializing`, `Ready`, `Unavailable`, ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Conditions of the logical cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

//! `tenancy.kcp.io/v1alpha1`: Workspace, created in a parent workspace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::{Condition, UnknownFields};

/// Phase of a workspace that serves requests.
pub const PHASE_READY: &str = "Ready";

/// A child workspace of the workspace it is created in.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tenancy.kcp.io",
    version = "v1alpha1",
    kind = "Workspace",
    status = "WorkspaceStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// Workspace type; defaulted from the parent's type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<WorkspaceTypeReference>,
    /// Where the workspace is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<WorkspaceLocation>,
    /// Logical cluster name, set by kcp.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// URL of the workspace, set by kcp.
    #[serde(rename = "URL", default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Mount of the workspace; immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<serde_json::Value>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// A WorkspaceType by name and workspace path.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkspaceTypeReference {
    /// Name of the WorkspaceType, such as `universal`.
    pub name: String,
    /// Workspace path of the type, such as `root`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// Scheduling constraints of a workspace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WorkspaceLocation {
    /// Shards the workspace may be placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Observed state of a Workspace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WorkspaceStatus {
    /// `Scheduling`, `Initializing`, `Ready`, `Unavailable`, ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Conditions of the workspace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

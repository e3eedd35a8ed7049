//! `apis.kcp.io/v1alpha2`: the storage version of APIExport and APIBinding.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::apis_v1alpha1::{APIExportStatus, ExportReference, Identity};
use super::{Condition, UnknownFields};

/// An APIExport in its storage version: schemas per group/resource, and
/// permission claims with explicit verbs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "apis.kcp.io",
    version = "v1alpha2",
    kind = "APIExport",
    status = "APIExportStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct APIExportSpec {
    /// The schema served for each exported group/resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceSchema>,
    /// The identity secret of the export; defaulted by kcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Extra RBAC checks in the export's workspace; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximal_permission_policy: Option<serde_json::Value>,
    /// Resources of other APIs the export's owner wants access to in consumer workspaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permission_claims: Vec<PermissionClaim>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// One exported group/resource and the APIResourceSchema that defines it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSchema {
    /// Plural resource name.
    pub name: String,
    /// API group; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// Name of the APIResourceSchema; must end in `.<name>.<group or core>`.
    pub schema: String,
    /// How objects are stored; kcp defaults it to `{crd: {}}`.
    #[serde(default)]
    pub storage: serde_json::Value,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// A `v1alpha2` permission claim: group/resource, verbs and identity hash.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PermissionClaim {
    /// API group; empty for the core group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Plural resource name.
    pub resource: String,
    /// Verbs the export's owner may use; `*` means every verb.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Identity hash of the export that serves the resource, for resources
    /// that are neither built in nor served by this export.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity_hash: String,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// A consumer workspace's binding to an APIExport.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "apis.kcp.io",
    version = "v1alpha2",
    kind = "APIBinding",
    status = "APIBindingStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct APIBindingSpec {
    /// The export to bind; immutable.
    pub reference: BindingReference,
    /// The export's permission claims that this workspace accepts or rejects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permission_claims: Vec<AcceptablePermissionClaim>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// What an APIBinding binds to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BindingReference {
    /// The APIExport, by workspace path and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportReference>,
}

/// A permission claim as a consumer answers it. Group, resource, verbs and
/// identity hash must equal the export's claim, or kcp grants nothing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AcceptablePermissionClaim {
    /// The claim as the export states it.
    #[serde(flatten)]
    pub claim: PermissionClaim,
    /// Which objects the claim covers; immutable.
    pub selector: PermissionClaimSelector,
    /// `Accepted` or `Rejected`.
    pub state: String,
}

/// The objects a permission claim covers: everything, or a label selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PermissionClaimSelector {
    /// Cover every object of the resource.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub match_all: bool,
    /// Cover the objects matching this selector (with `matchAll` unset).
    #[serde(flatten)]
    pub label_selector: LabelSelector,
}

/// Observed state of an APIBinding.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct APIBindingStatus {
    /// Logical cluster name of the export's workspace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_export_cluster_name: String,
    /// The resources the binding made available.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_resources: Vec<serde_json::Value>,
    /// `Binding` or `Bound`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Conditions such as `Ready` and `PermissionClaimsValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Claims in effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_permission_claims: Vec<serde_json::Value>,
    /// The claims the export asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_permission_claims: Vec<PermissionClaim>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

//! `apis.kcp.io/v1alpha1`: APIExport (the version upstream api-syncagent
//! writes), APIExportEndpointSlice and APIResourceSchema.

use k8s_openapi::api::core::v1::SecretReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinitionNames, CustomResourceSubresources,
};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::{Condition, UnknownFields};

/// API group of kcp's API export machinery.
pub const GROUP: &str = "apis.kcp.io";

/// An APIExport in the served, non-storage version `v1alpha1`: schemas are
/// listed by name and permission claims use `all`/`resourceSelector`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "apis.kcp.io",
    version = "v1alpha1",
    kind = "APIExport",
    status = "APIExportStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct APIExportSpec {
    /// Names of APIResourceSchemas in the export's workspace, `<prefix>.<plural>.<group>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latest_resource_schemas: Vec<String>,
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

/// Where the identity key of an export is stored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// Secret holding the identity key under `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// A `v1alpha1` permission claim: a group/resource with `all: true` or a list
/// of resource selectors.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PermissionClaim {
    /// API group; empty for the core group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Plural resource name.
    pub resource: String,
    /// Claim every object of the resource.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Claim only the selected objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_selector: Vec<serde_json::Value>,
    /// Identity hash of the export that serves the resource, for resources
    /// that are neither built in nor served by this export.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity_hash: String,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// Observed state of an APIExport (shared by both versions).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct APIExportStatus {
    /// SHA-256 of the identity key; claims on this export's resources from
    /// other exports must carry it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity_hash: String,
    /// Conditions such as `IdentityValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Deprecated virtual workspace URLs; use APIExportEndpointSlice instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_workspaces: Vec<Endpoint>,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// A URL under which a virtual workspace is served.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL, for example `https://host:6443/services/apiexport/<cluster>/<export>`.
    pub url: String,
}

/// Where the consumers of an export are served: one URL per shard that holds
/// at least one binding to it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "apis.kcp.io",
    version = "v1alpha1",
    kind = "APIExportEndpointSlice",
    status = "APIExportEndpointSliceStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct APIExportEndpointSliceSpec {
    /// The export this slice lists endpoints for.
    pub export: ExportReference,
    /// Optional Partition restricting the shards.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub partition: String,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// A reference to an APIExport by workspace path and name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReference {
    /// Workspace path of the export, such as `root:providers:acme`; empty
    /// means the referring object's own workspace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Name of the APIExport.
    pub name: String,
}

/// Observed endpoints of an APIExportEndpointSlice.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct APIExportEndpointSliceStatus {
    /// Conditions such as `APIExportValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One URL per shard; empty until the first consumer binds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Selector of the shards, set by kcp.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shard_selector: String,
    /// Fields unknown to this version of the project.
    #[serde(flatten)]
    pub unknown: UnknownFields,
}

/// An immutable, CRD-like schema that an APIExport serves to its consumers.
/// Its name must be `<prefix>.<plural>.<group>` (`core` for the empty group).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "apis.kcp.io",
    version = "v1alpha1",
    kind = "APIResourceSchema",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct APIResourceSchemaSpec {
    /// API group; empty for the core group.
    pub group: String,
    /// Kind, list kind, singular and plural names, short names, categories.
    pub names: CustomResourceDefinitionNames,
    /// `Cluster` or `Namespaced`.
    pub scope: String,
    /// Served versions; exactly one has `storage: true`.
    pub versions: Vec<APIResourceVersion>,
    /// `DNS1123Subdomain` (default) or `PathSegmentName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_validation: Option<String>,
    /// Required with more than one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion: Option<Conversion>,
}

/// One version of an APIResourceSchema.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct APIResourceVersion {
    /// Version name, such as `v1beta1`.
    pub name: String,
    /// Whether the version is served.
    pub served: bool,
    /// Whether objects are stored in this version.
    pub storage: bool,
    /// Whether the version is deprecated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deprecated: bool,
    /// Warning returned to clients of a deprecated version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_warning: Option<String>,
    /// The OpenAPI v3 schema, as in a CRD's `openAPIV3Schema`.
    pub schema: serde_json::Value,
    /// Status and scale subresources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresources: Option<CustomResourceSubresources>,
    /// Columns shown by `kubectl get`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_printer_columns: Vec<CustomResourceColumnDefinition>,
}

/// How versions of an APIResourceSchema convert into each other.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Conversion {
    /// `None` or `Webhook`.
    pub strategy: String,
    /// Webhook settings for the `Webhook` strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<serde_json::Value>,
}

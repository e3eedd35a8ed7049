//! `PublishedResource` (`syncagent.kcp.io/v1alpha1`), field for field the API
//! of kcp's api-syncagent, so existing PublishedResources work unchanged.
//!
//! Every optional field is an `Option`, so an object read from the API server
//! is written back exactly as it was: an unset field stays unset and an
//! explicitly empty one (`group: ""`, `shortNames: []`) stays empty. The
//! difference matters for `shortNames` and `categories` of a projection,
//! where unset copies the source's names and `[]` clears them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type on PublishedResources: the schema is published to kcp.
pub const SCHEMA_PUBLISHED_CONDITION: &str = "SchemaPublished";
/// Condition type on PublishedResources: the sync worker runs.
pub const SYNCING_CONDITION: &str = "Syncing";

/// Describes how an API type of the service cluster (usually defined by a
/// CRD) is exposed in kcp workspaces: which versions, under which group,
/// kind and scope, how synced objects are named, filtered and rewritten,
/// and which related objects travel with them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "syncagent.kcp.io",
    version = "v1alpha1",
    kind = "PublishedResource",
    plural = "publishedresources",
    status = "PublishedResourceStatus",
    doc = "PublishedResource describes how an API type of the service cluster is published to kcp workspaces and how its objects are synced.",
    // What a person scanning for trouble needs: the schema in kcp, whether
    // it is published and synced, and why not (the reason of the first
    // condition that is False).
    printcolumn = r#"{"name":"Schema","type":"string","jsonPath":".status.resourceSchemaName"}"#,
    printcolumn = r#"{"name":"Published","type":"string","jsonPath":".status.conditions[?(@.type==\"SchemaPublished\")].status"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Syncing\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.status==\"False\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PublishedResourceSpec {
    /// The source resource on the service cluster that is exposed in kcp.
    pub resource: SourceResourceDescriptor,

    /// Limits which objects in kcp workspaces the agent handles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<ResourceFilter>,

    /// How the namespace and name of local copies are formed. The defaults
    /// avoid collisions between workspaces: the namespace is the workspace's
    /// cluster name and the name combines hashes of the kcp namespace and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub naming: Option<ResourceNaming>,

    /// Also record the workspace path (not only the logical cluster name) on
    /// local copies, and make it available to templates as `.ClusterPath`.
    /// Costs one extra request per workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_workspace_paths: Option<bool>,

    /// Changes the group, versions, kind, plural, scope, short names or
    /// categories under which the resource appears in kcp. Every field is
    /// optional; a set field overrides the source's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<ResourceProjection>,

    /// Rewrite rules applied to objects while syncing: `spec` rules on the way
    /// from kcp to the service cluster, `status` rules on the way back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation: Option<ResourceMutationSpec>,

    /// Objects (Secrets, ConfigMaps or any other resource) that travel with
    /// each synced object, in either direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<Vec<RelatedResourceSpec>>,

    /// Whether objects are synced at all. Without it they are; with
    /// `enabled: false` only the schema is published, as needed for resources
    /// that are related resources of another PublishedResource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronization: Option<SynchronizationSpec>,
}

/// Observed state of a PublishedResource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedResourceStatus {
    /// Name of the APIResourceSchema in kcp generated from the current CRD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_schema_name: Option<String>,
    /// Conditions of the publication; `SchemaPublished` says whether the
    /// current source could be published and, if not, why. (An addition to
    /// upstream's API: upstream agents ignore it.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
}

/// Identifies a resource type on the service cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceResourceDescriptor {
    /// The API group, for example `example.corp`; empty for the core group.
    pub api_group: String,
    /// Deprecated: use `versions`. The single version to publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The versions to publish; every served version if empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<String>>,
    /// The kind, for example `Database`.
    pub kind: String,
}

/// Label selectors limiting which kcp objects are synced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceFilter {
    /// Matched against the labels of the object's namespace in kcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<LabelSelector>,
    /// Matched against the labels of the object itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<LabelSelector>,
}

/// Templates for the namespace and name of local copies. A value containing
/// `{{` is a template with `.Object`, `.ClusterName` and `.ClusterPath`;
/// otherwise the deprecated placeholders `$remoteClusterName`,
/// `$remoteNamespace`, `$remoteNamespaceHash`, `$remoteName` and
/// `$remoteNameHash` are replaced. Names are formed only when a copy is
/// created; later the copy is found by its labels.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceNaming {
    /// Name of local copies. Default:
    /// `{{ .Object.metadata.namespace | sha3short }}-{{ .Object.metadata.name | sha3short }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace of local copies of namespaced resources. Default:
    /// `{{ .ClusterName }}`. A fixed value puts every copy into one namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels and annotations the agent keeps on the namespaces it puts
    /// local copies into (an addition to upstream's API, upstream #186).
    /// Applied server-side under a field manager of this PublishedResource
    /// (`sync-agent:<name>`): several PublishedResources keep their own
    /// keys, and `{}` takes back what an earlier value set. Where another
    /// manager holds one of the keys with another value, nothing is applied
    /// to that namespace (the agent logs the conflict) and copies are made
    /// all the same. Unset: namespaces are only created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_metadata: Option<NamespaceMetadata>,
    /// Delete a namespace the agent created for local copies once the last
    /// copy in it is gone and nothing else is left in it (an addition to
    /// upstream's API, upstream #113). The agent labels the namespaces it
    /// creates with `syncagent.kcp.io/created-by-agent: <agent name>`;
    /// other namespaces, and namespaces created before that label, are
    /// never deleted. After deleting a copy the agent lists every
    /// namespaced kind in the namespace (metadata only): any object other
    /// than the `kube-root-ca.crt` ConfigMap, the `default` ServiceAccount,
    /// events and objects already being deleted keeps the namespace, and so
    /// does a kind the agent may not list. Dependents of the copy (objects
    /// with owner references) are waited for, up to 30 seconds after the
    /// kcp object's deletion, while the garbage collector removes them.
    /// Needs `delete` on namespaces and `list` on every namespaced kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_empty_namespaces: Option<bool>,
}

/// Labels and annotations of a namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct NamespaceMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Scope of a resource.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ResourceScope {
    /// Objects live outside namespaces.
    Cluster,
    /// Objects live in namespaces.
    Namespaced,
}

/// How the source resource is presented in kcp.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceProjection {
    /// The API group in kcp, for example `myservice.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Deprecated: use `versions`. The version in kcp; only valid when a
    /// single version is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Renames versions: source version to kcp version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<BTreeMap<String, String>>,
    /// The scope in kcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ResourceScope>,
    /// The kind in kcp. Also sets the singular name (lower-cased kind), the
    /// plural (lower-cased kind plus `s`, unless `plural` is set) and the list kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The plural name in kcp, for kinds whose plural is not `<kind>s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plural: Option<String>,
    /// Short names in kcp. Unset keeps the source's; `[]` removes them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_names: Option<Vec<String>>,
    /// Categories in kcp. Unset keeps the source's; `[]` removes them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

/// Ordered rewrite rules for each direction.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceMutationSpec {
    /// Applied to the kcp object before it is written to the service cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Vec<ResourceMutation>>,
    /// Applied to the service-cluster object before its status goes to kcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<ResourceMutation>>,
}

/// One rewrite rule. Set exactly one of the fields; if several are set, the
/// first of `delete`, `regex`, `template`, `cel` applies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceMutation {
    /// Removes the value at a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<ResourceDeleteMutation>,
    /// Rewrites the value at a path with a regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<ResourceRegexMutation>,
    /// Replaces the value at a path with a rendered template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<ResourceTemplateMutation>,
    /// Replaces the value at a path with the result of a CEL expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cel: Option<ResourceCELMutation>,
}

/// Removes the value at `path`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceDeleteMutation {
    /// Path in gjson syntax, for example `spec.secretName`.
    pub path: String,
}

/// Replaces matches of `pattern` in the value at `path` with `replacement`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceRegexMutation {
    /// Path in gjson syntax.
    pub path: String,
    /// Regular expression; empty replaces the whole value with `replacement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Replacement; `$1` or `${1}` refer to capture groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

/// Replaces the value at `path` with a rendered template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceTemplateMutation {
    /// Path in gjson syntax.
    pub path: String,
    /// Template with `.Value`, `.LocalObject` and `.RemoteObject`.
    pub template: String,
}

/// Replaces the value at `path` with the result of a CEL expression.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceCELMutation {
    /// Path in gjson syntax.
    pub path: String,
    /// CEL expression over `value` (the current value), `self` (the object
    /// being mutated) and `other` (its counterpart, or null).
    pub expression: String,
}

/// Which side is the source of truth of a related object.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RelatedResourceOrigin {
    /// The object is made on the service cluster and copied into kcp.
    Service,
    /// The object is made in the kcp workspace and copied to the service cluster.
    Kcp,
}

/// Deprecated kinds of related objects, from before any GVR could be used.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RelatedResourceKind {
    /// Core v1 ConfigMaps.
    ConfigMap,
    /// Core v1 Secrets.
    Secret,
}

/// An object that travels with each synced object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.kind) != (has(self.version) || has(self.resource))",
        "message": "must specify either kind (deprecated) or group, version, resource"
    },
    {
        "rule": "has(self.resource) == has(self.version)",
        "message": "resource and version must be configured together or not at all"
    },
    {
        "rule": "!has(self.group) || (has(self.resource) && has(self.version))",
        "message": "configuring a group also requires a version and resource"
    },
    {
        "rule": "!has(self.identityHash) || (has(self.group) && has(self.version) && has(self.resource))",
        "message": "identity hashes can only be used with GVRs"
    },
    {
        "rule": "!(self.origin == 'service' && has(self.syncStatus) && self.syncStatus) || has(self.watch)",
        "message": "watch must be configured when origin is service and syncStatus is true"
    }
]))]
pub struct RelatedResourceSpec {
    /// Name of this related resource, unique within the PublishedResource;
    /// consumers find the object under it, for example `credentials`.
    pub identifier: String,
    /// Where the object originates: `service` or `kcp`.
    pub origin: RelatedResourceOrigin,
    /// API group on the origin side; empty for the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// API version on the origin side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Plural resource name on the origin side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Deprecated: use group, version and resource. `ConfigMap` or `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RelatedResourceKind>,
    /// Identity hash of the APIExport serving the resource in kcp, when it
    /// comes from another export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_hash: Option<String>,
    /// Also delete the copy on the destination side when the primary object
    /// is deleted. The origin object is never deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<bool>,
    /// Group, version and resource on the destination side, where they differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<RelatedResourceProjection>,
    /// How to find the object(s) on the origin side and where to put them on
    /// the destination side.
    pub object: RelatedResourceObject,
    /// Rewrite rules for the related object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutation: Option<ResourceMutationSpec>,
    /// Resync the primary object as soon as a related object changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<RelatedResourceWatch>,
    /// Also copy the status, in the same direction as the rest of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_status: Option<bool>,
}

/// How changes of related objects are mapped to their primary object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.byOwner) != has(self.bySelector)",
        "message": "exactly one of byOwner or bySelector must be set"
    }
]))]
pub struct RelatedResourceWatch {
    /// The related object has an owner reference to its primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_owner: Option<RelatedResourceWatchByOwner>,
    /// Every primary matching this selector is resynced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_selector: Option<LabelSelector>,
}

/// Marker for watching related objects through their owner references.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RelatedResourceWatchByOwner {}

/// Group, version and resource of a related object on the destination side.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RelatedResourceProjection {
    /// API group on the destination side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// API version on the destination side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Plural resource name on the destination side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// How a related object is found, and in which namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RelatedResourceObject {
    /// How the object itself is found.
    #[serde(flatten)]
    pub spec: RelatedResourceObjectSpec,
    /// How its namespace is found. Defaults to the primary object's
    /// namespace; required when the primary object is cluster-scoped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<RelatedResourceObjectSpec>,
}

/// Ways to locate an object or namespace; set one of them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RelatedResourceObjectSpec {
    /// Objects whose labels match, for related objects that point back at
    /// their primary rather than the other way round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<RelatedResourceObjectSelector>,
    /// A field of the primary object naming the related object, evaluated
    /// on both sides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<RelatedResourceObjectReference>,
    /// A template rendering the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateExpression>,
}

/// A path into the primary object whose value names the related object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RelatedResourceObjectReference {
    /// Path in gjson syntax, for example `spec.secretName` or `spec.users.#.name`.
    pub path: String,
    /// Applied to the value found at the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegularExpression>,
}

/// Locates related objects by label, then rewrites each found name into the
/// name on the destination side. Label keys and values may be templates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct RelatedResourceObjectSelector {
    /// Labels the objects must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Label requirements the objects must meet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
    /// How a found name becomes the name on the destination side.
    pub rewrite: RelatedResourceSelectorRewrite,
}

/// A (group, version, resource) triple.
pub type Gvr = (String, String, String);

impl RelatedResourceSpec {
    /// Origin and destination (group, version, resource): `kind` (the legacy
    /// field) or `group`/`version`/`resource` on the origin side, with the
    /// projection's non-empty fields replacing them on the destination side.
    pub fn gvrs(&self) -> (Gvr, Gvr) {
        let origin = match self.kind {
            Some(RelatedResourceKind::ConfigMap) => {
                (String::new(), "v1".into(), "configmaps".into())
            }
            Some(RelatedResourceKind::Secret) => (String::new(), "v1".into(), "secrets".into()),
            None => (
                self.group.clone().unwrap_or_default(),
                self.version.clone().unwrap_or_default(),
                self.resource.clone().unwrap_or_default(),
            ),
        };
        let projection = self.projection.clone().unwrap_or_default();
        let pick = |over: Option<String>, base: &String| {
            over.filter(|v| !v.is_empty())
                .unwrap_or_else(|| base.clone())
        };
        let destination = (
            pick(projection.group, &origin.0),
            pick(projection.version, &origin.1),
            pick(projection.resource, &origin.2),
        );
        (origin, destination)
    }

    /// The (group, resource) on the service cluster: the origin for
    /// `origin: service`, the destination for `origin: kcp`.
    pub fn service_group_resource(&self) -> (String, String) {
        self.group_resource_on(RelatedResourceOrigin::Service)
    }

    /// The (group, resource) in the consumer's workspace.
    pub fn kcp_group_resource(&self) -> (String, String) {
        self.group_resource_on(RelatedResourceOrigin::Kcp)
    }

    fn group_resource_on(&self, side: RelatedResourceOrigin) -> (String, String) {
        let (origin, destination) = self.gvrs();
        let (group, _, resource) = if self.origin == side {
            origin
        } else {
            destination
        };
        (group, resource)
    }
}

impl RelatedResourceObjectSelector {
    /// The selector part, without the rewrite rule.
    pub fn label_selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: self.match_labels.clone(),
            match_expressions: self.match_expressions.clone(),
        }
    }
}

/// Rewrites a found name; `regex` wins if both are set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RelatedResourceSelectorRewrite {
    /// A regular expression replacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegularExpression>,
    /// A template with `.Value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateExpression>,
}

/// A regular expression replacement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RegularExpression {
    /// Regular expression; empty replaces the whole value with `replacement`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Replacement; `$1` or `${1}` refer to capture groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

/// A template string.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TemplateExpression {
    /// The template, for example `{{ .Object.spec.secretName }}-copy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// Whether objects of a PublishedResource are synced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SynchronizationSpec {
    /// `false` publishes only the schema.
    pub enabled: bool,
}

#[cfg(test)]
mod tests;

//! The `PublishedOffering` API (`offering.syncagent.dev/v1alpha1`): one object
//! from which the operator provisions an APIExport in kcp, the agent's
//! credentials and RBAC on both sides, its PublishedResources, one sync-agent
//! Deployment and the consumers' APIBindings.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use k8s_openapi::api::apps::v1::DeploymentStrategy;
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, HostAlias, LocalObjectReference, PodSecurityContext,
    ResourceRequirements, SecurityContext, Toleration, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sync_agent::api::controllers::ControllerName;
use sync_agent::api::published_resource::PublishedResourceSpec;
use sync_agent::runtime::logging::LogLevel;

/// A service offered to kcp consumers: the APIs to publish from this cluster,
/// the kcp workspace to publish them from, how to run the sync agent, and
/// which consumer workspaces bind the offering automatically.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "offering.syncagent.dev",
    version = "v1alpha1",
    kind = "PublishedOffering",
    plural = "publishedofferings",
    shortname = "pof",
    category = "kcp",
    namespaced,
    status = "PublishedOfferingStatus",
    doc = "PublishedOffering publishes service-cluster APIs to a kcp workspace: the operator provisions the APIExport, the sync agent with its credentials and RBAC, and the consumers' APIBindings.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Workspace","type":"string","jsonPath":".spec.kcp.workspace"}"#,
    printcolumn = r#"{"name":"Export","type":"string","jsonPath":".status.export.name"}"#,
    printcolumn = r#"{"name":"Bound","type":"integer","jsonPath":".status.consumers.bound"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","priority":1,"jsonPath":".status.consumers.failed"}"#,
    printcolumn = r#"{"name":"Leader","type":"string","priority":1,"jsonPath":".status.agentLeader"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.kcp.workspace == oldSelf.kcp.workspace",
        "message": "kcp.workspace cannot change: the objects in the old workspace would be left behind; create another offering instead"
    },
    {
        "rule": "(has(self.export) && has(self.export.name) ? self.export.name : '') == (has(oldSelf.export) && has(oldSelf.export.name) ? oldSelf.export.name : '')",
        "message": "export.name cannot change: the old APIExport and its bindings would be left behind; create another offering instead"
    },
    {
        "rule": "(has(self.agent) && has(self.agent.name) ? self.agent.name : '') == (has(oldSelf.agent) && has(oldSelf.agent.name) ? oldSelf.agent.name : '')",
        "message": "agent.name cannot change: the copies the agent made carry its name"
    }
]))]
pub struct PublishedOfferingSpec {
    /// Where in kcp the offering is published and with which credentials.
    pub kcp: KcpTarget,
    /// The APIExport that carries the offering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportSettings>,
    /// The service-cluster APIs to publish. Each entry becomes one
    /// PublishedResource for this offering's agent. A list keyed by `name`:
    /// two entries of one name are refused.
    #[schemars(
        length(min = 1),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub resources: Vec<OfferedResource>,
    /// How the sync agent of this offering runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSettings>,
    /// Consumer workspaces that get an APIBinding to the offering automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Consumers>,
    /// What happens in kcp when the offering is deleted. `Retain` (the
    /// default) keeps the APIExport and the consumers' APIBindings, so no
    /// consumer data is lost; `Delete` removes them, and deleting a binding
    /// deletes the consumer's objects of the offering.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The kcp side of an offering.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KcpTarget {
    /// Path of the provider workspace that holds the APIExport, for example
    /// `root:providers:databases`. It must exist, and cannot change.
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub workspace: String,
    /// Secret in the offering's namespace with a kubeconfig for kcp, used by
    /// the operator to provision. Defaults to the operator-wide Secret given
    /// by its `--default-kcp-secret` flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
}

/// A key in a Secret of the offering's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key in the Secret's data; `kubeconfig` if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Settings of the APIExport.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportSettings {
    /// Name of the APIExport; the offering's name if unset. Cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Permission claims beyond those the agent adds on its own (events,
    /// namespaces and the related resources of the published kinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permission_claims: Vec<ExtraPermissionClaim>,
    /// Groups of kcp users allowed to bind the export from their own
    /// workspaces (the `bind` verb on the APIExport). Unset: every
    /// authenticated user (`system:authenticated`), as for kcp's own exports;
    /// empty: only the operator binds, in the consumer workspaces listed
    /// under `consumers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_groups: Option<Vec<String>>,
}

/// A permission claim on resources in consumer workspaces.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtraPermissionClaim {
    /// API group; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// Plural resource name, for example `configmaps`.
    pub resource: String,
    /// Verbs claimed; `*` for all.
    #[schemars(length(min = 1))]
    pub verbs: Vec<String>,
    /// Identity hash of the APIExport serving the resource, for resources
    /// that are neither built in nor served by this offering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_hash: Option<String>,
}

/// One published API: a PublishedResource spec plus the name under which
/// the operator renders it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfferedResource {
    /// Name of this entry, unique within the offering; part of the name of
    /// the rendered PublishedResource.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// The PublishedResource spec, with the same fields and rules as the
    /// `syncagent.kcp.io/v1alpha1` PublishedResource.
    #[serde(flatten)]
    pub spec: PublishedResourceSpec,
}

/// How the offering's sync agent runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSettings {
    /// The agent's `--agent-name`: the value of the
    /// `syncagent.kcp.io/agent-name` label on the copies it owns and the
    /// suffix of its Lease. Defaults to `<namespace>-<offering>`; set it to
    /// the name of an api-syncagent this offering replaces, so the new agent
    /// finds the copies the old one made. Cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: Option<String>,
    /// Secret in the offering's namespace with the agent's own kubeconfig
    /// for kcp (a kcp-operator `Kubeconfig`'s Secret, a client certificate
    /// or token a platform issued), for an identity every shard accepts.
    /// The operator then mints no token: it points the kubeconfig at the
    /// provider workspace, gives the agent its credentials (inline only, as
    /// for `kcp.kubeconfigSecretRef`), grants the identity kcp reports for
    /// them the agent's ClusterRole, checks them against every endpoint at
    /// each reconcile, and rolls the agent when the Secret changes. Unset:
    /// the operator mints a ServiceAccount token for the agent and rotates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kcp_kubeconfig_secret_ref: Option<SecretKeyRef>,
    /// Virtual workspace endpoints the agent reaches at another address
    /// than the endpoint slice lists (a shard's cluster-internal URL that
    /// the service cluster cannot reach): the agent's
    /// `--endpoint-url-rewrite`. The operator checks at each reconcile that
    /// every rewritten address takes connections (`EndpointUnreachable`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_rewrites: Vec<EndpointRewrite>,
    /// CA bundle (PEM), a file in the agent container (mount it with
    /// `volumes` and `volumeMounts`), trusted for the rewritten addresses
    /// instead of the kcp kubeconfig's CA: the agent's
    /// `--endpoint-url-rewrite-ca-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_rewrite_ca_file: Option<String>,
    /// Container image of the agent; the operator's own image if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Secrets in the offering's namespace to pull the agent's image with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Number of agent replicas; one leads, the others stand by. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// CPU and memory for the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Log level of the agent (its `--log-level`); `info` if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// Log format of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// The agent pods' securityContext, merged over the operator's
    /// default: `runAsNonRoot: true` and `seccompProfile: {type:
    /// RuntimeDefault}`. A key given replaces the default's (an object such
    /// as `seccompProfile` is merged key by key, a list is replaced), and a
    /// key set to `null` is removed from the default, as in a JSON merge
    /// patch, for example `fsGroup: 2000`.
    #[serde(default, skip_serializing_if = "Overrides::is_empty")]
    pub pod_security_context: Overrides<PodSecurityContext>,
    /// The agent container's securityContext, merged over the operator's
    /// default, which the restricted Pod Security Standard admits: user and
    /// group 65532 (`runAsUser`, `runAsGroup`), `runAsNonRoot: true`,
    /// `readOnlyRootFilesystem: true`, `allowPrivilegeEscalation: false`,
    /// `capabilities: {drop: [ALL]}` and `seccompProfile: {type:
    /// RuntimeDefault}`. A key given replaces the default's (an object such
    /// as `capabilities` is merged key by key, a list is replaced), and a
    /// key set to `null` is removed from the default, as in a JSON merge
    /// patch: `{runAsUser: null, runAsGroup: null}` where the platform
    /// assigns user IDs (OpenShift's `restricted-v2`).
    #[serde(default, skip_serializing_if = "Overrides::is_empty")]
    pub security_context: Overrides<SecurityContext>,
    /// PriorityClass of the agent pods, for example so that they are not
    /// the first to be preempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// How the agent pods spread over zones or nodes. For a
    /// `labelSelector`: their labels include `offering.syncagent.dev/name:
    /// <offering>` and `offering.syncagent.dev/namespace: <namespace>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Entries the agent pods get in their `/etc/hosts`: a service cluster
    /// reaching kcp, or the virtual-workspace URLs of its shards, by names
    /// its DNS does not resolve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_aliases: Vec<HostAlias>,
    /// Containers run to completion before the agent starts, as written
    /// (the default security context is not applied to them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    /// How the agent's Deployment replaces its pods; the Deployment's
    /// default (a rolling update) if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,
    /// Old ReplicaSets the agent's Deployment keeps for a rollback; the
    /// Deployment's default (10) if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub revision_history_limit: Option<i32>,
    /// Node labels the agent pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the agent pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra labels on the agent pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations on the agent pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Delete a local copy only once the kcp object carries no finalizer
    /// but the agent's own, so other controllers in the consumer's
    /// workspace finish first (the agent's `--wait-for-foreign-finalizers`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait_for_foreign_finalizers: bool,
    /// Put a finalizer of the agent's own on kcp-origin related objects
    /// instead of the shared `syncagent.kcp.io/cleanup`, so that agents
    /// sharing an object never block its deletion (the agent's
    /// `--per-agent-related-finalizer`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_agent_related_finalizer: bool,
    /// Controllers of the agent to switch off (the agent's
    /// `--disabled-controllers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_controllers: Vec<ControllerName>,
    /// Extra environment variables of the agent container (`POD_NAME` is
    /// the operator's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra volumes of the agent pods (`kcp-kubeconfig` is the
    /// operator's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Extra mounts of the agent container, of `volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// The PodDisruptionBudget of the agent pods, made while there is more
    /// than one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<DisruptionBudget>,
    /// Namespace of an upstream api-syncagent this agent takes over from
    /// (the agent's `--upstream-state-namespace`): the old agent's
    /// `obj-state-…` Secrets there hold each copy's last-known state, so a
    /// field a consumer removed while no agent ran is removed from the copy
    /// too. Each Secret is read once and then deleted. The agent needs
    /// `get`, `list` and `delete` on Secrets there, which the operator does
    /// not grant (see the migration guide); without them the copies are
    /// brought in line field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub upstream_state_namespace: Option<String>,
}

/// One endpoint base URL and the base the agent uses instead.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct EndpointRewrite {
    /// The base URL (scheme, host and port) as the endpoint slice lists
    /// it, for example `https://shard-1.kcp.svc:6443`.
    #[schemars(regex(pattern = r"^https?://[^/]+/?$"))]
    pub from: String,
    /// The base URL to use instead, for example
    /// `https://kcp-shard-1.example.com`; it may carry a path prefix. Only
    /// `https`: the agent sends its kcp credentials there.
    #[schemars(regex(pattern = r"^https://[^/]+(/.*)?$"))]
    pub to: String,
}

/// Changes to a default object of type `T` as a JSON merge patch (RFC
/// 7386): a key given replaces the default's, an object merges key by key,
/// and `null` removes the key. Its schema is `T`'s with every top-level
/// field nullable, so that the server keeps a `null`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
pub struct Overrides<T> {
    patch: Map<String, Value>,
    #[serde(skip)]
    over: PhantomData<T>,
}

impl<T> Default for Overrides<T> {
    fn default() -> Self {
        Self {
            patch: Map::new(),
            over: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Overrides<T> {
    /// Whether nothing is changed.
    pub fn is_empty(&self) -> bool {
        self.patch.is_empty()
    }

    /// `default` with the changes; an error when the result is not a `T`.
    pub fn over(&self, default: &T) -> Result<T, serde_json::Error> {
        let mut merged = serde_json::to_value(default)?;
        merge_patch(&mut merged, &Value::Object(self.patch.clone()));
        serde_json::from_value(merged)
    }
}

/// Applies the JSON merge patch `patch` to `target` (RFC 7386).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(fields) = target {
        for (key, change) in changes {
            if change.is_null() {
                fields.remove(key);
            } else {
                merge_patch(fields.entry(key.clone()).or_insert(Value::Null), change);
            }
        }
    }
}

impl<T: JsonSchema> JsonSchema for Overrides<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("{}Overrides", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = T::json_schema(generator);
        if let Some(Value::Object(properties)) = schema.get_mut("properties") {
            for property in properties.values_mut() {
                if let Value::Object(property) = property {
                    property.insert("nullable".into(), Value::Bool(true));
                }
            }
        }
        schema
    }
}

/// A PodDisruptionBudget the operator keeps for the agent pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudget {
    /// Whether to keep one (with more than one replica); default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Pods that a voluntary disruption may take down at once, a number
    /// or a percentage; default 1, so the standby takes over while the
    /// leader's node drains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Log format of the offering's agent (its `--log-format`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// Consumer workspaces that bind the offering.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consumers {
    /// Paths of consumer workspaces, for example `root:teams:blue`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<String>,
    /// Child workspaces of a parent, chosen by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkspaceSelector>,
    /// The export's permission claims that bindings accept, by group and
    /// resource. Unset: every claim of the export is accepted. Claims not
    /// listed are rejected, which may keep the agent from syncing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_claims: Option<Vec<GroupResource>>,
}

/// Child workspaces of a parent workspace whose labels match a selector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSelector {
    /// Path of the parent workspace, for example `root:teams`.
    pub parent: String,
    /// Labels of the child Workspace objects; empty selects every child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// An API group and plural resource name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub struct GroupResource {
    /// API group; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

/// What happens to kcp objects when an offering is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the APIExport and consumer APIBindings; remove only the agent's
    /// identity and the service-cluster objects.
    #[default]
    Retain,
    /// Also delete the APIExport and every APIBinding the operator created.
    Delete,
}

/// Observed state of a PublishedOffering.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedOfferingStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` first, then `ExportReady`, `CredentialsReady`,
    /// `SchemasPublished`, `AgentAvailable` and `ConsumersBound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Facts about the APIExport in kcp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportStatus>,
    /// Counts of consumer workspaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<ConsumerCounts>,
    /// The agent pod that holds the agent's Lease `syncagent.<agent name>`
    /// in the offering's namespace: the one replica that syncs, whose logs
    /// tell what it does. Read from the Lease at each reconcile; unset while
    /// no replica holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_leader: Option<String>,
}

/// Facts about the offering's APIExport.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    /// Name of the APIExport.
    pub name: String,
    /// Logical cluster name of the provider workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_cluster: Option<String>,
    /// Identity hash of the export; claims on its resources from other
    /// exports need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_hash: Option<String>,
    /// Virtual workspace URLs of the export, one per shard with consumers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_urls: Vec<String>,
}

/// How many consumer workspaces are bound and how many failed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerCounts {
    /// Consumer workspaces with a Ready binding.
    pub bound: i32,
    /// Consumer workspaces whose binding could not be created or is not Ready.
    pub failed: i32,
    /// Paths of the consumer workspaces holding an APIBinding this offering
    /// created; `deletionPolicy: Delete` removes these bindings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<String>,
}

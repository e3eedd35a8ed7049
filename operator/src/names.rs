//! Names and labels of everything an offering provisions, derived from the
//! offering alone so that every reconcile (and the cleanup) finds the same
//! objects again.

use std::collections::BTreeMap;

use sync_agent::api::hash::sha1_hex;

use crate::api::PublishedOffering;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "offering-operator";
/// Finalizer on offerings: kcp objects and cluster-scoped children are
/// removed before the offering goes.
pub const FINALIZER: &str = "offering.syncagent.dev/cleanup";
/// Annotation on kcp objects naming the offering (`<namespace>/<name>`)
/// that owns them. An APIExport without it, or with another value, is never
/// touched; annotate an existing export to let an offering adopt it.
pub const OWNER_ANNOTATION: &str = "offering.syncagent.dev/owner";
/// Label on PublishedResources selecting the agent that serves them.
pub const AGENT_LABEL: &str = "offering.syncagent.dev/agent";
/// Labels on cluster-scoped children naming their offering.
pub const OFFERING_NAMESPACE_LABEL: &str = "offering.syncagent.dev/namespace";
/// See [`OFFERING_NAMESPACE_LABEL`].
pub const OFFERING_NAME_LABEL: &str = "offering.syncagent.dev/name";
/// Annotation on an offering that lets its deletion go on without removing
/// its objects in kcp when the operator may not enter the provider
/// workspace; they stay there.
pub const SKIP_KCP_CLEANUP_ANNOTATION: &str = "offering.syncagent.dev/skip-kcp-cleanup";
/// Namespace in the provider workspace holding the agents' ServiceAccounts.
pub const KCP_NAMESPACE: &str = "sync-agents";
/// Where the agent's kcp kubeconfig Secret is mounted.
pub const KCP_MOUNT_PATH: &str = "/etc/sync-agent/kcp";
/// Key of the agent's kcp kubeconfig in its Secret.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Key of the agent's kcp token in its Secret; the kubeconfig reads it as a
/// file relative to itself, so a rotated token is picked up without restart.
pub const TOKEN_KEY: &str = "token";

/// Longest label value and DNS label.
const LABEL_MAX: usize = 63;

/// Every name an offering's children carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// Namespace of the offering (and of its namespaced children).
    pub namespace: String,
    /// Name of the offering.
    pub offering: String,
    /// `<namespace>/<name>`, the value of [`OWNER_ANNOTATION`].
    pub owner: String,
    /// The agent's `--agent-name`: a valid label value unique per offering.
    pub agent: String,
    /// Name of the APIExport (and of its default endpoint slice).
    pub export: String,
    /// The agent's ServiceAccount in the provider workspace.
    pub kcp_service_account: String,
    /// ClusterRole (and its binding) with the agent's kcp permissions.
    pub kcp_agent_role: String,
    /// ClusterRoleBinding granting the agent entry into the workspace.
    pub kcp_access_binding: String,
    /// ClusterRole (and its binding) allowing consumers to bind the export.
    pub kcp_bind_role: String,
    /// Secret with the agent's kcp kubeconfig and token.
    pub kcp_secret: String,
    /// The agent's ServiceAccount, Role, RoleBinding and Deployment.
    pub agent_workload: String,
    /// Service exposing the agent's metrics.
    pub metrics_service: String,
    /// ClusterRole and ClusterRoleBinding of the agent on the service cluster.
    pub cluster_role: String,
}

impl Names {
    /// The names for `offering`, or why it cannot have any.
    pub fn of(offering: &PublishedOffering) -> Result<Self, String> {
        let namespace = offering
            .metadata
            .namespace
            .clone()
            .ok_or("the offering has no namespace")?;
        let name = offering
            .metadata
            .name
            .clone()
            .ok_or("the offering has no name")?;
        if name.len() > LABEL_MAX {
            return Err(format!(
                "the offering's name is {} characters long; at most {LABEL_MAX} fit in the labels of its objects",
                name.len()
            ));
        }
        let export = offering
            .spec
            .export
            .as_ref()
            .and_then(|e| e.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| name.clone());
        let agent = offering
            .spec
            .agent
            .as_ref()
            .and_then(|a| a.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| bounded(&format!("{namespace}-{name}"), "", LABEL_MAX));
        Ok(Self {
            owner: format!("{namespace}/{name}"),
            kcp_service_account: bounded(&format!("sync-agent-{export}"), "", 253),
            kcp_agent_role: format!("syncagent:{export}"),
            kcp_access_binding: format!("syncagent:{export}:access"),
            kcp_bind_role: format!("syncagent:{export}:bind"),
            kcp_secret: bounded(&name, "-kcp-kubeconfig", 253),
            agent_workload: bounded(&name, "-sync-agent", LABEL_MAX),
            metrics_service: bounded(&name, "-sync-agent-metrics", LABEL_MAX),
            cluster_role: format!("offering.syncagent.dev:{namespace}:{name}"),
            namespace,
            offering: name,
            agent,
            export,
        })
    }

    /// Name of the PublishedResource rendered from the entry `resource`.
    pub fn published_resource(&self, resource: &str) -> String {
        format!("{}.{}.{resource}", self.namespace, self.offering)
    }

    /// Labels of every service-cluster child.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "sync-agent".into()),
            ("app.kubernetes.io/instance".into(), self.offering.clone()),
            ("app.kubernetes.io/component".into(), "sync-agent".into()),
            (
                "app.kubernetes.io/part-of".into(),
                "offering-operator".into(),
            ),
            ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
            (OFFERING_NAMESPACE_LABEL.into(), self.namespace.clone()),
            (OFFERING_NAME_LABEL.into(), self.offering.clone()),
        ])
    }

    /// Labels selecting the agent's pods.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "sync-agent".into()),
            ("app.kubernetes.io/instance".into(), self.offering.clone()),
            (OFFERING_NAMESPACE_LABEL.into(), self.namespace.clone()),
        ])
    }

    /// Whether `labels` (of a service-cluster object) name this offering.
    pub fn labels_name_this(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(OFFERING_NAMESPACE_LABEL) == Some(&self.namespace)
            && labels.get(OFFERING_NAME_LABEL) == Some(&self.offering)
    }

    /// Whether `metadata` (of a kcp object, or of a cluster-scoped one on
    /// the service cluster) carries this offering's owner annotation: the
    /// operator changes or deletes such an object only then.
    pub fn owns(&self, metadata: &kube::api::ObjectMeta) -> bool {
        metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OWNER_ANNOTATION))
            == Some(&self.owner)
    }

    /// Label selector over the cluster-scoped children of this offering.
    pub fn children_selector(&self) -> String {
        format!(
            "{OFFERING_NAMESPACE_LABEL}={},{OFFERING_NAME_LABEL}={}",
            self.namespace, self.offering
        )
    }

    /// Labels of objects in kcp.
    pub fn kcp_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into())])
    }

    /// Annotations of objects in kcp.
    pub fn kcp_annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(OWNER_ANNOTATION.into(), self.owner.clone())])
    }
}

/// `base` + `suffix`, shortened to `max` characters by cutting `base` and
/// adding a hash of it, so distinct bases stay distinct.
fn bounded(base: &str, suffix: &str, max: usize) -> String {
    if base.len() + suffix.len() <= max {
        return format!("{base}{suffix}");
    }
    let hash = &sha1_hex(base)[..10];
    let keep = max.saturating_sub(suffix.len() + hash.len() + 1);
    let cut = base[..keep.min(base.len())].trim_end_matches(['-', '.']);
    format!("{cut}-{hash}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PublishedOfferingSpec;

    fn offering(namespace: &str, name: &str) -> PublishedOffering {
        let spec: PublishedOfferingSpec = serde_json::from_value(serde_json::json!({
            "kcp": {"workspace": "root:providers:db"},
            "resources": [{"name": "dbs", "resource": {"apiGroup": "db.example.io", "kind": "Database"}}]
        }))
        .unwrap();
        let mut offering = PublishedOffering::new(name, spec);
        offering.metadata.namespace = Some(namespace.into());
        offering
    }

    #[test]
    fn the_export_is_named_after_the_offering_unless_set() {
        let names = Names::of(&offering("team-a", "databases")).unwrap();
        assert_eq!(names.export, "databases");
        assert_eq!(names.agent, "team-a-databases");
        assert_eq!(names.owner, "team-a/databases");
        let mut named = offering("team-a", "databases");
        named.spec.export = Some(crate::api::ExportSettings {
            name: Some("databases.example.io".into()),
            ..Default::default()
        });
        assert_eq!(Names::of(&named).unwrap().export, "databases.example.io");
    }

    #[test]
    fn an_agent_name_from_the_spec_wins() {
        let mut named = offering("team-a", "databases");
        named.spec.agent = Some(crate::api::AgentSettings {
            name: Some("legacy-agent".into()),
            ..Default::default()
        });
        assert_eq!(Names::of(&named).unwrap().agent, "legacy-agent");
    }

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_distinct() {
        let a = Names::of(&offering(&"n".repeat(60), "databases")).unwrap();
        let b = Names::of(&offering(&"n".repeat(61), "databases")).unwrap();
        assert!(a.agent.len() <= LABEL_MAX, "{}", a.agent);
        assert_ne!(a.agent, b.agent);
        let long = Names::of(&offering("ns", &"x".repeat(60))).unwrap();
        assert!(long.metrics_service.len() <= LABEL_MAX);
        assert!(long.metrics_service.ends_with("-sync-agent-metrics"));
        assert!(long.agent_workload.ends_with("-sync-agent"));
    }

    #[test]
    fn names_too_long_for_labels_are_refused() {
        let error = Names::of(&offering("ns", &"x".repeat(64))).unwrap_err();
        assert!(error.contains("64 characters"), "{error}");
    }
}

//! The objects an offering needs in its provider workspace: the APIExport
//! and the agent's identity with exactly the permissions it uses.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::ObjectMeta;
use serde_json::{Value, json};

use crate::api::ExtraPermissionClaim;
use crate::names::{KCP_NAMESPACE, Names};

/// Groups allowed to bind an export when the offering does not say.
pub const DEFAULT_BIND_GROUPS: &[&str] = &["system:authenticated"];

fn meta(names: &Names, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(names.kcp_labels()),
        annotations: Some(names.kcp_annotations()),
        ..Default::default()
    }
}

/// The namespace of agent ServiceAccounts; shared by every offering
/// published to the workspace, so it carries no owner and is never deleted.
pub fn namespace() -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(KCP_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The agent's identity in kcp.
pub fn service_account(names: &Names) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(names, &names.kcp_service_account, Some(KCP_NAMESPACE)),
        ..Default::default()
    }
}

fn rule(group: &str, resource: &str, names: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        resource_names: (!names.is_empty()).then(|| names.iter().map(|n| n.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// What the agent does in the provider workspace: find its workspace, the
/// endpoint slice and the export, publish schemas, update the export, raise
/// events and serve the export's virtual workspace.
pub fn agent_cluster_role(names: &Names) -> ClusterRole {
    let export = names.export.as_str();
    ClusterRole {
        metadata: meta(names, &names.kcp_agent_role, None),
        rules: Some(vec![
            rule("core.kcp.io", "logicalclusters", &["cluster"], &["get"]),
            rule(
                "apis.kcp.io",
                "apiexportendpointslices",
                &[export],
                &["get", "list", "watch"],
            ),
            rule(
                "apis.kcp.io",
                "apiexports",
                &[export],
                &["get", "list", "watch", "patch", "update"],
            ),
            rule(
                "apis.kcp.io",
                "apiresourceschemas",
                &[],
                &["get", "list", "watch", "create"],
            ),
            rule("", "events", &[], &["get", "create", "patch", "update"]),
            rule("apis.kcp.io", "apiexports/content", &[export], &["*"]),
        ]),
        ..Default::default()
    }
}

/// Whom the agent's roles are bound to: the user of the agent's own
/// credentials when the provider brings them, else its ServiceAccount.
fn agent_subject(names: &Names, user: Option<&str>) -> Subject {
    match user {
        Some(user) => Subject {
            kind: "User".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            name: user.into(),
            ..Default::default()
        },
        None => Subject {
            kind: "ServiceAccount".into(),
            name: names.kcp_service_account.clone(),
            namespace: Some(KCP_NAMESPACE.into()),
            ..Default::default()
        },
    }
}

fn cluster_role_ref(name: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: name.into(),
    }
}

/// Binds [`agent_cluster_role`] to the agent (`user`: see [`agent_subject`]).
pub fn agent_role_binding(names: &Names, user: Option<&str>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(names, &names.kcp_agent_role, None),
        role_ref: cluster_role_ref(&names.kcp_agent_role),
        subjects: Some(vec![agent_subject(names, user)]),
    }
}

/// Lets the agent into the workspace at all (`user`: see [`agent_subject`]).
pub fn access_binding(names: &Names, user: Option<&str>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(names, &names.kcp_access_binding, None),
        role_ref: cluster_role_ref("system:kcp:workspace:access"),
        subjects: Some(vec![agent_subject(names, user)]),
    }
}

/// The `bind` verb on this export only.
pub fn bind_cluster_role(names: &Names) -> ClusterRole {
    ClusterRole {
        metadata: meta(names, &names.kcp_bind_role, None),
        rules: Some(vec![rule(
            "apis.kcp.io",
            "apiexports",
            &[names.export.as_str()],
            &["bind"],
        )]),
        ..Default::default()
    }
}

/// Grants [`bind_cluster_role`] to `groups`; `None` when no group may bind.
pub fn bind_binding(names: &Names, groups: &[String]) -> Option<ClusterRoleBinding> {
    if groups.is_empty() {
        return None;
    }
    Some(ClusterRoleBinding {
        metadata: meta(names, &names.kcp_bind_role, None),
        role_ref: cluster_role_ref(&names.kcp_bind_role),
        subjects: Some(
            groups
                .iter()
                .map(|group| Subject {
                    kind: "Group".into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    name: group.clone(),
                    ..Default::default()
                })
                .collect(),
        ),
    })
}

/// The operator's share of the APIExport (apis.kcp.io/v1alpha2), for a
/// server-side apply: ownership metadata and the extra claims. Schemas and
/// the claims the agent derives from its PublishedResources are the agent's
/// to write, so they are left out and survive every apply.
pub fn export(names: &Names, extra_claims: &[ExtraPermissionClaim]) -> Value {
    let claims: Vec<Value> = extra_claims
        .iter()
        .map(|claim| {
            json!({
                "group": claim.group,
                "resource": claim.resource,
                "verbs": claim.verbs,
                "identityHash": claim.identity_hash.clone().unwrap_or_default(),
            })
        })
        .collect();
    let mut spec = json!({});
    if !claims.is_empty() {
        spec["permissionClaims"] = Value::Array(claims);
    }
    json!({
        "apiVersion": "apis.kcp.io/v1alpha2",
        "kind": "APIExport",
        "metadata": {
            "name": names.export,
            "labels": names.kcp_labels(),
            "annotations": names.kcp_annotations(),
        },
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PublishedOffering, PublishedOfferingSpec};

    fn names() -> Names {
        let spec: PublishedOfferingSpec = serde_json::from_value(json!({
            "kcp": {"workspace": "root:providers:db"},
            "export": {"name": "databases.example.io"},
            "resources": [{"name": "dbs", "resource": {"apiGroup": "db.example.io", "kind": "Database"}}]
        }))
        .unwrap();
        let mut offering = PublishedOffering::new("databases", spec);
        offering.metadata.namespace = Some("team-a".into());
        Names::of(&offering).unwrap()
    }

    #[test]
    fn the_agent_role_is_limited_to_its_own_export_and_slice() {
        let role = agent_cluster_role(&names());
        let rules = role.rules.unwrap();
        for resource in [
            "apiexports",
            "apiexportendpointslices",
            "apiexports/content",
        ] {
            let rule = rules
                .iter()
                .find(|r| r.resources.as_deref() == Some(&[resource.to_string()]))
                .unwrap_or_else(|| panic!("no rule for {resource}"));
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["databases.example.io".to_string()][..]),
                "{resource}"
            );
        }
        let schemas = rules
            .iter()
            .find(|r| r.resources.as_deref() == Some(&["apiresourceschemas".to_string()]))
            .unwrap();
        assert!(!schemas.verbs.contains(&"delete".to_string()));
        assert!(!schemas.verbs.contains(&"update".to_string()));
    }

    #[test]
    fn the_export_apply_carries_only_the_operators_fields() {
        let export = export(
            &names(),
            &[ExtraPermissionClaim {
                group: String::new(),
                resource: "configmaps".into(),
                verbs: vec!["get".into(), "list".into()],
                identity_hash: None,
            }],
        );
        assert_eq!(
            export["metadata"]["annotations"]["offering.syncagent.dev/owner"],
            "team-a/databases"
        );
        assert!(export["spec"].get("resources").is_none());
        assert_eq!(
            export["spec"]["permissionClaims"],
            json!([{"group": "", "resource": "configmaps", "verbs": ["get", "list"], "identityHash": ""}])
        );
        let bare = super::export(&names(), &[]);
        assert_eq!(bare["spec"], json!({}));
    }

    #[test]
    fn no_bind_groups_means_no_binding() {
        assert!(bind_binding(&names(), &[]).is_none());
        let binding = bind_binding(&names(), &["system:authenticated".into()]).unwrap();
        assert_eq!(binding.subjects.unwrap()[0].name, "system:authenticated");
    }
}

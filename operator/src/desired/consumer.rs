//! The APIBinding an offering places in each consumer workspace.

use serde_json::{Value, json};
use sync_agent::api::kcp::apis_v1alpha2::PermissionClaim;

use crate::api::GroupResource;
use crate::names::Names;

/// The binding to the export in `provider_path`, for a server-side apply.
///
/// Every claim of the export is listed: accepted when `accepted` is unset
/// or names its group and resource, rejected otherwise. Accepted claims
/// copy the export's verbs and identity hash exactly, since kcp grants the
/// provider only the intersection of both sides' verbs.
pub fn binding(
    names: &Names,
    provider_path: &str,
    export_claims: &[PermissionClaim],
    accepted: Option<&[GroupResource]>,
) -> Value {
    let claims: Vec<Value> = export_claims
        .iter()
        .map(|claim| {
            let accept = accepted.is_none_or(|list| {
                list.iter()
                    .any(|gr| gr.group == claim.group && gr.resource == claim.resource)
            });
            json!({
                "group": claim.group,
                "resource": claim.resource,
                "identityHash": claim.identity_hash,
                "verbs": claim.verbs,
                "selector": {"matchAll": true},
                "state": if accept { "Accepted" } else { "Rejected" },
            })
        })
        .collect();
    json!({
        "apiVersion": "apis.kcp.io/v1alpha2",
        "kind": "APIBinding",
        "metadata": {
            "name": names.export,
            "labels": names.kcp_labels(),
            "annotations": names.kcp_annotations(),
        },
        "spec": {
            "reference": {"export": {"path": provider_path, "name": names.export}},
            "permissionClaims": claims,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PublishedOffering, PublishedOfferingSpec};

    fn names() -> Names {
        let spec: PublishedOfferingSpec = serde_json::from_value(json!({
            "kcp": {"workspace": "root:providers:db"},
            "resources": [{"name": "dbs", "resource": {"apiGroup": "db.example.io", "kind": "Database"}}]
        }))
        .unwrap();
        let mut offering = PublishedOffering::new("databases", spec);
        offering.metadata.namespace = Some("team-a".into());
        Names::of(&offering).unwrap()
    }

    fn claim(group: &str, resource: &str, verbs: &[&str], hash: &str) -> PermissionClaim {
        PermissionClaim {
            group: group.into(),
            resource: resource.into(),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            identity_hash: hash.into(),
            ..Default::default()
        }
    }

    #[test]
    fn accepted_claims_copy_the_exports_verbs_and_identity() {
        let claims = [
            claim("", "secrets", &["get", "list", "watch"], ""),
            claim("certs.example.io", "certificates", &["*"], "abc123"),
        ];
        let binding = binding(&names(), "root:providers:db", &claims, None);
        assert_eq!(
            binding["spec"]["reference"],
            json!({"export": {"path": "root:providers:db", "name": "databases"}})
        );
        let listed = binding["spec"]["permissionClaims"].as_array().unwrap();
        assert_eq!(listed[0]["verbs"], json!(["get", "list", "watch"]));
        assert_eq!(listed[1]["identityHash"], "abc123");
        assert_eq!(listed[1]["verbs"], json!(["*"]));
        assert!(listed.iter().all(|c| c["state"] == "Accepted"));
        assert!(
            listed
                .iter()
                .all(|c| c["selector"] == json!({"matchAll": true}))
        );
    }

    #[test]
    fn claims_left_out_of_the_accepted_list_are_rejected() {
        let claims = [
            claim("", "secrets", &["*"], ""),
            claim("", "events", &["*"], ""),
        ];
        let accepted = [GroupResource {
            group: String::new(),
            resource: "events".into(),
        }];
        let binding = binding(&names(), "root:p", &claims, Some(&accepted));
        let listed = binding["spec"]["permissionClaims"].as_array().unwrap();
        assert_eq!(listed[0]["state"], "Rejected");
        assert_eq!(listed[1]["state"], "Accepted");
    }
}

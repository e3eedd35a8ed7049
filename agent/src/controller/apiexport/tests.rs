use serde_json::json;

use super::*;

fn pr(spec: serde_json::Value, schema: Option<&str>) -> Arc<PublishedResource> {
    let mut object = json!({
        "apiVersion": "syncagent.kcp.io/v1alpha1",
        "kind": "PublishedResource",
        "metadata": {"name": "pr"},
        "spec": spec,
    });
    if let Some(schema) = schema {
        object["status"] = json!({"resourceSchemaName": schema});
    }
    Arc::new(serde_json::from_value(object).expect("PublishedResource"))
}

fn export(spec: serde_json::Value) -> APIExportSpec {
    serde_json::from_value(spec).expect("APIExport spec")
}

fn claims(spec: &APIExportSpec) -> Vec<(String, String, Vec<String>, String)> {
    spec.permission_claims
        .iter()
        .map(|c| {
            (
                c.group.clone(),
                c.resource.clone(),
                c.verbs.clone(),
                c.identity_hash.clone(),
            )
        })
        .collect()
}

#[test]
fn published_schemas_replace_their_group_resource_and_foreign_entries_stay() {
    let current = export(json!({"resources": [
        {"group": "example.corp", "name": "databases", "schema": "vold.databases.example.corp", "storage": {"crd": {}}},
        {"group": "other.io", "name": "things", "schema": "vhand.things.other.io", "storage": {"crd": {}}},
    ]}));
    let prs = [
        pr(
            json!({"resource": {"apiGroup": "example.corp", "kind": "Database"}}),
            Some("vnew.databases.example.corp"),
        ),
        pr(
            json!({"resource": {"apiGroup": "", "kind": "ConfigMap"}}),
            Some("v1234.configmaps.core"),
        ),
        pr(
            json!({"resource": {"apiGroup": "example.corp", "kind": "Pending"}}),
            None,
        ),
    ];
    let plan = plan(&current, &prs);
    let schemas: Vec<&str> = plan
        .spec
        .resources
        .iter()
        .map(|r| r.schema.as_str())
        .collect();
    assert_eq!(
        schemas,
        [
            "v1234.configmaps.core",
            "vnew.databases.example.corp",
            "vhand.things.other.io"
        ]
    );
    assert_eq!(
        plan.added_schemas,
        ["vnew.databases.example.corp", "v1234.configmaps.core"]
    );
    assert_eq!(plan.removed_schemas, ["vold.databases.example.corp"]);
    assert_eq!(plan.spec.resources[0].group, "");
}

#[test]
fn events_are_always_claimed_and_namespaces_only_when_needed() {
    let plain = [pr(
        json!({"resource": {"apiGroup": "a", "kind": "K"}}),
        None,
    )];
    let plan_plain = plan(&APIExportSpec::default(), &plain);
    assert_eq!(
        claims(&plan_plain.spec),
        [(
            String::new(),
            "events".into(),
            vec!["*".into()],
            String::new()
        )]
    );

    let filtered = [pr(
        json!({"resource": {"apiGroup": "a", "kind": "K"},
               "filter": {"namespace": {"matchLabels": {"x": "y"}}},
               "enableWorkspacePaths": true}),
        None,
    )];
    let names: Vec<String> = claims(&plan(&APIExportSpec::default(), &filtered).spec)
        .into_iter()
        .map(|(g, r, _, _)| format!("{g}/{r}"))
        .collect();
    assert_eq!(
        names,
        ["/events", "/namespaces", "core.kcp.io/logicalclusters"]
    );
}

#[test]
fn related_resources_are_claimed_on_their_kcp_side_unless_the_export_serves_them() {
    let prs = [pr(
        json!({"resource": {"apiGroup": "example.corp", "kind": "Database"},
        "related": [
            {"identifier": "creds", "origin": "kcp", "kind": "Secret", "object": {"reference": {"path": "a"}}},
            {"identifier": "ca", "origin": "service", "version": "v1", "resource": "configmaps",
             "projection": {"resource": "secrets"}, "object": {"reference": {"path": "b"}}},
            {"identifier": "cert", "origin": "kcp", "group": "certs.io", "version": "v1",
             "resource": "certificates", "identityHash": "abc", "object": {"reference": {"path": "c"}}},
            {"identifier": "db", "origin": "kcp", "group": "example.corp", "version": "v1",
             "resource": "databases", "object": {"reference": {"path": "d"}}}
        ]}),
        Some("vnew.databases.example.corp"),
    )];
    let plan = plan(&APIExportSpec::default(), &prs);
    let names: Vec<String> = claims(&plan.spec)
        .into_iter()
        .map(|(g, r, _, h)| format!("{g}/{r}/{h}"))
        .collect();
    assert_eq!(
        names,
        [
            "/events/",
            "/namespaces/",
            "/secrets/",
            "certs.io/certificates/abc"
        ]
    );
}

#[test]
fn existing_claims_are_kept_and_never_duplicated() {
    let current = export(json!({"permissionClaims": [
        {"group": "foreign.io", "resource": "widgets", "verbs": ["get"], "identityHash": "h"},
        {"resource": "events", "verbs": ["*"]},
        {"resource": "namespaces", "verbs": ["get", "list"]},
    ]}));
    let prs = [pr(
        json!({"resource": {"apiGroup": "a", "kind": "K"},
                         "filter": {"namespace": {"matchLabels": {"x": "y"}}}}),
        None,
    )];
    let plan = plan(&current, &prs);
    let claims = claims(&plan.spec);
    assert_eq!(claims.len(), 3);
    assert_eq!(
        claims[2],
        (
            "foreign.io".into(),
            "widgets".into(),
            vec!["get".into()],
            "h".into()
        )
    );
    assert_eq!(
        claims[1].2,
        vec!["*".to_string()],
        "an existing claim is widened, not duplicated"
    );
    assert_eq!(plan.added_claims, ["namespaces"]);
}

#[test]
fn an_up_to_date_export_needs_no_change() {
    let prs = [pr(
        json!({"resource": {"apiGroup": "example.corp", "kind": "Database"}}),
        Some("vnew.databases.example.corp"),
    )];
    let first = plan(&APIExportSpec::default(), &prs);
    let second = plan(&first.spec, &prs);
    assert_eq!(second.spec, first.spec);
    assert!(second.added_schemas.is_empty() && second.added_claims.is_empty());
}

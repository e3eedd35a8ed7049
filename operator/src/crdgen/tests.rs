use std::path::Path;

use serde_json::Value;

use super::*;

#[test]
fn committed_crds_match_the_rust_types() {
    for dir in ["../crds", "../charts/offering-operator/crds"] {
        assert_committed_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir));
    }
}

fn assert_committed_crds(dir: &Path) {
    for file in crds() {
        let path = dir.join(&file.file_name);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let generated = file.render().expect("CRD renders");
        assert!(
            committed == generated,
            "{} differs from the Rust types; regenerate with \
             `cargo run -p offering-operator -- crds --output-dir {}`",
            path.display(),
            dir.display()
        );
    }
}

#[test]
fn generated_crds_have_structural_schemas() {
    for file in crds() {
        for version in &file.crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("every version has a schema");
            let schema = serde_json::to_value(schema).expect("schema serializes");
            let mut problems = Vec::new();
            check_structural(&schema, "", true, &mut problems);
            assert!(
                problems.is_empty(),
                "{} {} is not structural:\n{}",
                file.file_name,
                version.name,
                problems.join("\n")
            );
        }
    }
}

#[test]
fn the_structural_check_finds_what_an_api_server_rejects() {
    let mut problems = Vec::new();
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "ref": {"type": "object", "$ref": "#/definitions/x"},
            "junctor": {"type": "object", "anyOf": [{"type": "string"}]},
            "list": {"type": "array"}
        }
    });
    check_structural(&bad, "", true, &mut problems);
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

#[test]
fn published_resource_crd_is_cluster_scoped_with_status_and_cel_rules() {
    let crd = PublishedResource::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("publishedresources.syncagent.kcp.io")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let schema = serde_json::to_value(&version.schema).expect("schema serializes");
    let related =
        &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["related"]["items"];
    let rules: Vec<&str> = related["x-kubernetes-validations"]
        .as_array()
        .expect("related items carry CEL rules")
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert!(
        rules.contains(&"has(self.resource) == has(self.version)"),
        "{rules:?}"
    );
    assert_eq!(rules.len(), 5);
    let watch = &related["properties"]["watch"]["x-kubernetes-validations"][0]["rule"];
    assert_eq!(watch, "has(self.byOwner) != has(self.bySelector)");
}

#[test]
fn published_resource_columns_show_the_schema_and_why_it_is_not_synced() {
    let crd = PublishedResource::crd();
    let columns: Vec<(String, String)> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.json_path.clone()))
        .collect();
    let expected = [
        ("Schema", ".status.resourceSchemaName"),
        (
            "Published",
            r#".status.conditions[?(@.type=="SchemaPublished")].status"#,
        ),
        (
            "Synced",
            r#".status.conditions[?(@.type=="Syncing")].status"#,
        ),
        (
            "Reason",
            r#".status.conditions[?(@.status=="False")].reason"#,
        ),
        ("Age", ".metadata.creationTimestamp"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(name, path)| (name.to_string(), path.to_string()))
        .collect();
    assert_eq!(columns, expected);
}

#[test]
fn published_offering_crd_has_short_name_category_and_ready_column() {
    let crd = PublishedOffering::crd();
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["pof".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["kcp".to_string()]));
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .expect("columns");
    assert_eq!(columns[0].name, "Ready");
    assert_eq!(columns.last().map(|c| c.name.as_str()), Some("Age"));
}

/// Collects the places where `schema` breaks the rules the API server
/// applies to CRD schemas ("structural schemas").
fn check_structural(schema: &Value, path: &str, needs_type: bool, problems: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    let preserves = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if needs_type && !node.contains_key("type") && !preserves && !int_or_string {
        problems.push(format!("{path}: no type"));
    }
    for key in ["$ref", "definitions", "$defs"] {
        if node.contains_key(key) {
            problems.push(format!("{path}: uses {key}"));
        }
    }
    if node.contains_key("properties") && node.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if node.get("type") == Some(&Value::String("array".into())) && !node.contains_key("items") {
        problems.push(format!("{path}: array without items"));
    }
    for junctor in ["allOf", "anyOf", "oneOf", "not"] {
        let subs: Vec<&Value> = match node.get(junctor) {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(other) => vec![other],
            None => continue,
        };
        for sub in subs {
            for forbidden in [
                "type",
                "description",
                "default",
                "additionalProperties",
                "nullable",
            ] {
                if sub.get(forbidden).is_some() {
                    problems.push(format!("{path}: {forbidden} inside {junctor}"));
                }
            }
        }
    }
    if let Some(Value::Object(properties)) = node.get("properties") {
        for (name, child) in properties {
            check_structural(child, &format!("{path}.{name}"), true, problems);
        }
    }
    if let Some(items) = node.get("items") {
        check_structural(items, &format!("{path}[]"), true, problems);
    }
    if let Some(extra @ Value::Object(_)) = node.get("additionalProperties") {
        check_structural(extra, &format!("{path}{{}}"), true, problems);
    }
}

#[test]
fn the_agents_security_contexts_keep_a_null_that_removes_a_default() {
    let crd = serde_json::to_value(PublishedOffering::crd()).unwrap();
    let agent = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["agent"]["properties"];
    for (field, key) in [
        ("securityContext", "runAsUser"),
        ("securityContext", "runAsGroup"),
        ("podSecurityContext", "fsGroup"),
        ("podSecurityContext", "seccompProfile"),
    ] {
        let property = &agent[field]["properties"][key];
        assert_eq!(property["nullable"], true, "{field}.{key}: {property}");
    }
}

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::json;

use super::*;

fn source() -> CustomResourceDefinitionSpec {
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(include_str!("fixtures/crd-databases.yaml")).expect("fixture");
    crd.spec
}

fn published(spec: serde_json::Value) -> PublishedResourceSpec {
    serde_json::from_value(spec).expect("PublishedResource spec")
}

fn names(projected: &Projected) -> Vec<(&str, bool)> {
    projected
        .spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.storage))
        .collect()
}

#[test]
fn without_a_selection_every_version_is_kept() {
    let p = project(
        &source(),
        &published(json!({"resource": {"apiGroup": "example.corp", "kind": "Database"}})),
    )
    .expect("projects");
    assert_eq!(
        names(&p),
        [("v1", false), ("v1beta1", true), ("v1alpha1", false)]
    );
    assert_eq!(p.spec.names.short_names, Some(vec!["db".to_string()]));
}

#[test]
fn only_selected_versions_are_kept() {
    let p = project(
        &source(),
        &published(json!({"resource": {"apiGroup": "example.corp", "kind": "Database", "versions": ["v1beta1"]}})),
    )
    .expect("projects");
    assert_eq!(names(&p), [("v1beta1", true)]);
}

#[test]
fn the_last_served_selected_version_becomes_storage_when_storage_is_not_selected() {
    let p = project(
        &source(),
        &published(json!({"resource": {"apiGroup": "example.corp", "kind": "Database", "version": "v1alpha1"}})),
    )
    .expect("projects");
    assert_eq!(names(&p), [("v1alpha1", true)]);
}

#[test]
fn unknown_unserved_and_conflicting_selections_are_errors() {
    let spec = |resource| published(json!({"resource": resource}));
    let unknown = project(
        &source(),
        &spec(json!({"apiGroup": "g", "kind": "K", "versions": ["v9"]})),
    );
    assert!(matches!(unknown, Err(ProjectionError::UnknownVersion(v, _)) if v == "v9"));
    let unserved = project(
        &source(),
        &spec(json!({"apiGroup": "g", "kind": "K", "versions": ["v1"]})),
    );
    assert_eq!(unserved, Err(ProjectionError::NotServed("v1".into())));
    let both = project(
        &source(),
        &spec(json!({"apiGroup": "g", "kind": "K", "version": "v1", "versions": ["v1"]})),
    );
    assert_eq!(both, Err(ProjectionError::VersionAndVersions));
}

#[test]
fn full_projection_changes_group_kind_names_scope_and_versions() {
    let p = project(
        &source(),
        &published(json!({
            "resource": {"apiGroup": "example.corp", "kind": "Database", "versions": ["v1alpha1", "v1beta1"]},
            "projection": {
                "group": "dbaas.example.io", "kind": "PostgresInstance", "scope": "Cluster",
                "versions": {"v1beta1": "v2", "v1alpha1": "v1"},
                "shortNames": [], "categories": ["managed"]
            }
        })),
    )
    .expect("projects");
    assert_eq!(p.spec.group, "dbaas.example.io");
    assert_eq!(p.spec.names.kind, "PostgresInstance");
    assert_eq!(p.spec.names.plural, "postgresinstances");
    assert_eq!(p.spec.names.singular.as_deref(), Some("postgresinstance"));
    assert_eq!(
        p.spec.names.list_kind.as_deref(),
        Some("PostgresInstanceList")
    );
    assert_eq!(p.spec.scope, "Cluster");
    assert_eq!(p.spec.names.short_names, Some(vec![]));
    assert_eq!(p.spec.names.categories, Some(vec!["managed".to_string()]));
    assert_eq!(names(&p), [("v2", true), ("v1", false)]);
    assert_eq!(
        p.group_resource(),
        ("dbaas.example.io".into(), "postgresinstances".into())
    );
}

#[test]
fn an_explicit_plural_wins_over_the_derived_one() {
    let p = project(
        &source(),
        &published(
            json!({"resource": {"apiGroup": "example.corp", "kind": "Database"},
                          "projection": {"kind": "Sertifikat", "plural": "sertifikater"}}),
        ),
    )
    .expect("projects");
    assert_eq!(p.spec.names.plural, "sertifikater");
}

#[test]
fn invalid_projections_name_the_field() {
    let cases = [
        (
            json!({"versions": {"v1beta1": "beta"}}),
            "spec.projection.versions",
        ),
        (
            json!({"versions": {"v1beta1": "v1", "v1alpha1": "v1"}}),
            "more than one version",
        ),
        (json!({"version": "v2"}), "spec.projection.version"),
        (json!({"kind": "not-a-kind"}), "spec.projection.kind"),
        (json!({"group": "Bad_Group"}), "spec.projection.group"),
        (json!({"plural": "Plural"}), "spec.projection.plural"),
    ];
    for (projection, expected) in cases {
        let error = project(
            &source(),
            &published(
                json!({"resource": {"apiGroup": "example.corp", "kind": "Database",
                                            "versions": ["v1alpha1", "v1beta1"]},
                              "projection": projection}),
            ),
        )
        .expect_err("invalid projection");
        assert!(
            error.to_string().contains(expected),
            "{error} should mention {expected}"
        );
    }
}

#[test]
fn schema_names_are_content_addressed() {
    let spec = published(json!({"resource": {"apiGroup": "example.corp", "kind": "Database"}}));
    let a = project(&source(), &spec).expect("projects").schema_name();
    let again = project(&source(), &spec).expect("projects").schema_name();
    assert_eq!(a, again);
    assert!(
        a.starts_with('v') && a.ends_with(".databases.example.corp"),
        "{a}"
    );
    assert_eq!(a.split('.').next().map(str::len), Some(9));

    let mut changed = source();
    changed.versions[1].served = true;
    changed.versions[0].deprecated = Some(true);
    let b = project(&changed, &spec).expect("projects").schema_name();
    assert_ne!(a, b);
}

#[test]
fn schemas_carry_agent_metadata_and_conversion_only_with_several_versions() {
    let single = project(
        &source(),
        &published(json!({"resource": {"apiGroup": "example.corp", "kind": "Database", "versions": ["v1beta1"]}})),
    )
    .expect("projects")
    .to_schema("agent-a", Some(3));
    assert_eq!(single.spec.conversion, None);
    let labels = single.metadata.labels.expect("labels");
    assert_eq!(
        labels.get(AGENT_NAME_KEY).map(String::as_str),
        Some("agent-a")
    );
    let annotations = single.metadata.annotations.expect("annotations");
    assert_eq!(
        annotations
            .get(SOURCE_GENERATION_ANNOTATION)
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(
        single.spec.versions[0].schema["properties"]["spec"]["properties"]["size"]["type"],
        "string"
    );
    assert!(
        single.spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );

    let several = project(
        &source(),
        &published(json!({"resource": {"apiGroup": "example.corp", "kind": "Database"}})),
    )
    .expect("projects")
    .to_schema("agent-a", None);
    assert_eq!(
        several.spec.conversion.map(|c| c.strategy),
        Some("None".to_string())
    );
}

#[test]
fn core_group_schemas_are_named_with_core() {
    let mut core = source();
    core.group = String::new();
    let p = project(
        &core,
        &published(json!({"resource": {"apiGroup": "", "kind": "Database"}})),
    )
    .expect("projects");
    assert!(p.schema_name().ends_with(".databases.core"));
    assert_eq!(
        parse_schema_name(&p.schema_name()),
        Some((String::new(), "databases".into()))
    );
    assert_eq!(
        parse_schema_name("vabc.widgets.example.io"),
        Some(("example.io".into(), "widgets".into()))
    );
}

use serde_json::Value;

use super::*;

/// Parses a fixture twice: as plain JSON (what the user wrote) and as a
/// PublishedResource, and returns both plus the typed object written back.
fn round_trip(yaml: &str) -> (Value, PublishedResource, Value) {
    let written: Value = serde_saphyr::from_str(yaml).expect("fixture is valid YAML");
    let typed: PublishedResource =
        serde_json::from_value(written.clone()).expect("fixture parses as a PublishedResource");
    let back = serde_json::to_value(&typed).expect("PublishedResource serializes");
    (written, typed, back)
}

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/", $name, ".yaml"))
    };
}

#[test]
fn every_fixture_round_trips_without_losing_or_inventing_fields() {
    for (name, yaml) in [
        ("condensed", fixture!("condensed")),
        ("related-reference", fixture!("related-reference")),
        ("related-selector", fixture!("related-selector")),
        ("related-template", fixture!("related-template")),
    ] {
        let (written, _, back) = round_trip(yaml);
        assert_eq!(written, back, "fixture {name} changed in a round trip");
    }
}

#[test]
fn condensed_example_parses_into_its_fields() {
    let (_, pr, _) = round_trip(fixture!("condensed"));
    let spec = &pr.spec;
    assert_eq!(spec.resource.api_group, "cert-manager.io");
    assert_eq!(
        spec.resource.versions.as_deref(),
        Some(&["v1".to_string()][..])
    );
    let projection = spec.projection.as_ref().expect("projection");
    assert_eq!(projection.plural.as_deref(), Some("sertifikater"));
    assert_eq!(
        projection
            .versions
            .as_ref()
            .and_then(|v| v.get("v1"))
            .map(String::as_str),
        Some("v1beta1")
    );
    let mutation = spec.mutation.as_ref().expect("mutation");
    assert_eq!(mutation.spec.as_ref().map(Vec::len), Some(3));
    assert!(mutation.spec.as_ref().expect("spec rules")[1].cel.is_some());
    let related = spec.related.as_ref().expect("related");
    assert_eq!(related[0].origin, RelatedResourceOrigin::Service);
    assert_eq!(related[0].group.as_deref(), Some(""));
    assert!(
        related[0]
            .watch
            .as_ref()
            .and_then(|w| w.by_owner.as_ref())
            .is_some()
    );
    assert_eq!(related[1].kind, Some(RelatedResourceKind::Secret));
    let selector = related[1].object.spec.selector.as_ref().expect("selector");
    assert_eq!(
        selector
            .rewrite
            .template
            .as_ref()
            .and_then(|t| t.template.as_deref()),
        Some("{{ .Value }}-copy")
    );
    assert_eq!(
        spec.synchronization,
        Some(SynchronizationSpec { enabled: true })
    );
    assert_eq!(
        pr.status
            .as_ref()
            .and_then(|s| s.resource_schema_name.as_deref()),
        Some("v1a2b3c4d.sertifikater.certs.example.corp")
    );
}

#[test]
fn short_names_and_categories_keep_unset_apart_from_empty() {
    let (_, cleared, back) = round_trip(fixture!("related-template"));
    let projection = cleared.spec.projection.as_ref().expect("projection");
    assert_eq!(projection.short_names, Some(vec![]));
    assert_eq!(projection.categories, Some(vec![]));
    assert_eq!(
        back["spec"]["projection"]["shortNames"],
        serde_json::json!([])
    );

    let (_, kept, back) = round_trip(fixture!("condensed"));
    let projection = kept.spec.projection.as_ref().expect("projection");
    assert_eq!(projection.categories, None);
    assert!(back["spec"]["projection"].get("categories").is_none());
}

#[test]
fn selector_rewrite_and_label_selector_are_separate() {
    let (_, pr, _) = round_trip(fixture!("related-selector"));
    let related = &pr.spec.related.as_ref().expect("related")[0];
    let selector = related.object.spec.selector.as_ref().expect("selector");
    let labels = selector.label_selector();
    assert_eq!(
        labels
            .match_labels
            .as_ref()
            .and_then(|l| l.get("db"))
            .map(String::as_str),
        Some("{{ .LocalObject.metadata.name }}")
    );
    assert_eq!(labels.match_expressions.as_ref().map(Vec::len), Some(1));
    assert!(selector.rewrite.regex.is_some());
    let namespace = related.object.namespace.as_ref().expect("namespace");
    assert!(namespace.selector.is_some());
    assert_eq!(related.sync_status, Some(true));
}

#[test]
fn deprecated_single_version_fields_are_kept() {
    let (_, pr, _) = round_trip(fixture!("related-selector"));
    assert_eq!(pr.spec.resource.version.as_deref(), Some("v1"));
    assert_eq!(pr.spec.resource.versions, None);
    let (_, pr, _) = round_trip(fixture!("related-template"));
    let projection = pr.spec.projection.as_ref().expect("projection");
    assert_eq!(projection.version.as_deref(), Some("v1beta1"));
    assert_eq!(projection.scope, Some(ResourceScope::Cluster));
}

#[test]
fn an_unknown_origin_is_rejected() {
    let yaml = fixture!("related-reference").replace("origin: kcp", "origin: elsewhere");
    let value: Value = serde_saphyr::from_str(&yaml).expect("valid YAML");
    let error = serde_json::from_value::<PublishedResource>(value)
        .expect_err("origin outside the enum must not parse");
    assert!(error.to_string().contains("elsewhere"), "{error}");
}

fn related(value: serde_json::Value) -> RelatedResourceSpec {
    serde_json::from_value(value).expect("related resource spec")
}

#[test]
fn legacy_kinds_and_projections_give_the_gvr_of_each_side() {
    let spec = related(serde_json::json!({
        "identifier": "ca", "origin": "service", "version": "v1", "resource": "configmaps",
        "projection": {"resource": "secrets"}, "object": {"reference": {"path": "spec.ca"}}
    }));
    let (origin, destination) = spec.gvrs();
    assert_eq!(origin, (String::new(), "v1".into(), "configmaps".into()));
    assert_eq!(destination, (String::new(), "v1".into(), "secrets".into()));
    let legacy = related(serde_json::json!({
        "identifier": "c", "origin": "kcp", "kind": "Secret", "object": {"reference": {"path": "a"}}
    }));
    assert_eq!(legacy.gvrs().0.2, "secrets");
}

#[test]
fn each_side_of_a_related_resource_follows_its_origin() {
    let from_kcp = related(serde_json::json!({
        "identifier": "creds", "origin": "kcp", "group": "", "version": "v1",
        "resource": "configmaps", "projection": {"resource": "secrets"},
        "object": {"reference": {"path": "spec.secretName"}}
    }));
    assert_eq!(
        from_kcp.service_group_resource(),
        (String::new(), "secrets".into())
    );
    assert_eq!(
        from_kcp.kcp_group_resource(),
        (String::new(), "configmaps".into())
    );
    let from_service = related(serde_json::json!({
        "identifier": "creds", "origin": "service", "kind": "Secret",
        "projection": {"group": "example.com", "resource": "credentials"},
        "object": {"reference": {"path": "spec.secretName"}}
    }));
    assert_eq!(
        from_service.service_group_resource(),
        (String::new(), "secrets".into())
    );
    assert_eq!(
        from_service.kcp_group_resource(),
        ("example.com".into(), "credentials".into())
    );
}

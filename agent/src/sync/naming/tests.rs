use serde_json::json;

use super::*;

fn render(pattern: &str, context: &NamingContext<'_>) -> Result<String, NamingError> {
    Pattern::compile(pattern)?.render(context)
}

fn check(pattern: &str) -> Result<(), NamingError> {
    Pattern::compile(pattern).map(drop)
}

fn object() -> serde_json::Value {
    json!({"metadata": {"name": "my-db", "namespace": "team-a", "labels": {"tier": "Gold"}}})
}

fn context(object: &serde_json::Value) -> NamingContext<'_> {
    NamingContext {
        object,
        cluster_name: "2m4xabc",
        cluster_path: "root:org:team",
    }
}

#[test]
fn sha3_matches_the_published_test_vector() {
    assert_eq!(
        sha3_hex(""),
        "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    );
}

#[test]
fn the_default_scheme_combines_two_twenty_character_hashes() {
    let object = object();
    let name = render(DEFAULT_NAME, &context(&object)).expect("renders");
    assert_eq!(
        name,
        format!("{}-{}", &sha3_hex("team-a")[..20], &sha3_hex("my-db")[..20])
    );
    assert_eq!(
        render(DEFAULT_NAMESPACE, &context(&object)).expect("renders"),
        "2m4xabc"
    );
}

#[test]
fn go_template_pipelines_with_arguments_are_translated() {
    let object = object();
    let rendered = render(
        "{{ .ClusterName }}-{{ .Object.metadata.namespace | sha3short }}-{{ .Object.metadata.name | sha3short 12 }}",
        &context(&object),
    )
    .expect("renders");
    assert_eq!(
        rendered,
        format!(
            "2m4xabc-{}-{}",
            &sha3_hex("team-a")[..20],
            &sha3_hex("my-db")[..12]
        )
    );
    let lowered = render(
        "{{ .Object.metadata.labels.tier | lower }}-{{ .ClusterPath | replace \":\" \"-\" }}",
        &context(&object),
    )
    .expect("renders");
    assert_eq!(lowered, "gold-root-org-team");
    assert_eq!(
        translate("{{ .Object.metadata.name | trimPrefix \"my-\" | upper }}").expect("translates"),
        "{{upper (trimPrefix \"my-\" Object.metadata.name)}}"
    );
}

#[test]
fn handlebars_templates_and_missing_values_with_default_work() {
    let object = object();
    assert_eq!(
        render("{{sha3short Object.metadata.name 8}}", &context(&object)).expect("renders"),
        &sha3_hex("my-db")[..8]
    );
    let fallback = render(
        "{{ .Object.metadata.labels.missing | default \"none\" }}",
        &context(&object),
    )
    .expect("renders");
    assert_eq!(fallback, "none");
    assert_eq!(
        render("{{ .Object.metadata.name | shortHash }}", &context(&object)).expect("renders"),
        &sha1_hex("my-db")[..20]
    );
}

#[test]
fn html_is_not_escaped() {
    let object = json!({"metadata": {"name": "a&b<c>"}});
    assert_eq!(
        render("{{ .Object.metadata.name }}", &context(&object)).expect("renders"),
        "a&b<c>"
    );
}

#[test]
fn legacy_placeholders_are_replaced_longest_first() {
    let object = object();
    let rendered = render(
        "$remoteClusterName-$remoteNamespace-$remoteNamespaceHash-$remoteName-$remoteNameHash",
        &context(&object),
    )
    .expect("renders");
    assert_eq!(
        rendered,
        format!(
            "2m4xabc-team-a-{}-my-db-{}",
            &sha1_hex("team-a")[..20],
            &sha1_hex("my-db")[..20]
        )
    );
}

#[test]
fn unsupported_templates_are_errors_not_panics() {
    let object = object();
    for template in [
        "{{ if .ClusterName }}x{{ end }}",
        "{{ $x := 1 }}",
        "{{ range .Object }}{{ end }}",
        "{{ .ClusterName ",
    ] {
        let error = render(template, &context(&object)).expect_err(template);
        assert!(
            matches!(error, NamingError::Unsupported { .. }),
            "{template}: {error}"
        );
    }
    let error =
        render("{{ nosuchhelper .ClusterName }}", &context(&object)).expect_err("unknown helper");
    assert!(matches!(error, NamingError::Render { .. }), "{error}");
}

#[test]
fn patterns_are_checked_before_any_object_is_named() {
    assert_eq!(check("$remoteName"), Ok(()));
    assert_eq!(check("{{ .Object.metadata.name | sha3short 8 }}"), Ok(()));
    assert!(matches!(
        check("{{ if .ClusterName }}x{{ end }}"),
        Err(NamingError::Unsupported { .. })
    ));
}

fn placement(
    naming: &ResourceNaming,
    local_namespaced: bool,
    object: &serde_json::Value,
) -> Placement {
    Naming::compile(naming, local_namespaced)
        .expect("compiles")
        .resolve(&context(object))
        .expect("resolves")
}

#[test]
fn default_placement_hashes_namespace_and_name_into_the_cluster_namespace() {
    let object = object();
    assert_eq!(
        placement(&ResourceNaming::default(), true, &object),
        Placement {
            name: format!("{}-{}", &sha3_hex("team-a")[..20], &sha3_hex("my-db")[..20]),
            namespace: Some("2m4xabc".into()),
        }
    );
}

#[test]
fn default_names_of_cluster_scoped_objects_hash_the_name_only() {
    let object = json!({"metadata": {"name": "my-db"}});
    assert_eq!(
        placement(&ResourceNaming::default(), true, &object).name,
        &sha3_hex("my-db")[..20]
    );
}

#[test]
fn default_names_of_cluster_scoped_copies_carry_the_cluster_and_no_namespace() {
    let object = object();
    assert_eq!(
        placement(&ResourceNaming::default(), false, &object),
        Placement {
            name: format!(
                "2m4xabc-{}-{}",
                &sha3_hex("team-a")[..20],
                &sha3_hex("my-db")[..20]
            ),
            namespace: None,
        }
    );
}

#[test]
fn configured_patterns_replace_the_defaults_and_empty_ones_do_not() {
    let object = object();
    let naming = ResourceNaming {
        name: Some("$remoteName".into()),
        namespace: Some("{{ .ClusterName }}-x".into()),
        ..Default::default()
    };
    assert_eq!(
        placement(&naming, false, &object),
        Placement {
            name: "my-db".into(),
            namespace: None
        }
    );
    assert_eq!(
        placement(&naming, true, &object),
        Placement {
            name: "my-db".into(),
            namespace: Some("2m4xabc-x".into())
        }
    );
    let empty = ResourceNaming {
        name: Some(String::new()),
        namespace: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(
        placement(&empty, true, &object),
        placement(&ResourceNaming::default(), true, &object)
    );
}

#[test]
fn invalid_names_and_namespaces_are_errors() {
    let object = object();
    let resolve = |naming: ResourceNaming| {
        Naming::compile(&naming, true)
            .expect("compiles")
            .resolve(&context(&object))
    };
    assert!(matches!(
        resolve(ResourceNaming {
            name: Some("Not_Valid".into()),
            namespace: None,
            ..Default::default()
        }),
        Err(NamingError::Invalid(_, "object name"))
    ));
    assert!(matches!(
        resolve(ResourceNaming {
            name: None,
            namespace: Some("a.b".into()),
            ..Default::default()
        }),
        Err(NamingError::Invalid(_, "namespace name"))
    ));
}

#[test]
fn templates_compile_once_and_render_many_objects() {
    let templates = Templates::with(["{{ .Object.name }}", "{{ if .x }}"]);
    for name in ["a", "b"] {
        assert_eq!(
            templates.render("{{ .Object.name }}", &json!({"Object": {"name": name}})),
            Ok(name.to_string())
        );
    }
    assert_eq!(
        templates.render("plain", &json!({})),
        Ok("plain".to_string())
    );
    assert!(matches!(
        templates.render("{{ if .x }}", &json!({})),
        Err(NamingError::Unsupported { .. })
    ));
}

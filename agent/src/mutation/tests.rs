use serde_json::json;

use super::*;

fn rules(value: serde_json::Value) -> Vec<ResourceMutation> {
    serde_json::from_value(value).expect("rules")
}

fn object() -> serde_json::Value {
    json!({"metadata": {"name": "db", "annotations": {"example.com/x": "1"}},
           "spec": {"secretName": "creds", "duration": "1h", "issuerRef": {"group": "g", "name": "n"},
                    "users": [{"name": "a"}, {"name": "b"}], "port": 80}})
}

#[test]
fn rules_apply_in_order_with_go_regex_replacement_syntax() {
    let mutator = Mutator::compile(
        &rules(json!([
            {"regex": {"path": "spec.secretName", "pattern": "(.+)", "replacement": "tls-$1"}},
            {"cel": {"path": "spec.duration", "expression": "\"2160h\""}},
            {"delete": {"path": "spec.issuerRef.group"}},
            {"regex": {"path": "spec.port", "pattern": "^(\\d+)$", "replacement": "${1}0"}},
            {"regex": {"path": "spec.fixed", "replacement": "literal"}},
        ])),
        "spec.mutation.spec",
    )
    .expect("compiles");
    let mut object = object();
    mutator.apply(&mut object, None).expect("applies");
    assert_eq!(object["spec"]["secretName"], "tls-creds");
    assert_eq!(object["spec"]["duration"], "2160h");
    assert_eq!(object["spec"]["issuerRef"], json!({"name": "n"}));
    assert_eq!(object["spec"]["port"], "800");
    assert_eq!(object["spec"]["fixed"], "literal");
}

#[test]
fn cel_sees_value_self_and_other_and_may_return_any_type() {
    let mutator = Mutator::compile(
        &rules(json!([
            {"cel": {"path": "spec.copies", "expression": "size(self.spec.users) + 1"}},
            {"cel": {"path": "spec.fromOther", "expression": "other == null ? 'none' : other.metadata.name"}},
            {"cel": {"path": "spec.upper", "expression": "value + '-x'"}},
        ])),
        "spec.mutation.spec",
    )
    .expect("compiles");
    let mut object = object();
    object["spec"]["upper"] = json!("v");
    let other = json!({"metadata": {"name": "counterpart"}});
    mutator.apply(&mut object, Some(&other)).expect("applies");
    assert_eq!(object["spec"]["copies"], 3);
    assert_eq!(object["spec"]["fromOther"], "counterpart");
    assert_eq!(object["spec"]["upper"], "v-x");
    let mut alone = object.clone();
    mutator.apply(&mut alone, None).expect("applies");
    assert_eq!(alone["spec"]["fromOther"], "none");
}

#[test]
fn templates_see_the_value_and_both_objects() {
    let mutator = Mutator::compile(
        &rules(json!([{"template": {"path": "spec.secretName",
                                    "template": "{{ .Value.String | upper }}-{{ .RemoteObject.metadata.name }}"}}])),
        "spec.mutation.spec",
    )
    .expect("compiles");
    let mut object = object();
    mutator
        .apply(&mut object, Some(&json!({"metadata": {"name": "r"}})))
        .expect("applies");
    assert_eq!(object["spec"]["secretName"], "CREDS-r");
}

#[test]
fn paths_index_arrays_and_escape_dots() {
    let mut object = object();
    let path = split_path("spec.users.1.name");
    assert_eq!(get(&object, &path), Some(&json!("b")));
    set(&mut object, &path, json!("c"));
    assert_eq!(object["spec"]["users"][1]["name"], "c");
    let escaped = split_path("metadata.annotations.example\\.com/x");
    assert_eq!(escaped, ["metadata", "annotations", "example.com/x"]);
    delete(&mut object, &escaped);
    assert!(
        object["metadata"]["annotations"]
            .get("example.com/x")
            .is_none()
    );
    set(&mut object, &split_path("spec.new.deep"), json!(1));
    assert_eq!(object["spec"]["new"]["deep"], 1);
}

#[test]
fn broken_rules_are_reported_with_their_position() {
    let cases = [
        (
            json!([{"regex": {"path": "spec.a", "pattern": "(unclosed"}}]),
            "spec.mutation.spec[0]: invalid regular expression",
        ),
        (
            json!([{"delete": {"path": "spec.a"}}, {"cel": {"path": "spec.a", "expression": "1 +"}}]),
            "spec.mutation.spec[1]: CEL expression",
        ),
        (
            json!([{"template": {"path": "spec.a", "template": "{{ if .Value }}x{{ end }}"}}]),
            "spec.mutation.spec[0]",
        ),
        (json!([{}]), "needs one of"),
        (json!([{"delete": {"path": ""}}]), "path must not be empty"),
    ];
    for (rules_json, expected) in cases {
        let error = Mutator::compile(&rules(rules_json), "spec.mutation.spec").expect_err(expected);
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[test]
fn a_failing_cel_expression_is_an_error_at_apply_time() {
    let mutator = Mutator::compile(
        &rules(json!([{"cel": {"path": "spec.x", "expression": "self.spec.missing.deeper"}}])),
        "spec.mutation.spec",
    )
    .expect("compiles");
    let error = mutator
        .apply(&mut object(), None)
        .expect_err("missing field");
    assert!(
        error
            .to_string()
            .starts_with("spec.mutation.spec[0]: CEL expression"),
        "{error}"
    );
}

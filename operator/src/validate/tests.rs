use super::*;

fn fixture(yaml: &str) -> PublishedOffering {
    serde_saphyr::from_str(yaml).expect("fixture")
}

fn default_secret() -> SecretLocation {
    SecretLocation {
        namespace: "operator".into(),
        name: "kcp-default".into(),
        key: "admin.kubeconfig".into(),
    }
}

fn invalid_spec(result: Result<Validated, Error>) -> String {
    match result {
        Err(Error::InvalidSpec(message)) => message,
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
}

#[test]
fn a_valid_offering_reads_its_own_kcp_secret_with_the_default_key() {
    let offering = fixture(include_str!("fixtures/valid.yaml"));
    let validated = validate(&offering, Some(&default_secret())).unwrap();
    assert_eq!(
        validated.kcp_secret,
        SecretLocation {
            namespace: "team-a".into(),
            name: "kcp-admin".into(),
            key: KUBECONFIG_KEY.into(),
        }
    );
    assert_eq!(validated.names.owner, "team-a/databases");
}

#[test]
fn without_a_reference_the_operators_default_secret_is_used() {
    let offering = fixture(include_str!("fixtures/no-secret-ref.yaml"));
    let validated = validate(&offering, Some(&default_secret())).unwrap();
    assert_eq!(validated.kcp_secret, default_secret());
}

#[test]
fn without_a_reference_or_a_default_the_secret_is_missing() {
    let offering = fixture(include_str!("fixtures/no-secret-ref.yaml"));
    match validate(&offering, None) {
        Err(Error::KcpSecretMissing(message)) => {
            assert!(message.contains("--default-kcp-secret"), "{message}");
        }
        other => panic!("expected KcpSecretMissing, got {other:?}"),
    }
}

#[test]
fn two_resources_of_one_name_are_refused_by_name() {
    let offering = fixture(include_str!("fixtures/duplicate-resources.yaml"));
    let message = invalid_spec(validate(&offering, None));
    assert!(message.contains("two entries named \"dbs\""), "{message}");
}

#[test]
fn a_name_that_is_not_a_dns_label_is_refused() {
    let offering = fixture(include_str!("fixtures/dotted-name.yaml"));
    let message = invalid_spec(validate(&offering, None));
    assert!(message.contains("\"databases.v2\""), "{message}");
    assert!(message.contains("DNS-1035"), "{message}");
}

#[test]
fn the_agents_kubeconfig_secret_cannot_be_the_operators() {
    let offering = fixture(include_str!("fixtures/agent-secret-as-kcp-secret.yaml"));
    let message = invalid_spec(validate(&offering, None));
    assert!(message.contains("databases-kcp-kubeconfig"), "{message}");
}

fn facts(yaml: &str) -> Facts {
    serde_saphyr::from_str(yaml).expect("facts fixture")
}

fn names() -> Names {
    Names::of(&fixture(include_str!("fixtures/valid.yaml"))).unwrap()
}

fn conflict(facts: &Facts) -> Error {
    ownership(facts, &names(), "root:providers:db").expect_err("a conflict")
}

#[test]
fn nothing_there_or_everything_the_offerings_own_passes() {
    assert!(ownership(&Facts::default(), &names(), "root:providers:db").is_ok());
    let own = facts(include_str!("fixtures/facts-own.yaml"));
    assert!(ownership(&own, &names(), "root:providers:db").is_ok());
}

#[test]
fn a_foreign_object_of_a_name_the_offering_writes_is_a_conflict() {
    match conflict(&facts(include_str!(
        "fixtures/facts-foreign-service-account.yaml"
    ))) {
        Error::ObjectConflict(message) => {
            assert!(
                message.starts_with("ServiceAccount databases-sync-agent exists"),
                "{message}"
            );
        }
        other => panic!("expected ObjectConflict, got {other:?}"),
    }
}

#[test]
fn the_agents_secret_labelled_for_another_offering_is_a_conflict() {
    match conflict(&facts(include_str!("fixtures/facts-foreign-secret.yaml"))) {
        Error::ObjectConflict(message) => {
            assert!(
                message.starts_with("Secret databases-kcp-kubeconfig exists"),
                "{message}"
            );
        }
        other => panic!("expected ObjectConflict, got {other:?}"),
    }
}

#[test]
fn an_export_of_another_owner_or_of_none_is_a_conflict_naming_it() {
    for (yaml, held_by) in [
        (
            include_str!("fixtures/facts-foreign-export.yaml"),
            "belongs to offering team-b/databases",
        ),
        (
            include_str!("fixtures/facts-unannotated-export.yaml"),
            "belongs to nobody",
        ),
    ] {
        match conflict(&facts(yaml)) {
            Error::ExportConflict(message) => {
                assert!(message.contains(held_by), "{message}");
                assert!(message.contains("in root:providers:db"), "{message}");
            }
            other => panic!("expected ExportConflict, got {other:?}"),
        }
    }
}

#[test]
fn an_agent_name_taken_by_another_offering_is_reported_first() {
    match conflict(&facts(include_str!("fixtures/facts-agent-name-taken.yaml"))) {
        Error::AgentNameConflict(message) => {
            assert!(message.contains("offering team-b/twin"), "{message}");
        }
        other => panic!("expected AgentNameConflict, got {other:?}"),
    }
}

#[test]
fn the_agent_extras_leave_the_operators_env_and_volume_alone() {
    let with_agent = |agent: serde_json::Value| {
        let mut offering = fixture(include_str!("fixtures/valid.yaml"));
        offering.spec.agent = Some(serde_json::from_value(agent).unwrap());
        validate(&offering, None)
    };
    let fine = serde_json::json!({
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "volumes": [{"name": "ca", "configMap": {"name": "ca"}}],
        "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/extra"}],
    });
    assert!(with_agent(fine).is_ok());
    let cases = [
        (
            serde_json::json!({"env": [{"name": "POD_NAME", "value": "x"}]}),
            "POD_NAME",
        ),
        (
            serde_json::json!({"volumes": [{"name": "kcp-kubeconfig", "emptyDir": {}}]}),
            "kcp-kubeconfig",
        ),
        (
            serde_json::json!({"volumeMounts": [{"name": "ca", "mountPath": "/etc/ca"}]}),
            "not in spec.agent.volumes",
        ),
        (
            serde_json::json!({
                "volumes": [{"name": "ca", "emptyDir": {}}],
                "volumeMounts": [{"name": "ca", "mountPath": "/etc/sync-agent/kcp/"}],
            }),
            "/etc/sync-agent/kcp",
        ),
    ];
    for (agent, expected) in cases {
        let message = invalid_spec(with_agent(agent));
        assert!(message.contains(expected), "{message}");
    }
}

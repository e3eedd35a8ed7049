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

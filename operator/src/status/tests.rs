use super::*;
use serde_json::json;

fn all_ok() -> Vec<(&'static str, Verdict)> {
    PARTS
        .iter()
        .map(|p| (*p, Verdict::ok("Fine", "fine")))
        .collect()
}

#[test]
fn ready_holds_when_every_part_holds_and_comes_first() {
    let mut conditions = Vec::new();
    set_all(&mut conditions, &all_ok(), Some(3));
    assert_eq!(conditions[0].type_, READY);
    assert_eq!(conditions[0].status, "True");
    assert_eq!(conditions[0].observed_generation, Some(3));
    assert_eq!(conditions.len(), 6);
}

#[test]
fn ready_takes_the_first_failing_parts_reason() {
    let mut parts = all_ok();
    parts[3].1 = agent(&deployment(2, json!({"replicas": 2, "updatedReplicas": 2})));
    parts[4].1 = Verdict::failed("BindingFailed", "x");
    let mut conditions = Vec::new();
    set_all(&mut conditions, &parts, None);
    assert_eq!(conditions[0].status, "False");
    assert_eq!(conditions[0].reason, "AgentUnavailable");
    assert!(conditions[0].message.contains("0 of 2"));
}

#[test]
fn an_error_sets_ready_and_its_part() {
    let mut conditions = Vec::new();
    set_all(&mut conditions, &all_ok(), None);
    set_error(
        &mut conditions,
        &Error::ExportConflict("APIExport x belongs to ns/other".into()),
        None,
    );
    let export = conditions.iter().find(|c| c.type_ == EXPORT_READY).unwrap();
    assert_eq!(export.reason, "ExportConflict");
    assert_eq!(conditions[0].reason, "ExportConflict");
    assert_eq!(conditions[0].status, "False");
}

#[test]
fn missing_kinds_outrank_pending_schemas() {
    let states = vec![("dbs".to_string(), SchemaState::Pending)];
    let verdict = schemas(&states, &["Backup.db.example.io".into()]);
    assert_eq!(verdict.reason, "ResourceKindNotFound");
    assert!(verdict.message.contains("Backup.db.example.io"));
    assert_eq!(schemas(&states, &[]).reason, "WaitingForAgent");
    let failed = vec![(
        "dbs".to_string(),
        SchemaState::Failed("InvalidNaming".into(), "bad template".into()),
    )];
    assert_eq!(schemas(&failed, &[]).reason, "InvalidNaming");
}

#[test]
fn consumer_failures_name_the_workspaces() {
    let report = ConsumerReport {
        failed: vec![("root:a".into(), "does not exist".into())],
        pending: vec!["root:b".into()],
        ..Default::default()
    };
    let verdict = consumers(&report);
    assert_eq!(verdict.reason, "BindingFailed");
    assert!(verdict.message.contains("root:a: does not exist"));
    let pending = ConsumerReport {
        pending: vec!["root:b".into()],
        ..Default::default()
    };
    assert_eq!(consumers(&pending).reason, "BindingPending");
    assert!(consumers(&ConsumerReport::default()).ok);
}

#[test]
fn consumer_messages_name_a_few_workspaces_and_count_the_rest() {
    let paths: Vec<String> = (0..1000).map(|i| format!("root:c{i:04}")).collect();
    let pending = consumers(&ConsumerReport {
        pending: paths.clone(),
        ..Default::default()
    });
    assert_eq!(
        pending.message,
        "waiting for kcp to bind root:c0000, root:c0001, root:c0002 (and 997 more)"
    );
    let failed = consumers(&ConsumerReport {
        failed: paths.iter().map(|p| (p.clone(), "gone".into())).collect(),
        ..Default::default()
    });
    assert_eq!(
        failed.message,
        "root:c0000: gone; root:c0001: gone; root:c0002: gone (and 997 more)"
    );
    let three = consumers(&ConsumerReport {
        pending: paths[..3].to_vec(),
        ..Default::default()
    });
    assert!(!three.message.contains("more"), "{}", three.message);
}

/// An agent Deployment at generation 2 wanting `replicas`, with `status`.
fn deployment(replicas: i32, status: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "a", "generation": 2},
        "spec": {
            "replicas": replicas,
            "selector": {},
            "template": {},
        },
        "status": status,
    }))
    .unwrap()
}

#[test]
fn agent_availability_follows_the_deployment_controller() {
    let settled = json!({
        "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1,
    });
    assert_eq!(agent(&deployment(0, json!({}))).reason, "ScaledToZero");
    let available = agent(&deployment(2, settled.clone()));
    assert!(available.ok);
    assert_eq!(available.reason, "Available");
    assert!(available.message.contains("1 of 2"));
    assert_eq!(agent(&deployment(2, json!({}))).reason, "AgentUnavailable");

    let mut unseen = settled.clone();
    unseen["observedGeneration"] = json!(1);
    let mut old_pods = settled.clone();
    old_pods["replicas"] = json!(3);
    let mut partly = settled.clone();
    partly["updatedReplicas"] = json!(1);
    for status in [unseen, old_pods, partly] {
        let verdict = agent(&deployment(2, status));
        assert!(verdict.ok);
        assert_eq!(verdict.reason, "RollingOut");
    }

    let mut stuck = settled;
    stuck["updatedReplicas"] = json!(1);
    stuck["conditions"] = json!([{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"a-1\" has timed out progressing.",
    }]);
    let verdict = agent(&deployment(2, stuck.clone()));
    assert!(!verdict.ok);
    assert_eq!(verdict.reason, "AgentRolloutStuck");
    assert!(verdict.message.contains("timed out progressing"));

    // The status of the generation before says nothing of this one.
    stuck["observedGeneration"] = json!(1);
    assert_eq!(agent(&deployment(2, stuck)).reason, "RollingOut");
}

#[test]
fn a_paused_rollout_and_failing_pod_creation_say_so() {
    let mut paused = deployment(
        2,
        json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 0, "availableReplicas": 2}),
    );
    paused.spec.as_mut().unwrap().paused = Some(true);
    paused.metadata.namespace = Some("team".into());
    let verdict = agent(&paused);
    assert_eq!(verdict.reason, "AgentRolloutPaused");
    assert!(verdict.message.contains("rollout resume deployment/a"));
    paused.status.as_mut().unwrap().updated_replicas = Some(2);
    assert_eq!(agent(&paused).reason, "Available");

    let quota = deployment(
        2,
        json!({"observedGeneration": 2, "conditions": [{
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "pods \"a-1\" is forbidden: exceeded quota",
        }]}),
    );
    let verdict = agent(&quota);
    assert_eq!(verdict.reason, "AgentUnavailable");
    assert!(verdict.message.contains("exceeded quota"));
}

mod stage {
    use k8s_openapi::jiff::Timestamp;
    use serde::Deserialize;
    use sync_agent::api::kcp::apis_v1alpha2::APIExport;

    use super::super::*;
    use crate::apply::Token;
    use crate::kcp::Refusal;

    /// The parts of an [`Applied`] a fixture holds.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Fixture {
        export: APIExport,
        #[serde(default)]
        endpoint_urls: Vec<String>,
        published: Vec<PublishedResource>,
        deployment: Deployment,
    }

    fn offering() -> PublishedOffering {
        serde_saphyr::from_str(include_str!("fixtures/offering.yaml")).unwrap()
    }

    fn applied(yaml: &str) -> Applied {
        let fixture: Fixture = serde_saphyr::from_str(yaml).expect("applied fixture");
        Applied {
            export: fixture.export,
            endpoint_urls: fixture.endpoint_urls,
            token: Some(Token {
                renew_at: "2026-01-01T10:40:00Z".parse::<Timestamp>().unwrap(),
                expires: "2026-01-01T11:00:00Z".parse::<Timestamp>().unwrap(),
                rotated: false,
            }),
            refusals: Vec::new(),
            published: fixture.published,
            deployment: fixture.deployment,
            consumers: ConsumerReport::default(),
        }
    }

    fn report_of(yaml: &str, facts: &Facts) -> Report {
        let offering = offering();
        let names = Names::of(&offering).unwrap();
        report(&offering, &names, facts, &applied(yaml))
    }

    fn verdict<'a>(report: &'a Report, part: &str) -> &'a Verdict {
        &report.parts.iter().find(|(p, _)| *p == part).unwrap().1
    }

    fn facts() -> Facts {
        Facts {
            logical_cluster: "2x8ba0e7".into(),
            ..Facts::default()
        }
    }

    #[test]
    fn a_settled_apply_holds_every_part_in_the_order_of_ready() {
        let report = report_of(include_str!("fixtures/applied-ready.yaml"), &facts());
        let order: Vec<&str> = report.parts.iter().map(|(p, _)| *p).collect();
        assert_eq!(order, PARTS);
        for (part, verdict) in &report.parts {
            assert!(verdict.ok, "{part}: {verdict:?}");
        }
        assert!(
            verdict(&report, CREDENTIALS_READY)
                .message
                .contains("renewed at 2026-01-01T10:40:00Z")
        );
        assert_eq!(
            verdict(&report, SCHEMAS_PUBLISHED).reason,
            "SchemasPublished"
        );
        assert_eq!(report.export.logical_cluster.as_deref(), Some("2x8ba0e7"));
        assert_eq!(
            report.export.identity_hash.as_ref().map(String::len),
            Some(64)
        );
        assert_eq!(report.export.endpoint_urls.len(), 1);
    }

    #[test]
    fn a_new_offering_waits_for_the_identity_and_names_the_failed_schema() {
        let report = report_of(include_str!("fixtures/applied-new.yaml"), &facts());
        assert_eq!(verdict(&report, EXPORT_READY).reason, "IdentityPending");
        assert_eq!(report.export.identity_hash, None);
        let schemas = verdict(&report, SCHEMAS_PUBLISHED);
        assert_eq!(schemas.reason, "InvalidNaming");
        assert_eq!(schemas.message, "resource backups: bad template");
        assert_eq!(verdict(&report, AGENT_AVAILABLE).reason, "AgentUnavailable");
    }

    #[test]
    fn an_endpoint_refusing_the_agents_token_fails_the_credentials_and_names_it() {
        let offering = offering();
        let names = Names::of(&offering).unwrap();
        let mut applied = applied(include_str!("fixtures/applied-ready.yaml"));
        let shard = "https://shard-1.kcp.example:6443/services/apiexport/2x8ba0e7/databases";
        applied.endpoint_urls.push(shard.into());
        applied.refusals = vec![Refusal {
            url: shard.into(),
            reached_at: None,
            code: 401,
            message: "Unauthorized".into(),
        }];
        let refused = report(&offering, &names, &facts(), &applied);
        let credentials = verdict(&refused, CREDENTIALS_READY);
        assert!(!credentials.ok);
        assert_eq!(credentials.reason, "TokenRefused");
        assert!(
            credentials
                .message
                .starts_with("1 of 2 virtual workspace endpoints refuse the agent's kcp credentials (ServiceAccount"),
            "{}",
            credentials.message
        );
        assert!(
            credentials
                .message
                .contains(&format!("{shard} (401: Unauthorized)")),
            "{}",
            credentials.message
        );
        assert_eq!(
            event_type(&super::ready("False", &credentials.reason)),
            EventType::Warning
        );

        // A 403 is no shard refusing the token: the agent's access is gone.
        applied.refusals[0].code = 403;
        let forbidden = report(&offering, &names, &facts(), &applied);
        let credentials = verdict(&forbidden, CREDENTIALS_READY);
        assert_eq!(credentials.reason, "AgentForbidden");
        assert!(
            credentials.message.contains(&names.kcp_agent_role)
                && !credentials.message.contains("v0.30"),
            "{}",
            credentials.message
        );
    }

    #[test]
    fn brought_credentials_are_named_by_their_secret_and_user_and_refusals_advise_on_them() {
        let offering = offering();
        let names = Names::of(&offering).unwrap();
        let mut facts = facts();
        facts.brought = Some(crate::fetch::Brought {
            location: crate::credentials::SecretLocation {
                namespace: "team-a".into(),
                name: "agent-kcp".into(),
                key: "kubeconfig".into(),
            },
            kcp: crate::kcp::Kcp::new(crate::credentials::KcpCredentials {
                kubeconfig: kube::config::Kubeconfig::default(),
                config: kube::Config::new("https://kcp.example:6443".parse().unwrap()),
            }),
            identity: kube::Config::new("https://kcp.example:6443".parse().unwrap()),
            user: "platform:sync-agent".into(),
        });
        let mut applied = applied(include_str!("fixtures/applied-ready.yaml"));
        applied.token = None;
        let provided = report(&offering, &names, &facts, &applied);
        let credentials = verdict(&provided, CREDENTIALS_READY);
        assert!(credentials.ok);
        assert_eq!(credentials.reason, "KubeconfigProvided");
        assert!(
            credentials.message.contains("Secret agent-kcp")
                && credentials.message.contains("platform:sync-agent"),
            "{}",
            credentials.message
        );

        let shard = "https://shard-1.kcp.example:6443/services/apiexport/2x8ba0e7/databases";
        applied.endpoint_urls.push(shard.into());
        applied.refusals = vec![Refusal {
            url: shard.into(),
            reached_at: None,
            code: 401,
            message: "Unauthorized".into(),
        }];
        let refused = report(&offering, &names, &facts, &applied);

        // A rewritten address that takes no connection is the rule's fault.
        applied.refusals = vec![Refusal {
            url: shard.into(),
            reached_at: Some("https://127.0.0.1:1".into()),
            code: 0,
            message: "Connection refused (os error 111)".into(),
        }];
        let unreachable = report(&offering, &names, &facts, &applied);
        let rule = verdict(&unreachable, CREDENTIALS_READY);
        assert_eq!(rule.reason, "EndpointUnreachable");
        assert!(
            rule.message.contains(&format!(
                "{shard} at https://127.0.0.1:1 (Connection refused"
            )),
            "{}",
            rule.message
        );
        let credentials = verdict(&refused, CREDENTIALS_READY);
        assert_eq!(credentials.reason, "TokenRefused");
        assert!(
            credentials
                .message
                .contains("(the kubeconfig in Secret agent-kcp)")
                && !credentials.message.contains("v0.30"),
            "{}",
            credentials.message
        );
    }

    #[test]
    fn kinds_the_service_cluster_does_not_serve_outrank_the_agents_report() {
        let mut facts = facts();
        facts.kinds.missing = vec!["Backup.db.example.io".into()];
        let report = report_of(include_str!("fixtures/applied-ready.yaml"), &facts);
        let schemas = verdict(&report, SCHEMAS_PUBLISHED);
        assert_eq!(schemas.reason, "ResourceKindNotFound");
        assert!(schemas.message.contains("Backup.db.example.io"));
    }
}

fn ready(status: &str, reason: &str) -> Condition {
    condition(READY, status == "True", reason, String::new(), None)
}

#[test]
fn waiting_for_what_time_resolves_is_normal_and_only_what_needs_a_person_warns() {
    assert_eq!(event_type(&ready("True", "Ready")), EventType::Normal);
    for reason in [
        "IdentityPending",
        "WaitingForAgent",
        "AgentUnavailable",
        "BindingPending",
    ] {
        assert_eq!(
            event_type(&ready("False", reason)),
            EventType::Normal,
            "{reason}"
        );
    }
    for reason in [
        "ExportConflict",
        "ObjectConflict",
        "ResourceKindNotFound",
        "AgentRolloutStuck",
        "KcpSecretMissing",
    ] {
        assert_eq!(
            event_type(&ready("False", reason)),
            EventType::Warning,
            "{reason}"
        );
    }
}

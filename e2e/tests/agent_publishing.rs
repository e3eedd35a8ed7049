//! The agent's publishing half on the real servers: PublishedResources and
//! CRDs become APIResourceSchemas, merged into the APIExport with the
//! permission claims the agent needs.

use std::time::Duration;

use e2e::poll::{DEFAULT_TIMEOUT, poll_until};
use e2e::publishing::Provider;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use sync_agent::api::kcp::apis_v1alpha2::{APIExport, APIExportSpec};

fn resource_schemas(export: &APIExport) -> Vec<String> {
    export
        .spec
        .resources
        .iter()
        .map(|r| r.schema.clone())
        .collect()
}

/// Waits until the export lists `schema` (`what` names it in a timeout).
async fn wait_for_schema_in_export(provider: &Provider, what: &str, schema: &str) -> APIExport {
    provider
        .wait_for_export(what, |e| {
            let schemas = resource_schemas(e);
            if schemas.iter().any(|s| s == schema) {
                Ok(())
            } else {
                Err(format!("{schemas:?}"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

#[tokio::test]
async fn a_crd_is_published_as_a_schema_and_merged_into_the_export() {
    let provider = Provider::new("publish").await.expect("provider");
    provider
        .apply_crd("Widget", &[("v1", true, true)], "color")
        .await
        .expect("CRD");
    let agent = provider.start_agent().await.expect("agent starts");
    let pr = provider
        .create_pr(
            "widgets",
            json!({"resource": {"apiGroup": provider.group, "kind": "Widget"}}),
        )
        .await
        .expect("PR");

    let schema_name = provider
        .wait_for_schema_name(&pr, None)
        .await
        .expect("schema name in status");
    assert!(
        schema_name.ends_with(&format!(".widgets.{}", provider.group)),
        "{schema_name}"
    );
    let (reason, _) = provider
        .wait_for_condition(&pr, "SchemaPublished", "True")
        .await
        .expect("condition");
    assert_eq!(reason, "Published");

    let schema = provider
        .schema(&schema_name)
        .await
        .expect("schema exists in kcp");
    assert_eq!(schema.spec.names.kind, "Widget");
    assert_eq!(
        schema.spec.versions[0].schema["properties"]["spec"]["properties"]["color"]["type"],
        "string"
    );
    let labels = schema.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("syncagent.kcp.io/agent-name"),
        Some(&provider.agent_name)
    );

    let export =
        wait_for_schema_in_export(&provider, "the schema in the export", &schema_name).await;
    let annotations = export.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("syncagent.kcp.io/agent-name"),
        Some(&provider.agent_name)
    );
    assert!(
        export
            .spec
            .permission_claims
            .iter()
            .any(|c| c.resource == "events" && c.verbs == ["*"])
    );

    drop(agent);
    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn claims_are_added_for_a_mix_of_resources_and_foreign_claims_and_schemas_are_kept() {
    let provider = Provider::new("claims").await.expect("provider");
    let exports: Api<APIExport> = Api::all(provider.kcp_client.clone());
    let foreign: APIExportSpec = serde_json::from_value(json!({
        "resources": [{"group": "foreign.example", "name": "things",
                       "schema": "vhand.things.foreign.example", "storage": {"crd": {}}}],
        "permissionClaims": [{"group": "", "resource": "configmaps", "verbs": ["get", "list"]}]
    }))
    .expect("spec");
    // kcp itself updates a new export (its identity), so retry on conflict.
    poll_until("the foreign entries", DEFAULT_TIMEOUT, async || {
        let mut export = exports
            .get(&provider.export)
            .await
            .map_err(|e| e.to_string())?;
        let identity = export.spec.identity.take();
        export.spec = APIExportSpec {
            identity,
            ..foreign.clone()
        };
        exports
            .replace(&provider.export, &PostParams::default(), &export)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("foreign entries");

    provider
        .apply_crd("Database", &[("v1", true, true)], "size")
        .await
        .expect("CRD");
    provider
        .apply_crd("Backup", &[("v1", true, true)], "target")
        .await
        .expect("CRD");
    let _agent = provider.start_agent().await.expect("agent starts");
    let databases = provider
        .create_pr(
            "databases",
            json!({
                "resource": {"apiGroup": provider.group, "kind": "Database"},
                "enableWorkspacePaths": true,
                "related": [{"identifier": "creds", "origin": "kcp", "kind": "Secret",
                             "object": {"reference": {"path": "spec.secretName"}}}]
            }),
        )
        .await
        .expect("PR");
    let backups = provider
        .create_pr(
            "backups",
            json!({
                "resource": {"apiGroup": provider.group, "kind": "Backup"},
                "filter": {"namespace": {"matchLabels": {"backups": "on"}}}
            }),
        )
        .await
        .expect("PR");
    let database_schema = provider
        .wait_for_schema_name(&databases, None)
        .await
        .expect("schema");
    let backup_schema = provider
        .wait_for_schema_name(&backups, None)
        .await
        .expect("schema");

    let export = provider
        .wait_for_export("schemas and claims merged", |e| {
            let claims: Vec<String> = e
                .spec
                .permission_claims
                .iter()
                .map(|c| format!("{}/{}:{}", c.group, c.resource, c.verbs.join(",")))
                .collect();
            let expected = [
                "/configmaps:get,list",
                "/events:*",
                "/namespaces:*",
                "/secrets:*",
                "core.kcp.io/logicalclusters:*",
            ];
            if claims == expected && e.spec.resources.len() == 3 {
                Ok(())
            } else {
                Err(format!("{claims:?} {:?}", resource_schemas(e)))
            }
        })
        .await
        .expect("export");
    let schemas = resource_schemas(&export);
    assert!(
        schemas.contains(&"vhand.things.foreign.example".to_string()),
        "{schemas:?}"
    );
    assert!(
        schemas.contains(&database_schema) && schemas.contains(&backup_schema),
        "{schemas:?}"
    );
    let mut sorted = export.spec.resources.clone();
    sorted.sort_by(|a, b| (&a.group, &a.name).cmp(&(&b.group, &b.name)));
    assert_eq!(sorted, export.spec.resources, "resources are sorted");

    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_schema_stays_after_its_published_resource_is_deleted() {
    let provider = Provider::new("keep").await.expect("provider");
    provider
        .apply_crd("Queue", &[("v1", true, true)], "size")
        .await
        .expect("CRD");
    let agent = provider.start_agent().await.expect("agent starts");
    let pr = provider
        .create_pr(
            "queues",
            json!({"resource": {"apiGroup": provider.group, "kind": "Queue"}}),
        )
        .await
        .expect("PR");
    let schema = provider
        .wait_for_schema_name(&pr, None)
        .await
        .expect("schema");
    wait_for_schema_in_export(&provider, "the schema in the export", &schema).await;

    provider
        .prs()
        .delete(&pr, &DeleteParams::default())
        .await
        .expect("PR deleted");
    poll_until(
        "the PR to be gone",
        Duration::from_secs(30),
        async || match provider
            .prs()
            .get_opt(&pr)
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        },
    )
    .await
    .expect("gone");
    let metrics = agent.metrics().await.expect("metrics");
    assert!(
        metrics.contains("controller_runtime_reconcile_total"),
        "{metrics}"
    );
    // A sentinel published after the deletion: once its schema is in the
    // export the agent has handled the deletion, so both must have survived.
    provider
        .apply_crd("Stack", &[("v1", true, true)], "size")
        .await
        .expect("sentinel CRD");
    let sentinel_pr = provider
        .create_pr(
            "stacks",
            json!({"resource": {"apiGroup": provider.group, "kind": "Stack"}}),
        )
        .await
        .expect("sentinel PR");
    let sentinel = provider
        .wait_for_schema_name(&sentinel_pr, None)
        .await
        .expect("sentinel schema");
    wait_for_schema_in_export(&provider, "the sentinel's schema in the export", &sentinel).await;
    provider
        .schema(&schema)
        .await
        .expect("the schema still exists");
    assert!(resource_schemas(&provider.export().await.expect("export")).contains(&schema));

    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_crd_change_makes_a_new_schema_and_keeps_the_old_one() {
    let provider = Provider::new("change").await.expect("provider");
    provider
        .apply_crd("Cache", &[("v1", true, true)], "size")
        .await
        .expect("CRD");
    let _agent = provider.start_agent().await.expect("agent starts");
    let pr = provider
        .create_pr(
            "caches",
            json!({"resource": {"apiGroup": provider.group, "kind": "Cache"}}),
        )
        .await
        .expect("PR");
    let first = provider
        .wait_for_schema_name(&pr, None)
        .await
        .expect("first schema");

    provider
        .apply_crd("Cache", &[("v1", true, true)], "capacity")
        .await
        .expect("changed CRD");
    let second = provider
        .wait_for_schema_name(&pr, Some(&first))
        .await
        .expect("second schema");
    assert_ne!(first, second);
    let new = provider.schema(&second).await.expect("new schema");
    assert_eq!(
        new.spec.versions[0].schema["properties"]["spec"]["properties"]["capacity"]["type"],
        "string"
    );
    provider
        .schema(&first)
        .await
        .expect("the old schema is kept");
    provider
        .wait_for_export("the export to switch to the new schema", |e| {
            let schemas = resource_schemas(e);
            if schemas.contains(&second) && !schemas.contains(&first) {
                Ok(())
            } else {
                Err(format!("{schemas:?}"))
            }
        })
        .await
        .expect("export switched");

    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn selected_versions_multiple_versions_and_a_full_projection_are_published() {
    let provider = Provider::new("versions").await.expect("provider");
    provider
        .apply_crd(
            "Bucket",
            &[("v1alpha1", true, false), ("v1", true, true)],
            "size",
        )
        .await
        .expect("CRD");
    let _agent = provider.start_agent().await.expect("agent starts");
    let only_alpha = provider
        .create_pr("alpha", json!({"resource": {"apiGroup": provider.group, "kind": "Bucket", "versions": ["v1alpha1"]},
                                  "projection": {"group": format!("alpha.{}", provider.group)}}))
        .await
        .expect("PR");
    let all = provider
        .create_pr(
            "all",
            json!({"resource": {"apiGroup": provider.group, "kind": "Bucket"}}),
        )
        .await
        .expect("PR");
    let projected = provider
        .create_pr("projected", json!({
            "resource": {"apiGroup": provider.group, "kind": "Bucket", "versions": ["v1"]},
            "projection": {"group": format!("projected.{}", provider.group), "kind": "Container",
                           "plural": "containerz", "scope": "Cluster", "versions": {"v1": "v2beta1"},
                           "shortNames": ["ctr"], "categories": ["storage"]}
        }))
        .await
        .expect("PR");

    let alpha = provider
        .schema(
            &provider
                .wait_for_schema_name(&only_alpha, None)
                .await
                .expect("name"),
        )
        .await
        .expect("schema");
    let versions: Vec<(String, bool)> = alpha
        .spec
        .versions
        .iter()
        .map(|v| (v.name.clone(), v.storage))
        .collect();
    assert_eq!(
        versions,
        [("v1alpha1".to_string(), true)],
        "only the selected version, made the storage version"
    );

    let both = provider
        .schema(
            &provider
                .wait_for_schema_name(&all, None)
                .await
                .expect("name"),
        )
        .await
        .expect("schema");
    let versions: Vec<(String, bool)> = both
        .spec
        .versions
        .iter()
        .map(|v| (v.name.clone(), v.storage))
        .collect();
    assert_eq!(
        versions,
        [("v1".to_string(), true), ("v1alpha1".to_string(), false)]
    );
    assert_eq!(
        both.spec.conversion.map(|c| c.strategy),
        Some("None".to_string())
    );

    let name = provider
        .wait_for_schema_name(&projected, None)
        .await
        .expect("name");
    assert!(
        name.ends_with(&format!(".containerz.projected.{}", provider.group)),
        "{name}"
    );
    let schema = provider.schema(&name).await.expect("schema");
    assert_eq!(schema.spec.names.kind, "Container");
    assert_eq!(
        schema.spec.names.list_kind.as_deref(),
        Some("ContainerList")
    );
    assert_eq!(schema.spec.names.singular.as_deref(), Some("container"));
    assert_eq!(schema.spec.names.short_names, Some(vec!["ctr".to_string()]));
    assert_eq!(
        schema.spec.names.categories,
        Some(vec!["storage".to_string()])
    );
    assert_eq!(schema.spec.scope, "Cluster");
    assert_eq!(schema.spec.versions[0].name, "v2beta1");

    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_builtin_type_without_a_crd_is_published_from_openapi() {
    let provider = Provider::new("builtin").await.expect("provider");
    let _agent = provider.start_agent().await.expect("agent starts");
    let pr = provider
        .create_pr(
            "configmaps",
            json!({
                "resource": {"apiGroup": "", "kind": "ConfigMap", "versions": ["v1"]},
                "projection": {"group": provider.group, "kind": "Settings", "plural": "settings"}
            }),
        )
        .await
        .expect("PR");
    let name = provider
        .wait_for_schema_name(&pr, None)
        .await
        .expect("schema name");
    let schema = provider.schema(&name).await.expect("schema");
    let properties = &schema.spec.versions[0].schema["properties"];
    assert_eq!(properties["data"]["additionalProperties"]["type"], "string");
    assert_eq!(properties["metadata"], json!({"type": "object"}));
    assert_eq!(schema.spec.scope, "Namespaced");
    wait_for_schema_in_export(&provider, "the built-in schema in the export", &name).await;

    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn the_published_resource_metric_follows_the_selected_resources() {
    let provider = Provider::new("metric").await.expect("provider");
    provider
        .apply_crd("Topic", &[("v1", true, true)], "size")
        .await
        .expect("CRD");
    let agent = provider.start_agent().await.expect("agent starts");
    let gauge = async |expected: i64| {
        poll_until(
            &format!("sync_agent_published_resource {expected}"),
            Duration::from_secs(30),
            async || {
                let text = agent.metrics().await?;
                let line = format!("sync_agent_published_resource {expected}");
                if text.lines().any(|l| l == line) {
                    Ok(())
                } else {
                    Err(text
                        .lines()
                        .filter(|l| l.starts_with("sync_agent"))
                        .collect::<Vec<_>>()
                        .join("; "))
                }
            },
        )
        .await
    };
    let spec = json!({"resource": {"apiGroup": provider.group, "kind": "Topic"}});
    let first = provider.create_pr("one", spec.clone()).await.expect("PR");
    gauge(1).await.expect("one PR");
    provider.create_pr("two", spec).await.expect("PR");
    gauge(2).await.expect("two PRs");
    provider
        .prs()
        .delete(&first, &DeleteParams::default())
        .await
        .expect("deleted");
    gauge(1).await.expect("one PR again");

    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn invalid_published_resources_get_a_clear_error_and_do_not_stop_a_good_one() {
    let provider = Provider::new("errors").await.expect("provider");
    provider
        .apply_crd("Printer", &[("v1", true, true)], "model")
        .await
        .expect("CRD");
    let _agent = provider.start_agent().await.expect("agent starts");
    let missing = provider
        .create_pr(
            "missing",
            json!({"resource": {"apiGroup": provider.group, "kind": "Scanner"}}),
        )
        .await
        .expect("PR");
    let invalid = provider
        .create_pr(
            "invalid",
            json!({"resource": {"apiGroup": provider.group, "kind": "Printer"},
                                    "projection": {"versions": {"v1": "version-one"}}}),
        )
        .await
        .expect("PR");
    let good = provider
        .create_pr(
            "good",
            json!({"resource": {"apiGroup": provider.group, "kind": "Printer"}}),
        )
        .await
        .expect("PR");

    let (reason, message) = provider
        .wait_for_condition(&missing, "SchemaPublished", "False")
        .await
        .expect("condition");
    assert_eq!(reason, "SourceNotFound");
    assert!(
        message.contains("Scanner") && message.contains(&provider.group),
        "{message}"
    );
    let (reason, message) = provider
        .wait_for_condition(&invalid, "SchemaPublished", "False")
        .await
        .expect("condition");
    assert_eq!(reason, "InvalidProjection");
    assert!(
        message.contains("spec.projection.versions") && message.contains("version-one"),
        "{message}"
    );
    let schema = provider
        .wait_for_schema_name(&good, None)
        .await
        .expect("the good PR is published");
    provider
        .wait_for_export("the good schema in the export", |e| {
            if resource_schemas(e) == [schema.clone()] {
                Ok(())
            } else {
                Err(format!("{:?}", resource_schemas(e)))
            }
        })
        .await
        .expect("export");

    let events: Api<Event> = Api::namespaced(provider.service.clone(), "default");
    let warning = poll_until(
        "a Warning event on the invalid PR",
        Duration::from_secs(30),
        async || {
            let list = events
                .list(&ListParams::default().fields(&format!("regarding.name={invalid}")))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| e.type_.as_deref() == Some("Warning"))
                .ok_or_else(|| "no event".to_string())
        },
    )
    .await
    .expect("event");
    assert_eq!(warning.reason.as_deref(), Some("ReconcilingError"));
    assert!(
        warning
            .note
            .unwrap_or_default()
            .contains("InvalidProjection")
    );

    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn with_leader_election_one_agent_writes_and_the_other_takes_over() {
    let provider = Provider::new("leader").await.expect("provider");
    provider
        .apply_crd("Lock", &[("v1", true, true)], "owner")
        .await
        .expect("CRD");
    let mut settings = provider.agent_settings();
    settings.extra_args.push("--enable-leader-election".into());
    let first = e2e::agent::AgentProcess::start(&provider.env, &settings)
        .await
        .expect("first agent");
    let second = e2e::agent::AgentProcess::start(&provider.env, &settings)
        .await
        .expect("second agent");

    let one = provider
        .create_pr(
            "one",
            json!({"resource": {"apiGroup": provider.group, "kind": "Lock"}}),
        )
        .await
        .expect("PR");
    provider
        .wait_for_schema_name(&one, None)
        .await
        .expect("published by the leader");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(provider.service.clone(), &provider.namespace);
    let lease = leases
        .get(&format!("syncagent.{}", provider.agent_name))
        .await
        .expect("lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a holder");
    let reconciles = |text: &str| {
        text.lines()
            .any(|l| l.starts_with("controller_runtime_reconcile_total"))
    };
    let first_wrote = reconciles(&first.metrics().await.expect("metrics"));
    let second_wrote = reconciles(&second.metrics().await.expect("metrics"));
    assert!(
        first_wrote != second_wrote,
        "exactly one agent reconciles (holder {holder})"
    );
    let (leader, standby) = if first_wrote {
        (first, second)
    } else {
        (second, first)
    };
    let status_line = |value: u8| {
        format!(
            "leader_election_master_status{{name=\"syncagent.{}\"}} {value}",
            provider.agent_name
        )
    };
    let leader_metrics = leader.metrics().await.expect("metrics");
    assert!(leader_metrics.contains(&status_line(1)), "{leader_metrics}");
    let standby_metrics = standby.metrics().await.expect("metrics");
    assert!(
        standby_metrics.contains(&status_line(0)),
        "{standby_metrics}"
    );

    leader.stop().await.expect("the leader stops");
    let two = provider
        .create_pr(
            "two",
            json!({"resource": {"apiGroup": provider.group, "kind": "Lock"},
                                "projection": {"kind": "Latch"}}),
        )
        .await
        .expect("PR");
    provider
        .wait_for_schema_name(&two, None)
        .await
        .expect("published by the new leader");
    assert!(reconciles(&standby.metrics().await.expect("metrics")));

    provider.cleanup().await.expect("cleanup");
}

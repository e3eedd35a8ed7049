//! Proves the test kube-apiserver is real: it accepts the project's CRDs and
//! enforces their CEL rules.

use e2e::env::{EnvFile, random_hex};
use e2e::service;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use sync_agent::api::published_resource::PublishedResource;

fn published_resource(name: &str, related: serde_json::Value) -> PublishedResource {
    serde_json::from_value(json!({
        "apiVersion": "syncagent.kcp.io/v1alpha1",
        "kind": "PublishedResource",
        "metadata": {"name": name},
        "spec": {
            "resource": {"apiGroup": "example.corp", "kind": "Database", "versions": ["v1"]},
            "projection": {"shortNames": []},
            "related": [related]
        }
    }))
    .expect("PublishedResource fixture")
}

#[tokio::test]
async fn project_crds_are_accepted_and_cel_rules_reject_invalid_published_resources() {
    let env = EnvFile::load().expect("test environment is running");
    let client = service::client(&env).await.expect("service cluster client");
    service::apply_project_crds(&client)
        .await
        .expect("CRDs are accepted and established");

    let api: Api<PublishedResource> = Api::all(client.clone());
    let suffix = random_hex(4).expect("random suffix");

    let valid = published_resource(
        &format!("valid-{suffix}"),
        json!({"identifier": "creds", "origin": "kcp", "kind": "Secret",
               "object": {"reference": {"path": "spec.secretName"}}}),
    );
    let created = api
        .create(&PostParams::default(), &valid)
        .await
        .expect("valid PR is accepted");
    assert_eq!(
        created.spec, valid.spec,
        "the server stored exactly what was sent"
    );

    let both_forms = published_resource(
        &format!("invalid-{suffix}"),
        json!({"identifier": "creds", "origin": "kcp", "kind": "Secret",
               "version": "v1", "resource": "secrets",
               "object": {"reference": {"path": "spec.secretName"}}}),
    );
    let error = api
        .create(&PostParams::default(), &both_forms)
        .await
        .expect_err("kind together with version/resource is rejected");
    let message = error.to_string();
    assert!(
        message.contains("must specify either kind (deprecated) or group, version, resource"),
        "{message}"
    );

    let two_watches = published_resource(
        &format!("invalid-watch-{suffix}"),
        json!({"identifier": "creds", "origin": "service", "version": "v1", "resource": "secrets",
               "watch": {"byOwner": {}, "bySelector": {}},
               "object": {"reference": {"path": "spec.secretName"}}}),
    );
    let error = api
        .create(&PostParams::default(), &two_watches)
        .await
        .expect_err("two watch modes are rejected");
    assert!(
        error
            .to_string()
            .contains("exactly one of byOwner or bySelector must be set"),
        "{error}"
    );

    api.delete(&format!("valid-{suffix}"), &DeleteParams::default())
        .await
        .expect("valid PR deleted");
}

#[tokio::test]
async fn a_published_offering_is_accepted_with_its_defaults() {
    use offering_operator::api::{DeletionPolicy, PublishedOffering};

    let env = EnvFile::load().expect("test environment is running");
    let client = service::client(&env).await.expect("service cluster client");
    service::apply_project_crds(&client)
        .await
        .expect("CRDs are established");
    let namespace = service::create_namespace(&client, "offering")
        .await
        .expect("namespace");

    let offering: PublishedOffering = serde_json::from_value(json!({
        "apiVersion": "offering.syncagent.dev/v1alpha1",
        "kind": "PublishedOffering",
        "metadata": {"name": "databases", "namespace": namespace},
        "spec": {
            "kcp": {"workspace": "root:providers:databases"},
            "resources": [{"name": "databases", "resource": {"apiGroup": "example.corp", "kind": "Database"}}]
        }
    }))
    .expect("offering fixture");
    let api: Api<PublishedOffering> = Api::namespaced(client.clone(), &namespace);
    let created = api
        .create(&PostParams::default(), &offering)
        .await
        .expect("offering is accepted");
    assert_eq!(created.spec.deletion_policy, DeletionPolicy::Retain);
    assert_eq!(created.spec.resources[0].spec.resource.kind, "Database");

    let mut bad = offering.clone();
    bad.metadata.name = Some("bad-path".into());
    bad.spec.kcp.workspace = "Root/Providers".into();
    let error = api
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("an invalid workspace path is rejected");
    assert!(error.to_string().contains("spec.kcp.workspace"), "{error}");

    service::delete_namespace(&client, &namespace)
        .await
        .expect("namespace deleted");
}

#[tokio::test]
async fn no_short_name_of_ours_is_taken_by_another_resource_the_server_serves() {
    let env = EnvFile::load().expect("test environment is running");
    let client = service::client(&env).await.expect("service cluster client");
    service::apply_project_crds(&client)
        .await
        .expect("CRDs are accepted and established");

    let mut lists = vec![
        client
            .list_core_api_resources("v1")
            .await
            .expect("core discovery"),
    ];
    for group in client.list_api_groups().await.expect("groups").groups {
        for version in group.versions {
            lists.push(
                client
                    .list_api_group_resources(&version.group_version)
                    .await
                    .expect("group discovery"),
            );
        }
    }
    let crds = service::project_crds().expect("project CRDs");
    let ours: Vec<(String, String)> = crds
        .iter()
        .map(|crd| (crd.spec.group.clone(), crd.spec.names.plural.clone()))
        .collect();
    let mut checked = 0;
    for crd in &crds {
        for short in crd.spec.names.short_names.iter().flatten() {
            checked += 1;
            let taken_by: Vec<String> = lists
                .iter()
                .flat_map(|list| {
                    let group = list.group_version.split('/').rev().nth(1).unwrap_or("");
                    list.resources
                        .iter()
                        .filter(move |r| r.short_names.iter().flatten().any(|s| s == short))
                        .map(move |r| (group.to_string(), r.name.clone()))
                })
                .filter(|resource| !ours.contains(resource))
                .map(|(group, name)| format!("{name}.{group}"))
                .collect();
            assert!(
                taken_by.is_empty(),
                "short name {short:?} of {} is also {taken_by:?}",
                crd.spec.names.plural
            );
        }
    }
    assert!(checked > 0, "our CRDs declare short names to check");
}

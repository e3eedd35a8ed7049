//! Namespaces of copies on the real servers (`naming.deleteEmptyNamespaces`,
//! upstream #113): with the opt-in, a namespace the agent created goes with
//! its last copy; one that holds anything else, one the agent did not
//! create, and every namespace without the opt-in stay.
//!
//! The agent looks at a namespace before it releases the kcp object whose
//! copy was in it, so the kcp object's disappearance is the sentinel after
//! which a namespace that is still there stays.

use e2e::poll::poll_until;
use e2e::scene::{Scene, TIMEOUT};
use e2e::service::post_params;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta};
use kube::{Client, ResourceExt};
use serde_json::json;
use sync_agent::sync::stale_namespaces::CREATED_BY_LABEL;

/// Deletes a consumer's widget and waits until kcp has it no more: the
/// agent has deleted its copy, looked at the copy's namespace and released it.
async fn delete_widget(scene: &Scene, client: &Client, name: &str) {
    let widgets = scene.kcp_widgets(client);
    widgets
        .delete(name, &DeleteParams::default())
        .await
        .expect("the consumer deletes its widget");
    poll_until(
        &format!("widget {name} to be gone in kcp"),
        TIMEOUT,
        async || match widgets.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(widget) => Err(format!(
                "finalizers {:?}; agent log:\n{}",
                widget.finalizers(),
                scene.agent.log_tail()
            )),
        },
    )
    .await
    .expect("the kcp object released");
}

/// The namespace `name` on the service cluster; it must exist.
async fn namespace(scene: &Scene, name: &str) -> Namespace {
    Api::<Namespace>::all(scene.provider.service.clone())
        .get(name)
        .await
        .expect("the namespace exists")
}

/// Asserts that the namespace `name` is there and not being deleted.
async fn assert_stays(scene: &Scene, name: &str, why: &str) {
    let namespace = namespace(scene, name).await;
    assert!(
        namespace.metadata.deletion_timestamp.is_none(),
        "{why}: namespace {name} is being deleted; agent log:\n{}",
        scene.agent.log_tail()
    );
}

/// Creates a ConfigMap `name` in `namespace` on the service cluster.
async fn create_config_map(scene: &Scene, namespace: &str, name: &str) {
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(scene.provider.service.clone(), namespace)
        .create(&post_params(), &config_map)
        .await
        .expect("ConfigMap created");
}

#[tokio::test]
async fn with_the_opt_in_the_namespace_the_agent_created_goes_with_its_last_copy_and_no_other() {
    let scene = Scene::new(
        "nsclear",
        json!({"naming": {"deleteEmptyNamespaces": true}}),
    )
    .await;
    let agent = scene.provider.agent_name.clone();
    let (emptied, emptied_client) = scene.consumer("emptied").await;
    let (shared, shared_client) = scene.consumer("shared").await;
    let (existing, existing_client) = scene.consumer("existing").await;
    // The provider made this one before any copy: not the agent's.
    let made_before =
        serde_json::from_value(json!({"metadata": {"name": existing.cluster}})).expect("namespace");
    Api::<Namespace>::all(scene.provider.service.clone())
        .create(&post_params(), &made_before)
        .await
        .expect("the provider's namespace");

    for name in ["a", "b"] {
        scene.create_widget(&emptied_client, name, "blue").await;
    }
    scene.create_widget(&shared_client, "w", "blue").await;
    scene.create_widget(&existing_client, "w", "blue").await;
    for (cluster, name) in [
        (&emptied.cluster, "a"),
        (&emptied.cluster, "b"),
        (&shared.cluster, "w"),
        (&existing.cluster, "w"),
    ] {
        scene.local_copy(cluster, name).await;
    }
    let labels = namespace(&scene, &emptied.cluster).await.labels().clone();
    assert_eq!(
        labels.get(CREATED_BY_LABEL),
        Some(&agent),
        "the agent marks the namespace it creates: {labels:?}"
    );
    assert!(
        !namespace(&scene, &existing.cluster)
            .await
            .labels()
            .contains_key(CREATED_BY_LABEL),
        "and leaves one it found alone"
    );

    // What Kubernetes puts into every namespace (the test servers run no
    // controller manager, so the test does) does not keep it.
    create_config_map(&scene, &emptied.cluster, "kube-root-ca.crt").await;
    let default_account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(scene.provider.service.clone(), &emptied.cluster)
        .create(&post_params(), &default_account)
        .await
        .expect("ServiceAccount created");
    // A provider's object does.
    create_config_map(&scene, &shared.cluster, "provider-settings").await;

    delete_widget(&scene, &emptied_client, "a").await;
    assert_stays(&scene, &emptied.cluster, "the copy of b is still in it").await;
    delete_widget(&scene, &shared_client, "w").await;
    assert_stays(&scene, &shared.cluster, "the provider's ConfigMap is in it").await;
    delete_widget(&scene, &existing_client, "w").await;
    assert_stays(&scene, &existing.cluster, "the agent did not create it").await;

    delete_widget(&scene, &emptied_client, "b").await;
    // Without a controller manager a deleted namespace stays Terminating;
    // the agent's part is done once it is being deleted.
    let deleted = namespace(&scene, &emptied.cluster).await;
    assert!(
        deleted.metadata.deletion_timestamp.is_some(),
        "the last copy is gone, the namespace goes: {:?}; agent log:\n{}",
        deleted.status,
        scene.agent.log_tail()
    );

    for consumer in [emptied, shared, existing] {
        consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    }
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn without_the_opt_in_a_namespace_the_agent_created_stays_empty() {
    let scene = Scene::new("nskeep", json!({})).await;
    let (consumer, client) = scene.consumer("consumer").await;
    scene.create_widget(&client, "w", "blue").await;
    scene.local_copy(&consumer.cluster, "w").await;
    assert_eq!(
        namespace(&scene, &consumer.cluster)
            .await
            .labels()
            .get(CREATED_BY_LABEL),
        Some(&scene.provider.agent_name),
        "marked all the same, for an opt-in later"
    );

    delete_widget(&scene, &client, "w").await;
    assert_stays(&scene, &consumer.cluster, "no opt-in").await;

    consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    scene.provider.cleanup().await.expect("cleanup");
}

//! The operator over an offering's life: edits, bad input beside good
//! input, token rotation, and deletion with each deletionPolicy.

use e2e::offering::{KCP_SECRET, OfferingScene, TIMEOUT};
use e2e::poll::{KCP_SLOW_TIMEOUT, poll_until};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use offering_operator::api::PublishedOffering;
use serde_json::{Value, json};
use sync_agent::api::kcp::apis_v1alpha2::{APIBinding, APIExport};
use sync_agent::api::published_resource::PublishedResource;

fn export_names(export: &APIExport) -> Vec<String> {
    export
        .spec
        .resources
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

/// The scaled agent Deployment is rolling out until its controller reports
/// otherwise; a rollout past its deadline makes the offering not Ready. No
/// Deployment controller runs in the test environment, so the test writes
/// the status one would.
async fn agent_availability_follows_the_rollout(scene: &OfferingScene) {
    scene
        .wait_for_condition("widgets", "AgentAvailable", "True", "RollingOut")
        .await
        .expect("rolling out to 3 replicas");
    let deployments: Api<Deployment> =
        Api::namespaced(scene.provider.service.clone(), &scene.provider.namespace);
    let generation = deployments
        .get("widgets-sync-agent")
        .await
        .expect("Deployment")
        .metadata
        .generation;
    // Writes the status of 3 updated replicas, 1 available, with `progressing`.
    let report = async |progressing: Value| {
        let status = json!({"status": {
            "observedGeneration": generation,
            "replicas": 3,
            "updatedReplicas": 3,
            "availableReplicas": 1,
            "conditions": [progressing],
        }});
        deployments
            .patch_status(
                "widgets-sync-agent",
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await
            .expect("the Deployment's status");
    };
    report(json!({
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"widgets-sync-agent-2\" has timed out progressing.",
    }))
    .await;
    let offering = scene
        .wait_for_condition("widgets", "Ready", "False", "AgentRolloutStuck")
        .await
        .expect("not Ready while the rollout is stuck");
    let ready = &offering.status.unwrap().conditions[0];
    assert!(
        ready.message.contains("timed out progressing"),
        "{}",
        ready.message
    );
    scene
        .wait_for_warning("widgets", "AgentRolloutStuck")
        .await
        .expect("a Warning event");

    report(json!({
        "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
    }))
    .await;
    scene
        .wait_for_condition("widgets", "AgentAvailable", "True", "Available")
        .await
        .expect("available once rolled out");
}

#[tokio::test]
async fn editing_an_offering_publishes_added_resources_and_scales_the_agent() {
    let scene = OfferingScene::new("op-edit", &[]).await.expect("scene");
    let _agent = scene
        .publish("widgets", json!({"agent": {"replicas": 1}}))
        .await
        .expect("ready");

    scene
        .provider
        .apply_crd("Gadget", &[("v1", true, true)], "size")
        .await
        .expect("Gadget CRD");
    let mut spec = scene.spec(json!({"agent": {"replicas": 3}}));
    spec["resources"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "gadgets", "resource": {"apiGroup": scene.provider.group, "kind": "Gadget"}}));
    scene.apply("widgets", spec).await.expect("edited offering");

    let service = scene.provider.service.clone();
    let ns = scene.provider.namespace.clone();
    poll_until("the Deployment to have 3 replicas", TIMEOUT, async || {
        let deployment = Api::<Deployment>::namespaced(service.clone(), &ns)
            .get("widgets-sync-agent")
            .await
            .map_err(|e| e.to_string())?;
        match deployment.spec.and_then(|s| s.replicas) {
            Some(3) => Ok(()),
            other => Err(format!("replicas {other:?}")),
        }
    })
    .await
    .expect("scaled");
    agent_availability_follows_the_rollout(&scene).await;
    Api::<PublishedResource>::all(service.clone())
        .get(&format!("{ns}.widgets.gadgets"))
        .await
        .expect("PublishedResource for gadgets");
    let role = Api::<ClusterRole>::all(service.clone())
        .get(&format!("offering.syncagent.dev:{ns}:widgets"))
        .await
        .expect("ClusterRole");
    assert!(
        role.rules
            .unwrap()
            .iter()
            .any(|r| r.resources.as_deref() == Some(&["gadgets".to_string()][..]))
    );
    let exports: Api<APIExport> = Api::all(scene.provider.kcp_client.clone());
    poll_until("the export to serve gadgets", TIMEOUT, async || {
        let export = exports.get("widgets").await.map_err(|e| e.to_string())?;
        let names = export_names(&export);
        if names.contains(&"gadgets".to_string()) && names.contains(&"widgets".to_string()) {
            Ok(())
        } else {
            Err(format!("resources {names:?}"))
        }
    })
    .await
    .expect("gadgets published");
    scene
        .wait_for_condition("widgets", "SchemasPublished", "True", "SchemasPublished")
        .await
        .expect("both schemas published");

    // What names objects elsewhere cannot change: the server refuses it.
    for (field, change) in [
        ("export.name", json!({"export": {"name": "renamed"}})),
        (
            "agent.name",
            json!({"agent": {"replicas": 3, "name": "renamed"}}),
        ),
        (
            "kcp.workspace",
            json!({"kcp": {"workspace": "root:elsewhere", "kubeconfigSecretRef": {"name": KCP_SECRET}}}),
        ),
    ] {
        let error = scene
            .apply("widgets", scene.spec(change))
            .await
            .expect_err(field);
        assert!(format!("{error:#}").contains(field), "{field}: {error:#}");
    }
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn bad_offerings_say_why_while_a_good_one_beside_them_stays_ready() {
    let scene = OfferingScene::new("op-bad", &[]).await.expect("scene");
    let service = scene.provider.service.clone();
    let ns = scene.provider.namespace.clone();
    scene
        .apply("good", scene.spec(json!({"agent": {"replicas": 1}})))
        .await
        .expect("good offering");
    let _agent = scene.run_agent("good").await.expect("agent");

    let admin = std::fs::read_to_string(&scene.provider.env.kcp_kubeconfig).unwrap();
    let unreachable = admin.replace(&scene.provider.kcp.url(), "https://127.0.0.1:1");
    // The operator's own ServiceAccount token, were it read from the file.
    let mut token_file = Kubeconfig::from_yaml(&admin).unwrap();
    for user in token_file
        .auth_infos
        .iter_mut()
        .filter_map(|u| u.auth_info.as_mut())
    {
        user.token = None;
        user.token_file = Some("/var/run/secrets/kubernetes.io/serviceaccount/token".into());
    }
    let token_file = serde_json::to_string(&token_file).unwrap();
    for (name, kubeconfig) in [
        ("kcp-unreachable", &unreachable),
        ("kcp-token-file", &token_file),
        // The name of the Secret the operator writes for offering "clash".
        ("clash-kcp-kubeconfig", &admin),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {"kubeconfig": kubeconfig},
        }))
        .unwrap();
        Api::<Secret>::namespaced(service.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap_or_else(|e| panic!("Secret {name}: {e}"));
    }
    // A ServiceAccount of the name offering "squat" would give its agent.
    let squatter: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "squat-sync-agent"}})).unwrap();
    Api::<ServiceAccount>::namespaced(service.clone(), &ns)
        .create(&PostParams::default(), &squatter)
        .await
        .expect("someone's ServiceAccount");
    let foreign_export = Api::<APIExport>::all(scene.provider.kcp_client.clone())
        .get(&scene.provider.export)
        .await
        .expect("the provider's own export");

    let cases = [
        (
            "no-secret",
            json!({"kcp": {"workspace": scene.provider.workspace.path, "kubeconfigSecretRef": {"name": "missing"}}}),
            "KcpSecretMissing",
        ),
        (
            "unreachable",
            json!({"kcp": {"workspace": scene.provider.workspace.path, "kubeconfigSecretRef": {"name": "kcp-unreachable"}}}),
            "KcpUnreachable",
        ),
        (
            "token-file",
            json!({"kcp": {"workspace": scene.provider.workspace.path, "kubeconfigSecretRef": {"name": "kcp-token-file"}}}),
            "InvalidKcpKubeconfig",
        ),
        (
            "steal",
            json!({"export": {"name": "good"}}),
            "ExportConflict",
        ),
        (
            "twin",
            json!({"agent": {"name": format!("{ns}-good")}}),
            "AgentNameConflict",
        ),
        (
            "no-workspace",
            json!({"kcp": {"workspace": "root:does-not-exist", "kubeconfigSecretRef": {"name": KCP_SECRET}}}),
            "WorkspaceNotFound",
        ),
        (
            "taken",
            json!({"export": {"name": scene.provider.export}}),
            "ExportConflict",
        ),
        (
            "clash",
            json!({"kcp": {"workspace": scene.provider.workspace.path, "kubeconfigSecretRef": {"name": "clash-kcp-kubeconfig"}}}),
            "InvalidSpec",
        ),
        (
            "pod-name",
            json!({"agent": {"env": [{"name": "POD_NAME", "value": "fixed"}]}}),
            "InvalidSpec",
        ),
        ("squat", json!({}), "ObjectConflict"),
        (
            "no-crd",
            json!({"resources": [{"name": "gizmos", "resource": {"apiGroup": scene.provider.group, "kind": "Gizmo"}}]}),
            "ResourceKindNotFound",
        ),
    ];
    for (name, extra, _) in &cases {
        scene
            .apply(name, scene.spec(extra.clone()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, _, reason) in &cases {
        let offering = scene
            .wait_for_condition(name, "Ready", "False", reason)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let message = &offering.status.unwrap().conditions[0].message;
        assert!(!message.is_empty(), "{name} has no message");
        assert!(
            !message.contains("eyJ"),
            "{name}'s message carries a token: {message}"
        );
        scene
            .wait_for_warning(name, reason)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }

    // The export someone else owns is untouched.
    let after = Api::<APIExport>::all(scene.provider.kcp_client.clone())
        .get(&scene.provider.export)
        .await
        .expect("the provider's own export");
    // kcp itself may write the export's status meanwhile: what the
    // operator would write is its spec and annotations.
    assert_eq!(after.spec, foreign_export.spec);
    assert_eq!(after.annotations(), foreign_export.annotations());
    // So is the good offering's export, which "steal" asked for by name.
    let good_export = Api::<APIExport>::all(scene.provider.kcp_client.clone())
        .get("good")
        .await
        .expect("the good offering's export");
    assert_eq!(
        good_export
            .annotations()
            .get("offering.syncagent.dev/owner")
            .map(String::as_str),
        Some(format!("{ns}/good").as_str())
    );
    // The operator's credentials in a Secret named like the agent's stay.
    let clash = Api::<Secret>::namespaced(service.clone(), &ns)
        .get("clash-kcp-kubeconfig")
        .await
        .expect("the clashing Secret");
    assert_eq!(
        clash.data.unwrap()["kubeconfig"].0,
        admin.as_bytes(),
        "the operator overwrote a Secret it does not own"
    );
    let squatter = Api::<ServiceAccount>::namespaced(service.clone(), &ns)
        .get("squat-sync-agent")
        .await
        .expect("someone's ServiceAccount");
    assert!(
        squatter.labels().is_empty() && squatter.owner_references().is_empty(),
        "the operator took over someone's ServiceAccount: {:?}",
        squatter.metadata
    );
    // The good offering stays Ready and the operator keeps running.
    scene
        .wait_for_condition("good", "Ready", "True", "Ready")
        .await
        .expect("the good offering stays ready");
    let mut operator = scene.operator;
    assert!(operator.process.is_running(), "the operator crashed");
}

#[tokio::test]
async fn agent_tokens_rotate_without_interrupting_the_sync() {
    let scene = OfferingScene::new(
        "op-rotate",
        &[
            "--agent-token-lifetime=10m",
            "--agent-token-renew-before=590s",
        ],
    )
    .await
    .expect("scene");
    let consumer = scene
        .provider
        .kcp
        .create_workspace("root", "op-rot-consumer")
        .await
        .expect("consumer");
    scene
        .apply(
            "widgets",
            scene.spec(
                json!({"agent": {"replicas": 1}, "consumers": {"workspaces": [consumer.path]}}),
            ),
        )
        .await
        .expect("offering");
    let agent = scene.run_agent("widgets").await.expect("agent");
    scene
        .wait_for_condition("widgets", "Ready", "True", "Ready")
        .await
        .expect("ready");
    let secrets: Api<Secret> =
        Api::namespaced(scene.provider.service.clone(), &scene.provider.namespace);
    let token = async || {
        secrets
            .get("widgets-kcp-kubeconfig")
            .await
            .map(|s| s.data.unwrap()["token"].0.clone())
            .map_err(|e| e.to_string())
    };
    let first = token().await.expect("token");
    let mut seen = vec![first];
    for round in 0..2 {
        let next = poll_until(&format!("rotation {round}"), TIMEOUT, async || {
            let current = token().await?;
            if seen.contains(&current) {
                Err("not rotated yet".to_string())
            } else {
                Ok(current)
            }
        })
        .await
        .expect("rotated");
        seen.push(next);
    }
    let mounted = agent.mounts["/etc/sync-agent/kcp"].join("token");
    poll_until("the mounted token to follow", TIMEOUT, async || {
        let on_disk = std::fs::read(&mounted).map_err(|e| e.to_string())?;
        if seen[1..].contains(&on_disk) {
            Ok(())
        } else {
            Err("stale".to_string())
        }
    })
    .await
    .expect("mounted token updated");

    // Recreating the ServiceAccount invalidates every token minted so far:
    // the agent keeps syncing only if it picks up the new one.
    let accounts: Api<ServiceAccount> =
        Api::namespaced(scene.provider.kcp_client.clone(), "sync-agents");
    accounts
        .delete("sync-agent-widgets", &DeleteParams::default())
        .await
        .expect("delete the agent's ServiceAccount");
    poll_until(
        "a token of the recreated ServiceAccount",
        TIMEOUT,
        async || {
            let current = token().await?;
            if seen.contains(&current) {
                Err("old token".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await
    .expect("new token");
    // kcp accepts a known token for a few seconds from its cache; wait
    // until the last old token is refused.
    let old = String::from_utf8(seen.last().unwrap().clone()).unwrap();
    let mut config = scene
        .provider
        .kcp
        .config_at(&format!(
            "{}/clusters/{}",
            scene.provider.kcp.url(),
            scene.provider.workspace.path
        ))
        .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(old.into()),
        ..Default::default()
    };
    let old_client = kube::Client::try_from(config).unwrap();
    poll_until(
        "kcp to refuse the old token",
        TIMEOUT,
        async || match Api::<APIExport>::all(old_client.clone())
            .get("widgets")
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 401 => Ok(()),
            other => Err(format!("{:?}", other.map(|e| e.name_any()))),
        },
    )
    .await
    .expect("old token refused");
    scene
        .consumer_widget(&consumer.path, "after-rotation")
        .await
        .expect("widget");
    // The agent re-reads its token file about once a minute.
    poll_until(
        "the copy of a widget made after the rotation",
        2 * TIMEOUT,
        async || {
            let copies = scene
                .copies_from(&consumer.cluster)
                .await
                .map_err(|e| e.to_string())?;
            if copies.iter().any(|c| {
                c.annotations()
                    .get("syncagent.kcp.io/remote-object-name")
                    .map(String::as_str)
                    == Some("after-rotation")
            }) {
                Ok(())
            } else {
                Err(format!(
                    "{} copies; agent log:\n{}",
                    copies.len(),
                    agent.process.log_tail()
                ))
            }
        },
    )
    .await
    .expect("synced with the new token");
}

#[tokio::test]
async fn deletion_keeps_or_removes_kcp_objects_as_the_policy_says() {
    let scene = OfferingScene::new("op-delete", &[]).await.expect("scene");
    let kcp = &scene.provider.kcp;
    let keep_consumer = kcp
        .create_workspace("root", "op-keep")
        .await
        .expect("consumer");
    let drop_consumer = kcp
        .create_workspace("root", "op-drop")
        .await
        .expect("consumer");
    scene
        .apply(
            "keep",
            scene.spec(json!({"agent": {"replicas": 1}, "consumers": {"workspaces": [keep_consumer.path]}})),
        )
        .await
        .expect("keep");
    scene
        .apply(
            "drop",
            scene.spec(json!({"agent": {"replicas": 1}, "deletionPolicy": "Delete",
                              "consumers": {"workspaces": [drop_consumer.path]}})),
        )
        .await
        .expect("drop");
    let keep_agent = scene.run_agent("keep").await.expect("keep agent");
    let drop_agent = scene.run_agent("drop").await.expect("drop agent");
    for name in ["keep", "drop"] {
        scene
            .wait_for_condition(name, "Ready", "True", "Ready")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
    let kept = scene
        .consumer_widget(&keep_consumer.path, "kept")
        .await
        .expect("widget");
    let dropped = scene
        .consumer_widget(&drop_consumer.path, "dropped")
        .await
        .expect("widget");
    for cluster in [&keep_consumer.cluster, &drop_consumer.cluster] {
        poll_until("the copy", KCP_SLOW_TIMEOUT, async || {
            let copies = scene
                .copies_from(cluster)
                .await
                .map_err(|e| e.to_string())?;
            if copies.len() == 1 {
                Ok(())
            } else {
                Err(format!("{} copies", copies.len()))
            }
        })
        .await
        .expect("copy");
    }

    for name in ["keep", "drop"] {
        scene
            .offerings()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
    }
    let offerings = scene.offerings();
    poll_until("both offerings to be gone", KCP_SLOW_TIMEOUT, async || {
        let left: Vec<String> = offerings
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .map(|o| o.name_any())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "left: {left:?}; drop agent:\n{}",
                drop_agent.process.log_tail()
            ))
        }
    })
    .await
    .expect("offerings deleted");
    drop(keep_agent);

    let exports: Api<APIExport> = Api::all(scene.provider.kcp_client.clone());
    assert!(
        exports.get_opt("keep").await.unwrap().is_some(),
        "Retain deleted the export"
    );
    assert!(
        exports.get_opt("drop").await.unwrap().is_none(),
        "Delete kept the export"
    );
    let keep_bindings: Api<APIBinding> = Api::all(kcp.client(&keep_consumer.path).unwrap());
    assert!(
        keep_bindings.get_opt("keep").await.unwrap().is_some(),
        "Retain deleted the binding"
    );
    assert!(
        kept.get_opt("kept").await.unwrap().is_some(),
        "Retain lost consumer data"
    );
    let drop_bindings: Api<APIBinding> = Api::all(kcp.client(&drop_consumer.path).unwrap());
    assert!(
        drop_bindings.get_opt("drop").await.unwrap().is_none(),
        "Delete kept the binding"
    );
    // Only a 404 means gone: the object itself, or its whole API with the binding.
    match dropped.get("dropped").await {
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        other => panic!("Delete kept consumer data: {other:?}"),
    }
    // With either policy the agent's identity and the service-cluster objects go.
    let accounts: Api<ServiceAccount> =
        Api::namespaced(scene.provider.kcp_client.clone(), "sync-agents");
    for name in ["keep", "drop"] {
        assert!(
            accounts
                .get_opt(&format!("sync-agent-{name}"))
                .await
                .unwrap()
                .is_none(),
            "{name}: kcp ServiceAccount left"
        );
        let ns = &scene.provider.namespace;
        assert!(
            Api::<Deployment>::namespaced(scene.provider.service.clone(), ns)
                .get_opt(&format!("{name}-sync-agent"))
                .await
                .unwrap()
                .is_none(),
            "{name}: Deployment left"
        );
        assert!(
            Api::<PublishedResource>::all(scene.provider.service.clone())
                .get_opt(&format!("{ns}.{name}.widgets"))
                .await
                .unwrap()
                .is_none(),
            "{name}: PublishedResource left"
        );
        assert!(
            Api::<ClusterRole>::all(scene.provider.service.clone())
                .get_opt(&format!("offering.syncagent.dev:{ns}:{name}"))
                .await
                .unwrap()
                .is_none(),
            "{name}: ClusterRole left"
        );
    }
}

/// Deletes the offering `name`, waits until it is gone, and returns the
/// note of the `KcpCleanupSkipped` Warning it left.
async fn deleted_skipping_kcp(scene: &OfferingScene, name: &str) -> String {
    scene.delete_and_wait(name).await.expect("deleted");
    scene
        .wait_for_warning(name, "KcpCleanupSkipped")
        .await
        .expect("a Warning event")
        .note
        .unwrap_or_default()
}

#[tokio::test]
async fn deletion_waits_for_a_workspace_it_may_not_enter_and_not_for_one_that_is_gone() {
    let scene = OfferingScene::new("op-gone", &[]).await.expect("scene");
    let service = scene.provider.service.clone();
    let ns = scene.provider.namespace.clone();
    let workspace = scene.provider.workspace.path.clone();
    scene
        .apply("widgets", scene.spec(json!({"agent": {"replicas": 1}})))
        .await
        .expect("offering");
    scene
        .wait_for_condition("widgets", "CredentialsReady", "True", "TokenIssued")
        .await
        .expect("provisioned");

    // kcp credentials of a user who may not enter the workspace: deleting
    // waits, and says how to go on.
    let admin = std::fs::read_to_string(&scene.provider.env.kcp_kubeconfig).unwrap();
    let mut stranger = Kubeconfig::from_yaml(&admin).unwrap();
    for user in stranger
        .auth_infos
        .iter_mut()
        .filter_map(|u| u.auth_info.as_mut())
    {
        *user = kube::config::AuthInfo {
            token: Some(scene.provider.env.kcp_agent_token.clone().into()),
            ..Default::default()
        };
    }
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "kcp-stranger"},
        "stringData": {"kubeconfig": serde_json::to_string(&stranger).unwrap()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(service.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the stranger's Secret");
    let stranger_ref =
        json!({"kcp": {"workspace": workspace, "kubeconfigSecretRef": {"name": "kcp-stranger"}}});
    scene
        .apply("widgets", scene.spec(stranger_ref))
        .await
        .expect("the offering with the stranger's credentials");
    scene
        .offerings()
        .delete("widgets", &DeleteParams::default())
        .await
        .expect("delete");
    let offering = scene
        .wait_for_condition("widgets", "Ready", "False", "KcpForbidden")
        .await
        .expect("deletion waits");
    let message = &offering.status.unwrap().conditions[0].message;
    assert!(
        message.contains("offering.syncagent.dev/skip-kcp-cleanup=true"),
        "{message}"
    );
    scene
        .offerings()
        .patch(
            "widgets",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "offering.syncagent.dev/skip-kcp-cleanup": "true"}}})),
        )
        .await
        .expect("annotate");
    let note = deleted_skipping_kcp(&scene, "widgets").await;
    assert!(note.contains("must be removed by hand"), "{note}");
    // As asked, what it had in kcp stays.
    Api::<ServiceAccount>::namespaced(scene.provider.kcp_client.clone(), "sync-agents")
        .get("sync-agent-widgets")
        .await
        .expect("the agent's kcp ServiceAccount stays");

    // A provider workspace that is gone holds nothing to remove.
    let kcp = &scene.provider.kcp;
    let doomed = kcp
        .create_workspace("root", "op-doomed")
        .await
        .expect("workspace");
    let doomed_ref =
        json!({"kcp": {"workspace": doomed.path, "kubeconfigSecretRef": {"name": KCP_SECRET}}});
    scene
        .apply("orphan", scene.spec(doomed_ref))
        .await
        .expect("offering in the doomed workspace");
    scene
        .wait_for_condition("orphan", "CredentialsReady", "True", "TokenIssued")
        .await
        .expect("provisioned");
    let root: Api<sync_agent::api::kcp::tenancy_v1alpha1::Workspace> =
        Api::all(kcp.client("root").unwrap());
    let name = doomed.path.rsplit(':').next().unwrap().to_string();
    root.delete(&name, &DeleteParams::default())
        .await
        .expect("delete the workspace");
    poll_until(
        "the workspace to be gone",
        KCP_SLOW_TIMEOUT,
        async || match root.get_opt(&name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        },
    )
    .await
    .expect("workspace gone");
    let note = deleted_skipping_kcp(&scene, "orphan").await;
    assert!(note.contains("no longer exists"), "{note}");
}

/// Two resources of one name are refused by the API server, created or
/// applied server-side, with a message naming the field: `resources` is a
/// list keyed by `name`.
#[tokio::test]
async fn two_resources_of_one_name_are_refused_by_the_server() {
    let env = e2e::env::EnvFile::load().unwrap();
    let client = e2e::service::client(&env).await.unwrap();
    e2e::service::apply_project_crds(&client).await.unwrap();
    let namespace = e2e::service::create_namespace(&client, "op-dup")
        .await
        .unwrap();
    let entry =
        json!({"name": "widgets", "resource": {"apiGroup": "example.com", "kind": "Widget"}});
    let offering = json!({
        "apiVersion": "offering.syncagent.dev/v1alpha1",
        "kind": "PublishedOffering",
        "metadata": {"name": "twice"},
        "spec": {"kcp": {"workspace": "root:providers:widgets"}, "resources": [entry, entry]},
    });
    let offerings: Api<PublishedOffering> = Api::namespaced(client.clone(), &namespace);
    let created = offerings
        .create(
            &PostParams::default(),
            &serde_json::from_value(offering.clone()).unwrap(),
        )
        .await;
    let applied = offerings
        .patch(
            "twice",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&offering),
        )
        .await;
    for refused in [created, applied] {
        match refused {
            Err(kube::Error::Api(status)) => assert!(
                status.message.contains("spec.resources")
                    && status.message.contains(r#""widgets""#),
                "{status:?}"
            ),
            other => panic!("not refused: {other:?}"),
        }
    }
    e2e::service::delete_namespace(&client, &namespace)
        .await
        .unwrap();
}

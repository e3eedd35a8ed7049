//! Object sync on the real servers: consumer objects in kcp get copies on
//! the service cluster, status comes back, deletion goes through the
//! finalizer.

use std::time::Duration;

use e2e::poll::poll_until;
use e2e::publishing::Provider;
use e2e::scene::{Scene, TIMEOUT};
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::core::GroupVersionKind;
use serde_json::json;
use sync_agent::api::hash::sha1_hex;
use sync_agent::sync::identity;
use sync_agent::sync::naming::sha3_hex;

#[tokio::test]
async fn a_consumer_object_round_trips_with_exact_identity_and_is_deleted_through_the_finalizer() {
    let scene = Scene::new("roundtrip", json!({})).await;
    let (consumer, client) = scene.consumer("consumer").await;
    scene.create_widget(&client, "blue", "blue").await;

    let local = scene.local_copy(&consumer.cluster, "blue").await;
    let expected_name = format!("{}-{}", &sha3_hex("apps")[..20], &sha3_hex("blue")[..20]);
    assert_eq!(local.name_any(), expected_name, "upstream's default naming");
    assert_eq!(
        local.namespace().as_deref(),
        Some(consumer.cluster.as_str()),
        "namespace = cluster name"
    );
    let labels = local.labels();
    assert_eq!(
        labels.get("syncagent.kcp.io/remote-object-cluster"),
        Some(&consumer.cluster)
    );
    assert_eq!(
        labels.get("syncagent.kcp.io/remote-object-name-hash"),
        Some(&sha1_hex("blue"))
    );
    assert_eq!(
        labels.get("syncagent.kcp.io/remote-object-namespace-hash"),
        Some(&sha1_hex("apps"))
    );
    assert_eq!(
        labels.get("syncagent.kcp.io/agent-name"),
        Some(&scene.provider.agent_name)
    );
    assert_eq!(
        local
            .annotations()
            .get("syncagent.kcp.io/remote-object-name")
            .map(String::as_str),
        Some("blue")
    );
    assert_eq!(local.data["spec"]["color"], "blue");

    let kcp_widgets = scene.kcp_widgets(&client);
    let remote = kcp_widgets.get("blue").await.expect("kcp object");
    assert!(
        remote
            .finalizers()
            .contains(&"syncagent.kcp.io/cleanup".to_string())
    );
    // Who syncs it and where its copy is, visible in kcp (upstream #117),
    // and not copied down.
    let marks = remote.annotations();
    assert_eq!(
        marks.get("syncagent.kcp.io/agent-name"),
        Some(&scene.provider.agent_name)
    );
    assert_eq!(
        marks
            .get("syncagent.kcp.io/local-object")
            .map(String::as_str),
        Some(format!("{}/{expected_name}", consumer.cluster).as_str())
    );
    assert!(
        !local
            .annotations()
            .contains_key("syncagent.kcp.io/local-object"),
        "the marks stay in kcp"
    );

    // The consumer sees what happened as events on the object.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "apps");
    let reasons = poll_until("events on the consumer's object", TIMEOUT, async || {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=blue"))
            .await
            .map_err(|e| e.to_string())?;
        let reasons: Vec<String> = list.items.into_iter().filter_map(|e| e.reason).collect();
        if reasons.iter().any(|r| r == "ObjectPlaced") {
            Ok(reasons)
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await
    .expect("events");
    assert!(
        reasons.contains(&"ObjectAccepted".to_string()),
        "{reasons:?}"
    );

    // Status set on the service cluster appears in kcp.
    scene
        .local_api(&consumer.cluster)
        .patch_status(
            &expected_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}})),
        )
        .await
        .expect("status set by the provider");
    poll_until("the status in kcp", TIMEOUT, async || {
        let object = kcp_widgets.get("blue").await.map_err(|e| e.to_string())?;
        if object.data["status"]["phase"] == "Ready" {
            Ok(())
        } else {
            Err(format!("{}", object.data))
        }
    })
    .await
    .expect("status synced back");

    // A spec change in kcp reaches the copy.
    kcp_widgets
        .patch(
            "blue",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"color": "navy"}})),
        )
        .await
        .expect("consumer edits");
    poll_until("the edit on the service cluster", TIMEOUT, async || {
        let object = scene
            .local_api(&consumer.cluster)
            .get(&expected_name)
            .await
            .map_err(|e| e.to_string())?;
        if object.data["spec"]["color"] == "navy" {
            Ok(())
        } else {
            Err(format!("{}", object.data["spec"]))
        }
    })
    .await
    .expect("spec synced");

    // Deleting in kcp removes the copy first, then releases the kcp object.
    kcp_widgets
        .delete("blue", &DeleteParams::default())
        .await
        .expect("consumer deletes");
    poll_until(
        "the kcp object to be gone",
        TIMEOUT,
        async || match kcp_widgets
            .get_opt("blue")
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(o) => Err(format!("finalizers {:?}", o.finalizers())),
        },
    )
    .await
    .expect("kcp object deleted");
    assert!(
        scene
            .local_api(&consumer.cluster)
            .get_opt(&expected_name)
            .await
            .expect("get")
            .is_none(),
        "the copy went before the kcp object"
    );

    consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn provider_fields_survive_and_provider_edits_of_consumer_fields_are_reverted() {
    let scene = Scene::new("owned", json!({})).await;
    let (consumer, client) = scene.consumer("consumer").await;
    scene.create_widget(&client, "red", "red").await;
    let local = scene.local_copy(&consumer.cluster, "red").await;
    let local_api = scene.local_api(&consumer.cluster);

    // The provider's operator fills in a field the consumer never set ...
    local_api
        .patch(
            &local.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "large"}})),
        )
        .await
        .expect("provider adds a field");
    // ... and a consumer edit in kcp is synced without removing it.
    scene
        .kcp_widgets(&client)
        .patch(
            "red",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"color": "crimson"}})),
        )
        .await
        .expect("consumer edits");
    poll_until(
        "the consumer's edit next to the provider's field",
        TIMEOUT,
        async || {
            let object = local_api
                .get(&local.name_any())
                .await
                .map_err(|e| e.to_string())?;
            let spec = &object.data["spec"];
            if spec["color"] == "crimson" && spec["size"] == "large" {
                Ok(())
            } else {
                Err(spec.to_string())
            }
        },
    )
    .await
    .expect("both fields");

    // An edit on the service cluster to the consumer's field is reverted.
    local_api
        .patch(
            &local.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"color": "green"}})),
        )
        .await
        .expect("provider overwrites the consumer's field");
    poll_until("the consumer's value to return", TIMEOUT, async || {
        let object = local_api
            .get(&local.name_any())
            .await
            .map_err(|e| e.to_string())?;
        let spec = &object.data["spec"];
        if spec["color"] == "crimson" && spec["size"] == "large" {
            Ok(())
        } else {
            Err(spec.to_string())
        }
    })
    .await
    .expect("reverted");

    consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn identical_names_in_two_workspaces_do_not_collide_and_a_pr_edit_keeps_one_worker() {
    let scene = Scene::new("twins", json!({})).await;
    let (first, first_client) = scene.consumer("first").await;
    let (second, second_client) = scene.consumer("second").await;
    scene.create_widget(&first_client, "same", "one").await;
    scene.create_widget(&second_client, "same", "two").await;
    let one = scene.local_copy(&first.cluster, "same").await;
    let two = scene.local_copy(&second.cluster, "same").await;
    assert_ne!(one.namespace(), two.namespace());
    assert_eq!(one.data["spec"]["color"], "one");
    assert_eq!(two.data["spec"]["color"], "two");

    // Editing the PublishedResource replaces its worker instead of adding one.
    let prs = scene.provider.prs();
    let pr = format!("{}-widgets", scene.provider.agent_name);
    prs.patch(
        &pr,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"naming": {"name": "{{ .Object.metadata.name }}-{{ .ClusterName }}"}}}),
        ),
    )
    .await
    .expect("PR edited");
    // The new worker reports the new generation once it runs.
    poll_until("the worker for the edited PR", TIMEOUT, async || {
        let pr = prs.get(&pr).await.map_err(|e| e.to_string())?;
        let generation = pr.metadata.generation;
        let syncing = pr
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Syncing");
        match syncing {
            Some(c) if c.status == "True" && c.observed_generation == generation => Ok(()),
            other => Err(format!("{other:?} at generation {generation:?}")),
        }
    })
    .await
    .expect("new worker");
    scene.create_widget(&first_client, "later", "three").await;
    let later = scene.local_copy(&first.cluster, "later").await;
    assert_eq!(
        later.name_any(),
        format!("later-{}", first.cluster),
        "the new naming rule applies"
    );
    let metrics = scene.agent.metrics().await.expect("metrics");
    // Object reconciles count as the `sync` controller's, as documented.
    assert!(
        metrics.lines().any(|l| l.starts_with(
            r#"controller_runtime_reconcile_total{controller="sync",result="success"} "#
        )),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "sync_agent_sync_workers 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("sync_agent"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    first.delete(&scene.provider.kcp).await.expect("cleanup");
    second.delete(&scene.provider.kcp).await.expect("cleanup");
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn filters_select_objects_and_an_object_that_stops_matching_is_cleaned_up() {
    let scene = Scene::new(
        "filters",
        json!({"filter": {"resource": {"matchLabels": {"sync": "yes"}},
                          "namespace": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}}),
    )
    .await;
    let (consumer, client) = scene.consumer("consumer").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            "apps",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .expect("label the namespace");
    let other = Namespace {
        metadata: ObjectMeta {
            name: Some("other".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &other)
        .await
        .expect("unlabelled namespace");

    let widgets = scene.kcp_widgets(&client);
    // "chosen" comes last: once its copy exists the agent has seen the two
    // objects before it, so their missing copies are the filter at work.
    for (namespace, name, sync) in [
        ("apps", "ignored", "no"),
        ("other", "elsewhere", "yes"),
        ("apps", "chosen", "yes"),
    ] {
        let mut widget = DynamicObject::new(name, &scene.resource).within(namespace);
        widget.metadata.labels = Some([("sync".to_string(), sync.to_string())].into());
        widget.data = json!({"spec": {"color": name}});
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &scene.resource);
        poll_until("a widget", TIMEOUT, async || {
            api.create(&PostParams::default(), &widget)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
        .expect("created");
    }
    let chosen = scene.local_copy(&consumer.cluster, "chosen").await;
    let all: Api<DynamicObject> = Api::all_with(scene.provider.service.clone(), &scene.resource);
    let selector = format!(
        "syncagent.kcp.io/remote-object-cluster={}",
        consumer.cluster
    );
    let copies = all
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list");
    assert_eq!(copies.items.len(), 1, "only the matching object is synced");
    for name in ["ignored"] {
        let object = widgets.get(name).await.expect("kcp object");
        assert!(object.finalizers().is_empty(), "{name} is left alone");
    }

    // The object stops matching: its copy goes and the finalizer is released.
    widgets
        .patch(
            "chosen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"sync": "no"}}})),
        )
        .await
        .expect("relabel");
    poll_until(
        "the copy of an unselected object to go",
        TIMEOUT,
        async || {
            let copy = scene
                .local_api(&consumer.cluster)
                .get_opt(&chosen.name_any())
                .await
                .map_err(|e| e.to_string())?;
            let object = widgets.get("chosen").await.map_err(|e| e.to_string())?;
            let marked = object
                .annotations()
                .keys()
                .any(|k| k.starts_with("syncagent.kcp.io/"));
            if copy.is_none() && object.finalizers().is_empty() && !marked {
                Ok(())
            } else {
                Err(format!(
                    "copy {}, finalizers {:?}, annotations {:?}",
                    copy.is_some(),
                    object.finalizers(),
                    object.annotations()
                ))
            }
        },
    )
    .await
    .expect("cleaned up");

    consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn workspace_paths_and_legacy_naming_are_applied_and_long_names_work() {
    let scene = Scene::new(
        "paths",
        json!({"enableWorkspacePaths": true,
               "naming": {"namespace": "synced-$remoteClusterName", "name": "$remoteNameHash"}}),
    )
    .await;
    let (consumer, client) = scene.consumer("consumer").await;
    let long = format!("w-{}", "x".repeat(200));
    scene.create_widget(&client, &long, "long").await;
    let copy = scene.local_copy(&consumer.cluster, &long).await;
    assert_eq!(copy.name_any(), sha1_hex(&long)[..20].to_string());
    assert_eq!(
        copy.namespace(),
        Some(format!("synced-{}", consumer.cluster))
    );
    assert_eq!(
        copy.annotations()
            .get("syncagent.kcp.io/remote-object-workspace-path"),
        Some(&consumer.path)
    );
    assert_eq!(
        copy.annotations()
            .get("syncagent.kcp.io/remote-object-name"),
        Some(&long)
    );

    consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_killed_agent_restarts_and_syncs_every_object_exactly_once() {
    let scene = Scene::new("restart", json!({})).await;
    let (consumer, client) = scene.consumer("consumer").await;
    let names: Vec<String> = (0..30).map(|i| format!("bulk-{i}")).collect();
    let widgets = scene.kcp_widgets(&client);
    // Wait until the consumer can create objects, then create them all.
    scene.create_widget(&client, &names[0], "c").await;
    let Scene {
        provider,
        agent,
        resource,
    } = scene;
    let creating = async {
        for name in &names[1..] {
            let mut widget = DynamicObject::new(name, &resource).within("apps");
            widget.data = json!({"spec": {"color": "c"}});
            widgets
                .create(&PostParams::default(), &widget)
                .await
                .expect("created");
        }
    };
    let killing = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(agent); // SIGKILL
    };
    tokio::join!(creating, killing);
    let agent = provider.start_agent().await.expect("agent restarts");

    let all: Api<DynamicObject> = Api::all_with(provider.service.clone(), &resource);
    let selector = format!(
        "syncagent.kcp.io/remote-object-cluster={}",
        consumer.cluster
    );
    let copies = poll_until(
        "a copy of every object",
        Duration::from_secs(90),
        async || {
            let list = all
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            if list.items.len() >= names.len() {
                Ok(list.items)
            } else {
                Err(format!("{} copies", list.items.len()))
            }
        },
    )
    .await
    .expect("copies");
    let mut synced: Vec<String> = copies
        .iter()
        .filter_map(|c| {
            c.annotations()
                .get("syncagent.kcp.io/remote-object-name")
                .cloned()
        })
        .collect();
    synced.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(synced, expected, "every object once, none twice");
    drop(agent);

    consumer.delete(&provider.kcp).await.expect("cleanup");
    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn mutations_rewrite_both_directions_and_broken_ones_are_reported_while_others_sync() {
    let scene = Scene::new(
        "mutate",
        json!({"mutation": {
            "spec": [{"regex": {"path": "spec.color", "pattern": "(.+)", "replacement": "dyed-$1"}}],
            "status": [{"cel": {"path": "status.phase", "expression": "value + '!'"}}]
        }}),
    )
    .await;
    let provider = &scene.provider;
    provider
        .apply_crd("Gizmo", &[("v1", true, true)], "size")
        .await
        .expect("CRD");
    provider
        .apply_crd("Gadget", &[("v1", true, true)], "size")
        .await
        .expect("CRD");
    let broken = provider
        .create_pr("gadgets", json!({"resource": {"apiGroup": provider.group, "kind": "Gadget"},
                                    "mutation": {"spec": [{"cel": {"path": "spec.size", "expression": "1 +"}}]}}))
        .await
        .expect("PR");
    let failing = provider
        .create_pr("gizmos", json!({"resource": {"apiGroup": provider.group, "kind": "Gizmo"},
                                   "mutation": {"spec": [{"cel": {"path": "spec.size", "expression": "self.spec.missing.deeper"}}]}}))
        .await
        .expect("PR");
    provider
        .apply_crd("Sprocket", &[("v1", true, true)], "size")
        .await
        .expect("CRD");
    let misnamed = provider
        .create_pr(
            "sprockets",
            json!({"resource": {"apiGroup": provider.group, "kind": "Sprocket"},
                   "naming": {"name": "{{ range .Object }}x{{ end }}"}}),
        )
        .await
        .expect("PR");
    for pr in [&broken, &failing, &misnamed] {
        provider
            .wait_for_schema_name(pr, None)
            .await
            .expect("schema");
    }
    provider
        .wait_for_export("four schemas", |e| {
            if e.spec.resources.len() == 4 {
                Ok(())
            } else {
                Err(format!("{}", e.spec.resources.len()))
            }
        })
        .await
        .expect("export");
    let (consumer, client) = scene.consumer("consumer").await;

    // The broken rule is reported on its PublishedResource.
    let (condition_reason, condition_message) = provider
        .wait_for_condition(&broken, "Syncing", "False")
        .await
        .expect("condition");
    assert_eq!(condition_reason, "InvalidMutation");
    assert!(
        condition_message.contains("spec.mutation.spec[0]: CEL expression"),
        "{condition_message}"
    );

    // So is a naming template the agent does not support.
    let (naming_reason, naming_message) = provider
        .wait_for_condition(&misnamed, "Syncing", "False")
        .await
        .expect("condition");
    assert_eq!(naming_reason, "InvalidNaming");
    assert!(
        naming_message.contains("spec.naming") && naming_message.contains("range"),
        "{naming_message}"
    );

    // A rule failing on an object is reported on the consumer's object.
    let gizmo_resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&provider.group, "v1", "Gizmo"),
        "gizmos",
    );
    let gizmos: Api<DynamicObject> = Api::namespaced_with(client.clone(), "apps", &gizmo_resource);
    let mut gizmo = DynamicObject::new("g", &gizmo_resource).within("apps");
    gizmo.data = json!({"spec": {"size": "s"}});
    poll_until("a gizmo", TIMEOUT, async || {
        gizmos
            .create(&PostParams::default(), &gizmo)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("created");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "apps");
    let warning = poll_until("a Warning on the consumer's gizmo", TIMEOUT, async || {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=g"))
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|e| e.type_.as_deref() == Some("Warning"))
            .ok_or_else(|| "no warning".to_string())
    })
    .await
    .expect("warning");
    assert_eq!(warning.reason.as_deref(), Some("ReconcilingError"));
    assert!(
        !warning.message.unwrap_or_default().contains("CEL"),
        "no provider internals"
    );

    // Meanwhile the good PublishedResource keeps syncing, with its rules applied.
    scene.create_widget(&client, "w", "blue").await;
    let local = scene.local_copy(&consumer.cluster, "w").await;
    assert_eq!(local.data["spec"]["color"], "dyed-blue");
    scene
        .local_api(&consumer.cluster)
        .patch_status(
            &local.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}})),
        )
        .await
        .expect("status");
    let widgets = scene.kcp_widgets(&client);
    poll_until("the mutated status in kcp", TIMEOUT, async || {
        let object = widgets.get("w").await.map_err(|e| e.to_string())?;
        if object.data["status"]["phase"] == "Ready!" {
            Ok(())
        } else {
            Err(object.data["status"].to_string())
        }
    })
    .await
    .expect("status mutated");
    assert_eq!(
        widgets.get("w").await.expect("widget").data["spec"]["color"],
        "blue",
        "kcp keeps the consumer's value"
    );

    consumer.delete(&provider.kcp).await.expect("cleanup");
    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn with_the_option_a_copy_waits_for_foreign_finalizers_and_latency_is_measured() {
    let scene =
        Scene::with_agent_args("foreign", json!({}), &["--wait-for-foreign-finalizers"]).await;
    let (consumer, client) = scene.consumer("consumer").await;
    let mut widget = DynamicObject::new("held", &scene.resource).within("apps");
    widget.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    widget.data = json!({"spec": {"color": "grey"}});
    let widgets = scene.kcp_widgets(&client);
    poll_until("a widget", TIMEOUT, async || {
        widgets
            .create(&PostParams::default(), &widget)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("created");
    let copy = scene.local_copy(&consumer.cluster, "held").await;
    // A sentinel without a foreign finalizer, deleted after "held": once its
    // copy is gone the agent has handled the deletion of "held" too.
    scene.create_widget(&client, "free", "grey").await;
    let free = scene.local_copy(&consumer.cluster, "free").await;

    for name in ["held", "free"] {
        widgets
            .delete(name, &DeleteParams::default())
            .await
            .expect("consumer deletes");
    }
    poll_until("the sentinel's copy to go", TIMEOUT, async || {
        match scene
            .local_api(&consumer.cluster)
            .get_opt(&free.name_any())
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("the sentinel's copy is still there".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("the sentinel's copy is deleted");
    assert!(
        scene
            .local_api(&consumer.cluster)
            .get_opt(&copy.name_any())
            .await
            .expect("get")
            .is_some(),
        "the copy stays while another finalizer is pending"
    );
    let object = widgets.get("held").await.expect("still there");
    let others: Vec<&String> = object
        .finalizers()
        .iter()
        .filter(|f| f.as_str() != "example.com/hold")
        .collect();
    widgets
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": others}})),
        )
        .await
        .expect("the other controller finishes");
    poll_until("the copy and the object to go", TIMEOUT, async || {
        let copy = scene
            .local_api(&consumer.cluster)
            .get_opt(&copy.name_any())
            .await
            .map_err(|e| e.to_string())?;
        let object = widgets.get_opt("held").await.map_err(|e| e.to_string())?;
        if copy.is_none() && object.is_none() {
            Ok(())
        } else {
            Err(format!(
                "copy {}, object {}",
                copy.is_some(),
                object.is_some()
            ))
        }
    })
    .await
    .expect("deleted in order");

    let metrics = scene.agent.metrics().await.expect("metrics");
    let count = metrics
        .lines()
        .find(|l| l.starts_with("sync_agent_sync_latency_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(count >= 1, "sync latency observed: {metrics}");

    consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn an_endpoint_slice_in_another_workspace_is_followed_to_the_export() {
    let scene = Scene::new("slices", json!({})).await;
    let provider = &scene.provider;
    let elsewhere = provider
        .kcp
        .create_workspace("root", "slices-elsewhere")
        .await
        .expect("workspace");
    let slice: sync_agent::api::kcp::apis_v1alpha1::APIExportEndpointSlice =
        serde_json::from_value(json!({
            "apiVersion": "apis.kcp.io/v1alpha1",
            "kind": "APIExportEndpointSlice",
            "metadata": {"name": "remote-slice"},
            "spec": {"export": {"path": provider.workspace.path, "name": provider.export}}
        }))
        .expect("slice");
    Api::<sync_agent::api::kcp::apis_v1alpha1::APIExportEndpointSlice>::all(
        provider.kcp.client(&elsewhere.path).expect("client"),
    )
    .create(&PostParams::default(), &slice)
    .await
    .expect("slice created");
    drop(scene.agent);
    let mut settings = provider.agent_settings();
    settings.workspace = elsewhere.path.clone();
    settings.endpoint_slice = "remote-slice".into();
    let agent = e2e::agent::AgentProcess::start(&provider.env, &settings)
        .await
        .expect("agent starts");

    let (consumer, client) = provider
        .bind_consumer_with_apps("consumer", None)
        .await
        .expect("consumer");
    let mut widget = DynamicObject::new("via-slice", &scene.resource).within("apps");
    widget.data = json!({"spec": {"color": "teal"}});
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "apps", &scene.resource);
    poll_until("a widget", TIMEOUT, async || {
        widgets
            .create(&PostParams::default(), &widget)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("created");
    let key = identity::RemoteKey {
        cluster: consumer.cluster.clone(),
        namespace: "apps".into(),
        name: "via-slice".into(),
    };
    let all: Api<DynamicObject> = Api::all_with(provider.service.clone(), &scene.resource);
    let selector = key.selector(&provider.agent_name);
    poll_until(
        "the copy through the other workspace's slice",
        TIMEOUT,
        async || {
            let list = all
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            if list.items.len() == 1 {
                Ok(())
            } else {
                Err(format!(
                    "{} copies; log:\n{}",
                    list.items.len(),
                    agent.log_tail()
                ))
            }
        },
    )
    .await
    .expect("synced");

    consumer.delete(&provider.kcp).await.expect("cleanup");
    elsewhere.delete(&provider.kcp).await.expect("cleanup");
    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn several_published_resources_sync_side_by_side_including_a_cluster_scoped_projection() {
    let scene = Scene::new("several", json!({})).await;
    let provider = &scene.provider;
    provider
        .apply_crd("Gizmo", &[("v1", true, true)], "size")
        .await
        .expect("CRD");
    let group = format!("cluster.{}", provider.group);
    let pr = provider
        .create_pr(
            "gizmos",
            json!({"resource": {"apiGroup": provider.group, "kind": "Gizmo"},
                                   "projection": {"group": group, "scope": "Cluster"}}),
        )
        .await
        .expect("PR");
    provider
        .wait_for_schema_name(&pr, None)
        .await
        .expect("schema");
    provider
        .wait_for_export("two schemas", |e| {
            if e.spec.resources.len() == 2 {
                Ok(())
            } else {
                Err(format!("{}", e.spec.resources.len()))
            }
        })
        .await
        .expect("export");
    let (consumer, client) = scene.consumer("consumer").await;

    scene.create_widget(&client, "w1", "amber").await;
    let gizmo_remote =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, "v1", "Gizmo"), "gizmos");
    let gizmos: Api<DynamicObject> = Api::all_with(client.clone(), &gizmo_remote);
    let mut gizmo = DynamicObject::new("g1", &gizmo_remote);
    gizmo.data = json!({"spec": {"size": "xl"}});
    poll_until("a cluster-scoped gizmo", TIMEOUT, async || {
        gizmos
            .create(&PostParams::default(), &gizmo)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("created");

    scene.local_copy(&consumer.cluster, "w1").await;
    let gizmo_local = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&provider.group, "v1", "Gizmo"),
        "gizmos",
    );
    let key = identity::RemoteKey {
        cluster: consumer.cluster.clone(),
        namespace: String::new(),
        name: "g1".into(),
    };
    let all: Api<DynamicObject> = Api::all_with(provider.service.clone(), &gizmo_local);
    let copy = poll_until(
        "the copy of the cluster-scoped gizmo",
        TIMEOUT,
        async || {
            let list = all
                .list(&ListParams::default().labels(&key.selector(&provider.agent_name)))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .next()
                .ok_or_else(|| "no copy".to_string())
        },
    )
    .await
    .expect("copy");
    assert_eq!(
        copy.name_any(),
        sha3_hex("g1")[..20].to_string(),
        "a valid default name without a namespace hash"
    );
    assert_eq!(copy.namespace(), Some(consumer.cluster.clone()));
    assert!(
        !copy
            .labels()
            .contains_key("syncagent.kcp.io/remote-object-namespace-hash")
    );
    let metrics = scene.agent.metrics().await.expect("metrics");
    assert!(
        metrics.lines().any(|l| l == "sync_agent_sync_workers 2"),
        "two workers"
    );

    consumer.delete(&provider.kcp).await.expect("cleanup");
    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn the_namespaces_of_copies_carry_the_metadata_of_the_published_resource() {
    let metadata = json!({"labels": {"team": "blue", "owner": "agent"},
                          "annotations": {"example.com/contact": "db-team"}});
    let scene = Scene::new("nsmeta", json!({"naming": {"namespaceMetadata": metadata}})).await;
    let namespaces: Api<Namespace> = Api::all(scene.provider.service.clone());
    let (fresh, fresh_client) = scene.consumer("fresh").await;
    // The second consumer's namespace exists already, and another manager
    // holds "owner" with another value: nothing is applied there, and the
    // copy is made all the same.
    let (taken, taken_client) = scene.consumer("taken").await;
    namespaces
        .patch(
            &taken.cluster,
            &PatchParams::apply("provider-tooling"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": taken.cluster, "labels": {"owner": "provider"}}})),
        )
        .await
        .expect("the provider's namespace");
    scene.create_widget(&fresh_client, "w", "blue").await;
    scene.create_widget(&taken_client, "w", "blue").await;
    scene.local_copy(&fresh.cluster, "w").await;
    scene.local_copy(&taken.cluster, "w").await;

    let labels_of = async |name: &str| {
        let namespace = namespaces.get(name).await.expect("namespace");
        (namespace.labels().clone(), namespace.annotations().clone())
    };
    let (labels, annotations) = labels_of(&fresh.cluster).await;
    assert_eq!(labels.get("team").map(String::as_str), Some("blue"));
    assert_eq!(labels.get("owner").map(String::as_str), Some("agent"));
    assert_eq!(
        annotations.get("example.com/contact").map(String::as_str),
        Some("db-team")
    );
    let (labels, _) = labels_of(&taken.cluster).await;
    assert_eq!(labels.get("owner").map(String::as_str), Some("provider"));
    assert!(!labels.contains_key("team"), "{labels:?}");

    // `{}` takes back what the PublishedResource set, and nothing else.
    let prs = scene.provider.prs();
    let pr = format!("{}-widgets", scene.provider.agent_name);
    prs.patch(
        &pr,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"naming": {"namespaceMetadata": {"labels": null, "annotations": null}}}})),
    )
    .await
    .expect("PR edited");
    poll_until("the labels to go", TIMEOUT, async || {
        let (labels, annotations) = labels_of(&fresh.cluster).await;
        if labels.contains_key("team") || annotations.contains_key("example.com/contact") {
            Err(format!("{labels:?} {annotations:?}"))
        } else {
            Ok(())
        }
    })
    .await
    .expect("taken back");
    let (labels, _) = labels_of(&taken.cluster).await;
    assert_eq!(labels.get("owner").map(String::as_str), Some("provider"));
    assert!(
        labels.contains_key("kubernetes.io/metadata.name"),
        "the server's own label stays: {labels:?}"
    );

    for consumer in [fresh, taken] {
        consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    }
    scene.provider.cleanup().await.expect("cleanup");
}

/// A built-in kind, Deployment, published from the service cluster's
/// OpenAPI: the consumer's Deployment gets a copy, and the status the
/// provider's side writes reaches kcp (upstream #130 and #85, where this
/// fails with "not found").
#[tokio::test]
async fn a_deployment_round_trips_with_its_status() {
    let provider = Provider::new("deploy").await.expect("provider");
    let agent = provider.start_agent().await.expect("agent starts");
    provider
        .publish_pr(
            "deployments",
            json!({
                "resource": {"apiGroup": "apps", "kind": "Deployment", "versions": ["v1"]},
                "projection": {"group": provider.group},
            }),
        )
        .await
        .expect("the Deployment schema in the export");
    let (consumer, client) = provider
        .bind_consumer_with_apps("consumer", None)
        .await
        .expect("consumer");
    let remote = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&provider.group, "v1", "Deployment"),
        "deployments",
    );
    let deployments: Api<DynamicObject> = Api::namespaced_with(client.clone(), "apps", &remote);
    let mut deployment = DynamicObject::new("web", &remote).within("apps");
    deployment.data = json!({"spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
        },
    }});
    poll_until("the consumer to create a Deployment", TIMEOUT, async || {
        deployments
            .create(&PostParams::default(), &deployment)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("created");

    let local_kind = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps", "v1", "Deployment"),
        "deployments",
    );
    let key = identity::RemoteKey {
        cluster: consumer.cluster.clone(),
        namespace: "apps".into(),
        name: "web".into(),
    };
    let selector = key.selector(&provider.agent_name);
    let all: Api<DynamicObject> = Api::all_with(provider.service.clone(), &local_kind);
    let copy = poll_until("the copy of the Deployment", TIMEOUT, async || {
        let list = all
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?;
        match list.items.as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!(
                "{} copies; agent log:\n{}",
                other.len(),
                agent.log_tail()
            )),
        }
    })
    .await
    .expect("copy");
    assert_eq!(
        copy.data["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.invalid/web:1"
    );

    // What the Deployment controller would write, written by hand: the
    // test's API server runs no controllers.
    let local: Api<DynamicObject> = Api::namespaced_with(
        provider.service.clone(),
        &copy.namespace().unwrap(),
        &local_kind,
    );
    local
        .patch_status(
            &copy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": copy.metadata.generation,
                "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
                "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                                "message": "Deployment has minimum availability."}],
            }})),
        )
        .await
        .expect("status on the copy");
    poll_until("the Deployment's status in kcp", TIMEOUT, async || {
        let object = deployments.get("web").await.map_err(|e| e.to_string())?;
        let status = &object.data["status"];
        if status["availableReplicas"] == 1 && status["conditions"][0]["type"] == "Available" {
            Ok(())
        } else {
            Err(format!("status {status}; agent log:\n{}", agent.log_tail()))
        }
    })
    .await
    .expect("status synced back");

    consumer.delete(&provider.kcp).await.expect("cleanup");
    provider.cleanup().await.expect("cleanup");
}

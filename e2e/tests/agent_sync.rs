//! Object sync on the real servers: consumer objects in kcp get copies on
//! the service cluster, status comes back, deletion goes through the
//! finalizer.

use std::time::Duration;

use e2e::kcp::TestWorkspace;
use e2e::poll::poll_until;
use e2e::publishing::Provider;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde_json::json;
use sync_agent::sync::identity::{self, sha1_hex};
use sync_agent::sync::naming::sha3_hex;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A provider with a published `Widget` kind, a running agent and one
/// consumer workspace bound to it.
struct Scene {
    provider: Provider,
    agent: e2e::agent::AgentProcess,
    resource: ApiResource,
}

impl Scene {
    async fn new(prefix: &str, pr_extra: serde_json::Value) -> Self {
        Self::with_agent_args(prefix, pr_extra, &[]).await
    }

    async fn with_agent_args(prefix: &str, pr_extra: serde_json::Value, args: &[&str]) -> Self {
        let provider = Provider::new(prefix).await.expect("provider");
        provider
            .apply_crd("Widget", &[("v1", true, true)], "color")
            .await
            .expect("CRD");
        let mut settings = provider.agent_settings();
        settings
            .extra_args
            .extend(args.iter().map(|a| a.to_string()));
        let agent = e2e::agent::AgentProcess::start(&provider.env, &settings)
            .await
            .expect("agent starts");
        let mut spec = json!({"resource": {"apiGroup": provider.group, "kind": "Widget"}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), pr_extra.as_object()) {
            spec.extend(extra.clone());
        }
        let pr = provider.create_pr("widgets", spec).await.expect("PR");
        let schema = provider
            .wait_for_schema_name(&pr, None)
            .await
            .expect("schema");
        provider
            .wait_for_export("the schema in the export", |e| {
                if e.spec.resources.iter().any(|r| r.schema == schema) {
                    Ok(())
                } else {
                    Err("missing".into())
                }
            })
            .await
            .expect("export");
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(&provider.group, "v1", "Widget"),
            "widgets",
        );
        Self {
            provider,
            agent,
            resource,
        }
    }

    async fn consumer(&self, prefix: &str) -> (TestWorkspace, Client) {
        let consumer = self.provider.bind_consumer(prefix).await.expect("consumer");
        let client = self.provider.kcp.client(&consumer.path).expect("client");
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some("apps".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("namespace");
        (consumer, client)
    }

    fn kcp_widgets(&self, client: &Client) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), "apps", &self.resource)
    }

    async fn create_widget(&self, client: &Client, name: &str, color: &str) {
        let mut widget = DynamicObject::new(name, &self.resource).within("apps");
        widget.data = json!({"spec": {"color": color}});
        let api = self.kcp_widgets(client);
        poll_until("the consumer to create a widget", TIMEOUT, async || {
            api.create(&PostParams::default(), &widget)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
        .expect("widget created");
    }

    /// The local copy of a consumer's widget, found by its identity labels.
    async fn local_copy(&self, cluster: &str, name: &str) -> DynamicObject {
        let key = identity::RemoteKey {
            cluster: cluster.into(),
            namespace: "apps".into(),
            name: name.into(),
        };
        let api: Api<DynamicObject> = Api::all_with(self.provider.service.clone(), &self.resource);
        let selector = key.selector(&self.provider.agent_name);
        poll_until(&format!("the local copy of {name}"), TIMEOUT, async || {
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            match list.items.as_slice() {
                [one] => Ok(one.clone()),
                other => Err(format!(
                    "{} copies; agent log:\n{}",
                    other.len(),
                    self.agent.log_tail()
                )),
            }
        })
        .await
        .expect("local copy")
    }

    fn local_api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.provider.service.clone(), namespace, &self.resource)
    }
}

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
    scene.create_widget(&first_client, "later", "three").await;
    let later = scene.local_copy(&first.cluster, "later").await;
    assert_eq!(
        later.name_any(),
        format!("later-{}", first.cluster),
        "the new naming rule applies"
    );
    let metrics = scene.agent.metrics().await.expect("metrics");
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
    for (namespace, name, sync) in [
        ("apps", "chosen", "yes"),
        ("apps", "ignored", "no"),
        ("other", "elsewhere", "yes"),
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
    tokio::time::sleep(Duration::from_secs(3)).await;
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
            if copy.is_none() && object.finalizers().is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "copy {}, finalizers {:?}",
                    copy.is_some(),
                    object.finalizers()
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

    widgets
        .delete("held", &DeleteParams::default())
        .await
        .expect("consumer deletes");
    tokio::time::sleep(Duration::from_secs(4)).await;
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

    let (consumer, client) = {
        let consumer = provider.bind_consumer("consumer").await.expect("consumer");
        let client = provider.kcp.client(&consumer.path).expect("client");
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some("apps".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("namespace");
        (consumer, client)
    };
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
async fn related_objects_travel_both_ways_and_kcp_origin_ones_are_released_on_deletion() {
    let scene = Scene::new(
        "related",
        json!({"related": [
            {"identifier": "credentials", "origin": "service", "kind": "Secret",
             "object": {"reference": {"path": "spec.secretName"}}},
            {"identifier": "settings", "origin": "kcp", "version": "v1", "resource": "configmaps",
             "object": {"reference": {"path": "spec.configName"}}}
        ]}),
    )
    .await;
    let (consumer, client) = scene.consumer("consumer").await;
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "apps");
    let settings: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings"}, "data": {"mode": "fast"}
    }))
    .expect("config map");
    config_maps
        .create(&PostParams::default(), &settings)
        .await
        .expect("consumer's config map");
    let mut widget = DynamicObject::new("db", &scene.resource).within("apps");
    widget.data =
        json!({"spec": {"color": "c", "secretName": "db-credentials", "configName": "settings"}});
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
    let local = scene.local_copy(&consumer.cluster, "db").await;
    let local_namespace = local.namespace().expect("namespaced copy");

    // kcp → service: the consumer's ConfigMap reaches the copy's namespace.
    let local_config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(scene.provider.service.clone(), &local_namespace);
    poll_until(
        "the consumer's config map on the service cluster",
        TIMEOUT,
        async || {
            let copy = local_config_maps
                .get_opt("settings")
                .await
                .map_err(|e| e.to_string())?;
            match copy.and_then(|c| c.data) {
                Some(data) if data.get("mode").map(String::as_str) == Some("fast") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("copied down");
    let origin = config_maps.get("settings").await.expect("origin");
    assert!(
        origin
            .finalizers()
            .contains(&"syncagent.kcp.io/cleanup".to_string())
    );

    // The provider's Secret does not exist yet: the consumer is told.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "apps");
    let waiting = poll_until(
        "RelatedResourceMissing on the consumer's object",
        TIMEOUT,
        async || {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=db"))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("RelatedResourceMissing"))
                .ok_or_else(|| "no event".to_string())
        },
    )
    .await
    .expect("event");
    assert!(waiting.message.unwrap_or_default().contains("credentials"));

    // service → kcp: the provider's Secret reaches the consumer.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "db-credentials"}, "stringData": {"password": "s3cret"}
    }))
    .expect("secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        scene.provider.service.clone(),
        &local_namespace,
    )
    .create(&PostParams::default(), &secret)
    .await
    .expect("provider's secret");
    let kcp_secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "apps");
    poll_until(
        "the provider's secret in the workspace",
        TIMEOUT,
        async || {
            let copy = kcp_secrets
                .get_opt("db-credentials")
                .await
                .map_err(|e| e.to_string())?;
            match copy
                .and_then(|s| s.data)
                .and_then(|d| d.get("password").cloned())
            {
                Some(password) if password.0 == b"s3cret" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("copied up");
    let primary = widgets.get("db").await.expect("primary");
    let announced = primary
        .annotations()
        .get("related-resources.syncagent.kcp.io/credentials.0")
        .cloned()
        .expect("the copy is announced on the primary");
    let announced: serde_json::Value = serde_json::from_str(&announced).expect("JSON");
    assert_eq!(
        announced,
        json!({"namespace": "apps", "name": "db-credentials", "apiVersion": "v1", "kind": "Secret"})
    );

    // Deleting the primary removes the kcp-origin copy and releases the origin.
    widgets
        .delete("db", &DeleteParams::default())
        .await
        .expect("consumer deletes");
    poll_until(
        "the primary, the config map copy and the finalizer to go",
        TIMEOUT,
        async || {
            let primary = widgets.get_opt("db").await.map_err(|e| e.to_string())?;
            let copy = local_config_maps
                .get_opt("settings")
                .await
                .map_err(|e| e.to_string())?;
            let origin = config_maps
                .get("settings")
                .await
                .map_err(|e| e.to_string())?;
            if primary.is_none() && copy.is_none() && origin.finalizers().is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "primary {}, copy {}, finalizers {:?}",
                    primary.is_some(),
                    copy.is_some(),
                    origin.finalizers()
                ))
            }
        },
    )
    .await
    .expect("deleted");
    assert!(
        kcp_secrets
            .get_opt("db-credentials")
            .await
            .expect("get")
            .is_some(),
        "without cleanup the provider's secret stays"
    );

    consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    scene.provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn related_objects_by_selector_array_reference_and_projection_with_cleanup() {
    let scene = Scene::with_agent_args(
        "relsel",
        json!({"related": [
            {"identifier": "by-selector", "origin": "service", "version": "v1", "resource": "configmaps",
             "object": {"selector": {"matchLabels": {"owner": "{{ .ClusterName }}"},
                                     "rewrite": {"template": {"template": "{{ .Value }}-copy"}}}}},
            {"identifier": "users", "origin": "kcp", "kind": "Secret",
             "object": {"reference": {"path": "spec.users.#.secret"}}},
            {"identifier": "ca", "origin": "service", "version": "v1", "resource": "configmaps",
             "projection": {"resource": "secrets"}, "cleanup": true,
             "object": {"template": {"template": "ca"},
                        "namespace": {"template": {"template": "{{ .ClusterName }}-ca"}}}},
            {"identifier": "shared", "origin": "service", "version": "v1", "resource": "configmaps",
             "object": {"template": {"template": "shared"},
                        "namespace": {"selector": {"matchLabels": {"tenant": "{{ .ClusterName }}"},
                                                   "rewrite": {"template": {"template": "apps"}}}}}}
        ]}),
        &["--per-agent-related-finalizer"],
    )
    .await;
    let provider = &scene.provider;
    let (consumer, client) = scene.consumer("consumer").await;
    let secrets = |c: &Client, ns: &str| -> Api<k8s_openapi::api::core::v1::Secret> {
        Api::namespaced(c.clone(), ns)
    };
    for name in ["u1", "u2"] {
        let secret = serde_json::from_value(
            json!({"metadata": {"name": name}, "stringData": {"user": name}}),
        )
        .expect("secret");
        secrets(&client, "apps")
            .create(&PostParams::default(), &secret)
            .await
            .expect("consumer's secret");
    }
    let mut widget = DynamicObject::new("db", &scene.resource).within("apps");
    widget.data = json!({"spec": {"color": "c", "users": [{"secret": "u1"}, {"secret": ""}, {"secret": "u2"}]}});
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
    let local = scene.local_copy(&consumer.cluster, "db").await;
    let local_ns = local.namespace().expect("namespaced");

    // Array reference: both consumer secrets reach the service cluster, the empty item is skipped.
    let wait_for_user = async |name: &str, value: &str| {
        poll_until(
            &format!("secret {name} on the service cluster"),
            TIMEOUT,
            async || {
                let copy = secrets(&provider.service, &local_ns)
                    .get_opt(name)
                    .await
                    .map_err(|e| e.to_string())?;
                match copy
                    .and_then(|s| s.data)
                    .and_then(|d| d.get("user").cloned())
                {
                    Some(v) if v.0 == value.as_bytes() => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    };
    wait_for_user("u1", "u1").await.expect("u1");
    wait_for_user("u2", "u2").await.expect("u2");
    let per_agent = format!("syncagent.kcp.io/cleanup-{}", provider.agent_name);
    let origin = secrets(&client, "apps").get("u1").await.expect("origin");
    assert!(
        origin.finalizers().contains(&per_agent),
        "{:?}",
        origin.finalizers()
    );

    // An edit on the origin side reaches the copy within seconds.
    secrets(&client, "apps")
        .patch(
            "u1",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"user": "changed"}})),
        )
        .await
        .expect("consumer edits");
    wait_for_user("u1", "changed")
        .await
        .expect("edit propagated");

    // Selector with a templated label: the provider's ConfigMap labelled for
    // this workspace reaches kcp under its rewritten name.
    let labelled: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "endpoint", "labels": {"owner": consumer.cluster}}, "data": {"url": "https://db"}
    }))
    .expect("config map");
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(provider.service.clone(), &local_ns)
        .create(&PostParams::default(), &labelled)
        .await
        .expect("provider's config map");
    let kcp_config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "apps");
    poll_until("the selected config map in kcp", TIMEOUT, async || {
        let copy = kcp_config_maps
            .get_opt("endpoint-copy")
            .await
            .map_err(|e| e.to_string())?;
        match copy.and_then(|c| c.data) {
            Some(data) if data.get("url").map(String::as_str) == Some("https://db") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("selected");

    // Projection ConfigMap → Secret, into a kcp namespace that does not exist yet.
    let ca_ns = format!("{}-ca", consumer.cluster);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ca_ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(provider.service.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("provider's ca namespace");
    let ca: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "ca"}, "data": {"ca.crt": "Q0E="}
    }))
    .expect("ca");
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(provider.service.clone(), &ca_ns)
        .create(&PostParams::default(), &ca)
        .await
        .expect("provider's ca");
    poll_until(
        "the ca as a Secret in a new kcp namespace",
        TIMEOUT,
        async || {
            let copy = secrets(&client, &ca_ns)
                .get_opt("ca")
                .await
                .map_err(|e| e.to_string())?;
            match copy
                .and_then(|s| s.data)
                .and_then(|d| d.get("ca.crt").cloned())
            {
                Some(v) if v.0 == b"CA" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("projected");

    // A namespace chosen by a templated label selector, renamed by its rewrite.
    let shared_ns = format!("{}-shared", consumer.cluster);
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(shared_ns.clone()),
            labels: Some([("tenant".to_string(), consumer.cluster.clone())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(provider.service.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("labelled namespace");
    let shared: k8s_openapi::api::core::v1::ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "shared"}, "data": {"k": "v"}}))
            .expect("config map");
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(provider.service.clone(), &shared_ns)
        .create(&PostParams::default(), &shared)
        .await
        .expect("provider's shared config map");
    poll_until(
        "the config map from the selected namespace in kcp",
        TIMEOUT,
        async || {
            let copy = kcp_config_maps
                .get_opt("shared")
                .await
                .map_err(|e| e.to_string())?;
            match copy.and_then(|c| c.data) {
                Some(data) if data.get("k").map(String::as_str) == Some("v") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("namespace selector");

    // Deleting the primary: kcp-origin copies go, origins are released, and
    // the ca copy goes too (cleanup: true); the selected copy stays.
    widgets
        .delete("db", &DeleteParams::default())
        .await
        .expect("consumer deletes");
    poll_until("cleanup after the primary", TIMEOUT, async || {
        let primary = widgets.get_opt("db").await.map_err(|e| e.to_string())?;
        let u1_copy = secrets(&provider.service, &local_ns)
            .get_opt("u1")
            .await
            .map_err(|e| e.to_string())?;
        let ca_copy = secrets(&client, &ca_ns)
            .get_opt("ca")
            .await
            .map_err(|e| e.to_string())?;
        let origin = secrets(&client, "apps")
            .get("u1")
            .await
            .map_err(|e| e.to_string())?;
        if primary.is_none()
            && u1_copy.is_none()
            && ca_copy.is_none()
            && origin.finalizers().is_empty()
        {
            Ok(())
        } else {
            Err(format!(
                "primary {} u1 copy {} ca copy {} finalizers {:?}",
                primary.is_some(),
                u1_copy.is_some(),
                ca_copy.is_some(),
                origin.finalizers()
            ))
        }
    })
    .await
    .expect("cleaned up");
    assert!(
        kcp_config_maps
            .get_opt("endpoint-copy")
            .await
            .expect("get")
            .is_some()
    );

    consumer.delete(&provider.kcp).await.expect("cleanup");
    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn related_status_is_copied_in_both_directions_only_when_asked() {
    let scene = Scene::new("relstatus", json!({})).await;
    let provider = &scene.provider;
    let group = provider.group.clone();
    provider
        .apply_crd("Cert", &[("v1", true, true)], "host")
        .await
        .expect("CRD");
    let certs_pr = provider
        .create_pr("certs", json!({"resource": {"apiGroup": group, "kind": "Cert"}, "synchronization": {"enabled": false}}))
        .await
        .expect("PR");
    provider
        .wait_for_schema_name(&certs_pr, None)
        .await
        .expect("schema");
    let widgets_pr = format!("{}-widgets", provider.agent_name);
    provider
        .prs()
        .patch(&widgets_pr, &PatchParams::default(), &Patch::Merge(json!({"spec": {"related": [
            {"identifier": "with-status", "origin": "service", "group": group, "version": "v1", "resource": "certs",
             "syncStatus": true, "watch": {"byOwner": {}}, "object": {"reference": {"path": "spec.certName"}}},
            {"identifier": "without-status", "origin": "service", "group": group, "version": "v1", "resource": "certs",
             "object": {"reference": {"path": "spec.otherCertName"}}},
            {"identifier": "from-consumer", "origin": "kcp", "group": group, "version": "v1", "resource": "certs",
             "syncStatus": true, "object": {"reference": {"path": "spec.consumerCertName"}}}
        ]}})))
        .await
        .expect("related added");
    provider
        .wait_for_export("both schemas", |e| {
            if e.spec.resources.len() == 2 {
                Ok(())
            } else {
                Err(format!("{}", e.spec.resources.len()))
            }
        })
        .await
        .expect("export");
    let (consumer, client) = scene.consumer("consumer").await;
    let mut widget = DynamicObject::new("site", &scene.resource).within("apps");
    widget.data = json!({"spec": {"color": "c", "certName": "tls", "otherCertName": "tls-other", "consumerCertName": "mine"}});
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
    let local = scene.local_copy(&consumer.cluster, "site").await;
    let local_ns = local.namespace().expect("namespaced");

    let cert_resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, "v1", "Cert"), "certs");
    let local_certs: Api<DynamicObject> =
        Api::namespaced_with(provider.service.clone(), &local_ns, &cert_resource);
    for name in ["tls", "tls-other"] {
        let mut cert = DynamicObject::new(name, &cert_resource).within(&local_ns);
        cert.data = json!({"spec": {"host": "db.example"}});
        local_certs
            .create(&PostParams::default(), &cert)
            .await
            .expect("provider's cert");
        local_certs
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"ready": true}})),
            )
            .await
            .expect("provider's status");
    }
    let kcp_certs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "apps", &cert_resource);
    poll_until("the cert with its status in kcp", TIMEOUT, async || {
        let copy = kcp_certs
            .get_opt("tls")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no copy")?;
        if copy.data["status"]["ready"] == true {
            Ok(())
        } else {
            Err(copy.data.to_string())
        }
    })
    .await
    .expect("status copied");
    let other = poll_until("the other cert in kcp", TIMEOUT, async || {
        kcp_certs
            .get_opt("tls-other")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no copy".to_string())
    })
    .await
    .expect("copied");
    assert_eq!(other.data["spec"]["host"], "db.example");
    assert!(
        other
            .data
            .get("status")
            .is_none_or(|s| s.get("ready").is_none()),
        "status is not copied by default"
    );

    // kcp → service: the consumer's own Cert and its status reach the copy.
    let consumer_certs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "apps", &cert_resource);
    let mut mine = DynamicObject::new("mine", &cert_resource).within("apps");
    mine.data = json!({"spec": {"host": "consumer.example"}});
    consumer_certs
        .create(&PostParams::default(), &mine)
        .await
        .expect("consumer's cert");
    consumer_certs
        .patch_status(
            "mine",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"approved": "yes"}})),
        )
        .await
        .expect("consumer's status");
    poll_until(
        "the consumer's cert with its status on the service cluster",
        TIMEOUT,
        async || {
            let copy = local_certs
                .get_opt("mine")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no copy")?;
            if copy.data["status"]["approved"] == "yes"
                && copy.data["spec"]["host"] == "consumer.example"
            {
                Ok(())
            } else {
                Err(copy.data.to_string())
            }
        },
    )
    .await
    .expect("status copied down");

    consumer.delete(&provider.kcp).await.expect("cleanup");
    provider.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_related_kind_from_another_export_is_claimed_with_its_identity_hash_and_synced() {
    // Another provider exports `Thing`; its export's identity hash names it.
    let other = Provider::new("foreignexp").await.expect("other provider");
    other
        .apply_crd("Thing", &[("v1", true, true)], "value")
        .await
        .expect("CRD");
    let schema_name = format!("v1.things.{}", other.group);
    let schema: sync_agent::api::kcp::apis_v1alpha1::APIResourceSchema = serde_json::from_value(json!({
        "apiVersion": "apis.kcp.io/v1alpha1", "kind": "APIResourceSchema",
        "metadata": {"name": schema_name},
        "spec": {"group": other.group, "scope": "Namespaced",
                 "names": {"plural": "things", "singular": "thing", "kind": "Thing", "listKind": "ThingList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}]}
    }))
    .expect("schema");
    Api::<sync_agent::api::kcp::apis_v1alpha1::APIResourceSchema>::all(other.kcp_client.clone())
        .create(&PostParams::default(), &schema)
        .await
        .expect("schema created");
    let mut export = other.export().await.expect("export");
    export.spec.resources =
        vec![serde_json::from_value(json!({
        "group": other.group, "name": "things", "schema": schema_name, "storage": {"crd": {}}
    }))
    .expect("resource")];
    Api::<sync_agent::api::kcp::apis_v1alpha2::APIExport>::all(other.kcp_client.clone())
        .replace(&other.export, &PostParams::default(), &export)
        .await
        .expect("export serves things");
    let identity_hash = other
        .wait_for_export("an identity hash", |e| {
            match e.status.as_ref().map(|s| s.identity_hash.clone()) {
                Some(hash) if !hash.is_empty() => Ok(()),
                _ => Err("none".into()),
            }
        })
        .await
        .expect("hash")
        .status
        .map(|s| s.identity_hash)
        .unwrap_or_default();

    let scene = Scene::new(
        "idhash",
        json!({"related": [{"identifier": "thing", "origin": "kcp", "group": other.group, "version": "v1",
                            "resource": "things", "identityHash": identity_hash,
                            "object": {"reference": {"path": "spec.thingName"}}}]}),
    )
    .await;
    let provider = &scene.provider;
    let claimed = provider.export().await.expect("export");
    assert!(
        claimed
            .spec
            .permission_claims
            .iter()
            .any(|c| c.resource == "things" && c.identity_hash == identity_hash),
        "the agent claims the foreign kind with its identity hash: {:?}",
        claimed.spec.permission_claims
    );

    let consumer = provider
        .kcp
        .create_workspace("root", "consumer")
        .await
        .expect("workspace");
    other
        .bind(&consumer)
        .await
        .expect("bound to the other export");
    provider
        .bind(&consumer)
        .await
        .expect("bound to the offering, claims accepted");
    let client = provider.kcp.client(&consumer.path).expect("client");
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some("apps".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");
    let thing_resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&other.group, "v1", "Thing"),
        "things",
    );
    let mut thing = DynamicObject::new("t1", &thing_resource).within("apps");
    thing.data = json!({"spec": {"value": "42"}});
    let things: Api<DynamicObject> = Api::namespaced_with(client.clone(), "apps", &thing_resource);
    poll_until("a thing", TIMEOUT, async || {
        things
            .create(&PostParams::default(), &thing)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("thing");
    let mut widget = DynamicObject::new("w", &scene.resource).within("apps");
    widget.data = json!({"spec": {"color": "c", "thingName": "t1"}});
    let widgets = scene.kcp_widgets(&client);
    poll_until("a widget", TIMEOUT, async || {
        widgets
            .create(&PostParams::default(), &widget)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("widget");
    let local = scene.local_copy(&consumer.cluster, "w").await;
    let local_things: Api<DynamicObject> = Api::namespaced_with(
        provider.service.clone(),
        &local.namespace().expect("ns"),
        &thing_resource,
    );
    poll_until(
        "the foreign thing on the service cluster",
        TIMEOUT,
        async || {
            let copy = local_things
                .get_opt("t1")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no copy")?;
            if copy.data["spec"]["value"] == "42" {
                Ok(())
            } else {
                Err(copy.data.to_string())
            }
        },
    )
    .await
    .expect("synced");

    consumer.delete(&provider.kcp).await.expect("cleanup");
    provider.cleanup().await.expect("cleanup");
    other.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_watched_related_object_wakes_its_primary_at_once() {
    let scene = Scene::new(
        "relwatch",
        json!({"related": [{"identifier": "endpoint", "origin": "service", "version": "v1", "resource": "configmaps",
                            "watch": {"byOwner": {}}, "object": {"reference": {"path": "spec.configName"}}}]}),
    )
    .await;
    let provider = &scene.provider;
    let (consumer, client) = scene.consumer("consumer").await;
    let mut widget = DynamicObject::new("w", &scene.resource).within("apps");
    widget.data = json!({"spec": {"color": "c", "configName": "endpoint"}});
    let widgets = scene.kcp_widgets(&client);
    poll_until("a widget", TIMEOUT, async || {
        widgets
            .create(&PostParams::default(), &widget)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("widget");
    let local = scene.local_copy(&consumer.cluster, "w").await;
    let local_ns = local.namespace().expect("ns");
    let owned: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "endpoint", "ownerReferences": [{
            "apiVersion": format!("{}/v1", provider.group), "kind": "Widget",
            "name": local.name_any(), "uid": local.uid().expect("uid")}]},
        "data": {"url": "one"}
    }))
    .expect("config map");
    let local_config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(provider.service.clone(), &local_ns);
    local_config_maps
        .create(&PostParams::default(), &owned)
        .await
        .expect("provider's config map");
    let kcp_config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "apps");
    let url = async |expected: &str| {
        poll_until(
            &format!("url {expected} in kcp"),
            Duration::from_secs(15),
            async || {
                let copy = kcp_config_maps
                    .get_opt("endpoint")
                    .await
                    .map_err(|e| e.to_string())?;
                match copy
                    .and_then(|c| c.data)
                    .and_then(|d| d.get("url").cloned())
                {
                    Some(url) if url == expected => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    };
    url("one").await.expect("copied");
    // With every related resource watched, the agent only re-examines the
    // primary once a minute; the watch must bring the edit much sooner.
    local_config_maps
        .patch(
            "endpoint",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"url": "two"}})),
        )
        .await
        .expect("provider edits");
    url("two")
        .await
        .expect("the edit arrived through the watch");

    consumer.delete(&provider.kcp).await.expect("cleanup");
    provider.cleanup().await.expect("cleanup");
}

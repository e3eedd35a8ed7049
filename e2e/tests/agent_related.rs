//! Related resources on the real servers: objects that travel with a synced
//! object, from the service cluster to the consumer's workspace and back.

use std::time::Duration;

use e2e::poll::poll_until;
use e2e::publishing::Provider;
use e2e::scene::{Scene, TIMEOUT};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde_json::json;

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
    // A Secret's copy keeps no last-known state: its values would show in an
    // annotation.
    let copy = kcp_secrets.get("db-credentials").await.expect("copy");
    assert!(
        !copy
            .annotations()
            .contains_key("syncagent.kcp.io/last-known-state"),
        "{:?}",
        copy.annotations()
    );
    // The primary's announcement is written after the copy: wait for it.
    let announced = poll_until("the copy announced on the primary", TIMEOUT, async || {
        let primary = widgets.get("db").await.map_err(|e| e.to_string())?;
        primary
            .annotations()
            .get("related-resources.syncagent.kcp.io/credentials.0")
            .cloned()
            .ok_or_else(|| format!("annotations {:?}", primary.annotations()))
    })
    .await
    .expect("announced");
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
    e2e::publishing::create_apps_namespace(&client)
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
            // Within the 60 s a missing related object waits, so only the
            // watch can have brought it; loose enough for a loaded machine.
            Duration::from_secs(40),
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

/// The data of a ConfigMap, or an empty map.
fn config_data(
    config_map: &k8s_openapi::api::core::v1::ConfigMap,
) -> std::collections::BTreeMap<String, String> {
    config_map.data.clone().unwrap_or_default()
}

#[tokio::test]
async fn related_copies_keep_provider_fields_follow_consumer_edits_and_do_not_loop() {
    use e2e::service::{patch_params, post_params};
    use k8s_openapi::api::core::v1::ConfigMap;

    let scene = Scene::new(
        "relstate",
        json!({"related": [
            {"identifier": "settings", "origin": "kcp", "version": "v1", "resource": "configmaps",
             "object": {"reference": {"path": "spec.configName"}}},
            {"identifier": "sentinel", "origin": "kcp", "version": "v1", "resource": "configmaps",
             "object": {"reference": {"path": "spec.sentinelName"}}}
        ]}),
    )
    .await;
    let (consumer, client) = scene.consumer("consumer").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "apps");
    for (name, data) in [
        ("settings", json!({"mode": "fast", "size": "s"})),
        ("sentinel", json!({"round": "0"})),
    ] {
        let object: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": data}))
                .expect("config map");
        config_maps
            .create(&post_params(), &object)
            .await
            .expect("consumer's config map");
    }
    let mut widget = DynamicObject::new("db", &scene.resource).within("apps");
    widget.data =
        json!({"spec": {"color": "c", "configName": "settings", "sentinelName": "sentinel"}});
    let widgets = scene.kcp_widgets(&client);
    poll_until("a widget", TIMEOUT, async || {
        widgets
            .create(&post_params(), &widget)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("created");
    let local = scene.local_copy(&consumer.cluster, "db").await;
    let local_namespace = local.namespace().expect("namespaced copy");
    let copies: Api<ConfigMap> = Api::namespaced(scene.provider.service.clone(), &local_namespace);
    let copy_where = async |name: &str, what: &str, wanted: &dyn Fn(&ConfigMap) -> bool| {
        poll_until(what, TIMEOUT, async || {
            match copies.get_opt(name).await.map_err(|e| e.to_string())? {
                Some(copy) if wanted(&copy) => Ok(copy),
                other => Err(format!("{:?}", other.map(|c| config_data(&c)))),
            }
        })
        .await
        .expect(what)
    };
    copy_where("settings", "the settings copy", &|c| {
        config_data(c).get("mode").map(String::as_str) == Some("fast")
    })
    .await;

    // The provider adds a key and a label to the copy on its side.
    copies
        .patch(
            "settings",
            &patch_params(),
            &Patch::Merge(json!({"metadata": {"labels": {"provider": "yes"}},
                                 "data": {"provider-key": "kept"}})),
        )
        .await
        .expect("provider edits the copy");

    // The consumer changes a key and removes another; both reach the copy.
    config_maps
        .patch(
            "settings",
            &patch_params(),
            &Patch::Merge(json!({"data": {"mode": "slow", "size": null}})),
        )
        .await
        .expect("consumer edits");
    let arrived = copy_where("settings", "the consumer's edit on the copy", &|c| {
        let data = config_data(c);
        data.get("mode").map(String::as_str) == Some("slow") && !data.contains_key("size")
    })
    .await;
    // What the provider added survived the sync that brought the edit.
    assert_eq!(
        config_data(&arrived)
            .get("provider-key")
            .map(String::as_str),
        Some("kept"),
        "the provider's key is kept: {:?}",
        config_data(&arrived)
    );
    assert_eq!(
        arrived.labels().get("provider").map(String::as_str),
        Some("yes")
    );

    // No write loop: once the edit arrived, the copy is not written again.
    // The sentinel (another related object of the same primary, synced in
    // the same reconciles, after this one) proves that the agent synced the
    // primary again meanwhile.
    let version = arrived.resource_version().expect("version");
    for round in ["1", "2"] {
        config_maps
            .patch(
                "sentinel",
                &patch_params(),
                &Patch::Merge(json!({"data": {"round": round}})),
            )
            .await
            .expect("consumer edits the sentinel");
        copy_where("sentinel", "the sentinel on the service cluster", &|c| {
            config_data(c).get("round").map(String::as_str) == Some(round)
        })
        .await;
    }
    let settled = copies.get("settings").await.expect("settings copy");
    assert_eq!(
        settled.resource_version().as_deref(),
        Some(version.as_str()),
        "the settings copy was written again without a change: {:?}",
        settled.metadata.managed_fields
    );
    assert_eq!(
        config_data(&settled)
            .get("provider-key")
            .map(String::as_str),
        Some("kept")
    );

    consumer.delete(&scene.provider.kcp).await.expect("cleanup");
    scene.provider.cleanup().await.expect("cleanup");
}

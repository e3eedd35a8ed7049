//! The operator's full flow on the real servers: one PublishedOffering
//! provisions kcp, the service cluster, the agent and consumer bindings;
//! the agent runs from the Deployment the operator wrote.

use std::time::Duration;

use e2e::offering::{OfferingScene, TIMEOUT};
use e2e::poll::{KCP_SLOW_TIMEOUT, poll_until};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config, ResourceExt};
use offering_operator::names::OWNER_ANNOTATION;
use serde_json::{Map, Value, json};
use sync_agent::api::kcp::apis_v1alpha2::{APIBinding, APIExport};
use sync_agent::api::kcp::core_v1alpha1::LogicalCluster;
use sync_agent::api::kcp::tenancy_v1alpha1::Workspace;
use sync_agent::api::published_resource::PublishedResource;

/// The PublishedResource `name` as `kubectl get` shows it: the API
/// server's table, each cell by its column's name.
async fn table_row(service: &Client, name: &str) -> Result<Map<String, Value>, String> {
    let request = http::Request::get(format!(
        "/apis/syncagent.kcp.io/v1alpha1/publishedresources/{name}"
    ))
    .header(
        http::header::ACCEPT,
        "application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    .body(Vec::new())
    .map_err(|e| e.to_string())?;
    let table: Value = service.request(request).await.map_err(|e| e.to_string())?;
    let columns = table["columnDefinitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cells = table["rows"][0]["cells"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(columns
        .iter()
        .zip(cells)
        .map(|(column, cell)| {
            (
                column["name"].as_str().unwrap_or_default().to_string(),
                cell,
            )
        })
        .collect())
}

/// A kcp client for `path` authenticated with `token` only.
fn client_with_token(scene: &OfferingScene, path: &str, token: &str) -> Client {
    let mut config: Config = scene
        .provider
        .kcp
        .config_at(&format!("{}/clusters/{path}", scene.provider.kcp.url()))
        .expect("config");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn one_offering_provisions_everything_and_a_consumer_object_round_trips() {
    // Resync only after an hour: a workspace selected later must be bound
    // because the operator watches the selector's parent.
    let scene = OfferingScene::new("op-flow", &["--resync-interval=1h"])
        .await
        .expect("scene");
    let kcp = &scene.provider.kcp;
    let listed = kcp
        .create_workspace("root", "op-listed")
        .await
        .expect("listed");
    let parent = kcp
        .create_workspace("root", "op-parent")
        .await
        .expect("parent");
    let selected = kcp
        .create_workspace(&parent.path, "gold")
        .await
        .expect("selected");
    let unselected = kcp
        .create_workspace(&parent.path, "plain")
        .await
        .expect("unselected");
    let children: Api<Workspace> = Api::all(kcp.client(&parent.path).unwrap());
    children
        .patch(
            &selected.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "gold"}}})),
        )
        .await
        .expect("label the selected workspace");

    scene
        .apply(
            "widgets",
            scene.spec(json!({
                "agent": {"replicas": 1},
                "consumers": {
                    "workspaces": [listed.path],
                    "selector": {"parent": parent.path, "labelSelector": {"matchLabels": {"tier": "gold"}}},
                },
            })),
        )
        .await
        .expect("offering");

    // kcp: export, the agent's identity and RBAC.
    let provider_kcp = scene.provider.kcp_client.clone();
    let export = poll_until("the APIExport", TIMEOUT, async || {
        Api::<APIExport>::all(provider_kcp.clone())
            .get("widgets")
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("export");
    assert_eq!(
        export
            .annotations()
            .get(OWNER_ANNOTATION)
            .map(String::as_str),
        Some(format!("{}/widgets", scene.provider.namespace).as_str())
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(provider_kcp.clone(), "sync-agents");
    accounts
        .get("sync-agent-widgets")
        .await
        .expect("kcp ServiceAccount");
    let role = Api::<ClusterRole>::all(provider_kcp.clone())
        .get("syncagent:widgets")
        .await
        .expect("kcp ClusterRole");
    assert!(
        role.rules
            .unwrap()
            .iter()
            .any(|r| r.resources.as_deref() == Some(&["apiexports/content".to_string()][..]))
    );
    for binding in [
        "syncagent:widgets",
        "syncagent:widgets:access",
        "syncagent:widgets:bind",
    ] {
        Api::<ClusterRoleBinding>::all(provider_kcp.clone())
            .get(binding)
            .await
            .unwrap_or_else(|e| panic!("kcp ClusterRoleBinding {binding}: {e}"));
    }

    // Service cluster: Secret, identity, RBAC, PublishedResource, Deployment, Service.
    let service = scene.provider.service.clone();
    let ns = scene.provider.namespace.as_str();
    let secret = poll_until("the agent's kcp Secret", TIMEOUT, async || {
        Api::<Secret>::namespaced(service.clone(), ns)
            .get("widgets-kcp-kubeconfig")
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("secret");
    // The metrics Service is the last service-cluster object a reconcile
    // writes: once it is there, so is everything before it.
    poll_until("the agent's metrics Service", TIMEOUT, async || {
        Api::<Service>::namespaced(service.clone(), ns)
            .get("widgets-sync-agent-metrics")
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("metrics Service");
    let data = secret.data.clone().unwrap();
    let token = String::from_utf8(data["token"].0.clone()).unwrap();
    assert!(String::from_utf8_lossy(&data["kubeconfig"].0).contains("tokenFile"));
    Api::<ServiceAccount>::namespaced(service.clone(), ns)
        .get("widgets-sync-agent")
        .await
        .expect("service ServiceAccount");
    Api::<Role>::namespaced(service.clone(), ns)
        .get("widgets-sync-agent")
        .await
        .expect("Role for the Lease");
    Api::<ClusterRole>::all(service.clone())
        .get(&format!("offering.syncagent.dev:{ns}:widgets"))
        .await
        .expect("service ClusterRole");
    let published = Api::<PublishedResource>::all(service.clone())
        .get(&format!("{ns}.widgets.widgets"))
        .await
        .expect("PublishedResource");
    assert_eq!(published.spec.resource.kind, "Widget");
    let deployment = Api::<Deployment>::namespaced(service.clone(), ns)
        .get("widgets-sync-agent")
        .await
        .expect("Deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("example.invalid/sync-agent:e2e")
    );

    // The agent runs from that Deployment, with the minted credentials only.
    let agent = scene.run_agent("widgets").await.expect("agent runs");
    let offering = scene
        .wait_for_condition("widgets", "Ready", "True", "Ready")
        .await
        .expect("ready");
    let status = offering.status.unwrap();
    let export_status = status.export.unwrap();
    assert_eq!(
        export_status.logical_cluster.as_deref(),
        Some(scene.provider.workspace.cluster.as_str())
    );
    assert!(export_status.identity_hash.is_some_and(|h| h.len() == 64));
    // kcp lists the endpoints after the first binding, perhaps after Ready.
    poll_until(
        "the endpoint URLs in the status",
        KCP_SLOW_TIMEOUT,
        async || {
            let offering = scene
                .offerings()
                .get("widgets")
                .await
                .map_err(|e| e.to_string())?;
            let urls = offering
                .status
                .and_then(|s| s.export)
                .map(|e| e.endpoint_urls)
                .unwrap_or_default();
            if urls.is_empty() {
                Err("no endpoint URLs".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await
    .expect("endpoint URLs");
    let consumers = status.consumers.unwrap();
    assert_eq!((consumers.bound, consumers.failed), (2, 0));

    // The status names the pod whose agent holds the Lease, the one that syncs.
    let pod_name = agent
        .process
        .log
        .file_stem()
        .and_then(|stem| stem.to_str()?.strip_prefix(&format!("pod-{ns}-")))
        .expect("the pod's name in its log's name")
        .to_string();
    let lease = Api::<Lease>::namespaced(service.clone(), ns)
        .get(&format!("syncagent.{ns}-widgets"))
        .await
        .expect("the agent's Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        Some(format!("{pod_name}-{}", agent.process.pid()))
    );
    poll_until("the leading pod in the status", TIMEOUT, async || {
        let offering = scene
            .offerings()
            .get("widgets")
            .await
            .map_err(|e| e.to_string())?;
        match offering.status.and_then(|s| s.agent_leader) {
            Some(leader) if leader == pod_name => Ok(()),
            other => Err(format!("agentLeader {other:?}, not {pod_name}")),
        }
    })
    .await
    .expect("the leader named");

    // `kubectl get publishedresources` shows the schema and that it syncs.
    let row = poll_until("the PublishedResource's columns", TIMEOUT, async || {
        let row = table_row(&service, &format!("{ns}.widgets.widgets")).await?;
        match row.get("Synced").and_then(|s| s.as_str()) {
            Some("True") => Ok(row),
            _ => Err(format!("{row:?}")),
        }
    })
    .await
    .expect("columns");
    assert_eq!(row["Published"], "True", "{row:?}");
    assert!(row["Reason"].is_null(), "no condition fails: {row:?}");
    let schema = Api::<PublishedResource>::all(service.clone())
        .get(&format!("{ns}.widgets.widgets"))
        .await
        .expect("PublishedResource")
        .status
        .and_then(|s| s.resource_schema_name)
        .expect("a schema name");
    assert_eq!(row["Schema"], schema.as_str(), "{row:?}");
    let metrics = scene
        .operator
        .process
        .metrics()
        .await
        .expect("operator metrics");
    assert!(
        metrics.contains(
            r#"controller_runtime_reconcile_total{controller="publishedoffering",result="success"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("offering_operator_agent_tokens_issued_total 1"),
        "{metrics}"
    );

    // Bindings: listed and selected, not the unselected child.
    for path in [&listed.path, &selected.path] {
        let binding = Api::<APIBinding>::all(kcp.client(path).unwrap())
            .get("widgets")
            .await
            .unwrap_or_else(|e| panic!("binding in {path}: {e}"));
        assert_eq!(binding.status.unwrap().phase, "Bound", "{path}");
    }
    let none = Api::<APIBinding>::all(kcp.client(&unselected.path).unwrap())
        .get_opt("widgets")
        .await
        .unwrap();
    assert!(none.is_none(), "the unselected workspace got a binding");

    // A workspace selected later is bound long before the resync: the
    // operator watches the parent's children.
    let late = kcp
        .create_workspace(&parent.path, "gold-late")
        .await
        .expect("a later workspace");
    children
        .patch(
            &late.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "gold"}}})),
        )
        .await
        .expect("label the later workspace");
    let late_bindings = Api::<APIBinding>::all(kcp.client(&late.path).unwrap());
    poll_until("the later workspace bound", KCP_SLOW_TIMEOUT, async || {
        let binding = late_bindings
            .get_opt("widgets")
            .await
            .map_err(|e| e.to_string())?;
        match binding.and_then(|b| b.status).map(|s| s.phase) {
            Some(phase) if phase == "Bound" => Ok(()),
            other => Err(format!("binding phase {other:?}")),
        }
    })
    .await
    .expect("bound without a resync");
    poll_until("three consumers counted", KCP_SLOW_TIMEOUT, async || {
        let offering = scene
            .offerings()
            .get("widgets")
            .await
            .map_err(|e| e.to_string())?;
        match offering.status.and_then(|s| s.consumers) {
            Some(c) if c.bound == 3 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("counted");

    // A consumer object arrives on the service cluster, its status comes back.
    let widgets = scene
        .consumer_widget(&listed.path, "w1")
        .await
        .expect("widget");
    let copy = poll_until("the copy of w1", KCP_SLOW_TIMEOUT, async || {
        match scene
            .copies_from(&listed.cluster)
            .await
            .map_err(|e| e.to_string())?
            .as_slice()
        {
            [one] => Ok(one.clone()),
            other => Err(format!(
                "{} copies; agent log:\n{}",
                other.len(),
                agent.process.log_tail()
            )),
        }
    })
    .await
    .expect("copy");
    let local: Api<kube::api::DynamicObject> = Api::namespaced_with(
        service.clone(),
        &copy.namespace().unwrap(),
        &scene.widgets(),
    );
    local
        .patch_status(
            &copy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Provisioned"}})),
        )
        .await
        .expect("status on the copy");
    poll_until("the status in kcp", TIMEOUT, async || {
        let widget = widgets.get("w1").await.map_err(|e| e.to_string())?;
        match widget.data["status"]["phase"].as_str() {
            Some("Provisioned") => Ok(()),
            other => Err(format!("phase {other:?}")),
        }
    })
    .await
    .expect("status synced back");

    // The minted identity works where it was given access, nowhere else.
    let own = client_with_token(&scene, &scene.provider.workspace.path, &token);
    Api::<APIExport>::all(own)
        .get("widgets")
        .await
        .expect("the agent's token reads its export");
    // A workspace the agent was never given. (Not a bound consumer: kcp
    // v0.30 caches the token's user for a few seconds after the agent used
    // it through the virtual workspace, with that request's warrants for
    // the consumer attached, so a direct request into a bound consumer
    // right after a sync can pass.)
    let foreign = client_with_token(&scene, &unselected.path, &token);
    let refused = Api::<LogicalCluster>::all(foreign).get("cluster").await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403),
        "the agent's token entered a workspace it was not given: {refused:?}"
    );
}

/// An offering blocked by a foreign object it would write leaves nothing
/// behind: no kcp token is minted, no kubeconfig Secret written, nothing
/// created in kcp (every ownership check comes before the first write);
/// once the object is gone, the offering proceeds.
#[tokio::test]
async fn an_offering_blocked_by_a_foreign_object_mints_and_writes_nothing() {
    let scene = OfferingScene::new("op-blocked", &[]).await.expect("scene");
    let service = scene.provider.service.clone();
    let ns = scene.provider.namespace.as_str();
    // Someone's Role of the name the offering's agent would get; the
    // operator writes that Role after minting the agent's token.
    let roles: Api<Role> = Api::namespaced(service.clone(), ns);
    let squatter: Role =
        serde_json::from_value(json!({"metadata": {"name": "blocked-sync-agent"}})).unwrap();
    roles
        .create(&PostParams::default(), &squatter)
        .await
        .expect("someone's Role");
    scene
        .apply("blocked", scene.spec(json!({"agent": {"replicas": 1}})))
        .await
        .expect("offering");
    let offering = scene
        .wait_for_condition("blocked", "Ready", "False", "ObjectConflict")
        .await
        .expect("the conflict is reported");
    let message = &offering.status.unwrap().conditions[0].message;
    assert!(message.contains("Role blocked-sync-agent"), "{message}");

    let secrets: Api<Secret> = Api::namespaced(service.clone(), ns);
    assert!(
        secrets
            .get_opt("blocked-kcp-kubeconfig")
            .await
            .unwrap()
            .is_none(),
        "a blocked offering got its kubeconfig Secret"
    );
    let kcp_accounts: Api<ServiceAccount> =
        Api::namespaced(scene.provider.kcp_client.clone(), "sync-agents");
    assert!(
        kcp_accounts
            .get_opt("sync-agent-blocked")
            .await
            .unwrap()
            .is_none(),
        "a blocked offering got an identity in kcp"
    );
    let metrics = scene
        .operator
        .process
        .metrics()
        .await
        .expect("operator metrics");
    assert!(
        metrics.contains("offering_operator_agent_tokens_issued_total 0"),
        "{metrics}"
    );
    let untouched = roles.get("blocked-sync-agent").await.expect("the Role");
    assert!(untouched.labels().is_empty(), "{:?}", untouched.metadata);

    roles
        .delete("blocked-sync-agent", &Default::default())
        .await
        .expect("remove the Role");
    poll_until("the agent's kcp Secret", TIMEOUT, async || {
        secrets
            .get("blocked-kcp-kubeconfig")
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("the offering proceeds once the Role is gone");
}

/// A new offering waiting for its agent announces that with Normal
/// events: waiting for what time resolves is progress, not a warning.
#[tokio::test]
async fn waiting_for_the_agent_is_announced_as_normal_not_as_a_warning() {
    let scene = OfferingScene::new("op-waiting", &[]).await.expect("scene");
    scene
        .apply("patient", scene.spec(json!({"agent": {"replicas": 1}})))
        .await
        .expect("offering");
    scene
        .wait_for_condition("patient", "Ready", "False", "WaitingForAgent")
        .await
        .expect("the offering waits for its agent");
    let events: Api<Event> =
        Api::namespaced(scene.provider.service.clone(), &scene.provider.namespace);
    let about_patient = |list: Vec<Event>| -> Vec<Event> {
        list.into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("patient"))
            .collect()
    };
    // The Normal event is the sentinel: once it is there, so is any
    // event raised before it.
    let seen = poll_until("a Normal WaitingForAgent event", TIMEOUT, async || {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let seen = about_patient(list.items);
        match seen.iter().any(|e| {
            e.type_.as_deref() == Some("Normal") && e.reason.as_deref() == Some("WaitingForAgent")
        }) {
            true => Ok(seen),
            false => Err(format!(
                "events {:?}",
                seen.iter()
                    .map(|e| (e.type_.clone(), e.reason.clone()))
                    .collect::<Vec<_>>()
            )),
        }
    })
    .await
    .expect("the wait is announced");
    let warnings: Vec<_> = seen
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.clone(), e.note.clone()))
        .collect();
    assert!(warnings.is_empty(), "warnings while waiting: {warnings:?}");
}

/// What an offering no longer asks for goes: a dropped related kind
/// leaves the agent's ClusterRole, and with no bind groups the kcp
/// binding that let consumers bind the export is deleted.
#[tokio::test]
async fn what_an_offering_drops_is_no_longer_granted() {
    let scene = OfferingScene::new("op-trim", &[]).await.expect("scene");
    let ns = scene.provider.namespace.clone();
    let group = scene.provider.group.clone();
    let role_name = format!("offering.syncagent.dev:{ns}:trim");
    let roles: Api<ClusterRole> = Api::all(scene.provider.service.clone());
    let kcp_bindings: Api<ClusterRoleBinding> = Api::all(scene.provider.kcp_client.clone());
    let grants_secrets = async || -> Result<bool, String> {
        let role = roles.get(&role_name).await.map_err(|e| e.to_string())?;
        Ok(role
            .rules
            .unwrap_or_default()
            .iter()
            .any(|r| r.resources.as_deref() == Some(&["secrets".to_string()][..])))
    };
    let related = json!([{"identifier": "creds", "origin": "kcp", "kind": "Secret",
                          "object": {"reference": {"path": "spec.secretName"}}}]);
    scene
        .apply(
            "trim",
            scene.spec(json!({
                "agent": {"replicas": 1},
                "resources": [{"name": "widgets", "resource": {"apiGroup": group, "kind": "Widget"}, "related": related}],
            })),
        )
        .await
        .expect("offering");
    poll_until(
        "the grant on Secrets and the bind binding",
        TIMEOUT,
        async || {
            if !grants_secrets().await? {
                return Err("no rule for secrets yet".into());
            }
            kcp_bindings
                .get("syncagent:trim:bind")
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await
    .expect("granted");

    scene
        .apply(
            "trim",
            scene.spec(json!({"agent": {"replicas": 1}, "export": {"bindGroups": []}})),
        )
        .await
        .expect("trimmed offering");
    poll_until(
        "the grant on Secrets and the bind binding to go",
        TIMEOUT,
        async || {
            if grants_secrets().await? {
                return Err("the ClusterRole still grants secrets".into());
            }
            match kcp_bindings
                .get_opt("syncagent:trim:bind")
                .await
                .map_err(|e| e.to_string())?
            {
                Some(_) => Err("the bind binding is still there".into()),
                None => Ok(()),
            }
        },
    )
    .await
    .expect("no longer granted");
    kcp_bindings
        .get("syncagent:trim")
        .await
        .expect("the agent's own binding stays");
}

/// The agent's options of an offering reach the Deployment and the running
/// agent; with a standby the agent pods keep a PodDisruptionBudget, which
/// goes with the standby.
#[tokio::test]
async fn the_agent_options_of_an_offering_reach_the_agent_and_a_standby_keeps_a_budget() {
    let scene = OfferingScene::new("op-agent", &[]).await.expect("scene");
    let service = scene.provider.service.clone();
    let ns = scene.provider.namespace.clone();
    Api::<Secret>::namespaced(service.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "extra-ca"},
                "stringData": {"ca.crt": "extra"},
            }))
            .unwrap(),
        )
        .await
        .expect("extra Secret");
    let agent = json!({
        "waitForForeignFinalizers": true,
        "perAgentRelatedFinalizer": true,
        "disabledControllers": ["apiresourceschema"],
        "env": [{"name": "RUST_LOG", "value": "debug"}],
        "volumes": [{"name": "extra-ca", "secret": {"secretName": "extra-ca"}}],
        "volumeMounts": [{"name": "extra-ca", "mountPath": "/etc/extra-ca", "readOnly": true}],
    });
    scene
        .apply("opts", scene.spec(json!({"agent": agent})))
        .await
        .expect("offering");
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(service.clone(), &ns);
    let budget = poll_until("the agent's PodDisruptionBudget", TIMEOUT, async || {
        budgets
            .get("opts-sync-agent")
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("budget");
    assert_eq!(
        budget.spec.unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    let deployment = Api::<Deployment>::namespaced(service.clone(), &ns)
        .get("opts-sync-agent")
        .await
        .expect("Deployment");
    let container = deployment.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let args = container.args.unwrap_or_default();
    for flag in [
        "--wait-for-foreign-finalizers",
        "--per-agent-related-finalizer",
        "--disabled-controllers=apiresourceschema",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
    }

    // The agent accepts the flags, gets the env (its log turns to debug)
    // and the extra volume.
    let pod = scene.run_agent("opts").await.expect("agent runs");
    let mounted = pod.mounts.get("/etc/extra-ca").expect("the extra mount");
    assert_eq!(
        std::fs::read_to_string(mounted.join("ca.crt")).unwrap(),
        "extra"
    );
    poll_until("debug lines in the agent's log", TIMEOUT, async || {
        if pod.process.log_tail().contains(r#""level":"debug""#) {
            Ok(())
        } else {
            Err(pod.process.log_tail())
        }
    })
    .await
    .expect("RUST_LOG reached the agent");
    // The APIExport controller reconciles after the schema controller
    // would have (it waits for changes to settle): once it has, the
    // disabled one would show.
    let metrics = poll_until(
        "the APIExport controller to reconcile",
        TIMEOUT,
        async || {
            let metrics = pod.process.metrics().await?;
            if metrics.contains(r#"controller_runtime_reconcile_total{controller="apiexport""#) {
                Ok(metrics)
            } else {
                Err("no apiexport reconcile yet".to_string())
            }
        },
    )
    .await
    .expect("apiexport reconciled");
    assert!(
        !metrics.contains(r#"controller="apiresourceschema""#),
        "a disabled controller reconciled: {metrics}"
    );

    // One replica: no standby, no budget; two again: the budget is back.
    for (replicas, wanted) in [(1, false), (2, true)] {
        scene
            .apply("opts", scene.spec(json!({"agent": {"replicas": replicas}})))
            .await
            .expect("offering");
        poll_until(
            &format!("the budget with {replicas} replicas"),
            TIMEOUT,
            async || match budgets
                .get_opt("opts-sync-agent")
                .await
                .map_err(|e| e.to_string())?
            {
                Some(_) if wanted => Ok(()),
                None if !wanted => Ok(()),
                found => Err(format!("budget present: {}", found.is_some())),
            },
        )
        .await
        .expect("budget follows the replicas");
    }
}

/// The pod fields of an offering's agent reach its Deployment as the
/// kube-apiserver validates and stores it; a security-context key the
/// offering sets to `null` is kept as `null` in the offering and is absent
/// from the Deployment, and comes back once the offering no longer removes
/// it.
#[tokio::test]
async fn the_agent_pod_fields_of_an_offering_reach_its_deployment_and_null_removes_a_default() {
    let scene = OfferingScene::new("op-pod", &[]).await.expect("scene");
    let service = scene.provider.service.clone();
    let ns = scene.provider.namespace.clone();
    let agent = json!({
        "replicas": 1,
        "priorityClassName": "agents-critical",
        "topologySpreadConstraints": [{
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"offering.syncagent.dev/name": "pods"}},
        }],
        "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["kcp.internal"]}],
        "initContainers": [{"name": "wait", "image": "busybox", "command": ["true"]}],
        "strategy": {"type": "Recreate"},
        "revisionHistoryLimit": 2,
        "podSecurityContext": {"fsGroup": 2000},
        "securityContext": {"runAsUser": null, "runAsGroup": null},
    });
    let _agent = scene
        .publish("pods", json!({"agent": agent}))
        .await
        .expect("Ready with the pod fields");

    let stored = scene.offerings().get("pods").await.expect("offering");
    assert_eq!(
        serde_json::to_value(&stored.spec.agent.unwrap().security_context).unwrap(),
        json!({"runAsUser": null, "runAsGroup": null}),
        "the server keeps the nulls"
    );
    let deployments: Api<Deployment> = Api::namespaced(service.clone(), &ns);
    let spec = deployments
        .get("pods-sync-agent")
        .await
        .expect("Deployment")
        .spec
        .unwrap();
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
    assert_eq!(spec.revision_history_limit, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.priority_class_name.as_deref(), Some("agents-critical"));
    let spread = pod.topology_spread_constraints.unwrap_or_default();
    assert_eq!(spread.len(), 1, "{spread:?}");
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
    let aliases = pod.host_aliases.unwrap_or_default();
    assert_eq!(aliases.len(), 1, "{aliases:?}");
    assert_eq!(aliases[0].ip, "10.1.2.3");
    assert_eq!(
        aliases[0].hostnames.as_deref(),
        Some(&["kcp.internal".to_string()][..])
    );
    let init = pod.init_containers.unwrap_or_default();
    assert_eq!(init.len(), 1, "{init:?}");
    assert_eq!(init[0].name, "wait");
    let pod_security = pod.security_context.unwrap();
    assert_eq!(pod_security.fs_group, Some(2000));
    assert_eq!(pod_security.run_as_non_root, Some(true), "the default kept");
    let security = serde_json::to_value(pod.containers[0].security_context.as_ref()).unwrap();
    assert!(
        security.get("runAsUser").is_none() && security.get("runAsGroup").is_none(),
        "{security}"
    );
    assert_eq!(security["runAsNonRoot"], true, "{security}");
    assert_eq!(security["readOnlyRootFilesystem"], true, "{security}");
    assert_eq!(
        security["capabilities"]["drop"],
        json!(["ALL"]),
        "{security}"
    );

    // Without the nulls the default user is back.
    scene
        .apply("pods", scene.spec(json!({"agent": {"replicas": 1}})))
        .await
        .expect("offering");
    poll_until("the default user back", TIMEOUT, async || {
        let deployment = deployments
            .get("pods-sync-agent")
            .await
            .map_err(|e| e.to_string())?;
        let pod = deployment.spec.and_then(|s| s.template.spec);
        let container = pod.as_ref().map(|p| &p.containers[0]);
        let user = container
            .and_then(|c| c.security_context.as_ref())
            .and_then(|s| s.run_as_user);
        let aliases = pod.as_ref().and_then(|p| p.host_aliases.clone());
        match (user, aliases) {
            (Some(65532), None) => Ok(()),
            other => Err(format!("runAsUser and hostAliases: {other:?}")),
        }
    })
    .await
    .expect("the Deployment follows the offering");
}

/// The failed reconciles of the operator's offerings so far.
async fn reconcile_errors(scene: &OfferingScene) -> Result<u64, String> {
    let metrics = scene.operator.process.metrics().await?;
    Ok(metrics
        .lines()
        .filter(|line| {
            line.starts_with("controller_runtime_reconcile_errors_total{")
                && line.contains(r#"controller="publishedoffering""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// An offering created before its kcp Secret goes on as soon as the Secret
/// is created: the operator watches Secrets. Nothing else could explain
/// it: the offering's next retry is more than a minute away, and the
/// resync an hour.
#[tokio::test]
async fn a_kcp_secret_created_after_its_offering_is_acted_on_at_once() {
    let scene = OfferingScene::new("op-late-secret", &["--resync-interval=1h"])
        .await
        .expect("scene");
    let late = json!({"kcp": {"workspace": scene.provider.workspace.path,
        "kubeconfigSecretRef": {"name": "late-kcp"}}, "agent": {"replicas": 1}});
    scene
        .apply("late", scene.spec(late))
        .await
        .expect("offering");
    scene
        .wait_for_condition("late", "Ready", "False", "KcpSecretMissing")
        .await
        .expect("the Secret is missing");
    // Retries wait 2, 4, 8, 16 and 32 s: after the sixth failure, 64 s.
    poll_until(
        "six failed reconciles",
        Duration::from_secs(120),
        async || match reconcile_errors(&scene).await? {
            n if n >= 6 => Ok(()),
            n => Err(format!("{n} failures")),
        },
    )
    .await
    .expect("backed off");

    let kubeconfig = std::fs::read_to_string(&scene.provider.env.kcp_kubeconfig).unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "late-kcp"},
        "stringData": {"kubeconfig": kubeconfig},
    }))
    .unwrap();
    Api::<Secret>::namespaced(scene.provider.service.clone(), &scene.provider.namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the kcp Secret");
    poll_until(
        "the offering past KcpSecretMissing",
        Duration::from_secs(20),
        async || {
            let offering = scene
                .offerings()
                .get("late")
                .await
                .map_err(|e| e.to_string())?;
            let conditions = offering.status.map(|s| s.conditions).unwrap_or_default();
            match conditions.first() {
                Some(ready) if ready.reason != "KcpSecretMissing" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("acted on the new Secret, not at a retry");
    let _agent = scene.run_agent("late").await.expect("agent runs");
    scene
        .wait_for_condition("late", "Ready", "True", "Ready")
        .await
        .expect("ready");
}

//! The migration guide, run: `docs/migration.md`'s `sh` blocks, in order,
//! move an agent installed with a stand-in of upstream's chart
//! (`e2e/fixtures/upstream-chart`: the CRD as a template, upstream's v0.7.0
//! schema, upstream's Deployment name and labels) to a PublishedOffering in
//! another namespace, with kubectl and helm on the real servers. The guide's
//! own commands stop the old agent (a process standing in for the old
//! Deployment's pod, stopped when the Deployment is scaled to zero). Nothing
//! may be lost: the CRD, the consumer's object, its copy (adopted, not made
//! again), and the last-known state upstream kept in a Secret.

use e2e::guide::{bash, helm, repo};
use e2e::offering::{KCP_SECRET, OfferingScene, TIMEOUT};
use e2e::pod::follow_scale;
use e2e::poll::poll_until;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sync_agent::api::hash::sha1_hex;
use sync_agent::api::published_resource::PublishedResource;
use sync_agent::sync::identity::RemoteKey;
use sync_agent::sync::object::LAST_KNOWN_ANNOTATION;
use sync_agent::sync::upstream_state::STATE_LABEL;

const CRD: &str = "publishedresources.syncagent.kcp.io";

/// What upstream api-syncagent v0.7.0 leaves in its namespace for a synced
/// object (`internal/sync/state_store.go`): a Secret named
/// `obj-state-<cluster>-<first 20 hex of SHA-1 of the object's JSON key>`,
/// labelled with the object's identity and `syncagent.kcp.io/object-state`,
/// holding the object as last synced (server metadata stripped) under the
/// SHA-1 of its key.
fn upstream_state_secret(key: &RemoteKey, state: &serde_json::Value) -> Secret {
    let name_key = json!({"apiVersion": state["apiVersion"], "kind": state["kind"],
        "name": key.name, "namespace": key.namespace});
    let data_key = format!(
        r#"{{"ClusterName":"{}","WorkspacePath":"","Namespace":"{}","Name":"{}"}}"#,
        key.cluster, key.namespace, key.name
    );
    let mut labels = key.labels();
    labels.insert(STATE_LABEL.into(), "true".into());
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("obj-state-{}-{}", key.cluster, &sha1_hex(&name_key.to_string())[..20]),
            "labels": labels,
        },
        "stringData": {sha1_hex(&data_key): state.to_string()},
    }))
    .expect("a Secret")
}

// The guide's commands block the test's thread; the stand-ins of the
// kubelet (the old pod's follower, the pod runner) run on the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_guide_moves_an_upstream_agent_to_an_offering_and_loses_nothing() {
    let scene = OfferingScene::new("migrate", &[]).await.expect("scene");
    let provider = &scene.provider;
    let env = &provider.env;
    let service = provider.service.clone();
    let ns = provider.namespace.clone();
    // The old release lives in a namespace of its own, as in the guide: the
    // two agents do not share a Lease, so only stopping the old one keeps
    // them from syncing the same objects.
    let old_ns = format!("{ns}-old");
    let release = format!(
        "legacy-{}",
        &provider.agent_name[provider.agent_name.len() - 8..]
    );

    // Upstream's install: its chart makes the CRD (ours goes first; no other
    // test binary runs meanwhile, and each applies ours again).
    let crds: Api<CustomResourceDefinition> = Api::all(service.clone());
    if crds.get_opt(CRD).await.expect("CRD").is_some() {
        crds.delete(CRD, &DeleteParams::default())
            .await
            .expect("delete");
    }
    poll_until("our CRD to go", TIMEOUT, async || {
        match crds.get_opt(CRD).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await
    .expect("gone");
    let old_chart = repo().join("e2e/fixtures/upstream-chart");
    let values = format!(
        "agentName={},apiExportEndpointSliceName={},kcpKubeconfig=kcp-kubeconfig",
        provider.agent_name, provider.export
    );
    helm(
        &[
            "install",
            &release,
            &old_chart.display().to_string(),
            "--namespace",
            &old_ns,
            "--create-namespace",
            "--set",
            &values,
        ],
        &env.service_kubeconfig,
    )
    .expect("the old chart installs");
    poll_until("the old CRD to serve", TIMEOUT, async || {
        provider
            .prs()
            .list(&ListParams::default())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .expect("served");

    // The old agent (this project's binary stands in: same flags, same
    // marks) runs as the old Deployment's pod and syncs a consumer's object.
    let old_pr = provider
        .create_pr(
            "widgets",
            json!({"resource": {"apiGroup": provider.group, "kind": "Widget"}}),
        )
        .await
        .expect("the old PublishedResource");
    let mut settings = provider.agent_settings();
    settings.namespace = old_ns.clone();
    let mut old_agent = e2e::agent::AgentProcess::start(env, &settings)
        .await
        .expect("the old agent");
    let old_pod = follow_scale(
        service.clone(),
        &old_ns,
        &format!("{release}-api-syncagent"),
        old_agent.pid(),
    );
    provider
        .wait_for_schema_name(&old_pr, None)
        .await
        .expect("published");
    let consumer = provider
        .bind_consumer("migrate-consumer")
        .await
        .expect("consumer");
    let widgets = scene
        .consumer_widget(&consumer.path, "kept")
        .await
        .expect("a consumer's widget");
    widgets
        .patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("the consumer sets replicas");
    let key = RemoteKey {
        cluster: consumer.cluster.clone(),
        namespace: "apps".into(),
        name: "kept".into(),
    };
    let all: Api<DynamicObject> = Api::all_with(service.clone(), &scene.widgets());
    let copy_of = async |name: &str, until: &(dyn Fn(&DynamicObject) -> bool + Sync)| {
        let key = RemoteKey {
            name: name.into(),
            ..key.clone()
        };
        poll_until(
            &format!("one copy of {name}, as expected"),
            TIMEOUT,
            async || {
                let list = all
                    .list(&ListParams::default().labels(&key.selector(&provider.agent_name)))
                    .await
                    .map_err(|e| e.to_string())?;
                match list.items.as_slice() {
                    [one] if until(one) => Ok(one.clone()),
                    [one] => Err(format!("{:?}", one.data["spec"])),
                    other => Err(format!("{} copies", other.len())),
                }
            },
        )
        .await
        .expect("copy")
    };
    let before = copy_of("kept", &|c| c.data["spec"]["replicas"] == 3).await;
    // The provider's operator adds a field of its own.
    let copies: Api<DynamicObject> = Api::namespaced_with(
        service.clone(),
        &before.namespace().unwrap(),
        &scene.widgets(),
    );
    copies
        .patch(
            &before.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"providerNote": "kept"}})),
        )
        .await
        .expect("the provider's field");

    // The guide, step by step, with this test's values; the operator's kcp
    // Secret is the guide's to make.
    Api::<Secret>::namespaced(service.clone(), &ns)
        .delete(KCP_SECRET, &DeleteParams::default())
        .await
        .expect("the scene's kcp Secret goes");
    let offering = "migrated";
    let vars = [
        ("KUBECONFIG", env.service_kubeconfig.display().to_string()),
        ("OLD_RELEASE", release.clone()),
        ("OLD_NAMESPACE", old_ns.clone()),
        ("OLD_CHART", old_chart.display().to_string()),
        ("AGENT_NAME", provider.agent_name.clone()),
        ("EXPORT", provider.export.clone()),
        ("OLD_PUBLISHED_RESOURCES", old_pr.clone()),
        ("API_GROUP", provider.group.clone()),
        ("KIND", "Widget".into()),
        ("NAMESPACE", ns.clone()),
        ("OFFERING", offering.into()),
        ("PROVIDER_WORKSPACE", provider.workspace.path.clone()),
        ("KCP_KUBECONFIG", env.kcp_kubeconfig.display().to_string()),
        (
            "CHART_DIR",
            repo()
                .join("charts/offering-operator")
                .display()
                .to_string(),
        ),
    ];
    let steps = e2e::guide::steps("docs/migration.md");
    assert_eq!(steps.len(), 7, "the guide's seven steps");
    for step in &steps[..2] {
        bash(step, &vars).unwrap_or_else(|e| panic!("{e}"));
    }
    // Step 2 stopped the old agent: by name, since upstream's Deployment
    // carries no labels.
    assert!(!old_agent.is_running(), "step 2 stops the old agent");
    old_pod.await.expect("the old pod's stand-in ended");

    // What upstream leaves: the copy without this agent's state, the state
    // in a Secret of the old namespace. While no agent runs, the consumer
    // removes a field.
    copies
        .patch(
            &before.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {LAST_KNOWN_ANNOTATION: null}}})),
        )
        .await
        .expect("the copy as upstream left it");
    let state = json!({
        "apiVersion": format!("{}/v1", provider.group), "kind": "Widget",
        "metadata": {"name": "kept", "namespace": "apps"},
        "spec": {"color": "blue", "replicas": 3},
    });
    let old_secrets: Api<Secret> = Api::namespaced(service.clone(), &old_ns);
    old_secrets
        .create(&PostParams::default(), &upstream_state_secret(&key, &state))
        .await
        .expect("upstream's state Secret");
    widgets
        .patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": null}})),
        )
        .await
        .expect("the consumer removes replicas");

    for step in &steps[2..5] {
        bash(step, &vars).unwrap_or_else(|e| panic!("{e}"));
    }
    // Step 6 waits until the offering is Ready, which needs its agent: the
    // pod runner plays the kubelet meanwhile.
    let (step6, six_vars) = (steps[5].clone(), vars.to_vec());
    let applied = tokio::task::spawn_blocking(move || bash(&step6, &six_vars));
    let agent = scene.run_agent(offering).await.expect("the new agent runs");
    applied
        .await
        .expect("step 6 ran")
        .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", scene.operator.process.log_tail()));
    let cleaned = bash(&steps[6], &vars).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cleaned.contains("state Secrets left: none"),
        "the new agent read and deleted upstream's state:\n{cleaned}\nagent log:\n{}",
        agent.process.log_tail()
    );

    // Nothing lost: our CRD serves (conditions in its status), the old
    // PublishedResource is gone and the offering's is there, the release
    // is gone.
    let crd = crds.get(CRD).await.expect("the CRD stays");
    let status = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    assert!(
        status
            .pointer("/openAPIV3Schema/properties/status/properties/conditions")
            .is_some(),
        "our schema replaced upstream's"
    );
    let prs = provider.prs();
    assert!(prs.get_opt(&old_pr).await.expect("get").is_none());
    let rendered: PublishedResource = prs
        .get(&format!("{ns}.{offering}.main"))
        .await
        .expect("the offering's PublishedResource");
    assert_eq!(rendered.spec.resource.kind, "Widget");
    let releases = helm(
        &["list", "--namespace", &old_ns, "--short"],
        &env.service_kubeconfig,
    )
    .expect("helm list");
    assert!(!releases.contains(&release), "{releases}");

    // The new agent adopted the copy from upstream's state: the field the
    // consumer removed is gone, the provider's stays; a later consumer edit
    // arrives and brings nothing back. A widget made after the switch gets
    // its copy, and by then the kept one has still exactly one, the same.
    let adopted = copy_of("kept", &|c| {
        c.data["spec"].get("replicas").is_none()
            && c.annotations().contains_key(LAST_KNOWN_ANNOTATION)
    })
    .await;
    assert_eq!(adopted.data["spec"]["providerNote"], "kept");
    widgets
        .patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"color": "red"}})),
        )
        .await
        .expect("a consumer edit");
    let edited = copy_of("kept", &|c| c.data["spec"]["color"] == "red").await;
    assert!(
        edited.data["spec"].get("replicas").is_none(),
        "{:?}",
        edited.data
    );
    assert_eq!(edited.data["spec"]["providerNote"], "kept");
    scene
        .consumer_widget(&consumer.path, "after")
        .await
        .expect("a widget after the switch");
    copy_of("after", &|_| true).await;
    let after = copy_of("kept", &|_| true).await;
    assert_eq!(after.uid(), before.uid(), "adopted, not made again");
    let object = widgets.get("kept").await.expect("the consumer's widget");
    assert!(
        object
            .finalizers()
            .contains(&"syncagent.kcp.io/cleanup".to_string())
    );
    drop(agent);
}

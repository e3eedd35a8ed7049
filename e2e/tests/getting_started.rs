//! The getting-started guide, run: `docs/getting-started.md`'s `sh` blocks,
//! in order, with kubectl on the real servers: a provider workspace made,
//! the operator's credentials stored, a kind published, a consumer
//! workspace bound with the export's claims accepted, a consumer's object
//! placed on the service cluster with its events, and the status the
//! provider's operator writes read back in kcp.

use e2e::guide::{bash, steps};
use e2e::offering::OfferingScene;
use e2e::poll::poll_until;
use e2e::scene::TIMEOUT;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::json;
use sync_agent::api::kcp::tenancy_v1alpha1::Workspace;
use sync_agent::sync::identity::AGENT_LABEL;

// The guide's commands block the test's thread; the pod runner plays the
// kubelet on the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_getting_started_guide_publishes_a_kind_and_a_consumer_object_round_trips() {
    let scene = OfferingScene::new("start", &[]).await.expect("scene");
    let provider = &scene.provider;
    let env = &provider.env;
    let suffix = &provider.agent_name[provider.agent_name.len() - 8..];
    let (provider_workspace, consumer_workspace) = (
        format!("gs-provider-{suffix}"),
        format!("gs-consumer-{suffix}"),
    );
    let kubeconfig = kube::config::Kubeconfig::read_from(&env.kcp_kubeconfig).expect("kcp");
    let server = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .expect("a server");
    let kcp_url = server
        .split_once("/clusters/")
        .map_or(server.as_str(), |(base, _)| base)
        .to_string();
    let offering = "databases";
    let vars = [
        ("KUBECONFIG", env.service_kubeconfig.display().to_string()),
        ("KCP_KUBECONFIG", env.kcp_kubeconfig.display().to_string()),
        ("KCP_URL", kcp_url),
        ("PARENT", "root".into()),
        ("PROVIDER", provider_workspace.clone()),
        ("CONSUMER", consumer_workspace.clone()),
        ("NAMESPACE", provider.namespace.clone()),
        ("OFFERING", offering.into()),
        ("API_GROUP", provider.group.clone()),
        ("API_VERSION", "v1".into()),
        ("KIND", "Widget".into()),
        ("RESOURCE", "widgets".into()),
    ];
    let steps = steps("docs/getting-started.md");
    assert_eq!(steps.len(), 6, "the guide's six steps");
    for step in &steps[..2] {
        bash(step, &vars).unwrap_or_else(|e| panic!("{e}"));
    }
    // Step 3 waits until the offering is Ready, which needs its agent.
    let (step3, three_vars) = (steps[2].clone(), vars.to_vec());
    let applied = tokio::task::spawn_blocking(move || bash(&step3, &three_vars));
    let agent = scene.run_agent(offering).await.expect("the agent runs");
    let published = applied
        .await
        .expect("step 3 ran")
        .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", scene.operator.process.log_tail()));
    assert!(published.contains(offering), "{published}");

    bash(&steps[3], &vars).unwrap_or_else(|e| panic!("{e}"));
    let placed = bash(&steps[4], &vars)
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.process.log_tail()));
    assert!(placed.contains("ObjectPlaced"), "{placed}");

    // The copy is on the service cluster, where the annotation says; the
    // provider's operator (this test) writes its status.
    let copies: Api<DynamicObject> = Api::all_with(provider.service.clone(), &scene.widgets());
    let agent_name = format!("{}-{offering}", provider.namespace);
    let copy = poll_until("the copy", TIMEOUT, async || {
        let list = copies
            .list(&ListParams::default().labels(&format!("{AGENT_LABEL}={agent_name}")))
            .await
            .map_err(|e| e.to_string())?;
        match list.items.as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{} copies", other.len())),
        }
    })
    .await
    .expect("one copy");
    let namespace = copy.namespace().expect("a namespaced copy");
    assert!(
        placed.contains(&format!("{namespace}/{}", copy.name_any())),
        "the annotation names the copy: {placed}"
    );
    Api::<DynamicObject>::namespaced_with(provider.service.clone(), &namespace, &scene.widgets())
        .patch_status(
            &copy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Provisioned"}})),
        )
        .await
        .expect("the provider's status");
    let status = bash(&steps[5], &vars).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.contains(r#""phase":"Provisioned""#), "{status}");

    drop(agent);
    scene.delete_and_wait(offering).await.expect("deleted");
    let workspaces: Api<Workspace> =
        Api::all(provider.kcp.client("root").expect("the root workspace"));
    for workspace in [&consumer_workspace, &provider_workspace] {
        workspaces
            .delete(workspace, &DeleteParams::default())
            .await
            .expect("cleanup");
    }
    provider.cleanup().await.expect("cleanup");
}

//! The migration guide, run: `docs/migration.md`'s `sh` blocks, in order,
//! move an agent installed with a stand-in of upstream's chart
//! (`e2e/fixtures/upstream-chart`: the CRD as a template, upstream's v0.7.0
//! schema) to a PublishedOffering, with kubectl and helm on the real
//! servers. Nothing may be lost: the CRD, the consumer's object, its copy
//! (adopted, not made again).

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::offering::{KCP_SECRET, OfferingScene, TIMEOUT};
use e2e::poll::poll_until;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use serde_json::json;
use sync_agent::api::published_resource::PublishedResource;
use sync_agent::sync::identity::RemoteKey;

const CRD: &str = "publishedresources.syncagent.kcp.io";

fn repo() -> PathBuf {
    e2e::checkout::root().expect("the project's checkout")
}

/// The guide's `sh` blocks, the first (the reader's values) left out.
fn guide_steps() -> Vec<String> {
    let guide = std::fs::read_to_string(repo().join("docs/migration.md")).expect("the guide");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in guide.lines() {
        match (&mut current, line) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(block), "```") => {
                blocks.push(block.join("\n"));
                current = None;
            }
            (Some(block), line) => block.push(line),
            (None, _) => {}
        }
    }
    assert!(
        blocks
            .first()
            .is_some_and(|b| b.starts_with("# Your values.")),
        "the guide starts with the reader's values"
    );
    blocks.remove(0);
    blocks
}

/// Runs `script` with bash (failing on the first failed command) and
/// `vars`, with the test servers' kubectl and helm first on the PATH.
fn bash(script: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let bin = repo().join(".e2e-bin");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(repo())
        .env("PATH", path)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{script}\nfailed:\n{text}"))
    }
}

fn helm(args: &[&str], kubeconfig: &Path) -> Result<String, String> {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    bash(
        &format!("helm {}", quoted.join(" ")),
        &[("KUBECONFIG", kubeconfig.display().to_string())],
    )
}

#[tokio::test]
async fn the_migration_guide_moves_an_upstream_agent_to_an_offering_and_loses_nothing() {
    let scene = OfferingScene::new("migrate", &[]).await.expect("scene");
    let provider = &scene.provider;
    let env = &provider.env;
    let service = provider.service.clone();
    let ns = provider.namespace.clone();
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
        "agentName={},apiExportEndpointSliceName={}",
        provider.agent_name, provider.export
    );
    helm(
        &[
            "install",
            &release,
            &old_chart.display().to_string(),
            "--namespace",
            &ns,
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
    // marks) syncs a consumer's object.
    let old_pr = provider
        .create_pr(
            "widgets",
            json!({"resource": {"apiGroup": provider.group, "kind": "Widget"}}),
        )
        .await
        .expect("the old PublishedResource");
    let old_agent = provider.start_agent().await.expect("the old agent");
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
    let copy_of = async |name: &str| {
        let key = RemoteKey {
            cluster: consumer.cluster.clone(),
            namespace: "apps".into(),
            name: name.into(),
        };
        let all: Api<DynamicObject> = Api::all_with(service.clone(), &scene.widgets());
        poll_until(&format!("one copy of {name}"), TIMEOUT, async || {
            let list = all
                .list(&ListParams::default().labels(&key.selector(&provider.agent_name)))
                .await
                .map_err(|e| e.to_string())?;
            match list.items.as_slice() {
                [one] => Ok(one.clone()),
                other => Err(format!("{} copies", other.len())),
            }
        })
        .await
        .expect("copy")
    };
    let before = copy_of("kept").await;
    drop(old_agent);

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
        ("OLD_NAMESPACE", ns.clone()),
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
    let steps = guide_steps();
    assert_eq!(steps.len(), 6, "the guide's six steps");
    for step in &steps[..4] {
        bash(step, &vars).unwrap_or_else(|e| panic!("{e}"));
    }
    // Step 5 waits until the offering is Ready, which needs its agent: the
    // pod runner plays the kubelet meanwhile.
    let (step5, five_vars) = (steps[4].clone(), vars.to_vec());
    let applied = tokio::task::spawn_blocking(move || bash(&step5, &five_vars));
    let agent = scene.run_agent(offering).await.expect("the new agent runs");
    applied
        .await
        .expect("step 5 ran")
        .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", scene.operator.process.log_tail()));
    bash(&steps[5], &vars).unwrap_or_else(|e| panic!("{e}"));

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
        &["list", "--namespace", &ns, "--short"],
        &env.service_kubeconfig,
    )
    .expect("helm list");
    assert!(!releases.contains(&release), "{releases}");

    // The new agent adopted the copy: a widget made after the switch gets
    // its copy, and by then the kept one has still exactly one, the same.
    scene
        .consumer_widget(&consumer.path, "after")
        .await
        .expect("a widget after the switch");
    copy_of("after").await;
    let after = copy_of("kept").await;
    assert_eq!(after.uid(), before.uid(), "adopted, not made again");
    let object = widgets.get("kept").await.expect("the consumer's widget");
    assert!(
        object
            .finalizers()
            .contains(&"syncagent.kcp.io/cleanup".to_string())
    );
    drop(agent);
}

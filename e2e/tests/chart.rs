//! The operator's Helm chart and plain manifests on the real servers:
//! lint, the rendered objects accepted by the kube-apiserver, and the
//! chart's ServiceAccount enough to reconcile an offering to Ready, report a
//! bad one with a Warning event, and clean up.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::offering::OfferingScene;
use e2e::pod::Pod;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use kube::{Client, ResourceExt};
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    std::env::var_os("HELM").map_or_else(|| repo().join(".e2e-bin/helm"), PathBuf::from)
}

/// Runs helm (or a script) and returns its standard output.
fn run(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo())
        .env("HELM", helm())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (build it with e2e/env/build.sh)",
                program.display()
            )
        });
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Server-side applies every object of a YAML stream; `dry_run` only
/// validates them, refusing fields the schema does not know.
async fn apply_stream(client: &Client, yaml: &str, namespace: &str, dry_run: bool) -> Vec<String> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let mut applied = Vec::new();
    for document in serde_saphyr::from_multiple::<Option<DynamicObject>>(yaml).expect("YAML stream")
    {
        let Some(object) = document else { continue };
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = kube::core::GroupVersionKind::try_from(&types).expect("GVK");
        let (resource, capabilities): (ApiResource, _) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("the server does not serve {gvk:?}"));
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                &object.namespace().unwrap_or_else(|| namespace.to_string()),
                &resource,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let mut params = PatchParams::apply("e2e").force();
        if dry_run {
            params = params.dry_run().validation_strict();
        }
        api.patch(&object.name_any(), &params, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("applying {} {}: {e}", types.kind, object.name_any()));
        applied.push(format!("{}/{}", types.kind, object.name_any()));
    }
    applied
}

#[test]
fn the_chart_lints_strictly_with_defaults_and_every_option() {
    run(&helm(), &["lint", "--strict", "charts/offering-operator"]);
    run(
        &helm(),
        &[
            "lint",
            "--strict",
            "charts/offering-operator",
            "--set",
            "serviceMonitor.enabled=true,watchNamespace=team-a,leaderElection=false",
            "--set",
            "defaultKcpSecret.name=kcp,defaultKcpSecret.kubeconfig=apiVersion: v1",
            "--set",
            "agent.kcpURL=https://kcp.example.com:6443,podLabels.team=a,nodeSelector.pool=ops",
        ],
    );
}

#[test]
fn the_chart_refuses_values_outside_its_schema() {
    let output = Command::new(helm())
        .args([
            "lint",
            "--strict",
            "charts/offering-operator",
            "--set",
            "logFormat=xml",
        ])
        .current_dir(repo())
        .output()
        .expect("helm runs");
    assert!(!output.status.success(), "logFormat=xml passed the schema");
}

#[tokio::test]
async fn the_plain_manifests_match_the_chart_and_the_server_accepts_them() {
    let rendered = std::env::temp_dir().join(format!("install-{}.yaml", std::process::id()));
    run(
        &repo().join("config/render.sh"),
        &[rendered.to_str().unwrap()],
    );
    let fresh = std::fs::read_to_string(&rendered).unwrap();
    let committed = std::fs::read_to_string(repo().join("config/install.yaml")).unwrap();
    assert!(
        fresh == committed,
        "config/install.yaml is stale; run config/render.sh"
    );
    let env = e2e::env::EnvFile::load().unwrap();
    let client = e2e::service::client(&env).await.unwrap();
    // The namespace must exist for a dry run of the namespaced objects.
    apply_stream(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: offering-system\n",
        "offering-system",
        false,
    )
    .await;
    let applied = apply_stream(&client, &committed, "offering-system", true).await;
    for kind in [
        "CustomResourceDefinition/",
        "ClusterRole/",
        "Deployment/",
        "ServiceAccount/",
    ] {
        assert!(
            applied.iter().any(|a| a.starts_with(kind)),
            "no {kind} in {applied:?}"
        );
    }
}

#[tokio::test]
async fn the_sample_offerings_are_valid() {
    let env = e2e::env::EnvFile::load().unwrap();
    let client = e2e::service::client(&env).await.unwrap();
    // Not left to another test: this one may run first on fresh servers.
    e2e::service::apply_project_crds(&client).await.unwrap();
    let namespace = e2e::service::create_namespace(&client, "samples")
        .await
        .unwrap();
    apply_stream(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n",
        "demo",
        false,
    )
    .await;
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("config/samples")).unwrap() {
        let path = entry.unwrap().path();
        let yaml = std::fs::read_to_string(&path).unwrap();
        let applied = apply_stream(&client, &yaml, &namespace, true).await;
        assert!(
            applied.iter().all(|a| a.starts_with("PublishedOffering/")),
            "{}: {applied:?}",
            path.display()
        );
        checked += applied.len();
    }
    assert!(checked >= 4, "only {checked} samples");
}

#[tokio::test]
async fn the_charts_service_account_is_enough_to_make_an_offering_ready() {
    let provider = OfferingScene::provider("chart").await.expect("provider");
    let namespace = provider.namespace.clone();
    let release = format!(
        "op-{}",
        &provider.agent_name[provider.agent_name.len() - 8..]
    );
    let values = format!(
        "watchNamespace={namespace},image.repository=example.invalid/offering-operator,image.tag=e2e,logFormat=text"
    );
    let rendered = run(
        &helm(),
        &[
            "template",
            &release,
            "charts/offering-operator",
            "--namespace",
            &namespace,
            "--kube-version",
            "1.36.0",
            "--set",
            &values,
        ],
    );
    let applied = apply_stream(&provider.service, &rendered, &namespace, false).await;
    assert!(
        applied.iter().any(|a| a.starts_with("Pod/")),
        "the helm test pod renders"
    );

    // The operator runs from the chart's Deployment with its ServiceAccount.
    let operator = Pod::run(
        &provider.env,
        &provider.service,
        &namespace,
        &format!("{release}-offering-operator"),
    )
    .await
    .expect("the chart's operator runs");
    let readyz = format!("http://{}/readyz", operator.process.health_address);
    run(
        &repo().join("target/debug/offering-operator"),
        &["probe", &readyz],
    );

    let scene = OfferingScene { provider, operator };
    let _agent = scene
        .publish("widgets", json!({"agent": {"replicas": 1}}))
        .await
        .expect("ready with the chart's RBAC");
    // Bad input is reported with the chart's RBAC too: a condition and a
    // Warning event.
    let missing = json!({"kcp": {"workspace": scene.provider.workspace.path,
        "kubeconfigSecretRef": {"name": "no-such-secret"}}});
    scene
        .apply("broken", scene.spec(missing))
        .await
        .expect("broken offering");
    scene
        .wait_for_condition("broken", "Ready", "False", "KcpSecretMissing")
        .await
        .expect("the reason");
    scene
        .wait_for_warning("broken", "KcpSecretMissing")
        .await
        .expect("a Warning event with the chart's RBAC");
    scene
        .delete_and_wait("broken")
        .await
        .expect("a broken offering goes when deleted");
    scene
        .delete_and_wait("widgets")
        .await
        .expect("the offering's cleanup with the chart's RBAC");
}

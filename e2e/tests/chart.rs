//! The operator's Helm chart and plain manifests on the real servers:
//! lint, each value and cross-field check as rendered by `helm template`,
//! the chart as an umbrella chart's dependency, the rendered objects
//! accepted by the kube-apiserver, `helm install`/`upgrade`/`uninstall` on
//! it (and what stays: CRDs and offerings), the documented CRD upgrade, and
//! the chart's ServiceAccount enough to reconcile an offering to Ready,
//! report a bad one with a Warning event, and clean up.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::env::{EnvFile, random_hex};
use e2e::offering::{OfferingScene, TIMEOUT};
use e2e::pod::Pod;
use e2e::poll::{DEFAULT_TIMEOUT, KCP_SLOW_TIMEOUT, poll_until};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use kube::{Client, ResourceExt};
use offering_operator::api::PublishedOffering;
use promql_parser::parser::Expr;
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    e2e::checkout::root().expect("the project's checkout")
}

fn helm() -> PathBuf {
    std::env::var_os("HELM").map_or_else(|| repo().join(".e2e-bin/helm"), PathBuf::from)
}

/// Runs helm (or a script) and returns its standard output.
fn run(program: &Path, args: &[&str]) -> String {
    run_with_env(program, args, &[])
}

/// Runs `program` with `args` and the variables `env` from the repository's
/// root, which must succeed; returns its standard output.
fn run_with_env(program: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo())
        .env("HELM", helm())
        .envs(env.iter().copied())
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
            "watchNamespace=team-a,leaderElection=false,serviceAccount.create=false",
            "--set",
            "serviceAccount.name=operator,nameOverride=ops,podDisruptionBudget.enabled=true",
            "--set",
            "defaultKcpSecret.name=kcp,defaultKcpSecret.kubeconfig=apiVersion: v1",
            "--set",
            "agent.kcpURL=https://kcp.example.com:6443,podLabels.team=a,nodeSelector.pool=ops",
            "--set",
            "priorityClassName=ops,commonLabels.team=a,agentImage.tag=v0,image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "--set-json",
            r#"extraArgs=["--resync-interval=5m"],extraEnv=[{"name":"A","value":"b"}]"#,
            "--set-json",
            r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"zone","whenUnsatisfiable":"DoNotSchedule"}]"#,
        ],
    );
}

#[test]
fn the_chart_refuses_values_outside_its_schema() {
    // An unknown log level would silence the operator's logs.
    for value in ["logFormat=xml", "logLevel=verbose"] {
        let output = Command::new(helm())
            .args([
                "lint",
                "--strict",
                "charts/offering-operator",
                "--set",
                value,
            ])
            .current_dir(repo())
            .output()
            .expect("helm runs");
        assert!(!output.status.success(), "{value} passed the schema");
    }
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
    // The chart lets the operator read the agent's Lease.
    poll_until("the leading agent pod in the status", TIMEOUT, async || {
        let offering = scene
            .offerings()
            .get("widgets")
            .await
            .map_err(|e| e.to_string())?;
        offering
            .status
            .and_then(|s| s.agent_leader)
            .ok_or_else(|| "no agentLeader".to_string())
    })
    .await
    .expect("the leader named with the chart's RBAC");
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
    // ... and watch the Secrets of its namespace.
    let log = std::fs::read_to_string(&scene.operator.process.log).unwrap();
    assert!(
        !log.contains("Watching kcp kubeconfig Secrets failed"),
        "{log}"
    );
}

/// `helm template` of the chart as release `rel` in namespace `ops` on a
/// Kubernetes 1.36 cluster, with `args` (values); the rendered objects, or
/// helm's error output.
fn template(args: &[&str]) -> Result<Vec<Value>, String> {
    let mut command = Command::new(helm());
    command
        .args([
            "template",
            "rel",
            "charts/offering-operator",
            "--namespace",
            "ops",
        ])
        .args(["--kube-version", "1.36.0"])
        .args(args)
        .current_dir(repo());
    let output = command.output().expect("helm runs");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(documents(&String::from_utf8(output.stdout).expect("UTF-8")))
}

/// The objects of a YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Option<Value>>(yaml)
        .expect("YAML stream")
        .into_iter()
        .flatten()
        .collect()
}

/// Renders with `args`, which must succeed.
fn rendered(args: &[&str]) -> Vec<Value> {
    template(args).unwrap_or_else(|e| panic!("helm template {args:?} failed: {e}"))
}

/// Renders with `args`, which must fail with a message containing `message`.
fn refused(args: &[&str], message: &str) {
    match template(args) {
        Ok(_) => panic!("helm template {args:?} rendered; expected: {message}"),
        Err(error) => assert!(
            error.contains(message),
            "helm template {args:?}: expected {message:?} in:\n{error}"
        ),
    }
}

/// The rendered objects of `kind`.
fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one rendered object of `kind`.
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    match of_kind(objects, kind).as_slice() {
        [object] => object,
        found => panic!("{} objects of kind {kind}, want 1", found.len()),
    }
}

fn operator_container(objects: &[Value]) -> &Value {
    &one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn the_chart_renders_as_an_umbrella_charts_dependency_with_globals() {
    let umbrella = std::env::temp_dir().join(format!("umbrella-{}", std::process::id()));
    let charts = umbrella.join("charts");
    std::fs::create_dir_all(&charts).unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo().join("charts/offering-operator"))
        .arg(&charts)
        .status()
        .expect("cp runs");
    assert!(status.success());
    std::fs::write(
        umbrella.join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\n\
         dependencies:\n  - name: offering-operator\n    version: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        umbrella.join("values.yaml"),
        "global:\n  imageRegistry: registry.example.com\n  labels: {team: platform}\n\
         offering-operator:\n  image:\n    tag: umbrella\n",
    )
    .unwrap();
    let output = Command::new(helm())
        .arg("template")
        .arg("platform")
        .arg(&umbrella)
        .args(["--kube-version", "1.36.0"])
        .output()
        .expect("helm runs");
    std::fs::remove_dir_all(&umbrella).unwrap();
    assert!(
        output.status.success(),
        "the umbrella chart does not render: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = documents(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(
        operator_container(&objects)["image"],
        "ghcr.io/example/offering-operator:umbrella",
        "the umbrella's values reach the chart"
    );
}

#[test]
fn name_overrides_rename_the_objects_and_the_name_label() {
    let defaults = rendered(&[]);
    let deployment = one(&defaults, "Deployment");
    assert_eq!(deployment["metadata"]["name"], "rel-offering-operator");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "offering-operator"
    );

    let objects = rendered(&["--set", "nameOverride=syncer"]);
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["name"], "rel-syncer");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "syncer"
    );
    assert_eq!(
        one(&objects, "ClusterRole")["metadata"]["name"],
        "rel-syncer"
    );

    let objects = rendered(&["--set", "fullnameOverride=operator"]);
    for kind in ["Deployment", "ServiceAccount", "ClusterRole", "Service"] {
        assert_eq!(
            one(&objects, kind)["metadata"]["name"],
            "operator",
            "{kind}"
        );
    }
    assert_eq!(
        one(&objects, "ClusterRoleBinding")["subjects"][0]["name"],
        "operator"
    );
    refused(&["--set", "nameOverride=Not_A_Name"], "nameOverride");
}

#[test]
fn service_account_create_name_and_annotations() {
    let objects = rendered(&["--set", "serviceAccount.annotations.iam=role-a"]);
    let account = one(&objects, "ServiceAccount");
    assert_eq!(account["metadata"]["annotations"]["iam"], "role-a");

    let objects = rendered(&[
        "--set",
        "serviceAccount.create=false,serviceAccount.name=existing",
    ]);
    assert!(of_kind(&objects, "ServiceAccount").is_empty());
    assert_eq!(
        one(&objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        "existing"
    );
    for binding in of_kind(&objects, "ClusterRoleBinding")
        .into_iter()
        .chain(of_kind(&objects, "RoleBinding"))
    {
        assert_eq!(binding["subjects"][0]["name"], "existing");
    }
    refused(
        &["--set", "serviceAccount.create=false"],
        "serviceAccount.create=false needs serviceAccount.name",
    );
}

#[test]
fn security_contexts_default_to_restricted_and_can_be_replaced() {
    let objects = rendered(&[]);
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0]["securityContext"];
    assert_eq!(container["readOnlyRootFilesystem"], true);
    assert_eq!(container["allowPrivilegeEscalation"], false);
    assert_eq!(container["runAsNonRoot"], true);
    assert_eq!(container["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["seccompProfile"]["type"], "RuntimeDefault");
    let test_pod = one(&objects, "Pod");
    assert_eq!(test_pod["spec"]["securityContext"], pod["securityContext"]);

    // Values merge into the defaults; null removes a key.
    let objects = rendered(&[
        "--set",
        "podSecurityContext.fsGroup=2000,securityContext.runAsUser=null,securityContext.runAsGroup=null",
    ]);
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["fsGroup"], 2000);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0]["securityContext"];
    assert!(
        container.get("runAsUser").is_none() && container.get("runAsGroup").is_none(),
        "{container}"
    );
    assert_eq!(container["readOnlyRootFilesystem"], true);
}

#[test]
fn extra_args_env_and_scheduling_values_reach_the_operators_pod() {
    let defaults = rendered(&[]);
    let pod = &one(&defaults, "Deployment")["spec"]["template"]["spec"];
    assert!(pod.get("priorityClassName").is_none(), "{pod}");
    assert!(pod.get("topologySpreadConstraints").is_none(), "{pod}");

    let objects = rendered(&[
        "--set",
        "priorityClassName=platform-critical",
        "--set-json",
        r#"extraArgs=["--agent-token-lifetime=12h"]"#,
        "--set-json",
        r#"extraEnv=[{"name":"HTTPS_PROXY","value":"http://proxy:3128"}]"#,
        "--set-json",
        r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"ScheduleAnyway"}]"#,
    ]);
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = container["args"].as_array().unwrap();
    assert_eq!(
        args.last(),
        Some(&json!("--agent-token-lifetime=12h")),
        "appended after the chart's own: {args:?}"
    );
    let env: Vec<&Value> = container["env"].as_array().unwrap().iter().collect();
    assert_eq!(env[0]["name"], "POD_NAME", "the chart's own first");
    assert_eq!(
        env.last().copied(),
        Some(&json!({"name": "HTTPS_PROXY", "value": "http://proxy:3128"}))
    );
    assert_eq!(pod["priorityClassName"], "platform-critical");
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    refused(
        &["--set-json", r#"extraEnv=[{"value":"x"}]"#],
        "missing property 'name'",
    );
}

#[test]
fn a_digest_pins_an_image_and_agents_follow_the_operators_image_unless_told() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let agent_image = |objects: &[Value]| -> String {
        operator_container(objects)["args"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|a| a.as_str()?.strip_prefix("--agent-image="))
            .expect("--agent-image")
            .to_string()
    };
    // By default the agents' image is the operator's, whatever it is.
    let objects = rendered(&["--set", &format!("image.tag=0.2.0,image.digest={digest}")]);
    let image = format!("ghcr.io/example/offering-operator@{digest}");
    assert_eq!(
        operator_container(&objects)["image"],
        image.as_str(),
        "the tag ignored"
    );
    assert_eq!(agent_image(&objects), image);
    let objects = rendered(&["--set", "image.tag=0.2.0"]);
    assert_eq!(
        agent_image(&objects),
        "ghcr.io/example/offering-operator:0.2.0"
    );

    // agentImage with a tag or digest is the agents' own, in the operator's
    // repository unless it names one.
    let objects = rendered(&["--set", "image.tag=0.2.0,agentImage.tag=0.1.0"]);
    assert_eq!(
        operator_container(&objects)["image"],
        "ghcr.io/example/offering-operator:0.2.0"
    );
    assert_eq!(
        agent_image(&objects),
        "ghcr.io/example/offering-operator:0.1.0"
    );
    let objects = rendered(&[
        "--set",
        &format!(
            "agentImage.repository=registry.example.com/agent,agentImage.tag=v1,agentImage.digest={digest}"
        ),
    ]);
    assert_eq!(
        agent_image(&objects),
        format!("registry.example.com/agent@{digest}")
    );
    refused(
        &["--set", "agentImage.repository=registry.example.com/agent"],
        "agentImage.repository (registry.example.com/agent) needs agentImage.tag or agentImage.digest",
    );
    refused(&["--set", "image.digest=latest"], "does not match pattern");
}

#[test]
fn common_labels_reach_every_rendered_object_but_not_the_charts_own() {
    let objects = rendered(&[
        "--set",
        "commonLabels.team=platform,commonLabels.cost-center=cc42",
        "--set",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        "--set",
        "podDisruptionBudget.enabled=true,defaultKcpSecret.name=kcp,defaultKcpSecret.kubeconfig=x",
        "--set",
        "watchNamespace=team-a",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
    ]);
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Deployment",
        "ServiceAccount",
        "Secret",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "Pod",
    ] {
        assert!(kinds.contains(kind), "no {kind} rendered: {kinds:?}");
    }
    for object in &objects {
        let labels = &object["metadata"]["labels"];
        assert_eq!(labels["team"], "platform", "{}", object["kind"]);
        assert_eq!(labels["cost-center"], "cc42", "{}", object["kind"]);
        assert_eq!(labels["app.kubernetes.io/name"], "offering-operator");
    }
    let deployment = one(&objects, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["team"],
        "platform"
    );
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "offering-operator", "app.kubernetes.io/instance": "rel"}),
        "the selector stays the chart's"
    );
    refused(
        &["--set", "commonLabels.app\\.kubernetes\\.io/instance=other"],
        "commonLabels cannot set app.kubernetes.io/instance",
    );
}

#[test]
fn a_pod_disruption_budget_is_opt_in() {
    assert!(of_kind(&rendered(&[]), "PodDisruptionBudget").is_empty());
    let objects = rendered(&["--set", "podDisruptionBudget.enabled=true"]);
    let budget = one(&objects, "PodDisruptionBudget");
    assert_eq!(
        budget["spec"],
        json!({
            "maxUnavailable": 1,
            "selector": {"matchLabels": {
                "app.kubernetes.io/name": "offering-operator",
                "app.kubernetes.io/instance": "rel"}}
        })
    );
    let objects = rendered(&[
        "--set",
        "podDisruptionBudget.enabled=true,replicaCount=3,podDisruptionBudget.minAvailable=2",
    ]);
    let spec = &one(&objects, "PodDisruptionBudget")["spec"];
    assert_eq!(spec["minAvailable"], 2);
    assert!(spec.get("maxUnavailable").is_none());
    let objects = rendered(&[
        "--set",
        "podDisruptionBudget.enabled=true,podDisruptionBudget.maxUnavailable=50%",
    ]);
    assert_eq!(
        one(&objects, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        "50%"
    );
    refused(
        &[
            "--set",
            "podDisruptionBudget.enabled=true,podDisruptionBudget.minAvailable=1,podDisruptionBudget.maxUnavailable=1",
        ],
        "set minAvailable or maxUnavailable, not both",
    );
}

#[test]
fn a_service_monitor_needs_the_prometheus_operators_crd() {
    assert!(of_kind(&rendered(&[]), "ServiceMonitor").is_empty());
    refused(
        &["--set", "serviceMonitor.enabled=true"],
        "serviceMonitor.enabled=true needs the prometheus-operator's ServiceMonitor CRD",
    );
    let objects = rendered(&[
        "--set",
        "serviceMonitor.enabled=true,serviceMonitor.labels.release=prom",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ]);
    let monitors = of_kind(&objects, "ServiceMonitor");
    assert_eq!(monitors.len(), 2, "the operator's and the agents'");
    for monitor in &monitors {
        assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    }
    let agents = monitors
        .iter()
        .find(|m| m["metadata"]["name"] == "rel-offering-operator-agents")
        .expect("the agents' ServiceMonitor");
    assert_eq!(agents["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        agents["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "sync-agent"
    );
    assert!(of_kind(&rendered(&[]), "PrometheusRule").is_empty());
    refused(
        &["--set", "prometheusRule.enabled=true"],
        "prometheusRule.enabled=true needs the prometheus-operator's PrometheusRule CRD",
    );
}

#[test]
fn token_renewal_must_come_before_the_tokens_lifetime() {
    let message = "agent.tokenRenewBefore (2h) must be shorter than agent.tokenLifetime (90m)";
    refused(
        &["--set", "agent.tokenLifetime=90m,agent.tokenRenewBefore=2h"],
        message,
    );
    refused(
        &["--set", "agent.tokenLifetime=8h,agent.tokenRenewBefore=8h"],
        "must be shorter than agent.tokenLifetime (8h)",
    );
    let objects = rendered(&["--set", "agent.tokenLifetime=2h,agent.tokenRenewBefore=90m"]);
    let args = &operator_container(&objects)["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--agent-token-renew-before=90m")),
        "{args}"
    );
}

#[test]
fn the_resync_interval_reaches_the_operator_and_zero_is_refused() {
    let has = |objects: &[Value], arg: &str| {
        operator_container(objects)["args"]
            .as_array()
            .unwrap()
            .contains(&json!(arg))
    };
    assert!(has(&rendered(&[]), "--resync-interval=60s"));
    assert!(has(
        &rendered(&["--set", "resyncInterval=5m"]),
        "--resync-interval=5m"
    ));
    refused(
        &["--set", "resyncInterval=0s"],
        "'0s' does not match pattern",
    );
}

#[test]
fn several_replicas_need_leader_election() {
    refused(
        &["--set", "replicaCount=2,leaderElection=false"],
        "replicaCount=2 needs leaderElection=true",
    );
    let objects = rendered(&["--set", "replicaCount=2"]);
    assert_eq!(one(&objects, "Deployment")["spec"]["replicas"], 2);
    rendered(&["--set", "replicaCount=1,leaderElection=false"]);
}

/// Runs `program` with `args` against the service cluster's kube-apiserver
/// (its admin kubeconfig in `KUBECONFIG`) and returns its standard output.
fn on_service_cluster(env: &EnvFile, program: &Path, args: &[&str]) -> String {
    run_with_env(
        program,
        args,
        &[("KUBECONFIG", env.service_kubeconfig.as_os_str())],
    )
}

/// The server reports a Kubernetes release, as the chart's kubeVersion needs.
async fn assert_released_version(client: &Client) {
    let version = client.apiserver_version().await.expect("/version");
    let release = version.git_version.strip_prefix('v').and_then(|v| {
        v.split('.')
            .map(str::parse::<u32>)
            .collect::<Result<Vec<_>, _>>()
            .ok()
    });
    assert!(
        release.is_some_and(|parts| parts.len() == 3),
        "the kube-apiserver reports {}, not a release: rebuild the servers with e2e/env/build.sh",
        version.git_version
    );
}

async fn names<K>(api: &Api<K>, names: &[&str]) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut present = Vec::new();
    for name in names {
        if api.get_opt(name).await.expect("get").is_some() {
            present.push((*name).to_string());
        }
    }
    present
}

fn container_args(deployment: &Deployment) -> Vec<String> {
    let pod = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    pod.containers[0].args.clone().unwrap_or_default()
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_the_chart_and_keeps_crds_and_offerings() {
    let env = EnvFile::load().unwrap();
    let client = e2e::service::client(&env).await.unwrap();
    assert_released_version(&client).await;
    let release = format!("chart-{}", random_hex(4).unwrap());
    let namespace = release.clone();
    let name = format!("{release}-offering-operator");
    let helm = helm();
    let install = [
        "install",
        &release,
        "charts/offering-operator",
        "--namespace",
        &namespace,
        "--create-namespace",
    ];
    on_service_cluster(&env, &helm, &install);

    // Defaults: what the chart says, nothing optional.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = deployments
        .get(&name)
        .await
        .expect("the operator's Deployment");
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("ghcr.io/example/offering-operator:0.1.0")
    );
    let args = container_args(&deployment);
    assert!(
        args.contains(&"--enable-leader-election".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"--log-level=info".to_string()), "{args:?}");
    assert!(
        args.contains(&"--agent-image=ghcr.io/example/offering-operator:0.1.0".to_string()),
        "the agents follow the operator's image by default: {args:?}"
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    accounts.get(&name).await.expect("the ServiceAccount");
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let cluster_role = cluster_roles.get(&name).await.expect("the ClusterRole");
    let grants = |role: &ClusterRole, resource: &str| {
        role.rules
            .iter()
            .flatten()
            .any(|rule| rule.resources.iter().flatten().any(|r| r == resource))
    };
    assert!(
        grants(&cluster_role, "deployments"),
        "cluster-wide by default"
    );
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = bindings.get(&name).await.expect("the ClusterRoleBinding");
    assert_eq!(binding.subjects.unwrap()[0].name, name);
    let roles: Api<Role> = Api::namespaced(client.clone(), &namespace);
    roles
        .get(&format!("{name}-leader-election"))
        .await
        .expect("the leader-election Role");
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    assert!(
        budgets.get_opt(&name).await.unwrap().is_none(),
        "no PDB by default"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        "publishedofferings.offering.syncagent.dev",
        "publishedresources.syncagent.kcp.io",
    ] {
        let object = crds.get(crd).await.expect("the chart's CRD");
        let established = object.status.and_then(|s| s.conditions).is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        assert!(established, "{crd} not established");
    }

    // An offering of a team's namespace, which must outlive the operator.
    let offerings_namespace = e2e::service::create_namespace(&client, "chart-offerings")
        .await
        .unwrap();
    let sample = std::fs::read_to_string(repo().join("config/samples/crd-service.yaml")).unwrap();
    apply_stream(&client, &sample, &offerings_namespace, false).await;

    // Upgrade with non-default values: each lands. The agents' image is
    // pinned to the installed one while the operator's moves.
    let values = format!(
        "replicaCount=2,logLevel=debug,image.tag=0.2.0,agentImage.tag=0.1.0,\
         podDisruptionBudget.enabled=true,serviceAccount.annotations.team=platform,\
         watchNamespace={offerings_namespace},priorityClassName=offering-operator,\
         commonLabels.cost-center=cc42"
    );
    let mut upgrade = install.to_vec();
    upgrade[0] = "upgrade";
    upgrade.pop();
    upgrade.extend(["--set", &values]);
    upgrade.extend([
        "--set-json",
        r#"extraArgs=["--agent-token-lifetime=12h"]"#,
        "--set-json",
        r#"extraEnv=[{"name":"HTTPS_PROXY","value":"http://proxy:3128"}]"#,
        "--set-json",
        r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"ScheduleAnyway","labelSelector":{"matchLabels":{"app.kubernetes.io/name":"offering-operator"}}}]"#,
    ]);
    on_service_cluster(&env, &helm, &upgrade);
    let deployment = deployments.get(&name).await.unwrap();
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("ghcr.io/example/offering-operator:0.2.0")
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("offering-operator")
    );
    let spread = pod
        .topology_spread_constraints
        .as_deref()
        .unwrap_or_default();
    assert_eq!(spread.len(), 1, "{spread:?}");
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    let env_vars = pod.containers[0].env.as_deref().unwrap_or_default();
    assert!(
        env_vars
            .iter()
            .any(|e| e.name == "HTTPS_PROXY" && e.value.as_deref() == Some("http://proxy:3128")),
        "{env_vars:?}"
    );
    let args = container_args(&deployment);
    for arg in [
        "--log-level=debug".to_string(),
        format!("--watch-namespace={offerings_namespace}"),
        "--agent-image=ghcr.io/example/offering-operator:0.1.0".to_string(),
        "--agent-token-lifetime=12h".to_string(),
    ] {
        assert!(args.contains(&arg), "{arg} not in {args:?}");
    }
    assert_eq!(
        deployment.labels().get("cost-center").map(String::as_str),
        Some("cc42")
    );
    let budget = budgets.get(&name).await.expect("the PDB");
    let budget_labels = budget.labels().clone();
    assert_eq!(
        budget.spec.unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    let account = accounts.get(&name).await.unwrap();
    assert_eq!(
        account.annotations().get("team").map(String::as_str),
        Some("platform")
    );
    let labelled = [
        account.labels().clone(),
        budget_labels,
        cluster_roles.get(&name).await.unwrap().labels().clone(),
        bindings.get(&name).await.unwrap().labels().clone(),
        roles
            .get(&format!("{name}-leader-election"))
            .await
            .unwrap()
            .labels()
            .clone(),
    ];
    for labels in labelled {
        assert_eq!(
            labels.get("cost-center").map(String::as_str),
            Some("cc42"),
            "{labels:?}"
        );
    }
    let team_roles: Api<Role> = Api::namespaced(client.clone(), &offerings_namespace);
    let team_role = team_roles
        .get(&name)
        .await
        .expect("the Role in watchNamespace");
    assert!(
        team_role.rules.iter().flatten().any(|rule| rule
            .resources
            .iter()
            .flatten()
            .any(|r| r == "deployments")),
        "the namespaced rules moved to the Role"
    );
    let cluster_role = cluster_roles.get(&name).await.unwrap();
    assert!(
        !grants(&cluster_role, "deployments"),
        "and left the ClusterRole"
    );

    // Uninstall: the chart's objects go; CRDs and offerings stay.
    on_service_cluster(
        &env,
        &helm,
        &["uninstall", &release, "--namespace", &namespace],
    );
    poll_until("the chart's objects gone", DEFAULT_TIMEOUT, async || {
        let left = [
            names(&deployments, &[&name]).await,
            names(&accounts, &[&name]).await,
            names(&budgets, &[&name]).await,
            names(&cluster_roles, &[&name]).await,
            names(&bindings, &[&name]).await,
            names(&team_roles, &[&name]).await,
            names(&roles, &[&format!("{name}-leader-election")]).await,
        ]
        .concat();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {left:?}"))
        }
    })
    .await
    .unwrap();
    for crd in [
        "publishedofferings.offering.syncagent.dev",
        "publishedresources.syncagent.kcp.io",
    ] {
        assert!(crds.get_opt(crd).await.unwrap().is_some(), "{crd} kept");
    }
    let offerings: Api<PublishedOffering> = Api::namespaced(client.clone(), &offerings_namespace);
    offerings
        .get("certificates")
        .await
        .expect("the offering is kept");
    offerings
        .delete("certificates", &DeleteParams::default())
        .await
        .unwrap();
    e2e::service::delete_namespace(&client, &offerings_namespace)
        .await
        .unwrap();
    e2e::service::delete_namespace(&client, &namespace)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_documented_crd_upgrade_applies_the_charts_crds_server_side() {
    let env = EnvFile::load().unwrap();
    let output = on_service_cluster(
        &env,
        Path::new("kubectl"),
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "charts/offering-operator/crds/",
        ],
    );
    for crd in [
        "publishedofferings.offering.syncagent.dev",
        "publishedresources.syncagent.kcp.io",
    ] {
        assert!(
            output.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{crd} serverside-applied"
            )),
            "{output}"
        );
    }
}

/// `helm install` of the chart for the scene's namespace, its operator image
/// a placeholder: the pod runner runs the binary built in `target/`.
fn install_for(env: &EnvFile, release: &str, namespace: &str) {
    let values = format!(
        "watchNamespace={namespace},image.repository=example.invalid/offering-operator,image.tag=e2e,logFormat=text"
    );
    let install = [
        "install",
        release,
        "charts/offering-operator",
        "--namespace",
        namespace,
        "--set",
        &values,
    ];
    on_service_cluster(env, &helm(), &install);
}

#[tokio::test]
async fn an_offering_deleted_after_uninstall_waits_for_a_reinstalled_operator() {
    let provider = OfferingScene::provider("chart-reinstall")
        .await
        .expect("provider");
    let env = provider.env.clone();
    let namespace = provider.namespace.clone();
    let release = format!(
        "op-{}",
        &provider.agent_name[provider.agent_name.len() - 8..]
    );
    let deployment = format!("{release}-offering-operator");
    install_for(&env, &release, &namespace);
    let operator = Pod::run(&env, &provider.service, &namespace, &deployment)
        .await
        .expect("the installed operator runs");
    let scene = OfferingScene { provider, operator };
    let _agent = scene
        .publish("widgets", json!({"agent": {"replicas": 1}}))
        .await
        .expect("ready");

    // Uninstalled with the offering still there: the offering stays, with
    // the operator's finalizer; deleted now, nothing can finish it.
    let OfferingScene { provider, operator } = scene;
    drop(operator);
    on_service_cluster(
        &env,
        &helm(),
        &["uninstall", &release, "--namespace", &namespace],
    );
    let offerings: Api<PublishedOffering> = Api::namespaced(provider.service.clone(), &namespace);
    offerings
        .delete("widgets", &DeleteParams::default())
        .await
        .expect("delete");
    let terminating = offerings.get("widgets").await.expect("still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(
        terminating.finalizers(),
        ["offering.syncagent.dev/cleanup"],
        "held by the operator's finalizer"
    );

    // The documented way out: install the operator again; it cleans up.
    install_for(&env, &release, &namespace);
    let operator = Pod::run(&env, &provider.service, &namespace, &deployment)
        .await
        .expect("the reinstalled operator runs");
    let scene = OfferingScene { provider, operator };
    poll_until(
        "the offering to be cleaned up",
        KCP_SLOW_TIMEOUT,
        async || match offerings
            .get_opt("widgets")
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(o) => Err(format!("still there: {:?}", o.finalizers())),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; operator log: {}", scene.operator.process.log_tail()));
    let agents: Api<Deployment> = Api::namespaced(scene.provider.service.clone(), &namespace);
    assert!(
        agents
            .get_opt("widgets-sync-agent")
            .await
            .unwrap()
            .is_none(),
        "the agent's Deployment went with the offering"
    );
    on_service_cluster(
        &env,
        &helm(),
        &["uninstall", &release, "--namespace", &namespace],
    );
}

/// Metric names a PromQL expression reads; Grafana's `$__rate_interval` is
/// taken as 5m. An expression that does not parse is an error.
fn metrics_read(expression: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            let selector = match expr {
                Expr::VectorSelector(selector) => Some(selector),
                Expr::MatrixSelector(matrix) => Some(&matrix.vs),
                _ => None,
            };
            if let Some(name) = selector.and_then(|s| s.name.clone()) {
                self.0.insert(name);
            }
            Ok(true)
        }
    }
    let parsed = promql_parser::parser::parse(&expression.replace("$__rate_interval", "5m"))
        .map_err(|e| format!("{expression}: {e}"))?;
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed)?;
    Ok(names.0)
}

/// The metric names in a Prometheus text exposition (histograms by their
/// `_bucket`, `_sum` and `_count` series).
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(String::from)
        .collect()
}

/// The chart's alerts and dashboard parse, the dashboard under `docs/` is
/// the chart's, and every query reads only metrics that the running
/// operator and agent expose (or Prometheus' own `up`), once an offering
/// has synced an object and failed on another.
#[tokio::test]
async fn the_alerts_and_the_dashboard_read_only_metrics_the_binaries_expose() {
    let objects = rendered(&[
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
    ]);
    let mut queries: Vec<String> = one(&objects, "PrometheusRule")["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .map(|rule| rule["expr"].as_str().expect("expr").to_string())
        .collect();
    assert!(queries.len() >= 5, "{queries:?}");
    let dashboard: Value = serde_json::from_str(
        one(&objects, "ConfigMap")["data"]["sync-agent.json"]
            .as_str()
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let documented: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docs/grafana-dashboard.json")).expect("docs"),
    )
    .expect("JSON");
    assert_eq!(dashboard, documented, "docs/ holds the chart's dashboard");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    let mut read = BTreeSet::new();
    for query in &queries {
        read.extend(metrics_read(query).unwrap_or_else(|e| panic!("does not parse: {e}")));
    }

    // An offering whose agent syncs one object and cannot name another.
    let scene = OfferingScene::new("chart-dash", &[]).await.expect("scene");
    let kcp = &scene.provider.kcp;
    let consumer = kcp
        .create_workspace("root", "dash-consumer")
        .await
        .expect("consumer");
    let group = scene.provider.group.clone();
    let agent = scene
        .publish(
            "dash",
            json!({
                "agent": {"replicas": 1},
                "resources": [{"name": "widgets", "resource": {"apiGroup": group, "kind": "Widget"},
                               "naming": {"name": "{{ .Object.spec.color }}-w"}}],
                "consumers": {"workspaces": [consumer.path]},
            }),
        )
        .await
        .expect("published");
    let widgets = scene
        .consumer_widget(&consumer.path, "good")
        .await
        .expect("widget");
    let mut bad = DynamicObject::new("bad", &scene.widgets()).within("apps");
    bad.data = json!({"spec": {"color": "Not_A_Name"}});
    widgets
        .create(&Default::default(), &bad)
        .await
        .expect("a widget its naming cannot name");
    let names = poll_until(
        "every metric the queries read",
        KCP_SLOW_TIMEOUT,
        async || {
            let mut names = exposed(&agent.process.metrics().await?);
            names.extend(exposed(&scene.operator.process.metrics().await?));
            names.insert("up".into());
            let missing: Vec<&String> = read.iter().filter(|n| !names.contains(*n)).collect();
            if missing.is_empty() {
                Ok(names)
            } else {
                Err(format!("not exposed (yet): {missing:?}"))
            }
        },
    )
    .await
    .expect("the queries read exposed metrics");
    assert!(names.contains("sync_agent_sync_errors_total"));
}

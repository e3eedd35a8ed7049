//! The README's demo: on the servers `testenv run` started, publish a
//! `Database` kind with one PublishedOffering, run the agent from the
//! Deployment the operator wrote, and follow a consumer's object to the
//! service cluster and its status back. Everything keeps running until
//! Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use e2e::env::EnvFile;
use e2e::kcp::Kcp;
use e2e::offering::start_operator;
use e2e::pod::Pod;
use e2e::poll::poll_until;
use e2e::service;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use offering_operator::api::PublishedOffering;
use serde_json::json;

const NAMESPACE: &str = "demo";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the demo.
#[derive(Parser, Debug)]
struct Cli {
    /// Exit when the demo is done instead of waiting for Ctrl-C.
    #[arg(long)]
    no_wait: bool,
}

fn step(text: &str) {
    println!("\n==> {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env = EnvFile::load()?;
    let kcp = Kcp::connect(&env).await?;
    let service = service::client(&env).await?;

    step(
        "kcp: creating the provider workspace root:demo-provider and the consumer workspace root:demo-consumer",
    );
    create_workspace(&kcp, "demo-provider").await?;
    create_workspace(&kcp, "demo-consumer").await?;

    step(
        "Service cluster: the project's CRDs, the provider's Database CRD, namespace demo, kcp credentials",
    );
    service::apply_project_crds(&service).await?;
    apply_database_crd(&service).await?;
    Api::<Namespace>::all(service.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await
        .context("creating namespace demo")?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "kcp-credentials"},
        "stringData": {"kubeconfig": std::fs::read_to_string(&env.kcp_kubeconfig)?},
    }))?;
    Api::<Secret>::namespaced(service.clone(), NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await?;

    step("Starting the operator");
    let operator = start_operator(&env, NAMESPACE, &[]).await?;
    println!("    log: {}", operator.log.display());

    step("Applying config/samples/demo-offering.yaml");
    let sample = e2e::checkout::root()?.join("config/samples/demo-offering.yaml");
    let offering: PublishedOffering = serde_saphyr::from_str(&std::fs::read_to_string(&sample)?)?;
    let offerings: Api<PublishedOffering> = Api::namespaced(service.clone(), NAMESPACE);
    offerings.create(&PostParams::default(), &offering).await?;

    step("Running the agent from the Deployment the operator wrote (databases-sync-agent)");
    poll_until("the agent's Deployment", TIMEOUT, async || {
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(service.clone(), NAMESPACE)
            .get("databases-sync-agent")
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await?;
    let agent = Pod::run(&env, &service, NAMESPACE, "databases-sync-agent").await?;
    println!("    log: {}", agent.process.log.display());

    let ready = poll_until("the offering to be Ready", TIMEOUT, async || {
        let offering = offerings
            .get("databases")
            .await
            .map_err(|e| e.to_string())?;
        let status = offering.status.clone().unwrap_or_default();
        match status.conditions.first() {
            Some(c) if c.type_ == "Ready" && c.status == "True" => Ok(offering),
            Some(c) => Err(format!("{}: {}", c.reason, c.message)),
            None => Err("no status yet".into()),
        }
    })
    .await?;
    let status = ready.status.unwrap_or_default();
    for condition in &status.conditions {
        println!(
            "    {:<17} {:<5} {}",
            condition.type_, condition.status, condition.message
        );
    }
    if let Some(export) = &status.export {
        println!(
            "    export {} in logical cluster {}",
            export.name,
            export.logical_cluster.clone().unwrap_or_default()
        );
    }

    step("Consumer: creating Database orders in root:demo-consumer, namespace shop");
    let consumer = kcp.client("root:demo-consumer")?;
    Api::<Namespace>::all(consumer.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}}))?,
        )
        .await?;
    let databases = database_resource();
    let in_kcp: Api<DynamicObject> = Api::namespaced_with(consumer, "shop", &databases);
    let mut order = DynamicObject::new("orders", &databases).within("shop");
    order.data = json!({"spec": {"engine": "postgres", "size": "10Gi"}});
    poll_until("the consumer to create orders", TIMEOUT, async || {
        in_kcp
            .create(&PostParams::default(), &order)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await?;

    let local_all: Api<DynamicObject> = Api::all_with(service.clone(), &databases);
    let copy = poll_until("the copy on the service cluster", TIMEOUT, async || {
        let list = local_all
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .next()
            .ok_or_else(|| "no copy yet".to_string())
    })
    .await?;
    let copy_namespace = copy.namespace().unwrap_or_default();
    println!(
        "    arrived on the service cluster as {copy_namespace}/{} with spec {}",
        copy.name_any(),
        copy.data["spec"]
    );

    step("Provider: its operator (played here) marks the copy Ready in status");
    let local: Api<DynamicObject> =
        Api::namespaced_with(service.clone(), &copy_namespace, &databases);
    local
        .patch_status(
            &copy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Ready", "endpoint": "orders.db.example.com:5432"}}),
            ),
        )
        .await?;
    let back = poll_until("the status in kcp", TIMEOUT, async || {
        let object = in_kcp.get("orders").await.map_err(|e| e.to_string())?;
        if object.data["status"]["phase"] == "Ready" {
            Ok(object)
        } else {
            Err("not yet".to_string())
        }
    })
    .await?;
    println!("    the consumer sees status {}", back.data["status"]);

    if cli.no_wait {
        println!(
            "\nThe demo is done; --no-wait stops the agent, the operator and both servers now."
        );
        return Ok(());
    }
    let kcp_config = env.kcp_kubeconfig.display();
    let service_config = env.service_kubeconfig.display();
    println!("\nThe demo runs on. Look around with:");
    println!(
        "    kubectl --kubeconfig {service_config} -n demo get publishedofferings,deployments,secrets"
    );
    println!("    kubectl --kubeconfig {service_config} get databases -A");
    println!(
        "    kubectl --kubeconfig {kcp_config} --server {}/clusters/root:demo-consumer get databases -A",
        kcp.url()
    );
    println!("\nPress Ctrl-C to stop the agent, the operator and both servers.");
    tokio::signal::ctrl_c().await?;
    drop(agent);
    drop(operator);
    Ok(())
}

fn database_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("demo.example.io", "v1alpha1", "Database"),
        "databases",
    )
}

async fn create_workspace(kcp: &Kcp, name: &str) -> anyhow::Result<()> {
    let workspaces: Api<sync_agent::api::kcp::tenancy_v1alpha1::Workspace> =
        Api::all(kcp.client("root")?);
    workspaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "spec": {}}))?,
        )
        .await
        .with_context(|| format!("creating workspace root:{name}"))?;
    poll_until(&format!("workspace root:{name}"), TIMEOUT, async || {
        let ws = workspaces.get(name).await.map_err(|e| e.to_string())?;
        match ws.status.map(|s| s.phase) {
            Some(phase) if phase == "Ready" => Ok(()),
            other => Err(format!("phase {other:?}")),
        }
    })
    .await
}

async fn apply_database_crd(client: &kube::Client) -> anyhow::Result<()> {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "databases.demo.example.io"},
        "spec": {
            "group": "demo.example.io",
            "names": {"kind": "Database", "plural": "databases", "singular": "database", "listKind": "DatabaseList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "engine": {"type": "string"}, "size": {"type": "string"}}},
                    "status": {"type": "object", "properties": {
                        "phase": {"type": "string"}, "endpoint": {"type": "string"}}}
                }}}
            }]
        }
    }))?;
    service::apply_crd(client, &crd).await
}

//! Scenes for the operator's tests: a provider (workspace, namespace, a
//! `Widget` CRD in a group of the test's own) with kcp credentials stored in
//! a Secret, and an operator watching the provider's namespace only.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use offering_operator::api::PublishedOffering;
use serde_json::{Value, json};

use crate::agent::{AgentProcess, Launch, free_address, project_binary};
use crate::env::EnvFile;
use crate::pod::Pod;
use crate::poll::{KCP_SLOW_TIMEOUT, poll_until};
use crate::publishing::Provider;

/// How long operator tests wait for the operator and the agent (waits that
/// include kcp binding or workspace work use `KCP_SLOW_TIMEOUT`).
pub const TIMEOUT: Duration = Duration::from_secs(90);
/// Name of the Secret with the operator's kcp kubeconfig.
pub const KCP_SECRET: &str = "kcp-admin";

/// A provider with a running operator.
pub struct OfferingScene {
    /// The provider: workspace, namespace, CRD group.
    pub provider: Provider,
    /// The operator, watching the provider's namespace: a plain process, or
    /// the chart's Deployment run by the pod runner.
    pub operator: Pod,
}

impl std::fmt::Debug for OfferingScene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfferingScene")
            .field("provider", &self.provider)
            .finish()
    }
}

impl OfferingScene {
    /// A provider with a `Widget` CRD, kcp admin credentials in the Secret
    /// [`KCP_SECRET`], and an operator started with `operator_args`.
    pub async fn new(prefix: &str, operator_args: &[&str]) -> anyhow::Result<Self> {
        let provider = Self::provider(prefix).await?;
        let operator = start_operator(&provider.env, &provider.namespace, operator_args).await?;
        Ok(Self {
            provider,
            operator: Pod::from_process(operator),
        })
    }

    /// A provider with a `Widget` CRD and kcp admin credentials in the
    /// Secret [`KCP_SECRET`], for a scene whose operator runs otherwise.
    pub async fn provider(prefix: &str) -> anyhow::Result<Provider> {
        let provider = Provider::new(prefix).await?;
        provider
            .apply_crd("Widget", &[("v1", true, true)], "color")
            .await?;
        let kubeconfig = std::fs::read_to_string(&provider.env.kcp_kubeconfig)?;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": KCP_SECRET},
            "stringData": {"kubeconfig": kubeconfig},
        }))?;
        Api::<Secret>::namespaced(provider.service.clone(), &provider.namespace)
            .create(&PostParams::default(), &secret)
            .await
            .context("storing the kcp kubeconfig")?;
        Ok(provider)
    }

    /// The offerings of the provider's namespace.
    pub fn offerings(&self) -> Api<PublishedOffering> {
        Api::namespaced(self.provider.service.clone(), &self.provider.namespace)
    }

    /// A spec publishing `Widget` from the provider's workspace with the
    /// admin credentials, merged with `extra`.
    pub fn spec(&self, extra: Value) -> Value {
        let mut spec = json!({
            "kcp": {"workspace": self.provider.workspace.path, "kubeconfigSecretRef": {"name": KCP_SECRET}},
            "resources": [{"name": "widgets", "resource": {"apiGroup": self.provider.group, "kind": "Widget"}}],
        });
        if let (Some(base), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            base.extend(extra);
        }
        spec
    }

    /// Applies the offering `name` with `spec` (server-side, as the test).
    pub async fn apply(&self, name: &str, spec: Value) -> anyhow::Result<PublishedOffering> {
        let offering = json!({
            "apiVersion": "offering.syncagent.dev/v1alpha1",
            "kind": "PublishedOffering",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.offerings()
            .patch(
                name,
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&offering),
            )
            .await
            .with_context(|| format!("applying offering {name}"))
    }

    /// Waits until the offering's condition `type_` has `status` and `reason`.
    pub async fn wait_for_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> anyhow::Result<PublishedOffering> {
        let offerings = self.offerings();
        let waited = poll_until(
            &format!("offering {name} to have {type_}={status} ({reason})"),
            // Ready covers the consumers' bindings, which is kcp's work.
            KCP_SLOW_TIMEOUT,
            async || {
                let offering = offerings.get(name).await.map_err(|e| e.to_string())?;
                let conditions = offering
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                match conditions.iter().find(|c| c.type_ == type_) {
                    Some(c) if c.status == status && c.reason == reason => Ok(offering),
                    _ => Err(format!("conditions {:?}", summary(&conditions))),
                }
            },
        )
        .await;
        waited.with_context(|| format!("operator log: {}", self.operator.process.log_tail()))
    }

    /// Deletes the offering `name` and waits until its finalizer let it go.
    pub async fn delete_and_wait(&self, name: &str) -> anyhow::Result<()> {
        let offerings = self.offerings();
        offerings
            .delete(name, &Default::default())
            .await
            .with_context(|| format!("deleting offering {name}"))?;
        let gone = poll_until(
            &format!("offering {name} to be deleted"),
            // The finalizer waits for kcp to clean up the consumers.
            KCP_SLOW_TIMEOUT,
            async || match offerings.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(o) => Err(format!("still there: {:?}", o.status.map(|s| s.conditions))),
            },
        )
        .await;
        gone.with_context(|| format!("operator log: {}", self.operator.process.log_tail()))
    }

    /// Waits for a Warning event with `reason` on the offering `name`.
    pub async fn wait_for_warning(&self, name: &str, reason: &str) -> anyhow::Result<Event> {
        let events: Api<Event> =
            Api::namespaced(self.provider.service.clone(), &self.provider.namespace);
        poll_until(
            &format!("a Warning event {reason} on offering {name}"),
            TIMEOUT,
            async || {
                let list = events
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                list.items
                    .into_iter()
                    .find(|e| {
                        e.type_.as_deref() == Some("Warning")
                            && e.reason.as_deref() == Some(reason)
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    })
                    .ok_or_else(|| "no such event yet".to_string())
            },
        )
        .await
    }

    /// Applies the offering `name` (the default spec merged with `extra`),
    /// runs its agent and waits until it is Ready; returns the agent.
    pub async fn publish(&self, name: &str, extra: Value) -> anyhow::Result<Pod> {
        self.apply(name, self.spec(extra)).await?;
        let agent = self.run_agent(name).await?;
        self.wait_for_condition(name, "Ready", "True", "Ready")
            .await?;
        Ok(agent)
    }

    /// Runs the agent from the Deployment the operator wrote for `offering`.
    pub async fn run_agent(&self, offering: &str) -> anyhow::Result<Pod> {
        let deployment = format!("{offering}-sync-agent");
        let env = &self.provider.env;
        let service = &self.provider.service;
        let namespace = &self.provider.namespace;
        poll_until(&format!("Deployment {deployment}"), TIMEOUT, async || {
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(service.clone(), namespace)
                .get(&deployment)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await?;
        Pod::run(env, service, namespace, &deployment).await
    }
}

/// `type=status(reason)` for each condition.
fn summary(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Vec<String> {
    conditions
        .iter()
        .map(|c| format!("{}={}({}: {})", c.type_, c.status, c.reason, c.message))
        .collect()
}

/// Starts an operator that watches `namespace` only.
pub async fn start_operator(
    env: &EnvFile,
    namespace: &str,
    extra_args: &[&str],
) -> anyhow::Result<AgentProcess> {
    let metrics_address = free_address()?;
    let health_address = free_address()?;
    let mut args = vec![
        "run".to_string(),
        format!("--kubeconfig={}", env.service_kubeconfig.display()),
        format!("--watch-namespace={namespace}"),
        "--agent-image=example.invalid/sync-agent:e2e".into(),
        format!("--metrics-address={metrics_address}"),
        format!("--health-address={health_address}"),
        "--log-format=text".into(),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    AgentProcess::launch(Launch {
        binary: project_binary("offering-operator")?,
        args,
        env: vec![("RUST_LOG".into(), "info,offering_operator=debug".into())],
        // Two operators of one namespace (leader election) keep their own logs.
        log: env.log_dir.join(format!(
            "operator-{namespace}-{}.log",
            health_address.replace([':', '.'], "-")
        )),
        metrics_address,
        health_address,
    })
    .await
}

impl OfferingScene {
    /// The `Widget` kind, the same in kcp and on the service cluster.
    pub fn widgets(&self) -> kube::api::ApiResource {
        let gvk = kube::core::GroupVersionKind::gvk(&self.provider.group, "v1", "Widget");
        kube::api::ApiResource::from_gvk_with_plural(&gvk, "widgets")
    }

    /// Creates a namespace `apps` in the consumer workspace `path` and a
    /// widget in it, retrying while the binding settles; returns its API.
    pub async fn consumer_widget(
        &self,
        path: &str,
        name: &str,
    ) -> anyhow::Result<Api<kube::api::DynamicObject>> {
        let client = self.provider.kcp.client(path)?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let namespace = serde_json::from_value(json!({"metadata": {"name": "apps"}}))?;
        if namespaces.get_opt("apps").await?.is_none() {
            namespaces
                .create(&PostParams::default(), &namespace)
                .await?;
        }
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client, "apps", &self.widgets());
        let mut widget = kube::api::DynamicObject::new(name, &self.widgets()).within("apps");
        widget.data = json!({"spec": {"color": "blue"}});
        poll_until(
            &format!("widget {name} created in {path}"),
            KCP_SLOW_TIMEOUT,
            async || {
                api.create(&PostParams::default(), &widget)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        Ok(api)
    }

    /// The service-cluster copies of widgets from the logical cluster `cluster`.
    pub async fn copies_from(
        &self,
        cluster: &str,
    ) -> anyhow::Result<Vec<kube::api::DynamicObject>> {
        let api: Api<kube::api::DynamicObject> =
            Api::all_with(self.provider.service.clone(), &self.widgets());
        let selector = format!(
            "{}={cluster}",
            sync_agent::sync::identity::REMOTE_CLUSTER_LABEL
        );
        Ok(api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }
}

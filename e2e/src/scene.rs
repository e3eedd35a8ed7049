//! A ready scene for sync tests: a provider whose `Widget` CRD is published
//! by a running agent, and consumer workspaces bound to it.

use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use sync_agent::sync::identity;

use crate::agent::AgentProcess;
use crate::kcp::TestWorkspace;
use crate::poll::{KCP_SLOW_TIMEOUT, poll_until};
use crate::publishing::Provider;

/// How long sync tests wait for the agent.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A provider with a published `Widget` kind, a running agent and one
/// consumer workspace bound to it.
pub struct Scene {
    /// The provider.
    pub provider: Provider,
    /// Its running agent.
    pub agent: AgentProcess,
    /// The `Widget` kind (the same in kcp and on the service cluster).
    pub resource: ApiResource,
}

impl std::fmt::Debug for Scene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scene")
            .field("provider", &self.provider)
            .finish()
    }
}

impl Scene {
    /// A scene whose PublishedResource for `Widget` has the extra spec fields `pr_extra`.
    pub async fn new(prefix: &str, pr_extra: serde_json::Value) -> Self {
        Self::with_agent_args(prefix, pr_extra, &[]).await
    }

    /// The same, with extra flags for the agent.
    pub async fn with_agent_args(prefix: &str, pr_extra: serde_json::Value, args: &[&str]) -> Self {
        let provider = Provider::new(prefix).await.expect("provider");
        provider
            .apply_crd("Widget", &[("v1", true, true)], "color")
            .await
            .expect("CRD");
        let mut settings = provider.agent_settings();
        settings
            .extra_args
            .extend(args.iter().map(|a| a.to_string()));
        let agent = AgentProcess::start(&provider.env, &settings)
            .await
            .expect("agent starts");
        let mut spec = json!({"resource": {"apiGroup": provider.group, "kind": "Widget"}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), pr_extra.as_object()) {
            spec.extend(extra.clone());
        }
        provider
            .publish_pr("widgets", spec)
            .await
            .expect("the PublishedResource in the export");
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

    /// A consumer workspace bound to the export, with a namespace `apps`.
    pub async fn consumer(&self, prefix: &str) -> (TestWorkspace, Client) {
        self.consumer_on(prefix, None).await
    }

    /// [`Scene::consumer`] on the kcp shard `shard`.
    pub async fn consumer_on(&self, prefix: &str, shard: Option<&str>) -> (TestWorkspace, Client) {
        self.provider
            .bind_consumer_with_apps(prefix, shard)
            .await
            .expect("consumer with namespace apps")
    }

    /// The widgets in a consumer's namespace `apps`.
    pub fn kcp_widgets(&self, client: &Client) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), "apps", &self.resource)
    }

    /// Creates a widget in `apps`, retrying while the binding settles.
    pub async fn create_widget(&self, client: &Client, name: &str, color: &str) {
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

    /// The local copy of a consumer's widget in `apps`, found by its identity labels.
    pub async fn local_copy(&self, cluster: &str, name: &str) -> DynamicObject {
        let key = identity::RemoteKey {
            cluster: cluster.into(),
            namespace: "apps".into(),
            name: name.into(),
        };
        let api: Api<DynamicObject> = Api::all_with(self.provider.service.clone(), &self.resource);
        let selector = key.selector(&self.provider.agent_name);
        // The first copy after a binding waits for kcp to list the
        // endpoint and the agent to start watching it: kcp's slow work.
        poll_until(
            &format!("the local copy of {name}"),
            KCP_SLOW_TIMEOUT,
            async || {
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
            },
        )
        .await
        .expect("local copy")
    }

    /// The widgets in a service-cluster namespace.
    pub fn local_api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.provider.service.clone(), namespace, &self.resource)
    }
}

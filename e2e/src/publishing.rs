//! Scenes for the agent's publishing tests: a provider workspace with an
//! empty APIExport, a service-cluster namespace, CRDs in a group of the
//! test's own, and PublishedResources selected for one agent.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sync_agent::api::kcp::apis_v1alpha1::APIResourceSchema;
use sync_agent::api::kcp::apis_v1alpha2::{APIBinding, APIExport, APIExportSpec};
use sync_agent::api::published_resource::PublishedResource;

use crate::agent::{AgentProcess, AgentSettings};
use crate::env::{EnvFile, random_hex};
use crate::kcp::{Kcp, TestWorkspace};
use crate::poll::{DEFAULT_TIMEOUT, poll_until};
use crate::service;

/// A provider: workspace and export in kcp, namespace and API group on the
/// service cluster.
pub struct Provider {
    /// The test environment.
    pub env: EnvFile,
    /// kcp as admin.
    pub kcp: Kcp,
    /// The provider workspace.
    pub workspace: TestWorkspace,
    /// Client of the provider workspace.
    pub kcp_client: Client,
    /// Name of the APIExport (and of its endpoint slice).
    pub export: String,
    /// Service-cluster client.
    pub service: Client,
    /// Service-cluster namespace for the agent.
    pub namespace: String,
    /// An API group no other test uses, for the test's CRDs.
    pub group: String,
    /// Agent name and selector value.
    pub agent_name: String,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("workspace", &self.workspace.path)
            .field("export", &self.export)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Provider {
    /// Creates the workspace, an empty APIExport, the namespace and the
    /// project's CRDs on the service cluster.
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        let env = EnvFile::load()?;
        let kcp = Kcp::connect(&env).await?;
        // On the root shard, so that where the export lives is the same in
        // every run; consumers are placed by each test.
        let workspace = kcp
            .create_workspace_on("root", prefix, env.kcp_shards.first().map(String::as_str))
            .await?;
        let kcp_client = kcp.client(&workspace.path)?;
        let suffix = random_hex(4)?;
        let group = format!("{prefix}-{suffix}.e2e.example");
        let export = group.clone();
        Api::<APIExport>::all(kcp_client.clone())
            .create(
                &PostParams::default(),
                &APIExport::new(&export, APIExportSpec::default()),
            )
            .await
            .context("creating the APIExport")?;
        let service = service::client(&env).await?;
        service::apply_project_crds(&service).await?;
        let namespace = service::create_namespace(&service, prefix).await?;
        Ok(Self {
            env,
            kcp,
            workspace,
            kcp_client,
            export,
            service,
            namespace,
            group,
            agent_name: format!("{prefix}-{suffix}"),
        })
    }

    /// Settings for an agent of this provider.
    pub fn agent_settings(&self) -> AgentSettings {
        AgentSettings {
            name: self.agent_name.clone(),
            endpoint_slice: self.export.clone(),
            workspace: self.workspace.path.clone(),
            namespace: self.namespace.clone(),
            selector: format!("agent={}", self.agent_name),
            extra_args: Vec::new(),
            log_filter: "info,sync_agent=debug".into(),
        }
    }

    /// Starts an agent for this provider.
    pub async fn start_agent(&self) -> anyhow::Result<AgentProcess> {
        AgentProcess::start(&self.env, &self.agent_settings()).await
    }

    /// Creates (or replaces) a CRD `<plural>.<group>` with the given
    /// versions `(name, served, storage)`, each with a `spec.<field>` string
    /// property (other spec fields are kept too, as a provider's operator
    /// might add them) and a status subresource, and waits until it is established.
    pub async fn apply_crd(
        &self,
        kind: &str,
        versions: &[(&str, bool, bool)],
        field: &str,
    ) -> anyhow::Result<String> {
        let plural = format!("{}s", kind.to_lowercase());
        let name = format!("{plural}.{}", self.group);
        let versions: Vec<Value> = versions
            .iter()
            .map(|(version, served, storage)| {
                json!({
                    "name": version, "served": served, "storage": storage,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                                 "properties": {field: {"type": "string"}}},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }}}
                })
            })
            .collect();
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": self.group,
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(),
                          "listKind": format!("{kind}List"), "shortNames": [format!("{}x", kind.to_lowercase())]},
                "scope": "Namespaced",
                "versions": versions
            }
        }))?;
        service::apply_crd(&self.service, &crd).await?;
        Ok(name)
    }

    /// Creates a PublishedResource `<agent>-<name>` selected for this
    /// provider's agent and returns its name.
    pub async fn create_pr(&self, name: &str, spec: Value) -> anyhow::Result<String> {
        let name = format!("{}-{name}", self.agent_name);
        let pr: PublishedResource = serde_json::from_value(json!({
            "apiVersion": "syncagent.kcp.io/v1alpha1",
            "kind": "PublishedResource",
            "metadata": {"name": name, "labels": {"agent": self.agent_name}},
            "spec": spec,
        }))?;
        self.prs()
            .create(&PostParams::default(), &pr)
            .await
            .with_context(|| format!("creating PublishedResource {name}"))?;
        Ok(name)
    }

    /// The PublishedResource API of the service cluster.
    pub fn prs(&self) -> Api<PublishedResource> {
        Api::all(self.service.clone())
    }

    /// Waits until a PublishedResource's status names a schema other than
    /// `not`, and returns it.
    pub async fn wait_for_schema_name(
        &self,
        pr: &str,
        not: Option<&str>,
    ) -> anyhow::Result<String> {
        let prs = self.prs();
        poll_until(
            &format!("PublishedResource {pr} to name a schema"),
            DEFAULT_TIMEOUT,
            async || {
                let object = prs.get(pr).await.map_err(|e| e.to_string())?;
                let status = object.status.clone().unwrap_or_default();
                match status.resource_schema_name {
                    Some(name) if Some(name.as_str()) != not => Ok(name),
                    _ => Err(format!("status {status:?}")),
                }
            },
        )
        .await
    }

    /// Waits until a condition of a PublishedResource has `status`, and
    /// returns its reason and message.
    pub async fn wait_for_condition(
        &self,
        pr: &str,
        type_: &str,
        status: &str,
    ) -> anyhow::Result<(String, String)> {
        let prs = self.prs();
        poll_until(
            &format!("PublishedResource {pr} {type_}={status}"),
            DEFAULT_TIMEOUT,
            async || {
                let object = prs.get(pr).await.map_err(|e| e.to_string())?;
                let conditions = object.status.and_then(|s| s.conditions).unwrap_or_default();
                conditions
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
                    .map(|c| (c.reason.clone(), c.message.clone()))
                    .ok_or_else(|| format!("conditions {conditions:?}"))
            },
        )
        .await
    }

    /// Reads an APIResourceSchema from the provider workspace.
    pub async fn schema(&self, name: &str) -> anyhow::Result<APIResourceSchema> {
        Ok(Api::<APIResourceSchema>::all(self.kcp_client.clone())
            .get(name)
            .await?)
    }

    /// Reads the APIExport.
    pub async fn export(&self) -> anyhow::Result<APIExport> {
        Ok(Api::<APIExport>::all(self.kcp_client.clone())
            .get(&self.export)
            .await?)
    }

    /// Waits until the APIExport satisfies `check`, which reports what it saw.
    pub async fn wait_for_export(
        &self,
        what: &str,
        check: impl Fn(&APIExport) -> Result<(), String>,
    ) -> anyhow::Result<APIExport> {
        let api: Api<APIExport> = Api::all(self.kcp_client.clone());
        poll_until(what, Duration::from_secs(60), async || {
            let export = api.get(&self.export).await.map_err(|e| e.to_string())?;
            check(&export).map(|()| export)
        })
        .await
    }

    /// Creates the PublishedResource `name` with `spec` and waits until its
    /// schema is published and in the export; returns its name.
    pub async fn publish_pr(&self, name: &str, spec: Value) -> anyhow::Result<String> {
        let pr = self.create_pr(name, spec).await?;
        let schema = self.wait_for_schema_name(&pr, None).await?;
        self.wait_for_export("the schema in the export", |e| {
            if e.spec.resources.iter().any(|r| r.schema == schema) {
                Ok(())
            } else {
                Err(format!("{schema} missing"))
            }
        })
        .await?;
        Ok(pr)
    }

    /// Creates a consumer workspace bound to the export, accepting every
    /// claim the export makes now (verbs and identity hash copied), and waits
    /// until the binding is bound.
    pub async fn bind_consumer(&self, prefix: &str) -> anyhow::Result<TestWorkspace> {
        self.bind_consumer_on(prefix, None).await
    }

    /// [`Provider::bind_consumer`] with the workspace on the kcp shard
    /// `shard` (where kcp places it when `None`).
    pub async fn bind_consumer_on(
        &self,
        prefix: &str,
        shard: Option<&str>,
    ) -> anyhow::Result<TestWorkspace> {
        let consumer = self.kcp.create_workspace_on("root", prefix, shard).await?;
        self.bind(&consumer).await?;
        Ok(consumer)
    }

    /// [`Provider::bind_consumer_on`], plus a namespace `apps` in the
    /// consumer workspace; returns the workspace and a client of it.
    pub async fn bind_consumer_with_apps(
        &self,
        prefix: &str,
        shard: Option<&str>,
    ) -> anyhow::Result<(TestWorkspace, Client)> {
        let consumer = self.bind_consumer_on(prefix, shard).await?;
        let client = self.kcp.client(&consumer.path)?;
        create_apps_namespace(&client).await?;
        Ok((consumer, client))
    }

    /// Binds an existing workspace to the export, accepting every claim the
    /// export makes now, and waits until the binding is bound.
    pub async fn bind(&self, consumer: &TestWorkspace) -> anyhow::Result<()> {
        let export = self.export().await?;
        let claims: Vec<Value> = export
            .spec
            .permission_claims
            .iter()
            .map(|c| {
                json!({"group": c.group, "resource": c.resource, "verbs": c.verbs,
                       "identityHash": c.identity_hash, "selector": {"matchAll": true}, "state": "Accepted"})
            })
            .collect();
        let binding: APIBinding = serde_json::from_value(json!({
            "apiVersion": "apis.kcp.io/v1alpha2",
            "kind": "APIBinding",
            "metadata": {"name": self.export},
            "spec": {"reference": {"export": {"path": self.workspace.path, "name": self.export}},
                     "permissionClaims": claims}
        }))?;
        let api: Api<APIBinding> = Api::all(self.kcp.client(&consumer.path)?);
        api.create(&PostParams::default(), &binding)
            .await
            .context("creating the APIBinding")?;
        crate::kcp::wait_for_bound(&api, &self.export).await?;
        Ok(())
    }

    /// Deletes what the provider made: PublishedResources, CRDs, namespace
    /// and workspace.
    pub async fn cleanup(&self) -> anyhow::Result<()> {
        let selector = format!("agent={}", self.agent_name);
        let prs = self.prs();
        for pr in prs
            .list(&kube::api::ListParams::default().labels(&selector))
            .await?
        {
            prs.delete(&pr.name_any(), &DeleteParams::default()).await?;
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.service.clone());
        for crd in crds.list(&Default::default()).await? {
            if crd.spec.group == self.group {
                crds.delete(&crd.name_any(), &DeleteParams::default())
                    .await?;
            }
        }
        service::delete_namespace(&self.service, &self.namespace).await?;
        self.workspace.delete(&self.kcp).await
    }
}

/// Creates the namespace `apps` the tests' consumer objects live in.
pub async fn create_apps_namespace(client: &Client) -> anyhow::Result<()> {
    let namespace = serde_json::from_value(json!({"metadata": {"name": "apps"}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .context("creating namespace apps")?;
    Ok(())
}

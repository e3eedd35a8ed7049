//! Clients for kcp workspaces and virtual workspaces, and throw-away
//! workspaces for tests.

use anyhow::Context;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use sync_agent::api::kcp::core_v1alpha1::{LOGICAL_CLUSTER_NAME, LogicalCluster};
use sync_agent::api::kcp::tenancy_v1alpha1::{
    PHASE_READY, Workspace, WorkspaceLocation, WorkspaceSpec,
};

use crate::env::{EnvFile, random_hex};
use crate::poll::{KCP_SLOW_TIMEOUT, poll_until};
use sync_agent::api::kcp::apis_v1alpha2::APIBinding;

/// The test kcp, reached as its admin.
#[derive(Clone)]
pub struct Kcp {
    /// Admin configuration without a workspace path (kcp's `base` context).
    base: Config,
}

impl std::fmt::Debug for Kcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kcp")
            .field("url", &self.base.cluster_url)
            .finish()
    }
}

impl Kcp {
    /// Connects as kcp's admin, from the env file's kubeconfig.
    pub async fn connect(env: &EnvFile) -> anyhow::Result<Self> {
        let kubeconfig = Kubeconfig::read_from(&env.kcp_kubeconfig)?;
        let options = KubeConfigOptions {
            context: Some("base".into()),
            ..Default::default()
        };
        let base = Config::from_custom_kubeconfig(kubeconfig, &options).await?;
        Ok(Self { base })
    }

    /// The base URL of kcp, for example `https://127.0.0.1:6443`.
    pub fn url(&self) -> String {
        self.base
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string()
    }

    /// Admin configuration for an arbitrary URL on the kcp server, such as a
    /// virtual workspace endpoint.
    pub fn config_at(&self, url: &str) -> anyhow::Result<Config> {
        let mut config = self.base.clone();
        config.cluster_url = url.parse().with_context(|| format!("invalid URL {url}"))?;
        Ok(config)
    }

    /// Admin client for the workspace with the given path or logical cluster name.
    pub fn client(&self, workspace: &str) -> anyhow::Result<Client> {
        let config = self.config_at(&format!("{}/clusters/{workspace}", self.url()))?;
        Ok(Client::try_from(config)?)
    }

    /// Creates a workspace `<prefix>-<random>` under `parent` and waits until
    /// it is ready and serves requests.
    pub async fn create_workspace(
        &self,
        parent: &str,
        prefix: &str,
    ) -> anyhow::Result<TestWorkspace> {
        self.create_workspace_on(parent, prefix, None).await
    }

    /// [`Self::create_workspace`] on the kcp shard named `shard` (one of the
    /// env file's `kcp_shards`), or where kcp places it when `None`.
    pub async fn create_workspace_on(
        &self,
        parent: &str,
        prefix: &str,
        shard: Option<&str>,
    ) -> anyhow::Result<TestWorkspace> {
        let name = format!("{prefix}-{}", random_hex(4)?);
        let workspaces: Api<Workspace> = Api::all(self.client(parent)?);
        // Shards carry their name as the label `name`.
        let location = shard.map(|shard| WorkspaceLocation {
            selector: Some(LabelSelector {
                match_labels: Some([("name".to_string(), shard.to_string())].into()),
                ..Default::default()
            }),
        });
        let workspace = Workspace::new(
            &name,
            WorkspaceSpec {
                location,
                ..Default::default()
            },
        );
        workspaces
            .create(&PostParams::default(), &workspace)
            .await
            .with_context(|| format!("creating workspace {name} in {parent}"))?;
        let cluster = poll_until(
            &format!("workspace {parent}:{name} to be ready"),
            KCP_SLOW_TIMEOUT,
            async || {
                let ws = workspaces.get(&name).await.map_err(|e| e.to_string())?;
                let phase = ws
                    .status
                    .as_ref()
                    .map(|s| s.phase.clone())
                    .unwrap_or_default();
                if phase == PHASE_READY && !ws.spec.cluster.is_empty() {
                    Ok(ws.spec.cluster)
                } else {
                    Err(format!("phase {phase:?}"))
                }
            },
        )
        .await?;
        let path = format!("{parent}:{name}");
        let logical_clusters: Api<LogicalCluster> = Api::all(self.client(&path)?);
        poll_until(
            &format!("workspace {path} to serve requests"),
            KCP_SLOW_TIMEOUT,
            async || {
                logical_clusters
                    .get(LOGICAL_CLUSTER_NAME)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        Ok(TestWorkspace {
            parent: parent.to_string(),
            name,
            path,
            cluster,
        })
    }
}

/// Waits until the APIBinding `name` reaches phase `Bound`.
pub async fn wait_for_bound(bindings: &Api<APIBinding>, name: &str) -> anyhow::Result<()> {
    poll_until(
        &format!("APIBinding {name} to be bound"),
        KCP_SLOW_TIMEOUT,
        async || {
            let phase = bindings
                .get(name)
                .await
                .map_err(|e| e.to_string())?
                .status
                .map(|s| s.phase)
                .unwrap_or_default();
            if phase == "Bound" {
                Ok(())
            } else {
                Err(format!("phase {phase:?}"))
            }
        },
    )
    .await
}

/// A workspace made for one test.
#[derive(Debug, Clone)]
pub struct TestWorkspace {
    /// Path of the parent workspace.
    pub parent: String,
    /// Name of the Workspace object in the parent.
    pub name: String,
    /// Full path, `<parent>:<name>`.
    pub path: String,
    /// Logical cluster name.
    pub cluster: String,
}

impl TestWorkspace {
    /// Deletes the workspace (and everything in it).
    pub async fn delete(&self, kcp: &Kcp) -> anyhow::Result<()> {
        let workspaces: Api<Workspace> = Api::all(kcp.client(&self.parent)?);
        workspaces
            .delete(&self.name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting workspace {}", self.path))?;
        Ok(())
    }
}

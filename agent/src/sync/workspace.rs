//! What the consumer's workspace says about a kcp object before it is
//! synced: whether it passes the PublishedResource's resource and namespace
//! filters (the namespace's labels are read from kcp), and the workspace's
//! path for `enableWorkspacePaths`.

use kube::api::{Api, DynamicObject};
use kube::core::SelectorExt;
use kube::{Client, ResourceExt};

use super::config::WorkerConfig;
use super::error::SyncError;

/// Whether the kcp object passes the resource and namespace filters.
pub async fn filters_match(
    config: &WorkerConfig,
    client: &Client,
    remote: &DynamicObject,
) -> Result<bool, SyncError> {
    if let Some(selector) = &config.resource_filter
        && !selector.matches(remote.labels())
    {
        return Ok(false);
    }
    if let (Some(selector), Some(namespace)) = (&config.namespace_filter, remote.namespace()) {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let labels = namespaces
            .get(&namespace)
            .await
            .map_err(SyncError::Kcp)?
            .metadata
            .labels
            .unwrap_or_default();
        if !selector.matches(&labels) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The workspace path of the object's workspace (`kcp.io/path` of its LogicalCluster).
pub async fn workspace_path(client: &Client) -> Result<String, SyncError> {
    let cluster = Api::<crate::api::kcp::core_v1alpha1::LogicalCluster>::all(client.clone())
        .get(crate::api::kcp::core_v1alpha1::LOGICAL_CLUSTER_NAME)
        .await
        .map_err(SyncError::Kcp)?;
    Ok(cluster
        .annotations()
        .get(crate::api::kcp::PATH_ANNOTATION)
        .cloned()
        .unwrap_or_default())
}

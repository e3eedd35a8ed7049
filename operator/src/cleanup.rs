//! Deleting an offering: consumer bindings and the export first (only with
//! `deletionPolicy: Delete`, while the agent still runs to release its
//! finalizers on consumer objects), then the agent's kcp identity, then
//! everything on the service cluster.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use sync_agent::api::kcp::apis_v1alpha1::APIResourceSchema;
use sync_agent::api::kcp::apis_v1alpha2::APIExport;
use sync_agent::api::kcp::tenancy_v1alpha1::Workspace;

use crate::api::{DeletionPolicy, PublishedOffering};
use crate::consumers;
use crate::credentials;
use crate::error::Error;
use crate::kcp::Kcp;
use crate::names::{KCP_NAMESPACE, Names, SKIP_KCP_CLEANUP_ANNOTATION};
use crate::provision::Settings;
use crate::validate::kcp_secret_location;
use crate::write::{delete_if_present, delete_owned, is_ours};
use sync_agent::api::published_resource::PublishedResource;

/// Removes what `offering` provisioned. `Ok(Some(why))` when the kcp side
/// was skipped because the operator cannot reach it any more (its
/// credentials are gone); the caller reports that as a Warning event.
pub async fn cleanup(
    client: &Client,
    offering: &PublishedOffering,
    settings: &Settings,
) -> Result<Option<String>, Error> {
    let Ok(names) = Names::of(offering) else {
        // An offering that never had names never provisioned anything.
        return Ok(None);
    };
    let skipped = match load_kcp(client, offering, settings).await {
        Ok(kcp) => cleanup_kcp(client, &kcp, offering, &names).await?,
        Err(error @ (Error::KcpSecretMissing(_) | Error::InvalidKcpKubeconfig(_))) => {
            Some(format!("{error}; {}", left_in_kcp(offering, &names)))
        }
        Err(error) => return Err(error),
    };
    cleanup_cluster(client, &names).await?;
    Ok(skipped)
}

/// What stays in kcp when its side of the cleanup is skipped.
fn left_in_kcp(offering: &PublishedOffering, names: &Names) -> String {
    format!(
        "the agent's ServiceAccount and ClusterRoles named syncagent:{} stay in {}{} and must be removed by hand",
        names.export,
        offering.spec.kcp.workspace,
        if offering.spec.deletion_policy == DeletionPolicy::Delete {
            format!(
                ", and so do the APIExport {} and the consumers' bindings",
                names.export
            )
        } else {
            String::new()
        }
    )
}

async fn load_kcp(
    client: &Client,
    offering: &PublishedOffering,
    settings: &Settings,
) -> Result<Kcp, Error> {
    let location = kcp_secret_location(offering, settings.default_kcp_secret.as_ref())?;
    Ok(Kcp::new(credentials::load(client, &location).await?))
}

async fn cleanup_kcp(
    client: &Client,
    kcp: &Kcp,
    offering: &PublishedOffering,
    names: &Names,
) -> Result<Option<String>, Error> {
    let path = offering.spec.kcp.workspace.as_str();
    if offering
        .annotations()
        .get(SKIP_KCP_CLEANUP_ANNOTATION)
        .map(String::as_str)
        == Some("true")
    {
        return Ok(Some(format!(
            "as {SKIP_KCP_CLEANUP_ANNOTATION} asks, nothing is removed in kcp: {}",
            left_in_kcp(offering, names)
        )));
    }
    let provider = kcp.client(path)?;
    match kcp.logical_cluster(&provider, path).await {
        Ok(_) => {}
        // kcp refuses entry into a workspace that does not exist just as
        // into one the operator may not enter: only an ancestor tells.
        Err(Error::WorkspaceNotFound(why)) => {
            if workspace_is_gone(kcp, path).await {
                return Ok(Some(format!(
                    "workspace {path} no longer exists, and with it the APIExport {} and the agent's identity{}",
                    names.export,
                    if offering.spec.deletion_policy == DeletionPolicy::Delete {
                        "; consumers' bindings to the export stay in their workspaces"
                    } else {
                        ""
                    }
                )));
            }
            let never_there = if offering
                .status
                .as_ref()
                .and_then(|s| s.export.as_ref())
                .is_none()
            {
                " (if the offering never got there, say the path was mistyped, nothing is left behind)"
            } else {
                ""
            };
            return Err(Error::KcpForbidden(format!(
                "{why}, so the offering's objects there cannot be removed; fix the operator's kcp credentials, or annotate the offering {SKIP_KCP_CLEANUP_ANNOTATION}=true to delete it and leave them{never_there}"
            )));
        }
        Err(error) => return Err(error),
    }
    let kcp_error = |what: &str| {
        let what = format!("{what} in {path}");
        move |error| Error::kcp(&what, error)
    };
    if offering.spec.deletion_policy == DeletionPolicy::Delete {
        let mut paths: BTreeSet<String> = offering
            .status
            .as_ref()
            .and_then(|s| s.consumers.as_ref())
            .map(|c| c.workspaces.iter().cloned().collect())
            .unwrap_or_default();
        let desired = consumers::desired(kcp, offering).await;
        paths.extend(desired.paths);
        paths.extend(desired.waiting);
        let mut remaining = Vec::new();
        for consumer in &paths {
            if !consumers::unbind(kcp, consumer, names).await? {
                remaining.push(consumer.clone());
            }
        }
        if !remaining.is_empty() {
            let agent = if agent_is_available(client, names).await {
                "the agent runs and releases them"
            } else {
                "but no agent replica is available to release them: restore the agent's Deployment (a deleted namespace takes it along; delete offerings before their namespace)"
            };
            return Err(Error::Deleting(format!(
                "waiting for kcp to delete the APIBindings in {}; kcp deletes the consumers' objects first, {agent}",
                remaining.join(", ")
            )));
        }
        delete_export(&provider, names)
            .await
            .map_err(kcp_error("deleting the APIExport and its schemas"))?;
    }
    let bindings: Api<ClusterRoleBinding> = Api::all(provider.clone());
    let roles: Api<ClusterRole> = Api::all(provider.clone());
    for name in [
        &names.kcp_agent_role,
        &names.kcp_access_binding,
        &names.kcp_bind_role,
    ] {
        delete_owned(&bindings, name, names)
            .await
            .map_err(kcp_error("deleting the agent's ClusterRoleBindings"))?;
    }
    for name in [&names.kcp_agent_role, &names.kcp_bind_role] {
        delete_owned(&roles, name, names)
            .await
            .map_err(kcp_error("deleting the agent's ClusterRoles"))?;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(provider.clone(), KCP_NAMESPACE);
    delete_owned(&accounts, &names.kcp_service_account, names)
        .await
        .map_err(kcp_error("deleting the agent's ServiceAccount"))?;
    Ok(None)
}

/// Whether the offering's agent Deployment has an available replica.
async fn agent_is_available(client: &Client, names: &Names) -> bool {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &names.namespace);
    deployments
        .get_opt(&names.agent_workload)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.status)
        .and_then(|s| s.available_replicas)
        .is_some_and(|n| n > 0)
}

/// Whether the workspace at `path` is gone: the nearest ancestor the
/// operator may read has no child on the way to it (deleting a workspace
/// deletes the ones below it too).
async fn workspace_is_gone(kcp: &Kcp, path: &str) -> bool {
    let mut child = path;
    while let Some((parent, name)) = child.rsplit_once(':') {
        let Ok(client) = kcp.client(parent) else {
            return false;
        };
        match Api::<Workspace>::all(client).get(name).await {
            Ok(_) => return false,
            // A 404 for this very Workspace, not one for an API not served.
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return status
                    .details
                    .as_ref()
                    .is_some_and(|d| d.kind == "workspaces" && d.name == name);
            }
            Err(kube::Error::Api(status)) if status.code == 403 => child = parent,
            Err(_) => return false,
        }
    }
    false
}

/// Deletes the export's schemas that no other export in the workspace
/// refers to, then the export (if this offering's): a retry after a failure
/// still finds the export and with it the schemas left to delete.
async fn delete_export(provider: &kube::Client, names: &Names) -> Result<(), kube::Error> {
    let exports: Api<APIExport> = Api::all(provider.clone());
    let Some(export) = exports.get_opt(&names.export).await? else {
        return Ok(());
    };
    if !is_ours(&export, names) {
        return Ok(());
    }
    let in_use: BTreeSet<String> = exports
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|other| other.name_any() != names.export)
        .flat_map(|other| other.spec.resources.iter().map(|r| r.schema.clone()))
        .collect();
    let schemas: Api<APIResourceSchema> = Api::all(provider.clone());
    for resource in &export.spec.resources {
        if !in_use.contains(&resource.schema) {
            delete_if_present(&schemas, &resource.schema).await?;
        }
    }
    delete_if_present(&exports, &names.export).await
}

/// Deletes `name` when its labels name this offering.
async fn delete_labelled<K>(api: &Api<K>, name: &str, names: &Names) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.get_opt(name).await? {
        Some(object) if names.labels_name_this(object.labels()) => {
            delete_if_present(api, name).await
        }
        _ => Ok(()),
    }
}

async fn cleanup_cluster(client: &Client, names: &Names) -> Result<(), Error> {
    let err = |what: &'static str| move |error| Error::service(what, error);
    let published: Api<PublishedResource> = Api::all(client.clone());
    for resource in published
        .list(&ListParams::default().labels(&names.children_selector()))
        .await
        .map_err(err("listing the offering's PublishedResources"))?
    {
        delete_if_present(&published, &resource.name_any())
            .await
            .map_err(err("deleting a PublishedResource"))?;
    }
    let ns = names.namespace.as_str();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    delete_labelled(&deployments, &names.agent_workload, names)
        .await
        .map_err(err("deleting the agent's Deployment"))?;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    delete_labelled(&services, &names.metrics_service, names)
        .await
        .map_err(err("deleting the metrics Service"))?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    delete_labelled(&budgets, &names.agent_workload, names)
        .await
        .map_err(err("deleting the agent's PodDisruptionBudget"))?;
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    delete_labelled(&cluster_bindings, &names.cluster_role, names)
        .await
        .map_err(err("deleting the agent's ClusterRoleBinding"))?;
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    delete_labelled(&cluster_roles, &names.cluster_role, names)
        .await
        .map_err(err("deleting the agent's ClusterRole"))?;
    let role_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    delete_labelled(&role_bindings, &names.agent_workload, names)
        .await
        .map_err(err("deleting the agent's RoleBinding"))?;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    delete_labelled(&roles, &names.agent_workload, names)
        .await
        .map_err(err("deleting the agent's Role"))?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    delete_labelled(&accounts, &names.agent_workload, names)
        .await
        .map_err(err("deleting the agent's ServiceAccount"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    delete_labelled(&secrets, &names.kcp_secret, names)
        .await
        .map_err(err("deleting the agent's kcp Secret"))?;
    Ok(())
}

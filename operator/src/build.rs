//! The build stage of an offering's reconcile, pure: every object the
//! operator writes for the offering, in kcp and on the service cluster, as
//! one [`Desired`], and the objects it owns but no longer wants
//! ([`Orphans`]). Consumer APIBindings are built per workspace by
//! `consumers`, from the export as applied.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::Value;
use sync_agent::api::published_resource::PublishedResource;

use crate::api::PublishedOffering;
use crate::credentials;
use crate::desired::cluster;
use crate::desired::kcp::{self as kcp_objects, DEFAULT_BIND_GROUPS};
use crate::error::Error;
use crate::fetch::{Brought, Facts};
use crate::kcp::Kcp;
use crate::names::Names;

/// Everything the operator writes for one offering (no secret data: the
/// token is added by the apply stage).
#[derive(Clone, Debug)]
pub struct Desired {
    /// The agents' namespace in the provider workspace, when it is missing.
    pub kcp_namespace: Option<Namespace>,
    /// The agent's ServiceAccount in kcp.
    pub kcp_service_account: ServiceAccount,
    /// The agent's ClusterRole in kcp.
    pub kcp_agent_role: ClusterRole,
    /// Binds the agent's ClusterRole in kcp.
    pub kcp_agent_binding: ClusterRoleBinding,
    /// Lets the agent into the provider workspace.
    pub kcp_access_binding: ClusterRoleBinding,
    /// The `bind` permission on the export.
    pub kcp_bind_role: ClusterRole,
    /// Grants `bind` to the consumers' groups; `None` when none may bind.
    pub kcp_bind_binding: Option<ClusterRoleBinding>,
    /// The operator's share of the APIExport.
    pub export: Value,
    /// The agent's kcp Secret without its data: the apply stage fills in a
    /// token when one is due.
    pub agent_secret: Secret,
    /// The agent's kcp kubeconfig (its token is read from a file).
    pub agent_kubeconfig: String,
    /// The agent's ServiceAccount.
    pub service_account: ServiceAccount,
    /// The agent's ClusterRole on the service cluster.
    pub cluster_role: ClusterRole,
    /// Binds the agent's ClusterRole.
    pub cluster_role_binding: ClusterRoleBinding,
    /// The agent's Role for its Lease.
    pub role: Role,
    /// Binds the agent's Role.
    pub role_binding: RoleBinding,
    /// One PublishedResource per offered resource.
    pub published_resources: Vec<PublishedResource>,
    /// The agent's Deployment.
    pub deployment: Deployment,
    /// The agent's metrics Service.
    pub metrics_service: Service,
    /// The agent pods' PodDisruptionBudget, when it keeps one.
    pub disruption_budget: Option<PodDisruptionBudget>,
    /// What the operator owns and no longer wants.
    pub orphans: Orphans,
}

/// Objects the offering owns that its spec no longer asks for, by name:
/// PublishedResources of dropped resources, and kcp identity objects the
/// offering's owner annotation marks but the build does not give (the bind
/// binding once no group may bind, names an earlier version gave). The
/// other objects are named after the offering itself, whose name and
/// export name cannot change, and go with the cleanup. Rules for dropped
/// kinds go with the next apply of the ClusterRole (its rules are atomic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Orphans {
    /// kcp ClusterRoles.
    pub kcp_roles: Vec<String>,
    /// kcp ClusterRoleBindings.
    pub kcp_bindings: Vec<String>,
    /// kcp ServiceAccounts in the agents' namespace.
    pub kcp_accounts: Vec<String>,
    /// PublishedResources.
    pub published_resources: Vec<String>,
    /// The agent pods' PodDisruptionBudget, once the offering has one
    /// replica or switches it off.
    pub disruption_budget: Option<String>,
}

/// What the build needs besides the offering and the facts.
#[derive(Clone, Copy, Debug)]
pub struct AgentDefaults<'a> {
    /// Image of agents whose offering names none.
    pub image: &'a str,
    /// kcp URL for agents' kubeconfigs when they reach kcp by another
    /// address than the operator.
    pub kcp_url: Option<&'a str>,
}

/// Builds every object of `offering` from what was fetched.
pub fn build(
    offering: &PublishedOffering,
    names: &Names,
    facts: &Facts,
    kcp: &Kcp,
    defaults: AgentDefaults<'_>,
) -> Result<Desired, Error> {
    let agent_kubeconfig =
        agent_kubeconfig(kcp, facts.brought.as_ref(), offering, defaults.kcp_url)?;
    let brought_user = facts.brought.as_ref().map(|b| b.user.as_str());
    let image = offering
        .spec
        .agent
        .as_ref()
        .and_then(|a| a.image.clone())
        .unwrap_or_else(|| defaults.image.to_string());
    let bind_groups: Vec<String> = offering
        .spec
        .export
        .as_ref()
        .and_then(|e| e.bind_groups.clone())
        .unwrap_or_else(|| DEFAULT_BIND_GROUPS.iter().map(|g| g.to_string()).collect());
    let extra_claims = offering
        .spec
        .export
        .as_ref()
        .map(|e| e.permission_claims.clone())
        .unwrap_or_default();
    let mut desired = Desired {
        kcp_namespace: (!facts.kcp_namespace_exists).then(kcp_objects::namespace),
        kcp_service_account: kcp_objects::service_account(names),
        kcp_agent_role: kcp_objects::agent_cluster_role(names),
        kcp_agent_binding: kcp_objects::agent_role_binding(names, brought_user),
        kcp_access_binding: kcp_objects::access_binding(names, brought_user),
        kcp_bind_role: kcp_objects::bind_cluster_role(names),
        kcp_bind_binding: kcp_objects::bind_binding(names, &bind_groups),
        export: kcp_objects::export(names, &extra_claims),
        agent_secret: agent_secret(offering, names),
        service_account: cluster::service_account(offering, names),
        cluster_role: cluster::cluster_role(
            names,
            &facts.kinds.synced,
            &facts.kinds.related,
            cluster::clears_namespaces(offering),
        ),
        cluster_role_binding: cluster::cluster_role_binding(names),
        role: cluster::role(offering, names),
        role_binding: cluster::role_binding(offering, names),
        published_resources: cluster::published_resources(offering, names),
        deployment: cluster::deployment(offering, names, &image, &agent_kubeconfig)?,
        metrics_service: cluster::metrics_service(offering, names),
        disruption_budget: cluster::disruption_budget(offering, names),
        agent_kubeconfig,
        orphans: Orphans::default(),
    };
    desired.orphans = orphans(facts, &desired);
    Ok(desired)
}

/// The agent's kcp kubeconfig, pointed at the provider workspace: the
/// credentials the provider brings, else the operator's kcp address with a
/// minted token. `kcp_url` (the operator's `--agent-kcp-url`) replaces the
/// address of either.
fn agent_kubeconfig(
    kcp: &Kcp,
    brought: Option<&Brought>,
    offering: &PublishedOffering,
    kcp_url: Option<&str>,
) -> Result<String, Error> {
    let source = brought.map_or(kcp, |b| &b.kcp);
    let base = kcp_url
        .map(credentials::base_url)
        .unwrap_or_else(|| source.base().to_string());
    let server = format!("{base}/clusters/{}", offering.spec.kcp.workspace);
    match brought {
        None => {
            credentials::agent_kubeconfig(kcp.kubeconfig(), &server, credentials::minted_user())
        }
        Some(brought) => {
            let what = format!(
                "the agent's kcp kubeconfig in Secret {}/{}",
                brought.location.namespace, brought.location.name
            );
            let kubeconfig = brought.kcp.kubeconfig();
            credentials::current_user(kubeconfig)
                .and_then(|user| credentials::agent_kubeconfig(kubeconfig, &server, user))
                .map_err(|error| Error::InvalidAgentKubeconfig(format!("{what}: {error}")))
        }
    }
}

/// The agent's kcp Secret, before a token is put in.
fn agent_secret(offering: &PublishedOffering, names: &Names) -> Secret {
    let mut labels = names.labels();
    labels.remove("app.kubernetes.io/component");
    Secret {
        metadata: ObjectMeta {
            name: Some(names.kcp_secret.clone()),
            namespace: Some(names.namespace.clone()),
            labels: Some(labels),
            owner_references: offering.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The objects in `facts` that the offering owns and `desired` leaves out.
fn orphans(facts: &Facts, desired: &Desired) -> Orphans {
    let wanted = |objects: &[Option<&ObjectMeta>]| -> BTreeSet<String> {
        objects
            .iter()
            .flatten()
            .filter_map(|meta| meta.name.clone())
            .collect()
    };
    let stale = |kind: &str, wanted: BTreeSet<String>| -> Vec<String> {
        facts
            .kcp_owned
            .iter()
            .filter(|found| found.kind == kind && !wanted.contains(found.name()))
            .map(|found| found.name().to_string())
            .collect()
    };
    let roles = wanted(&[
        Some(desired.kcp_agent_role.meta()),
        Some(desired.kcp_bind_role.meta()),
    ]);
    let bindings = wanted(&[
        Some(desired.kcp_agent_binding.meta()),
        Some(desired.kcp_access_binding.meta()),
        desired.kcp_bind_binding.as_ref().map(|b| b.meta()),
    ]);
    let accounts = wanted(&[Some(desired.kcp_service_account.meta())]);
    let published: BTreeSet<String> = desired
        .published_resources
        .iter()
        .map(|p| p.name_any())
        .collect();
    Orphans {
        kcp_roles: stale(&ClusterRole::kind(&()), roles),
        kcp_bindings: stale(&ClusterRoleBinding::kind(&()), bindings),
        kcp_accounts: stale(&ServiceAccount::kind(&()), accounts),
        published_resources: facts
            .published_owned
            .iter()
            .filter(|name| !published.contains(*name))
            .cloned()
            .collect(),
        disruption_budget: facts
            .service_objects
            .iter()
            .find(|found| found.kind == PodDisruptionBudget::kind(&()))
            .filter(|_| desired.disruption_budget.is_none())
            .map(|found| found.name().to_string()),
    }
}

#[cfg(test)]
mod tests;

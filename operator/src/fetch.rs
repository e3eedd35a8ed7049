//! The fetch stage of an offering's reconcile, IO only: the operator's kcp
//! credentials, the provider workspace, the kinds the service cluster
//! serves, and every object the operator would write or may delete, with
//! the labels and annotations that say whose it is. The later stages decide
//! on [`Facts`], plain data that tests read from YAML fixtures.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::{Client, Resource};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sync_agent::api::kcp::apis_v1alpha2::APIExport;
use sync_agent::api::published_resource::PublishedResource;
use sync_agent::runtime::process;
use tracing::warn;

use crate::api::PublishedOffering;
use crate::credentials::{self, SecretLocation};
use crate::desired::cluster::{self, GroupResource};
use crate::error::Error;
use crate::kcp::Kcp;
use crate::names::{FIELD_MANAGER, KCP_NAMESPACE, Names};

/// What the fetch read, with the clients the apply stage writes through.
pub struct Fetched {
    /// The operator's access to kcp with the offering's credentials.
    pub kcp: Kcp,
    /// The client of the provider workspace.
    pub provider: Client,
    /// What was found.
    pub facts: Facts,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("kcp", &self.kcp)
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

/// What exists, as the pure stages see it.
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Facts {
    /// The provider workspace's logical cluster name.
    pub logical_cluster: String,
    /// The kinds of the offering, as the service cluster serves them.
    pub kinds: Kinds,
    /// PublishedResources that carry the offering's agent name.
    #[serde(default)]
    pub agent_name_holders: Vec<ObjectMeta>,
    /// The APIExport of the offering's export name, if it exists.
    #[serde(default)]
    pub export: Option<ObjectMeta>,
    /// Whether the provider workspace has the agents' namespace.
    #[serde(default)]
    pub kcp_namespace_exists: bool,
    /// The service-cluster objects of the names the offering writes
    /// (see [`targets`]), those that exist.
    #[serde(default)]
    pub service_objects: Vec<Found>,
    /// The agent's kcp Secret, if it exists.
    #[serde(default)]
    pub agent_secret: Option<Secret>,
    /// kcp identity objects carrying this offering's owner annotation.
    #[serde(default)]
    pub kcp_owned: Vec<Found>,
    /// Names of the PublishedResources labelled as this offering's.
    #[serde(default)]
    pub published_owned: Vec<String>,
    /// The agent's own kcp credentials, when the provider brings them.
    #[serde(skip)]
    pub brought: Option<Brought>,
}

/// The agent's own kcp credentials (`spec.agent.kcpKubeconfigSecretRef`).
#[derive(Clone, Debug)]
pub struct Brought {
    /// Where they are.
    pub location: SecretLocation,
    /// The kubeconfig they came in (its address and CA are the agent's).
    pub kcp: Kcp,
    /// Their identity on the operator's own connection to kcp, which is
    /// what the operator checks them with.
    pub identity: kube::Config,
    /// The user kcp reports for them in the provider workspace.
    pub user: String,
}

impl std::fmt::Debug for Facts {
    /// Shows the agent's Secret by its metadata only: its data is a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facts")
            .field("logical_cluster", &self.logical_cluster)
            .field("kinds", &self.kinds)
            .field("agent_name_holders", &self.agent_name_holders)
            .field("export", &self.export)
            .field("kcp_namespace_exists", &self.kcp_namespace_exists)
            .field("service_objects", &self.service_objects)
            .field(
                "agent_secret",
                &self.agent_secret.as_ref().map(|s| &s.metadata),
            )
            .field("kcp_owned", &self.kcp_owned)
            .field("published_owned", &self.published_owned)
            .field("brought", &self.brought)
            .finish()
    }
}

/// An existing object: its kind and metadata.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Found {
    /// Its kind, e.g. `ClusterRole`.
    pub kind: String,
    /// Its metadata as read.
    pub metadata: ObjectMeta,
}

impl Found {
    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}

/// The kinds of an offering on the service cluster.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Kinds {
    /// The published kinds the agent syncs.
    #[serde(default)]
    pub synced: BTreeSet<GroupResource>,
    /// The kinds of related objects.
    #[serde(default)]
    pub related: BTreeSet<GroupResource>,
    /// Published kinds the service cluster does not serve.
    #[serde(default)]
    pub missing: Vec<String>,
}

/// A service-cluster object the offering writes, by kind and name.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Its kind.
    pub resource: ApiResource,
    /// Its namespace; `None` when cluster-scoped.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

/// The service-cluster objects the offering writes, besides the agent's
/// Secret (read whole, for its token): each is checked for a foreign
/// owner before anything is written.
pub fn targets(offering: &PublishedOffering, names: &Names) -> Vec<Target> {
    fn target<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> Target {
        Target {
            resource: ApiResource::erase::<K>(&()),
            namespace: namespace.map(Into::into),
            name: name.into(),
        }
    }
    let ns = Some(names.namespace.as_str());
    let mut targets = vec![
        target::<ServiceAccount>(ns, &names.agent_workload),
        target::<ClusterRole>(None, &names.cluster_role),
        target::<ClusterRoleBinding>(None, &names.cluster_role),
        target::<Role>(ns, &names.agent_workload),
        target::<RoleBinding>(ns, &names.agent_workload),
    ];
    targets.extend(
        offering
            .spec
            .resources
            .iter()
            .map(|r| target::<PublishedResource>(None, &names.published_resource(&r.name))),
    );
    targets.push(target::<Deployment>(ns, &names.agent_workload));
    targets.push(target::<Service>(ns, &names.metrics_service));
    targets.push(target::<PodDisruptionBudget>(ns, &names.agent_workload));
    targets
}

/// Reads everything the offering's reconcile decides on: the service
/// cluster first, then kcp with the credentials at `kcp_secret`.
pub async fn fetch(
    client: &Client,
    offering: &PublishedOffering,
    names: &Names,
    kcp_secret: &SecretLocation,
    brought_secret: Option<&SecretLocation>,
) -> Result<Fetched, Error> {
    let service = |what: &'static str| move |error| Error::service(what, error);
    let published: Api<PublishedResource> = Api::all(client.clone());
    let agent_name_holders =
        list_metadata(&published, &cluster::published_resource_selector(names))
            .await
            .map_err(service("listing PublishedResources by agent name"))?;
    let published_owned = list_metadata(&published, &names.children_selector())
        .await
        .map_err(service("listing the offering's PublishedResources"))?
        .into_iter()
        .filter_map(|meta| meta.name)
        .collect();
    let mut service_objects = Vec::new();
    for target in targets(offering, names) {
        let api: Api<DynamicObject> = match &target.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &target.resource),
            None => Api::all_with(client.clone(), &target.resource),
        };
        let what = format!("reading {} {}", target.resource.kind, target.name);
        if let Some(found) = api
            .get_metadata_opt(&target.name)
            .await
            .map_err(|error| Error::service(&what, error))?
        {
            service_objects.push(Found {
                kind: target.resource.kind.clone(),
                metadata: found.metadata,
            });
        }
    }
    let agent_secret = Api::<Secret>::namespaced(client.clone(), &names.namespace)
        .get_opt(&names.kcp_secret)
        .await
        .map_err(service("reading the agent's kcp Secret"))?;
    let kinds = resolve_kinds(client, offering).await?;

    let kcp = Kcp::new(credentials::load(client, kcp_secret).await?);
    let path = offering.spec.kcp.workspace.as_str();
    let provider = kcp.client(path)?;
    let logical_cluster = kcp.logical_cluster(&provider, path).await?;
    let brought = match brought_secret {
        Some(location) => Some(brought(client, location, path, &kcp).await?),
        None => None,
    };
    let kcp_error = |what: &str| {
        let what = format!("{what} in {path}");
        move |error| Error::kcp(&what, error)
    };
    let export = Api::<APIExport>::all(provider.clone())
        .get_metadata_opt(&names.export)
        .await
        .map_err(kcp_error(&format!("reading APIExport {}", names.export)))?
        .map(|export| export.metadata);
    let kcp_namespace_exists = Api::<Namespace>::all(provider.clone())
        .get_metadata_opt(KCP_NAMESPACE)
        .await
        .map_err(kcp_error("reading namespace"))?
        .is_some();
    let managed = format!("app.kubernetes.io/managed-by={FIELD_MANAGER}");
    let mut kcp_owned = Vec::new();
    let roles = list_metadata(&Api::<ClusterRole>::all(provider.clone()), &managed)
        .await
        .map_err(kcp_error("listing the operator's ClusterRoles"))?;
    let bindings = list_metadata(&Api::<ClusterRoleBinding>::all(provider.clone()), &managed)
        .await
        .map_err(kcp_error("listing the operator's ClusterRoleBindings"))?;
    let accounts = list_metadata(
        &Api::<ServiceAccount>::namespaced(provider.clone(), KCP_NAMESPACE),
        &managed,
    )
    .await
    .map_err(kcp_error("listing the agents' ServiceAccounts"))?;
    for (kind, found) in [
        (ClusterRole::kind(&()), roles),
        (ClusterRoleBinding::kind(&()), bindings),
        (ServiceAccount::kind(&()), accounts),
    ] {
        kcp_owned.extend(
            found
                .into_iter()
                .filter(|meta| names.owns(meta))
                .map(|metadata| Found {
                    kind: kind.to_string(),
                    metadata,
                }),
        );
    }
    Ok(Fetched {
        kcp,
        provider,
        facts: Facts {
            logical_cluster,
            kinds,
            agent_name_holders,
            export,
            kcp_namespace_exists,
            service_objects,
            agent_secret,
            kcp_owned,
            published_owned,
            brought,
        },
    })
}

/// Reads the agent's own kcp credentials at `location` and asks kcp, in
/// the provider workspace at `path` and through the operator's own
/// connection (`operator`), whom they authenticate.
async fn brought(
    client: &Client,
    location: &SecretLocation,
    path: &str,
    operator: &Kcp,
) -> Result<Brought, Error> {
    let what = format!(
        "the agent's kcp kubeconfig in Secret {}/{}",
        location.namespace, location.name
    );
    let loaded = credentials::load(client, location)
        .await
        .map_err(|error| match error {
            Error::KcpSecretMissing(message) => Error::AgentKubeconfigMissing(message),
            Error::InvalidKcpKubeconfig(message) => Error::InvalidAgentKubeconfig(message),
            other => other,
        })?;
    let auth = credentials::current_user(&loaded.kubeconfig)
        .map_err(|error| Error::InvalidAgentKubeconfig(format!("{what}: {error}")))?;
    if auth.token.is_none() && auth.client_certificate_data.is_none() {
        return Err(Error::InvalidAgentKubeconfig(format!(
            "{what} carries no token and no client certificate"
        )));
    }
    let identity = operator.with_auth(auth);
    let user = operator.user_of(&identity, path).await?;
    Ok(Brought {
        location: location.clone(),
        kcp: Kcp::new(loaded),
        identity,
        user,
    })
}

/// The agent pod that holds the offering's agent Lease, if a replica does.
/// A Lease that cannot be read leaves it unknown, with a warning: it tells
/// people which pod's logs to read, and provisioning does not depend on it.
pub async fn agent_leader(client: &Client, names: &Names) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &names.namespace);
    let lease_name = sync_agent::options::lease_name(&names.agent);
    match leases.get_opt(&lease_name).await {
        Ok(lease) => lease
            .and_then(|l| l.spec?.holder_identity)
            .filter(|holder| !holder.is_empty())
            .map(|holder| process::instance_pod(&holder).to_string()),
        Err(error) => {
            warn!(lease = %lease_name, %error, "Cannot read the agent's Lease");
            None
        }
    }
}

/// The metadata of the objects `api` lists with the label `selector`.
async fn list_metadata<K>(api: &Api<K>, selector: &str) -> Result<Vec<ObjectMeta>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await?;
    Ok(list
        .items
        .into_iter()
        .map(|item: PartialObjectMeta<K>| item.metadata)
        .collect())
}

/// The kinds the agent syncs on the service cluster, the related kinds,
/// and the published kinds the service cluster does not serve.
async fn resolve_kinds(client: &Client, offering: &PublishedOffering) -> Result<Kinds, Error> {
    let mut groups: HashMap<String, Option<kube::discovery::ApiGroup>> = HashMap::new();
    let mut kinds = Kinds::default();
    for resource in &offering.spec.resources {
        let group = resource.spec.resource.api_group.clone();
        let kind = resource.spec.resource.kind.clone();
        if !groups.contains_key(&group) {
            let found = match kube::discovery::group(client, &group).await {
                Ok(found) => Some(found),
                Err(kube::Error::Discovery(_)) => None,
                Err(error) => {
                    return Err(Error::service(
                        &format!("discovering API group {group:?}"),
                        error,
                    ));
                }
            };
            groups.insert(group.clone(), found);
        }
        match groups[&group]
            .as_ref()
            .and_then(|g| g.recommended_kind(&kind))
        {
            Some((api, _)) => {
                kinds.synced.insert(GroupResource {
                    group: group.clone(),
                    resource: api.plural,
                });
            }
            None if group.is_empty() => kinds.missing.push(kind),
            None => kinds.missing.push(format!("{kind}.{group}")),
        }
    }
    kinds.related = offering
        .spec
        .resources
        .iter()
        .flat_map(|r| r.spec.related.iter().flatten())
        .map(|related| {
            let (group, resource) = related.service_group_resource();
            GroupResource { group, resource }
        })
        .collect();
    Ok(kinds)
}

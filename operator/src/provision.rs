//! The apply pipeline of one offering: credentials → provider workspace →
//! kinds → kcp objects → agent token → service-cluster objects → consumer
//! bindings, each step idempotent (server-side apply with one field manager).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta};
use kube::{Client, Resource, ResourceExt};
use sync_agent::api::kcp::apis_v1alpha1::APIExportEndpointSlice;
use sync_agent::api::kcp::apis_v1alpha2::APIExport;
use sync_agent::api::published_resource::PublishedResource;
use tracing::info;

use crate::api::{ExportStatus, PublishedOffering};
use crate::write::{apply, apply_ours, delete_if_present, delete_owned, is_ours, refuse_foreign};
use crate::credentials::{self, Rotation, SecretLocation};
use crate::desired::cluster::{self, GroupResource};
use crate::desired::kcp::{self as kcp_objects, DEFAULT_BIND_GROUPS};
use crate::error::Error;
use crate::kcp::Kcp;
use crate::names::{
    KCP_NAMESPACE, Names, OFFERING_NAME_LABEL, OFFERING_NAMESPACE_LABEL, OWNER_ANNOTATION,
};
use crate::consumers::ConsumerReport;
use crate::status::{self, SchemaState, Verdict};
use crate::validate::{Validated, validate};

/// Operator-wide settings the pipeline needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The kcp kubeconfig Secret of offerings that name none.
    pub default_kcp_secret: Option<SecretLocation>,
    /// Image of agents whose offering names none.
    pub agent_image: String,
    /// kcp URL written into agents' kubeconfigs, when agents reach kcp by
    /// another address than the operator.
    pub agent_kcp_url: Option<String>,
    /// Lifetime and renewal of agent tokens.
    pub rotation: Rotation,
}

/// What an apply found, for the status.
#[derive(Clone, Debug)]
pub struct Provisioned {
    /// Facts about the export.
    pub export: ExportStatus,
    /// Each part's verdict.
    pub parts: Vec<(&'static str, Verdict)>,
    /// Consumer workspaces.
    pub consumers: ConsumerReport,
    /// When the agent's token must be renewed.
    pub renew_at: Timestamp,
    /// Whether this apply minted a new token.
    pub rotated: bool,
}

/// The kinds the agent syncs on the service cluster, the related kinds, and
/// the published kinds the service cluster does not serve.
async fn resolve_kinds(
    client: &Client,
    offering: &PublishedOffering,
) -> Result<
    (
        BTreeSet<GroupResource>,
        BTreeSet<GroupResource>,
        Vec<String>,
    ),
    Error,
> {
    let mut groups: HashMap<String, Option<kube::discovery::ApiGroup>> = HashMap::new();
    let mut synced = BTreeSet::new();
    let mut missing = Vec::new();
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
                synced.insert(GroupResource {
                    group: group.clone(),
                    resource: api.plural,
                });
            }
            None if group.is_empty() => missing.push(kind),
            None => missing.push(format!("{kind}.{group}")),
        }
    }
    let related = offering
        .spec
        .resources
        .iter()
        .flat_map(|r| r.spec.related.iter().flatten())
        .map(|related| {
            let (group, resource) = related.service_group_resource();
            GroupResource { group, resource }
        })
        .collect();
    Ok((synced, related, missing))
}

/// Refuses an agent name that another offering's agent already goes by:
/// each agent selects PublishedResources by that name and labels its copies
/// with it, so two agents of one name would sync each other's kinds.
async fn ensure_agent_name_is_ours(client: &Client, names: &Names) -> Result<(), Error> {
    let published: Api<PublishedResource> = Api::all(client.clone());
    let selector = cluster::published_resource_selector(names);
    let taken = published
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|error| Error::service("listing PublishedResources by agent name", error))?;
    let ours = (names.namespace.as_str(), names.offering.as_str());
    let other = taken.items.iter().find_map(|resource| {
        let labels = resource.labels();
        let owner = (
            labels.get(OFFERING_NAMESPACE_LABEL)?.as_str(),
            labels.get(OFFERING_NAME_LABEL)?.as_str(),
        );
        (owner != ours).then(|| format!("{}/{}", owner.0, owner.1))
    });
    match other {
        Some(owner) => Err(Error::AgentNameConflict(format!(
            "the agent name {:?} is taken by the agent of offering {owner}; set spec.agent.name to a name of its own",
            names.agent
        ))),
        None => Ok(()),
    }
}

/// Refuses an export that exists without this offering's owner annotation.
async fn ensure_export_is_ours(
    exports: &Api<APIExport>,
    names: &Names,
    path: &str,
) -> Result<(), Error> {
    let existing = exports.get_opt(&names.export).await.map_err(|error| {
        Error::kcp(
            &format!("reading APIExport {} in {path}", names.export),
            error,
        )
    })?;
    if let Some(export) = existing
        && !is_ours(&export, names)
    {
        let held_by = export.annotations().get(OWNER_ANNOTATION).map_or(
            "nobody (it was created outside the operator)".to_string(),
            |o| format!("offering {o}"),
        );
        return Err(Error::ExportConflict(format!(
            "APIExport {} in {path} already exists and belongs to {held_by}; choose another spec.export.name, or annotate the export with {OWNER_ANNOTATION}={} to adopt it",
            names.export, names.owner
        )));
    }
    Ok(())
}

/// The agent's identity in the provider workspace (its namespace,
/// ServiceAccount, ClusterRoles and bindings) and the consumers' `bind`
/// permission, once the export is known to be this offering's.
async fn provision_identity(
    provider: &Client,
    offering: &PublishedOffering,
    names: &Names,
) -> Result<(), Error> {
    let path = offering.spec.kcp.workspace.as_str();
    let kcp_error = |what: &str| {
        let what = format!("{what} in {path}");
        move |error| Error::kcp(&what, error)
    };
    let exports: Api<APIExport> = Api::all(provider.clone());
    ensure_export_is_ours(&exports, names, path).await?;

    let namespaces: Api<Namespace> = Api::all(provider.clone());
    if namespaces
        .get_opt(KCP_NAMESPACE)
        .await
        .map_err(kcp_error("reading namespace"))?
        .is_none()
    {
        apply(&namespaces, KCP_NAMESPACE, &kcp_objects::namespace())
            .await
            .map_err(kcp_error(&format!("creating namespace {KCP_NAMESPACE}")))?;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(provider.clone(), KCP_NAMESPACE);
    apply(
        &accounts,
        &names.kcp_service_account,
        &kcp_objects::service_account(names),
    )
    .await
    .map_err(kcp_error("applying the agent's ServiceAccount"))?;
    let roles: Api<ClusterRole> = Api::all(provider.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(provider.clone());
    apply(
        &roles,
        &names.kcp_agent_role,
        &kcp_objects::agent_cluster_role(names),
    )
    .await
    .map_err(kcp_error("applying the agent's ClusterRole"))?;
    apply(
        &bindings,
        &names.kcp_agent_role,
        &kcp_objects::agent_role_binding(names),
    )
    .await
    .map_err(kcp_error("applying the agent's ClusterRoleBinding"))?;
    apply(
        &bindings,
        &names.kcp_access_binding,
        &kcp_objects::access_binding(names),
    )
    .await
    .map_err(kcp_error("applying the agent's workspace access"))?;
    apply(
        &roles,
        &names.kcp_bind_role,
        &kcp_objects::bind_cluster_role(names),
    )
    .await
    .map_err(kcp_error("applying the bind ClusterRole"))?;
    let groups: Vec<String> = offering
        .spec
        .export
        .as_ref()
        .and_then(|e| e.bind_groups.clone())
        .unwrap_or_else(|| DEFAULT_BIND_GROUPS.iter().map(|g| g.to_string()).collect());
    match kcp_objects::bind_binding(names, &groups) {
        Some(binding) => {
            apply(&bindings, &names.kcp_bind_role, &binding)
                .await
                .map_err(kcp_error("applying the bind ClusterRoleBinding"))?;
        }
        None => delete_owned(&bindings, &names.kcp_bind_role, names)
            .await
            .map_err(kcp_error("removing the bind ClusterRoleBinding"))?,
    }
    Ok(())
}

/// The export as applied, with its identity once kcp gave it one.
async fn provision_export(
    provider: &Client,
    offering: &PublishedOffering,
    names: &Names,
) -> Result<APIExport, Error> {
    let exports: Api<APIExport> = Api::all(provider.clone());
    let extra = offering
        .spec
        .export
        .as_ref()
        .map(|e| e.permission_claims.clone())
        .unwrap_or_default();
    apply(&exports, &names.export, &kcp_objects::export(names, &extra))
        .await
        .map_err(|error| {
            Error::kcp(
                &format!(
                    "applying APIExport {} in {}",
                    names.export, offering.spec.kcp.workspace
                ),
                error,
            )
        })
}

/// The endpoint URLs of the export's default slice (empty until a consumer binds).
async fn endpoint_urls(provider: &Client, names: &Names) -> Result<Vec<String>, Error> {
    let slices: Api<APIExportEndpointSlice> = Api::all(provider.clone());
    let slice = slices
        .get_opt(&names.export)
        .await
        .map_err(|error| Error::kcp("reading the export's endpoint slice", error))?;
    Ok(slice
        .and_then(|s| s.status)
        .map(|s| s.endpoints.into_iter().map(|e| e.url).collect())
        .unwrap_or_default())
}

/// The agent's kcp kubeconfig, pointed at the provider workspace.
fn agent_kubeconfig(
    kcp: &Kcp,
    offering: &PublishedOffering,
    settings: &Settings,
) -> Result<String, Error> {
    let base = settings
        .agent_kcp_url
        .as_deref()
        .map(credentials::base_url)
        .unwrap_or_else(|| kcp.base().to_string());
    let server = format!("{base}/clusters/{}", offering.spec.kcp.workspace);
    credentials::agent_kubeconfig(kcp.kubeconfig(), &server)
}

/// Makes sure the agent's Secret holds `kubeconfig` and a token that is
/// not due; returns when to renew and whether a token was minted.
async fn provision_token(
    ctx_client: &Client,
    provider: &Client,
    kubeconfig: &str,
    offering: &PublishedOffering,
    names: &Names,
    settings: &Settings,
) -> Result<(Timestamp, bool), Error> {
    let accounts: Api<ServiceAccount> = Api::namespaced(provider.clone(), KCP_NAMESPACE);
    let account = accounts
        .get(&names.kcp_service_account)
        .await
        .map_err(|error| Error::kcp("reading the agent's ServiceAccount", error))?;
    let account_uid = account.uid().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx_client.clone(), &names.namespace);
    let existing = secrets
        .get_opt(&names.kcp_secret)
        .await
        .map_err(|error| Error::service("reading the agent's kcp Secret", error))?;
    if let Some(existing) = &existing {
        refuse_foreign::<Secret>(&existing.metadata, names)?;
    }
    let now = Timestamp::now();
    if let Some(renew_at) = credentials::renewal_time(
        existing.as_ref(),
        kubeconfig,
        &account_uid,
        settings.rotation,
        now,
    ) {
        return Ok((renew_at, false));
    }
    let token = credentials::mint(provider, names, settings.rotation.lifetime).await?;
    let (data, annotations) = credentials::secret_contents(kubeconfig, &token, now, &account_uid);
    let mut labels = names.labels();
    labels.remove("app.kubernetes.io/component");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(names.kcp_secret.clone()),
            namespace: Some(names.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: offering.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    apply(&secrets, &names.kcp_secret, &secret)
        .await
        .map_err(|error| Error::service("writing the agent's kcp Secret", error))?;
    Ok((
        credentials::renew_at(now, token.expires, settings.rotation),
        true,
    ))
}

/// The agent's objects on the service cluster; returns the PublishedResources
/// and the Deployment as applied.
async fn provision_cluster(
    client: &Client,
    offering: &PublishedOffering,
    names: &Names,
    synced: &BTreeSet<GroupResource>,
    related: &BTreeSet<GroupResource>,
    image: &str,
    kubeconfig: &str,
) -> Result<(Vec<PublishedResource>, Deployment), Error> {
    let ns = names.namespace.as_str();
    let err = |what: &'static str| move |error| Error::service(what, error);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    apply_ours(
        &accounts,
        &names.agent_workload,
        &cluster::service_account(offering, names),
        names,
        "applying the agent's ServiceAccount",
    )
    .await?;
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    apply_ours(
        &cluster_roles,
        &names.cluster_role,
        &cluster::cluster_role(names, synced, related),
        names,
        "applying the agent's ClusterRole",
    )
    .await?;
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    apply_ours(
        &cluster_bindings,
        &names.cluster_role,
        &cluster::cluster_role_binding(names),
        names,
        "applying the agent's ClusterRoleBinding",
    )
    .await?;
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    apply_ours(
        &roles,
        &names.agent_workload,
        &cluster::role(offering, names),
        names,
        "applying the agent's Role",
    )
    .await?;
    let role_bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    apply_ours(
        &role_bindings,
        &names.agent_workload,
        &cluster::role_binding(offering, names),
        names,
        "applying the agent's RoleBinding",
    )
    .await?;

    let published_api: Api<PublishedResource> = Api::all(client.clone());
    let desired = cluster::published_resources(offering, names);
    let mut published = Vec::new();
    for resource in &desired {
        let name = resource.name_any();
        published.push(
            apply_ours(
                &published_api,
                &name,
                resource,
                names,
                "applying a PublishedResource",
            )
            .await?,
        );
    }
    let wanted: BTreeSet<String> = desired.iter().map(|r| r.name_any()).collect();
    let existing = published_api
        .list(&ListParams::default().labels(&names.children_selector()))
        .await
        .map_err(err("listing the offering's PublishedResources"))?;
    for stale in existing
        .items
        .iter()
        .filter(|r| !wanted.contains(&r.name_any()))
    {
        delete_if_present(&published_api, &stale.name_any())
            .await
            .map_err(err("deleting a PublishedResource no longer offered"))?;
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = apply_ours(
        &deployments,
        &names.agent_workload,
        &cluster::deployment(offering, names, image, kubeconfig),
        names,
        "applying the agent's Deployment",
    )
    .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    apply_ours(
        &services,
        &names.metrics_service,
        &cluster::metrics_service(offering, names),
        names,
        "applying the agent's metrics Service",
    )
    .await?;
    Ok((published, deployment))
}

/// How each PublishedResource stands, by entry name.
fn schema_states(
    offering: &PublishedOffering,
    names: &Names,
    published: &[PublishedResource],
) -> Vec<(String, SchemaState)> {
    let by_name: BTreeMap<String, &PublishedResource> =
        published.iter().map(|p| (p.name_any(), p)).collect();
    offering
        .spec
        .resources
        .iter()
        .map(|resource| {
            let conditions = by_name
                .get(&names.published_resource(&resource.name))
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let failed = conditions.iter().find(|c| c.status == "False");
            let state = match failed {
                Some(c) => SchemaState::Failed(c.reason.clone(), c.message.clone()),
                None if conditions.iter().any(|c| {
                    c.type_ == sync_agent::api::published_resource::SCHEMA_PUBLISHED_CONDITION
                        && c.status == "True"
                }) =>
                {
                    SchemaState::Published
                }
                None => SchemaState::Pending,
            };
            (resource.name.clone(), state)
        })
        .collect()
}

/// Runs the whole pipeline for `offering`; `tokens_issued` counts the agent
/// tokens it mints, also in a run that fails afterwards.
pub async fn provision(
    client: &Client,
    offering: &PublishedOffering,
    settings: &Settings,
    tokens_issued: &prometheus::IntCounter,
) -> Result<Provisioned, Error> {
    let Validated {
        names,
        kcp_secret: location,
    } = validate(offering, settings.default_kcp_secret.as_ref())?;
    ensure_agent_name_is_ours(client, &names).await?;
    let kcp = Kcp::new(credentials::load(client, &location).await?);
    let path = offering.spec.kcp.workspace.as_str();
    let provider = kcp.client(path)?;
    let cluster_name = kcp.logical_cluster(&provider, path).await?;
    let (synced, related, missing) = resolve_kinds(client, offering).await?;

    // The token before the export: an export that cannot be applied for a
    // while must not let the running agent's token expire.
    provision_identity(&provider, offering, &names).await?;
    let kubeconfig = agent_kubeconfig(&kcp, offering, settings)?;
    let (renew_at, rotated) =
        provision_token(client, &provider, &kubeconfig, offering, &names, settings).await?;
    if rotated {
        tokens_issued.inc();
        info!(%renew_at, "Issued the agent a new kcp token");
    }
    let credentials_verdict = Verdict::ok(
        "TokenIssued",
        format!(
            "the agent's kcp token (ServiceAccount {KCP_NAMESPACE}/{}) is renewed at {renew_at}",
            names.kcp_service_account
        ),
    );

    let export = provision_export(&provider, offering, &names).await?;
    let identity = export
        .status
        .as_ref()
        .map(|s| s.identity_hash.clone())
        .unwrap_or_default();
    let endpoint_urls = endpoint_urls(&provider, &names).await?;
    let export_verdict = if identity.is_empty() {
        Verdict::failed(
            "IdentityPending",
            format!(
                "kcp has not given APIExport {} an identity yet",
                names.export
            ),
        )
    } else {
        Verdict::ok(
            "ExportReady",
            format!("APIExport {} is ready in {path}", names.export),
        )
    };

    let image = offering
        .spec
        .agent
        .as_ref()
        .and_then(|a| a.image.clone())
        .unwrap_or_else(|| settings.agent_image.clone());
    let (published, deployment) = provision_cluster(
        client,
        offering,
        &names,
        &synced,
        &related,
        &image,
        &kubeconfig,
    )
    .await?;
    let states = schema_states(offering, &names, &published);
    let consumers = crate::consumers::reconcile(&kcp, offering, &names, &export).await;
    let parts = vec![
        (status::EXPORT_READY, export_verdict),
        (status::CREDENTIALS_READY, credentials_verdict),
        (
            status::SCHEMAS_PUBLISHED,
            status::schemas(&states, &missing),
        ),
        (status::AGENT_AVAILABLE, status::agent(&deployment)),
        (status::CONSUMERS_BOUND, status::consumers(&consumers)),
    ];
    Ok(Provisioned {
        export: ExportStatus {
            name: names.export.clone(),
            logical_cluster: Some(cluster_name),
            identity_hash: (!identity.is_empty()).then_some(identity),
            endpoint_urls,
        },
        parts,
        consumers,
        renew_at,
        rotated,
    })
}

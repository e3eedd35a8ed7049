//! The apply stage of an offering's reconcile: server-side applies every
//! object of [`Desired`] with the operator's field manager, mints the
//! agent's token when it is due, deletes the [`Orphans`], binds the
//! consumers, and returns what the status is computed from.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sync_agent::api::kcp::apis_v1alpha1::APIExportEndpointSlice;
use sync_agent::api::kcp::apis_v1alpha2::APIExport;
use sync_agent::api::published_resource::PublishedResource;
use sync_agent::kcp::Rewrites;
use tracing::info;

use crate::api::PublishedOffering;
use crate::build::{Desired, Orphans};
use crate::confirmed::ConfirmedBindings;
use crate::consumers::{self, ConsumerReport};
use crate::credentials::{self, Rotation};
use crate::error::Error;
use crate::fetch::Fetched;
use crate::kcp::{Kcp, Refusal};
use crate::names::{KCP_NAMESPACE, KUBECONFIG_KEY, Names};
use crate::write::{apply as write, delete_if_present};

/// What the apply wrote and found, for the status.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The export as applied, with its identity once kcp gave it one.
    pub export: APIExport,
    /// The endpoint URLs of the export's default slice (empty until a
    /// consumer binds).
    pub endpoint_urls: Vec<String>,
    /// The agent's minted token; `None` when the provider brings the
    /// agent's credentials.
    pub token: Option<Token>,
    /// The endpoints whose virtual workspace refuses the agent's credentials.
    pub refusals: Vec<Refusal>,
    /// The PublishedResources as applied, with the agent's status.
    pub published: Vec<PublishedResource>,
    /// The agent's Deployment as applied, with its status.
    pub deployment: Deployment,
    /// How the consumer workspaces stand.
    pub consumers: ConsumerReport,
}

/// The agent's token after an apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// When it must be renewed.
    pub renew_at: Timestamp,
    /// When it expires.
    pub expires: Timestamp,
    /// Whether this apply minted it.
    pub rotated: bool,
}

/// What an apply keeps across reconciles: the token policy, the count of
/// minted tokens and the bindings confirmed bound.
#[derive(Debug, Clone, Copy)]
pub struct Keep<'a> {
    /// When tokens are renewed and how long they live.
    pub rotation: Rotation,
    /// Agent tokens minted, also in a run that fails afterwards.
    pub tokens_issued: &'a prometheus::IntCounter,
    /// Consumer bindings seen bound lately.
    pub confirmed: &'a ConfirmedBindings,
}

/// Applies `desired` for `offering`: the kcp identity, then the token
/// (before the export: an export that cannot be applied for a while must
/// not let the running agent's token expire), the export, the service
/// cluster and the consumers' bindings.
pub async fn apply(
    client: &Client,
    fetched: &Fetched,
    offering: &PublishedOffering,
    names: &Names,
    desired: Desired,
    keep: Keep<'_>,
) -> Result<Applied, Error> {
    let Keep {
        rotation,
        tokens_issued,
        confirmed,
    } = keep;
    let Desired {
        kcp_namespace,
        kcp_service_account,
        kcp_agent_role,
        kcp_agent_binding,
        kcp_access_binding,
        kcp_bind_role,
        kcp_bind_binding,
        export,
        agent_secret,
        agent_kubeconfig,
        service_account,
        cluster_role,
        cluster_role_binding,
        role,
        role_binding,
        published_resources,
        deployment,
        metrics_service,
        disruption_budget,
        orphans:
            Orphans {
                kcp_roles: stale_roles,
                kcp_bindings: stale_bindings,
                kcp_accounts: stale_accounts,
                published_resources: stale_published,
                disruption_budget: stale_budget,
            },
    } = desired;
    let provider = &fetched.provider;
    let path = offering.spec.kcp.workspace.as_str();
    let kcp_error = |what: &str| {
        let what = format!("{what} in {path}");
        move |error| Error::kcp(&what, error)
    };

    if let Some(namespace) = &kcp_namespace {
        put(&Api::<Namespace>::all(provider.clone()), namespace)
            .await
            .map_err(kcp_error(&format!("creating namespace {KCP_NAMESPACE}")))?;
    }
    let kcp_accounts: Api<ServiceAccount> = Api::namespaced(provider.clone(), KCP_NAMESPACE);
    let account = put(&kcp_accounts, &kcp_service_account)
        .await
        .map_err(kcp_error("applying the agent's ServiceAccount"))?;
    let kcp_roles: Api<ClusterRole> = Api::all(provider.clone());
    let kcp_bindings: Api<ClusterRoleBinding> = Api::all(provider.clone());
    put(&kcp_roles, &kcp_agent_role)
        .await
        .map_err(kcp_error("applying the agent's ClusterRole"))?;
    put(&kcp_bindings, &kcp_agent_binding)
        .await
        .map_err(kcp_error("applying the agent's ClusterRoleBinding"))?;
    put(&kcp_bindings, &kcp_access_binding)
        .await
        .map_err(kcp_error("applying the agent's workspace access"))?;
    put(&kcp_roles, &kcp_bind_role)
        .await
        .map_err(kcp_error("applying the bind ClusterRole"))?;
    if let Some(binding) = &kcp_bind_binding {
        put(&kcp_bindings, binding)
            .await
            .map_err(kcp_error("applying the bind ClusterRoleBinding"))?;
    }
    delete_all(&kcp_bindings, &stale_bindings)
        .await
        .map_err(kcp_error("deleting a ClusterRoleBinding no longer wanted"))?;
    delete_all(&kcp_roles, &stale_roles)
        .await
        .map_err(kcp_error("deleting a ClusterRole no longer wanted"))?;
    delete_all(&kcp_accounts, &stale_accounts)
        .await
        .map_err(kcp_error("deleting a ServiceAccount no longer wanted"))?;

    let (token, identity) = match &fetched.facts.brought {
        // The provider's credentials, pointed at the provider workspace.
        Some(brought) => {
            let mut secret = agent_secret;
            secret.data = Some(BTreeMap::from([(
                KUBECONFIG_KEY.to_string(),
                ByteString(agent_kubeconfig.clone().into_bytes()),
            )]));
            put(&Api::namespaced(client.clone(), &names.namespace), &secret)
                .await
                .map_err(|error| Error::service("writing the agent's kcp Secret", error))?;
            (None, brought.identity.clone())
        }
        None => {
            let (token, bearer) = token(
                client,
                fetched,
                names,
                agent_secret,
                &agent_kubeconfig,
                &account.uid().unwrap_or_default(),
                rotation,
            )
            .await?;
            if token.rotated {
                tokens_issued.inc();
                info!(renew_at = %token.renew_at, "Issued the agent a new kcp token");
            }
            (Some(token), fetched.kcp.with_token(&bearer))
        }
    };

    let export = write(
        &Api::<APIExport>::all(provider.clone()),
        &names.export,
        &export,
    )
    .await
    .map_err(kcp_error(&format!("applying APIExport {}", names.export)))?;
    let slice = Api::<APIExportEndpointSlice>::all(provider.clone())
        .get_opt(&names.export)
        .await
        .map_err(|error| Error::kcp("reading the export's endpoint slice", error))?;
    let endpoint_urls: Vec<String> = slice
        .and_then(|s| s.status)
        .map(|s| s.endpoints.into_iter().map(|e| e.url).collect())
        .unwrap_or_default();
    let rewrites = endpoint_rewrites(offering)?;
    let refusals = Kcp::refusals(&identity, &endpoint_urls, &rewrites).await;

    let ns = names.namespace.as_str();
    let service = |what: &'static str| move |error| Error::service(what, error);
    put(&Api::namespaced(client.clone(), ns), &service_account)
        .await
        .map_err(service("applying the agent's ServiceAccount"))?;
    put(&Api::all(client.clone()), &cluster_role)
        .await
        .map_err(service("applying the agent's ClusterRole"))?;
    put(&Api::all(client.clone()), &cluster_role_binding)
        .await
        .map_err(service("applying the agent's ClusterRoleBinding"))?;
    put(&Api::<Role>::namespaced(client.clone(), ns), &role)
        .await
        .map_err(service("applying the agent's Role"))?;
    put(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        &role_binding,
    )
    .await
    .map_err(service("applying the agent's RoleBinding"))?;
    let published_api: Api<PublishedResource> = Api::all(client.clone());
    let mut published = Vec::new();
    for resource in &published_resources {
        published.push(
            put(&published_api, resource)
                .await
                .map_err(service("applying a PublishedResource"))?,
        );
    }
    delete_all(&published_api, &stale_published)
        .await
        .map_err(service("deleting a PublishedResource no longer offered"))?;
    let deployment = put(&Api::namespaced(client.clone(), ns), &deployment)
        .await
        .map_err(service("applying the agent's Deployment"))?;
    put(
        &Api::<Service>::namespaced(client.clone(), ns),
        &metrics_service,
    )
    .await
    .map_err(service("applying the agent's metrics Service"))?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    if let Some(budget) = &disruption_budget {
        put(&budgets, budget)
            .await
            .map_err(service("applying the agent's PodDisruptionBudget"))?;
    }
    delete_all(&budgets, stale_budget.as_slice())
        .await
        .map_err(service("deleting a PodDisruptionBudget no longer wanted"))?;

    let consumers = consumers::reconcile(&fetched.kcp, offering, names, &export, confirmed).await;
    Ok(Applied {
        export,
        endpoint_urls,
        token,
        refusals,
        published,
        deployment,
        consumers,
    })
}

/// The agent's endpoint rewrites (`spec.agent.endpointRewrites`), as the
/// agent reads them.
fn endpoint_rewrites(offering: &PublishedOffering) -> Result<Rewrites, Error> {
    let rules: Vec<String> = offering
        .spec
        .agent
        .iter()
        .flat_map(|agent| &agent.endpoint_rewrites)
        .map(|rewrite| format!("{}={}", rewrite.from, rewrite.to))
        .collect();
    Rewrites::parse(&rules, None)
        .map_err(|why| Error::InvalidSpec(format!("spec.agent.endpointRewrites: {why}")))
}

/// Server-side applies `object` under its own name.
async fn put<K>(api: &Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    write(api, &object.name_any(), object).await
}

/// Deletes each of `names` that is still there.
async fn delete_all<K>(api: &Api<K>, names: &[String]) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    for name in names {
        delete_if_present(api, name).await?;
    }
    Ok(())
}

/// Keeps the agent's token while it is not due, else mints one for the
/// ServiceAccount `account_uid` and writes it with `kubeconfig` into
/// `secret`; returns it with the bearer token itself.
async fn token(
    client: &Client,
    fetched: &Fetched,
    names: &Names,
    mut secret: Secret,
    kubeconfig: &str,
    account_uid: &str,
    rotation: Rotation,
) -> Result<(Token, String), Error> {
    let now = Timestamp::now();
    let stored = fetched.facts.agent_secret.as_ref();
    if let Some(schedule) =
        credentials::renewal_time(stored, kubeconfig, account_uid, rotation, now)
        && let Some(bearer) = stored.and_then(credentials::stored_token)
    {
        return Ok((
            Token {
                renew_at: schedule.renew_at,
                expires: schedule.expires,
                rotated: false,
            },
            bearer,
        ));
    }
    let minted = credentials::mint(&fetched.provider, names, rotation.lifetime).await?;
    let (data, annotations) = credentials::secret_contents(kubeconfig, &minted, now, account_uid);
    secret.data = Some(data);
    secret.metadata.annotations = Some(annotations);
    put(&Api::namespaced(client.clone(), &names.namespace), &secret)
        .await
        .map_err(|error| Error::service("writing the agent's kcp Secret", error))?;
    Ok((
        Token {
            renew_at: credentials::renew_at(now, minted.expires, rotation),
            expires: minted.expires,
            rotated: true,
        },
        minted.token,
    ))
}

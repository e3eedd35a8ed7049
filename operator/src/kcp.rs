//! The operator's access to kcp: one [`Kcp`] per offering's credentials,
//! handing out one cached client per workspace URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};
use kube::config::AuthInfo;
use kube::{Client, Config, ResourceExt};
use sync_agent::api::kcp::core_v1alpha1::LogicalCluster;

use crate::credentials::{self, KcpCredentials};
use crate::error::Error;
use sync_agent::kcp::Rewrites;
use sync_agent::runtime::rest;

/// The operator's access to kcp, by workspace path. Clones share the
/// client cache.
#[derive(Clone)]
pub struct Kcp {
    credentials: Arc<KcpCredentials>,
    base: String,
    clients: Arc<Mutex<HashMap<String, Client>>>,
}

impl std::fmt::Debug for Kcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kcp").field("base", &self.base).finish()
    }
}

/// How long a kcp request may wait for its answer. The operator makes
/// only short requests to kcp (no watches), so a kcp that accepts the
/// connection and never answers fails the reconcile, which then retries
/// with backoff, instead of holding it forever.
const KCP_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the check of one endpoint may take: a shard that does not
/// answer is left to the agent's own retries, not waited for.
const ENDPOINT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A virtual workspace endpoint that refuses the agent's kcp credentials,
/// or whose rewritten address takes no connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The endpoint URL as the slice lists it.
    pub url: String,
    /// Where the agent reaches it, when `spec.agent.endpointRewrites`
    /// rewrites it.
    pub reached_at: Option<String>,
    /// kcp's answer: 401 (the credentials are not accepted) or 403 (not
    /// allowed); 0 when the rewritten address takes no connection.
    pub code: u16,
    /// kcp's message.
    pub message: String,
}

impl Kcp {
    /// Access with `credentials`.
    pub fn new(mut credentials: KcpCredentials) -> Self {
        credentials.config.read_timeout = Some(KCP_READ_TIMEOUT);
        // Count from sending the request, not from when a pooled
        // connection last did something.
        credentials.config.reset_reader_on_write = true;
        let base = credentials::base_url(&credentials.config.cluster_url.to_string());
        Self {
            credentials: Arc::new(credentials),
            base,
            clients: Arc::default(),
        }
    }

    /// The client for the workspace at `path`, made on first use.
    pub fn client(&self, path: &str) -> Result<Client, Error> {
        let url = format!("{}/clusters/{path}", self.base);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&url) {
            return Ok(client.clone());
        }
        let mut config: Config = self.credentials.config.clone();
        config.cluster_url = url
            .parse()
            .map_err(|_| Error::InvalidSpec(format!("{url} is not a valid URL")))?;
        let client = rest::client(config).map_err(|error| {
            Error::InvalidKcpKubeconfig(format!("building a kcp client: {error}"))
        })?;
        clients.insert(url, client.clone());
        Ok(client)
    }

    /// The logical cluster name of the workspace at `path`, checking that
    /// the workspace exists and the operator may enter it.
    pub async fn logical_cluster(&self, client: &Client, path: &str) -> Result<String, Error> {
        let api: Api<LogicalCluster> = Api::all(client.clone());
        match api.get("cluster").await {
            Ok(cluster) => Ok(cluster
                .annotations()
                .get(sync_agent::api::kcp::CLUSTER_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| path.to_string())),
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 403 => {
                Err(Error::WorkspaceNotFound(format!(
                    "workspace {path} does not exist or the operator's kcp credentials may not enter it ({})",
                    status.message
                )))
            }
            Err(error) => Err(Error::kcp(&format!("reading workspace {path}"), error)),
        }
    }

    /// The identity of the agent's minted `token`: these credentials' TLS
    /// settings, and nothing of their own identity.
    pub fn with_token(&self, token: &str) -> Config {
        self.with_auth(AuthInfo {
            token: Some(token.to_string().into()),
            ..AuthInfo::default()
        })
    }

    /// `auth`, another identity's credentials, on these credentials'
    /// connection (server and TLS trust), and nothing of their own identity:
    /// how the operator checks the agent's credentials against the kcp it
    /// trusts.
    pub fn with_auth(&self, auth: AuthInfo) -> Config {
        let mut config = self.credentials.config.clone();
        config.auth_info = auth;
        config
    }

    /// The user `identity` authenticates as, as kcp reports it in the
    /// workspace at `path`: a SelfSubjectReview's answer (an authenticated
    /// user), or, while the identity may not enter the workspace yet (kcp
    /// then refuses every request of it, that one too), the user the
    /// refusal names. A user the agent's role must not be granted to
    /// (anonymous, kcp's own `system:` users) is an error, and so is any
    /// other answer: the reconcile is retried rather than the role moved.
    pub async fn user_of(&self, identity: &Config, path: &str) -> Result<String, Error> {
        let mut config = identity.clone();
        config.cluster_url = format!("{}/clusters/{path}", self.base)
            .parse()
            .map_err(|_| Error::InvalidSpec(format!("{path} is not a workspace path")))?;
        let client = rest::client(config).map_err(|error| {
            Error::InvalidAgentKubeconfig(format!("building a kcp client: {error}"))
        })?;
        let api: Api<SelfSubjectReview> = Api::all(client);
        let user = match api
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
        {
            Ok(review) => review
                .status
                .and_then(|s| s.user_info)
                .filter(|u| {
                    u.groups
                        .iter()
                        .flatten()
                        .any(|g| g == "system:authenticated")
                })
                .and_then(|u| u.username),
            Err(kube::Error::Api(status)) if status.code == 403 => refused_user(&status.message),
            Err(kube::Error::Api(status)) if status.code == 401 => {
                return Err(Error::InvalidAgentKubeconfig(format!(
                    "kcp does not accept the agent's kcp credentials: {}",
                    status.message
                )));
            }
            Err(error) => {
                return Err(Error::kcp(
                    "asking kcp whom the agent's kcp credentials authenticate",
                    error,
                ));
            }
        };
        match user {
            Some(user) if grantable(&user) => Ok(user),
            other => Err(Error::InvalidAgentKubeconfig(format!(
                "kcp names the agent's kcp credentials' user {:?}, which the agent's role is not \
                 granted to: give the agent credentials of an authenticated user of its own",
                other.unwrap_or_default()
            ))),
        }
    }

    /// The endpoints among `urls` whose virtual workspace refuses
    /// `identity`, the agent's: a 401 or 403 to the discovery request
    /// `<url>/clusters/*/apis`, which the agent's watches would get too. On
    /// a sharded kcp each shard serves its own endpoint and may refuse an
    /// identity another accepts. An endpoint that does not answer is not
    /// counted: the agent retries it, and what the operator cannot reach
    /// tells nothing about what the agent can.
    pub async fn refusals(identity: &Config, urls: &[String], rewrites: &Rewrites) -> Vec<Refusal> {
        let checks = urls
            .iter()
            .map(|url| Self::refusal(identity, url, rewrites.apply(url)));
        futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Whether the endpoint at `url`, reached at `rewritten` when given,
    /// refuses `identity`. A rewritten address must take connections: the
    /// rule is the provider's, and a wrong one would leave the shard's
    /// consumers unsynced without a word. (Its TLS is not judged here: the
    /// agent may trust another CA for it.)
    async fn refusal(identity: &Config, url: &str, rewritten: Option<String>) -> Option<Refusal> {
        let refusal = |code, message| Refusal {
            url: url.to_string(),
            reached_at: rewritten.clone(),
            code,
            message,
        };
        let target = rewritten.clone().unwrap_or_else(|| url.to_string());
        if rewritten.is_some()
            && let Err(error) = connects(&target).await
        {
            return Some(refusal(0, error));
        }
        let mut config = identity.clone();
        config.cluster_url = format!("{target}/clusters/*").parse().ok()?;
        config.connect_timeout = Some(ENDPOINT_CHECK_TIMEOUT);
        config.read_timeout = Some(ENDPOINT_CHECK_TIMEOUT);
        let client = rest::client(config).ok()?;
        match tokio::time::timeout(ENDPOINT_CHECK_TIMEOUT, client.list_api_groups()).await {
            Ok(Err(kube::Error::Api(status))) if matches!(status.code, 401 | 403) => {
                Some(refusal(status.code, status.message))
            }
            _ => None,
        }
    }

    /// The operator's kubeconfig as stored.
    pub fn kubeconfig(&self) -> &kube::config::Kubeconfig {
        &self.credentials.kubeconfig
    }

    /// The server part of the kcp URL.
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// Whether the host and port of `url` take a TCP connection in time.
async fn connects(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url} is not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("{url} has no host"))?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    match tokio::time::timeout(
        ENDPOINT_CHECK_TIMEOUT,
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no connection within {}s",
            ENDPOINT_CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// The user a Kubernetes authorization refusal names: `User "<name>"
/// cannot <verb> …` (the API server's wording, which kcp keeps). A name
/// with an escaped character is not read.
fn refused_user(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("User \"")?;
    let (user, _) = rest.split_once('"')?;
    (!user.is_empty() && !user.contains('\\')).then(|| user.to_string())
}

/// Whether the agent's role may be granted to `user`: not anonymous, and
/// none of kcp's own `system:` users but ServiceAccounts.
fn grantable(user: &str) -> bool {
    !user.is_empty() && (!user.starts_with("system:") || user.starts_with("system:serviceaccount:"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::config::Kubeconfig;

    fn kcp() -> Kcp {
        let config = Config::new("https://kcp.example:6443/clusters/root".parse().unwrap());
        Kcp::new(KcpCredentials {
            kubeconfig: Kubeconfig::default(),
            config,
        })
    }

    #[test]
    fn a_refusal_names_the_user_it_refused() {
        let message = r#"selfsubjectreviews.authentication.k8s.io is forbidden: User "e2e-agent" cannot create resource "selfsubjectreviews" in API group "authentication.k8s.io" at the cluster scope: access denied"#;
        assert_eq!(refused_user(message), Some("e2e-agent".into()));
        assert_eq!(refused_user("forbidden: access denied"), None);
        assert_eq!(refused_user(r#"User "" cannot get"#), None);
        assert_eq!(refused_user(r#"User "a\"b" cannot get"#), None);
    }

    #[test]
    fn the_agents_role_is_granted_to_authenticated_users_of_their_own_only() {
        assert!(grantable("e2e-agent"));
        assert!(grantable("system:serviceaccount:sync-agents:agent"));
        for user in [
            "",
            "system:anonymous",
            "system:kcp:logical-cluster-admin",
            "system:admin",
        ] {
            assert!(!grantable(user), "{user}");
        }
    }

    #[tokio::test]
    async fn one_client_per_workspace_shared_by_clones() {
        let kcp = kcp();
        kcp.client("root:a").unwrap();
        kcp.clone().client("root:a").unwrap();
        kcp.client("root:b").unwrap();
        let clients = kcp.clients.lock().unwrap();
        let mut urls: Vec<&String> = clients.keys().collect();
        urls.sort();
        assert_eq!(
            urls,
            [
                "https://kcp.example:6443/clusters/root:a",
                "https://kcp.example:6443/clusters/root:b"
            ]
        );
    }
}

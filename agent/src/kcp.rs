//! The agent's view of kcp: where the endpoint slice and the APIExport live,
//! resolved once at start-up.
//!
//! The kcp kubeconfig points at the workspace holding the
//! APIExportEndpointSlice (`https://host/clusters/<workspace>`). The slice
//! names the export, possibly in another workspace; its endpoints are the
//! virtual workspace URLs through which consumer workspaces are reached.
//! [`EndpointClients`] reaches them with one connection pool per endpoint,
//! at the address [`Rewrites`] gives when the service cluster cannot reach
//! the one listed (a shard's cluster-internal URL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::api::Api;
use kube::client::Body;
use kube::{Client, Config};
use prometheus::IntGauge;
use tracing::info;

use crate::api::kcp::CLUSTER_ANNOTATION;
use crate::api::kcp::PATH_ANNOTATION;
use crate::api::kcp::apis_v1alpha1::APIExportEndpointSlice;
use crate::api::kcp::apis_v1alpha2::APIExport;
use crate::api::kcp::core_v1alpha1::{LOGICAL_CLUSTER_NAME, LogicalCluster};
use crate::runtime::rest;

/// Why the agent cannot find its export.
#[derive(Debug, thiserror::Error)]
pub enum KcpError {
    /// The kubeconfig does not point into a workspace.
    #[error(
        "the kcp kubeconfig's server {0:?} must point at a workspace, like https://host/clusters/root:org"
    )]
    NotAWorkspace(String),
    /// A request to kcp failed.
    #[error("{what}: {source}")]
    Request {
        /// What was asked.
        what: String,
        /// The failure.
        #[source]
        source: kube::Error,
    },
    /// The built URL is invalid.
    #[error("invalid kcp URL {0:?}")]
    Url(String),
}

impl KcpError {
    /// Whether retrying may help (every failure except a wrong kubeconfig).
    pub fn is_transient(&self) -> bool {
        !matches!(self, KcpError::NotAWorkspace(_) | KcpError::Url(_))
    }
}

fn request(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KcpError {
    let what = what.into();
    move |source| KcpError::Request { what, source }
}

/// Where the agent's export lives in kcp.
#[derive(Clone)]
pub struct KcpTarget {
    /// Configuration for the export's workspace.
    pub export_config: Config,
    /// Client for the export's workspace.
    pub export_client: Client,
    /// Configuration for the endpoint slice's workspace.
    pub slice_config: Config,
    /// Client for the endpoint slice's workspace.
    pub slice_client: Client,
    /// Clients for the consumer workspaces behind the slice's endpoints.
    pub endpoints: EndpointClients,
    /// Name of the APIExport.
    pub export_name: String,
    /// Workspace path of the export.
    pub export_path: String,
    /// Logical cluster name of the export's workspace.
    pub export_cluster: String,
    /// Name of the endpoint slice.
    pub slice_name: String,
}

impl std::fmt::Debug for KcpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KcpTarget")
            .field("export_name", &self.export_name)
            .field("export_path", &self.export_path)
            .field("export_cluster", &self.export_cluster)
            .field("slice_name", &self.slice_name)
            .finish()
    }
}

/// The workspace part of a kcp URL path: `/clusters/<x>` → `x`.
pub fn workspace_of(config: &Config) -> Option<String> {
    let path = config.cluster_url.path();
    let (_, rest) = path.split_once("/clusters/")?;
    let workspace = rest.split('/').next()?;
    (!workspace.is_empty()).then(|| workspace.to_string())
}

/// The same server and credentials, pointed at another workspace.
pub fn retarget(config: &Config, workspace: &str) -> Result<Config, KcpError> {
    let url = config.cluster_url.to_string();
    let base = url
        .split_once("/clusters/")
        .map(|(base, _)| base.to_string())
        .ok_or_else(|| KcpError::NotAWorkspace(url.clone()))?;
    let mut target = config.clone();
    let new = format!("{base}/clusters/{workspace}");
    target.cluster_url = new.parse().map_err(|_| KcpError::Url(new))?;
    Ok(target)
}

/// The same credentials, pointed at an arbitrary URL on the kcp server
/// (for example a virtual workspace endpoint).
pub fn retarget_url(config: &Config, url: &str) -> Result<Config, KcpError> {
    let mut target = config.clone();
    target.cluster_url = url.parse().map_err(|_| KcpError::Url(url.to_string()))?;
    Ok(target)
}

/// Where the agent reaches virtual workspace endpoints whose listed base
/// URL the service cluster cannot reach (`--endpoint-url-rewrite`): each
/// rule maps a listed base (`scheme://host:port`) to the base to use, which
/// may carry a path (a gateway routing by path); the rest of the endpoint's
/// URL is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrites {
    rules: Vec<(String, String)>,
    /// CA certificates (DER) trusted for the rewritten addresses instead of
    /// the kubeconfig's.
    ca: Option<Vec<Vec<u8>>>,
}

impl Rewrites {
    /// Rules written `<listed base>=<base to use>`; `ca` is trusted for
    /// the rewritten addresses. Returns what is wrong with a rule.
    pub fn parse(rules: &[String], ca: Option<Vec<Vec<u8>>>) -> Result<Self, String> {
        let mut parsed = Vec::new();
        for rule in rules.iter().filter(|r| !r.is_empty()) {
            let (from, to) = rule
                .split_once('=')
                .ok_or_else(|| format!("{rule:?} is not <listed base URL>=<base URL to use>"))?;
            let (from, to) = (from.trim_end_matches('/'), to.trim_end_matches('/'));
            for (what, url) in [("listed", from), ("used", to)] {
                let parsed: http::Uri = url
                    .parse()
                    .map_err(|_| format!("{rule:?}: the {what} URL {url:?} is not a URL"))?;
                if parsed.scheme().is_none() || parsed.host().is_none() {
                    return Err(format!(
                        "{rule:?}: the {what} URL {url:?} needs a scheme and a host, like https://kcp.example.com:6443"
                    ));
                }
                if what == "used" && parsed.scheme_str() != Some("https") {
                    return Err(format!(
                        "{rule:?}: the used URL {url:?} must be https (the agent sends its kcp credentials there)"
                    ));
                }
                if what == "listed" && parsed.path() != "/" {
                    return Err(format!(
                        "{rule:?}: the listed URL {url:?} must be a base (scheme, host and port, no path)"
                    ));
                }
            }
            parsed.push((from.to_string(), to.to_string()));
        }
        Ok(Self { rules: parsed, ca })
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The URL to reach `endpoint` at, when a rule rewrites it.
    pub fn apply(&self, endpoint: &str) -> Option<String> {
        self.rules.iter().find_map(|(from, to)| {
            let rest = endpoint.strip_prefix(from.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| format!("{to}{rest}"))
        })
    }

    /// The listed bases no endpoint among `endpoints` starts with.
    pub fn unmatched(&self, endpoints: &[String]) -> Vec<&str> {
        self.rules
            .iter()
            .map(|(from, _)| from.as_str())
            .filter(|from| !endpoints.iter().any(|e| self.matches(from, e)))
            .collect()
    }

    fn matches(&self, from: &str, endpoint: &str) -> bool {
        endpoint
            .strip_prefix(from)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl KcpTarget {
    /// Resolves endpoint slice → export → logical cluster; the consumer
    /// workspaces behind the slice's endpoints are reached through
    /// `endpoints`.
    pub async fn resolve(
        slice_config: Config,
        slice_name: &str,
        endpoints: EndpointClients,
    ) -> Result<Self, KcpError> {
        let url = slice_config.cluster_url.to_string();
        let slice_workspace =
            workspace_of(&slice_config).ok_or_else(|| KcpError::NotAWorkspace(url.clone()))?;
        let slice_client =
            rest::client(slice_config.clone()).map_err(request("building the kcp client"))?;
        let slice = Api::<APIExportEndpointSlice>::all(slice_client.clone())
            .get(slice_name)
            .await
            .map_err(request(format!(
                "getting APIExportEndpointSlice {slice_name} in {slice_workspace}"
            )))?;
        let slice_cluster = Api::<LogicalCluster>::all(slice_client.clone())
            .get(LOGICAL_CLUSTER_NAME)
            .await
            .map_err(request(format!(
                "getting the LogicalCluster of {slice_workspace}"
            )))?;
        let slice_path = annotation(&slice_cluster, PATH_ANNOTATION).unwrap_or(slice_workspace);
        let export_path = if slice.spec.export.path.is_empty() {
            slice_path
        } else {
            slice.spec.export.path.clone()
        };
        let export_name = slice.spec.export.name.clone();
        let export_config = retarget(&slice_config, &export_path)?;
        let export_client =
            rest::client(export_config.clone()).map_err(request("building the kcp client"))?;
        Api::<APIExport>::all(export_client.clone())
            .get(&export_name)
            .await
            .map_err(request(format!(
                "getting APIExport {export_name} in {export_path}"
            )))?;
        let export_cluster = Api::<LogicalCluster>::all(export_client.clone())
            .get(LOGICAL_CLUSTER_NAME)
            .await
            .map_err(request(format!(
                "getting the LogicalCluster of {export_path}"
            )))?;
        let export_cluster = annotation(&export_cluster, CLUSTER_ANNOTATION).unwrap_or_default();
        Ok(Self {
            export_config,
            export_client,
            endpoints,
            slice_config,
            slice_client: slice_client.clone(),
            export_name,
            export_path,
            export_cluster,
            slice_name: slice_name.to_string(),
        })
    }
}

/// Clients for logical clusters behind virtual workspace endpoints, with
/// the kcp kubeconfig's credentials. Each endpoint URL gets one client, so
/// one connection pool and TLS setup however many workspaces it serves; a
/// logical cluster's client is a cheap view of it that prefixes each request
/// path with `/clusters/<name>`.
#[derive(Clone)]
pub struct EndpointClients {
    config: Config,
    rewrites: Rewrites,
    /// Endpoints reached at a rewritten address.
    rewritten: IntGauge,
    pools: Arc<Mutex<HashMap<String, Client>>>,
}

impl std::fmt::Debug for EndpointClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointClients").finish_non_exhaustive()
    }
}

impl EndpointClients {
    /// Clients with the credentials of `config`, reaching endpoints where
    /// `rewrites` says; `rewritten` counts the endpoints it rewrote.
    pub fn new(config: Config, rewrites: Rewrites, rewritten: IntGauge) -> Self {
        Self {
            config,
            rewrites,
            rewritten,
            pools: Arc::default(),
        }
    }

    /// The rewrite rules.
    pub fn rewrites(&self) -> &Rewrites {
        &self.rewrites
    }

    /// The client of logical cluster `cluster` (`*` for all of them) as
    /// `endpoint` serves it.
    pub fn cluster(&self, endpoint: &str, cluster: &str) -> Result<Client, KcpError> {
        let pool = self.pool(endpoint)?;
        let prefix = format!("/clusters/{cluster}");
        // Checked once here, so that prefixing a request cannot fail later.
        prefixed(&prefix, &http::Uri::from_static("/"))
            .map_err(|_| KcpError::Url(format!("{endpoint}{prefix}")))?;
        let service = tower::service_fn(move |mut request: http::Request<Body>| {
            let pool = pool.clone();
            let uri = prefixed(&prefix, request.uri());
            async move {
                *request.uri_mut() = uri.map_err(|e| kube::Error::Service(e.into()))?;
                pool.send(request).await
            }
        });
        Ok(Client::new(service, "default"))
    }

    /// The one client of `endpoint`, built on first use.
    fn pool(&self, endpoint: &str) -> Result<Client, KcpError> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = pools.get(endpoint) {
            return Ok(client.clone());
        }
        let config = match self.rewrites.apply(endpoint) {
            Some(used) => {
                let mut config = retarget_url(&self.config, &used)?;
                if let Some(ca) = &self.rewrites.ca {
                    config.root_cert = Some(ca.clone());
                }
                info!(endpoint, at = %used, "Reaching a virtual workspace endpoint at a rewritten address");
                self.rewritten.inc();
                config
            }
            None => retarget_url(&self.config, endpoint)?,
        };
        let client =
            rest::client(config).map_err(request(format!("building a client for {endpoint}")))?;
        pools.insert(endpoint.to_string(), client.clone());
        Ok(client)
    }
}

/// `uri`'s path and query under `prefix`; the client's base URL comes first.
fn prefixed(prefix: &str, uri: &http::Uri) -> Result<http::Uri, http::uri::InvalidUri> {
    let rest = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{prefix}{rest}").parse()
}

fn annotation(object: &LogicalCluster, key: &str) -> Option<String> {
    object.metadata.annotations.as_ref()?.get(key).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> Config {
        Config::new(url.parse().expect("url"))
    }

    #[test]
    fn the_workspace_is_read_from_the_server_path() {
        assert_eq!(
            workspace_of(&config("https://kcp:6443/clusters/root:org")),
            Some("root:org".into())
        );
        assert_eq!(
            workspace_of(&config("https://kcp:6443/clusters/abc/")),
            Some("abc".into())
        );
        assert_eq!(workspace_of(&config("https://kcp:6443/")), None);
    }

    #[test]
    fn cluster_requests_go_below_the_cluster_prefix() {
        let uri = http::Uri::from_static("/apis/g/v1/things?watch=true");
        assert_eq!(
            prefixed("/clusters/abc", &uri).expect("valid").to_string(),
            "/clusters/abc/apis/g/v1/things?watch=true"
        );
        assert!(prefixed("/clusters/a b", &uri).is_err());
    }

    #[tokio::test]
    async fn one_client_serves_each_endpoint_for_every_cluster() {
        let clients = EndpointClients::new(
            config("https://kcp:6443/clusters/root"),
            Rewrites::default(),
            IntGauge::new("rewritten", "test").unwrap(),
        );
        let endpoint = "https://kcp:6443/services/apiexport/root/export";
        clients.cluster(endpoint, "a").expect("client");
        clients.cluster(endpoint, "*").expect("client");
        clients
            .cluster("https://kcp:6443/services/other", "a")
            .expect("client");
        let pools = clients.pools.lock().expect("lock").len();
        assert_eq!(pools, 2, "one pool per endpoint");
        assert!(matches!(
            clients.cluster(endpoint, "a b"),
            Err(KcpError::Url(_))
        ));
    }

    #[test]
    fn a_rewrite_replaces_the_listed_base_and_keeps_the_rest() {
        let rewrites = Rewrites::parse(
            &[
                "https://shard-1.kcp.svc:6443=https://kcp-1.example.com".into(),
                "https://shard-2.kcp.svc:6443/=https://gw.example.com/shard-2/".into(),
            ],
            None,
        )
        .expect("valid rules");
        let listed = "https://shard-1.kcp.svc:6443/services/apiexport/abc/widgets";
        assert_eq!(
            rewrites.apply(listed).as_deref(),
            Some("https://kcp-1.example.com/services/apiexport/abc/widgets")
        );
        assert_eq!(
            rewrites
                .apply("https://shard-2.kcp.svc:6443/services/apiexport/abc/widgets")
                .as_deref(),
            Some("https://gw.example.com/shard-2/services/apiexport/abc/widgets")
        );
        // Another port is another base; the root shard is left alone.
        assert_eq!(
            rewrites.apply("https://shard-1.kcp.svc:64430/services/x"),
            None
        );
        assert_eq!(rewrites.apply("https://root.kcp.svc:6443/services/x"), None);
        assert_eq!(
            rewrites.unmatched(&[listed.to_string()]),
            ["https://shard-2.kcp.svc:6443"]
        );
    }

    #[test]
    fn a_rewrite_rule_that_cannot_work_is_refused_with_its_reason() {
        for (rule, why) in [
            (
                "https://a:6443",
                "is not <listed base URL>=<base URL to use>",
            ),
            ("a:6443=https://b", "needs a scheme and a host"),
            ("https://a:6443/clusters=https://b", "must be a base"),
            ("https://a:6443=b b", "is not a URL"),
            ("https://a:6443=http://b", "must be https"),
        ] {
            let error = Rewrites::parse(&[rule.into()], None).expect_err(rule);
            assert!(error.contains(why), "{rule}: {error}");
        }
    }

    #[tokio::test]
    async fn a_rewritten_endpoint_is_counted_once() {
        let gauge = IntGauge::new("rewritten", "test").unwrap();
        let clients = EndpointClients::new(
            config("https://kcp:6443/clusters/root"),
            Rewrites::parse(&["https://shard:6443=https://127.0.0.1:7443".into()], None).unwrap(),
            gauge.clone(),
        );
        clients
            .cluster("https://shard:6443/services/x", "a")
            .unwrap();
        clients
            .cluster("https://shard:6443/services/x", "b")
            .unwrap();
        clients.cluster("https://kcp:6443/services/x", "a").unwrap();
        assert_eq!(gauge.get(), 1);
    }

    #[test]
    fn retargeting_keeps_server_and_replaces_the_workspace() {
        let target =
            retarget(&config("https://kcp:6443/clusters/root:a"), "root:b").expect("retargets");
        assert_eq!(
            target.cluster_url.to_string(),
            "https://kcp:6443/clusters/root:b"
        );
        assert!(matches!(
            retarget(&config("https://kcp:6443"), "root:b"),
            Err(KcpError::NotAWorkspace(_))
        ));
    }
}

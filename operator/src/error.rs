//! Why a reconcile of an offering failed: each error carries the reason
//! written to the `Ready` condition and the Warning event, and a category
//! for the error metric.

/// A failed step of a reconcile, with a message naming the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be provisioned as written.
    #[error("{0}")]
    InvalidSpec(String),
    /// The kcp kubeconfig Secret, or its key, does not exist.
    #[error("{0}")]
    KcpSecretMissing(String),
    /// The kcp kubeconfig in the Secret cannot be used.
    #[error("{0}")]
    InvalidKcpKubeconfig(String),
    /// kcp did not answer.
    #[error("{0}")]
    KcpUnreachable(String),
    /// The provider workspace does not exist or is not accessible.
    #[error("{0}")]
    WorkspaceNotFound(String),
    /// kcp refused the operator's credentials a request.
    #[error("{0}")]
    KcpForbidden(String),
    /// A kcp request failed otherwise.
    #[error("{0}")]
    Kcp(String),
    /// The APIExport exists and belongs to someone else.
    #[error("{0}")]
    ExportConflict(String),
    /// Another offering's agent goes by the same agent name.
    #[error("{0}")]
    AgentNameConflict(String),
    /// A service-cluster object the offering would write exists and is not
    /// the offering's.
    #[error("{0}")]
    ObjectConflict(String),
    /// The agent's own kcp kubeconfig Secret, or its key, does not exist.
    #[error("{0}")]
    AgentKubeconfigMissing(String),
    /// The agent's own kcp kubeconfig cannot be used.
    #[error("{0}")]
    InvalidAgentKubeconfig(String),
    /// Minting the agent's kcp token failed.
    #[error("{0}")]
    TokenRequestFailed(String),
    /// A service-cluster request failed.
    #[error("{0}")]
    ServiceCluster(String),
    /// Deletion waits for something to go first.
    #[error("{0}")]
    Deleting(String),
}

impl Error {
    /// The condition and event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::KcpSecretMissing(_) => "KcpSecretMissing",
            Error::InvalidKcpKubeconfig(_) => "InvalidKcpKubeconfig",
            Error::KcpUnreachable(_) => "KcpUnreachable",
            Error::WorkspaceNotFound(_) => "WorkspaceNotFound",
            Error::KcpForbidden(_) => "KcpForbidden",
            Error::Kcp(_) => "KcpError",
            Error::ExportConflict(_) => "ExportConflict",
            Error::AgentNameConflict(_) => "AgentNameConflict",
            Error::ObjectConflict(_) => "ObjectConflict",
            Error::AgentKubeconfigMissing(_) => "AgentKubeconfigMissing",
            Error::InvalidAgentKubeconfig(_) => "InvalidAgentKubeconfig",
            Error::TokenRequestFailed(_) => "TokenRequestFailed",
            Error::ServiceCluster(_) => "ServiceClusterError",
            Error::Deleting(_) => "Deleting",
        }
    }

    /// The category label of `controller_runtime_reconcile_errors_total`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "spec",
            Error::KcpSecretMissing(_)
            | Error::InvalidKcpKubeconfig(_)
            | Error::AgentKubeconfigMissing(_)
            | Error::InvalidAgentKubeconfig(_) => "credentials",
            Error::ExportConflict(_) | Error::AgentNameConflict(_) | Error::ObjectConflict(_) => {
                "conflict"
            }
            Error::KcpUnreachable(_)
            | Error::WorkspaceNotFound(_)
            | Error::KcpForbidden(_)
            | Error::Kcp(_)
            | Error::TokenRequestFailed(_) => "kcp",
            Error::ServiceCluster(_) => "service",
            Error::Deleting(_) => "deleting",
        }
    }

    /// A kcp request error, classified; `what` names the request.
    pub fn kcp(what: &str, error: kube::Error) -> Self {
        match &error {
            kube::Error::Api(status) if status.code == 403 => Error::KcpForbidden(format!(
                "{what}: kcp refused the operator's credentials: {}",
                status.message
            )),
            kube::Error::Api(status) => Error::Kcp(format!("{what}: {}", status.message)),
            kube::Error::Auth(_) => Error::InvalidKcpKubeconfig(format!("{what}: {error}")),
            _ => Error::KcpUnreachable(format!("{what}: {error}")),
        }
    }

    /// A service-cluster request error; `what` names the request.
    pub fn service(what: &str, error: kube::Error) -> Self {
        Error::ServiceCluster(format!("{what}: {error}"))
    }
}

/// Whether `error` is the API server's 404.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

//! Why syncing an object failed, and the metric label of each cause.

use std::time::Duration;

use super::identity::Side;
use super::naming::NamingError;

/// Why an object could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A request to kcp failed.
    #[error("kcp: {0}")]
    Kcp(#[source] kube::Error),
    /// A request to the service cluster failed.
    #[error("service cluster: {0}")]
    Service(#[source] kube::Error),
    /// The naming rules produced no valid name.
    #[error(transparent)]
    Naming(#[from] NamingError),
    /// An object could not be converted (a bug, or a malformed object).
    #[error("malformed object: {0}")]
    Malformed(String),
    /// A mutation rule failed on this object.
    #[error(transparent)]
    Mutation(#[from] crate::mutation::MutationError),
    /// The local name is used by the copy of another object.
    #[error("the local name {0:?} belongs to the copy of another object; change the naming rules")]
    NameTaken(String),
    /// A related object cannot be synced.
    #[error("related resources: {0}")]
    Related(String),
    /// The reconcile took too long (a request hung).
    #[error("gave up after {0:?}")]
    Timeout(Duration),
    /// More than one local object claims to be the copy.
    #[error("{0} local objects carry the identity of this object; remove the extra ones")]
    Ambiguous(usize),
}

impl SyncError {
    /// The error of a failed request to `side`.
    pub fn on(side: Side) -> impl Fn(kube::Error) -> SyncError {
        move |error| match side {
            Side::Kcp => SyncError::Kcp(error),
            Side::Service => SyncError::Service(error),
        }
    }

    /// Whether a write was refused because it was based on an outdated
    /// version; the watch event bringing the newer one wakes the object.
    pub fn is_conflict(&self) -> bool {
        matches!(self, SyncError::Kcp(kube::Error::Api(status))
            | SyncError::Service(kube::Error::Api(status)) if status.code == 409)
    }

    /// Whether only a change (to the rules, the object or its copy) can
    /// fix it; it is still retried, slowly.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SyncError::Naming(_)
                | SyncError::Mutation(_)
                | SyncError::NameTaken(_)
                | SyncError::Ambiguous(_)
                | SyncError::Malformed(_)
        )
    }

    /// Metric label.
    pub fn reason(&self) -> &'static str {
        if self.is_conflict() {
            return "conflict";
        }
        match self {
            SyncError::Kcp(_) => "kcp",
            SyncError::Service(_) => "service_cluster",
            SyncError::Naming(_) => "naming",
            SyncError::Ambiguous(_) => "ambiguous",
            SyncError::Malformed(_) => "malformed",
            SyncError::Mutation(_) => "mutation",
            SyncError::Timeout(_) => "timeout",
            SyncError::Related(_) => "related",
            SyncError::NameTaken(_) => "name_taken",
        }
    }
}

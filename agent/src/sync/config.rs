//! What a sync worker knows about its PublishedResource, resolved once when
//! the worker starts.

use super::identity::CopyKey;
use std::sync::Arc;

use kube::api::ApiResource;

use super::echo::Echoes;
use super::mirror::Mirror;
use super::namespaces::ManagedMetadata;
use super::naming::{Naming, Templates};
use super::related::KindCache;
use crate::api::published_resource::RelatedResourceSpec;
use crate::mutation::Mutator;

/// Everything a worker needs to know about its PublishedResource.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Name of the PublishedResource.
    pub published_resource: String,
    /// The kind as consumers see it in kcp (storage version).
    pub remote: ApiResource,
    /// Whether kcp objects live in namespaces.
    pub remote_namespaced: bool,
    /// The kind on the service cluster (storage version).
    pub local: ApiResource,
    /// Whether local copies live in namespaces.
    pub local_namespaced: bool,
    /// Whether the local kind has a status subresource to copy back.
    pub local_status: bool,
    /// Naming rules, compiled.
    pub naming: Naming,
    /// Metadata kept on the namespaces of local copies, if any.
    pub namespace_metadata: Option<ManagedMetadata>,
    /// Whether a namespace the agent created goes once its last copy has
    /// (`naming.deleteEmptyNamespaces`, namespaced copies only).
    pub delete_empty_namespaces: bool,
    /// Label selector on kcp objects, if any.
    pub resource_filter: Option<kube::core::Selector>,
    /// Label selector on the namespaces of kcp objects, if any.
    pub namespace_filter: Option<kube::core::Selector>,
    /// Whether to record workspace paths (`enableWorkspacePaths`).
    pub workspace_paths: bool,
    /// Virtual workspace endpoints of the export.
    pub endpoints: Vec<String>,
    /// Rules applied to kcp objects before they are written locally.
    pub spec_mutator: Arc<Mutator>,
    /// Rules applied to local copies before their status goes to kcp.
    pub status_mutator: Arc<Mutator>,
    /// Related resources.
    pub related: Vec<RelatedResourceSpec>,
    /// The templates of the related resources, compiled.
    pub templates: Arc<Templates>,
    /// Kinds of related resources, resolved once.
    pub kinds: Arc<KindCache>,
    /// Versions of the worker's own writes, whose watch events are dropped.
    pub echoes: Arc<Echoes>,
}

/// The local copies of a worker, found by their identification labels.
pub type CopyMirror = Mirror<CopyKey>;

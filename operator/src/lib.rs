//! The offering operator: reconciles `PublishedOffering` objects into an
//! APIExport in kcp, the agent's credentials and RBAC, PublishedResources,
//! one sync-agent Deployment per offering, and consumer APIBindings.

pub mod api;
pub mod crdgen;

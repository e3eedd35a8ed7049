//! The offering operator: reconciles `PublishedOffering` objects into an
//! APIExport in kcp, the agent's credentials and RBAC, PublishedResources,
//! one sync-agent Deployment per offering, and consumer APIBindings.

pub mod api;
pub mod apply;
pub mod build;
pub mod cleanup;
pub mod confirmed;
pub mod consumers;
pub mod controller;
pub mod crdgen;
pub mod credentials;
pub mod desired;
pub mod error;
pub mod fetch;
pub mod kcp;
pub mod kcp_secrets;
pub mod names;
pub mod provision;
pub mod selections;
pub mod status;
pub mod validate;
pub mod write;

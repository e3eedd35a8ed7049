//! The sync agent: publishes service-cluster APIs to kcp and syncs objects
//! between consumer workspaces and the service cluster.
//!
//! The library also carries the API types shared with the operator: the
//! `PublishedResource` CRD and the kcp types both crates read and write.

pub mod api;
pub mod context;
pub mod controller;
pub mod kcp;
pub mod metrics;
pub mod mutation;
pub mod options;
pub mod runtime;
pub mod schema;
pub mod source;
pub mod sync;

//! API types: the agent's own `PublishedResource` and the kcp APIs.

pub mod kcp;
pub mod published_resource;

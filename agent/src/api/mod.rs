//! API types: the agent's own `PublishedResource` and the kcp APIs, with the
//! rules their names follow and the status conditions they carry.

pub mod condition;
pub mod controllers;
pub mod dns;
pub mod hash;
pub mod kcp;
pub mod published_resource;

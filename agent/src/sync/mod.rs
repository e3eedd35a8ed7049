//! Object sync between consumer workspaces and the service cluster.

pub mod config;
pub mod copy;
pub mod echo;
pub mod error;
pub mod events;
pub mod identity;
pub mod mirror;
pub mod naming;
pub mod object;
pub mod queue;
pub mod reconcile;
pub mod related;
pub mod related_copies;
pub mod worker;

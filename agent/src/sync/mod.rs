//! Object sync between consumer workspaces and the service cluster.

pub mod echo;
pub mod identity;
pub mod naming;
pub mod object;
pub mod reconcile;
pub mod related;
pub mod worker;

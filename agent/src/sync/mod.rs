//! Object sync between consumer workspaces and the service cluster.
//!
//! `worker` runs one PublishedResource's sync: watches feed the `queue`,
//! each key goes through `reconcile` (filters and workspace path from
//! `workspace`), which writes only through the one
//! engine in `copy` (pure halves in `object`, names from `naming`); related
//! objects are located by `related` and kept by `related_copies` through the
//! same engine. `mirror` and `echo` hold what the watches saw and what the
//! agent itself wrote, so its own writes do not wake it again; `namespaces`
//! is the metadata a PublishedResource keeps on its copies' namespaces,
//! `stale_namespaces` deletes the namespaces the agent created once their
//! last copy is gone;
//! `upstream_state` reads the last-known states an upstream agent left;
//! `shrink` lets the tables filled per object give their memory back.

pub mod config;
pub mod copy;
pub mod echo;
pub mod error;
pub mod events;
pub mod identity;
pub mod mirror;
pub mod namespaces;
pub mod naming;
pub mod object;
pub mod queue;
pub mod reconcile;
pub mod related;
pub mod related_copies;
pub mod stale_namespaces;
pub mod upstream_state;
pub mod worker;
pub mod workspace;

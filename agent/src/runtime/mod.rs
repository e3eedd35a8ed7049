//! What both binaries run on, independent of what they reconcile: retry
//! policy, HTTP endpoints and client, cluster configuration loading, API
//! clients that count their requests, leader election, metrics, tables
//! that give memory back, and the process's logging, start-up and shutdown.

pub mod backoff;
pub mod events;
pub mod flags;
pub mod http;
pub mod kubeconfig;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod rest;
pub mod shrink;

//! What both binaries run on, independent of what they reconcile: retry
//! policy, HTTP endpoints, leader election, metrics and the process's
//! start-up and shutdown.

pub mod backoff;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod process;

//! Desired objects, built from an offering by pure functions: what the
//! reconcile applies in the provider workspace (`kcp`), on the service
//! cluster (`cluster`) and in consumer workspaces (`consumer`).

pub mod cluster;
pub mod consumer;
pub mod kcp;

//! Helpers for end-to-end tests against the real kcp and kube-apiserver that
//! `testenv` starts (see `e2e/README.md`).

pub mod agent;
pub mod checkout;
pub mod env;
pub mod guide;
pub mod kcp;
pub mod offering;
pub mod pod;
pub mod poll;
pub mod publishing;
pub mod scene;
pub mod service;

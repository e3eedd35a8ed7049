//! The agent's controllers: APIResourceSchemas, the APIExport, and the
//! sync workers of the PublishedResources; with what they share: the state
//! the kube-runtime ones reconcile with, and how they report their caches
//! synced for `/readyz`.

pub mod apiexport;
pub mod ready;
pub mod reconciler;
pub mod schemas;
pub mod sync;
pub mod watched;

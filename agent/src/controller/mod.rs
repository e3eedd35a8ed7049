//! The agent's controllers: APIResourceSchemas, the APIExport, and the
//! sync workers of the PublishedResources.

pub mod apiexport;
pub mod schemas;
pub mod sync;
pub mod watched;

//! Writes of the operator: server-side apply with its field manager, and
//! deletion, also of an object only when it carries the offering's owner
//! annotation.

use std::fmt::Debug;

use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::is_not_found;
use crate::names::{FIELD_MANAGER, Names};

/// Whether `object` carries the owner annotation of the offering `names`
/// belongs to: the operator changes or deletes a kcp object only then.
pub fn is_ours(object: &impl Resource, names: &Names) -> bool {
    names.owns(object.meta())
}

/// Server-side applies `object` as the operator.
pub async fn apply<K>(
    api: &Api<K>,
    name: &str,
    object: &(impl Serialize + Debug),
) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// Deletes `name` if it exists; `Ok(())` when it is gone or going.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(error) if is_not_found(&error) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Deletes `name` when it carries this offering's owner annotation.
pub async fn delete_owned<K>(api: &Api<K>, name: &str, names: &Names) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.get_opt(name).await? {
        Some(object) if is_ours(&object, names) => delete_if_present(api, name).await,
        _ => Ok(()),
    }
}

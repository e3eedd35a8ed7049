//! Writes of the operator: server-side apply with its field manager,
//! deletion, and the one check of whether an object is an offering's
//! (its owner annotation) before either touches it.

use std::collections::BTreeMap;
use std::fmt::Debug;

use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, is_not_found};
use crate::names::{FIELD_MANAGER, Names, OWNER_ANNOTATION};

/// Whether `object` carries the owner annotation of the offering `names`
/// belongs to: the operator changes or deletes a kcp object only then.
pub fn is_ours(object: &impl Resource, names: &Names) -> bool {
    object.annotations().get(OWNER_ANNOTATION) == Some(&names.owner)
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

/// Applies `object` as `name` on the service cluster unless an object of
/// that name exists that is not the offering's (it lacks the offering's
/// labels): the operator never takes over what someone else made.
pub async fn apply_ours<K>(
    api: &Api<K>,
    name: &str,
    object: &(impl Serialize + Debug),
    names: &Names,
    what: &'static str,
) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let existing = api
        .get_metadata_opt(name)
        .await
        .map_err(|error| Error::service(what, error))?;
    if let Some(existing) = existing {
        refuse_foreign::<K>(&existing.metadata, names)?;
    }
    apply(api, name, object)
        .await
        .map_err(|error| Error::service(what, error))
}

/// An [`Error::ObjectConflict`] when `metadata` (of a `K`) does not carry the
/// offering's labels.
pub fn refuse_foreign<K: Resource<DynamicType = ()>>(
    metadata: &ObjectMeta,
    names: &Names,
) -> Result<(), Error> {
    if names.labels_name_this(metadata.labels.as_ref().unwrap_or(&BTreeMap::new())) {
        return Ok(());
    }
    Err(Error::ObjectConflict(format!(
        "{} {} exists and is not this offering's (it lacks the labels {}); delete or rename it, or give the offering another name",
        K::kind(&()),
        metadata.name.as_deref().unwrap_or_default(),
        names.children_selector()
    )))
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

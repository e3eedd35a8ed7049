//! The one object-sync engine: every write that keeps a copy in line with
//! its source, for primaries (kcp → service cluster, status back) and
//! related objects (either origin, status forward when asked) alike, as
//! upstream's single object syncer.
//!
//! An [`Engine`] knows which side the source is on, which finalizer holds
//! the source while a copy may exist, and how a write is recorded (echo and
//! mirror, for primaries). Its steps: hold or release the source, create
//! (or adopt) the copy, patch it from its last-known state, copy a status,
//! delete the copy. Every write carries the agent's field manager. What the
//! copy should look like is computed by the pure functions in `object.rs`.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch};
use serde_json::{Map, Value, json};

use super::error::SyncError;
use super::identity::{REMOTE_CLUSTER_LABEL, Side};
use super::object::{Stamp, finalizer_patch, hold_patch, update_patch};
use crate::context::{patch_params, post_params};

/// How the engine tells its user about a write it made.
pub type Record<'a> = &'a (dyn Fn(Side, &DynamicObject) + Sync);

/// How one kind of copy is kept: source side, finalizer, write recording.
pub struct Engine<'a> {
    /// The side the source lives on; the copy lives on the other.
    pub source: Side,
    /// The finalizer on the source while a copy may exist, if any.
    pub finalizer: Option<&'a str>,
    /// Called with every object a write returned.
    pub record: Record<'a>,
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("source", &self.source)
            .field("finalizer", &self.finalizer)
            .finish()
    }
}

/// What creating a copy did.
#[derive(Debug)]
pub enum Placed {
    /// The copy was created.
    Created(Box<DynamicObject>),
    /// An object of that name existed and now carries the stamp.
    Adopted,
    /// An object of that name exists and is being deleted.
    Deleting,
}

/// What deleting a copy did.
#[derive(Debug)]
pub enum Deleted {
    /// The copy is gone.
    Gone,
    /// The copy is held by finalizers of its own.
    Held(Box<DynamicObject>),
    /// The copy was gone already.
    Missing,
}

/// The object in a JSON form; objects read from a server always convert.
pub fn as_value(object: &DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or_default()
}

impl Engine<'_> {
    /// The side of the copy.
    pub fn destination(&self) -> Side {
        match self.source {
            Side::Kcp => Side::Service,
            Side::Service => Side::Kcp,
        }
    }

    /// Puts the finalizer on the source, and `marks` among its annotations,
    /// in one write; returns the source as it is now and whether the
    /// finalizer is new (the source was just accepted).
    pub async fn hold(
        &self,
        api: &Api<DynamicObject>,
        source: DynamicObject,
        marks: &BTreeMap<String, String>,
    ) -> Result<(DynamicObject, bool), SyncError> {
        let Some(patch) = hold_patch(&source, self.finalizer, marks) else {
            return Ok((source, false));
        };
        let accepted = self
            .finalizer
            .is_some_and(|finalizer| !source.finalizers().iter().any(|f| f == finalizer));
        let patched = api
            .patch(&source.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(SyncError::on(self.source))?;
        (self.record)(self.source, &patched);
        Ok((patched, accepted))
    }

    /// Takes the finalizer off the source once its copy is gone, and the
    /// annotations `marks` with it; returns the released source, or `None`
    /// when it was not held.
    pub async fn release(
        &self,
        api: &Api<DynamicObject>,
        source: &DynamicObject,
        marks: &[&str],
    ) -> Result<Option<DynamicObject>, SyncError> {
        let Some(mut patch) = self
            .finalizer
            .and_then(|finalizer| finalizer_patch(source, finalizer, false))
        else {
            return Ok(None);
        };
        let annotations = source.annotations();
        for mark in marks.iter().filter(|m| annotations.contains_key(**m)) {
            patch["metadata"]["annotations"][*mark] = Value::Null;
        }
        api.patch(&source.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await
            .map(Some)
            .map_err(SyncError::on(self.source))
    }

    /// Creates `copy`; an object of its name is adopted (given the copy's
    /// labels and annotations) unless it carries another source's
    /// `identity` labels.
    pub async fn create_or_adopt(
        &self,
        api: &Api<DynamicObject>,
        copy: &DynamicObject,
        identity: &BTreeMap<String, String>,
    ) -> Result<Placed, SyncError> {
        let side = self.destination();
        match api.create(&post_params(), copy).await {
            Ok(created) => {
                (self.record)(side, &created);
                Ok(Placed::Created(Box::new(created)))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let name = copy.name_any();
                let existing = api.get(&name).await.map_err(SyncError::on(side))?;
                let labels = existing.labels();
                let foreign = !identity.is_empty()
                    && labels.contains_key(REMOTE_CLUSTER_LABEL)
                    && identity.iter().any(|(k, v)| labels.get(k) != Some(v));
                if foreign {
                    return Err(SyncError::NameTaken(name));
                }
                if existing.metadata.deletion_timestamp.is_some() {
                    return Ok(Placed::Deleting);
                }
                let patch = json!({"metadata": {
                    "labels": copy.metadata.labels,
                    "annotations": copy.metadata.annotations,
                }});
                let adopted = api
                    .patch(&name, &patch_params(), &Patch::Merge(&patch))
                    .await
                    .map_err(SyncError::on(side))?;
                (self.record)(side, &adopted);
                Ok(Placed::Adopted)
            }
            Err(error) => Err(SyncError::on(side)(error)),
        }
    }

    /// Brings `copy` in line with `source` (both as JSON) from its
    /// last-known state, or from `prior` when the copy records none;
    /// returns the copy when the write changed it.
    pub async fn update(
        &self,
        api: &Api<DynamicObject>,
        source: &Value,
        copy: &DynamicObject,
        stamp: &Stamp,
        prior: Option<&Map<String, Value>>,
    ) -> Result<Option<DynamicObject>, SyncError> {
        let Some(patch) = update_patch(source, &as_value(copy), stamp, prior) else {
            return Ok(None);
        };
        let side = self.destination();
        let patched = api
            .patch(&copy.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(SyncError::on(side))?;
        (self.record)(side, &patched);
        // A patch that changed nothing on the server is not a write.
        Ok((patched.resource_version() != copy.resource_version()).then_some(patched))
    }

    /// Gives `object` (on `side`, as JSON) the `status`, removing it when
    /// `None`; returns the object when it was written.
    pub async fn copy_status(
        &self,
        api: &Api<DynamicObject>,
        side: Side,
        object: &Value,
        status: Option<&Value>,
    ) -> Result<Option<DynamicObject>, SyncError> {
        if object.get("status") == status {
            return Ok(None);
        }
        let mut updated = object.clone();
        match (status, updated.as_object_mut()) {
            (Some(status), _) => updated["status"] = status.clone(),
            (None, Some(fields)) => drop(fields.remove("status")),
            (None, None) => {}
        }
        let updated: DynamicObject =
            serde_json::from_value(updated).map_err(|e| SyncError::Malformed(e.to_string()))?;
        let replaced = api
            .replace_status(&updated.name_any(), &post_params(), &updated)
            .await
            .map_err(SyncError::on(side))?;
        (self.record)(side, &replaced);
        Ok(Some(replaced))
    }

    /// Deletes the copy (in the background).
    pub async fn delete(
        &self,
        api: &Api<DynamicObject>,
        copy: &DynamicObject,
    ) -> Result<Deleted, SyncError> {
        match api
            .delete(&copy.name_any(), &DeleteParams::background())
            .await
            .map(|response| response.left())
        {
            // Returned with finalizers of its own still on it.
            Ok(Some(deleting)) if !deleting.finalizers().is_empty() => {
                Ok(Deleted::Held(Box::new(deleting)))
            }
            Ok(_) => Ok(Deleted::Gone),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(Deleted::Missing),
            Err(error) => Err(SyncError::on(self.destination())(error)),
        }
    }
}

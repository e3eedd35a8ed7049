//! The copies of a primary's related objects, kept by the copy engine like
//! the primary itself: each located pair (`related.rs`) is created or
//! patched from its last-known state on the destination side, kcp-origin
//! objects carry the agent's finalizer until their copy is gone, and
//! service-origin copies are announced on the kcp primary in
//! `related-resources.syncagent.kcp.io/<id>.<index>`.

use std::collections::BTreeMap;

use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::{Map, Value, json};
use tracing::{debug, info};

use super::copy::{Engine, Placed, as_value};
use super::error::SyncError;
use super::identity::Side;
use super::object::{Stamp, new_copy};
use super::related::{KindCache, Pair, Primaries, api, pairs, sides};
use crate::api::published_resource::RelatedResourceSpec;

/// Annotation prefix on kcp primaries naming their service-origin related objects.
pub const ANNOTATION_PREFIX: &str = "related-resources.syncagent.kcp.io/";

/// What syncing the related objects of one primary did.
#[derive(Debug, Default)]
pub struct Synced {
    /// Annotations the kcp primary should carry.
    pub annotations: Map<String, Value>,
    /// Whether something was written.
    pub wrote: bool,
    /// Identifiers of related resources whose origin object is missing.
    pub missing: Vec<String>,
}

/// Related writes are not recorded: their watches wake the primary, whose
/// reconcile then finds nothing to do.
fn unrecorded(_: Side, _: &DynamicObject) {}

/// The engine for one related resource: its origin is the source, and
/// kcp-origin objects are held by `finalizer`.
fn engine<'a>(spec: &RelatedResourceSpec, finalizer: &'a str) -> Engine<'a> {
    let (origin, _) = sides(spec);
    Engine {
        source: origin,
        finalizer: (origin == Side::Kcp).then_some(finalizer),
        record: &unrecorded,
    }
}

/// The kinds of a related resource on its origin and destination sides.
async fn resolve(
    spec: &RelatedResourceSpec,
    kinds: &KindCache,
    primaries: &Primaries<'_>,
) -> Result<(ApiResource, ApiResource), SyncError> {
    let (origin, destination) = sides(spec);
    let (origin_gvr, destination_gvr) = spec.gvrs();
    let origin_kind = kinds
        .resolve(primaries.client(origin), origin, &origin_gvr)
        .await?;
    let destination_kind = kinds
        .resolve(primaries.client(destination), destination, &destination_gvr)
        .await?;
    Ok((origin_kind, destination_kind))
}

/// The API of `kind` on `side` in `namespace`, and the object `name` there.
async fn get(
    primaries: &Primaries<'_>,
    side: Side,
    kind: &ApiResource,
    namespace: Option<&str>,
    name: &str,
) -> Result<(Api<DynamicObject>, Option<DynamicObject>), SyncError> {
    let api = api(primaries.client(side), kind, namespace);
    let found = api.get_opt(name).await.map_err(SyncError::on(side))?;
    Ok((api, found))
}

/// Syncs every related object of a primary.
pub async fn sync(
    related: &[RelatedResourceSpec],
    kinds: &KindCache,
    primaries: &Primaries<'_>,
    finalizer: &str,
) -> Result<Synced, SyncError> {
    let mut synced = Synced::default();
    for spec in related {
        let (origin, _) = sides(spec);
        let (origin_kind, destination_kind) = resolve(spec, kinds, primaries).await?;
        let found = pairs(spec, primaries, &origin_kind).await?;
        if found.is_empty() {
            synced.missing.push(spec.identifier.clone());
        }
        let engine = engine(spec, finalizer);
        for (index, pair) in found.into_iter().enumerate() {
            let (origin_api, source) = get(
                primaries,
                origin,
                &origin_kind,
                pair.origin_namespace.as_deref(),
                &pair.origin_name,
            )
            .await?;
            let Some(source) = source else {
                debug!(identifier = %spec.identifier, name = %pair.origin_name, "The related object does not exist yet");
                synced.missing.push(spec.identifier.clone());
                continue;
            };
            let (source, _) = engine.hold(&origin_api, source, &BTreeMap::new()).await?;
            let source = as_value(&source);
            synced.wrote |=
                copy(spec, &engine, primaries, &destination_kind, &pair, &source).await?;
            if origin == Side::Service {
                synced.annotations.insert(
                    format!("{ANNOTATION_PREFIX}{}.{index}", spec.identifier),
                    json!({
                        "namespace": pair.destination_namespace.clone().unwrap_or_default(),
                        "name": pair.destination_name,
                        "apiVersion": source["apiVersion"],
                        "kind": source["kind"],
                    })
                    .to_string()
                    .into(),
                );
            }
        }
    }
    Ok(synced)
}

/// Creates or patches the copy of one related object (and its status, when
/// asked); returns whether it was written.
async fn copy(
    spec: &RelatedResourceSpec,
    engine: &Engine<'_>,
    primaries: &Primaries<'_>,
    kind: &ApiResource,
    pair: &Pair,
    source: &Value,
) -> Result<bool, SyncError> {
    let destination = engine.destination();
    let client = primaries.client(destination);
    if let Some(namespace) = &pair.destination_namespace {
        crate::context::ensure_namespace(client, namespace, &BTreeMap::new())
            .await
            .map_err(SyncError::on(destination))?;
    }
    let (destination_api, existing) = get(
        primaries,
        destination,
        kind,
        pair.destination_namespace.as_deref(),
        &pair.destination_name,
    )
    .await?;
    let stamp = Stamp::default();
    let (copy, wrote) = match existing {
        None => {
            let object = new_copy(
                source,
                &kind.api_version,
                &kind.kind,
                &pair.destination_name,
                pair.destination_namespace.as_deref(),
                &stamp,
            );
            let object: DynamicObject =
                serde_json::from_value(object).map_err(|e| SyncError::Malformed(e.to_string()))?;
            let placed = engine
                .create_or_adopt(&destination_api, &object, &BTreeMap::new())
                .await?;
            info!(identifier = %spec.identifier, name = %pair.destination_name, to = destination.name(), "Copied a related object");
            match placed {
                Placed::Created(created) => (Some(*created), true),
                Placed::Adopted | Placed::Deleting => (None, true),
            }
        }
        Some(existing) => match engine
            .update(&destination_api, source, &existing, &stamp, None)
            .await?
        {
            Some(patched) => {
                debug!(identifier = %spec.identifier, name = %pair.destination_name, "Updated a related object");
                (Some(patched), true)
            }
            None => (Some(existing), false),
        },
    };
    if spec.sync_status == Some(true)
        && let (Some(status), Some(copy)) = (source.get("status"), copy)
        && let Err(error) = engine
            .copy_status(
                &destination_api,
                destination,
                &as_value(&copy),
                Some(status),
            )
            .await
    {
        debug!(%error, "The related kind has no status subresource; status not copied");
    }
    Ok(wrote)
}

/// On deletion of the primary: removes destination copies that must go
/// (`cleanup`, or kcp-origin) and releases kcp-origin objects. Returns
/// whether everything is done.
pub async fn cleanup(
    related: &[RelatedResourceSpec],
    kinds: &KindCache,
    primaries: &Primaries<'_>,
    finalizer: &str,
) -> Result<bool, SyncError> {
    let mut done = true;
    for spec in related {
        let (origin, destination) = sides(spec);
        if !(spec.cleanup == Some(true) || origin == Side::Kcp) {
            continue;
        }
        let (origin_kind, destination_kind) = resolve(spec, kinds, primaries).await?;
        let engine = engine(spec, finalizer);
        for pair in pairs(spec, primaries, &origin_kind).await? {
            let (destination_api, copy) = get(
                primaries,
                destination,
                &destination_kind,
                pair.destination_namespace.as_deref(),
                &pair.destination_name,
            )
            .await?;
            if let Some(copy) = copy {
                if copy.metadata.deletion_timestamp.is_none() {
                    engine.delete(&destination_api, &copy).await?;
                }
                done = false;
                continue;
            }
            if engine.finalizer.is_some()
                && let (origin_api, Some(source)) = get(
                    primaries,
                    origin,
                    &origin_kind,
                    pair.origin_namespace.as_deref(),
                    &pair.origin_name,
                )
                .await?
            {
                engine.release(&origin_api, &source, &[]).await?;
            }
        }
    }
    Ok(done)
}

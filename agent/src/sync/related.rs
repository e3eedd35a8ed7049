//! Related objects (`spec.related`): Secrets, ConfigMaps or any other
//! resource that travels with a synced object, from the service cluster to
//! the consumer's workspace (origin `service`) or the other way (origin
//! `kcp`).
//!
//! Objects are found by a `reference` (a path into the primary object on
//! each side, arrays allowed, optional regex) or a `template`; namespaces the
//! same way, defaulting to each primary's namespace. The copy is made or
//! updated on the destination side; kcp-origin objects carry the agent's
//! finalizer until their copy is gone; service-origin copies are announced
//! on the kcp primary in `related-resources.syncagent.kcp.io/<id>.<index>`.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch};
use kube::core::GroupVersion;
use kube::{Client, ResourceExt};
use regex::Regex;
use serde_json::{Map, Value, json};
use tracing::{debug, info};

use super::error::SyncError;
use super::identity::Side;
use super::naming::Templates;
use super::object::{finalizer_patch, merge_diff};
use crate::api::published_resource::{
    RelatedResourceObjectSelector, RelatedResourceObjectSpec, RelatedResourceOrigin,
    RelatedResourceSpec,
};
use crate::context::{patch_params, post_params};
use crate::mutation::{get, split_path};

/// Annotation prefix on kcp primaries naming their service-origin related objects.
pub const ANNOTATION_PREFIX: &str = "related-resources.syncagent.kcp.io/";

/// Keys that are not copied between sides.
const NOT_COPIED: &[&str] = &["apiVersion", "kind", "metadata", "status"];

/// Resolved kinds per (side, group, version, resource), shared by a worker.
#[derive(Debug, Default)]
pub struct KindCache(Mutex<HashMap<(bool, String, String, String), ApiResource>>);

/// The two primaries and how to reach each side.
pub struct Primaries<'a> {
    /// Client for the consumer's workspace (through the virtual workspace).
    pub kcp: &'a Client,
    /// Client for the service cluster.
    pub service: &'a Client,
    /// The kcp primary.
    pub remote: &'a Value,
    /// The local copy of the primary.
    pub local: &'a Value,
    /// Logical cluster name of the workspace.
    pub cluster: &'a str,
    /// Workspace path, when known.
    pub cluster_path: &'a str,
    /// The compiled templates of the related resources.
    pub templates: &'a Templates,
}

impl std::fmt::Debug for Primaries<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primaries")
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Primaries<'_> {
    fn client(&self, side: Side) -> &Client {
        match side {
            Side::Kcp => self.kcp,
            Side::Service => self.service,
        }
    }

    fn primary(&self, side: Side) -> &Value {
        match side {
            Side::Kcp => self.remote,
            Side::Service => self.local,
        }
    }
}

/// One related object, located on both sides.
#[derive(Debug, Clone)]
struct Pair {
    origin_namespace: Option<String>,
    origin_name: String,
    destination_namespace: Option<String>,
    destination_name: String,
}

fn sides(spec: &RelatedResourceSpec) -> (Side, Side) {
    match spec.origin {
        RelatedResourceOrigin::Service => (Side::Service, Side::Kcp),
        RelatedResourceOrigin::Kcp => (Side::Kcp, Side::Service),
    }
}

impl KindCache {
    async fn resolve(
        &self,
        client: &Client,
        side: Side,
        gvr: &(String, String, String),
    ) -> Result<ApiResource, SyncError> {
        let key = (
            side == Side::Kcp,
            gvr.0.clone(),
            gvr.1.clone(),
            gvr.2.clone(),
        );
        if let Some(found) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(found.clone());
        }
        let gv = GroupVersion::gv(&gvr.0, &gvr.1);
        let group = kube::discovery::oneshot::pinned_group(client, &gv)
            .await
            .map_err(|e| match side {
                Side::Kcp => SyncError::Kcp(e),
                Side::Service => SyncError::Service(e),
            })?;
        let (resource, _) = group
            .recommended_resources()
            .into_iter()
            .find(|(r, _)| r.plural == gvr.2)
            .ok_or_else(|| {
                SyncError::Related(format!("{} does not serve {}", side.name(), gvr.2))
            })?;
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, resource.clone());
        Ok(resource)
    }
}

/// The kind of a related resource on its origin side, resolved with
/// `client` (the service cluster, or a kcp virtual workspace client).
pub async fn origin_kind(
    kinds: &KindCache,
    client: &Client,
    spec: &RelatedResourceSpec,
) -> Result<ApiResource, SyncError> {
    let (origin, _) = sides(spec);
    kinds.resolve(client, origin, &spec.gvrs().0).await
}

/// The templates of `related` (locators, selectors, rewrites), compiled.
pub fn templates(related: &[RelatedResourceSpec]) -> Templates {
    let locators = related
        .iter()
        .flat_map(|spec| std::iter::once(&spec.object.spec).chain(&spec.object.namespace));
    let mut texts: Vec<&str> = Vec::new();
    for locator in locators {
        texts.extend(
            locator
                .template
                .iter()
                .filter_map(|t| t.template.as_deref()),
        );
        if let Some(selector) = &locator.selector {
            for (key, value) in selector.match_labels.iter().flatten() {
                texts.extend([key.as_str(), value.as_str()]);
            }
            let rewrite = selector.rewrite.template.as_ref();
            texts.extend(rewrite.and_then(|t| t.template.as_deref()));
        }
    }
    Templates::with(texts)
}

/// Values a locator yields on one side: reference (strings, arrays of
/// strings; empty items kept as empty to keep pairs aligned) or template.
fn locate(
    spec: &RelatedResourceObjectSpec,
    side: Side,
    primaries: &Primaries<'_>,
) -> Result<Option<Vec<String>>, SyncError> {
    let primary = primaries.primary(side);
    if let Some(reference) = &spec.reference {
        let found = query(primary, &split_path(&reference.path));
        let values: Vec<String> = match found.as_slice() {
            [] | [Value::Null] => return Ok(None),
            [Value::Array(items)] => items.iter().map(text).collect(),
            many => many.iter().map(text).collect(),
        };
        let Some(regex) = &reference.regex else {
            return Ok(Some(values));
        };
        let replacement = regex.replacement.clone().unwrap_or_default();
        let values = match regex.pattern.as_deref().filter(|p| !p.is_empty()) {
            None => values.iter().map(|_| replacement.clone()).collect(),
            Some(pattern) => {
                let compiled = Regex::new(pattern)
                    .map_err(|e| SyncError::Related(format!("invalid regex {pattern:?}: {e}")))?;
                values
                    .iter()
                    .map(|v| compiled.replace_all(v, replacement.as_str()).into_owned())
                    .collect()
            }
        };
        return Ok(Some(values));
    }
    if let Some(template) = &spec.template {
        let data = json!({
            "Side": side.name(),
            "Object": primary,
            "ClusterName": primaries.cluster,
            "ClusterPath": primaries.cluster_path,
        });
        let rendered = primaries
            .templates
            .render(template.template.as_deref().unwrap_or_default(), &data)?
            .trim()
            .to_string();
        return Ok((!rendered.is_empty()).then(|| vec![rendered]));
    }
    Err(SyncError::Related(
        "only reference and template locate related objects in this version".into(),
    ))
}

/// The values at a path; a `#` segment (gjson's "every item") fans out over
/// an array, so `spec.users.#.secret` yields one value per user.
fn query(value: &Value, segments: &[String]) -> Vec<Value> {
    match segments.split_first() {
        None => vec![value.clone()],
        Some((first, rest)) if first == "#" => match value {
            Value::Array(items) => items
                .iter()
                .map(|item| query(item, rest).into_iter().next().unwrap_or(Value::Null))
                .collect(),
            _ => Vec::new(),
        },
        Some((first, rest)) => get(value, std::slice::from_ref(first))
            .map(|child| query(child, rest))
            .unwrap_or_default(),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(map) if map.len() == 1 => map.values().next().map(text).unwrap_or_default(),
        other => other.to_string(),
    }
}

async fn pairs(
    spec: &RelatedResourceSpec,
    primaries: &Primaries<'_>,
    origin_kind: &ApiResource,
) -> Result<Vec<Pair>, SyncError> {
    let (origin, destination) = sides(spec);
    let namespaces: Vec<(Option<String>, Option<String>)> = match &spec.object.namespace {
        // Namespaces chosen by label on the origin side, renamed by the rewrite rule.
        Some(RelatedResourceObjectSpec {
            selector: Some(selector),
            ..
        }) => {
            let namespace_kind = ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&());
            let namespaces = api(primaries.client(origin), &namespace_kind, None);
            let (from, to) = select(selector, &namespaces, origin, primaries).await?;
            from.into_iter()
                .zip(to)
                .map(|(o, d)| (Some(o), Some(d)))
                .collect()
        }
        Some(locator) => {
            let one = |side: Side| -> Result<Option<String>, SyncError> {
                Ok(locate(locator, side, primaries)?
                    .and_then(|v| v.into_iter().next())
                    .filter(|v| !v.is_empty()))
            };
            vec![(one(origin)?, one(destination)?)]
        }
        None => {
            let own = |side: Side| {
                primaries.primary(side)["metadata"]["namespace"]
                    .as_str()
                    .map(str::to_string)
            };
            vec![(own(origin), own(destination))]
        }
    };
    let mut pairs = Vec::new();
    for (origin_namespace, destination_namespace) in namespaces {
        let (origin_names, destination_names) = match &spec.object.spec.selector {
            Some(selector) => {
                let origin_api = api(
                    primaries.client(origin),
                    origin_kind,
                    origin_namespace.as_deref(),
                );
                select(selector, &origin_api, origin, primaries).await?
            }
            None => (
                locate(&spec.object.spec, origin, primaries)?.unwrap_or_default(),
                locate(&spec.object.spec, destination, primaries)?.unwrap_or_default(),
            ),
        };
        pairs.extend(
            origin_names
                .into_iter()
                .zip(destination_names)
                .filter(|(o, d)| !o.is_empty() && !d.is_empty())
                .map(|(origin_name, destination_name)| Pair {
                    origin_namespace: origin_namespace.clone(),
                    origin_name,
                    destination_namespace: destination_namespace.clone(),
                    destination_name,
                }),
        );
    }
    Ok(pairs)
}

/// Objects found by a label selector on the origin side, and their names on
/// the destination side after the rewrite rule. Label keys and values may be
/// templates over `.LocalObject`, `.RemoteObject`, `.ClusterName` and
/// `.ClusterPath`; a pair whose key renders empty is dropped.
async fn select(
    selector: &RelatedResourceObjectSelector,
    origin_api: &Api<DynamicObject>,
    origin: Side,
    primaries: &Primaries<'_>,
) -> Result<(Vec<String>, Vec<String>), SyncError> {
    let data = json!({
        "LocalObject": primaries.local,
        "RemoteObject": primaries.remote,
        "ClusterName": primaries.cluster,
        "ClusterPath": primaries.cluster_path,
    });
    let render = |text: &str| primaries.templates.render(text, &data);
    let mut labels = std::collections::BTreeMap::new();
    for (key, value) in selector.match_labels.clone().unwrap_or_default() {
        let key = render(&key)?;
        if !key.is_empty() {
            labels.insert(key, render(&value)?);
        }
    }
    let label_selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some(labels),
        match_expressions: selector.match_expressions.clone(),
    };
    let selector_text = kube::core::Selector::try_from(label_selector)
        .map_err(|e| SyncError::Related(format!("invalid selector: {e}")))?
        .to_string();
    let found = origin_api
        .list(&kube::api::ListParams::default().labels(&selector_text))
        .await
        .map_err(side_error(origin))?;
    let mut origin_names: Vec<String> = found.items.iter().map(|o| o.name_any()).collect();
    origin_names.sort();
    let rewrite = &selector.rewrite;
    let destination_names = origin_names
        .iter()
        .map(|name| {
            if let Some(regex) = &rewrite.regex {
                let replacement = regex.replacement.clone().unwrap_or_default();
                return match regex.pattern.as_deref().filter(|p| !p.is_empty()) {
                    None => Ok(replacement),
                    Some(pattern) => Regex::new(pattern)
                        .map(|r| r.replace_all(name, replacement.as_str()).into_owned())
                        .map_err(|e| SyncError::Related(format!("invalid regex {pattern:?}: {e}"))),
                };
            }
            match rewrite.template.as_ref().and_then(|t| t.template.clone()) {
                Some(template) => {
                    let mut data = data.clone();
                    data["Value"] = name.clone().into();
                    Ok(primaries.templates.render(&template, &data)?)
                }
                None => Ok(name.clone()),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((origin_names, destination_names))
}

fn api(client: &Client, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

fn side_error(side: Side) -> impl Fn(kube::Error) -> SyncError {
    move |e| match side {
        Side::Kcp => SyncError::Kcp(e),
        Side::Service => SyncError::Service(e),
    }
}

fn copied_fields(object: &Value) -> Map<String, Value> {
    object
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

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

/// Syncs every related object of a primary.
pub async fn sync(
    related: &[RelatedResourceSpec],
    kinds: &KindCache,
    primaries: &Primaries<'_>,
    finalizer: &str,
) -> Result<Synced, SyncError> {
    let mut annotations = Map::new();
    let mut wrote = false;
    let mut missing = Vec::new();
    for spec in related {
        let (origin, destination) = sides(spec);
        let (origin_gvr, destination_gvr) = spec.gvrs();
        let origin_kind = kinds
            .resolve(primaries.client(origin), origin, &origin_gvr)
            .await?;
        let destination_kind = kinds
            .resolve(primaries.client(destination), destination, &destination_gvr)
            .await?;
        let found = pairs(spec, primaries, &origin_kind).await?;
        if found.is_empty() {
            missing.push(spec.identifier.clone());
        }
        for (index, pair) in found.into_iter().enumerate() {
            let origin_api = api(
                primaries.client(origin),
                &origin_kind,
                pair.origin_namespace.as_deref(),
            );
            let Some(source) = origin_api
                .get_opt(&pair.origin_name)
                .await
                .map_err(side_error(origin))?
            else {
                debug!(identifier = %spec.identifier, name = %pair.origin_name, "The related object does not exist yet");
                missing.push(spec.identifier.clone());
                continue;
            };
            if origin == Side::Kcp
                && let Some(patch) = finalizer_patch(&source, finalizer, true)
            {
                origin_api
                    .patch(&pair.origin_name, &patch_params(), &Patch::Merge(&patch))
                    .await
                    .map_err(side_error(origin))?;
            }
            if let Some(namespace) = &pair.destination_namespace {
                crate::context::ensure_namespace(primaries.client(destination), namespace)
                    .await
                    .map_err(side_error(destination))?;
            }
            let destination_api = api(
                primaries.client(destination),
                &destination_kind,
                pair.destination_namespace.as_deref(),
            );
            let source_value = serde_json::to_value(&source).unwrap_or_default();
            let fields = copied_fields(&source_value);
            match destination_api
                .get_opt(&pair.destination_name)
                .await
                .map_err(side_error(destination))?
            {
                None => {
                    let mut object = Map::new();
                    object.insert(
                        "apiVersion".into(),
                        destination_kind.api_version.clone().into(),
                    );
                    object.insert("kind".into(), destination_kind.kind.clone().into());
                    let mut metadata = json!({"name": pair.destination_name});
                    if let Some(ns) = &pair.destination_namespace {
                        metadata["namespace"] = ns.clone().into();
                    }
                    object.insert("metadata".into(), metadata);
                    object.extend(fields.clone());
                    let object: DynamicObject = serde_json::from_value(Value::Object(object))
                        .map_err(|e| SyncError::Malformed(e.to_string()))?;
                    destination_api
                        .create(&post_params(), &object)
                        .await
                        .map_err(side_error(destination))?;
                    info!(identifier = %spec.identifier, name = %pair.destination_name, to = destination.name(), "Copied a related object");
                    wrote = true;
                }
                Some(existing) => {
                    let current =
                        copied_fields(&serde_json::to_value(&existing).unwrap_or_default());
                    let patch = merge_diff(&Value::Object(current), &Value::Object(fields.clone()));
                    if patch != json!({}) {
                        destination_api
                            .patch(
                                &pair.destination_name,
                                &patch_params(),
                                &Patch::Merge(&patch),
                            )
                            .await
                            .map_err(side_error(destination))?;
                        debug!(identifier = %spec.identifier, name = %pair.destination_name, "Updated a related object");
                        wrote = true;
                    }
                }
            }
            if spec.sync_status == Some(true)
                && let Some(status) = source_value.get("status")
            {
                let patch = json!({"status": status});
                if let Err(error) = destination_api
                    .patch_status(
                        &pair.destination_name,
                        &patch_params(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    debug!(%error, "The related kind has no status subresource; status not copied");
                }
            }
            if origin == Side::Service {
                annotations.insert(
                    format!("{ANNOTATION_PREFIX}{}.{index}", spec.identifier),
                    json!({
                        "namespace": pair.destination_namespace.clone().unwrap_or_default(),
                        "name": pair.destination_name,
                        "apiVersion": source_value["apiVersion"],
                        "kind": source_value["kind"],
                    })
                    .to_string()
                    .into(),
                );
            }
        }
    }
    Ok(Synced {
        annotations,
        wrote,
        missing,
    })
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
        let (origin_gvr, destination_gvr) = spec.gvrs();
        let origin_kind = kinds
            .resolve(primaries.client(origin), origin, &origin_gvr)
            .await?;
        let destination_kind = kinds
            .resolve(primaries.client(destination), destination, &destination_gvr)
            .await?;
        for pair in pairs(spec, primaries, &origin_kind).await? {
            let destination_api = api(
                primaries.client(destination),
                &destination_kind,
                pair.destination_namespace.as_deref(),
            );
            if let Some(copy) = destination_api
                .get_opt(&pair.destination_name)
                .await
                .map_err(side_error(destination))?
            {
                if copy.metadata.deletion_timestamp.is_none() {
                    destination_api
                        .delete(&pair.destination_name, &DeleteParams::background())
                        .await
                        .map_err(side_error(destination))?;
                }
                done = false;
                continue;
            }
            if origin == Side::Kcp {
                let origin_api = api(
                    primaries.client(origin),
                    &origin_kind,
                    pair.origin_namespace.as_deref(),
                );
                if let Some(source) = origin_api
                    .get_opt(&pair.origin_name)
                    .await
                    .map_err(side_error(origin))?
                    && let Some(patch) = finalizer_patch(&source, finalizer, false)
                {
                    origin_api
                        .patch(&pair.origin_name, &patch_params(), &Patch::Merge(&patch))
                        .await
                        .map_err(side_error(origin))?;
                }
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_is_the_source_side() {
        let spec: RelatedResourceSpec = serde_json::from_value(json!({
            "identifier": "c", "origin": "kcp", "kind": "Secret", "object": {"reference": {"path": "a"}}
        }))
        .expect("spec");
        assert_eq!(sides(&spec), (Side::Kcp, Side::Service));
    }

    #[tokio::test]
    async fn references_read_arrays_and_apply_a_regex() {
        let remote = json!({"spec": {"users": [{"secret": "a"}, {"secret": ""}, {"secret": "c"}]}});
        let primaries = Primaries {
            kcp: &dummy_client(),
            service: &dummy_client(),
            remote: &remote,
            local: &remote,
            cluster: "c1",
            cluster_path: "",
            templates: &Templates::default(),
        };
        let locator: RelatedResourceObjectSpec = serde_json::from_value(json!({
            "reference": {"path": "spec.users.#.secret", "regex": {"pattern": "^(.+)$", "replacement": "user-$1"}}
        }))
        .expect("locator");
        let found = locate(&locator, Side::Kcp, &primaries)
            .expect("located")
            .expect("some");
        assert_eq!(found, ["user-a", "", "user-c"]);
    }

    fn dummy_client() -> Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        Client::try_from(config).expect("client")
    }
}

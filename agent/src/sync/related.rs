//! Related objects (`spec.related`): Secrets, ConfigMaps or any other
//! resource that travels with a synced object, from the service cluster to
//! the consumer's workspace (origin `service`) or the other way (origin
//! `kcp`).
//!
//! This module locates them: which origin object pairs with which
//! destination name and namespace. Objects are found by a `reference` (a
//! path into the primary object on each side, arrays allowed, optional
//! regex), a `template`, or a label `selector` (the one lookup that lists
//! candidates on the origin side); namespaces the same way, defaulting to
//! each primary's namespace. The copies are kept by `related_copies.rs`.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersion;
use kube::{Client, ResourceExt};
use regex::Regex;
use serde_json::{Value, json};

use super::error::SyncError;
use super::identity::Side;
use super::naming::Templates;
use crate::api::published_resource::{
    RegularExpression, RelatedResourceObjectSelector, RelatedResourceObjectSpec,
    RelatedResourceOrigin, RelatedResourceSelectorRewrite, RelatedResourceSpec,
};
use crate::mutation::{get, split_path};

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
    /// The client of `side`.
    pub fn client(&self, side: Side) -> &Client {
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Namespace of the origin object, if namespaced.
    pub origin_namespace: Option<String>,
    /// Name of the origin object.
    pub origin_name: String,
    /// Namespace of its copy, if namespaced.
    pub destination_namespace: Option<String>,
    /// Name of its copy.
    pub destination_name: String,
}

/// The origin side of a related resource and the side of its copies.
pub fn sides(spec: &RelatedResourceSpec) -> (Side, Side) {
    match spec.origin {
        RelatedResourceOrigin::Service => (Side::Service, Side::Kcp),
        RelatedResourceOrigin::Kcp => (Side::Kcp, Side::Service),
    }
}

impl KindCache {
    /// The kind of `gvr` on `side`, asked of the server the first time.
    pub async fn resolve(
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
        return match &reference.regex {
            None => Ok(Some(values)),
            Some(regex) => replace(regex, &values).map(Some),
        };
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

/// The related objects of one primary, located on both sides.
pub async fn pairs(
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
    let data = selector_data(primaries);
    let query = selector_query(selector, &data, primaries.templates)?;
    let found = origin_api
        .list(&kube::api::ListParams::default().labels(&query))
        .await
        .map_err(SyncError::on(origin))?;
    let mut origin_names: Vec<String> = found.items.iter().map(|o| o.name_any()).collect();
    origin_names.sort();
    let destination_names =
        rewrite_names(&selector.rewrite, &origin_names, &data, primaries.templates)?;
    Ok((origin_names, destination_names))
}

/// What selector and rewrite templates can refer to.
fn selector_data(primaries: &Primaries<'_>) -> Value {
    json!({
        "LocalObject": primaries.local,
        "RemoteObject": primaries.remote,
        "ClusterName": primaries.cluster,
        "ClusterPath": primaries.cluster_path,
    })
}

/// The label selector of `selector` as a query, its templates rendered
/// over `data`; a label whose key renders empty is dropped.
fn selector_query(
    selector: &RelatedResourceObjectSelector,
    data: &Value,
    templates: &Templates,
) -> Result<String, SyncError> {
    let mut labels = std::collections::BTreeMap::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        let key = templates.render(key, data)?;
        if !key.is_empty() {
            labels.insert(key, templates.render(value, data)?);
        }
    }
    let label_selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some(labels),
        match_expressions: selector.match_expressions.clone(),
    };
    Ok(kube::core::Selector::try_from(label_selector)
        .map_err(|e| SyncError::Related(format!("invalid selector: {e}")))?
        .to_string())
}

/// The destination names of origin objects found by a selector: the
/// rewrite's regex or template (with `.Value`, the origin name) applied.
fn rewrite_names(
    rewrite: &RelatedResourceSelectorRewrite,
    names: &[String],
    data: &Value,
    templates: &Templates,
) -> Result<Vec<String>, SyncError> {
    if let Some(regex) = &rewrite.regex {
        return replace(regex, names);
    }
    let Some(template) = rewrite
        .template
        .as_ref()
        .and_then(|t| t.template.as_deref())
    else {
        return Ok(names.to_vec());
    };
    names
        .iter()
        .map(|name| {
            let mut data = data.clone();
            data["Value"] = name.clone().into();
            Ok(templates.render(template, &data)?)
        })
        .collect()
}

/// `values` with the regex replacement applied; without a pattern, every
/// value becomes the replacement.
fn replace(regex: &RegularExpression, values: &[String]) -> Result<Vec<String>, SyncError> {
    let replacement = regex.replacement.clone().unwrap_or_default();
    let Some(pattern) = regex.pattern.as_deref().filter(|p| !p.is_empty()) else {
        return Ok(values.iter().map(|_| replacement.clone()).collect());
    };
    let compiled = Regex::new(pattern)
        .map_err(|e| SyncError::Related(format!("invalid regex {pattern:?}: {e}")))?;
    Ok(values
        .iter()
        .map(|v| compiled.replace_all(v, replacement.as_str()).into_owned())
        .collect())
}

/// The API of `resource` in `namespace` (or cluster-wide).
pub fn api(client: &Client, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
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

    #[test]
    fn selector_labels_are_rendered_and_empty_keys_dropped() {
        let selector: RelatedResourceObjectSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "{{ .RemoteObject.metadata.name }}", "{{ .Missing }}": "x", "tier": "db"},
            "rewrite": {}
        }))
        .expect("selector");
        let data = json!({"RemoteObject": {"metadata": {"name": "w1"}}});
        let query = selector_query(&selector, &data, &Templates::default()).expect("query");
        assert_eq!(query, "app=w1,tier=db");
    }

    #[test]
    fn rewrites_apply_a_regex_a_template_or_keep_the_name() {
        let names = vec!["db-a".to_string(), "db-b".to_string()];
        let data = json!({"ClusterName": "c1"});
        let rewrite = |value: Value| -> Vec<String> {
            let rewrite: RelatedResourceSelectorRewrite =
                serde_json::from_value(value).expect("rewrite");
            rewrite_names(&rewrite, &names, &data, &Templates::default()).expect("names")
        };
        assert_eq!(rewrite(json!({})), names);
        assert_eq!(
            rewrite(json!({"regex": {"pattern": "^db-", "replacement": "copy-"}})),
            ["copy-a", "copy-b"]
        );
        assert_eq!(
            rewrite(json!({"regex": {"replacement": "fixed"}})),
            ["fixed", "fixed"]
        );
        assert_eq!(
            rewrite(json!({"template": {"template": "{{ .ClusterName }}-{{ .Value }}"}})),
            ["c1-db-a", "c1-db-b"]
        );
    }

    #[test]
    fn an_invalid_regex_is_an_error() {
        let regex: RegularExpression =
            serde_json::from_value(json!({"pattern": "(", "replacement": "x"})).expect("regex");
        assert!(matches!(
            replace(&regex, &["a".to_string()]),
            Err(SyncError::Related(_))
        ));
    }

    fn dummy_client() -> Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        Client::try_from(config).expect("client")
    }
}

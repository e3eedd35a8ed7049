//! Pure steps of syncing one object, for primaries and related objects
//! alike: which fields are copied, what a new copy looks like, the JSON
//! merge patch that brings a copy in line from the last-known state, and
//! finalizer patches. The IO around them is in `copy.rs`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::identity::{
    AGENT_LABEL, LOCAL_OBJECT_ANNOTATION, REMOTE_PATH_ANNOTATION, RemoteKey, SYNCED_BY_ANNOTATION,
};
use super::naming::Placement;

/// Annotation on a copy holding the last state synced from its source (the
/// top-level fields other than metadata and status), so the next sync can
/// send only what changed at the source and keep what the destination's
/// side added.
pub const LAST_KNOWN_ANNOTATION: &str = "syncagent.kcp.io/last-known-state";
/// Largest last-known state stored; larger objects fall back to full updates.
pub const LAST_KNOWN_LIMIT: usize = 128 * 1024;

/// Top-level keys that are never copied as "spec".
const NOT_SPEC: &[&str] = &["apiVersion", "kind", "metadata", "status"];
/// Label prefixes and keys never copied from kcp.
const UNSYNCED_LABEL_PREFIXES: &[&str] = &["claimed.internal.apis.kcp.io/", "syncagent.kcp.io/"];
/// Annotation keys and prefixes never copied from kcp.
const UNSYNCED_ANNOTATIONS: &[&str] = &[
    "kcp.io/cluster",
    "kubectl.kubernetes.io/last-applied-configuration",
    "syncagent.kcp.io/",
    "related-resources.syncagent.kcp.io/",
];

/// The fields of an object that are copied: every top-level field except
/// `apiVersion`, `kind`, `metadata` and `status`.
pub fn spec_fields(object: &Value) -> Map<String, Value> {
    object
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !NOT_SPEC.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn synced_labels(object: &Value) -> BTreeMap<String, String> {
    string_map(&object["metadata"]["labels"])
        .into_iter()
        .filter(|(k, _)| !UNSYNCED_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect()
}

fn synced_annotations(object: &Value) -> BTreeMap<String, String> {
    string_map(&object["metadata"]["annotations"])
        .into_iter()
        .filter(|(k, _)| !UNSYNCED_ANNOTATIONS.iter().any(|p| k.starts_with(p)))
        .collect()
}

/// A JSON object of strings as a map.
pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whose copy an object is: the kcp object's key, the agent, and (with
/// `enableWorkspacePaths`) the workspace path.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// The kcp object.
    pub key: &'a RemoteKey,
    /// The agent's name.
    pub agent: &'a str,
    /// The workspace path, when recorded.
    pub workspace_path: Option<&'a str>,
}

impl Owner<'_> {
    /// The identity labels of the copy: the key's and the agent's.
    pub fn identity(&self) -> BTreeMap<String, String> {
        let mut labels = self.key.labels();
        labels.insert(AGENT_LABEL.into(), self.agent.into());
        labels
    }

    /// What the copy of `remote` carries: the labels and annotations synced
    /// from kcp, and the identity.
    pub fn stamp(&self, remote: &Value) -> Stamp {
        let mut labels = synced_labels(remote);
        labels.extend(self.identity());
        let mut annotations = synced_annotations(remote);
        annotations.extend(self.key.annotations());
        if let Some(path) = self.workspace_path {
            annotations.insert(REMOTE_PATH_ANNOTATION.into(), path.into());
        }
        Stamp {
            labels,
            annotations,
        }
    }
}

impl Owner<'_> {
    /// The annotations the kcp object carries while it is synced: which
    /// agent syncs it and where its copy is.
    pub fn marks(&self, placement: &Placement) -> BTreeMap<String, String> {
        let copy = match &placement.namespace {
            Some(namespace) => format!("{namespace}/{}", placement.name),
            None => placement.name.clone(),
        };
        BTreeMap::from([
            (SYNCED_BY_ANNOTATION.to_string(), self.agent.to_string()),
            (LOCAL_OBJECT_ANNOTATION.to_string(), copy),
        ])
    }
}

/// The labels and annotations a copy carries besides its copied fields;
/// they are added and repaired on the copy, never removed. Related copies
/// carry none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    /// Labels of the copy.
    pub labels: BTreeMap<String, String>,
    /// Annotations of the copy.
    pub annotations: BTreeMap<String, String>,
}

/// The local copy to create for a kcp object.
pub fn new_local(
    remote: &Value,
    api_version: &str,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    owner: Owner<'_>,
) -> Value {
    new_copy(
        remote,
        api_version,
        kind,
        name,
        namespace,
        &owner.stamp(remote),
    )
}

/// The copy to create of `source`: its copied fields, the stamp, and the
/// last-known state.
pub fn new_copy(
    source: &Value,
    api_version: &str,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    stamp: &Stamp,
) -> Value {
    let labels = &stamp.labels;
    let mut annotations = stamp.annotations.clone();
    let fields = spec_fields(source);
    if keeps_state(source) {
        annotations.extend(last_known_annotation(&fields));
    }
    let mut metadata = json!({"name": name, "labels": labels, "annotations": annotations});
    if let Some(namespace) = namespace {
        metadata["namespace"] = namespace.into();
    }
    let mut object = Map::new();
    object.insert("apiVersion".into(), api_version.into());
    object.insert("kind".into(), kind.into());
    object.insert("metadata".into(), metadata);
    object.extend(fields);
    Value::Object(object)
}

/// Whether the copy `local` of `source` lacks the last-known state it
/// should record (made by another agent, or before the state fitted).
pub fn lacks_state(source: &Value, local: &Value) -> bool {
    keeps_state(source) && local["metadata"]["annotations"][LAST_KNOWN_ANNOTATION].is_null()
}

/// Whether a copy of `source` records its last-known state. Not for
/// Secrets: the state would repeat their values in an annotation, which
/// `kubectl describe` and metadata readers show. Their copies are kept by
/// restoring each source value (keys the destination added stay; a key
/// removed at the source stays on the copy until removed there).
fn keeps_state(source: &Value) -> bool {
    !(source["apiVersion"] == "v1" && source["kind"] == "Secret")
}

fn last_known_annotation(fields: &Map<String, Value>) -> Option<(String, String)> {
    let state = serde_json::to_string(fields).ok()?;
    (state.len() <= LAST_KNOWN_LIMIT).then(|| (LAST_KNOWN_ANNOTATION.to_string(), state))
}

/// The merge patch that brings an existing copy in line with its source,
/// or `None` when nothing changed.
///
/// With a last-known state, only the source-side delta is sent, so fields
/// the destination's side added or defaulted stay. Without one, every
/// copied field is restored. `prior` is the state to use when the copy
/// carries none of its own (what an upstream agent recorded elsewhere); the
/// patch then records the copy's state. The stamp's labels and annotations
/// are added or repaired (never removed).
pub fn update_patch(
    source: &Value,
    local: &Value,
    stamp: &Stamp,
    prior: Option<&Map<String, Value>>,
) -> Option<Value> {
    let desired = spec_fields(source);
    let keeps_state = keeps_state(source);
    let own = local["metadata"]["annotations"][LAST_KNOWN_ANNOTATION]
        .as_str()
        .filter(|_| keeps_state)
        .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok());
    let from_prior = own.is_none() && prior.is_some();
    let last_known = own.or_else(|| prior.cloned());
    let mut patch = match &last_known {
        Some(last) => merge_diff(
            &Value::Object(last.clone()),
            &Value::Object(desired.clone()),
        ),
        // No state to diff against: restore what kcp says, field by field,
        // and leave everything else alone (so it converges instead of
        // resending the whole object every time).
        None => Value::Object(
            desired
                .iter()
                .filter_map(|(field, value)| {
                    repair(local.get(field).unwrap_or(&Value::Null), value)
                        .map(|fix| (field.clone(), fix))
                })
                .collect(),
        ),
    };
    let patch_fields = patch.as_object_mut()?;
    // Values the consumer set that were changed on the service cluster are
    // put back; fields the consumer never set are left to the provider.
    if let Some(last) = &last_known {
        for (field, value) in &desired {
            if last.get(field) == Some(value)
                && let Some(repair) = repair(local.get(field).unwrap_or(&Value::Null), value)
            {
                patch_fields.insert(field.clone(), repair);
            }
        }
    }

    let mut labels = Map::new();
    let local_labels = string_map(&local["metadata"]["labels"]);
    for (k, v) in &stamp.labels {
        if local_labels.get(k) != Some(v) {
            labels.insert(k.clone(), v.clone().into());
        }
    }
    let mut annotations = Map::new();
    let local_annotations = string_map(&local["metadata"]["annotations"]);
    for (k, v) in &stamp.annotations {
        if local_annotations.get(k) != Some(v) {
            annotations.insert(k.clone(), v.clone().into());
        }
    }
    let spec_changed = !patch_fields.is_empty();
    if keeps_state
        && (spec_changed || from_prior || last_known.as_ref() != Some(&desired))
        && let Some((k, v)) = last_known_annotation(&desired)
        && local_annotations.get(&k) != Some(&v)
    {
        annotations.insert(k, v.into());
    }
    let mut metadata = Map::new();
    if !labels.is_empty() {
        metadata.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    if !metadata.is_empty() {
        patch_fields.insert("metadata".into(), Value::Object(metadata));
    }
    (!patch_fields.is_empty()).then_some(patch)
}

/// The merge patch restoring every value of `wanted` in `current` without
/// removing keys `wanted` does not have; `None` when nothing differs.
fn repair(current: &Value, wanted: &Value) -> Option<Value> {
    match (current, wanted) {
        (Value::Object(current), Value::Object(wanted)) => {
            let patch: Map<String, Value> = wanted
                .iter()
                .filter_map(|(key, value)| {
                    let fix = match current.get(key) {
                        Some(existing) => repair(existing, value)?,
                        None => value.clone(),
                    };
                    Some((key.clone(), fix))
                })
                .collect();
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        // A null the consumer wrote means "unset"; an absent value is that already.
        (Value::Null, Value::Null) => None,
        (current, wanted) => (current != wanted).then(|| wanted.clone()),
    }
}

/// Merge patch that holds `object`: puts `finalizer` on it (guarded by
/// its resourceVersion) and the `marks` among its annotations; `None` when
/// it carries both already.
pub fn hold_patch(
    object: &kube::api::DynamicObject,
    finalizer: Option<&str>,
    marks: &BTreeMap<String, String>,
) -> Option<Value> {
    use kube::ResourceExt;
    let mut patch = finalizer
        .and_then(|finalizer| finalizer_patch(object, finalizer, true))
        .unwrap_or_else(|| json!({"metadata": {}}));
    let current = object.annotations();
    let missing: Map<String, Value> = marks
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    if !missing.is_empty() {
        patch["metadata"]["annotations"] = Value::Object(missing);
    }
    (patch["metadata"] != json!({})).then_some(patch)
}

/// The merge patch that adds (`present`) or removes `finalizer`, guarded by
/// the object's resourceVersion so a concurrent change makes it fail rather
/// than lose another finalizer; `None` when nothing needs to change.
pub fn finalizer_patch(
    object: &kube::api::DynamicObject,
    finalizer: &str,
    present: bool,
) -> Option<Value> {
    use kube::ResourceExt;
    let current = object.finalizers();
    if current.iter().any(|f| f == finalizer) == present {
        return None;
    }
    let mut finalizers: Vec<String> = current
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if present {
        finalizers.push(finalizer.to_string());
        finalizers.sort();
    }
    Some(
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": object.resource_version()}}),
    )
}

/// RFC 7386 merge patch turning `from` into `to`.
pub fn merge_diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = Map::new();
            for (key, old) in from {
                match to.get(key) {
                    None => {
                        patch.insert(key.clone(), Value::Null);
                    }
                    Some(new) if new != old => {
                        patch.insert(key.clone(), merge_diff(old, new));
                    }
                    Some(_) => {}
                }
            }
            for (key, new) in to {
                if !from.contains_key(key) {
                    patch.insert(key.clone(), new.clone());
                }
            }
            Value::Object(patch)
        }
        (_, to) => to.clone(),
    }
}

#[cfg(test)]
mod tests;

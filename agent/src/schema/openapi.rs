//! Schemas of built-in types (which have no CRD) from the API server's
//! OpenAPI v3 documents, turned into structural CRD schemas: references are
//! inlined, recursion and untyped nodes become `x-kubernetes-preserve-unknown-fields`,
//! and keys a CRD schema may not carry (defaults, patch strategies, GVK
//! markers) are dropped.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinitionNames, CustomResourceDefinitionSpec, CustomResourceDefinitionVersion,
    CustomResourceSubresourceScale, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use serde_json::{Map, Value, json};

/// Keys copied unchanged from an OpenAPI schema into a CRD schema.
const KEPT_KEYS: &[&str] = &[
    "type",
    "format",
    "description",
    "enum",
    "required",
    "nullable",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
];

const REF_PREFIX: &str = "#/components/schemas/";

/// Why a built-in type's schema cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenApiError {
    /// The document has no schema for the kind.
    #[error("the OpenAPI document of {group_version} has no schema for kind {kind}")]
    KindNotFound {
        /// `group/version` or `v1`.
        group_version: String,
        /// The kind.
        kind: String,
    },
    /// The converted schema is not a valid CRD schema.
    #[error("the OpenAPI schema of {0} cannot be expressed as a CRD schema: {1}")]
    Invalid(String, String),
}

/// One served version of a built-in resource, as discovery reports it.
#[derive(Debug, Clone)]
pub struct BuiltinVersion {
    /// Version name.
    pub name: String,
    /// The group-version's OpenAPI v3 document.
    pub document: Value,
    /// Whether the resource has a `status` subresource in this version.
    pub status: bool,
    /// Whether the resource has a `scale` subresource in this version.
    pub scale: bool,
}

/// Identity of a built-in resource.
#[derive(Debug, Clone)]
pub struct BuiltinResource {
    /// API group, empty for core.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Plural resource name.
    pub plural: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// The discovery-preferred version, which becomes the storage version.
    pub preferred_version: String,
    /// Short names from discovery.
    pub short_names: Vec<String>,
    /// Categories from discovery.
    pub categories: Vec<String>,
}

/// Builds a CRD spec for a built-in resource: every version served, the
/// preferred one stored, subresources as discovered.
pub fn crd_spec(
    resource: &BuiltinResource,
    versions: &[BuiltinVersion],
) -> Result<CustomResourceDefinitionSpec, OpenApiError> {
    let mut crd_versions = Vec::new();
    for version in versions {
        let group_version = if resource.group.is_empty() {
            version.name.clone()
        } else {
            format!("{}/{}", resource.group, version.name)
        };
        let schema = schema_for_kind(
            &version.document,
            &resource.group,
            &version.name,
            &resource.kind,
        )
        .ok_or_else(|| OpenApiError::KindNotFound {
            group_version: group_version.clone(),
            kind: resource.kind.clone(),
        })?;
        let props: JSONSchemaProps = serde_json::from_value(schema).map_err(|e| {
            OpenApiError::Invalid(format!("{group_version} {}", resource.kind), e.to_string())
        })?;
        let subresources = (version.status || version.scale).then(|| CustomResourceSubresources {
            status: version
                .status
                .then(|| CustomResourceSubresourceStatus(json!({}))),
            scale: version.scale.then(|| CustomResourceSubresourceScale {
                spec_replicas_path: ".spec.replicas".into(),
                status_replicas_path: ".status.replicas".into(),
                label_selector_path: None,
            }),
        });
        crd_versions.push(CustomResourceDefinitionVersion {
            name: version.name.clone(),
            served: true,
            storage: version.name == resource.preferred_version,
            schema: Some(CustomResourceValidation {
                open_api_v3_schema: Some(props),
            }),
            subresources,
            ..Default::default()
        });
    }
    super::sort_versions(&mut crd_versions);
    Ok(CustomResourceDefinitionSpec {
        group: resource.group.clone(),
        names: CustomResourceDefinitionNames {
            kind: resource.kind.clone(),
            list_kind: Some(format!("{}List", resource.kind)),
            plural: resource.plural.clone(),
            singular: Some(resource.kind.to_lowercase()),
            short_names: (!resource.short_names.is_empty()).then(|| resource.short_names.clone()),
            categories: (!resource.categories.is_empty()).then(|| resource.categories.clone()),
        },
        scope: if resource.namespaced {
            "Namespaced"
        } else {
            "Cluster"
        }
        .into(),
        versions: crd_versions,
        ..Default::default()
    })
}

/// The structural schema of `kind` in an OpenAPI v3 document, or `None` if
/// the document does not define the kind.
pub fn schema_for_kind(document: &Value, group: &str, version: &str, kind: &str) -> Option<Value> {
    let schemas = document.pointer("/components/schemas")?.as_object()?;
    let (name, root) = schemas.iter().find(|(_, schema)| {
        schema["x-kubernetes-group-version-kind"]
            .as_array()
            .is_some_and(|gvks| {
                gvks.iter().any(|gvk| {
                    gvk["group"].as_str().unwrap_or("") == group
                        && gvk["version"] == version
                        && gvk["kind"] == kind
                })
            })
    })?;
    let mut stack = BTreeSet::from([name.clone()]);
    let mut converted = convert(root, schemas, &mut stack);
    if let Some(metadata) = converted.pointer_mut("/properties/metadata") {
        // A CRD schema may not describe metadata beyond its type.
        *metadata = json!({"type": "object"});
    }
    Some(converted)
}

fn convert(node: &Value, schemas: &Map<String, Value>, stack: &mut BTreeSet<String>) -> Value {
    let Some(object) = node.as_object() else {
        return preserve_unknown();
    };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        return resolve(reference, object, schemas, stack);
    }
    if let Some(Value::Array(parts)) = object.get("allOf") {
        if let [single] = parts.as_slice() {
            let mut inner = convert(single, schemas, stack);
            copy_description(object, &mut inner);
            return inner;
        }
        return preserve_unknown();
    }
    if object.get("format").and_then(Value::as_str) == Some("int-or-string") {
        return with_description(object, json!({"x-kubernetes-int-or-string": true}));
    }
    for junctor in ["oneOf", "anyOf"] {
        if let Some(Value::Array(options)) = object.get(junctor) {
            let types: BTreeSet<&str> = options.iter().filter_map(|o| o["type"].as_str()).collect();
            let int_or_string =
                types.contains("string") && (types.contains("integer") || types.contains("number"));
            return with_description(
                object,
                if int_or_string {
                    json!({"x-kubernetes-int-or-string": true})
                } else {
                    preserve_unknown()
                },
            );
        }
    }

    let mut out = Map::new();
    for key in KEPT_KEYS {
        if let Some(value) = object.get(*key) {
            out.insert((*key).to_string(), value.clone());
        }
    }
    if let Some(Value::Object(properties)) = object.get("properties") {
        let converted: Map<String, Value> = properties
            .iter()
            .map(|(name, child)| (name.clone(), convert(child, schemas, stack)))
            .collect();
        out.insert("properties".into(), Value::Object(converted));
        out.entry("type").or_insert_with(|| "object".into());
    }
    if let Some(items) = object.get("items") {
        out.insert("items".into(), convert(items, schemas, stack));
        out.entry("type").or_insert_with(|| "array".into());
        keep_map_keys_defaulted(&mut out, items, schemas);
    }
    match object.get("additionalProperties") {
        Some(extra @ Value::Object(_)) if !out.contains_key("properties") => {
            out.insert(
                "additionalProperties".into(),
                convert(extra, schemas, stack),
            );
            out.entry("type").or_insert_with(|| "object".into());
        }
        Some(Value::Bool(true)) => {
            out.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
        }
        _ => {}
    }
    if out.get("type").and_then(Value::as_str) == Some("array") && !out.contains_key("items") {
        out.insert("items".into(), preserve_unknown());
    }
    let typed = out.contains_key("type")
        || out.contains_key("x-kubernetes-int-or-string")
        || out.contains_key("x-kubernetes-preserve-unknown-fields");
    if !typed {
        out.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
    }
    Value::Object(out)
}

/// A list of `x-kubernetes-list-type: map` needs every key of its items
/// required or defaulted. Defaults are dropped in general, so a key's
/// default is taken back from the OpenAPI items (`source`); a key without
/// one makes the list atomic instead, as a CRD could not declare it.
fn keep_map_keys_defaulted(
    list: &mut Map<String, Value>,
    source: &Value,
    schemas: &Map<String, Value>,
) {
    let Some(keys) = list
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .cloned()
    else {
        return;
    };
    let source = referenced(source, schemas);
    let items = list.get_mut("items").and_then(Value::as_object_mut);
    let Some(items) = items else {
        return;
    };
    let required: BTreeSet<String> = items
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    let mut atomic = false;
    for key in keys.iter().filter_map(Value::as_str) {
        if required.contains(key) {
            continue;
        }
        let default = source["properties"][key].get("default").cloned();
        match (
            default,
            items.get_mut("properties").and_then(|p| p.get_mut(key)),
        ) {
            (Some(default), Some(property)) => property["default"] = default,
            _ => atomic = true,
        }
    }
    if atomic {
        list.remove("x-kubernetes-list-map-keys");
        list.insert("x-kubernetes-list-type".into(), "atomic".into());
    }
}

/// The schema `node` stands for, through `$ref` and one-part `allOf`.
fn referenced<'a>(mut node: &'a Value, schemas: &'a Map<String, Value>) -> &'a Value {
    for _ in 0..8 {
        if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
            node = schemas
                .get(reference.strip_prefix(REF_PREFIX).unwrap_or(reference))
                .unwrap_or(&Value::Null);
        } else if let Some([single]) = node
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            node = single;
        } else {
            break;
        }
    }
    node
}

fn resolve(
    reference: &str,
    referrer: &Map<String, Value>,
    schemas: &Map<String, Value>,
    stack: &mut BTreeSet<String>,
) -> Value {
    let name = reference.strip_prefix(REF_PREFIX).unwrap_or(reference);
    let Some(target) = schemas.get(name) else {
        return preserve_unknown();
    };
    if !stack.insert(name.to_string()) {
        // A recursive type: stop here and accept anything below.
        return with_description(referrer, preserve_unknown());
    }
    let mut inner = convert(target, schemas, stack);
    stack.remove(name);
    copy_description(referrer, &mut inner);
    inner
}

fn preserve_unknown() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn with_description(from: &Map<String, Value>, mut to: Value) -> Value {
    copy_description(from, &mut to);
    to
}

fn copy_description(from: &Map<String, Value>, to: &mut Value) {
    if let (Some(description), Some(object)) = (from.get("description"), to.as_object_mut()) {
        object.insert("description".into(), description.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        json!({"components": {"schemas": {
            "io.example.v1.Widget": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "example.io", "version": "v1", "kind": "Widget"}],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.ObjectMeta"}], "default": {}},
                    "spec": {"allOf": [{"$ref": "#/components/schemas/io.example.v1.WidgetSpec"}],
                             "description": "The spec.", "default": {}},
                }
            },
            "io.example.v1.WidgetSpec": {
                "type": "object",
                "properties": {
                    "port": {"$ref": "#/components/schemas/io.k8s.IntOrString"},
                    "size": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                    "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/io.example.v1.WidgetSpec"}},
                    "raw": {"description": "anything"},
                    "tags": {"type": "array", "items": {"type": "string"},
                             "x-kubernetes-patch-strategy": "merge", "x-kubernetes-list-type": "set"}
                }
            },
            "io.k8s.IntOrString": {"type": "string", "format": "int-or-string"},
            "io.k8s.ObjectMeta": {"type": "object", "properties": {"name": {"type": "string"}}}
        }}})
    }

    #[test]
    fn references_are_inlined_and_crd_incompatible_keys_dropped() {
        let schema = schema_for_kind(&document(), "example.io", "v1", "Widget").expect("found");
        assert_eq!(schema["properties"]["metadata"], json!({"type": "object"}));
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["description"], "The spec.");
        assert!(spec.get("default").is_none());
        let props = &spec["properties"];
        assert_eq!(props["port"], json!({"x-kubernetes-int-or-string": true}));
        assert_eq!(props["size"], json!({"x-kubernetes-int-or-string": true}));
        assert_eq!(
            props["labels"]["additionalProperties"],
            json!({"type": "string"})
        );
        assert_eq!(props["raw"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(props["tags"]["x-kubernetes-list-type"], "set");
        assert!(props["tags"].get("x-kubernetes-patch-strategy").is_none());
    }

    #[test]
    fn keys_of_map_lists_keep_their_defaults_or_the_list_turns_atomic() {
        let document = json!({"components": {"schemas": {
            "io.example.v1.Pod": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "example.io", "version": "v1", "kind": "Pod"}],
                "properties": {
                    "ports": {"type": "array",
                              "items": {"allOf": [{"$ref": "#/components/schemas/io.example.v1.Port"}], "default": {}},
                              "x-kubernetes-list-type": "map",
                              "x-kubernetes-list-map-keys": ["containerPort", "protocol"]},
                    "volumes": {"type": "array",
                                "items": {"$ref": "#/components/schemas/io.example.v1.Volume"},
                                "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["name"]},
                }
            },
            "io.example.v1.Port": {"type": "object", "required": ["containerPort"], "properties": {
                "containerPort": {"type": "integer"},
                "protocol": {"type": "string", "default": "TCP"},
            }},
            "io.example.v1.Volume": {"type": "object", "properties": {"name": {"type": "string"}}},
        }}});
        let schema = schema_for_kind(&document, "example.io", "v1", "Pod").expect("found");
        let ports = &schema["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-list-type"], "map");
        assert_eq!(ports["items"]["properties"]["protocol"]["default"], "TCP");
        assert!(
            ports["items"]["properties"]["containerPort"]
                .get("default")
                .is_none()
        );
        let volumes = &schema["properties"]["volumes"];
        assert_eq!(volumes["x-kubernetes-list-type"], "atomic");
        assert!(volumes.get("x-kubernetes-list-map-keys").is_none());
    }

    #[test]
    fn recursive_types_stop_at_the_first_repetition() {
        let schema = schema_for_kind(&document(), "example.io", "v1", "Widget").expect("found");
        let children = &schema["properties"]["spec"]["properties"]["children"];
        assert_eq!(
            children["items"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }

    #[test]
    fn a_missing_kind_is_reported() {
        assert!(schema_for_kind(&document(), "example.io", "v1", "Gadget").is_none());
        let resource = BuiltinResource {
            group: "example.io".into(),
            kind: "Gadget".into(),
            plural: "gadgets".into(),
            namespaced: true,
            preferred_version: "v1".into(),
            short_names: vec![],
            categories: vec![],
        };
        let version = BuiltinVersion {
            name: "v1".into(),
            document: document(),
            status: false,
            scale: false,
        };
        assert!(matches!(
            crd_spec(&resource, &[version]),
            Err(OpenApiError::KindNotFound { .. })
        ));
    }

    #[test]
    fn builtin_crd_spec_stores_the_preferred_version_and_keeps_subresources() {
        let resource = BuiltinResource {
            group: "example.io".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
            namespaced: true,
            preferred_version: "v1".into(),
            short_names: vec!["wd".into()],
            categories: vec![],
        };
        let version = BuiltinVersion {
            name: "v1".into(),
            document: document(),
            status: true,
            scale: true,
        };
        let spec = crd_spec(&resource, &[version]).expect("builds");
        assert_eq!(spec.scope, "Namespaced");
        assert!(spec.versions[0].storage);
        let subresources = spec.versions[0]
            .subresources
            .as_ref()
            .expect("subresources");
        assert!(subresources.status.is_some());
        assert_eq!(
            subresources
                .scale
                .as_ref()
                .map(|s| s.spec_replicas_path.as_str()),
            Some(".spec.replicas")
        );
        assert_eq!(spec.names.short_names, Some(vec!["wd".to_string()]));
    }
}

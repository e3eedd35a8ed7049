//! From a service-cluster CRD and a PublishedResource to the projected
//! APIResourceSchema the agent publishes in kcp. Everything here is pure.
//!
//! Order of the projection (as upstream): keep the selected versions; make
//! sure one of them is the storage version; rename versions; then apply
//! group, kind (with derived names), plural, scope, categories and short
//! names. The schema's name is content-addressed:
//! `v<first 8 hex of SHA-1 of the projected spec>.<plural>.<group or core>`.

pub mod openapi;
mod version;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion,
};
use kube::api::ObjectMeta;
use sha1::{Digest, Sha1};

use crate::api::dns;
use crate::api::kcp::apis_v1alpha1::{
    APIResourceSchema, APIResourceSchemaSpec, APIResourceVersion, Conversion,
};
use crate::api::published_resource::{PublishedResourceSpec, ResourceScope};
pub use version::sort_versions;

/// Label and annotation naming the agent that owns an object.
pub const AGENT_NAME_KEY: &str = "syncagent.kcp.io/agent-name";
/// Annotation on a schema: the generation of the CRD it was made from.
pub const SOURCE_GENERATION_ANNOTATION: &str = "syncagent.kcp.io/source-generation";

/// Why a PublishedResource cannot be projected. Each message names the
/// field to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProjectionError {
    /// Both the deprecated and the current version selector are set.
    #[error("spec.resource.version and spec.resource.versions must not both be set")]
    VersionAndVersions,
    /// A selected version does not exist in the source.
    #[error(
        "spec.resource.versions: version {0:?} does not exist in the source resource (it has {1})"
    )]
    UnknownVersion(String, String),
    /// A selected version is not served.
    #[error("spec.resource.versions: version {0:?} is not served by the source resource")]
    NotServed(String),
    /// Nothing to publish.
    #[error("no version left to publish")]
    NoVersions,
    /// The deprecated single-version rename with several versions.
    #[error(
        "spec.projection.version can only be used when exactly one version is published, not {0}"
    )]
    SingleVersionRename(usize),
    /// Two versions end up with the same name.
    #[error("spec.projection.versions maps more than one version to {0:?}")]
    DuplicateVersion(String),
    /// A renamed version is not a Kubernetes version name.
    #[error(
        "spec.projection.versions: {0:?} is not a valid version name (v1, v1beta2, v2alpha1, ...)"
    )]
    InvalidVersionName(String),
    /// A projected name is not a valid Kubernetes name.
    #[error("spec.projection.{field}: {value:?} is not valid: {reason}")]
    InvalidName {
        /// The projection field.
        field: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The source resource after projection: a CRD spec as kcp will serve it.
#[derive(Debug, Clone, PartialEq)]
pub struct Projected {
    /// The projected spec (with `conversion` unset).
    pub spec: CustomResourceDefinitionSpec,
}

/// Applies a PublishedResource's version selection and projection to the
/// spec of the source CRD.
pub fn project(
    source: &CustomResourceDefinitionSpec,
    published: &PublishedResourceSpec,
) -> Result<Projected, ProjectionError> {
    let mut spec = source.clone();
    spec.conversion = None;
    spec.preserve_unknown_fields = None;
    spec.versions = select_versions(&spec.versions, published)?;
    ensure_storage(&mut spec.versions)?;

    let projection = published.projection.clone().unwrap_or_default();
    rename_versions(&mut spec.versions, &projection)?;

    if let Some(group) = projection.group.filter(|g| !g.is_empty()) {
        check_dns_subdomain("group", &group)?;
        spec.group = group;
    }
    if let Some(kind) = projection.kind.filter(|k| !k.is_empty()) {
        check_kind(&kind)?;
        let lower = kind.to_lowercase();
        spec.names.singular = Some(lower.clone());
        spec.names.plural = format!("{lower}s");
        spec.names.list_kind = Some(format!("{kind}List"));
        spec.names.kind = kind;
    }
    if let Some(plural) = projection.plural.filter(|p| !p.is_empty()) {
        check_dns_label("plural", &plural)?;
        spec.names.plural = plural;
    }
    if let Some(scope) = projection.scope {
        spec.scope = match scope {
            ResourceScope::Cluster => "Cluster",
            ResourceScope::Namespaced => "Namespaced",
        }
        .to_string();
    }
    if let Some(categories) = projection.categories {
        spec.names.categories = Some(categories);
    }
    if let Some(short_names) = projection.short_names {
        spec.names.short_names = Some(short_names);
    }
    if spec.names.list_kind.is_none() {
        spec.names.list_kind = Some(format!("{}List", spec.names.kind));
    }
    if spec.names.singular.is_none() {
        spec.names.singular = Some(spec.names.kind.to_lowercase());
    }
    Ok(Projected { spec })
}

fn select_versions(
    versions: &[CustomResourceDefinitionVersion],
    published: &PublishedResourceSpec,
) -> Result<Vec<CustomResourceDefinitionVersion>, ProjectionError> {
    let resource = &published.resource;
    let deprecated = resource.version.clone().filter(|v| !v.is_empty());
    let selected: Vec<String> = match (deprecated, resource.versions.clone().unwrap_or_default()) {
        (Some(_), list) if !list.is_empty() => return Err(ProjectionError::VersionAndVersions),
        (Some(single), _) => vec![single],
        (None, list) => list,
    };
    if selected.is_empty() {
        return Ok(versions.to_vec());
    }
    let available = || {
        versions
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut kept = Vec::new();
    for name in &selected {
        let version = versions
            .iter()
            .find(|v| &v.name == name)
            .ok_or_else(|| ProjectionError::UnknownVersion(name.clone(), available()))?;
        if !version.served {
            return Err(ProjectionError::NotServed(name.clone()));
        }
        kept.push(version.clone());
    }
    // Keep the source's order, not the selection's.
    kept.sort_by_key(|v| versions.iter().position(|s| s.name == v.name));
    Ok(kept)
}

/// If the storage version was not selected, the last served version in list
/// order becomes the storage version.
fn ensure_storage(versions: &mut [CustomResourceDefinitionVersion]) -> Result<(), ProjectionError> {
    if versions.is_empty() {
        return Err(ProjectionError::NoVersions);
    }
    if versions.iter().any(|v| v.storage) {
        return Ok(());
    }
    let last_served = versions
        .iter_mut()
        .rev()
        .find(|v| v.served)
        .ok_or(ProjectionError::NoVersions)?;
    last_served.storage = true;
    Ok(())
}

fn rename_versions(
    versions: &mut [CustomResourceDefinitionVersion],
    projection: &crate::api::published_resource::ResourceProjection,
) -> Result<(), ProjectionError> {
    let mut renames: BTreeMap<String, String> = projection.versions.clone().unwrap_or_default();
    if let Some(single) = projection.version.clone().filter(|v| !v.is_empty()) {
        if versions.len() != 1 {
            return Err(ProjectionError::SingleVersionRename(versions.len()));
        }
        renames.insert(versions[0].name.clone(), single);
    }
    for version in versions.iter_mut() {
        if let Some(new) = renames.get(&version.name) {
            if !version::is_valid(new) {
                return Err(ProjectionError::InvalidVersionName(new.clone()));
            }
            version.name = new.clone();
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for version in versions.iter() {
        if !seen.insert(version.name.clone()) {
            return Err(ProjectionError::DuplicateVersion(version.name.clone()));
        }
    }
    sort_versions(versions);
    Ok(())
}

fn check_dns_label(field: &'static str, value: &str) -> Result<(), ProjectionError> {
    check_name(
        field,
        value,
        dns::is_dns1123_label(value),
        "must be a lower-case DNS label",
    )
}

fn check_dns_subdomain(field: &'static str, value: &str) -> Result<(), ProjectionError> {
    check_name(
        field,
        value,
        dns::is_dns1123_subdomain(value),
        "must be a lower-case DNS subdomain",
    )
}

fn check_name(
    field: &'static str,
    value: &str,
    valid: bool,
    reason: &'static str,
) -> Result<(), ProjectionError> {
    if valid {
        Ok(())
    } else {
        Err(ProjectionError::InvalidName {
            field,
            value: value.to_string(),
            reason,
        })
    }
}

fn check_kind(kind: &str) -> Result<(), ProjectionError> {
    let valid = kind.starts_with(|c: char| c.is_ascii_uppercase())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    check_name(
        "kind",
        kind,
        valid,
        "must be an alphanumeric CamelCase name starting with an upper-case letter",
    )
}

impl Projected {
    /// The content-addressed schema name: `v<8 hex>.<plural>.<group or core>`.
    pub fn schema_name(&self) -> String {
        let json = serde_json::to_vec(&self.spec).unwrap_or_default();
        let digest = Sha1::digest(&json);
        let prefix: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let group = if self.spec.group.is_empty() {
            "core"
        } else {
            &self.spec.group
        };
        format!("v{prefix}.{}.{group}", self.spec.names.plural)
    }

    /// The group and plural resource name kcp will serve.
    pub fn group_resource(&self) -> (String, String) {
        (self.spec.group.clone(), self.spec.names.plural.clone())
    }

    /// The APIResourceSchema for kcp, labelled for the agent.
    pub fn to_schema(&self, agent_name: &str, source_generation: Option<i64>) -> APIResourceSchema {
        let versions = self
            .spec
            .versions
            .iter()
            .map(|v| APIResourceVersion {
                name: v.name.clone(),
                served: v.served,
                storage: v.storage,
                deprecated: v.deprecated.unwrap_or(false),
                deprecation_warning: v.deprecation_warning.clone(),
                schema: v
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .and_then(|s| serde_json::to_value(s).ok())
                    .unwrap_or_else(|| {
                        serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
                    }),
                subresources: v.subresources.clone(),
                additional_printer_columns: v.additional_printer_columns.clone().unwrap_or_default(),
            })
            .collect::<Vec<_>>();
        let conversion = (versions.len() > 1).then(|| Conversion {
            strategy: "None".into(),
            webhook: None,
        });
        let mut annotations =
            BTreeMap::from([(AGENT_NAME_KEY.to_string(), agent_name.to_string())]);
        if let Some(generation) = source_generation {
            annotations.insert(SOURCE_GENERATION_ANNOTATION.into(), generation.to_string());
        }
        APIResourceSchema {
            metadata: ObjectMeta {
                name: Some(self.schema_name()),
                labels: Some(BTreeMap::from([(
                    AGENT_NAME_KEY.to_string(),
                    agent_name.to_string(),
                )])),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: APIResourceSchemaSpec {
                group: self.spec.group.clone(),
                names: self.spec.names.clone(),
                scope: self.spec.scope.clone(),
                versions,
                name_validation: None,
                conversion,
            },
        }
    }
}

/// Splits a schema name `<prefix>.<resource>.<group>` into group and
/// resource (`core` stands for the empty group).
pub fn parse_schema_name(name: &str) -> Option<(String, String)> {
    let (_, rest) = name.split_once('.')?;
    let (resource, group) = rest.split_once('.')?;
    let group = if group == "core" { "" } else { group };
    Some((group.to_string(), resource.to_string()))
}

#[cfg(test)]
mod tests;

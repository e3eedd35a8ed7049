//! Finds the definition of a published resource on the service cluster: its
//! CRD, or, for built-in types without one, a CRD made from discovery and
//! the OpenAPI v3 documents.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionSpec,
};
use kube::Client;
use kube::api::Api;
use kube::discovery::{Discovery, Scope};
use serde_json::Value;

use crate::schema::openapi::{self, BuiltinResource, BuiltinVersion, OpenApiError};

/// The definition of a source resource.
#[derive(Debug, Clone)]
pub struct SourceDefinition {
    /// The CRD spec (real or synthesized).
    pub spec: CustomResourceDefinitionSpec,
    /// The CRD's generation; `None` for built-in types.
    pub generation: Option<i64>,
}

/// Why a source resource cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No served resource has this group and kind.
    #[error("the service cluster serves no kind {kind:?} in API group {group:?}")]
    KindNotServed {
        /// API group.
        group: String,
        /// Kind.
        kind: String,
    },
    /// A request to the service cluster failed.
    #[error("{what}: {source}")]
    Request {
        /// What was asked.
        what: String,
        /// The failure.
        #[source]
        source: kube::Error,
    },
    /// The OpenAPI schema could not be used.
    #[error(transparent)]
    OpenApi(#[from] OpenApiError),
}

/// Looks up the definition of `group`/`kind` on the service cluster.
pub async fn find(
    client: &Client,
    group: &str,
    kind: &str,
) -> Result<SourceDefinition, SourceError> {
    let request = |what: String| move |source| SourceError::Request { what, source };
    let discovery = Discovery::new(client.clone())
        .filter(&[group])
        .run()
        .await
        .map_err(request(format!("discovering API group {group:?}")))?;
    let not_served = || SourceError::KindNotServed {
        group: group.to_string(),
        kind: kind.to_string(),
    };
    let api_group = discovery
        .groups()
        .find(|g| g.name() == group)
        .ok_or_else(not_served)?;
    let mut found = Vec::new();
    for version in api_group.versions() {
        if let Some((resource, capabilities)) = api_group
            .versioned_resources(version)
            .into_iter()
            .find(|(r, _)| r.kind == kind)
        {
            found.push((version.to_string(), resource, capabilities));
        }
    }
    let (_, first, first_caps) = found.first().cloned().ok_or_else(not_served)?;

    let crd_name = format!(
        "{}.{}",
        first.plural,
        if group.is_empty() { "core" } else { group }
    );
    match Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(&crd_name)
        .await
    {
        Ok(Some(crd)) => {
            return Ok(SourceDefinition {
                spec: crd.spec,
                generation: crd.metadata.generation,
            });
        }
        Ok(None) => {}
        Err(source) => {
            return Err(SourceError::Request {
                what: format!("getting CRD {crd_name}"),
                source,
            });
        }
    }

    let preferred = api_group.preferred_version_or_latest().to_string();
    let mut versions = Vec::new();
    for (version, _, capabilities) in &found {
        // Discovery names a subresource by its own part (`status`), older
        // servers by its path (`deployments/status`).
        let has = |name: &str| {
            capabilities.subresources.iter().any(|(r, _)| {
                r.plural == name
                    || r.plural
                        .strip_suffix(name)
                        .is_some_and(|p| p.ends_with('/'))
            })
        };
        versions.push(BuiltinVersion {
            name: version.clone(),
            document: openapi_document(client, group, version).await?,
            status: has("status"),
            scale: has("scale"),
        });
    }
    let resource = BuiltinResource {
        group: group.to_string(),
        kind: kind.to_string(),
        plural: first.plural.clone(),
        namespaced: first_caps.scope == Scope::Namespaced,
        preferred_version: if found.iter().any(|(v, _, _)| *v == preferred) {
            preferred
        } else {
            found[0].0.clone()
        },
        short_names: Vec::new(),
        categories: Vec::new(),
    };
    Ok(SourceDefinition {
        spec: openapi::crd_spec(&resource, &versions)?,
        generation: None,
    })
}

/// The OpenAPI v3 document of one group-version.
async fn openapi_document(
    client: &Client,
    group: &str,
    version: &str,
) -> Result<Value, SourceError> {
    let path = if group.is_empty() {
        format!("/openapi/v3/api/{version}")
    } else {
        format!("/openapi/v3/apis/{group}/{version}")
    };
    let request = http::Request::get(&path)
        .body(Vec::new())
        .map_err(|e| SourceError::Request {
            what: format!("building a request for {path}"),
            source: kube::Error::HttpError(e),
        })?;
    client
        .request::<Value>(request)
        .await
        .map_err(|source| SourceError::Request {
            what: format!("getting {path}"),
            source,
        })
}

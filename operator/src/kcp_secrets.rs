//! Watches of the kcp kubeconfig Secrets: a Secret that is created,
//! rotated or deleted wakes the offerings that read it
//! (`spec.kcp.kubeconfigSecretRef`, or the operator's
//! `--default-kcp-secret`; the agent's own `spec.agent.kcpKubeconfigSecretRef`)
//! at once, instead of at their next retry, which
//! backs off to 5 minutes. Secret names vary per offering, so no selector
//! narrows the watch: it covers every Secret of the watched namespace (of
//! every namespace without `--watch-namespace`), metadata only, with a
//! second one of the default Secret by name when it lies outside.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::warn;

use crate::controller::Watched;
use crate::credentials::SecretLocation;
use crate::validate::{agent_secret_location, kcp_secret_location};

/// The offerings to reconcile because a Secret they read changed, looked
/// up in `offerings` (the controller's cache). `namespace` is the
/// operator's `--watch-namespace`; `default` its `--default-kcp-secret`.
pub fn woken(
    client: Client,
    namespace: Option<&str>,
    default: Option<SecretLocation>,
    offerings: Store<Watched>,
) -> impl Stream<Item = ObjectRef<Watched>> + Send + 'static {
    let scope: Api<PartialObjectMeta<Secret>> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let mut watches = vec![
        watcher(scope, watcher::Config::default())
            .default_backoff()
            .touched_objects()
            .boxed(),
    ];
    if let Some(outside) = default
        .as_ref()
        .filter(|d| namespace.is_some_and(|ns| ns != d.namespace))
    {
        let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(client, &outside.namespace);
        let by_name = watcher::Config::default().fields(&format!("metadata.name={}", outside.name));
        watches.push(
            watcher(api, by_name)
                .default_backoff()
                .touched_objects()
                .boxed(),
        );
    }
    futures::stream::select_all(watches).flat_map(move |secret| {
        let woken = match secret {
            Ok(secret) => reading(
                &offerings.state(),
                &secret.namespace().unwrap_or_default(),
                &secret.name_any(),
                default.as_ref(),
            ),
            Err(error) => {
                warn!(%error, "Watching kcp kubeconfig Secrets failed; retrying");
                Vec::new()
            }
        };
        futures::stream::iter(woken)
    })
}

/// The offerings among `offerings` whose kcp kubeconfig, or their agent's,
/// is the Secret `namespace/name`; `default` is the operator's
/// `--default-kcp-secret`.
fn reading(
    offerings: &[Arc<Watched>],
    namespace: &str,
    name: &str,
    default: Option<&SecretLocation>,
) -> Vec<ObjectRef<Watched>> {
    offerings
        .iter()
        .filter_map(|watched| {
            let offering = watched.0.as_ref().ok()?;
            let reads =
                |secret: &SecretLocation| secret.namespace == namespace && secret.name == name;
            let operators = kcp_secret_location(offering, default).ok();
            let agents = agent_secret_location(offering);
            (operators.iter().chain(agents.iter()).any(reads)).then(|| {
                ObjectRef::new(&offering.name_any())
                    .within(&offering.namespace().unwrap_or_default())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use kube::core::DeserializeGuard;
    use serde_json::json;

    use super::*;

    fn offering(namespace: &str, name: &str, secret: Option<&str>) -> Arc<Watched> {
        with_agent_secret(namespace, name, secret, None)
    }

    fn with_agent_secret(
        namespace: &str,
        name: &str,
        secret: Option<&str>,
        agents: Option<&str>,
    ) -> Arc<Watched> {
        let mut kcp = json!({"workspace": "root:providers:db"});
        if let Some(secret) = secret {
            kcp["kubeconfigSecretRef"] = json!({"name": secret});
        }
        let agent = json!({"kcpKubeconfigSecretRef": agents.map(|name| json!({"name": name}))});
        Arc::new(DeserializeGuard(Ok(serde_json::from_value(json!({
            "apiVersion": "offering.syncagent.dev/v1alpha1",
            "kind": "PublishedOffering",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"kcp": kcp, "agent": agent, "resources": [{"name": "dbs", "resource": {"apiGroup": "db.example.io", "kind": "Database"}}]},
        }))
        .expect("an offering"))))
    }

    fn names(woken: Vec<ObjectRef<Watched>>) -> Vec<String> {
        woken.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_secret_wakes_the_offerings_of_its_namespace_that_name_it() {
        let offerings = [
            offering("team-a", "dbs", Some("kcp")),
            offering("team-a", "queues", Some("other")),
            offering("team-b", "dbs", Some("kcp")),
        ];
        assert_eq!(
            names(reading(&offerings, "team-a", "kcp", None)),
            ["PublishedOffering.v1alpha1.offering.syncagent.dev/dbs.team-a"]
        );
        assert!(reading(&offerings, "team-c", "kcp", None).is_empty());
    }

    #[test]
    fn the_agents_own_secret_wakes_its_offering() {
        let offerings = [
            with_agent_secret("team-a", "dbs", Some("kcp"), Some("agent-kcp")),
            offering("team-a", "queues", Some("kcp")),
        ];
        assert_eq!(
            names(reading(&offerings, "team-a", "agent-kcp", None)),
            ["PublishedOffering.v1alpha1.offering.syncagent.dev/dbs.team-a"]
        );
    }

    #[test]
    fn the_default_secret_wakes_the_offerings_that_name_none() {
        let default = SecretLocation {
            namespace: "offering-system".into(),
            name: "kcp".into(),
            key: "kubeconfig".into(),
        };
        let offerings = [
            offering("team-a", "dbs", None),
            offering("team-b", "queues", None),
            offering("team-b", "own", Some("kcp")),
        ];
        let woken = names(reading(
            &offerings,
            "offering-system",
            "kcp",
            Some(&default),
        ));
        assert_eq!(woken.len(), 2, "{woken:?}");
        assert!(
            woken
                .iter()
                .all(|w| !w.starts_with("PublishedOffering.v1alpha1.offering.syncagent.dev/own"))
        );
        // Without the operator-wide Secret, an offering that names none reads nothing.
        assert!(reading(&offerings, "offering-system", "kcp", None).is_empty());
    }
}

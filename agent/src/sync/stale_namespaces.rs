//! Namespaces the copies no longer need (`naming.deleteEmptyNamespaces`,
//! upstream #113). The agent labels every namespace it creates with its
//! name; once a copy is gone, the namespace it was in is deleted if this
//! agent created it and nothing else is left in it.
//!
//! "Nothing else" is asked of the server, not of the agent's own mirrors:
//! every namespaced kind the server offers with `list` and `delete` is
//! listed in the namespace, metadata only. What Kubernetes puts into every
//! namespace (the `kube-root-ca.crt` ConfigMap, the `default`
//! ServiceAccount), events, and objects already being deleted do not
//! count. A kind that cannot be listed (no permission, an API that does
//! not answer) keeps the namespace: the agent cannot tell. Objects with
//! owner references are taken for dependents of the copy that the garbage
//! collector is about to remove: they are waited for, up to
//! [`DEPENDENTS_GRACE`] after the kcp object's deletion, and then keep
//! the namespace. Every failure keeps the namespace and is logged; none
//! holds up the sync.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta};
use kube::core::params::Preconditions;
use kube::discovery::{ApiCapabilities, Discovery, Scope, verbs};
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::context::Context;

/// Label on a namespace the agent created: the agent's name.
pub const CREATED_BY_LABEL: &str = "syncagent.kcp.io/created-by-agent";

/// How long after the kcp object's deletion the garbage collector is given
/// to remove the dependents of its copy.
pub const DEPENDENTS_GRACE: Duration = Duration::from_secs(30);

/// Objects asked for per list request.
const PAGE: u32 = 50;

/// What Kubernetes puts into every namespace: group, kind, name.
const IN_EVERY_NAMESPACE: [(&str, &str, &str); 2] = [
    ("", "ConfigMap", "kube-root-ca.crt"),
    ("", "ServiceAccount", "default"),
];

/// The labels of a namespace the agent `agent` creates.
pub fn creation_labels(agent: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CREATED_BY_LABEL.to_string(), agent.to_string())])
}

/// Whether the agent `agent` created `namespace`, which is not being
/// deleted already.
pub fn created_by(namespace: &Namespace, agent: &str) -> bool {
    namespace.metadata.deletion_timestamp.is_none()
        && namespace.labels().get(CREATED_BY_LABEL).map(String::as_str) == Some(agent)
}

/// Whether objects of a kind can keep a namespace: namespaced kinds that
/// can be listed and deleted (as the namespace's deletion deletes them),
/// events aside.
pub fn inspected(resource: &ApiResource, capabilities: &ApiCapabilities) -> bool {
    capabilities.scope == Scope::Namespaced
        && capabilities.supports_operation(verbs::LIST)
        && capabilities.supports_operation(verbs::DELETE)
        && !(resource.kind == "Event" && ["", "events.k8s.io"].contains(&resource.group.as_str()))
}

/// What one object means for its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// Nothing: there in every namespace, or being deleted.
    None,
    /// A dependent, which the garbage collector removes with its owner.
    Dependent,
    /// An object that keeps the namespace.
    Keeps,
}

/// What the object `meta` of kind `resource` means for its namespace.
pub fn weigh(resource: &ApiResource, meta: &ObjectMeta) -> Weight {
    let name = meta.name.as_deref().unwrap_or_default();
    let everywhere = IN_EVERY_NAMESPACE
        .iter()
        .any(|&(group, kind, n)| resource.group == group && resource.kind == kind && name == n);
    if everywhere || meta.deletion_timestamp.is_some() {
        Weight::None
    } else if meta
        .owner_references
        .as_ref()
        .is_some_and(|o| !o.is_empty())
    {
        Weight::Dependent
    } else {
        Weight::Keeps
    }
}

/// What a namespace holds, as far as the agent can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Nothing that counts.
    Empty,
    /// Dependents only, the first one named.
    Dependents(String),
    /// An object that keeps the namespace, named.
    Object(String),
    /// The agent cannot tell: why.
    Unknown(String),
}

/// What to do with a namespace the agent created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delete it.
    Delete,
    /// Look again shortly: the garbage collector is at work.
    Wait,
    /// Keep it.
    Keep,
}

/// The verdict on a namespace holding `content`, `since_deletion` after
/// the kcp object's deletion (`None`: the object was not deleted but is no
/// longer synced, and nothing is waited for).
pub fn decide(content: &Content, since_deletion: Option<Duration>) -> Verdict {
    match content {
        Content::Empty => Verdict::Delete,
        Content::Dependents(_) if since_deletion.is_some_and(|d| d < DEPENDENTS_GRACE) => {
            Verdict::Wait
        }
        Content::Dependents(_) | Content::Object(_) | Content::Unknown(_) => Verdict::Keep,
    }
}

/// Every kind the server offers, through aggregated discovery where the
/// server has it.
async fn discover(client: &Client) -> Result<Discovery, kube::Error> {
    match Discovery::new(client.clone()).run_aggregated().await {
        Ok(discovery) => Ok(discovery),
        Err(_) => Discovery::new(client.clone()).run().await,
    }
}

/// Lists the objects of `resource` in `namespace`: `Some` once one keeps
/// the namespace or they cannot be listed; the first dependent is noted in
/// `dependent`.
async fn weigh_kind(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    dependent: &mut Option<String>,
) -> Option<Content> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = match api.list_metadata(&params).await {
            Ok(page) => page,
            // The kind went away since discovery: none of it is left.
            Err(kube::Error::Api(status)) if status.code == 404 => return None,
            Err(error) => {
                return Some(Content::Unknown(format!(
                    "cannot list {}.{}: {error}",
                    resource.plural, resource.group
                )));
            }
        };
        for item in &page.items {
            let name = || format!("{} {}", resource.kind, item.name_any());
            match weigh(resource, &item.metadata) {
                Weight::Keeps => return Some(Content::Object(name())),
                Weight::Dependent => {
                    dependent.get_or_insert_with(name);
                }
                Weight::None => {}
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return None,
        }
    }
}

/// Lists every inspected kind in `namespace`, `first` (the deleted copy's,
/// whose siblings are the likeliest to be left) first, until an object
/// that keeps the namespace turns up.
async fn content(client: &Client, namespace: &str, first: &ApiResource) -> Content {
    let mut dependent = None;
    if let Some(found) = weigh_kind(client, namespace, first, &mut dependent).await {
        return found;
    }
    let discovery = match discover(client).await {
        Ok(discovery) => discovery,
        Err(error) => return Content::Unknown(format!("discovery failed: {error}")),
    };
    for group in discovery.groups() {
        for (resource, capabilities) in group.resources_by_stability() {
            let listed = resource.group == first.group && resource.kind == first.kind;
            if listed || !inspected(&resource, &capabilities) {
                continue;
            }
            if let Some(found) = weigh_kind(client, namespace, &resource, &mut dependent).await {
                return found;
            }
        }
    }
    dependent.map_or(Content::Empty, Content::Dependents)
}

/// Deletes the service-cluster namespace `namespace`, where a copy of kind
/// `kind` was, if this agent created it and nothing is left in it;
/// `since_deletion` is the time since the kcp object's deletion, if it was
/// deleted. No copy of this agent is placed into the namespace meanwhile.
pub async fn clear(
    ctx: &Context,
    namespace: &str,
    kind: &ApiResource,
    since_deletion: Option<Duration>,
) -> Verdict {
    let _exclusive = ctx.clearing(namespace).await;
    let api: Api<Namespace> = Api::all(ctx.service.clone());
    let found = match api.get_opt(namespace).await {
        Ok(Some(found)) if created_by(&found, &ctx.agent_name) => found,
        Ok(_) => return Verdict::Keep,
        Err(error) => {
            warn!(namespace, %error, "Cannot read the namespace of a deleted copy; keeping it");
            return Verdict::Keep;
        }
    };
    let content = content(&ctx.service, namespace, kind).await;
    let verdict = decide(&content, since_deletion);
    match (&content, verdict) {
        (_, Verdict::Wait) => {
            debug!(
                namespace,
                ?content,
                "Waiting for the dependents of the deleted copy"
            )
        }
        (Content::Unknown(why), Verdict::Keep) => {
            info!(namespace, reason = %why, "Keeping the namespace: cannot tell whether it is empty")
        }
        (_, Verdict::Keep) => debug!(namespace, ?content, "Keeping the namespace: it is in use"),
        (_, Verdict::Delete) => {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: found.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(namespace, &params).await {
                Ok(_) => info!(namespace, "Deleted the namespace: its last copy is gone"),
                Err(error) => warn!(namespace, %error, "Cannot delete the empty namespace"),
            }
            ctx.forget_service_namespace(namespace);
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use kube::core::GroupVersionKind;

    fn resource(group: &str, kind: &str) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1", kind))
    }

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
    }

    fn capabilities(scope: Scope, operations: &[&str]) -> ApiCapabilities {
        ApiCapabilities {
            scope,
            subresources: Vec::new(),
            operations: operations.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn only_a_namespace_the_agent_itself_created_is_its_to_delete() {
        let mut namespace = Namespace {
            metadata: meta("c1"),
            ..Namespace::default()
        };
        assert!(
            !created_by(&namespace, "agent-a"),
            "no label: made by someone else"
        );
        namespace.metadata.labels = Some(creation_labels("agent-b"));
        assert!(!created_by(&namespace, "agent-a"), "another agent's");
        namespace.metadata.labels = Some(creation_labels("agent-a"));
        assert!(created_by(&namespace, "agent-a"));
        namespace.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(!created_by(&namespace, "agent-a"), "already being deleted");
    }

    #[test]
    fn namespaced_kinds_that_can_be_listed_and_deleted_are_inspected_events_aside() {
        let all = [verbs::LIST, verbs::DELETE, verbs::GET];
        assert!(inspected(
            &resource("", "ConfigMap"),
            &capabilities(Scope::Namespaced, &all)
        ));
        assert!(inspected(
            &resource("example.io", "Widget"),
            &capabilities(Scope::Namespaced, &all)
        ));
        assert!(!inspected(
            &resource("", "Namespace"),
            &capabilities(Scope::Cluster, &all)
        ));
        // PodMetrics: read-only, not content a namespace deletion removes.
        assert!(!inspected(
            &resource("metrics.k8s.io", "PodMetrics"),
            &capabilities(Scope::Namespaced, &[verbs::LIST, verbs::GET])
        ));
        // LocalSubjectAccessReview: create only.
        assert!(!inspected(
            &resource("authorization.k8s.io", "LocalSubjectAccessReview"),
            &capabilities(Scope::Namespaced, &[verbs::CREATE])
        ));
        for group in ["", "events.k8s.io"] {
            assert!(!inspected(
                &resource(group, "Event"),
                &capabilities(Scope::Namespaced, &all)
            ));
        }
    }

    #[test]
    fn what_every_namespace_has_and_what_is_being_deleted_do_not_count() {
        let config_map = resource("", "ConfigMap");
        assert_eq!(weigh(&config_map, &meta("kube-root-ca.crt")), Weight::None);
        assert_eq!(
            weigh(&resource("", "ServiceAccount"), &meta("default")),
            Weight::None
        );
        assert_eq!(weigh(&config_map, &meta("settings")), Weight::Keeps);
        assert_eq!(
            weigh(&resource("", "ServiceAccount"), &meta("kube-root-ca.crt")),
            Weight::Keeps,
            "the exception is for its kind only"
        );
        assert_eq!(
            weigh(
                &resource("example.io", "ConfigMap"),
                &meta("kube-root-ca.crt")
            ),
            Weight::Keeps,
            "and for its group"
        );
        let mut deleting = meta("settings");
        deleting.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(weigh(&config_map, &deleting), Weight::None);
        let mut owned = meta("settings");
        owned.owner_references = Some(vec![OwnerReference {
            api_version: "example.io/v1".into(),
            kind: "Widget".into(),
            name: "w".into(),
            uid: "1".into(),
            ..OwnerReference::default()
        }]);
        assert_eq!(weigh(&config_map, &owned), Weight::Dependent);
    }

    #[test]
    fn an_empty_namespace_goes_dependents_are_waited_for_and_anything_else_keeps_it() {
        let soon = Some(Duration::from_secs(1));
        let late = Some(DEPENDENTS_GRACE);
        assert_eq!(decide(&Content::Empty, soon), Verdict::Delete);
        assert_eq!(decide(&Content::Empty, None), Verdict::Delete);
        let dependents = Content::Dependents("Pod db-0".into());
        assert_eq!(decide(&dependents, soon), Verdict::Wait);
        assert_eq!(decide(&dependents, late), Verdict::Keep);
        assert_eq!(
            decide(&dependents, None),
            Verdict::Keep,
            "an object no longer selected is not waited for"
        );
        for content in [
            Content::Object("ConfigMap settings".into()),
            Content::Unknown("cannot list secrets: 403".into()),
        ] {
            assert_eq!(decide(&content, soon), Verdict::Keep, "{content:?}");
        }
    }
}

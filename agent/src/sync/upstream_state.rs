//! The last-known states an upstream api-syncagent left behind, read once
//! when this agent takes its copies over.
//!
//! Upstream keeps each synced object's last-known state in a Secret of its
//! own namespace (`obj-state-<cluster>-<hash>`), labelled with the kcp
//! object's identity labels and `syncagent.kcp.io/object-state: "true"`;
//! every data key holds one object it synced (the primary, and its related
//! objects) as compact JSON without server metadata. This agent keeps the
//! state on the copy instead (`syncagent.kcp.io/last-known-state`). A copy
//! that carries no state of ours yet is brought in line from upstream's,
//! so a field the consumer removed while no agent ran is removed from the
//! copy too; once our state is on the copy, upstream's Secret goes.
//!
//! The Secrets are listed once, on first use (names and labels only); a
//! failed listing or reading fails the reconcile, which is retried, so no
//! copy is brought in line without a state that exists.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::identity::{
    REMOTE_CLUSTER_LABEL, REMOTE_NAME_HASH_LABEL, REMOTE_NAMESPACE_HASH_LABEL, RemoteKey,
};
use super::object::spec_fields;

/// Label upstream puts on its state Secrets.
pub const STATE_LABEL: &str = "syncagent.kcp.io/object-state";

/// Secrets listed per request.
const PAGE: u32 = 500;

/// Upstream's state Secrets in one namespace, by the object they hold.
#[derive(Debug)]
pub struct UpstreamStates {
    api: Api<Secret>,
    /// Secret names by [`index_key`] of their kcp object (objects of
    /// several kinds may share one), once listed.
    secrets: Mutex<Option<HashMap<String, Vec<String>>>>,
}

/// Upstream's last-known state of one object, and the Secret holding it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamState {
    /// The Secret, deleted once this agent's own state is on the copy.
    pub secret: String,
    /// The object's copied fields as upstream last synced them.
    pub fields: Map<String, Value>,
}

/// The identity labels of a kcp object as one string.
fn index_key(labels: &std::collections::BTreeMap<String, String>) -> Option<String> {
    Some(format!(
        "{}|{}|{}",
        labels.get(REMOTE_CLUSTER_LABEL)?,
        labels
            .get(REMOTE_NAMESPACE_HASH_LABEL)
            .map(String::as_str)
            .unwrap_or_default(),
        labels.get(REMOTE_NAME_HASH_LABEL)?,
    ))
}

/// The entry of a state Secret's data that holds `source` (a kcp object as
/// JSON): same kind, namespace and name. Upstream's data keys are hashes
/// of the same identity, so the entry is found by what it holds.
pub fn entry_for<'a>(
    data: impl IntoIterator<Item = &'a [u8]>,
    source: &Value,
) -> Option<Map<String, Value>> {
    let wanted = |field: &Value| field.as_str().unwrap_or_default().to_string();
    let (kind, namespace, name) = (
        wanted(&source["kind"]),
        wanted(&source["metadata"]["namespace"]),
        wanted(&source["metadata"]["name"]),
    );
    data.into_iter()
        .filter_map(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .find(|state| {
            wanted(&state["kind"]) == kind
                && wanted(&state["metadata"]["namespace"]) == namespace
                && wanted(&state["metadata"]["name"]) == name
        })
        .map(|state| spec_fields(&state))
}

impl UpstreamStates {
    /// Upstream's state Secrets in `namespace`, listed on first use.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            secrets: Mutex::new(None),
        }
    }

    /// Lists the state Secrets (names and labels).
    async fn list(&self) -> Result<HashMap<String, Vec<String>>, kube::Error> {
        let mut secrets: HashMap<String, Vec<String>> = HashMap::new();
        let mut params = ListParams::default().labels(&format!("{STATE_LABEL}=true"));
        params.limit = Some(PAGE);
        loop {
            let page = self.api.list_metadata(&params).await?;
            for secret in &page.items {
                if let Some(key) = index_key(secret.labels()) {
                    secrets.entry(key).or_default().push(secret.name_any());
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params.continue_token = Some(token),
                None => break,
            }
        }
        info!(
            secrets = secrets.values().map(Vec::len).sum::<usize>(),
            "Found the upstream agent's state Secrets"
        );
        Ok(secrets)
    }

    /// Upstream's last-known state of `source`, the kcp object `key`, if a
    /// Secret holds one. A Secret that cannot be listed or read is an
    /// error: the reconcile is retried rather than done without it.
    pub async fn find(
        &self,
        key: &RemoteKey,
        source: &Value,
    ) -> Result<Option<UpstreamState>, kube::Error> {
        let Some(index) = index_key(&key.labels()) else {
            return Ok(None);
        };
        let names = {
            let mut secrets = self.secrets.lock().await;
            if secrets.is_none() {
                *secrets = Some(self.list().await?);
            }
            secrets
                .as_ref()
                .and_then(|s| s.get(&index))
                .cloned()
                .unwrap_or_default()
        };
        for name in names {
            let Some(secret) = self.api.get_opt(&name).await? else {
                self.forget(&index, &name).await;
                continue;
            };
            let data = secret.data.unwrap_or_default();
            if let Some(fields) = entry_for(data.values().map(|v| v.0.as_slice()), source) {
                return Ok(Some(UpstreamState {
                    secret: name,
                    fields,
                }));
            }
        }
        Ok(None)
    }

    /// Drops `name` from the Secrets of `index`.
    async fn forget(&self, index: &str, name: &str) {
        if let Some(secrets) = self.secrets.lock().await.as_mut()
            && let Some(names) = secrets.get_mut(index)
        {
            names.retain(|n| n != name);
            if names.is_empty() {
                secrets.remove(index);
            }
        }
    }

    /// Deletes the Secret of `state` once the copy of `key` carries this
    /// agent's own state. A failure is logged (the Secret is then left for
    /// the migration guide's clean-up step to show).
    pub async fn consumed(&self, key: &RemoteKey, state: &UpstreamState) {
        match self
            .api
            .delete(&state.secret, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                warn!(object = %key, secret = %state.secret, %error, "Cannot delete the upstream agent's state Secret; delete it by hand");
                return;
            }
        }
        if let Some(index) = index_key(&key.labels()) {
            self.forget(&index, &state.secret).await;
        }
        info!(object = %key, secret = %state.secret, "Took over the upstream agent's last-known state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> RemoteKey {
        RemoteKey {
            cluster: "2x8jvqzd".into(),
            namespace: "apps".into(),
            name: "kept".into(),
        }
    }

    #[test]
    fn a_copys_identity_labels_and_its_state_secrets_index_alike() {
        let mut secret_labels = key().labels();
        secret_labels.insert(STATE_LABEL.into(), "true".into());
        assert_eq!(index_key(&secret_labels), index_key(&key().labels()));
        let other = RemoteKey {
            name: "other".into(),
            ..key()
        };
        assert_ne!(index_key(&other.labels()), index_key(&key().labels()));
    }

    #[test]
    fn the_entry_of_the_object_is_picked_among_its_related_objects() {
        let primary = json!({"apiVersion": "example.io/v1", "kind": "Widget",
            "metadata": {"name": "kept", "namespace": "apps", "labels": {"team": "a"}},
            "spec": {"color": "red", "replicas": 3}});
        let related = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kept", "namespace": "apps"}, "data": {"a": "b"}});
        let entries = [
            b"not json".to_vec(),
            serde_json::to_vec(&related).unwrap(),
            serde_json::to_vec(&primary).unwrap(),
        ];
        let source = json!({"apiVersion": "example.io/v1", "kind": "Widget",
            "metadata": {"name": "kept", "namespace": "apps", "uid": "x"},
            "spec": {"color": "blue"}});
        let fields = entry_for(entries.iter().map(Vec::as_slice), &source).expect("found");
        assert_eq!(
            Value::Object(fields),
            json!({"spec": {"color": "red", "replicas": 3}})
        );
        let elsewhere =
            json!({"kind": "Widget", "metadata": {"name": "kept", "namespace": "other"}});
        assert_eq!(
            entry_for(entries.iter().map(Vec::as_slice), &elsewhere),
            None
        );
    }
}

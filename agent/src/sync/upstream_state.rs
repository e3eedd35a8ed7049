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
//! The Secrets are listed once, at start (names and labels only); each is
//! read when its object is first synced.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::identity::{
    REMOTE_CLUSTER_LABEL, REMOTE_NAME_HASH_LABEL, REMOTE_NAMESPACE_HASH_LABEL, RemoteKey,
};
use super::object::spec_fields;

/// Label upstream puts on its state Secrets.
pub const STATE_LABEL: &str = "syncagent.kcp.io/object-state";

/// Secrets listed per request at start.
const PAGE: u32 = 500;

/// Upstream's state Secrets in one namespace, by the object they hold.
#[derive(Debug)]
pub struct UpstreamStates {
    api: Api<Secret>,
    /// Secret names by [`index_key`] of their kcp object.
    secrets: Mutex<HashMap<String, String>>,
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
    /// Lists upstream's state Secrets in `namespace`. A failed listing (no
    /// permission, say) is logged and leaves nothing to read: copies are
    /// then brought in line field by field, as without upstream's state.
    pub async fn load(client: Client, namespace: &str) -> Self {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let mut secrets = HashMap::new();
        let mut params = ListParams::default().labels(&format!("{STATE_LABEL}=true"));
        params.limit = Some(PAGE);
        loop {
            match api.list_metadata(&params).await {
                Ok(page) => {
                    for secret in &page.items {
                        if let Some(key) = index_key(secret.labels()) {
                            secrets.insert(key, secret.name_any());
                        }
                    }
                    match page.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(token) => params.continue_token = Some(token),
                        None => break,
                    }
                }
                Err(error) => {
                    warn!(namespace, %error, "Cannot list the upstream agent's state Secrets; copies without this agent's last-known state are brought in line field by field");
                    secrets.clear();
                    break;
                }
            }
        }
        info!(
            namespace,
            secrets = secrets.len(),
            "Found the upstream agent's state Secrets"
        );
        Self {
            api,
            secrets: Mutex::new(secrets),
        }
    }

    fn secrets(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.secrets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Upstream's last-known state of `source`, the kcp object `key`, if
    /// its Secret holds one. A Secret that cannot be read is logged and
    /// passed over.
    pub async fn find(&self, key: &RemoteKey, source: &Value) -> Option<UpstreamState> {
        let index = index_key(&key.labels())?;
        let name = self.secrets().get(&index).cloned()?;
        match self.api.get_opt(&name).await {
            Ok(Some(secret)) => {
                let data = secret.data.unwrap_or_default();
                let fields = entry_for(data.values().map(|v| v.0.as_slice()), source);
                if fields.is_none() {
                    self.secrets().remove(&index);
                }
                fields.map(|fields| UpstreamState {
                    secret: name,
                    fields,
                })
            }
            Ok(None) => {
                self.secrets().remove(&index);
                None
            }
            Err(error) => {
                warn!(object = %key, secret = %name, %error, "Cannot read the upstream agent's state Secret");
                None
            }
        }
    }

    /// Deletes the Secret of `key` once the copy carries this agent's own
    /// state. A failure is logged: the Secret is looked at again next time.
    pub async fn consumed(&self, key: &RemoteKey, state: &UpstreamState) {
        match self
            .api
            .delete(&state.secret, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                warn!(object = %key, secret = %state.secret, %error, "Cannot delete the upstream agent's state Secret");
                return;
            }
        }
        if let Some(index) = index_key(&key.labels()) {
            self.secrets().remove(&index);
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

//! Namespaces the copies no longer need (upstream #113). The agent labels
//! every namespace it creates with its name: only such a namespace can be
//! known to be the agent's to delete, never one the provider (or another
//! agent) made.

use std::collections::BTreeMap;

/// Label on a namespace the agent created: the agent's name.
pub const CREATED_BY_LABEL: &str = "syncagent.kcp.io/created-by-agent";

/// The labels of a namespace the agent `agent` creates.
pub fn creation_labels(agent: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CREATED_BY_LABEL.to_string(), agent.to_string())])
}

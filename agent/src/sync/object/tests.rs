use serde_json::json;

use super::*;
use crate::sync::identity::{REMOTE_CLUSTER_LABEL, REMOTE_NAME_ANNOTATION};

fn key() -> RemoteKey {
    RemoteKey {
        cluster: "c1".into(),
        namespace: "ns".into(),
        name: "db".into(),
    }
}

fn owner(key: &RemoteKey) -> Owner<'_> {
    Owner {
        key,
        agent: "a",
        workspace_path: None,
    }
}

fn remote(spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "dbaas.io/v1", "kind": "Instance",
        "metadata": {"name": "db", "namespace": "ns", "resourceVersion": "7", "uid": "u",
                     "finalizers": ["syncagent.kcp.io/cleanup"],
                     "labels": {"app": "x", "claimed.internal.apis.kcp.io/abc": "y"},
                     "annotations": {"kcp.io/cluster": "c1", "note": "hi"}},
        "spec": spec,
        "status": {"phase": "kcp-side"}
    })
}

#[test]
fn a_new_copy_has_the_identity_and_none_of_the_kcp_internals() {
    let local = new_local(
        &remote(json!({"size": 1})),
        "example.corp/v1",
        "Database",
        "hashed",
        Some("c1"),
        owner(&key()),
    );
    assert_eq!(local["apiVersion"], "example.corp/v1");
    assert_eq!(local["kind"], "Database");
    assert_eq!(local["spec"], json!({"size": 1}));
    assert!(local.get("status").is_none());
    let metadata = &local["metadata"];
    assert_eq!(metadata["name"], "hashed");
    assert_eq!(metadata["namespace"], "c1");
    assert!(metadata.get("resourceVersion").is_none() && metadata.get("finalizers").is_none());
    assert_eq!(metadata["labels"][REMOTE_CLUSTER_LABEL], "c1");
    assert_eq!(metadata["labels"]["app"], "x");
    assert!(
        metadata["labels"]
            .get("claimed.internal.apis.kcp.io/abc")
            .is_none()
    );
    assert_eq!(metadata["annotations"][REMOTE_NAME_ANNOTATION], "db");
    assert!(metadata["annotations"].get("kcp.io/cluster").is_none());
    assert_eq!(
        metadata["annotations"][LAST_KNOWN_ANNOTATION],
        r#"{"spec":{"size":1}}"#
    );
}

#[test]
fn an_unchanged_object_needs_no_patch() {
    let r = remote(json!({"size": 1}));
    let local = new_local(&r, "v1", "K", "n", Some("c1"), owner(&key()));
    assert_eq!(
        update_patch(&r, &local, &owner(&key()).stamp(&r), None),
        None
    );
}

#[test]
fn only_the_kcp_delta_is_sent_and_provider_additions_survive() {
    let r = remote(json!({"size": 1}));
    let mut local = new_local(&r, "v1", "K", "n", Some("c1"), owner(&key()));
    local["spec"]["defaultedByProvider"] = json!("yes");
    let changed = remote(json!({"size": 2}));
    let patch =
        update_patch(&changed, &local, &owner(&key()).stamp(&changed), None).expect("a patch");
    assert_eq!(patch["spec"], json!({"size": 2}));
    assert_eq!(
        patch["metadata"]["annotations"][LAST_KNOWN_ANNOTATION],
        r#"{"spec":{"size":2}}"#
    );
}

#[test]
fn a_provider_edit_of_a_consumer_field_is_reverted() {
    let r = remote(json!({"size": 1}));
    let mut local = new_local(&r, "v1", "K", "n", Some("c1"), owner(&key()));
    local["spec"]["size"] = json!(5);
    local["spec"]["extra"] = json!(true);
    let patch = update_patch(&r, &local, &owner(&key()).stamp(&r), None).expect("a patch");
    assert_eq!(
        patch["spec"],
        json!({"size": 1}),
        "the consumer's value returns, the provider's extra field stays"
    );
}

#[test]
fn a_field_removed_since_an_upstream_agents_state_is_removed_from_the_copy() {
    // Upstream synced replicas 3; the consumer removed it while no agent ran.
    let now = remote(json!({"size": 1}));
    let local = json!({"metadata": {"labels": {}, "annotations": {}},
                       "spec": {"size": 1, "replicas": 3, "providerField": true}});
    let upstream = json!({"spec": {"size": 1, "replicas": 3}});
    let prior = upstream.as_object().unwrap();
    let stamp = owner(&key()).stamp(&now);
    let patch = update_patch(&now, &local, &stamp, Some(prior)).expect("a patch");
    assert_eq!(
        patch["spec"],
        json!({"replicas": null}),
        "removed, the provider's own field kept"
    );
    assert_eq!(
        patch["metadata"]["annotations"][LAST_KNOWN_ANNOTATION],
        r#"{"spec":{"size":1}}"#
    );
    // Without upstream's state the removal cannot be seen.
    let blind = update_patch(&now, &local, &stamp, None).expect("identity repaired");
    assert!(blind.get("spec").is_none(), "{blind}");
}

#[test]
fn an_upstream_state_that_matches_still_records_the_copys_own() {
    let now = remote(json!({"size": 1}));
    let mut local = new_local(&now, "v1", "K", "n", Some("c1"), owner(&key()));
    local["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(LAST_KNOWN_ANNOTATION);
    assert!(lacks_state(&now, &local));
    let upstream = json!({"spec": {"size": 1}});
    let patch = update_patch(
        &now,
        &local,
        &owner(&key()).stamp(&now),
        Some(upstream.as_object().unwrap()),
    )
    .expect("a patch");
    assert!(patch.get("spec").is_none());
    assert_eq!(
        patch["metadata"]["annotations"][LAST_KNOWN_ANNOTATION],
        r#"{"spec":{"size":1}}"#
    );
    let recorded = new_local(&now, "v1", "K", "n", Some("c1"), owner(&key()));
    assert!(!lacks_state(&now, &recorded));
}

#[test]
fn without_a_last_known_state_kcp_values_are_restored_and_identity_repaired() {
    let r = remote(json!({"size": 1, "tier": "gold"}));
    let local = json!({"metadata": {"labels": {}, "annotations": {}},
                       "spec": {"size": 2, "tier": "gold", "providerField": true}});
    let patch = update_patch(&r, &local, &owner(&key()).stamp(&r), None).expect("a patch");
    assert_eq!(
        patch["spec"],
        json!({"size": 1}),
        "only what differs from kcp, nothing removed"
    );
    assert_eq!(patch["metadata"]["labels"][REMOTE_CLUSTER_LABEL], "c1");
    assert_eq!(patch["metadata"]["labels"][AGENT_LABEL], "a");
    assert!(patch["metadata"]["annotations"][LAST_KNOWN_ANNOTATION].is_string());

    let mut repaired = local.clone();
    repaired["spec"]["size"] = json!(1);
    repaired["metadata"] = patch["metadata"].clone();
    assert_eq!(
        update_patch(&r, &repaired, &owner(&key()).stamp(&r), None),
        None,
        "it converges"
    );
}

#[test]
fn merge_diff_removes_replaces_and_adds() {
    let from = json!({"a": 1, "b": {"c": 1, "d": 2}, "e": [1]});
    let to = json!({"b": {"c": 1, "d": 3}, "e": [2], "f": "new"});
    assert_eq!(
        merge_diff(&from, &to),
        json!({"a": null, "b": {"d": 3}, "e": [2], "f": "new"})
    );
}

#[test]
fn the_workspace_path_is_recorded_when_known() {
    let key = key();
    let with_path = Owner {
        key: &key,
        agent: "a",
        workspace_path: Some("root:org:team"),
    };
    let local = new_local(&remote(json!({})), "v1", "K", "n", None, with_path);
    assert_eq!(
        local["metadata"]["annotations"]["syncagent.kcp.io/remote-object-workspace-path"],
        "root:org:team"
    );
    assert!(local["metadata"].get("namespace").is_none());
}

#[test]
fn finalizer_patches_add_sorted_remove_and_carry_the_resource_version() {
    let object: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "K",
        "metadata": {"name": "x", "resourceVersion": "7", "finalizers": ["z.io/other"]}
    }))
    .expect("object");
    let add = finalizer_patch(&object, "a.io/mine", true).expect("adds");
    assert_eq!(
        add,
        json!({"metadata": {"finalizers": ["a.io/mine", "z.io/other"], "resourceVersion": "7"}})
    );
    assert_eq!(
        finalizer_patch(&object, "a.io/mine", false),
        None,
        "nothing to remove"
    );
    assert_eq!(
        finalizer_patch(&object, "z.io/other", true),
        None,
        "already there"
    );
    let remove = finalizer_patch(&object, "z.io/other", false).expect("removes");
    assert_eq!(remove["metadata"]["finalizers"], json!([]));
}

#[test]
fn a_related_copy_carries_no_metadata_keeps_destination_keys_and_loses_removed_ones() {
    let source = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "s", "labels": {"app": "x"}},
                        "data": {"mode": "fast", "size": "s"}});
    let stamp = Stamp::default();
    let mut copy = new_copy(&source, "v1", "ConfigMap", "s", Some("ns"), &stamp);
    assert_eq!(copy["metadata"]["labels"], json!({}));
    assert_eq!(update_patch(&source, &copy, &stamp, None), None);
    copy["data"]["provider"] = json!("added");
    let edited = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"},
                        "data": {"mode": "slow"}});
    let patch = update_patch(&edited, &copy, &stamp, None).expect("a patch");
    assert_eq!(patch["data"], json!({"mode": "slow", "size": null}));
    assert!(patch["metadata"]["annotations"][LAST_KNOWN_ANNOTATION].is_string());
}

#[test]
fn a_secret_copy_keeps_no_state_so_its_values_never_show_in_an_annotation() {
    let source = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                        "data": {"password": "c2VjcmV0", "user": "YWRtaW4="}});
    let stamp = Stamp::default();
    let mut copy = new_copy(&source, "v1", "Secret", "s", Some("ns"), &stamp);
    assert_eq!(copy["data"], source["data"]);
    assert!(copy["metadata"]["annotations"][LAST_KNOWN_ANNOTATION].is_null());
    assert_eq!(update_patch(&source, &copy, &stamp, None), None);
    // A key the destination added stays; a changed source value is restored;
    // and still no state is written.
    copy["data"]["provider"] = json!("YWRkZWQ=");
    copy["data"]["user"] = json!("b3RoZXI=");
    let patch = update_patch(&source, &copy, &stamp, None).expect("a patch");
    assert_eq!(patch, json!({"data": {"user": "YWRtaW4="}}));
}

#[test]
fn holding_puts_on_the_finalizer_and_the_marks_once() {
    let key = key();
    let placement = Placement {
        name: "copy".into(),
        namespace: Some("c1".into()),
    };
    let marks = owner(&key).marks(&placement);
    assert_eq!(marks[SYNCED_BY_ANNOTATION], "a");
    assert_eq!(marks[LOCAL_OBJECT_ANNOTATION], "c1/copy");
    let cluster_scoped = owner(&key).marks(&Placement {
        name: "copy".into(),
        namespace: None,
    });
    assert_eq!(cluster_scoped[LOCAL_OBJECT_ANNOTATION], "copy");

    let mut object: kube::api::DynamicObject = serde_json::from_value(remote(json!({}))).unwrap();
    object.metadata.finalizers = None;
    let patch = hold_patch(&object, Some("f"), &marks).expect("a patch");
    assert_eq!(patch["metadata"]["finalizers"], json!(["f"]));
    assert_eq!(patch["metadata"]["resourceVersion"], "7");
    assert_eq!(
        patch["metadata"]["annotations"][LOCAL_OBJECT_ANNOTATION],
        "c1/copy"
    );

    // Held already, marks missing (synced before marks existed): only them.
    object.metadata.finalizers = Some(vec!["f".into()]);
    let patch = hold_patch(&object, Some("f"), &marks).expect("a patch");
    assert!(patch["metadata"].get("finalizers").is_none(), "{patch}");
    assert_eq!(patch["metadata"]["annotations"][SYNCED_BY_ANNOTATION], "a");

    // Both there: nothing to write.
    object
        .metadata
        .annotations
        .get_or_insert_default()
        .extend(marks.clone());
    assert_eq!(hold_patch(&object, Some("f"), &marks), None);
    assert_eq!(hold_patch(&object, None, &BTreeMap::new()), None);
}

//! The bytes a sync worker's mirrors hold per synced object: a kcp object
//! and its local copy, shaped as the agent sees them (with managedFields, the
//! identification labels and the last-known state), measured as the growth of
//! this process's resident memory, as the benchmark measures the agent's. A
//! change that makes the mirrors hold parsed objects again, or the field
//! history, fails here before it shows in the benchmark.

use kube::api::DynamicObject;
use serde_json::json;
use sync_agent::sync::identity::{RemoteKey, copy_key};
use sync_agent::sync::mirror::Mirror;

const OBJECTS: usize = 10_000;
/// What the two mirrors may hold per synced object: the agent's whole
/// budget (issue 16). Parsed objects took 11.0 KB here; their compact JSON,
/// with the addresses shared by both indexes, 2.8 KB.
const LIMIT: usize = 4_000;

/// This process's resident memory in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

fn managed_fields(manager: &str) -> serde_json::Value {
    json!({
        "manager": manager, "operation": "Update", "apiVersion": "bench.example.com/v1",
        "time": "2026-12-03T17:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kcp.io/cluster": {}}},
                     "f:spec": {".": {}, "f:color": {}}, "f:status": {".": {}, "f:phase": {}}},
    })
}

fn kcp_object(cluster: &str, i: usize) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "bench.example.com/v1", "kind": "Widget",
        "metadata": {
            "name": format!("widget-{i:05}"), "namespace": "default",
            "uid": format!("5f0c3d2e-0d7a-4c3e-9d1b-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i), "generation": 1,
            "creationTimestamp": "2026-12-03T17:00:00Z",
            "annotations": {
                "kcp.io/cluster": cluster,
                "syncagent.kcp.io/agent-name": "bench",
                "syncagent.kcp.io/local-object": format!("{cluster}/widget-{i:05}"),
            },
            "finalizers": ["syncagent.kcp.io/cleanup"],
            "managedFields": [managed_fields("e2e"), managed_fields("sync-agent")],
        },
        "spec": {"color": "blue"},
        "status": {"phase": "Ready"},
    }))
    .expect("a kcp object")
}

fn local_copy(remote: &DynamicObject, i: usize) -> DynamicObject {
    let key = RemoteKey::of_kcp_object(remote).expect("a cluster annotation");
    let mut labels = key.labels();
    labels.insert("syncagent.kcp.io/agent-name".into(), "bench".into());
    let mut annotations = key.annotations();
    annotations.insert(
        "syncagent.kcp.io/last-known-state".into(),
        json!({"apiVersion": "bench.example.com/v1", "kind": "Widget",
               "metadata": {"name": format!("widget-{i:05}"), "namespace": key.cluster},
               "spec": {"color": "blue"}})
        .to_string(),
    );
    serde_json::from_value(json!({
        "apiVersion": "bench.example.com/v1", "kind": "Widget",
        "metadata": {
            "name": format!("widget-{i:05}"), "namespace": key.cluster,
            "uid": format!("9a1b2c3d-0d7a-4c3e-9d1b-{i:012}"),
            "resourceVersion": format!("{}", 200_000 + i), "generation": 1,
            "creationTimestamp": "2026-12-03T17:00:01Z",
            "labels": labels, "annotations": annotations,
            "managedFields": [managed_fields("sync-agent"), managed_fields("provider")],
        },
        "spec": {"color": "blue"},
        "status": {"phase": "Ready"},
    }))
    .expect("a local copy")
}

#[test]
fn the_mirrors_hold_a_few_kilobytes_per_synced_object() {
    let pair = |i: usize| {
        let remote = kcp_object(&format!("2c5h1ufz3hs8vx{:02}", i % 10), i);
        let local = local_copy(&remote, i);
        (remote, local)
    };
    let objects = Mirror::new(RemoteKey::of_kcp_object);
    let copies = Mirror::new(copy_key);

    // Objects are made one at a time and dropped once the mirrors took them
    // in, so the growth is what the mirrors keep.
    let before = rss();
    for i in 0..OBJECTS {
        let (remote, local) = pair(i);
        objects.apply(&remote);
        copies.apply(&local);
    }
    let per_object = rss().saturating_sub(before) / OBJECTS;
    println!("mirrors hold {per_object} bytes per synced object");

    // What was put in comes back out, but for the field history.
    let (remote, local) = &pair(7);
    let key = RemoteKey::of_kcp_object(remote).expect("a key");
    let found = objects.get(&key);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].metadata.managed_fields, None);
    assert_eq!(found[0].data, remote.data);
    assert_eq!(found[0].metadata.annotations, remote.metadata.annotations);
    let found = copies.get(&key.copy_key());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].metadata.labels, local.metadata.labels);

    assert!(
        per_object <= LIMIT,
        "the mirrors hold {per_object} bytes per synced object, more than {LIMIT}"
    );
}

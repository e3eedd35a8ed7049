use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::apis_v1alpha1::APIExportEndpointSlice;
use super::apis_v1alpha2::{APIBinding, APIExport};
use super::*;

fn round_trip<T: DeserializeOwned + Serialize>(yaml: &str) -> (Value, T, Value) {
    let written: Value = serde_saphyr::from_str(yaml).expect("fixture is valid YAML");
    let typed: T = serde_json::from_value(written.clone()).expect("fixture parses");
    let back = serde_json::to_value(&typed).expect("serializes");
    (written, typed, back)
}

#[test]
fn unknown_apiexport_fields_survive_a_read_modify_write() {
    let (written, mut export, _) =
        round_trip::<APIExport>(include_str!("fixtures/apiexport-v1alpha2.yaml"));
    export.spec.resources[0].schema = "v00000000.widgets.example.io".into();

    let back = serde_json::to_value(&export).expect("serializes");
    let mut expected = written;
    expected["spec"]["resources"][0]["schema"] = "v00000000.widgets.example.io".into();
    assert_eq!(back, expected);
    assert_eq!(back["spec"]["futureSpecField"]["nested"][2], 3);
    assert_eq!(
        back["spec"]["permissionClaims"][0]["defaultSelector"]["matchAll"],
        true
    );
}

#[test]
fn apiexport_fields_are_read_into_their_types() {
    let (_, export, _) = round_trip::<APIExport>(include_str!("fixtures/apiexport-v1alpha2.yaml"));
    assert_eq!(export.spec.resources[0].group, "example.io");
    assert_eq!(export.spec.permission_claims[1].group, "");
    assert_eq!(export.spec.permission_claims[1].verbs, vec!["*"]);
    let status = export.status.expect("status");
    assert!(Condition::is_true(&status.conditions, "IdentityValid"));
    assert_eq!(status.identity_hash.len(), 64);
}

#[test]
fn apibinding_claims_round_trip_with_their_selector_and_state() {
    let (written, binding, back) =
        round_trip::<APIBinding>(include_str!("fixtures/apibinding-v1alpha2.yaml"));
    assert_eq!(written, back);
    let claims = &binding.spec.permission_claims;
    assert!(claims[0].selector.match_all);
    assert!(
        claims[0].claim.unknown.is_empty(),
        "selector and state are not claim fields"
    );
    assert_eq!(claims[1].claim.identity_hash, "abc");
    assert_eq!(
        claims[1]
            .selector
            .label_selector
            .match_labels
            .as_ref()
            .and_then(|l| l.get("team")),
        Some(&"blue".to_string())
    );
    assert_eq!(claims[1].state, "Rejected");
    assert_eq!(binding.status.expect("status").phase, "Bound");
}

#[test]
fn endpoint_slice_urls_are_read_from_status_endpoints() {
    let slice: APIExportEndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "apis.kcp.io/v1alpha1",
        "kind": "APIExportEndpointSlice",
        "metadata": {"name": "widgets"},
        "spec": {"export": {"path": "root:acme", "name": "widgets"}},
        "status": {"endpoints": [{"url": "https://127.0.0.1:6443/services/apiexport/abc/widgets"}]}
    }))
    .expect("parses");
    assert_eq!(slice.spec.export.path, "root:acme");
    let endpoints = slice.status.expect("status").endpoints;
    assert_eq!(
        endpoints[0].url,
        "https://127.0.0.1:6443/services/apiexport/abc/widgets"
    );
}

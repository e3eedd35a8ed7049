//! Proves the test kcp is real: an export in one workspace, bound in another,
//! serves the consumer's objects through the export's virtual workspace.

use e2e::env::EnvFile;
use e2e::kcp::Kcp;
use e2e::poll::{KCP_SLOW_TIMEOUT, poll_until};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use sync_agent::api::kcp::CLUSTER_ANNOTATION;
use sync_agent::api::kcp::apis_v1alpha1::ExportReference;
use sync_agent::api::kcp::apis_v1alpha1::{APIExportEndpointSlice, APIResourceSchema};
use sync_agent::api::kcp::apis_v1alpha2::{
    APIBinding, APIBindingSpec, APIExport, APIExportSpec, BindingReference, ResourceSchema,
};

const EXPORT: &str = "widgets.e2e.example.io";
const SCHEMA: &str = "v1.widgets.e2e.example.io";

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("e2e.example.io", "v1", "Widget"),
        "widgets",
    )
}

#[tokio::test]
async fn consumer_objects_are_listed_through_the_virtual_workspace_with_their_cluster() {
    let env = EnvFile::load().expect("test environment is running");
    let kcp = Kcp::connect(&env).await.expect("kcp admin config");
    let provider = kcp
        .create_workspace("root", "provider")
        .await
        .expect("provider workspace");
    let consumer = kcp
        .create_workspace("root", "consumer")
        .await
        .expect("consumer workspace");
    let provider_client = kcp.client(&provider.path).expect("provider client");

    let schema: APIResourceSchema = serde_json::from_value(json!({
        "apiVersion": "apis.kcp.io/v1alpha1",
        "kind": "APIResourceSchema",
        "metadata": {"name": SCHEMA},
        "spec": {
            "group": "e2e.example.io",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }}
            }]
        }
    }))
    .expect("schema fixture");
    Api::<APIResourceSchema>::all(provider_client.clone())
        .create(&PostParams::default(), &schema)
        .await
        .expect("APIResourceSchema is accepted");

    let export = APIExport::new(
        EXPORT,
        APIExportSpec {
            resources: vec![ResourceSchema {
                name: "widgets".into(),
                group: "e2e.example.io".into(),
                schema: SCHEMA.into(),
                storage: json!({"crd": {}}),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    Api::<APIExport>::all(provider_client.clone())
        .create(&PostParams::default(), &export)
        .await
        .expect("APIExport is accepted");

    let consumer_client = kcp.client(&consumer.path).expect("consumer client");
    let binding = APIBinding::new(
        "widgets",
        APIBindingSpec {
            reference: BindingReference {
                export: Some(ExportReference {
                    path: provider.path.clone(),
                    name: EXPORT.into(),
                }),
            },
            ..Default::default()
        },
    );
    let bindings: Api<APIBinding> = Api::all(consumer_client.clone());
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("APIBinding is accepted");
    e2e::kcp::wait_for_bound(&bindings, "widgets")
        .await
        .expect("binding");

    let slices: Api<APIExportEndpointSlice> = Api::all(provider_client);
    let url = poll_until(
        "the endpoint slice to list a URL",
        KCP_SLOW_TIMEOUT,
        async || {
            let slice = slices.get(EXPORT).await.map_err(|e| e.to_string())?;
            let endpoints = slice.status.map(|s| s.endpoints).unwrap_or_default();
            endpoints
                .first()
                .map(|e| e.url.clone())
                .ok_or_else(|| "no endpoints".to_string())
        },
    )
    .await
    .expect("endpoint URL");
    assert!(
        url.contains(&format!(
            "/services/apiexport/{}/{EXPORT}",
            provider.cluster
        )),
        "{url}"
    );

    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some("e2e".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(consumer_client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace in the consumer workspace");
    let resource = widget_resource();
    let mut widget = DynamicObject::new("blue", &resource).within("e2e");
    widget.data = json!({"spec": {"color": "blue"}});
    let widgets: Api<DynamicObject> = Api::namespaced_with(consumer_client, "e2e", &resource);
    poll_until(
        "the bound resource to accept objects",
        KCP_SLOW_TIMEOUT,
        async || {
            widgets
                .create(&PostParams::default(), &widget)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await
    .expect("widget created");

    let wildcard = kube::Client::try_from(
        kcp.config_at(&format!("{url}/clusters/*"))
            .expect("virtual workspace config"),
    )
    .expect("virtual workspace client");
    let everywhere: Api<DynamicObject> = Api::all_with(wildcard, &resource);
    let seen = poll_until(
        "the widget in the virtual workspace",
        KCP_SLOW_TIMEOUT,
        async || {
            let list = everywhere
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|w| w.metadata.name.as_deref() == Some("blue"))
                .ok_or_else(|| "no widget named blue".to_string())
        },
    )
    .await
    .expect("widget listed");
    let annotations = seen.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations.get(CLUSTER_ANNOTATION), Some(&consumer.cluster));
    assert_eq!(seen.data["spec"]["color"], "blue");

    consumer
        .delete(&kcp)
        .await
        .expect("consumer workspace deleted");
    provider
        .delete(&kcp)
        .await
        .expect("provider workspace deleted");
}

//! The committed CRD, served by the genuine kube-apiserver: bad manifests are refused with a message that
//! names the field, and omitted fields get the documented defaults.

mod support;

use extctl_core::crd::ExternalControl;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use support::Cluster;

fn manifest(spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "extctl.dev/v1alpha1",
        "kind": "ExternalControl",
        "metadata": {"name": "c"},
        "spec": spec
    }))
    .unwrap()
}

fn api(cluster: &Cluster) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<ExternalControl>(&());
    Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &resource)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omitted_fields_get_the_documented_defaults() {
    let cluster = Cluster::start().await;
    let spec = json!({"projectId": 42, "controlId": 7, "secretRef": {"name": "t"}});
    let created = api(&cluster)
        .create(&PostParams::default(), &manifest(spec))
        .await
        .unwrap();
    let spec = &created.data["spec"];
    assert_eq!(spec["pingEnabled"], true);
    assert_eq!(spec["pingInterval"], "12h");
    assert_eq!(spec["pendingTimeout"], "30m");
    assert_eq!(spec["secretRef"]["key"], "token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_naming_the_field() {
    let cluster = Cluster::start().await;
    let base = json!({"projectId": 42, "controlId": 7, "secretRef": {"name": "t"}});
    let with = |field: &str, value: Value| {
        let mut spec = base.clone();
        spec[field] = value;
        spec
    };
    let cases = [
        ("projectId 0", with("projectId", json!(0)), "spec.projectId"),
        (
            "controlId negative",
            with("controlId", json!(-3)),
            "spec.controlId",
        ),
        (
            "projectId missing",
            json!({"controlId": 7, "secretRef": {"name": "t"}}),
            "spec.projectId",
        ),
        (
            "secretRef missing",
            json!({"projectId": 1, "controlId": 7}),
            "spec.secretRef",
        ),
        (
            "pingInterval in days",
            with("pingInterval", json!("1d")),
            "spec.pingInterval",
        ),
        (
            "pingInterval zero",
            with("pingInterval", json!("0s")),
            "must be at least 1s",
        ),
        (
            "pendingTimeout zero",
            with("pendingTimeout", json!("0m")),
            "must be at least 1s",
        ),
        (
            "externalUrl not http",
            with("externalUrl", json!("ftp://x")),
            "spec.externalUrl",
        ),
        (
            "externalUrl too long",
            with(
                "externalUrl",
                json!(format!("https://{}", "a".repeat(1020))),
            ),
            "spec.externalUrl",
        ),
        (
            "displayName too long",
            with("displayName", json!("n".repeat(256))),
            "spec.displayName",
        ),
        (
            "pingEnabled not a bool",
            with("pingEnabled", json!("yes")),
            "spec.pingEnabled",
        ),
    ];
    for (case, spec, expected) in cases {
        let error = api(&cluster)
            .create(&PostParams::default(), &manifest(spec))
            .await
            .expect_err(case);
        let kube::Error::Api(status) = error else {
            panic!("{case}: not an API error: {error}")
        };
        assert_eq!(status.code, 422, "{case}: {}", status.message);
        assert!(
            status.message.contains(expected),
            "{case}: {}",
            status.message
        );
    }
}

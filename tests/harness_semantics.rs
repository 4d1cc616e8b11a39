//! Self-tests of the stand-in API server in `tests/harness/`: each drives it through a real
//! `kube::Client` (or raw HTTP, where the client would hide the answer) and checks one piece
//! of the real API server's behaviour that operators rely on.

mod harness;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use axum::http::Method;
use futures::{Stream, StreamExt};
use harness::ApiServer;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event as EventsV1Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ObjectMeta, Status};
use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Discovery};
use serde_json::{Value, json};

const NS: &str = "default";

/// How long any single expected event may take before a test fails instead of hanging.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A namespaced test kind with a status subresource, defaults and validation rules.
fn widget_crd() -> Value {
    let spec_schema = json!({
        "type": "object",
        "required": ["size"],
        "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 100},
            "color": {"type": "string", "enum": ["red", "green", "blue"], "default": "red"},
            "url": {"type": "string", "pattern": "^https?://", "maxLength": 30},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "interval": {
                "type": "string",
                "x-kubernetes-validations": [
                    {"rule": "duration(self) >= duration('1s')", "message": "must be at least 1s"},
                ],
            },
            "serial": {
                "type": "string",
                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "serial is immutable"}],
            },
            "options": {
                "type": "object",
                "default": {},
                "properties": {"retries": {"type": "integer", "default": 3}},
            },
        },
    });
    crd(
        "widgets",
        "Widget",
        "Namespaced",
        Some(json!({"status": {}})),
        json!({
            "type": "object",
            "properties": {
                "spec": spec_schema,
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
            },
        }),
    )
}

/// A cluster-scoped test kind without a status subresource, keeping unknown spec fields.
fn gadget_crd() -> Value {
    crd(
        "gadgets",
        "Gadget",
        "Cluster",
        None,
        json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
            },
        }),
    )
}

fn crd(plural: &str, kind: &str, scope: &str, subresources: Option<Value>, schema: Value) -> Value {
    let mut version = json!({"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema}});
    if let Some(subresources) = subresources {
        version["subresources"] = subresources;
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.test.example")},
        "spec": {
            "group": "test.example",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind},
            "scope": scope,
            "versions": [version],
        },
    })
}

async fn start() -> (ApiServer, Client) {
    let server = ApiServer::start_with_crds(vec![widget_crd(), gadget_crd()]).await;
    let client = server.client();
    (server, client)
}

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.example", "v1", "Widget"),
        "widgets",
    )
}

fn gadget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.example", "v1", "Gadget"),
        "gadgets",
    )
}

fn widgets(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, &widget_resource())
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    DynamicObject::new(name, &widget_resource())
        .within(NS)
        .data(json!({"spec": spec}))
}

async fn create_widget(api: &Api<DynamicObject>, name: &str, size: i64) -> DynamicObject {
    api.create(&PostParams::default(), &widget(name, json!({"size": size})))
        .await
        .expect("create widget")
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// The `Status` of a request that must have failed with one.
fn api_error<T: Debug>(result: Result<T, kube::Error>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

fn rv(obj: &DynamicObject) -> u64 {
    let rv = obj
        .metadata
        .resource_version
        .as_deref()
        .expect("resourceVersion");
    rv.parse().expect("numeric resourceVersion")
}

fn name_of(obj: &DynamicObject) -> &str {
    obj.metadata.name.as_deref().unwrap_or_default()
}

/// A raw watch (no kube-runtime watcher) from `version`.
async fn open_watch(
    api: &Api<DynamicObject>,
    params: &WatchParams,
    version: &str,
) -> futures::stream::BoxStream<'static, kube::Result<WatchEvent<DynamicObject>>> {
    api.watch(params, version).await.unwrap().boxed()
}

/// The names of the objects a list returns, in order.
async fn listed(api: &Api<DynamicObject>, params: &ListParams) -> Vec<String> {
    let list = api.list(params).await.unwrap();
    list.items.iter().map(|o| name_of(o).to_owned()).collect()
}

/// `future`'s output, failing the test after [`EVENT_TIMEOUT`] instead of hanging.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(EVENT_TIMEOUT, future)
        .await
        .expect("timed out waiting for the API server")
}

/// The next item of `stream`, within [`EVENT_TIMEOUT`].
async fn next_item<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    within(stream.next()).await
}

/// The next non-bookmark event of a raw watch, as (type, object), within [`EVENT_TIMEOUT`]
/// (bookmarks keep arriving, so the deadline covers the whole wait).
async fn next_change<S>(stream: &mut S) -> (&'static str, DynamicObject)
where
    S: Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Unpin,
{
    within(async {
        loop {
            match stream
                .next()
                .await
                .expect("watch ended")
                .expect("watch error")
            {
                WatchEvent::Added(o) => return ("ADDED", o),
                WatchEvent::Modified(o) => return ("MODIFIED", o),
                WatchEvent::Deleted(o) => return ("DELETED", o),
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(status) => panic!("unexpected watch error {status:?}"),
            }
        }
    })
    .await
}

/// The next `watcher` event, with errors reported as `Err`.
async fn next_watcher_event<S>(
    stream: &mut S,
) -> Result<watcher::Event<DynamicObject>, watcher::Error>
where
    S: Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Unpin,
{
    next_item(stream).await.expect("watcher streams never end")
}

/// Consumes a watcher's initial list (skipping errors); returns the names it listed.
async fn drain_init<S>(stream: &mut S) -> Vec<String>
where
    S: Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Unpin,
{
    within(async {
        let mut names = Vec::new();
        loop {
            match stream.next().await.expect("watcher streams never end") {
                Ok(watcher::Event::Init) | Err(_) => {}
                Ok(watcher::Event::InitApply(o)) => names.push(name_of(&o).to_string()),
                Ok(watcher::Event::InitDone) => return names,
                Ok(other) => panic!("unexpected event during the initial list: {other:?}"),
            }
        }
    })
    .await
}

/// Waits for the watcher to report `name` applied.
async fn expect_apply<S>(stream: &mut S, name: &str)
where
    S: Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Unpin,
{
    match next_watcher_event(stream).await {
        Ok(watcher::Event::Apply(o)) => assert_eq!(name_of(&o), name),
        other => panic!("expected Apply({name}), got {other:?}"),
    }
}

/// A plain HTTP request to the harness, for answers kube-rs would retry or refuse to send:
/// the status code and the body parsed as JSON. `body` is `(content type, text)`.
async fn raw(
    server: &ApiServer,
    method: reqwest::Method,
    path: &str,
    body: Option<(&str, String)>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", server.url()));
    if let Some((content_type, text)) = body {
        request = request.header("content-type", content_type).body(text);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

// ---------------------------------------------------------------------------------------------
// Objects: metadata, preconditions, status subresource, generation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_sets_server_metadata_and_schema_defaults() {
    let (server, client) = start().await;
    let api = widgets(&client);
    let mut body = widget("alpha", json!({"size": 3, "bogus": true}));
    body.data["status"] = json!({"phase": "Ready"});

    let created = api.create(&PostParams::default(), &body).await.unwrap();

    let meta = &created.metadata;
    assert!(rv(&created) > 0);
    assert_eq!(meta.uid.as_deref().map(str::len), Some(36));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.namespace.as_deref(), Some(NS));
    assert_eq!(meta.generation, Some(1));
    // Defaults applied (nested ones too), undeclared field pruned, status dropped on create.
    assert_eq!(
        created.data["spec"],
        json!({"size": 3, "color": "red", "options": {"retries": 3}})
    );
    assert!(created.data.get("status").is_none());
    let stored = server
        .get_object("test.example/v1", "widgets", Some(NS), "alpha")
        .unwrap();
    assert_eq!(stored["metadata"]["uid"].as_str(), meta.uid.as_deref());

    let status = api_error(
        api.create(&PostParams::default(), &widget("alpha", json!({"size": 3})))
            .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(
        status.message,
        r#"widgets.test.example "alpha" already exists"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_supports_generate_name_and_dry_run() {
    let (server, client) = start().await;
    let api = widgets(&client);
    let mut body = widget("", json!({"size": 1}));
    body.metadata.name = None;
    body.metadata.generate_name = Some("gen-".into());

    let first = api.create(&PostParams::default(), &body).await.unwrap();
    let second = api.create(&PostParams::default(), &body).await.unwrap();

    for name in [name_of(&first), name_of(&second)] {
        assert!(
            name.starts_with("gen-") && name.len() == 9,
            "generated name {name}"
        );
    }
    assert_ne!(name_of(&first), name_of(&second));

    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let rv_before = server.resource_version();
    api.create(&dry_run, &widget("ghost", json!({"size": 1})))
        .await
        .unwrap();
    assert!(
        server
            .get_object("test.example/v1", "widgets", Some(NS), "ghost")
            .is_none()
    );
    assert_eq!(server.resource_version(), rv_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_resource_version_is_a_conflict() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let created = create_widget(&api, "alpha", 1).await;
    let pp = PostParams::default();

    let mut fresh = created.clone();
    fresh.data["spec"]["size"] = json!(2);
    let updated = api.replace("alpha", &pp, &fresh).await.unwrap();
    assert!(rv(&updated) > rv(&created));

    let mut stale = created.clone();
    stale.data["spec"]["size"] = json!(3);
    let status = api_error(api.replace("alpha", &pp, &stale).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on widgets.test.example \"alpha\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );

    let stale_patch = json!({"metadata": {"resourceVersion": created.metadata.resource_version}, "spec": {"size": 4}});
    let status = api_error(
        api.patch(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(&stale_patch),
        )
        .await,
    );
    assert_eq!(status.reason, "Conflict");

    let stale_delete = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: created.metadata.resource_version.clone(),
            uid: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        api_error(api.delete("alpha", &stale_delete).await).code,
        409
    );

    // Without a resourceVersion a custom resource is not replaced: 422, as kube-apiserver
    // v1.36 answers (`09-put-without-rv.json`).
    let mut unconditional = updated.clone();
    unconditional.metadata.resource_version = None;
    unconditional.data["spec"]["size"] = json!(5);
    let status = api_error(api.replace("alpha", &pp, &unconditional).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));

    // No create-on-update.
    let status = api_error(
        api.replace("missing", &pp, &widget("missing", json!({"size": 1})))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_separates_spec_and_status() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let pp = PostParams::default();
    let created = create_widget(&api, "alpha", 1).await;

    // On the main resource, status changes are ignored.
    let mut main_write = created.clone();
    main_write.data["spec"]["size"] = json!(2);
    main_write.data["status"] = json!({"phase": "Ready"});
    let updated = api.replace("alpha", &pp, &main_write).await.unwrap();
    assert_eq!(updated.data["spec"]["size"], 2);
    assert!(updated.data.get("status").is_none());

    // On /status, only status changes are applied.
    let mut status_write = updated.clone();
    status_write.data["status"] = json!({"phase": "Ready"});
    status_write.data["spec"]["size"] = json!(9);
    status_write.metadata.labels = labels(&[("ignored", "yes")]);
    let after = api
        .replace_status("alpha", &pp, &status_write)
        .await
        .unwrap();
    assert_eq!(after.data["status"]["phase"], "Ready");
    assert_eq!(after.data["spec"]["size"], 2);
    assert!(after.metadata.labels.is_none());

    // A stale resourceVersion is still a conflict on /status.
    assert_eq!(
        api_error(api.replace_status("alpha", &pp, &status_write).await).code,
        409
    );

    let merge = json!({"spec": {"size": 3}, "status": {"phase": "Broken"}});
    let patched = api
        .patch("alpha", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    assert_eq!(
        (
            patched.data["spec"]["size"].clone(),
            patched.data["status"]["phase"].clone()
        ),
        (json!(3), json!("Ready"))
    );

    let status_merge = json!({"spec": {"size": 50}, "status": {"phase": "Done"}});
    let patched = api
        .patch_status(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(&status_merge),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            patched.data["spec"]["size"].clone(),
            patched.data["status"]["phase"].clone()
        ),
        (json!(3), json!("Done"))
    );

    // GET on /status returns the whole object.
    let via_status = api.get_status("alpha").await.unwrap();
    assert_eq!(
        (
            via_status.data["spec"]["size"].clone(),
            via_status.data["status"]["phase"].clone()
        ),
        (json!(3), json!("Done"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_moves_only_with_spec_changes() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let pp = PatchParams::default();
    let created = create_widget(&api, "alpha", 1).await;
    assert_eq!(created.metadata.generation, Some(1));

    let labelled = api
        .patch(
            "alpha",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    assert!(rv(&labelled) > rv(&created));

    let status = api
        .patch_status(
            "alpha",
            &pp,
            &Patch::Merge(json!({"status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(status.metadata.generation, Some(1));

    let respec = api
        .patch("alpha", &pp, &Patch::Merge(json!({"spec": {"size": 2}})))
        .await
        .unwrap();
    assert_eq!(respec.metadata.generation, Some(2));

    // A write that changes nothing is a no-op: no new resourceVersion, no generation bump.
    let noop = api
        .patch("alpha", &pp, &Patch::Merge(json!({"spec": {"size": 2}})))
        .await
        .unwrap();
    assert_eq!(
        (noop.metadata.generation, rv(&noop)),
        (Some(2), rv(&respec))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scoped_kind_without_status_subresource() {
    let (_server, client) = start().await;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &gadget_resource());
    let body = DynamicObject::new("g1", &gadget_resource())
        .data(json!({"spec": {"anything": {"goes": 1}}, "status": {"phase": "New"}}));

    let created = api.create(&PostParams::default(), &body).await.unwrap();
    assert_eq!(created.metadata.namespace, None);
    assert_eq!(
        created.data["spec"]["anything"]["goes"], 1,
        "preserve-unknown-fields keeps it"
    );
    assert_eq!(
        created.data["status"]["phase"], "New",
        "status is an ordinary field"
    );

    // Without a status subresource, any change outside metadata moves the generation.
    let patched = api
        .patch(
            "g1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Old"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            patched.metadata.generation,
            patched.data["status"]["phase"].clone()
        ),
        (Some(2), json!("Old"))
    );
    assert_eq!(api_error(api.get_status("g1").await).code, 404);
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Patches and validation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_and_json_patches() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let pp = PatchParams::default();
    api.create(
        &PostParams::default(),
        &widget("alpha", json!({"size": 1, "tags": ["a"]})),
    )
    .await
    .unwrap();

    // RFC 7386: null removes a field, objects merge.
    let merged = api
        .patch(
            "alpha",
            &pp,
            &Patch::Merge(json!({"spec": {"tags": null, "url": "https://x"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.data["spec"],
        json!({"size": 1, "color": "red", "url": "https://x", "options": {"retries": 3}})
    );

    // RFC 6902, with a test operation, as kube-runtime's finalizer helper sends.
    let ops = json!([
        {"op": "test", "path": "/spec/size", "value": 1},
        {"op": "replace", "path": "/spec/size", "value": 7},
    ]);
    let patched = api
        .patch(
            "alpha",
            &pp,
            &Patch::Json::<()>(serde_json::from_value(ops).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["size"], 7);

    let failing = json!([{"op": "test", "path": "/spec/size", "value": 1}]);
    let status = api_error(
        api.patch(
            "alpha",
            &pp,
            &Patch::Json::<()>(serde_json::from_value(failing).unwrap()),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));

    // Strategic merge patch is for built-in kinds only.
    let status = api_error(
        api.patch(
            "alpha",
            &pp,
            &Patch::Strategic(json!({"spec": {"size": 2}})),
        )
        .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (415, "UnsupportedMediaType")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_creates_then_merges() {
    let (server, client) = start().await;
    let api = widgets(&client);
    let apply = PatchParams::apply("harness-test");
    let applied = json!({
        "apiVersion": "test.example/v1",
        "kind": "Widget",
        "metadata": {"name": "applied"},
        "spec": {"size": 2},
    });

    let created = api
        .patch("applied", &apply, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(
        (
            created.data["spec"]["size"].clone(),
            created.metadata.generation
        ),
        (json!(2), Some(1))
    );

    let mut again = applied.clone();
    again["spec"] = json!({"color": "blue"});
    let merged = api
        .patch("applied", &apply, &Patch::Apply(&again))
        .await
        .unwrap();
    assert_eq!(
        merged.data["spec"]["size"], 2,
        "fields not in the new apply stay"
    );
    assert_eq!(merged.data["spec"]["color"], "blue");

    // The real server requires a field manager for apply (kube-rs refuses to send without).
    let path = "/apis/test.example/v1/namespaces/default/widgets/applied";
    let apply_body = Some(("application/apply-patch+yaml", again.to_string()));
    let (code, body) = raw(&server, reqwest::Method::PATCH, path, apply_body).await;
    assert_eq!((code, &body["reason"]), (400, &json!("BadRequest")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_validation_rejects_invalid_objects() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let pp = PostParams::default();

    let status = api_error(api.create(&pp, &widget("bad", json!({"size": 0}))).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        r#"Widget.test.example "bad" is invalid: spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"#
    );

    let status = api_error(
        api.create(&pp, &widget("bad", json!({"color": "blue"})))
            .await,
    );
    // A missing field blocks the CEL rules, and the server says so (fixture 13).
    assert!(
        status.message.ends_with(
            "spec.size: Required value, <nil>: Invalid value: null: some validation rules were \
             not checked because the object was invalid; correct the existing errors to \
             complete validation]"
        ),
        "{}",
        status.message
    );

    let many = json!({"size": "big", "color": "pink", "url": "ftp://example", "tags": ["a", "b", "c", "d"]});
    let status = api_error(api.create(&pp, &widget("bad", many)).await);
    for expected in [
        "spec.size in body must be of type integer",
        r#"spec.color: Unsupported value: "pink""#,
        "spec.url in body should match '^https?://'",
        "spec.tags: Too many: 4: must have at most 3 items",
    ] {
        assert!(
            status.message.contains(expected),
            "{expected:?} not in {}",
            status.message
        );
    }

    // Updates are validated too, and nothing is stored.
    create_widget(&api, "good", 1).await;
    let status = api_error(
        api.patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 101}})),
        )
        .await,
    );
    assert!(
        status
            .message
            .contains("should be less than or equal to 100"),
        "{}",
        status.message
    );
    assert_eq!(api.get("good").await.unwrap().data["spec"]["size"], 1);

    // fieldValidation=Strict turns pruning into an error.
    let strict = PatchParams::default().validation_strict();
    let status = api_error(
        api.patch(
            "good",
            &strict,
            &Patch::Merge(json!({"spec": {"bogus": 1}})),
        )
        .await,
    );
    assert_eq!(status.code, 400);
    assert!(
        status.message.contains(r#"unknown field "spec.bogus""#),
        "{}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_beyond_gos_range_fails_the_rule_as_cel_go_does() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let pp = PostParams::default();
    // 2562047h47m16s is Go's longest whole-second duration; an hour more cannot be converted.
    let fits = widget("fits", json!({"size": 1, "interval": "2562047h"}));
    api.create(&pp, &fits).await.unwrap();
    let status = api_error(
        api.create(
            &pp,
            &widget("big", json!({"size": 1, "interval": "2562048h"})),
        )
        .await,
    );
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        "Widget.test.example \"big\" is invalid: spec.interval: Invalid value: \"string\": type \
         conversion error from 'string' to 'google.protobuf.Duration' evaluating rule: must be \
         at least 1s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cel_rules_are_enforced() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let pp = PatchParams::default();

    let status = api_error(
        api.create(
            &PostParams::default(),
            &widget("bad", json!({"size": 1, "interval": "0s"})),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        // The value quoted, as kube-apiserver does (fixture 04).
        r#"Widget.test.example "bad" is invalid: spec.interval: Invalid value: "0s": must be at least 1s"#
    );

    let good = widget("good", json!({"size": 1, "interval": "5s", "serial": "a"}));
    api.create(&PostParams::default(), &good).await.unwrap();
    // Transition rules compare with the stored object.
    let status = api_error(
        api.patch("good", &pp, &Patch::Merge(json!({"spec": {"serial": "b"}})))
            .await,
    );
    assert!(
        status.message.ends_with("serial is immutable"),
        "{}",
        status.message
    );
    let patched = api
        .patch("good", &pp, &Patch::Merge(json!({"spec": {"size": 2}})))
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["serial"], "a");
}

// ---------------------------------------------------------------------------------------------
// Lists

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_paginates_with_one_resource_version() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    for i in 0..7 {
        create_widget(&api, &format!("w{i}"), 1).await;
    }

    let (mut names, mut versions, mut token, mut pages) =
        (Vec::new(), Vec::new(), None::<String>, 0);
    loop {
        let mut lp = ListParams::default().limit(3);
        lp.continue_token = token.clone();
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|o| name_of(o).to_string()));
        versions.push(page.metadata.resource_version.clone().unwrap());
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
        // A write between pages must not change the resourceVersion the pages report.
        create_widget(&api, &format!("z{pages}"), 1).await;
    }

    assert_eq!(pages, 3);
    assert_eq!(&names[..7], ["w0", "w1", "w2", "w3", "w4", "w5", "w6"]);
    assert!(versions.iter().all(|v| v == &versions[0]), "{versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_label_field_and_namespace() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    for i in 0..6 {
        let mut body = widget(&format!("w{i}"), json!({"size": 1}));
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        body.metadata.labels = if i == 3 {
            labels(&[("tier", tier), ("special", "yes")])
        } else {
            labels(&[("tier", tier)])
        };
        api.create(&PostParams::default(), &body).await.unwrap();
    }
    let other: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "other", &widget_resource());
    other
        .create(
            &PostParams::default(),
            &widget("w9", json!({"size": 1})).within("other"),
        )
        .await
        .unwrap();

    let count = |selector: &'static str| {
        let api = api.clone();
        async move {
            api.list(&ListParams::default().labels(selector))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(count("tier=even").await, 3);
    assert_eq!(count("tier!=even").await, 3);
    assert_eq!(count("special").await, 1);
    assert_eq!(count("!special").await, 5);
    assert_eq!(count("tier in (odd,none)").await, 3);
    assert_eq!(count("tier=odd,special").await, 1);
    assert_eq!(count("tier notin (odd),special").await, 0);

    let by_name = ListParams::default().fields("metadata.name=w2");
    assert_eq!(listed(&api, &by_name).await, ["w2"]);
    let status = api_error(api.list(&ListParams::default().fields("spec.size=1")).await);
    assert_eq!(status.code, 400);

    let everywhere: Api<DynamicObject> = Api::all_with(client.clone(), &widget_resource());
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        7
    );
    let in_other = ListParams::default().fields("metadata.namespace=other");
    assert_eq!(listed(&everywhere, &in_other).await, ["w9"]);
}

// ---------------------------------------------------------------------------------------------
// Watches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_changes_in_order() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let start_rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = open_watch(&api, &WatchParams::default(), &start_rv).await;

    create_widget(&api, "alpha", 1).await;
    api.patch(
        "alpha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    api.delete("alpha", &DeleteParams::default()).await.unwrap();

    let mut last_rv: u64 = start_rv.parse().unwrap();
    for (expected_type, expected_size) in [("ADDED", 1), ("MODIFIED", 2), ("DELETED", 2)] {
        let (event_type, obj) = next_change(&mut stream).await;
        assert_eq!(
            (event_type, name_of(&obj), obj.data["spec"]["size"].clone()),
            (expected_type, "alpha", json!(expected_size))
        );
        assert!(rv(&obj) > last_rv, "resourceVersions must increase");
        last_rv = rv(&obj);
    }

    // From "0" a watch starts with the current objects.
    create_widget(&api, "beta", 1).await;
    let mut from_zero = open_watch(&api, &WatchParams::default(), "0").await;
    let (event_type, obj) = next_change(&mut from_zero).await;
    assert_eq!((event_type, name_of(&obj)), ("ADDED", "beta"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_label_selector_follows_membership() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let pp = PatchParams::default();
    let mut stream = open_watch(&api, &WatchParams::default().labels("team=blue"), "0").await;

    let mut alpha = widget("alpha", json!({"size": 1}));
    alpha.metadata.labels = labels(&[("team", "blue")]);
    api.create(&PostParams::default(), &alpha).await.unwrap();
    let mut beta = widget("beta", json!({"size": 1}));
    beta.metadata.labels = labels(&[("team", "red")]);
    api.create(&PostParams::default(), &beta).await.unwrap();
    api.patch(
        "beta",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"team": "blue"}}})),
    )
    .await
    .unwrap();
    api.patch(
        "alpha",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"team": "red"}}})),
    )
    .await
    .unwrap();
    // Another namespace is out of this watch's scope, whatever the labels.
    let mut elsewhere = widget("omega", json!({"size": 1})).within("other");
    elsewhere.metadata.labels = labels(&[("team", "blue")]);
    let other: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "other", &widget_resource());
    other
        .create(&PostParams::default(), &elsewhere)
        .await
        .unwrap();
    api.delete("beta", &DeleteParams::default()).await.unwrap();
    let mut last = widget("zeta", json!({"size": 1}));
    last.metadata.labels = labels(&[("team", "blue")]);
    api.create(&PostParams::default(), &last).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..5 {
        let (event_type, obj) = next_change(&mut stream).await;
        seen.push((event_type, name_of(&obj).to_string()));
    }
    let expected = [
        ("ADDED", "alpha"),
        ("ADDED", "beta"),
        ("DELETED", "alpha"),
        ("DELETED", "beta"),
        ("ADDED", "zeta"),
    ];
    assert_eq!(seen, expected.map(|(t, n)| (t, n.to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watch_does_not_block_writers() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    // Opened but not read while the writes happen.
    let mut stream = open_watch(&api, &WatchParams::default(), "0").await;

    let started = Instant::now();
    for i in 0..200 {
        create_widget(&api, &format!("w{i:03}"), 1).await;
    }
    assert!(
        started.elapsed() < EVENT_TIMEOUT,
        "writes took {:?}",
        started.elapsed()
    );

    let mut last_rv = 0;
    for i in 0..200 {
        let (event_type, obj) = next_change(&mut stream).await;
        assert_eq!(
            (event_type, name_of(&obj)),
            ("ADDED", format!("w{i:03}").as_str())
        );
        assert!(rv(&obj) > last_rv);
        last_rv = rv(&obj);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_deletes_the_selected_objects() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    for (name, team) in [("alpha", "blue"), ("beta", "blue"), ("gamma", "red")] {
        let mut body = widget(name, json!({"size": 1}));
        body.metadata.labels = labels(&[("team", team)]);
        api.create(&PostParams::default(), &body).await.unwrap();
    }

    let deleted = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("team=blue"),
        )
        .await
        .unwrap()
        .left()
        .expect("the deleted objects");
    let names: Vec<&str> = deleted.items.iter().map(name_of).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(listed(&api, &ListParams::default()).await, ["gamma"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_bookmarks_and_ends_at_timeout() {
    let (server, client) = start().await;
    let api = widgets(&client);
    create_widget(&api, "alpha", 1).await;
    let current = server.resource_version().to_string();
    let started = Instant::now();
    let mut stream = open_watch(&api, &WatchParams::default().timeout(2), &current).await;

    match next_item(&mut stream).await {
        Some(Ok(WatchEvent::Bookmark(bookmark))) => {
            assert_eq!(bookmark.metadata.resource_version, current)
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    while let Some(item) = next_item(&mut stream).await {
        assert!(
            matches!(item, Ok(WatchEvent::Bookmark(_))),
            "only bookmarks while idle"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "ended after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_compacted_version_is_gone() {
    let (server, client) = start().await;
    let api = widgets(&client);
    let old_rv = rv(&create_widget(&api, "alpha", 1).await).to_string();
    api.patch(
        "alpha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    server.faults().compact();

    let mut stream = open_watch(&api, &WatchParams::default(), &old_rv).await;
    match next_item(&mut stream).await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        next_item(&mut stream).await.is_none(),
        "the stream ends after the error"
    );

    // From the current resourceVersion, watching works again.
    let current = server.resource_version().to_string();
    let mut stream = open_watch(&api, &WatchParams::default(), &current).await;
    create_widget(&api, "beta", 1).await;
    let (event_type, obj) = next_change(&mut stream).await;
    assert_eq!((event_type, name_of(&obj)), ("ADDED", "beta"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_after_dropped_watches() {
    let (server, client) = start().await;
    let api = widgets(&client);
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(drain_init(&mut events).await.is_empty());
    create_widget(&api, "alpha", 1).await;
    expect_apply(&mut events, "alpha").await;

    server.reset_requests();
    server.faults().drop_watches();
    create_widget(&api, "beta", 1).await;
    // Resumed from its resourceVersion: beta arrives as a change, with no re-list.
    expect_apply(&mut events, "beta").await;

    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.is_watch()),
        "re-watched: {requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.method == Method::GET && !r.is_watch()),
        "no re-list: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_relists_after_compaction() {
    let (server, client) = start().await;
    let api = widgets(&client);
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    drain_init(&mut events).await;
    create_widget(&api, "alpha", 1).await;
    expect_apply(&mut events, "alpha").await;

    // While the watcher is not polled, its watch ends, a change happens and the history that
    // would let it resume is compacted away.
    server.faults().drop_watches();
    create_widget(&api, "beta", 1).await;
    server.faults().compact();

    match next_watcher_event(&mut events).await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected the 410 from resuming, got {other:?}"),
    }
    assert_eq!(drain_init(&mut events).await, ["alpha", "beta"]);
    create_widget(&api, "gamma", 1).await;
    expect_apply(&mut events, "gamma").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_gets_initial_events() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    create_widget(&api, "alpha", 1).await;
    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();

    assert_eq!(drain_init(&mut events).await, ["alpha"]);
    create_widget(&api, "beta", 1).await;
    expect_apply(&mut events, "beta").await;
}

// ---------------------------------------------------------------------------------------------
// Deletion

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_until_removed() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let pp = PatchParams::default();
    let mut body = widget("alpha", json!({"size": 1}));
    body.metadata.finalizers = Some(vec!["test.example/cleanup".into()]);
    api.create(&PostParams::default(), &body).await.unwrap();

    let marked = api
        .delete("alpha", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("object returned");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let stored = api.get("alpha").await.unwrap();
    assert!(stored.metadata.deletion_timestamp.is_some());
    assert_eq!(stored.metadata.generation, Some(2));

    let more = json!({"metadata": {"finalizers": ["test.example/cleanup", "test.example/late"]}});
    let status = api_error(api.patch("alpha", &pp, &Patch::Merge(&more)).await);
    assert_eq!(status.code, 422);

    // Removing the last finalizer (as kube-runtime does, by JSON patch) completes the deletion.
    let ops = json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "test.example/cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]);
    api.patch(
        "alpha",
        &pp,
        &Patch::Json::<()>(serde_json::from_value(ops).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(api_error(api.get("alpha").await).code, 404);
    assert_eq!(
        api_error(api.delete("alpha", &DeleteParams::default()).await).code,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_collects_its_dependents() {
    let (_server, client) = start().await;
    let api = widgets(&client);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let owned_secret = |owner: &DynamicObject, name: &str| Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "test.example/v1".into(),
                    kind: "Widget".into(),
                    name: name_of(owner).into(),
                    uid: owner.metadata.uid.clone().unwrap(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        ..Default::default()
    };
    let alpha = create_widget(&api, "alpha", 1).await;
    let beta = create_widget(&api, "beta", 1).await;
    secrets
        .create(&PostParams::default(), &owned_secret(&alpha, "alpha-token"))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &owned_secret(&beta, "beta-token"))
        .await
        .unwrap();

    api.delete("alpha", &DeleteParams::default()).await.unwrap();
    api.delete("beta", &DeleteParams::orphan()).await.unwrap();

    assert_eq!(api_error(secrets.get("alpha-token").await).code, 404);
    assert!(
        secrets.get("beta-token").await.is_ok(),
        "orphaned dependents stay"
    );

    // An owner held by a finalizer keeps its dependents until the finalizer goes.
    let mut held = widget("gamma", json!({"size": 1}));
    held.metadata.finalizers = Some(vec!["test.example/cleanup".into()]);
    let gamma = api.create(&PostParams::default(), &held).await.unwrap();
    secrets
        .create(&PostParams::default(), &owned_secret(&gamma, "gamma-token"))
        .await
        .unwrap();
    api.delete("gamma", &DeleteParams::default()).await.unwrap();
    assert!(secrets.get("gamma-token").await.is_ok());
    let release = json!({"metadata": {"finalizers": null}});
    api.patch("gamma", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    assert_eq!(api_error(secrets.get("gamma-token").await).code, 404);
}

// ---------------------------------------------------------------------------------------------
// Built-in kinds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_fold_string_data_and_take_strategic_patches() {
    let (_server, client) = start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("token".into()),
            ..Default::default()
        },
        string_data: Some([("token".to_string(), "s3cret".to_string())].into()),
        ..Default::default()
    };

    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_eq!(
        created.data.unwrap()["token"],
        ByteString(b"s3cret".to_vec())
    );
    assert_eq!(created.string_data, None);
    assert_eq!(created.type_.as_deref(), Some("Opaque"));

    let patch = json!({"metadata": {"labels": {"app": "extctl"}}});
    let patched = secrets
        .patch("token", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["app"], "extctl");
    assert_eq!(
        secrets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_recorder_creates_then_patches() {
    let (server, client) = start().await;
    let reporter = Reporter {
        controller: "harness-test".into(),
        instance: None,
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let regarding = ObjectReference {
        api_version: Some("test.example/v1".into()),
        kind: Some("Widget".into()),
        name: Some("alpha".into()),
        namespace: Some(NS.into()),
        ..Default::default()
    };
    let event = RecordedEvent {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("hello".into()),
        action: "Test".into(),
        secondary: None,
    };

    server.reset_requests();
    recorder.publish(&event, &regarding).await.unwrap();
    recorder.publish(&event, &regarding).await.unwrap();

    let calls: Vec<(Method, u16)> = server
        .requests()
        .into_iter()
        .map(|r| (r.method, r.code))
        .collect();
    assert_eq!(calls, [(Method::POST, 201), (Method::PATCH, 200)]);
    let events: Api<EventsV1Event> = Api::namespaced(client.clone(), NS);
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(listed[0].reason.as_deref(), Some("Tested"));

    // Core v1 Events (the same storage, another view: see `events_are_one_storage_in_two_versions`).
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), NS);
    let core_event = CoreEvent {
        metadata: ObjectMeta {
            name: Some("alpha.1".into()),
            ..Default::default()
        },
        involved_object: regarding.clone(),
        reason: Some("Tested".into()),
        count: Some(1),
        ..Default::default()
    };
    core.create(&PostParams::default(), &core_event)
        .await
        .unwrap();
    let patched = core
        .patch(
            "alpha.1",
            &PatchParams::default(),
            &Patch::Merge(json!({"count": 2})),
        )
        .await
        .unwrap();
    assert_eq!(patched.count, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_update_with_optimistic_concurrency() {
    let (_server, client) = start().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("extctl-leader".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("pod-a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();

    let mut takeover = created.clone();
    takeover.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
    let taken = leases
        .replace("extctl-leader", &PostParams::default(), &takeover)
        .await
        .unwrap();
    assert_eq!(
        taken.spec.unwrap().holder_identity.as_deref(),
        Some("pod-b")
    );

    let mut late = created.clone();
    late.spec.as_mut().unwrap().holder_identity = Some("pod-c".into());
    let status = api_error(
        leases
            .replace("extctl-leader", &PostParams::default(), &late)
            .await,
    );
    assert_eq!(status.reason, "Conflict");
    assert!(
        status
            .message
            .contains(r#"leases.coordination.k8s.io "extctl-leader""#),
        "{}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_cluster_scoped() {
    let (_server, client) = start().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()));

    let team = Namespace {
        metadata: ObjectMeta {
            name: Some("team-a".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = namespaces
        .create(&PostParams::default(), &team)
        .await
        .unwrap();
    assert_eq!(
        created.status.and_then(|s| s.phase).as_deref(),
        Some("Active")
    );
    assert!(namespaces.get("team-a").await.is_ok());
}

// ---------------------------------------------------------------------------------------------
// Errors, discovery, configuration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_kubernetes_status_objects() {
    let (server, client) = start().await;
    let wrong_kind = DynamicObject::new("g", &gadget_resource()).within(NS);
    let status = api_error(
        widgets(&client)
            .create(&PostParams::default(), &wrong_kind)
            .await,
    );
    assert_eq!(status.code, 400);
    assert_eq!(
        status.message,
        "the kind in the data (Gadget) does not match the expected kind (Widget)"
    );

    let status = api_error(widgets(&client).get("missing").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        status.message,
        r#"widgets.test.example "missing" not found"#
    );
    let details = status.details.unwrap();
    assert_eq!(
        (
            details.name.as_str(),
            details.group.as_str(),
            details.kind.as_str()
        ),
        ("missing", "test.example", "widgets")
    );

    let (code, body) = raw(
        &server,
        reqwest::Method::GET,
        "/apis/nope.example/v1/things",
        None,
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        (
            body["kind"].clone(),
            body["status"].clone(),
            body["code"].clone()
        ),
        (json!("Status"), json!("Failure"), json!(404))
    );

    let path = "/apis/test.example/v1/namespaces/default/widgets";
    let malformed = Some(("application/json", "{not json".to_string()));
    let (code, body) = raw(&server, reqwest::Method::POST, path, malformed).await;
    assert_eq!((code, &body["reason"]), (400, &json!("BadRequest")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_version_are_served() {
    let (_server, client) = start().await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );

    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (resource, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("test.example", "v1", "Widget"))
        .expect("Widget discovered");
    assert_eq!(resource.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        discovery
            .resolve_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"))
            .is_some()
    );
    assert!(
        discovery
            .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Secret"))
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_points_at_the_server() {
    let (server, _client) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = server.write_kubeconfig(dir.path());

    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).unwrap();
    let secrets: Api<Secret> = Api::default_namespaced(client);
    assert!(
        secrets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_directory_is_served() {
    let server = ApiServer::start().await;
    let client = server.client();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let expected: Vec<Value> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                .flat_map(|text| {
                    serde_yaml::Deserializer::from_str(&text)
                        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
                        .collect::<Vec<Value>>()
                })
                .filter(|doc| doc["kind"] == "CustomResourceDefinition")
                .collect()
        })
        .unwrap_or_default();

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert_eq!(
        crds.list(&ListParams::default()).await.unwrap().items.len(),
        expected.len()
    );
    for crd in &expected {
        let stored = crds
            .get(crd["metadata"]["name"].as_str().unwrap())
            .await
            .unwrap();
        let established = stored.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            established
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        );
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let gvk = GroupVersionKind::gvk(
                crd["spec"]["group"].as_str().unwrap(),
                version["name"].as_str().unwrap(),
                crd["spec"]["names"]["kind"].as_str().unwrap(),
            );
            let resource = ApiResource::from_gvk_with_plural(
                &gvk,
                crd["spec"]["names"]["plural"].as_str().unwrap(),
            );
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            assert!(
                api.list(&ListParams::default())
                    .await
                    .unwrap()
                    .items
                    .is_empty()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_closes_its_connections() {
    let (server, client) = start().await;
    let api = widgets(&client);
    api.list(&ListParams::default()).await.unwrap(); // a kept-alive connection now exists
    let mut watch = open_watch(&api, &WatchParams::default(), "0").await;

    drop(server);

    assert!(next_item(&mut watch).await.is_none(), "watch ended");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = within(api.list(&ListParams::default())).await;
    assert!(
        matches!(after, Err(ref e) if !matches!(e, kube::Error::Api(_))),
        "expected a connection error, got {after:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Fault injection and accounting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_answers_503_until_restored() {
    let (server, client) = start().await;
    let api = widgets(&client);
    let mut watch = open_watch(&api, &WatchParams::default(), "0").await;

    server.faults().set_unavailable(true);
    assert!(
        next_item(&mut watch).await.is_none(),
        "open watches are closed"
    );
    let (code, body) = raw(&server, reqwest::Method::GET, "/version", None).await;
    assert_eq!((code, &body["reason"]), (503, &json!("ServiceUnavailable")));

    // kube's client retries 503s with backoff, so a call made during the outage succeeds
    // once the server is back.
    let pending = tokio::spawn(async move { api.list(&ListParams::default()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.faults().set_unavailable(false);
    assert!(pending.await.unwrap().is_ok());

    let codes: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/widgets"))
        .map(|r| r.code)
        .collect();
    assert!(
        codes.iter().filter(|&&c| c == 503).count() >= 2,
        "{codes:?}"
    );
    assert_eq!(codes.last(), Some(&200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_next_fails_only_matching_requests() {
    let (server, _client) = start().await;
    let mut config = server.client_config();
    config.default_retry = false;
    let api = widgets(&Client::try_from(config).unwrap());
    create_widget(&api, "alpha", 1).await;

    server
        .faults()
        .fail_next(2, Some(Method::GET), "/widgets/alpha", 500);
    assert_eq!(api_error(api.get("alpha").await).reason, "InternalError");
    create_widget(&api, "beta", 1).await; // a POST does not match
    assert!(api.get("beta").await.is_ok()); // nor does another path
    assert_eq!(api_error(api.get("alpha").await).code, 500);
    assert!(api.get("alpha").await.is_ok(), "only the next two");

    server.faults().fail_next(1, None, "labelSelector", 429);
    assert!(api.list(&ListParams::default()).await.is_ok());
    let status = api_error(api.list(&ListParams::default().labels("a=b")).await);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (429, "TooManyRequests")
    );

    // clear() disarms what is still pending.
    server.faults().fail_next(5, None, "/widgets", 500);
    server.faults().clear();
    assert!(api.list(&ListParams::default()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_every_request() {
    let (server, client) = start().await;
    let api = widgets(&client);
    api.list(&ListParams::default()).await.unwrap(); // connection established

    server.faults().set_latency(Duration::from_millis(300));
    let started = Instant::now();
    api.list(&ListParams::default()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    server.faults().set_latency(Duration::ZERO);
    let started = Instant::now();
    api.list(&ListParams::default()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_recorded() {
    let (server, client) = start().await;
    let api = widgets(&client);
    server.reset_requests();

    create_widget(&api, "alpha", 1).await;
    api.patch(
        "alpha",
        &PatchParams::apply("counter"),
        &Patch::Apply(
            json!({"apiVersion": "test.example/v1", "kind": "Widget", "spec": {"size": 2}}),
        ),
    )
    .await
    .unwrap();
    api.get("alpha").await.unwrap();
    let _ = api.get("missing").await;

    let records = server.requests();
    let collection = "/apis/test.example/v1/namespaces/default/widgets";
    let seen: Vec<(Method, String, u16)> = records
        .iter()
        .map(|r| (r.method.clone(), r.path.clone(), r.code))
        .collect();
    assert_eq!(
        seen,
        [
            (Method::POST, collection.to_string(), 201),
            (Method::PATCH, format!("{collection}/alpha"), 200),
            (Method::GET, format!("{collection}/alpha"), 200),
            (Method::GET, format!("{collection}/missing"), 404),
        ]
    );
    assert!(records[1].query.contains("fieldManager=counter"));
    assert_eq!(records.iter().filter(|r| r.is_write()).count(), 2);

    server.reset_requests();
    assert!(server.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// What kubectl asks for: Table output, aggregated discovery, OpenAPI v3, Events in both versions

/// A GET with an `Accept` header: the status code, the `Content-Type` and the JSON body.
async fn get_accepting(server: &ApiServer, path: &str, accept: &str) -> (u16, String, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.url()))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (code, content_type, response.json().await.unwrap())
}

/// What `kubectl get` sends.
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

/// The recorded Table case (`17-table-output.json`) replayed, by the same independent program
/// as `tests/apiserver_fixtures.rs`, against a harness serving the printer columns the recording
/// was made with (the CRD has since gained a Ready column and prints Next Ping as text), so
/// that every significant value of the case is compared: columns, cells (`3m`, `<invalid>`,
/// `null`), rows' PartialObjectMetadata, `includeObject=None`, the `v1beta1` Table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_output_agrees_with_the_recording() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("../shared/fixtures/kube-apiserver/v1.36");
    let case: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("17-table-output.json")).unwrap(),
    )
    .unwrap();
    let recorded = case["steps"][4]["response"]["body"]["columnDefinitions"]
        .as_array()
        .unwrap();
    // The recorded columns but Name: name, type and the JSONPath their description quotes.
    let columns: Vec<Value> = recorded[1..]
        .iter()
        .map(|c| {
            let path = c["description"]
                .as_str()
                .unwrap()
                .strip_prefix("Custom resource definition column (in JSONPath format): ")
                .expect("a column without a description of its own");
            json!({"name": c["name"], "type": c["type"], "jsonPath": path})
        })
        .collect();
    let text = std::fs::read_to_string(root.join("crds/externalcontrols.extctl.dev.yaml")).unwrap();
    let mut crd: Value = serde_yaml::from_str(&text).unwrap();
    crd["spec"]["versions"][0]["additionalPrinterColumns"] = json!(columns);
    let server = ApiServer::start_with_crds(vec![crd]).await;

    let script = root.join("tests/support/replay_fixtures.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--server", &server.url(), "--only", "17", "--fixtures"])
        .arg(&fixtures)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let differences: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    // Case 00 (the namespace) always runs first; its differences are listed elsewhere.
    let table: Vec<&Value> = differences
        .iter()
        .filter(|d| d["case"] == "17-table-output.json")
        .collect();
    assert!(table.is_empty(), "{table:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_follow_the_accept_header_and_include_object() {
    let (server, client) = start().await;
    create_widget(&widgets(&client), "alpha", 3).await;
    let path = "/apis/test.example/v1/namespaces/default/widgets";

    // Without printer columns a custom resource is printed as Name and Age.
    let (code, content_type, table) = get_accepting(&server, path, TABLE).await;
    assert_eq!((code, content_type.as_str()), (200, "application/json"));
    assert_eq!(
        (&table["kind"], &table["apiVersion"]),
        (&json!("Table"), &json!("meta.k8s.io/v1"))
    );
    let names: Vec<&Value> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(names, [&json!("Name"), &json!("Age")]);
    assert_eq!(table["columnDefinitions"][1]["type"], "date");
    let row = &table["rows"][0];
    assert_eq!(row["cells"][0], "alpha");
    assert!(
        ["0s", "1s", "2s"].contains(&row["cells"][1].as_str().unwrap()),
        "{row}"
    );
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["namespace"], "default");
    assert!(row["object"].get("spec").is_none());
    assert!(table["metadata"]["resourceVersion"].is_string());

    // includeObject=Object carries the object as served; a bad value is a 400.
    let (_, _, table) =
        get_accepting(&server, &format!("{path}?includeObject=Object"), TABLE).await;
    assert_eq!(table["rows"][0]["object"]["spec"]["size"], 3);
    let (code, _, status) =
        get_accepting(&server, &format!("{path}?includeObject=All"), TABLE).await;
    assert_eq!((code, &status["reason"]), (400, &json!("BadRequest")));

    // One object is a one-row Table; plain JSON when JSON comes first.
    let (_, _, table) = get_accepting(&server, &format!("{path}/alpha"), TABLE).await;
    assert_eq!(table["rows"].as_array().unwrap().len(), 1);
    let (_, _, list) = get_accepting(
        &server,
        path,
        "application/json, application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    .await;
    assert_eq!(list["kind"], "WidgetList");

    // Built-in kinds have kube-apiserver's printers: a Secret's type and number of keys.
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("token".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
        ])),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let (_, _, table) = get_accepting(&server, "/api/v1/namespaces/default/secrets", TABLE).await;
    let names: Vec<&Value> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(
        names,
        [
            &json!("Name"),
            &json!("Type"),
            &json!("Data"),
            &json!("Age")
        ]
    );
    let cells = table["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(cells[..3], [json!("token"), json!("Opaque"), json!(2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printer_columns_are_found_by_jsonpath_and_converted_by_type() {
    let mut crd = widget_crd();
    crd["spec"]["versions"][0]["additionalPrinterColumns"] = json!([
        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Tags", "type": "string", "jsonPath": ".spec.tags"},
        {"name": "Second", "type": "string", "jsonPath": ".spec.tags[1]"},
        {"name": "Since", "type": "date", "jsonPath": ".status.since"},
        {"name": "Until", "type": "date", "jsonPath": ".status.until"},
        {"name": "Bad", "type": "date", "jsonPath": ".status.bad"},
        {"name": "Flag", "type": "boolean", "jsonPath": ".spec.size"},
        {"name": "Missing", "type": "string", "jsonPath": ".status.nothing", "priority": 1, "description": "Nothing here."},
    ]);
    // Room in the status for what the columns read.
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let server = ApiServer::start_with_crds(vec![crd]).await;
    let api = widgets(&server.client());
    let mut widget = widget("alpha", json!({"size": 3, "tags": ["x", "y"]}));
    widget.data["spec"]["size"] = json!(3);
    api.create(&PostParams::default(), &widget).await.unwrap();
    let hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let tomorrow = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let status = json!({"status": {
        "conditions": [{"type": "Other", "status": "False"}, {"type": "Ready", "status": "True"}],
        "since": hour_ago.to_string(),
        "until": tomorrow.to_string(),
        "bad": "yesterday",
    }});
    api.patch_status("alpha", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();

    let path = "/apis/test.example/v1/namespaces/default/widgets/alpha";
    let (_, _, table) = get_accepting(&server, path, TABLE).await;
    assert_eq!(
        table["rows"][0]["cells"],
        json!([
            "alpha",
            3,
            "True",
            "[\"x\",\"y\"]",
            "y",
            "60m",
            "<invalid>",
            "<invalid>",
            null,
            null
        ])
    );
    let missing = &table["columnDefinitions"][9];
    assert_eq!(
        (&missing["priority"], &missing["description"]),
        (&json!(1), &json!("Nothing here."))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_aggregated_when_asked_for() {
    let mut crd = widget_crd();
    crd["spec"]["names"]["shortNames"] = json!(["wd"]);
    crd["spec"]["names"]["categories"] = json!(["things"]);
    let server = ApiServer::start_with_crds(vec![crd]).await;
    // What client-go's discovery sends.
    let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

    let (code, content_type, groups) = get_accepting(&server, "/apis", aggregated).await;
    assert_eq!(code, 200);
    assert_eq!(
        content_type,
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    assert_eq!(groups["kind"], "APIGroupDiscoveryList");
    let group = groups["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "test.example")
        .expect("the CRD's group");
    let widgets = &group["versions"][0]["resources"][0];
    assert_eq!(widgets["resource"], "widgets");
    assert_eq!(
        widgets["responseKind"],
        json!({"group": "test.example", "version": "v1", "kind": "Widget"})
    );
    assert_eq!(widgets["scope"], "Namespaced");
    assert_eq!(widgets["shortNames"], json!(["wd"]));
    assert_eq!(widgets["categories"], json!(["things"]));
    assert_eq!(widgets["subresources"][0]["subresource"], "status");

    let (_, _, core) = get_accepting(&server, "/api", aggregated).await;
    let resources = core["items"][0]["versions"][0]["resources"]
        .as_array()
        .unwrap();
    let events = resources
        .iter()
        .find(|r| r["resource"] == "events")
        .unwrap();
    assert_eq!(events["shortNames"], json!(["ev"]));

    // Plain JSON gets the unaggregated documents, short names included.
    let (_, content_type, groups) = get_accepting(&server, "/apis", "application/json").await;
    assert_eq!(
        (content_type.as_str(), &groups["kind"]),
        ("application/json", &json!("APIGroupList"))
    );
    let (_, _, list) = get_accepting(&server, "/apis/test.example/v1", "application/json").await;
    assert_eq!(list["resources"][0]["shortNames"], json!(["wd"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_v3_says_the_server_validates_fields() {
    let (server, _client) = start().await;
    let (code, _, index) = get_accepting(&server, "/openapi/v3", "application/json").await;
    assert_eq!(code, 200);
    let url = index["paths"]["apis/test.example/v1"]["serverRelativeURL"]
        .as_str()
        .expect("the CRD's group-version is listed");
    assert!(
        url.starts_with("/openapi/v3/apis/test.example/v1?hash="),
        "{url}"
    );
    assert!(index["paths"]["api/v1"].is_object());

    // kubectl looks for the kind's PATCH operation and its fieldValidation parameter.
    let (_, _, document) = get_accepting(&server, url, "application/json").await;
    let patch =
        &document["paths"]["/apis/test.example/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "test.example", "version": "v1", "kind": "Widget"})
    );
    let parameters: Vec<&Value> = patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert!(
        parameters.contains(&&json!("fieldValidation")),
        "{parameters:?}"
    );
    let (code, _, _) = get_accepting(
        &server,
        "/openapi/v3/apis/nothing.example/v1",
        "application/json",
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_one_storage_in_two_versions() {
    let (server, client) = start().await;
    let events: Api<EventsV1Event> = Api::namespaced(client.clone(), NS);
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), NS);
    let regarding = ObjectReference {
        api_version: Some("test.example/v1".into()),
        kind: Some("Widget".into()),
        name: Some("alpha".into()),
        namespace: Some(NS.into()),
        uid: Some("0000-1".into()),
        ..Default::default()
    };
    let event: EventsV1Event = serde_json::from_value(json!({
        "metadata": {"name": "alpha.1"},
        "eventTime": "2026-01-02T03:04:05.123456Z",
        "reportingController": "harness-test",
        "reportingInstance": "test-0",
        "action": "Test",
        "reason": "Tested",
        "type": "Normal",
        "regarding": regarding,
        "note": "hello",
    }))
    .unwrap();
    events.create(&PostParams::default(), &event).await.unwrap();

    // What kubectl describe asks for, through core v1.
    let selector = "involvedObject.name=alpha,involvedObject.namespace=default,involvedObject.kind=Widget,involvedObject.uid=0000-1";
    let listed = core
        .list(&ListParams::default().fields(selector))
        .await
        .unwrap()
        .items;
    let [seen] = &listed[..] else {
        panic!("one Event expected: {listed:?}")
    };
    assert_eq!(seen.message.as_deref(), Some("hello"));
    assert_eq!(seen.reporting_component.as_deref(), Some("harness-test"));
    assert_eq!(seen.involved_object.uid.as_deref(), Some("0000-1"));
    assert!(
        core.list(&ListParams::default().fields("involvedObject.name=beta"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The events.k8s.io names of the same fields select too; an unknown one is a 400.
    let by_regarding =
        ListParams::default().fields("regarding.name=alpha,reportingController=harness-test");
    assert_eq!(events.list(&by_regarding).await.unwrap().items.len(), 1);
    let path = "/apis/events.k8s.io/v1/namespaces/default/events?fieldSelector=regarding.bogus%3Dx";
    let (code, body) = raw(&server, reqwest::Method::GET, path, None).await;
    assert_eq!(
        (code, &body["message"]),
        (400, &json!("field label not supported: regarding.bogus"))
    );

    // A change through one version is seen through the other.
    core.patch(
        "alpha.1",
        &PatchParams::default(),
        &Patch::Merge(json!({"message": "changed"})),
    )
    .await
    .unwrap();
    assert_eq!(
        events.get("alpha.1").await.unwrap().note.as_deref(),
        Some("changed")
    );

    // kubectl get events: kube-apiserver's Event printer (wide columns at priority 1).
    let (_, _, table) = get_accepting(&server, "/api/v1/namespaces/default/events", TABLE).await;
    let cells = &table["rows"][0]["cells"];
    assert_eq!(
        cells.as_array().unwrap()[1..],
        [
            json!("Normal"),
            json!("Tested"),
            json!("widget/alpha"),
            json!(""),
            json!("harness-test, test-0"),
            json!("changed"),
            cells[7].clone(),
            json!(1),
            json!("alpha.1"),
        ]
    );
    assert_eq!(table["columnDefinitions"][4]["priority"], 1);

    // An eventTime is a MicroTime: exactly six fractional digits.
    let mut late = event.clone();
    late.metadata.name = Some("alpha.2".into());
    let mut body = serde_json::to_value(&late).unwrap();
    body["eventTime"] = json!("2026-01-02T03:04:05.123Z");
    let (code, status) = raw(
        &server,
        reqwest::Method::POST,
        "/apis/events.k8s.io/v1/namespaces/default/events",
        Some(("application/json", body.to_string())),
    )
    .await;
    assert_eq!(code, 400, "{status}");
}

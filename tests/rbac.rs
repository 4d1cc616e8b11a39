//! `extctl run` with exactly the permissions the Helm chart grants (`tests/support/chart_rbac.rs`:
//! the chart rendered by real Helm, its ServiceAccount, roles and bindings created on the genuine
//! kube-apiserver with RBAC authorisation on, a token of that ServiceAccount only, and the flags
//! of the chart's Deployment).
//!
//! Cluster-wide and with `watchNamespace`, everything extctl does works with them: the controls
//! load, a control becomes Ready, a signed call is stored with its Event, a ping reset happens
//! with its Event, its notification and the outcome's write, the Lease is taken, renewed and
//! released, a call whose status write conflicts is stored after the status is read again, and
//! no request is ever forbidden. And each essential rule has teeth: without it, the behaviour
//! it allows fails visibly (the server's "forbidden" in the log or the answer, and the call,
//! the Event, the status or the leadership missing).
//!
//! A cluster-wide operator sees every namespace of the server: that test holds
//! [`whole_server`], every other [`own_namespace`], and every control has a controlId of its
//! own.

mod support;

use std::time::Duration;

use axum::http::Method;
use extctl_core::crd::{ControlStatus, ExternalControl};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use support::apiserver::RequestRecord;
use support::chart_rbac::{Chart, Install, operator_with_chart_rbac, own_namespace, whole_server};
use support::{Cluster, Operator, PingReceiver, TOKEN, wait_for};

/// Control ids, one per test: a cluster-wide operator sees the controls of every test.
const CLUSTER_WIDE_ID: i64 = 901;
const ONE_NAMESPACE_ID: i64 = 902;
const NO_STATUS_PATCH_ID: i64 = 903;
const NO_SECRET_GET_ID: i64 = 904;
const NO_EVENT_CREATE_ID: i64 = 905;
const NO_LEASE_CREATE_ID: i64 = 906;
const NO_LEASE_UPDATE_ID: i64 = 907;
const CONFLICT_ID: i64 = 908;
const NO_STATUS_GET_ID: i64 = 909;
const NO_NAMESPACE_LIST_ID: i64 = 910;
const NO_WAIVER_LIST_ID: i64 = 911;

const PROJECT: i64 = 42;
const CONTROL: &str = "sast";
const REPORTED: &str = "Changed compliance control status from 'pending' to 'pass'";
const RESET: &str = "Changed compliance control status from 'pass' to 'pending'";

/// Control `sast` of `control_id` with its Secret; pings every 2 s when `ping_url` is given.
async fn create_control(cluster: &Cluster, control_id: i64, ping_url: Option<&str>) {
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    let mut spec = json!({
        "projectId": PROJECT,
        "controlId": control_id,
        "secretRef": {"name": "sast-token"},
    });
    if let Some(url) = ping_url {
        spec["pingInterval"] = json!("2s");
        spec["externalUrl"] = json!(url);
    }
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "metadata": {"name": CONTROL, "namespace": cluster.namespace},
            "spec": spec,
        }))
        .await;
}

/// A signed `status` call for `control_id` by the independent Python checker.
async fn call(cluster: &Cluster, operator: &Operator, control_id: i64) -> support::Answer {
    call_with(cluster, operator, control_id, "pass").await
}

async fn call_with(
    cluster: &Cluster,
    operator: &Operator,
    control_id: i64,
    status: &str,
) -> support::Answer {
    let token = cluster.token_file("checker.token", TOKEN);
    support::report_as_checker(&operator.url, &token, PROJECT, control_id, status).await
}

/// `(reason, note)` of every Event about the control, oldest first.
async fn events(cluster: &Cluster) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut events = api.list(&ListParams::default()).await.unwrap().items;
    events.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(CONTROL));
    events.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
    events
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

async fn wait_event(cluster: &Cluster, reason: &str, note: &str) {
    let found = wait_for(Duration::from_secs(20), || async {
        let events = events(cluster).await;
        events
            .iter()
            .any(|(r, n)| r == reason && n == note)
            .then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "no {reason} Event {note:?}: {:?}",
        events(cluster).await
    );
}

/// Waits until the operator's log has a line containing every one of `parts`
/// (case-insensitive); returns it.
async fn wait_log(operator: &Operator, parts: &[&str]) -> String {
    let parts: Vec<String> = parts.iter().map(|p| p.to_lowercase()).collect();
    let line = wait_for(Duration::from_secs(20), || async {
        operator
            .logs()
            .lines()
            .find(|line| {
                let line = line.to_lowercase();
                parts.iter().all(|p| line.contains(p))
            })
            .map(str::to_owned)
    })
    .await;
    line.unwrap_or_else(|| panic!("no log line with {parts:?}:\n{}", operator.logs()))
}

/// The requests extctl made that the server refused as forbidden (403), counted at the proxy
/// in front of it.
fn forbidden_requests(cluster: &Cluster) -> Vec<String> {
    cluster
        .proxy
        .requests()
        .iter()
        .filter(|r| r.code == 403)
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect()
}

fn arg_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

async fn lease(cluster: &Cluster, install: &Install) -> Option<Lease> {
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), &install.namespace);
    api.get_opt(&install.lease_name()).await.unwrap()
}

/// The value of an unlabelled gauge on `/metrics`.
async fn gauge(operator: &Operator, name: &str) -> f64 {
    let text = reqwest::get(&operator.metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name} ");
    let line = text.lines().find_map(|line| line.strip_prefix(&prefix));
    line.and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Everything extctl does, with the chart's RBAC and `values`, the release in a namespace of
/// its own (`<test namespace>-system`) and the control in the test's namespace.
async fn everything_works(cluster: &Cluster, values: Value, control_id: i64) {
    let receiver = PingReceiver::start(cluster.dir.path(), 200).await;
    create_control(cluster, control_id, Some(&receiver.url)).await;
    let system = format!("{}-system", cluster.namespace);
    let install = Chart::new(cluster)
        .release_namespace(&system)
        .values(values)
        .through_proxy()
        .install(cluster)
        .await;

    // The Deployment's flags: leader election on, the Lease in the release namespace, the
    // watched namespace only when one is set.
    let args = install.args(&install.instance_name(0));
    assert_eq!(
        arg_value(&args, "--leader-election"),
        Some("true"),
        "{args:?}"
    );
    assert_eq!(arg_value(&args, "--lease-namespace"), Some(system.as_str()));
    assert_eq!(
        arg_value(&args, "--lease-name"),
        Some(install.lease_name().as_str())
    );
    assert_eq!(arg_value(&args, "--namespace"), install.watched.as_deref());

    let operator = install.start(&[]).await;
    cluster.wait_ready_reason(CONTROL, "Ready").await;

    // A signed call is stored (a status patch) with its Event.
    let answer = call(cluster, &operator, control_id).await;
    assert_eq!(answer.code, 200, "{:?}\n{}", answer.body, operator.logs());
    wait_event(cluster, "StatusReported", REPORTED).await;
    let reported = cluster.control(CONTROL).await;
    let history = &reported.status.as_ref().unwrap().history;
    assert!(
        history
            .iter()
            .any(|h| h.to == ControlStatus::Pass && h.from == ControlStatus::Pending),
        "{history:?}"
    );

    // A ping reset (pingInterval 2s) with its Event, its notification, and the outcome's write.
    wait_event(cluster, "PingReset", RESET).await;
    let pinged = wait_for(Duration::from_secs(20), || async {
        let control: ExternalControl = cluster.control(CONTROL).await;
        let last = control.status?.last_ping?;
        (last.http_status == Some(200)).then_some(())
    })
    .await;
    assert!(
        pinged.is_some(),
        "no accepted ping recorded: {:?}\n{}",
        cluster.control(CONTROL).await.status,
        operator.logs()
    );
    assert!(!receiver.pings().is_empty());

    // The Lease: taken by this replica, then renewed (an update of the one named Lease).
    let first = lease(cluster, &install).await.expect("the Lease exists");
    let spec = first.spec.clone().unwrap();
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(install.instance_name(0).as_str())
    );
    let renewed = wait_for(Duration::from_secs(20), || async {
        let now = lease(cluster, &install).await?.spec?;
        (now.renew_time != spec.renew_time).then_some(())
    })
    .await;
    assert!(renewed.is_some(), "the Lease was never renewed");
    assert_eq!(gauge(&operator, "extctl_leader").await, 1.0);

    let forbidden = forbidden_requests(cluster);
    assert!(forbidden.is_empty(), "forbidden requests: {forbidden:#?}");
    assert!(
        cluster.proxy.requests().len() > 10,
        "extctl's requests went through the proxy"
    );
    let logs = operator.logs();
    assert!(operator.stop().await.success(), "{logs}");
    // Released on SIGTERM: emptied by an update.
    let released = lease(cluster, &install).await.unwrap().spec.unwrap();
    assert_eq!(released.holder_identity, None, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_the_charts_rbac_is_enough_for_everything() {
    let _alone = whole_server().await;
    let cluster = Cluster::start().await;
    everything_works(&cluster, json!({}), CLUSTER_WIDE_ID).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_namespace_the_charts_rbac_is_enough_for_everything() {
    let _shared = own_namespace().await;
    let cluster = Cluster::start().await;
    let values = json!({"watchNamespace": cluster.namespace});
    everything_works(&cluster, values, ONE_NAMESPACE_ID).await;
}

/// The chart serving the test's namespace (`watchNamespace`), released in it, without `verb`
/// on `resource`; `values` merged in.
async fn without(
    cluster: &Cluster,
    resource: &str,
    verb: &str,
    mut values: Value,
) -> (Install, Operator) {
    values["watchNamespace"] = json!(cluster.namespace);
    let install = Chart::new(cluster)
        .values(values)
        .without(resource, verb)
        .install(cluster)
        .await;
    let operator = install.start(&[]).await;
    (install, operator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_patch_on_the_status_no_call_is_stored() {
    let _shared = own_namespace().await;
    let cluster = Cluster::start().await;
    create_control(&cluster, NO_STATUS_PATCH_ID, None).await;
    let (_install, operator) =
        without(&cluster, "externalcontrols/status", "patch", json!({})).await;

    wait_log(&operator, &["reconcile failed", "forbidden", "status"]).await;
    let answer = call(&cluster, &operator, NO_STATUS_PATCH_ID).await;
    assert_eq!(answer.code, 503, "{:?}", answer.body);
    assert!(
        answer
            .error()
            .starts_with("Status store unavailable, nothing was stored:")
            && answer.error().contains("forbidden"),
        "{:?}",
        answer.body
    );
    assert!(cluster.control(CONTROL).await.status.is_none());
    assert!(events(&cluster).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_get_on_secrets_no_call_verifies() {
    let _shared = own_namespace().await;
    let cluster = Cluster::start().await;
    create_control(&cluster, NO_SECRET_GET_ID, None).await;
    let (_install, operator) = without(&cluster, "secrets", "get", json!({})).await;

    wait_log(&operator, &["reconcile failed", "forbidden", "secret"]).await;
    let answer = call(&cluster, &operator, NO_SECRET_GET_ID).await;
    assert_eq!(answer.code, 503, "{:?}", answer.body);
    assert_eq!(answer.error(), "Control signing token is not available");
    assert!(cluster.control(CONTROL).await.status.is_none());
}

/// Cluster-wide, which namespace may claim which project is read from the Namespaces: until
/// they are listed, nothing is served (rather than everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_list_on_namespaces_no_control_is_served() {
    let _alone = whole_server().await;
    let cluster = Cluster::start().await;
    create_control(&cluster, NO_NAMESPACE_LIST_ID, None).await;
    let install = Chart::new(&cluster)
        .release_namespace(&format!("{}-system", cluster.namespace))
        .without("namespaces", "list")
        .through_proxy()
        .install(&cluster)
        .await;
    let operator = install.spawn(&[]).await;

    let refused = wait_for(Duration::from_secs(20), || async {
        let requests = cluster.proxy.requests();
        let listed = |r: &RequestRecord| r.path == "/api/v1/namespaces" && r.code == 403;
        requests.iter().any(listed).then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "no forbidden list of Namespaces:\n{}",
        operator.logs()
    );
    let answer = call(&cluster, &operator, NO_NAMESPACE_LIST_ID).await;
    assert_eq!(answer.code, 503, "{:?}", answer.body);
    assert!(
        answer.error().contains("still loading"),
        "{:?}",
        answer.body
    );
    assert!(cluster.control(CONTROL).await.status.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_on_events_a_change_has_no_event() {
    let _shared = own_namespace().await;
    let cluster = Cluster::start().await;
    create_control(&cluster, NO_EVENT_CREATE_ID, None).await;
    // The simple form the other test binaries use.
    let values = json!({"watchNamespace": cluster.namespace});
    let (operator, _) =
        operator_with_chart_rbac(&cluster, values, Some(("events", "create"))).await;

    cluster.wait_ready_reason(CONTROL, "Ready").await;
    let answer = call(&cluster, &operator, NO_EVENT_CREATE_ID).await;
    assert_eq!(answer.code, 200, "{:?}", answer.body);
    let status = cluster.control(CONTROL).await.status.unwrap();
    assert_eq!(status.status, Some(ControlStatus::Pass));
    wait_log(&operator, &["could not publish an Event", "forbidden"]).await;
    assert!(events(&cluster).await.is_empty());
}

/// Waivers are read from a watch of their own: without it (an older chart's RBAC, or no Waiver
/// CRD) controls are served all the same, no waiver applies, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_list_on_waivers_controls_are_served_and_the_log_says_why() {
    let _shared = own_namespace().await;
    let cluster = Cluster::start().await;
    create_control(&cluster, NO_WAIVER_LIST_ID, None).await;
    let values = json!({"watchNamespace": cluster.namespace});
    let (operator, _) = operator_with_chart_rbac(&cluster, values, Some(("waivers", "list"))).await;

    cluster.wait_ready_reason(CONTROL, "Ready").await;
    let answer = call(&cluster, &operator, NO_WAIVER_LIST_ID).await;
    assert_eq!(answer.code, 200, "{:?}", answer.body);
    let status = cluster.control(CONTROL).await.status.unwrap();
    assert_eq!(status.status, Some(ControlStatus::Pass));
    wait_log(&operator, &["watch of waivers failed", "no waiver applies"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_on_leases_no_replica_leads() {
    let _shared = own_namespace().await;
    let cluster = Cluster::start().await;
    create_control(&cluster, NO_LEASE_CREATE_ID, None).await;
    let (install, operator) = without(&cluster, "leases", "create", json!({})).await;

    // Two election rounds failed, a retry period apart.
    let failed = wait_for(Duration::from_secs(20), || async {
        let failures = operator
            .logs()
            .lines()
            .filter(|l| {
                l.contains("reading or writing the Lease failed") && l.contains("forbidden")
            })
            .count();
        (failures >= 2).then_some(())
    })
    .await;
    assert!(failed.is_some(), "{}", operator.logs());
    assert!(lease(&cluster, &install).await.is_none());
    assert_eq!(gauge(&operator, "extctl_leader").await, 0.0);
    assert!(!operator.logs().contains("leading: this replica reconciles"));
    // Nothing reconciles (no Ready condition), yet every replica serves the endpoint.
    assert!(cluster.control(CONTROL).await.status.is_none());
    let answer = call(&cluster, &operator, NO_LEASE_CREATE_ID).await;
    assert_eq!(answer.code, 200, "{:?}", answer.body);
    let status = cluster.control(CONTROL).await.status.unwrap();
    assert_eq!(status.status, Some(ControlStatus::Pass));
    // No reconcile (no Ready); the call's own write decided the gate.
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Compliant"], "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_update_on_the_lease_leadership_is_lost() {
    let _shared = own_namespace().await;
    let cluster = Cluster::start().await;
    create_control(&cluster, NO_LEASE_UPDATE_ID, None).await;
    // The shortest lease: renewals every 0.4 s, stepping down 2 s after the last one.
    let values = json!({"leaderElection": {"leaseDuration": "3s"}});
    let (install, operator) = without(&cluster, "leases", "update", values).await;

    // The create works, so this replica leads; no renewal does, so it steps down.
    wait_log(&operator, &["leading: this replica reconciles"]).await;
    wait_log(
        &operator,
        &["reading or writing the Lease failed", "forbidden"],
    )
    .await;
    wait_log(&operator, &["not leading: reconciling stopped"]).await;
    let held = lease(&cluster, &install).await.unwrap().spec.unwrap();
    assert_eq!(held.holder_identity, Some(install.instance_name(0)));
    assert_eq!(held.renew_time, held.acquire_time, "renewed without update");
    assert_eq!(gauge(&operator, "extctl_leader").await, 0.0);
}

/// Two replicas (the chart's two, serving the test's namespace, through the proxy) each get a
/// call at the same moment; both status patches are held 3 s by the proxy, so both are
/// conditioned on the same resourceVersion and the second to arrive conflicts, which extctl
/// answers by reading the status again (`get` on `externalcontrols/status`) and patching once
/// more. Returns both answers and the status requests the replicas made.
async fn conflicting_calls(
    cluster: &Cluster,
    control_id: i64,
    drop_rule: Option<(&str, &str)>,
) -> (Vec<support::Answer>, Vec<RequestRecord>, Vec<String>) {
    create_control(cluster, control_id, None).await;
    let mut chart = Chart::new(cluster)
        .values(json!({"watchNamespace": cluster.namespace}))
        .through_proxy();
    if let Some((resource, verb)) = drop_rule {
        chart = chart.without(resource, verb);
    }
    let install = chart.install(cluster).await;
    let first = install.start(&[]).await;
    let second = install.start(&[]).await;
    cluster.wait_ready_reason(CONTROL, "Ready").await;

    let status_path = format!("/externalcontrols/{CONTROL}/status");
    let mut forbidden = forbidden_requests(cluster);
    cluster.proxy.reset_requests();
    cluster.proxy.faults().delay_next_request(
        2,
        Some(Method::PATCH),
        &status_path,
        Duration::from_secs(3),
    );
    let (a, b) = tokio::join!(
        call_with(cluster, &first, control_id, "pass"),
        call_with(cluster, &second, control_id, "fail"),
    );
    let requests = cluster
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&status_path))
        .collect();
    forbidden.extend(forbidden_requests(cluster));
    (vec![a, b], requests, forbidden)
}

fn codes(requests: &[RequestRecord], method: Method) -> Vec<u16> {
    requests
        .iter()
        .filter(|r| r.method == method)
        .map(|r| r.code)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_charts_rbac_a_conflicting_call_is_stored_after_reading_the_status_again() {
    let _shared = own_namespace().await;
    let cluster = Cluster::start().await;
    let (answers, requests, forbidden) = conflicting_calls(&cluster, CONFLICT_ID, None).await;
    let codes_answered: Vec<u16> = answers.iter().map(|a| a.code).collect();
    assert_eq!(codes_answered, [200, 200], "{answers:?}");
    let mut patches = codes(&requests, Method::PATCH);
    patches.sort();
    assert_eq!(patches, [200, 200, 409], "{requests:?}");
    assert_eq!(codes(&requests, Method::GET), [200], "{requests:?}");
    assert!(forbidden.is_empty(), "forbidden requests: {forbidden:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_get_on_the_status_a_conflicting_call_fails() {
    let _shared = own_namespace().await;
    let cluster = Cluster::start().await;
    let drop_rule = Some(("externalcontrols/status", "get"));
    let (answers, requests, _) = conflicting_calls(&cluster, NO_STATUS_GET_ID, drop_rule).await;
    let mut codes_answered: Vec<u16> = answers.iter().map(|a| a.code).collect();
    codes_answered.sort();
    assert_eq!(codes_answered, [200, 503], "{answers:?}");
    let refused = answers.iter().find(|a| a.code == 503).unwrap();
    assert!(
        refused
            .error()
            .starts_with("Status store unavailable, nothing was stored:")
            && refused
                .error()
                .contains(r#"cannot get resource "externalcontrols/status""#),
        "{:?}",
        refused.body
    );
    let mut patches = codes(&requests, Method::PATCH);
    patches.sort();
    assert_eq!(patches, [200, 409], "{requests:?}");
    assert_eq!(codes(&requests, Method::GET), [403], "{requests:?}");
}

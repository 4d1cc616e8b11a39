//! `extctl run --reports`: the real binary keeps one OpenReports `Report` (or wgpolicyk8s.io
//! `PolicyReport`) per namespace on the genuine kube-apiserver, with the upstream CRDs installed
//! as their projects publish them (`tests/support/upstream_crds.py`: from the Go module proxy,
//! SHA-256 pinned). Results are read back from the server and compared with what the controls,
//! as stored, say they must be; results are sent by the independent Python checker.
//!
//! The cluster-wide test (the chart's ClusterRole) holds [`whole_server`]; every other test
//! [`own_namespace`], and serves its own namespace only.

mod support;

use std::time::{Duration, Instant};

use axum::http::Method;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::apiserver::RequestRecord;
use support::chart_rbac::{Chart, own_namespace, whole_server};
use support::{Cluster, Operator, TOKEN, wait_for};

// ---------------------------------------------------------------------------------------------
// The upstream CRDs, and the reports on the server.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenReports,
    PolicyReport,
}

impl Kind {
    fn resource(self) -> ApiResource {
        let (group, version, kind, plural) = match self {
            Self::OpenReports => ("openreports.io", "v1alpha1", "Report", "reports"),
            Self::PolicyReport => (
                "wgpolicyk8s.io",
                "v1alpha2",
                "PolicyReport",
                "policyreports",
            ),
        };
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    /// The collection's path in a namespace, as the proxy logs it.
    fn path(self, namespace: &str) -> String {
        let resource = self.resource();
        format!(
            "/apis/{}/namespaces/{namespace}/{}",
            resource.api_version, resource.plural
        )
    }
}

fn reports(cluster: &Cluster, namespace: &str, kind: Kind) -> Api<DynamicObject> {
    Api::namespaced_with(cluster.client.clone(), namespace, &kind.resource())
}

/// The report `extctl` in `namespace`, as the server returns it.
async fn stored_report(cluster: &Cluster, namespace: &str, kind: Kind) -> Option<Value> {
    let report = reports(cluster, namespace, kind)
        .get_opt("extctl")
        .await
        .unwrap();
    report.map(|r| serde_json::to_value(r).unwrap())
}

/// A control as the server returns it.
async fn stored_control(cluster: &Cluster, namespace: &str, name: &str) -> Value {
    let resource = ApiResource::erase::<extctl_core::crd::ExternalControl>(&());
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &resource);
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// What the report must say, worked out here from the controls as stored.

/// `(result, scored, message)` each control must have.
type Expected = (&'static str, bool, &'static str);

const PASS: Expected = (
    "pass",
    true,
    "pass: the checker reported that the project meets the control",
);
const FAIL: Expected = (
    "fail",
    true,
    "fail: the checker reported that the project does not meet the control",
);
const SKIP: Expected = (
    "skip",
    true,
    "not_applicable: the checker reported that the control does not apply to the project",
);
const WARN: Expected = (
    "warn",
    false,
    "pending: awaiting the checker's result; not scored",
);
/// The message's start: the ping's error follows.
const ERROR: Expected = (
    "error",
    false,
    "pending, and the last ping of the checker failed (",
);

/// The result `control` (as stored) must have.
fn expected_result(control: &Value, (result, scored, message): Expected) -> Value {
    let metadata = &control["metadata"];
    let name = metadata["name"].as_str().unwrap();
    let uid = metadata["uid"].as_str().unwrap();
    let status = &control["status"];
    // When the status was last set; a control never reported to has only its creation.
    let updated = status["lastUpdateTime"]
        .as_str()
        .or(metadata["creationTimestamp"].as_str());
    let updated: jiff::Timestamp = updated.unwrap().parse().unwrap();
    let message = if result == "error" {
        // The ping's error as recorded, then the rest.
        let error = status["lastPing"]["error"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                status["lastPing"]["httpStatus"]
                    .as_u64()
                    .map(|c| format!("HTTP {c}"))
            })
            .unwrap_or_else(|| panic!("no failed ping in {status}"));
        format!("{message}{error}); not scored")
    } else {
        message.to_owned()
    };
    let policy = control["spec"]["displayName"].as_str().unwrap_or(name);
    json!({
        "policy": policy,
        "rule": name,
        "result": result,
        "scored": scored,
        "source": "extctl",
        "category": "compliance",
        "message": message,
        "properties": {
            "resultID": format!("{uid}-{result}"),
            "projectId": control["spec"]["projectId"].to_string(),
            "controlId": control["spec"]["controlId"].to_string(),
            "status": status["status"],
        },
        "resources": [{
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "name": name,
            "namespace": metadata["namespace"],
            "uid": uid,
        }],
        "timestamp": {
            "seconds": updated.as_second(),
            "nanos": updated.subsec_nanosecond(),
        },
    })
}

/// The results and summary `namespace`'s report must have, from its controls as stored now.
async fn expected(cluster: &Cluster, namespace: &str, controls: &[(&str, Expected)]) -> Value {
    let mut results = Vec::new();
    let mut summary = json!({"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0});
    let mut sorted = controls.to_vec();
    sorted.sort_by_key(|(name, _)| *name);
    for (name, expected) in sorted {
        let control = stored_control(cluster, namespace, name).await;
        results.push(expected_result(&control, expected));
        let count = &mut summary[expected.0];
        *count = json!(count.as_u64().unwrap() + 1);
    }
    json!({"results": results, "summary": summary})
}

/// Waits until `namespace`'s report has exactly the results and summary of `controls`; returns
/// the report. Panics with both when it does not come.
async fn wait_report(
    cluster: &Cluster,
    namespace: &str,
    kind: Kind,
    controls: &[(&str, Expected)],
) -> Value {
    let found = wait_for(Duration::from_secs(30), || async {
        let want = expected(cluster, namespace, controls).await;
        let report = stored_report(cluster, namespace, kind).await?;
        let have = json!({"results": report["results"], "summary": report["summary"]});
        (have == want).then_some(report)
    })
    .await;
    match found {
        Some(report) => report,
        None => panic!(
            "the {kind:?} in {namespace} never became\n{:#}\nit is\n{:#}",
            expected(cluster, namespace, controls).await,
            stored_report(cluster, namespace, kind)
                .await
                .unwrap_or_default()
        ),
    }
}

async fn wait_no_report(cluster: &Cluster, namespace: &str, kind: Kind, within: Duration) {
    let gone = wait_for(within, || async {
        stored_report(cluster, namespace, kind)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the {kind:?} in {namespace} is still there: {:#}",
        stored_report(cluster, namespace, kind).await.unwrap()
    );
}

fn keys(object: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = object
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// The requests extctl made on reports in `namespace`, as `(method, code)`.
/// The report requests the proxy has answered, once those it received are all answered (the
/// write behind a report the test has seen stored is then among them).
async fn report_requests(cluster: &Cluster, namespace: &str, kind: Kind) -> Vec<(Method, u16)> {
    let path = kind.path(namespace);
    cluster
        .proxy
        .answered_requests()
        .await
        .into_iter()
        .filter(|r: &RequestRecord| r.path.starts_with(&path))
        .map(|r| (r.method, r.code))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Controls and their checkers.

/// A test namespace on a server with the upstream report CRDs, and the Secret `token` there.
async fn namespace_with_report_crds() -> (Cluster, String) {
    let cluster = Cluster::start().await;
    support::upstream_crds::install(&cluster).await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    let namespace = cluster.namespace.clone();
    (cluster, namespace)
}

async fn create_control(cluster: &Cluster, namespace: &str, name: &str, id: i64, extra: Value) {
    let mut spec = json!({"projectId": 42, "controlId": id, "secretRef": {"name": "token"}});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let control = serde_json::from_value(json!({
        "apiVersion": "extctl.dev/v1alpha1",
        "kind": "ExternalControl",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap();
    let api: Api<extctl_core::crd::ExternalControl> =
        Api::namespaced(cluster.client.clone(), namespace);
    api.create(&PostParams::default(), &control).await.unwrap();
}

async fn delete_control(cluster: &Cluster, namespace: &str, name: &str) {
    let api: Api<extctl_core::crd::ExternalControl> =
        Api::namespaced(cluster.client.clone(), namespace);
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

/// Control `id`'s checker reports `status` (signed by the Python checker).
async fn report(cluster: &Cluster, operator: &Operator, id: i64, status: &str) {
    let token = cluster.token_file("checker-token", TOKEN);
    let answer = support::report_as_checker(&operator.url, &token, 42, id, status).await;
    assert_eq!(
        answer.code, 200,
        "reporting {status} for {id}: {:?}",
        answer.body
    );
}

/// Waits until every named control of `namespace` has been seen by extctl (Ready).
async fn wait_ready(cluster: &Cluster, namespace: &str, names: &[&str]) {
    for name in names {
        let ready = wait_for(Duration::from_secs(20), || async {
            let control = stored_control(cluster, namespace, name).await;
            let conditions = control["status"]["conditions"].as_array()?.clone();
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        })
        .await;
        assert!(ready.is_some(), "{namespace}/{name} never became Ready");
    }
}

/// A URL nothing listens on.
async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/hooks/extctl")
}

/// Asks for a re-check of `name` (a reset and a ping at once) and waits for the ping's outcome.
async fn ping_now(cluster: &Cluster, namespace: &str, name: &str) {
    let api: Api<extctl_core::crd::ExternalControl> =
        Api::namespaced(cluster.client.clone(), namespace);
    let now = jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {"extctl.dev/requestedAt": now}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let pinged = wait_for(Duration::from_secs(30), || async {
        let control = stored_control(cluster, namespace, name).await;
        control["status"]["lastPing"]["error"]
            .is_string()
            .then_some(())
    })
    .await;
    assert!(pinged.is_some(), "{name}'s ping never failed");
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_holds_every_control_with_its_result_and_follows_them() {
    let _scope = own_namespace().await;
    let (cluster, ns) = namespace_with_report_crds().await;
    create_control(
        &cluster,
        &ns,
        "passing",
        7,
        json!({"displayName": "Static analysis"}),
    )
    .await;
    create_control(&cluster, &ns, "failing", 8, json!({})).await;
    create_control(&cluster, &ns, "waiting", 9, json!({})).await;
    create_control(&cluster, &ns, "inapplicable", 10, json!({})).await;
    let unreachable = json!({"externalUrl": closed_url().await});
    create_control(&cluster, &ns, "unreachable", 11, unreachable).await;
    let operator = Operator::start(&cluster, &["--reports", "openreports"]).await;
    wait_ready(
        &cluster,
        &ns,
        &[
            "passing",
            "failing",
            "waiting",
            "inapplicable",
            "unreachable",
        ],
    )
    .await;
    report(&cluster, &operator, 7, "pass").await;
    report(&cluster, &operator, 8, "fail").await;
    report(&cluster, &operator, 10, "not_applicable").await;
    ping_now(&cluster, &ns, "unreachable").await;

    let mut controls = vec![
        ("passing", PASS),
        ("failing", FAIL),
        ("waiting", WARN),
        ("inapplicable", SKIP),
        ("unreachable", ERROR),
    ];
    let stored = wait_report(&cluster, &ns, Kind::OpenReports, &controls).await;
    assert_eq!(
        stored["summary"],
        json!({"pass": 1, "fail": 1, "warn": 1, "error": 1, "skip": 1})
    );
    assert_eq!(
        keys(&stored),
        [
            "apiVersion",
            "configuration",
            "kind",
            "metadata",
            "results",
            "source",
            "summary"
        ]
    );
    assert_eq!(stored["source"], "extctl");
    assert_eq!(
        stored["configuration"],
        json!({"limits": {"maxResults": 1000}})
    );
    assert_eq!(
        stored["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "extctl"})
    );
    assert_eq!(
        stored["metadata"]["annotations"],
        json!({"extctl.dev/controls": "5", "extctl.dev/resultsOmitted": "0"})
    );
    let rules: Vec<&str> = stored["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        [
            "failing",
            "inapplicable",
            "passing",
            "unreachable",
            "waiting"
        ]
    );
    assert_eq!(stored["results"][2]["policy"], "Static analysis");

    // Nothing changes: nothing is written (several sweeps).
    cluster.proxy.reset_requests();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let writes: Vec<_> = report_requests(&cluster, &ns, Kind::OpenReports)
        .await
        .into_iter()
        .filter(|(method, _)| *method != Method::GET)
        .collect();
    assert_eq!(writes, [], "writes while nothing changed");
    let again = stored_report(&cluster, &ns, Kind::OpenReports)
        .await
        .unwrap();
    assert_eq!(
        again["metadata"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );

    // A result changes: so does the report, and the result's id with it.
    report(&cluster, &operator, 7, "fail").await;
    controls[0] = ("passing", FAIL);
    let changed = wait_report(&cluster, &ns, Kind::OpenReports, &controls).await;
    assert_eq!(changed["summary"]["fail"], 2);
    let passing = &changed["results"][2];
    let uid = stored_control(&cluster, &ns, "passing").await["metadata"]["uid"].clone();
    assert_eq!(
        passing["properties"]["resultID"],
        format!("{}-fail", uid.as_str().unwrap())
    );

    // Someone else writes the report: extctl's next write conflicts (the resourceVersion it
    // holds is stale), reads the report again and writes once more, keeping the other's label.
    let api = reports(&cluster, &ns, Kind::OpenReports);
    let label = json!({"metadata": {"labels": {"team": "a"}}});
    api.patch("extctl", &PatchParams::default(), &Patch::Merge(label))
        .await
        .unwrap();
    cluster.proxy.reset_requests();
    report(&cluster, &operator, 7, "pass").await;
    controls[0] = ("passing", PASS);
    let rewritten = wait_report(&cluster, &ns, Kind::OpenReports, &controls).await;
    assert_eq!(rewritten["metadata"]["labels"]["team"], "a");
    let requests = report_requests(&cluster, &ns, Kind::OpenReports).await;
    assert!(requests.len() >= 3, "{requests:?}");
    assert_eq!(
        requests[..3],
        [
            (Method::PATCH, 409),
            (Method::GET, 200),
            (Method::PATCH, 200)
        ],
        "{requests:?}"
    );
    assert!(
        !requests[3..].contains(&(Method::PATCH, 409)),
        "{requests:?}"
    );

    // A control deleted (no reconcile for it): its result leaves the report within seconds.
    let deleted_at = Instant::now();
    delete_control(&cluster, &ns, "failing").await;
    controls.retain(|(name, _)| *name != "failing");
    let fewer = wait_report(&cluster, &ns, Kind::OpenReports, &controls).await;
    assert!(
        deleted_at.elapsed() < Duration::from_secs(10),
        "{:?}",
        deleted_at.elapsed()
    );
    assert_eq!(
        fewer["summary"],
        json!({"pass": 1, "fail": 0, "warn": 1, "error": 1, "skip": 1})
    );
    assert_eq!(fewer["metadata"]["annotations"]["extctl.dev/controls"], "4");

    // No control left: no report.
    for (name, _) in &controls {
        delete_control(&cluster, &ns, name).await;
    }
    wait_no_report(&cluster, &ns, Kind::OpenReports, Duration::from_secs(10)).await;
    let deletes: Vec<_> = report_requests(&cluster, &ns, Kind::OpenReports)
        .await
        .into_iter()
        .filter(|(method, _)| *method == Method::DELETE)
        .collect();
    assert_eq!(deletes, [(Method::DELETE, 200)]);
    // Nothing was written as a PolicyReport.
    assert_eq!(report_requests(&cluster, &ns, Kind::PolicyReport).await, []);
    assert!(
        !operator
            .logs()
            .to_lowercase()
            .contains("writing the compliance report failed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_a_policyreport_the_upstream_crd_takes_every_field() {
    let _scope = own_namespace().await;
    let (cluster, ns) = namespace_with_report_crds().await;
    create_control(&cluster, &ns, "sast", 7, json!({})).await;
    create_control(&cluster, &ns, "lint", 8, json!({"displayName": "Lint"})).await;
    let operator = Operator::start(&cluster, &["--reports", "policyreport"]).await;
    wait_ready(&cluster, &ns, &["sast", "lint"]).await;
    report(&cluster, &operator, 7, "pass").await;
    // Every field read back as written (the server prunes what its schema lacks).
    let stored = wait_report(
        &cluster,
        &ns,
        Kind::PolicyReport,
        &[("sast", PASS), ("lint", WARN)],
    )
    .await;
    assert_eq!(
        keys(&stored),
        ["apiVersion", "kind", "metadata", "results", "summary"]
    );
    assert_eq!(stored["apiVersion"], "wgpolicyk8s.io/v1alpha2");
    assert_eq!(stored["kind"], "PolicyReport");
    assert_eq!(
        stored["summary"],
        json!({"pass": 1, "fail": 0, "warn": 1, "error": 0, "skip": 0})
    );
    assert_eq!(stored_report(&cluster, &ns, Kind::OpenReports).await, None);
    let created: Vec<_> = report_requests(&cluster, &ns, Kind::PolicyReport)
        .await
        .into_iter()
        .filter(|(method, _)| *method == Method::POST)
        .collect();
    assert_eq!(created, [(Method::POST, 201)]);
    // Unchanged: not written again (what the server stored is what extctl would write: no
    // field was pruned, or every sweep would write it anew).
    cluster.proxy.reset_requests();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(report_requests(&cluster, &ns, Kind::PolicyReport).await, []);
    let again = stored_report(&cluster, &ns, Kind::PolicyReport)
        .await
        .unwrap();
    assert_eq!(
        again["metadata"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );
    assert_eq!(report_requests(&cluster, &ns, Kind::OpenReports).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_no_report_is_written_or_read() {
    let _scope = own_namespace().await;
    let (cluster, ns) = namespace_with_report_crds().await;
    create_control(&cluster, &ns, "sast", 7, json!({})).await;
    let operator = Operator::start(&cluster, &[]).await;
    wait_ready(&cluster, &ns, &["sast"]).await;
    report(&cluster, &operator, 7, "pass").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for kind in [Kind::OpenReports, Kind::PolicyReport] {
        assert_eq!(stored_report(&cluster, &ns, kind).await, None);
    }
    let touched: Vec<String> = cluster
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("openreports.io") || r.path.contains("wgpolicyk8s.io"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(touched, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_writes_the_reports() {
    let _scope = own_namespace().await;
    let (cluster, ns) = namespace_with_report_crds().await;
    create_control(&cluster, &ns, "sast", 7, json!({})).await;
    // The first replica talks to the server directly (not logged), the second through the
    // proxy: every report request the proxy sees is the second's.
    let server = Cluster::server().await;
    let direct = cluster.dir.path().join("direct.kubeconfig");
    std::fs::write(
        &direct,
        server.kubeconfig(&server.url, support::ADMIN_TOKEN, &ns),
    )
    .unwrap();
    let args = ["--namespace", ns.as_str(), "--reports", "openreports"];
    let mut first = Operator::start_with(&direct, &args).await;
    wait_ready(&cluster, &ns, &["sast"]).await;
    wait_report(&cluster, &ns, Kind::OpenReports, &[("sast", WARN)]).await;
    let second = Operator::start(&cluster, &["--reports", "openreports"]).await;

    // The first leads: the second neither lists nor writes reports.
    report(&cluster, &second, 7, "pass").await;
    wait_report(&cluster, &ns, Kind::OpenReports, &[("sast", PASS)]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(report_requests(&cluster, &ns, Kind::OpenReports).await, []);

    // The first stops (and gives up the Lease): the second takes over, lists and writes.
    assert!(first.sigterm().await.success());
    report(&cluster, &second, 7, "fail").await;
    wait_report(&cluster, &ns, Kind::OpenReports, &[("sast", FAIL)]).await;
    let requests = report_requests(&cluster, &ns, Kind::OpenReports).await;
    assert!(requests.contains(&(Method::GET, 200)), "{requests:?}");
    assert!(requests.contains(&(Method::PATCH, 200)), "{requests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_charts_rbac_cluster_wide_each_namespace_gets_its_own_report() {
    let _scope = whole_server().await;
    let cluster = Cluster::start().await;
    support::upstream_crds::install(&cluster).await;
    let (a, b) = (
        cluster.namespace.clone(),
        format!("{}-other", cluster.namespace),
    );
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    let object = serde_json::from_value(json!({"metadata": {"name": b}})).unwrap();
    namespaces
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    for namespace in [&a, &b] {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(cluster.client.clone(), namespace);
        let secret = serde_json::from_value(json!({
            "metadata": {"name": "token"}, "stringData": {"token": TOKEN}
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    // Control ids no other test of this binary uses (a cluster-wide operator sees them all).
    create_control(&cluster, &a, "sast", 901, json!({})).await;
    create_control(&cluster, &b, "lint", 902, json!({})).await;
    let install = Chart::new(&cluster)
        .values(json!({"reports": "openreports"}))
        .through_proxy()
        .install(&cluster)
        .await;
    // The Deployment's flags include --reports openreports.
    let args = install.args("probe");
    assert!(
        args.windows(2).any(|w| w == ["--reports", "openreports"]),
        "{args:?}"
    );
    let operator = install.start(&[]).await;
    wait_ready(&cluster, &a, &["sast"]).await;
    wait_ready(&cluster, &b, &["lint"]).await;
    report(&cluster, &operator, 901, "pass").await;
    report(&cluster, &operator, 902, "fail").await;
    // Each namespace's report holds its controls only.
    wait_report(&cluster, &a, Kind::OpenReports, &[("sast", PASS)]).await;
    wait_report(&cluster, &b, Kind::OpenReports, &[("lint", FAIL)]).await;

    // A conflict is resolved with a read (`get`) and a second patch.
    let label = json!({"metadata": {"labels": {"team": "a"}}});
    reports(&cluster, &a, Kind::OpenReports)
        .patch("extctl", &PatchParams::default(), &Patch::Merge(label))
        .await
        .unwrap();
    report(&cluster, &operator, 901, "fail").await;
    wait_report(&cluster, &a, Kind::OpenReports, &[("sast", FAIL)]).await;
    // The emptied namespace's report is deleted.
    delete_control(&cluster, &b, "lint").await;
    wait_no_report(&cluster, &b, Kind::OpenReports, Duration::from_secs(10)).await;

    // Every verb used was granted: list, create, patch, get and delete, none forbidden.
    let requests = cluster.proxy.requests();
    let on_reports: Vec<&RequestRecord> = requests
        .iter()
        .filter(|r| r.path.contains("/apis/openreports.io/"))
        .collect();
    let used = |method: Method, code: u16| {
        on_reports
            .iter()
            .any(|r| r.method == method && r.code == code)
    };
    assert!(used(Method::GET, 200), "{on_reports:?}"); // the list, and the read after the conflict
    assert!(used(Method::POST, 201), "{on_reports:?}");
    assert!(
        used(Method::PATCH, 409) && used(Method::PATCH, 200),
        "{on_reports:?}"
    );
    assert!(used(Method::DELETE, 200), "{on_reports:?}");
    let refused: Vec<_> = on_reports.iter().filter(|r| r.code == 403).collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert!(
        !operator.logs().to_lowercase().contains("forbidden"),
        "{}",
        operator.logs()
    );

    // Leave nothing for a cluster-wide operator of a later test to serve.
    delete_control(&cluster, &a, "sast").await;
    wait_no_report(&cluster, &a, Kind::OpenReports, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_reports_value_the_chart_grants_nothing_for_reports() {
    let _scope = own_namespace().await;
    let (cluster, ns) = namespace_with_report_crds().await;
    create_control(&cluster, &ns, "sast", 7, json!({})).await;
    let install = Chart::new(&cluster)
        .values(json!({"watchNamespace": ns}))
        .through_proxy()
        .install(&cluster)
        .await;
    for object in &install.rbac {
        for rule in object["rules"].as_array().into_iter().flatten() {
            assert!(!rule["resources"].to_string().contains("reports"), "{rule}");
        }
    }
    // Asked for reports anyway: refused by the server, said in the log, nothing written.
    let operator = install.start(&["--reports", "openreports"]).await;
    wait_ready(&cluster, &ns, &["sast"]).await;
    let said = wait_for(Duration::from_secs(20), || async {
        operator
            .logs()
            .lines()
            .find(|l| l.contains("cannot list the compliance reports") && l.contains("forbidden"))
            .map(str::to_owned)
    })
    .await;
    assert!(said.is_some(), "{}", operator.logs());
    let requests = report_requests(&cluster, &ns, Kind::OpenReports).await;
    assert!(
        !requests.is_empty() && requests.iter().all(|(m, c)| *m == Method::GET && *c == 403),
        "{requests:?}"
    );
    assert_eq!(stored_report(&cluster, &ns, Kind::OpenReports).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waived_failure_is_a_skip_naming_the_waiver_and_keeping_the_status() {
    let _scope = own_namespace().await;
    let (cluster, ns) = namespace_with_report_crds().await;
    create_control(&cluster, &ns, "sast", 7, json!({})).await;
    let operator = Operator::start(&cluster, &["--reports", "openreports"]).await;
    wait_ready(&cluster, &ns, &["sast"]).await;
    report(&cluster, &operator, 7, "fail").await;
    wait_report(&cluster, &ns, Kind::OpenReports, &[("sast", FAIL)]).await;

    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let expires = jiff::Timestamp::from_second(later.as_second()).unwrap();
    cluster
        .create_waiver_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "Waiver",
            "metadata": {"name": "accepted", "namespace": ns},
            "spec": {"controls": ["sast"], "reason": "no fix upstream",
                     "expires": expires.to_string(), "grantedBy": "admin",
                     "ticket": "https://jira.example/SEC-1"}
        }))
        .await;
    let waived = wait_for(Duration::from_secs(30), || async {
        let report = stored_report(&cluster, &ns, Kind::OpenReports).await?;
        (report["results"][0]["result"] == "skip").then_some(report)
    })
    .await
    .expect("the waived failure never became a skip");
    let uid = stored_control(&cluster, &ns, "sast").await["metadata"]["uid"].clone();
    let result = &waived["results"][0];
    // As the upstream CRD stored it: every property kept.
    assert_eq!(
        result["properties"],
        json!({
            "resultID": format!("{}-waived", uid.as_str().unwrap()),
            "projectId": "42", "controlId": "7", "status": "fail",
            "waiver": "accepted", "waiverReason": "no fix upstream",
            "waiverExpires": expires.to_string(), "waiverGrantedBy": "admin",
            "waiverTicket": "https://jira.example/SEC-1",
        })
    );
    assert_eq!(result["scored"], true);
    assert_eq!(
        result["message"],
        format!(
            "waived: the checker reported fail; waiver accepted accepts it until {expires} (no \
             fix upstream); not scored as a failure"
        )
    );
    assert_eq!(
        waived["summary"],
        json!({"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 1})
    );
}

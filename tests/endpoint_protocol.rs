//! Every row of the protocol document, with calls signed and sent by an independent Python
//! checker, through the real binary four times: `extctl run` against a genuine kube-apiserver
//! (as its administrator, and as the Helm chart's ServiceAccount with only the chart's RBAC,
//! cluster-wide and with `watchNamespace`: nothing it does may be forbidden), and `extctl dev`
//! with the same control and Secret as manifests (same endpoint, other store).
//!
//! The table runs again with the project named by its full path (`spec.projectPath`), in the
//! encodings of GitLab's client libraries, on `extctl run` and `extctl dev`.
//!
//! A cluster-wide operator sees every namespace of the server: its tests hold
//! [`whole_server`], every other cluster test [`own_namespace`], and each cluster test's control
//! has a controlId of its own.

mod support;

use std::time::Duration;

use extctl_core::crd::ControlStatus;
use serde_json::json;
use support::chart_rbac::{Chart, own_namespace, whole_server};
use support::{Cluster, Dev, Operator, TOKEN, checker, wait_for};

const PROJECT: &str = "42";
/// The control's `spec.projectPath`.
const PROJECT_PATH: &str = "group/sub/my.project";
/// The control id of `extctl dev`'s manifest; a cluster test's control takes [`fresh_id`].
const DEV_CONTROL: &str = "7";

/// Which command serves the endpoint, with which permissions.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `extctl run --namespace NS` as the server's administrator.
    Run,
    /// `extctl run` as the chart's ServiceAccount, with the chart's RBAC only.
    Chart {
        cluster_wide: bool,
    },
    Dev,
}

/// How the checker names the project in the call.
#[derive(Debug, Clone, Copy)]
enum Address {
    /// By id, `42`.
    Id,
    /// By [`PROJECT_PATH`], URL-encoded by the checker as the client named does it
    /// (`python-gitlab`: `/` as `%2F`; `client-go`: `.` as `%2E` too).
    Path(&'static str),
}

enum Backend {
    Run {
        cluster: Box<Cluster>,
        operator: Operator,
    },
    Dev(Dev),
}

/// Held while a cluster test runs: alone on the server (a cluster-wide operator) or beside
/// the others (one namespace each).
#[allow(dead_code)] // held for its Drop only
enum ServerShare {
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
}

struct Env {
    backend: Backend,
    dir: tempfile::TempDir,
    token: String,
    /// The control's id, as the checker sends it.
    control: String,
    /// The project as the checker names it (decoded), and how it encodes it.
    project: &'static str,
    encoding: &'static str,
    /// A project of the same form that no control names.
    other_project: &'static str,
    /// Whether the operator runs with the chart's RBAC (then it must never be forbidden).
    as_chart: bool,
    _share: Option<ServerShare>,
}

/// A controlId no other test of this binary uses (a cluster-wide operator sees them all).
fn fresh_id() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static NEXT: AtomicI64 = AtomicI64::new(100);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Control `sast` (project 42, `group/sub/my.project`, control 7) and its Secret, as
/// `kubectl apply` would get them.
const MANIFESTS: &str = "\
apiVersion: v1
kind: Secret
metadata:
  name: sast-token
stringData:
  token: s3cr3t-t0ken
---
apiVersion: extctl.dev/v1alpha1
kind: ExternalControl
metadata:
  name: sast
spec:
  projectId: 42
  projectPath: group/sub/my.project
  controlId: 7
  secretRef:
    name: sast-token
";

async fn env(kind: Kind, address: Address) -> Env {
    env_with(kind, address, &[]).await
}

async fn env_with(kind: Kind, address: Address, args: &[&str]) -> Env {
    let (project, encoding, other_project) = match address {
        Address::Id => (PROJECT, "none", "43"),
        Address::Path(encoding) => (PROJECT_PATH, encoding, "group/sub/other.project"),
    };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let token = token.display().to_string();
    if let Kind::Dev = kind {
        let manifests = dir.path().join("sast.yaml");
        std::fs::write(&manifests, MANIFESTS).unwrap();
        let mut dev_args = vec!["--manifests", manifests.to_str().unwrap()];
        dev_args.extend_from_slice(args);
        let dev = Dev::start(&dev_args).await;
        assert_eq!(dev.control("default/sast")["ready"], true);
        return Env {
            backend: Backend::Dev(dev),
            dir,
            token,
            control: DEV_CONTROL.to_owned(),
            project,
            encoding,
            other_project,
            as_chart: false,
            _share: None,
        };
    }
    let share = match kind {
        Kind::Chart { cluster_wide: true } => ServerShare::Alone(whole_server().await),
        _ => ServerShare::Shared(own_namespace().await),
    };
    let cluster = Cluster::start().await;
    let control = fresh_id();
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "metadata": {"name": "sast", "namespace": cluster.namespace},
            "spec": {"projectId": 42, "projectPath": PROJECT_PATH, "controlId": control,
                     "secretRef": {"name": "sast-token"}}
        }))
        .await;
    let operator = match kind {
        Kind::Chart { cluster_wide } => {
            let values = if cluster_wide {
                json!({})
            } else {
                json!({"watchNamespace": cluster.namespace})
            };
            let install = Chart::new(&cluster)
                .release_namespace(&format!("{}-system", cluster.namespace))
                .values(values)
                .through_proxy()
                .install(&cluster)
                .await;
            install.start(args).await
        }
        _ => Operator::start(&cluster, args).await,
    };
    cluster.wait_ready_reason("sast", "Ready").await;
    Env {
        backend: Backend::Run {
            cluster: Box::new(cluster),
            operator,
        },
        dir,
        token,
        control: control.to_string(),
        project,
        encoding,
        other_project,
        as_chart: matches!(kind, Kind::Chart { .. }),
        _share: Some(share),
    }
}

impl Drop for Env {
    /// With the chart's RBAC, a test that passed must also have had nothing forbidden: no
    /// request extctl made was refused with 403 (counted at the proxy it talks through).
    fn drop(&mut self) {
        if !self.as_chart || std::thread::panicking() {
            return;
        }
        if let Backend::Run { cluster, .. } = &self.backend {
            let requests = cluster.proxy.requests();
            assert!(
                !requests.is_empty(),
                "extctl's requests went through the proxy"
            );
            let forbidden: Vec<String> = requests
                .iter()
                .filter(|r| r.code == 403)
                .map(|r| format!("{} {}", r.method, r.path))
                .collect();
            assert!(
                forbidden.is_empty(),
                "forbidden with the chart's RBAC: {forbidden:#?}"
            );
        }
    }
}

impl Env {
    fn url(&self) -> &str {
        match &self.backend {
            Backend::Run { operator, .. } => &operator.url,
            Backend::Dev(dev) => &dev.url,
        }
    }

    /// A call for the control's project (as [`Address`] names it) with the right token, plus
    /// `knobs`.
    async fn call(&self, knobs: &[&str]) -> support::Answer {
        let mut args = vec![
            "--project",
            self.project,
            "--encoding",
            self.encoding,
            "--control",
            &self.control,
            "--token-file",
            &self.token,
        ];
        args.extend_from_slice(knobs);
        checker(self.url(), &args).await
    }

    /// A token file with a token that is not the control's.
    fn wrong_token(&self) -> String {
        let path = self.dir.path().join("wrong");
        std::fs::write(&path, "not-the-token").unwrap();
        path.display().to_string()
    }

    /// Sends each row's call and checks GitLab's answer: `(case, knobs, code, error)`.
    async fn assert_rows(&self, rows: Vec<(&str, Vec<&str>, u16, &str)>) {
        for (case, knobs, code, error) in rows {
            assert_answer(&self.call(&knobs).await, code, error, case);
        }
    }

    /// The status in the store: the API server's copy, or what `extctl dev` printed.
    async fn stored_status(&self) -> ControlStatus {
        match &self.backend {
            Backend::Run { cluster, .. } => {
                let status = cluster.control("sast").await.status;
                status.and_then(|s| s.status).expect("a status is set")
            }
            Backend::Dev(dev) => {
                let status = dev.status("default/sast");
                serde_json::from_value(serde_json::json!(status)).unwrap()
            }
        }
    }

    /// Waits briefly for `expected` to be stored (dev prints asynchronously), then asserts it.
    async fn assert_stored(&self, expected: ControlStatus, case: &str) {
        let matched = wait_for(Duration::from_secs(5), || async {
            (self.stored_status().await == expected).then_some(())
        })
        .await;
        let stored = self.stored_status().await;
        assert!(
            matched.is_some(),
            "{case}: stored {stored:?}, expected {expected:?}"
        );
    }

    /// What the store holds of the calls accepted so far: in a cluster, the nonces recorded
    /// and the last update time (every stored call, whatever its status, changes both); in
    /// dev, the status changes printed.
    async fn mark(&self) -> String {
        match &self.backend {
            Backend::Run { cluster, .. } => {
                let status = cluster.control("sast").await.status.unwrap_or_default();
                let nonces: Vec<&str> = status
                    .recent_nonces
                    .iter()
                    .map(|n| n.nonce.as_str())
                    .collect();
                format!(
                    "nonces {nonces:?}, lastUpdateTime {:?}",
                    status.last_update_time
                )
            }
            Backend::Dev(dev) => format!("changes {:?}", dev.changes("default/sast")),
        }
    }

    /// Asserts that nothing was stored since `before` (a [`Self::mark`]), then that the store
    /// still takes a call: a sentinel `sentinel` call (a status other than the current one) is
    /// stored and is then the only change. In dev, where changes print asynchronously, a
    /// refused call stored late would print before the sentinel's line.
    async fn assert_nothing_stored_since(&self, before: &str, sentinel: &str, case: &str) {
        if let Backend::Run { .. } = self.backend {
            assert_eq!(self.mark().await, before, "{case}: something was stored");
        }
        let answer = self.call(&["--status", sentinel]).await;
        assert_eq!(
            answer.code, 200,
            "{case}: the sentinel call: {:?}",
            answer.body
        );
        let expected: ControlStatus = serde_json::from_value(serde_json::json!(sentinel)).unwrap();
        self.assert_stored(expected, case).await;
        if let Backend::Dev(dev) = &self.backend {
            let mut changes = dev.changes("default/sast");
            let sentinel_change = changes.pop().expect("the sentinel's change");
            assert_eq!(sentinel_change.2, sentinel, "{case}");
            assert_eq!(
                format!("changes {changes:?}"),
                before,
                "{case}: something was stored"
            );
        }
    }

    /// The audit messages of status changes: Events in a cluster, printed lines in dev.
    async fn change_messages(&self) -> Vec<String> {
        match &self.backend {
            Backend::Run { cluster, .. } => cluster.event_notes("sast").await,
            Backend::Dev(dev) => dev
                .events("statusChanged")
                .iter()
                .map(|line| line["message"].as_str().unwrap().to_owned())
                .collect(),
        }
    }
}

#[track_caller]
fn assert_answer(answer: &support::Answer, code: u16, error: &str, case: &str) {
    assert_eq!(
        (answer.code, answer.error()),
        (code, error),
        "{case}: got {:?}",
        answer.body
    );
}

async fn accepted_calls_store_the_status_and_answer_like_gitlab(kind: Kind, address: Address) {
    let env = env(kind, address).await;
    env.assert_stored(ControlStatus::Pending, "a new control is pending")
        .await;

    // Each case stores another status than the one before it: what it stores is its own doing.
    let cases: [(&str, &[&str], ControlStatus); 7] = [
        (
            "PATCH with JSON body",
            &["--status", "pass"],
            ControlStatus::Pass,
        ),
        (
            "POST with form body (curl --data)",
            &["--status", "fail", "--method", "POST", "--body", "form"],
            ControlStatus::Fail,
        ),
        (
            "status as query parameter",
            &["--status", "pass", "--body", "query"],
            ControlStatus::Pass,
        ),
        (
            "PRIVATE-TOKEN is accepted and ignored",
            &["--status", "fail", "--private-token", "glpat-whatever"],
            ControlStatus::Fail,
        ),
        (
            "not_applicable (newer GitLab), JSON body",
            &["--status", "not_applicable"],
            ControlStatus::NotApplicable,
        ),
        (
            "extra query string is not signed",
            &["--status", "pass", "--query", "ref=main"],
            ControlStatus::Pass,
        ),
        (
            "not_applicable as a form body",
            &[
                "--status",
                "not_applicable",
                "--method",
                "POST",
                "--body",
                "form",
            ],
            ControlStatus::NotApplicable,
        ),
    ];
    // GitLab finds a project's path ignoring case; the signature covers the path as sent.
    let other_case = ["--status", "fail", "--project", "GROUP/Sub/My.Project"];
    let path_cases: &[(&str, &[&str], ControlStatus)] = match address {
        Address::Path(_) => &[("the path in another case", &other_case, ControlStatus::Fail)],
        Address::Id => &[],
    };
    for (case, knobs, expected) in cases.iter().chain(path_cases).copied() {
        assert_ne!(
            env.stored_status().await,
            expected,
            "{case}: already stored before the call, which would prove nothing"
        );
        let answer = env.call(knobs).await;
        assert_eq!(answer.code, 200, "{case}: {:?}", answer.body);
        assert_eq!(
            answer.body,
            serde_json::json!({"status": expected.as_str()}),
            "{case}"
        );
        env.assert_stored(expected, case).await;
    }
}

async fn every_error_row_of_the_protocol_table(kind: Kind, address: Address) {
    let env = env(kind, address).await;
    let wrong_token = env.wrong_token();
    let now = jiff::Timestamp::now().as_second();
    let expired = (now - 15).to_string();
    let future = (now + 60).to_string();

    let rows: Vec<(&str, Vec<&str>, u16, &str)> = vec![
        (
            "status missing",
            vec!["--body", "none"],
            400,
            "status does not have a valid value",
        ),
        (
            "status pending",
            vec!["--status", "pending"],
            400,
            "status does not have a valid value",
        ),
        (
            "status PASS",
            vec!["--status", "PASS"],
            400,
            "status does not have a valid value",
        ),
        (
            "status NOT_APPLICABLE (GraphQL's name, not the API's)",
            vec!["--status", "NOT_APPLICABLE"],
            400,
            "status does not have a valid value",
        ),
        (
            "status not-applicable",
            vec!["--status", "not-applicable"],
            400,
            "status does not have a valid value",
        ),
        (
            "timestamp header missing",
            vec!["--omit-header", "timestamp"],
            401,
            "Missing required headers",
        ),
        (
            "nonce header missing",
            vec!["--omit-header", "nonce"],
            401,
            "Missing required headers",
        ),
        (
            "signature header missing",
            vec!["--omit-header", "signature"],
            401,
            "Missing required headers",
        ),
        (
            "nonce header blank",
            vec!["--blank-header", "nonce"],
            401,
            "Missing required headers",
        ),
        (
            "nonce of 31 characters",
            vec!["--nonce", "0123456789abcdef0123456789abcde"],
            401,
            "Invalid nonce",
        ),
        (
            "nonce of 33 characters",
            vec!["--nonce", "0123456789abcdef0123456789abcdef0"],
            401,
            "Invalid nonce",
        ),
        (
            "wrong token",
            vec!["--token-file", &wrong_token],
            401,
            "Invalid signature",
        ),
        (
            "signed another status",
            vec!["--status", "pass", "--sign-status", "fail"],
            401,
            "Invalid signature",
        ),
        (
            "signed another project",
            vec!["--sign-project", env.other_project],
            401,
            "Invalid signature",
        ),
        (
            "timestamp 0",
            vec!["--timestamp", "0"],
            401,
            "Invalid timestamp",
        ),
        (
            "timestamp in the future",
            vec!["--timestamp", &future],
            401,
            "Invalid timestamp",
        ),
        (
            "timestamp not a number",
            vec!["--timestamp", "yesterday"],
            401,
            "Invalid timestamp",
        ),
        (
            "timestamp 15 s old",
            vec!["--timestamp", &expired],
            401,
            "Request has expired",
        ),
    ];
    let before = env.mark().await;
    env.assert_rows(rows).await;
    env.assert_nothing_stored_since(&before, "fail", "the refused rows")
        .await;

    // The checker takes the last of a repeated flag, so these override project 42 / control 7.
    let lookups: Vec<(&str, Vec<&str>, u16, &str)> = vec![
        (
            "unknown control id",
            vec!["--control", "999"],
            404,
            "Control not found",
        ),
        (
            "control id not a number",
            vec!["--control", "seven"],
            404,
            "Control not found",
        ),
        (
            "project does not match the control",
            vec!["--project", env.other_project],
            404,
            "Project not found",
        ),
    ];
    env.assert_rows(lookups).await;
    if let Address::Path(_) = address {
        env.assert_rows(path_rows()).await;
    }
}

/// The rows only a call by path has: what is signed is the decoded path, as sent.
fn path_rows() -> Vec<(&'static str, Vec<&'static str>, u16, &'static str)> {
    vec![
        (
            "signed with the id, sent as the path",
            vec!["--sign-project", PROJECT],
            401,
            "Invalid signature",
        ),
        (
            "signed as encoded on the wire",
            vec!["--sign-project", "group%2Fsub%2Fmy.project"],
            401,
            "Invalid signature",
        ),
        (
            "the path without its namespace",
            vec!["--project", "my.project"],
            404,
            "Project not found",
        ),
        (
            "the path encoded twice (decoded once, as GitLab does)",
            vec!["--project", "group%2Fsub%2Fmy.project"],
            404,
            "Project not found",
        ),
        (
            "the path not encoded: no such route",
            vec!["--encoding", "none"],
            404,
            "404 Not Found",
        ),
    ]
}

async fn checks_run_in_the_documented_order(kind: Kind, address: Address) {
    let env = env(kind, address).await;
    let wrong = env.wrong_token();
    let expired = (jiff::Timestamp::now().as_second() - 60).to_string();
    let rows: Vec<(&str, Vec<&str>, u16, &str)> = vec![
        (
            "bad status before headers",
            vec!["--status", "x", "--omit-header", "nonce"],
            400,
            "status does not have a valid value",
        ),
        (
            "headers before timestamp",
            vec!["--omit-header", "nonce", "--timestamp", "0"],
            401,
            "Missing required headers",
        ),
        (
            "timestamp before signature",
            vec!["--timestamp", &expired, "--token-file", &wrong],
            401,
            "Request has expired",
        ),
        (
            "signature before nonce",
            vec!["--token-file", &wrong, "--nonce", "short"],
            401,
            "Invalid signature",
        ),
        (
            "control lookup before headers",
            vec!["--control", "999", "--omit-header", "nonce"],
            404,
            "Control not found",
        ),
        (
            "nonce before project",
            vec!["--project", env.other_project, "--nonce", "short"],
            401,
            "Invalid nonce",
        ),
    ];
    env.assert_rows(rows).await;
}

async fn a_nonce_is_used_once_and_only_a_verified_call_can_use_it(kind: Kind, address: Address) {
    let env = env(kind, address).await;
    let nonce = "00000000000000000000000000000001";
    let wrong = env.wrong_token();

    // Unlike GitLab, an unverified call does not burn the nonce.
    let forged = env.call(&["--nonce", nonce, "--token-file", &wrong]).await;
    assert_answer(&forged, 401, "Invalid signature", "forged call");
    let genuine = env.call(&["--nonce", nonce, "--status", "pass"]).await;
    assert_eq!(genuine.code, 200, "{:?}", genuine.body);

    env.assert_stored(ControlStatus::Pass, "the genuine call")
        .await;
    let before = env.mark().await;
    let replay = env.call(&["--nonce", nonce, "--status", "fail"]).await;
    assert_answer(&replay, 401, "Invalid nonce", "replayed nonce");
    env.assert_nothing_stored_since(&before, "fail", "the replay")
        .await;
}

async fn changes_emit_gitlabs_audit_event_and_repeats_emit_none(kind: Kind, address: Address) {
    let env = env(kind, address).await;
    let statuses = [
        "pass",
        "pass",
        "fail",
        "fail",
        "not_applicable",
        "not_applicable",
        "pass",
    ];
    for status in statuses {
        assert_eq!(env.call(&["--status", status]).await.code, 200);
    }
    let expected = [
        "Changed compliance control status from 'pending' to 'pass'",
        "Changed compliance control status from 'pass' to 'fail'",
        "Changed compliance control status from 'fail' to 'not_applicable'",
        "Changed compliance control status from 'not_applicable' to 'pass'",
    ];
    let notes = wait_for(Duration::from_secs(10), || async {
        let notes = env.change_messages().await;
        (notes.len() >= expected.len()).then_some(notes)
    })
    .await
    .expect("Events are published");
    assert_eq!(notes, expected);
    // One change more, as a witness: once its Event is there, an extra Event for the calls
    // before it (a repeat told as a change) would have been too.
    assert_eq!(env.call(&["--status", "fail"]).await.code, 200);
    let witness = "Changed compliance control status from 'pass' to 'fail'";
    let all = wait_for(Duration::from_secs(10), || async {
        let notes = env.change_messages().await;
        notes.contains(&witness.to_owned()).then_some(notes)
    })
    .await
    .expect("the witness's Event");
    let mut want = expected.to_vec();
    want.push(witness);
    assert_eq!(all, want);
}

async fn bodies_are_bounded_and_unknown_routes_answer_in_json(kind: Kind, address: Address) {
    let env = env(kind, address).await;
    let big = format!("{{\"status\":\"pass\",\"pad\":\"{}\"}}", "x".repeat(5000));
    let answer = env
        .call(&["--raw-body", &big, "--content-type", "application/json"])
        .await;
    assert_eq!(answer.code, 413, "{:?}", answer.body);
    assert!(
        answer.error().starts_with("Request body too large"),
        "{:?}",
        answer.body
    );

    let client = support::http_client();
    let get = client
        .get(format!(
            "{}/api/v4/projects/42/compliance_external_controls/{}/status",
            env.url(),
            env.control
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(
        get.json::<serde_json::Value>().await.unwrap()["error"],
        "405 Method Not Allowed"
    );
    let missing = client
        .get(format!("{}/api/v4/nothing", env.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap()["error"],
        "404 Not Found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_api_server_refuses_is_reported_not_stored() {
    let env = env(Kind::Run, Address::Id).await;
    let Backend::Run { cluster, .. } = &env.backend else {
        unreachable!()
    };
    cluster
        .proxy
        .faults()
        .fail_next(1, Some(axum::http::Method::PATCH), "/status", 422);
    let before = env.mark().await;
    let answer = env.call(&["--status", "pass"]).await;
    assert_eq!(answer.code, 400, "{:?}", answer.body);
    assert!(
        answer
            .error()
            .starts_with("Failed to update compliance control status. Error: "),
        "{:?}",
        answer.body
    );
    env.assert_nothing_stored_since(&before, "pass", "the refused write")
        .await;
}

/// On SIGTERM the endpoint stops accepting connections, answers the request in flight, and
/// exits 0; `extctl run` gives its Lease up.
async fn stops_cleanly_on_sigterm(kind: Kind, address: Address) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut env = env(kind, address).await;
    let address = env.url().trim_start_matches("http://").to_owned();
    // In flight: its head sent with `Expect: 100-continue`, and the server's `100 Continue`
    // received, which hyper sends once the handler reads the body: the request is being
    // served when the signal comes.
    let body = r#"{"status":"pass"}"#;
    let head = format!(
        "PATCH /api/v4/projects/42/compliance_external_controls/{}/status HTTP/1.1\r\n\
         Host: extctl\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        env.control,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    let continued = tokio::time::timeout(Duration::from_secs(10), async {
        let mut byte = [0_u8; 1];
        while !interim.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            interim.push(byte[0]);
        }
    })
    .await;
    assert!(
        continued.is_ok(),
        "no 100 Continue: {:?}",
        String::from_utf8_lossy(&interim)
    );
    assert!(interim.starts_with(b"HTTP/1.1 100 Continue"), "{interim:?}");
    match &env.backend {
        Backend::Run { operator, .. } => operator.send_sigterm(),
        Backend::Dev(dev) => dev.send_sigterm(),
    }
    // The listener is closed: the shutdown has begun, with the request still in flight.
    let closed = wait_for(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&address)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "still accepting connections after SIGTERM"
    );
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    read.await.expect("answered within 10 s").unwrap();
    let answer = support::parse_raw_answer(&answer).expect("a whole HTTP answer");
    // No signature headers: refused, but answered in full.
    assert_eq!(
        answer.error(),
        (401, "Missing required headers".to_owned()),
        "the request in flight"
    );
    let status = match &mut env.backend {
        Backend::Run { operator, .. } => operator.wait_exit().await,
        Backend::Dev(dev) => dev.wait_exit().await,
    };
    assert!(status.success(), "exit status {status:?}");
    if let Backend::Run { cluster, .. } = &env.backend {
        // In the served namespace, or the chart's release namespace.
        let mut leases = Vec::new();
        for namespace in [
            cluster.namespace.clone(),
            format!("{}-system", cluster.namespace),
        ] {
            let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
                kube::Api::namespaced(cluster.client.clone(), &namespace);
            leases.extend(api.list(&Default::default()).await.unwrap().items);
        }
        assert_eq!(leases.len(), 1, "the one Lease taken: {leases:?}");
        let holder = leases[0]
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone());
        assert_eq!(holder, None, "the Lease given up");
    }
}

async fn a_client_that_never_finishes_its_body_times_out(kind: Kind, address: Address) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = env_with(kind, address, &["--request-timeout", "1s"]).await;
    let address = env.url().trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "PATCH /api/v4/projects/42/compliance_external_controls/{}/status HTTP/1.1\r\n\
         Host: extctl\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sta",
        env.control
    );
    stream.write_all(head.as_bytes()).await.unwrap();

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server answered within its timeout");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"Request body not received in time"}"#),
        "{answer}"
    );
}

/// Each test above that takes a [`Kind`], once per command and set of permissions.
macro_rules! on_run_and_dev {
    ($($test:ident),* $(,)?) => {
        mod run {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Kind::Run, super::Address::Id).await
                }
            )*
        }
        mod dev {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Kind::Dev, super::Address::Id).await
                }
            )*
        }
        mod chart_one_namespace {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Kind::Chart { cluster_wide: false }, super::Address::Id).await
                }
            )*
        }
        mod chart_cluster_wide {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Kind::Chart { cluster_wide: true }, super::Address::Id).await
                }
            )*
        }
    };
}

on_run_and_dev!(
    accepted_calls_store_the_status_and_answer_like_gitlab,
    every_error_row_of_the_protocol_table,
    checks_run_in_the_documented_order,
    a_nonce_is_used_once_and_only_a_verified_call_can_use_it,
    changes_emit_gitlabs_audit_event_and_repeats_emit_none,
    bodies_are_bounded_and_unknown_routes_answer_in_json,
    stops_cleanly_on_sigterm,
    a_client_that_never_finishes_its_body_times_out,
);

/// The protocol table again, the project named by its full path in each client's encoding.
macro_rules! by_path {
    ($($test:ident),* $(,)?) => {
        by_path!(@in run_path_python_gitlab, Run, "python-gitlab"; $($test),*);
        by_path!(@in run_path_client_go, Run, "client-go"; $($test),*);
        by_path!(@in dev_path_python_gitlab, Dev, "python-gitlab"; $($test),*);
        by_path!(@in dev_path_client_go, Dev, "client-go"; $($test),*);
    };
    (@in $module:ident, $kind:ident, $encoding:literal; $($test:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Kind::$kind, super::Address::Path($encoding)).await
                }
            )*
        }
    };
}

by_path!(
    accepted_calls_store_the_status_and_answer_like_gitlab,
    every_error_row_of_the_protocol_table,
    checks_run_in_the_documented_order,
    a_nonce_is_used_once_and_only_a_verified_call_can_use_it,
);

//! Faults of the Kubernetes API, through the real `extctl run` against a genuine
//! kube-apiserver, with the faults injected by the proxy in front of it
//! (`tests/support/apiserver/proxy.rs`): failing and slow status writes, conflicts, dropped and
//! compacted watches, a failing reset, concurrent calls, and SIGKILL mid-burst. In every case a
//! call answered 200 is stored, a call answered with an error stores nothing, and no reset is
//! lost or repeated. Calls are signed by the independent Python checker's `sign` (Python's
//! `hmac`); what is stored is read straight from the server, not through the proxy.
//!
//! Elsewhere: an API server unavailable during one call, and a write it refuses as invalid
//! (`tests/endpoint_cluster.rs`, `tests/endpoint_protocol.rs`); a leader killed while
//! resetting (`tests/operate.rs`).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::Method;
use extctl_core::crd::{ControlStatus, ExternalControl};
use jiff::Timestamp;
use serde_json::json;
use support::apiserver::{Faults, RequestRecord};
use support::{
    Cluster, Operator, RawAnswer, Signing, TOKEN, fresh_nonce, python_signatures, raw_request,
    wait_for,
};

/// The status subresource of control `name` in `namespace`.
fn status_path(namespace: &str, name: &str) -> String {
    format!("/apis/extctl.dev/v1alpha1/namespaces/{namespace}/externalcontrols/{name}/status")
}

/// One signed call for project 42, reporting `status`: its nonce and its bytes.
#[derive(Debug, Clone)]
struct Report {
    status: &'static str,
    nonce: String,
    bytes: Vec<u8>,
}

/// Signs calls (in one Python run) for `(control, status)` each, with fresh nonces.
async fn reports(calls: &[(i64, &'static str)]) -> Vec<Report> {
    let timestamp = Timestamp::now().as_second().to_string();
    let signings: Vec<Signing> = calls
        .iter()
        .map(|(control, status)| Signing {
            token: TOKEN.into(),
            timestamp: timestamp.clone(),
            nonce: fresh_nonce(),
            project: "42".into(),
            control: control.to_string(),
            status: (*status).into(),
        })
        .collect();
    let signatures = python_signatures(&signings).await;
    signings
        .into_iter()
        .zip(signatures)
        .zip(calls)
        .map(|((signing, signature), (control, status))| {
            let body = format!(r#"{{"status":"{status}"}}"#);
            let bytes = format!(
                "PATCH /api/v4/projects/42/compliance_external_controls/{control}/status HTTP/1.1\r\n\
                 Host: extctl\r\nX-Gitlab-Timestamp: {}\r\nX-Gitlab-Nonce: {}\r\n\
                 X-Gitlab-Hmac-Sha256: {signature}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                signing.timestamp,
                signing.nonce,
                body.len()
            )
            .into_bytes();
            Report {
                status,
                nonce: signing.nonce,
                bytes,
            }
        })
        .collect()
}

async fn report(control: i64, status: &'static str) -> Report {
    reports(&[(control, status)]).await.remove(0)
}

/// Sends a report; `(code, error message)`, or `None` when the connection ended unanswered.
async fn send(url: &str, report: &Report) -> Option<(u16, String)> {
    raw_request(url, &report.bytes)
        .await
        .map(|answer: RawAnswer| answer.error())
}

/// A cluster with the Secret `sast-token` and control `sast` (42/7), and a running operator.
async fn cluster_with_sast(args: &[&str]) -> (Cluster, Operator) {
    let cluster = Cluster::start().await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    cluster.create_control("sast", 42, 7, "sast-token").await;
    let operator = Operator::start(&cluster, args).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    // The reconciler's own first writes are over before a test counts or breaks any.
    settled(&cluster, "sast").await;
    (cluster, operator)
}

fn stored_nonces(control: &ExternalControl) -> Vec<String> {
    let status = control.status.as_ref();
    status
        .map(|s| s.recent_nonces.iter().map(|n| n.nonce.clone()).collect())
        .unwrap_or_default()
}

fn stored_status(control: &ExternalControl) -> Option<ControlStatus> {
    control.status.as_ref().and_then(|s| s.status)
}

fn as_status(status: &str) -> ControlStatus {
    serde_json::from_value(json!(status)).unwrap()
}

/// The requests through the proxy matching `method` and `path`, their codes in order.
fn codes(requests: &[RequestRecord], method: Method, path: &str) -> Vec<u16> {
    requests
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .map(|r| r.code)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Status writes that fail or are slow.

/// How the API server breaks the next status write, and what the caller must be told.
struct WriteFault {
    case: &'static str,
    arm: fn(&Faults, &str),
    /// The answer: code and error message (empty for 200).
    code: u16,
    message: &'static str,
}

/// `--request-timeout` of the operator in the write-fault tests. Longer than one retried 503
/// or 429: the server's answer carries `Retry-After: 1`, which kube's client honours, so one
/// such answer costs a second before the retry (under a 1 s timeout even a single 503 would
/// time out).
const REQUEST_TIMEOUT: &str = "3s";

/// How long a held write is held: past the request timeout.
const HOLD: Duration = Duration::from_secs(4);

fn write_faults() -> Vec<WriteFault> {
    fn patch() -> Option<Method> {
        Some(Method::PATCH)
    }
    vec![
        WriteFault {
            case: "500 on the write",
            arm: |f, p| f.fail_next(1, patch(), p, 500),
            code: 503,
            message: "Status store unavailable, nothing was stored: injected failure (500)",
        },
        WriteFault {
            case: "502 on the write",
            arm: |f, p| f.fail_next(1, patch(), p, 502),
            code: 503,
            message: "Status store unavailable, nothing was stored: injected failure (502)",
        },
        WriteFault {
            // kube's client retries a 503 by itself: the write it then makes is a true 200.
            case: "one 503 on the write",
            arm: |f, p| f.fail_next(1, patch(), p, 503),
            code: 200,
            message: "",
        },
        WriteFault {
            // ...and keeps retrying past the request timeout when the 503s go on.
            case: "503 on every attempt",
            arm: |f, p| f.fail_next(1000, patch(), p, 503),
            code: 503,
            message: "Status store did not answer in time; the status may have been stored: retry",
        },
        WriteFault {
            case: "429 on every attempt",
            arm: |f, p| f.fail_next(1000, patch(), p, 429),
            code: 503,
            message: "Status store did not answer in time; the status may have been stored: retry",
        },
        WriteFault {
            case: "404: the control deleted meanwhile",
            arm: |f, p| f.fail_next(1, patch(), p, 404),
            code: 404,
            message: "Control not found",
        },
        WriteFault {
            case: "a conflict, then the re-read fails",
            arm: |f, p| {
                f.fail_next(1, patch(), p, 409);
                f.fail_next(1, Some(Method::GET), p, 500);
            },
            code: 503,
            message: "Status store unavailable, nothing was stored: injected failure (500)",
        },
        WriteFault {
            case: "the write held past the request timeout before it is handled",
            arm: |f, p| f.delay_next_request(1, patch(), p, HOLD),
            code: 503,
            message: "Status store did not answer in time; the status may have been stored: retry",
        },
        WriteFault {
            case: "every request 300 ms slow (within the request timeout)",
            arm: |f, _| f.set_latency(Duration::from_millis(300)),
            code: 200,
            message: "",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_or_slow_status_writes_get_an_error_store_nothing_and_a_fresh_call_succeeds() {
    let (cluster, operator) = cluster_with_sast(&["--request-timeout", REQUEST_TIMEOUT]).await;
    let faults = cluster.proxy.faults();
    let sast_path = status_path(&cluster.namespace, "sast");
    let mut current = "pending";
    for fault in write_faults() {
        let case = fault.case;
        let before = cluster.control("sast").await;
        let wanted = if current == "pass" { "fail" } else { "pass" };
        let call = report(7, wanted).await;
        (fault.arm)(faults, &sast_path);
        let sent_at = std::time::Instant::now();
        let answer = send(&operator.url, &call).await;
        faults.clear();
        assert_eq!(
            answer,
            Some((fault.code, fault.message.to_owned())),
            "{case}"
        );
        if fault.code == 200 {
            let after = cluster.control("sast").await;
            assert_eq!(stored_status(&after), Some(as_status(wanted)), "{case}");
            assert!(stored_nonces(&after).contains(&call.nonce), "{case}");
            current = wanted;
            continue;
        }
        if case.contains("held") {
            // "May have been stored": the write in flight is finished after the answer, so
            // let its hold end; then it is either stored exactly as sent, with its Event, or
            // not at all (a write in between made it conflict, and none is retried late).
            tokio::time::sleep(
                (HOLD + Duration::from_millis(500)).saturating_sub(sent_at.elapsed()),
            )
            .await;
            let after = cluster.control("sast").await;
            if stored_nonces(&after).contains(&call.nonce) {
                assert_eq!(stored_status(&after), Some(as_status(wanted)), "{case}");
                let note =
                    format!("Changed compliance control status from '{current}' to '{wanted}'");
                cluster
                    .wait_event_note("sast", &note, Duration::from_secs(10))
                    .await;
                current = wanted;
                continue;
            }
        }
        let after = cluster.control("sast").await;
        assert_eq!(
            after.metadata.resource_version, before.metadata.resource_version,
            "{case}: something was written: {:?}",
            after.status
        );
        assert!(!stored_nonces(&after).contains(&call.nonce), "{case}");

        // The fault cleared, a fresh call (a new nonce) is stored.
        let retry = report(7, wanted).await;
        assert_eq!(
            send(&operator.url, &retry).await,
            Some((200, String::new())),
            "{case}: the retry"
        );
        let after = cluster.control("sast").await;
        assert_eq!(stored_status(&after), Some(as_status(wanted)), "{case}");
        assert!(stored_nonces(&after).contains(&retry.nonce), "{case}");
        current = wanted;
    }
}

/// The one case where extctl cannot know: the API server made the write, and its answer came
/// after the request timeout. The call is not answered 200 (extctl does not know it was
/// stored); it was stored; a retry with a fresh nonce stores the same status again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_comes_too_late_is_never_answered_200() {
    let (cluster, operator) = cluster_with_sast(&["--request-timeout", REQUEST_TIMEOUT]).await;
    let faults = cluster.proxy.faults();
    let call = report(7, "fail").await;
    faults.delay_next_answer(
        1,
        Some(Method::PATCH),
        &status_path(&cluster.namespace, "sast"),
        HOLD,
    );
    let (code, message) = send(&operator.url, &call).await.unwrap();
    assert_eq!(code, 503, "{message}");
    let stored = wait_for(Duration::from_secs(5), || async {
        let control = cluster.control("sast").await;
        stored_nonces(&control)
            .contains(&call.nonce)
            .then_some(control)
    })
    .await
    .expect("the API server made the write");
    assert_eq!(stored_status(&stored), Some(ControlStatus::Fail));
    // The change was stored, so it is told like any other, though the caller stopped waiting:
    // its Event (and audit line) follow the late answer.
    cluster
        .wait_event_note(
            "sast",
            "Changed compliance control status from 'pending' to 'fail'",
            HOLD + Duration::from_secs(10),
        )
        .await;
    let retry = report(7, "fail").await;
    assert_eq!(
        send(&operator.url, &retry).await,
        Some((200, String::new()))
    );
    let after = cluster.control("sast").await;
    assert_eq!(stored_status(&after), Some(ControlStatus::Fail));
    assert!(stored_nonces(&after).contains(&retry.nonce));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_retried_and_running_out_of_retries_is_a_clear_503() {
    // 32 attempts, each a PATCH and a re-read, must fit in the request timeout on a busy
    // machine: the limit is the attempts, not the time.
    let (cluster, operator) = cluster_with_sast(&["--request-timeout", "60s"]).await;
    let faults = cluster.proxy.faults();
    let path = status_path(&cluster.namespace, "sast");

    // A few conflicts: each is followed by a re-read and another attempt, then stored.
    cluster.proxy.reset_requests();
    faults.fail_next(3, Some(Method::PATCH), &path, 409);
    let call = report(7, "pass").await;
    assert_eq!(send(&operator.url, &call).await, Some((200, String::new())));
    let requests = cluster.proxy.requests();
    assert_eq!(codes(&requests, Method::PATCH, &path), [409, 409, 409, 200]);
    assert_eq!(codes(&requests, Method::GET, &path), [200, 200, 200]);
    let stored = cluster.control("sast").await;
    assert!(stored_nonces(&stored).contains(&call.nonce));

    // Conflicts without end: `MAX_WRITE_ATTEMPTS` (32, src/kubernetes/endpoint_store.rs) attempts,
    // each conflict followed by a re-read, then 503; nothing stored. kube's client does not
    // retry a 409 itself, so every attempt is one PATCH through the proxy.
    const MAX_WRITE_ATTEMPTS: usize = 32;
    cluster.proxy.reset_requests();
    faults.fail_next(1000, Some(Method::PATCH), &path, 409);
    let call = report(7, "fail").await;
    assert_eq!(
        send(&operator.url, &call).await,
        Some((
            503,
            "Status store unavailable, nothing was stored: the control kept changing; retry".into()
        ))
    );
    let requests = cluster.proxy.requests();
    assert_eq!(
        codes(&requests, Method::PATCH, &path),
        [409; MAX_WRITE_ATTEMPTS],
        "one PATCH per attempt, every one a conflict"
    );
    assert_eq!(
        codes(&requests, Method::GET, &path),
        [200; MAX_WRITE_ATTEMPTS],
        "one re-read after each conflict"
    );
    faults.clear();
    let after = cluster.control("sast").await;
    assert_eq!(
        after.metadata.resource_version,
        stored.metadata.resource_version
    );
    // And once the conflicts stop, a fresh call is stored.
    let retry = report(7, "fail").await;
    assert_eq!(
        send(&operator.url, &retry).await,
        Some((200, String::new()))
    );
    assert_eq!(
        stored_status(&cluster.control("sast").await),
        Some(ControlStatus::Fail)
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrent calls, and SIGKILL mid-burst.

/// Checks the stored nonces against the answers: every call answered 200 is stored, every call
/// answered with an error is not, and the status is that of the last call stored (the order
/// of `recentNonces` is the order of the writes). Calls that got no answer may be either.
fn assert_stored_exactly_as_answered(
    control: &ExternalControl,
    answered: &[(Report, Option<(u16, String)>)],
) {
    let nonces = stored_nonces(control);
    for (call, answer) in answered {
        match answer {
            Some((200, _)) => assert!(nonces.contains(&call.nonce), "a 200 was lost: {call:?}"),
            Some(refused) => assert!(
                !nonces.contains(&call.nonce),
                "{refused:?} but stored: {call:?}"
            ),
            None => {}
        }
    }
    let last = nonces.last().expect("some call was stored");
    let (last_call, _) = answered
        .iter()
        .find(|(call, _)| &call.nonce == last)
        .expect("the last stored nonce is one of the calls");
    assert_eq!(
        stored_status(control),
        Some(as_status(last_call.status)),
        "the status is the last stored call's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_under_conflicts_and_errors_are_stored_exactly_when_answered_200() {
    let (cluster, first) = cluster_with_sast(&[]).await;
    let second = Operator::start(&cluster, &[]).await;
    let statuses: Vec<(i64, &'static str)> = (0..24)
        .map(|i| (7, if i % 3 == 0 { "fail" } else { "pass" }))
        .collect();
    let calls = reports(&statuses).await;
    let faults = cluster.proxy.faults();
    let path = status_path(&cluster.namespace, "sast");
    // Besides the conflicts the calls cause each other: injected ones, and three writes that
    // fail outright (each fails its call).
    faults.fail_next(4, Some(Method::PATCH), &path, 409);
    faults.fail_next(3, Some(Method::PATCH), &path, 500);
    let sends = calls.iter().enumerate().map(|(i, call)| {
        let url = if i % 2 == 0 { &first.url } else { &second.url };
        async move { (call.clone(), send(url, call).await) }
    });
    let answered = futures::future::join_all(sends).await;
    faults.clear();

    let failed = "Status store unavailable, nothing was stored: injected failure (500)";
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for (_, answer) in &answered {
        let key = match answer {
            Some((200, _)) => "200".to_owned(),
            Some((code, message)) => {
                assert_eq!((*code, message.as_str()), (503, failed));
                "503".to_owned()
            }
            None => panic!("a call got no answer"),
        };
        *tally.entry(key).or_default() += 1;
    }
    assert_eq!(
        tally,
        BTreeMap::from([("200".into(), 21), ("503".into(), 3)])
    );
    let control = cluster.control("sast").await;
    assert_eq!(
        stored_nonces(&control).len(),
        21,
        "one nonce per accepted call"
    );
    assert_stored_exactly_as_answered(&control, &answered);
}

/// Control `name` once nothing more is written to it: two reads 500 ms apart agree (a write
/// takes the server milliseconds).
async fn settled(cluster: &Cluster, name: &str) -> ExternalControl {
    let mut last = cluster.control(name).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let control = cluster.control(name).await;
        if control.metadata.resource_version == last.metadata.resource_version {
            return control;
        }
        last = control;
    }
    panic!("{name} is still being written to: {:?}", last.status);
}

/// The value of the first sample of `/metrics` (at `metrics_url`) whose line starts with `name`.
async fn metric(metrics_url: &str, name: &str) -> Option<f64> {
    let (base, path) = metrics_url
        .trim_start_matches("http://")
        .split_once('/')
        .expect("http://ADDRESS/PATH");
    let request = format!("GET /{path} HTTP/1.1\r\nHost: extctl\r\nConnection: close\r\n\r\n");
    let answer = raw_request(&format!("http://{base}"), request.as_bytes()).await?;
    let text = String::from_utf8(answer.body).ok()?;
    let line = text.lines().find(|line| line.starts_with(name))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_no_accepted_call_and_keeps_the_schedule() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let cluster = Cluster::start().await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "sast", "namespace": cluster.namespace},
            "spec": {"projectId": 42, "controlId": 7, "pingInterval": "1h", "secretRef": {"name": "sast-token"}}
        }))
        .await;
    let lease = ["--lease-duration", "3s"];
    let operator = Operator::start(&cluster, &lease).await;
    let scheduled = wait_for(Duration::from_secs(10), || async {
        cluster.control("sast").await.status?.next_ping_time
    })
    .await
    .expect("scheduled");

    // Every API request a little slow, so that the kill finds writes in flight.
    let faults = cluster.proxy.faults();
    faults.set_latency(Duration::from_millis(30));
    let statuses: Vec<(i64, &'static str)> = (0..60)
        .map(|i| (7, if i % 2 == 0 { "fail" } else { "pass" }))
        .collect();
    let calls = Arc::new(reports(&statuses).await);
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let url = operator.url.clone();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (calls, next, accepted, killed, url) = (
                calls.clone(),
                next.clone(),
                accepted.clone(),
                killed.clone(),
                url.clone(),
            );
            tokio::spawn(async move {
                let mut answered = Vec::new();
                while !killed.load(Ordering::SeqCst) {
                    let Some(call) = calls.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        break;
                    };
                    let answer = send(&url, call).await;
                    if answer.as_ref().is_some_and(|(code, _)| *code == 200) {
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    // No answer: the process is gone (killed mid-call, or before this one was
                    // sent); the worker stops, as the flag may be set only a little later.
                    let gone = answer.is_none();
                    answered.push((call.clone(), answer));
                    if gone {
                        break;
                    }
                }
                answered
            })
        })
        .collect();
    let enough = wait_for(Duration::from_secs(20), || async {
        (accepted.load(Ordering::SeqCst) >= 12).then_some(())
    })
    .await;
    assert!(enough.is_some(), "calls are accepted before the kill");
    operator.kill().await;
    killed.store(true, Ordering::SeqCst);
    let mut answered = Vec::new();
    for worker in workers {
        answered.extend(worker.await.unwrap());
    }
    faults.clear();
    let answers: Vec<_> = answered.iter().map(|(_, answer)| answer).collect();
    assert!(
        answered.len() < calls.len(),
        "the burst was cut short by the kill: {answers:?}"
    );

    // Everything answered 200 before the kill is stored. (Read once the server has finished
    // the writes the killed process had sent: they may still land after the kill.)
    let control = settled(&cluster, "sast").await;
    assert_stored_exactly_as_answered(&control, &answered);
    let accepted = answered
        .iter()
        .filter(|(_, a)| matches!(a, Some((200, _))))
        .count();
    assert!(stored_nonces(&control).len() >= accepted);

    // A new process takes over (after the lease of the killed one ran out), reconciles the
    // control, and keeps its schedule: nothing is written.
    let restarted = Operator::start(&cluster, &lease).await;
    let reconciled = wait_for(Duration::from_secs(15), || async {
        let count = metric(
            &restarted.metrics_url,
            "extctl_reconcile_duration_seconds_count",
        )
        .await?;
        (count >= 1.0).then_some(())
    })
    .await;
    assert!(reconciled.is_some(), "the new leader reconciles");
    let after = cluster.control("sast").await;
    assert_eq!(
        after.status.as_ref().unwrap().next_ping_time,
        Some(scheduled),
        "the schedule is kept"
    );
    assert_eq!(
        after.metadata.resource_version, control.metadata.resource_version,
        "the restart rewrote nothing"
    );
    let fresh = report(7, "pass").await;
    assert_eq!(
        send(&restarted.url, &fresh).await,
        Some((200, String::new()))
    );
}

// ---------------------------------------------------------------------------------------------
// Watches that drop, fail and are compacted; resets that fail.

/// The answer to a fresh `pass` call for control `id`.
async fn call_control(url: &str, id: i64) -> Option<(u16, String)> {
    send(url, &report(id, "pass").await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_changed_while_the_watch_is_down_are_served_once_it_is_back() {
    let (cluster, operator) = cluster_with_sast(&[]).await;
    let faults = cluster.proxy.faults();
    let ok = Some((200, String::new()));
    let not_found = Some((404, "Control not found".to_owned()));

    // A dropped watch (an API server restart): resumed from its resourceVersion.
    faults.drop_watches();
    cluster.create_control("late", 42, 9, "sast-token").await;
    let served = wait_for(Duration::from_secs(10), || async {
        (call_control(&operator.url, 9).await == ok).then_some(())
    })
    .await;
    assert!(served.is_some(), "a control created as the watch dropped");

    // Watches failing for a while; meanwhile a control is created, one changes its id and one
    // is deleted; then the history is compacted, so that resuming is a 410 Gone and a list.
    faults.fail_next(100_000, Some(Method::GET), "watch=true", 500);
    faults.drop_watches();
    cluster
        .create_control("while-down", 42, 10, "sast-token")
        .await;
    let moved = json!({"spec": {"controlId": 11}});
    cluster
        .controls()
        .patch(
            "late",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&moved),
        )
        .await
        .unwrap();
    cluster
        .controls()
        .delete("sast", &Default::default())
        .await
        .unwrap();
    // Not seen yet: the endpoint answers from what it last knew.
    assert_eq!(call_control(&operator.url, 10).await, not_found);
    assert_eq!(call_control(&operator.url, 9).await, ok);
    // The failures end (`clear` disarms every switch, a pending compaction too), and the
    // history is compacted: the watch resumed from its resourceVersion is told it expired.
    cluster.proxy.reset_requests();
    faults.clear();
    faults.compact();

    let expected = [
        (10, ok.clone()),
        (11, ok.clone()),
        (9, not_found.clone()),
        (7, not_found.clone()),
    ];
    let last = std::sync::Mutex::new(Vec::new());
    let caught_up = wait_for(Duration::from_secs(20), || async {
        let mut answers = Vec::new();
        for (id, _) in &expected {
            answers.push((*id, call_control(&operator.url, *id).await));
        }
        let done = answers == expected;
        *last.lock().unwrap() = answers;
        done.then_some(())
    })
    .await;
    let last = last.into_inner().unwrap();
    assert!(caught_up.is_some(), "after the watch came back: {last:?}");
    // Resuming from a compacted version gets 410 Gone (an ERROR event, as on a real server),
    // and the watcher lists the controls again.
    let collection = format!(
        "/apis/extctl.dev/v1alpha1/namespaces/{}/externalcontrols",
        cluster.namespace
    );
    let requests = cluster.proxy.requests();
    let relisted = requests
        .iter()
        .any(|r| r.method == Method::GET && r.path == collection && !r.is_watch());
    let on_collection: Vec<_> = requests.iter().filter(|r| r.path == collection).collect();
    assert!(
        relisted,
        "the controls were listed again after the compaction: {on_collection:#?}"
    );
    let ready = raw_request(
        &operator.url,
        b"GET /readyz HTTP/1.1\r\nHost: extctl\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(ready.code, 200);
}

/// A control of project 42 reset every `interval`, with the Secret `sast-token`.
async fn cluster_with_pinged(name: &str, interval: &str) -> Cluster {
    let cluster = Cluster::start().await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": name, "namespace": cluster.namespace},
            "spec": {"projectId": 42, "controlId": 7, "pingInterval": interval, "secretRef": {"name": "sast-token"}}
        }))
        .await;
    cluster
}

fn next_ping(control: &ExternalControl) -> Option<Timestamp> {
    control
        .status
        .as_ref()?
        .next_ping_time
        .as_ref()
        .map(|t| t.0)
}

fn last_ping(control: &ExternalControl) -> Option<Timestamp> {
    control
        .status
        .as_ref()?
        .last_ping_time
        .as_ref()
        .map(|t| t.0)
}

/// Successful status writes of `name` made through the proxy.
fn status_writes(cluster: &Cluster, name: &str) -> usize {
    codes(
        &cluster.proxy.requests(),
        Method::PATCH,
        &status_path(&cluster.namespace, name),
    )
    .iter()
    .filter(|code| **code == 200)
    .count()
}

/// Waits for a quiet moment of control `name`: reconciled, with a reset done if `after_reset`,
/// its last reset at least `QUIET` ago and its next at least twice that away (room for the
/// settling and the reads). Then it restarts the proxy's request count, runs `arm` (arming
/// faults) and returns the control, provided nothing was written meanwhile (otherwise it
/// disarms the faults and waits for the next moment). So the count starts with no write of
/// `name` in flight: a write committed before the first read was answered (and counted by the
/// proxy) before the count restarted.
async fn quiet_moment(
    cluster: &Cluster,
    name: &str,
    after_reset: bool,
    arm: impl Fn(),
) -> ExternalControl {
    const QUIET: jiff::SignedDuration = jiff::SignedDuration::from_millis(500);
    // Longer than any answer takes to travel from the server through the proxy's log.
    const SETTLE: Duration = Duration::from_millis(200);
    let found = wait_for(Duration::from_secs(20), || async {
        let before = cluster.control(name).await;
        before.status.as_ref()?.observed_generation?;
        let next = next_ping(&before)?;
        let last = last_ping(&before);
        if after_reset && last.is_none() {
            return None;
        }
        let now = Timestamp::now();
        let quiet = last.is_none_or(|last| now >= last + QUIET) && now + QUIET + QUIET <= next;
        if !quiet {
            return None;
        }
        tokio::time::sleep(SETTLE).await;
        cluster.proxy.reset_requests();
        arm();
        let after = cluster.control(name).await;
        if after.metadata.resource_version == before.metadata.resource_version {
            return Some(after);
        }
        cluster.proxy.faults().clear();
        None
    })
    .await;
    found.unwrap_or_else(|| panic!("{name} never had a quiet moment"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_neither_missed_nor_repeated_while_watches_drop_and_compact() {
    let interval = Duration::from_secs(2);
    let cluster = cluster_with_pinged("pinged", "2s").await;
    let operator = Operator::start(&cluster, &[]).await;
    // Once the first reset is done, count every status write from a due time on.
    let first = quiet_moment(&cluster, "pinged", true, || {}).await;
    let first_due = next_ping(&first).unwrap();

    // Six seconds of watches ending, every other time after a compaction.
    let faults = cluster.proxy.faults();
    let started = std::time::Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(6) {
        if round % 2 == 1 {
            faults.compact();
        }
        faults.drop_watches();
        round += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A little quiet, then stop: no write after this.
    let quiet_until = Timestamp::now() + interval;
    wait_for(Duration::from_secs(10), || async {
        let control = cluster.control("pinged").await;
        (last_ping(&control)? > quiet_until).then_some(())
    })
    .await
    .expect("resets go on");
    assert!(operator.stop().await.success());

    let control = cluster.control("pinged").await;
    let final_due = next_ping(&control).unwrap();
    let span = final_due.duration_since(first_due);
    let grid = jiff::SignedDuration::try_from(interval).unwrap();
    assert_eq!(
        span.as_nanos() % grid.as_nanos(),
        0,
        "the schedule kept its grid"
    );
    let due_times = (span.as_nanos() / grid.as_nanos()) as usize;
    assert!(due_times >= 4, "{due_times} due times");
    assert_eq!(
        status_writes(&cluster, "pinged"),
        due_times,
        "one status write per due time from {first_due} to {final_due}"
    );
    let last = last_ping(&control).unwrap();
    assert!(
        last >= final_due - grid && last < final_due,
        "the last reset ({last}) is that of the last due time before {final_due}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reset_write_is_retried_and_the_reset_happens_once() {
    let cluster = cluster_with_pinged("pinged", "2s").await;
    let operator = Operator::start(&cluster, &[]).await;
    let path = status_path(&cluster.namespace, "pinged");
    // The control scheduled, between two resets (the first may have happened already, on a
    // slow machine): the next reset's write fails once.
    let faults = cluster.proxy.faults();
    let scheduled = quiet_moment(&cluster, "pinged", false, || {
        faults.fail_next(1, Some(Method::PATCH), &path, 500);
    })
    .await;
    let due = next_ping(&scheduled).unwrap();
    let previous = last_ping(&scheduled);

    let reset = wait_for(Duration::from_secs(15), || async {
        let control = cluster.control("pinged").await;
        (last_ping(&control) != previous).then_some(control)
    })
    .await
    .expect("the reset is retried and carried out");
    assert!(operator.stop().await.success());
    let reset_at = last_ping(&reset).unwrap();
    let after_retry = next_ping(&reset).unwrap();
    assert!(reset_at >= due, "not before its due time");
    let grid = jiff::SignedDuration::from_secs(2);
    assert_eq!(
        after_retry.duration_since(due).as_nanos() % grid.as_nanos(),
        0,
        "the next reset stays on the grid"
    );
    assert!(after_retry > reset_at);
    // The failed write, then exactly one write for the reset (and one per later due time, if
    // any passed before the stop).
    let control = cluster.control("pinged").await;
    let later = (next_ping(&control)
        .unwrap()
        .duration_since(after_retry)
        .as_nanos()
        / grid.as_nanos()) as usize;
    let mut expected = vec![500, 200];
    expected.extend(std::iter::repeat_n(200, later));
    assert_eq!(
        codes(&cluster.proxy.requests(), Method::PATCH, &path),
        expected
    );
    assert_eq!(stored_status(&control), Some(ControlStatus::Pending));
}

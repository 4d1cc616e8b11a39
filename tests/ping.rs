//! Scheduled resets to `pending`, through the real `extctl run` binary against the harness,
//! with intervals of seconds.

mod support;

use std::time::Duration;

use extctl::crd::{ControlStatus, ExternalControl};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{Cluster, Operator, PingReceiver as Receiver, TOKEN, checker, wait_for};

/// Creates a control of project 42 with `ping` settings merged into its spec.
async fn create_pinged(
    cluster: &Cluster,
    name: &str,
    control_id: i64,
    secret: &str,
    ping: serde_json::Value,
) {
    let mut spec = json!({"projectId": 42, "controlId": control_id, "secretRef": {"name": secret}});
    spec.as_object_mut()
        .unwrap()
        .extend(ping.as_object().unwrap().clone());
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec
        }))
        .await;
}

/// Control `sast` (42/7) with its Secret, and a token file for the checker.
async fn cluster_with(ping: serde_json::Value) -> (Cluster, String) {
    let cluster = Cluster::start().await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    create_pinged(&cluster, "sast", 7, "sast-token", ping).await;
    let token = cluster.token_file("token", TOKEN).display().to_string();
    (cluster, token)
}

/// As [`cluster_with`], with the operator running and the checker's `status` stored.
async fn reported(ping: serde_json::Value, status: &str) -> (Cluster, Operator) {
    let (cluster, token) = cluster_with(ping).await;
    let operator = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    report(&operator, &token, status).await;
    (cluster, operator)
}

/// The persisted due time of `sast`'s next reset.
async fn next_due(cluster: &Cluster) -> Timestamp {
    time(
        cluster
            .control("sast")
            .await
            .status
            .unwrap()
            .next_ping_time
            .as_ref(),
    )
}

/// A reset counts as on time when it happened within 1 s after its due time.
#[track_caller]
fn assert_on_time(reset_at: Timestamp, due: Timestamp) {
    let late = reset_at.duration_since(due).as_secs_f64();
    assert!((0.0..1.0).contains(&late), "reset {late} s after due");
}

async fn report(operator: &Operator, token: &str, status: &str) {
    let args = [
        "--project",
        "42",
        "--control",
        "7",
        "--token-file",
        token,
        "--status",
        status,
    ];
    let answer = checker(&operator.url, &args).await;
    assert_eq!(answer.code, 200, "{:?}", answer.body);
}

fn status_of(control: &ExternalControl) -> Option<ControlStatus> {
    control.status.as_ref().and_then(|s| s.status)
}

fn time(field: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>) -> Timestamp {
    field.expect("time set").0
}

/// Waits until the control's status is `want`.
async fn wait_status(cluster: &Cluster, want: ControlStatus, within: Duration) -> ExternalControl {
    let found = wait_for(within, || async {
        let control = cluster.control("sast").await;
        (status_of(&control) == Some(want)).then_some(control)
    })
    .await;
    found.unwrap_or_else(|| panic!("status never became {want}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinged_control_is_reset_on_time_and_the_change_is_an_event() {
    let (cluster, _operator) = reported(json!({"pingInterval": "2s"}), "pass").await;

    let before = cluster.control("sast").await.status.unwrap();
    let due = time(before.next_ping_time.as_ref());
    let reset = wait_status(&cluster, ControlStatus::Pending, Duration::from_secs(5)).await;
    let status = reset.status.unwrap();
    assert_on_time(time(status.last_ping_time.as_ref()), due);
    // The next reset counts from the due time, not from when the reset happened.
    assert_eq!(
        time(status.next_ping_time.as_ref())
            .duration_since(due)
            .as_secs(),
        2
    );

    // The reset is an Event.
    let note = "Changed compliance control status from 'pass' to 'pending'";
    cluster
        .wait_event_note("sast", note, Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_schedule() {
    let (cluster, operator) = reported(json!({"pingInterval": "4s"}), "pass").await;
    let due = next_due(&cluster).await;
    assert!(operator.stop().await.success());

    let operator = Operator::start(&cluster, &[]).await;
    assert_eq!(
        status_of(&cluster.control("sast").await),
        Some(ControlStatus::Pass),
        "no early reset"
    );
    let reset = wait_status(&cluster, ControlStatus::Pending, Duration::from_secs(8)).await;
    let status = reset.status.unwrap();
    assert_on_time(time(status.last_ping_time.as_ref()), due);
    drop(operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_stored_after_the_due_time_is_not_overwritten() {
    let (cluster, operator) = reported(json!({"pingInterval": "2s"}), "fail").await;
    let due = next_due(&cluster).await;
    assert!(operator.stop().await.success());

    // While no reconciler runs, the due time passes and a checker's `pass` is stored (as another
    // replica's endpoint would store it).
    let past_due = due.duration_since(Timestamp::now()).as_secs_f64().max(0.0) + 1.0;
    tokio::time::sleep(Duration::from_secs_f64(past_due)).await;
    let reported_at = Timestamp::now();
    let patch = json!({"status": {"status": "pass", "lastUpdateTime": reported_at.to_string()}});
    cluster
        .controls()
        .patch_status("sast", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    let _operator = Operator::start(&cluster, &[]).await;
    let rescheduled = wait_for(Duration::from_secs(5), || async {
        let status = cluster.control("sast").await.status?;
        (time(status.next_ping_time.as_ref()) > due).then_some(status)
    })
    .await
    .expect("rescheduled");
    assert_eq!(
        rescheduled.status,
        Some(ControlStatus::Pass),
        "the later report stands"
    );
    // Scheduled from the missed due time, on the same grid.
    let offset = time(rescheduled.next_ping_time.as_ref())
        .duration_since(due)
        .as_secs();
    assert_eq!(offset % 2, 0, "next reset on the 2 s grid from {due}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_disabled_keeps_the_status_and_re_enabling_counts_from_then() {
    let (cluster, _operator) =
        reported(json!({"pingInterval": "1s", "pingEnabled": false}), "pass").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let control = cluster.control("sast").await;
    assert_eq!(status_of(&control), Some(ControlStatus::Pass));
    assert!(control.status.unwrap().next_ping_time.is_none());

    let enabled_at = Timestamp::now();
    let patch = json!({"spec": {"pingEnabled": true, "pingInterval": "3s"}});
    cluster
        .controls()
        .patch("sast", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let scheduled = wait_for(Duration::from_secs(5), || async {
        cluster.control("sast").await.status?.next_ping_time
    })
    .await
    .expect("scheduled once enabled");
    // One interval from then, plus the control's fixed spread (less than one more interval).
    let ahead = scheduled.0.duration_since(enabled_at).as_secs_f64();
    assert!(
        (2.9..7.0).contains(&ahead),
        "next reset {ahead} s after enabling"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_change_reschedules_at_once() {
    let (cluster, _operator) = reported(json!({"pingInterval": "1h"}), "pass").await;

    let patch = json!({"spec": {"pingInterval": "2s"}});
    cluster
        .controls()
        .patch("sast", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let control = wait_status(&cluster, ControlStatus::Pending, Duration::from_secs(6)).await;
    assert_eq!(control.status.unwrap().ping_interval.unwrap().0, "2s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_reset_once_per_due_time() {
    let (cluster, token) = cluster_with(json!({"pingInterval": "2s"})).await;
    let first = Operator::start(&cluster, &[]).await;
    let _second = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    report(&first, &token, "pass").await;

    // Watch every change for three intervals (a watch misses none, unlike polling): each due
    // time yields exactly one reset, i.e. one new lastPingTime.
    let mut resets: Vec<Timestamp> = Vec::new();
    let version = cluster
        .control("sast")
        .await
        .metadata
        .resource_version
        .unwrap();
    let params = kube::api::WatchParams::default().timeout(7);
    let mut changes = cluster
        .controls()
        .watch(&params, &version)
        .await
        .unwrap()
        .boxed();
    while let Some(event) = changes.try_next().await.unwrap() {
        let kube::api::WatchEvent::Modified(control) = event else {
            continue;
        };
        let at = control.status.and_then(|s| s.last_ping_time).map(|t| t.0);
        if let Some(at) = at.filter(|at| resets.last() != Some(at)) {
            resets.push(at);
        }
    }
    assert!(resets.len() >= 3, "resets seen: {resets:?}");
    for pair in resets.windows(2) {
        let gap = pair[1].duration_since(pair[0]).as_secs_f64();
        assert!(gap > 1.5, "two resets {gap} s apart: {resets:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_ping_then_silence_times_out_to_fail() {
    let scratch = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(scratch.path(), 200).await;
    let ping = json!({"pingInterval": "4s", "pendingTimeout": "1s", "externalUrl": receiver.url});
    let (cluster, _operator) = reported(ping, "pass").await;

    let failed = wait_status(&cluster, ControlStatus::Fail, Duration::from_secs(8)).await;
    let status = failed.status.unwrap();
    assert_eq!(
        status.last_ping.as_ref().and_then(|p| p.http_status),
        Some(200)
    );

    let pings = receiver.pings();
    assert_eq!(pings.len(), 1, "{pings:?}");
    let ping = &pings[0];
    assert_eq!(ping["valid"], true, "signature verified independently");
    assert_eq!(ping["content_type"], "application/json");
    assert_eq!(ping["body"]["project"]["id"], 42);
    assert_eq!(ping["body"]["control"]["id"], 7);
    assert_eq!(ping["body"]["control"]["status"], "pending");
    assert_eq!(ping["body"]["control"]["resource"], "sast");

    let notes = wait_for(Duration::from_secs(5), || async {
        let notes = cluster.event_notes("sast").await;
        notes
            .iter()
            .any(|n| n.ends_with("from 'pending' to 'fail'"))
            .then_some(notes)
    })
    .await;
    assert!(
        notes.is_some(),
        "the timeout is an Event: {:?}",
        cluster.event_notes("sast").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_or_no_answer_leaves_the_status_pending() {
    let cluster = Cluster::start().await;
    let receiver = Receiver::start(cluster.dir.path(), 500).await;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = format!("http://{closed_port}/hook");
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    for (name, control, url) in [
        ("five-hundred", 7, &receiver.url),
        ("unreachable", 8, &unreachable),
    ] {
        create_pinged(
            &cluster,
            name,
            control,
            "sast-token",
            json!({"pingInterval": "2s", "pendingTimeout": "1s", "externalUrl": url}),
        )
        .await;
    }
    let _operator = Operator::start(&cluster, &[]).await;

    for name in ["five-hundred", "unreachable"] {
        let outcome = wait_for(Duration::from_secs(6), || async {
            cluster.control(name).await.status?.last_ping
        })
        .await
        .unwrap_or_else(|| panic!("{name}: no ping outcome recorded"));
        assert!(!outcome.accepted(), "{name}: {outcome:?}");
        // Past the pending timeout, the status is still pending.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let status = cluster.control(name).await.status.unwrap();
        assert_eq!(status.status, Some(ControlStatus::Pending), "{name}");
    }
    let five_hundred = cluster
        .control("five-hundred")
        .await
        .status
        .unwrap()
        .last_ping
        .unwrap();
    assert_eq!(five_hundred.http_status, Some(500));
    let unreachable = cluster
        .control("unreachable")
        .await
        .status
        .unwrap()
        .last_ping
        .unwrap();
    assert!(unreachable.error.is_some_and(|e| !e.is_empty()));
    assert!(receiver.pings().iter().all(|p| p["valid"] == true));
    for (name, why) in [
        ("five-hundred", "failed: HTTP 500"),
        ("unreachable", "failed: "),
    ] {
        let warned = wait_for(Duration::from_secs(5), || async {
            let notes = cluster.event_notes(name).await;
            notes
                .iter()
                .any(|n| n.contains(why) && n.ends_with("the status stays pending"))
                .then_some(())
        })
        .await;
        assert!(
            warned.is_some(),
            "{name}: a Warning says why: {:?}",
            cluster.event_notes(name).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_one_ping_per_reset() {
    let cluster = Cluster::start().await;
    let receiver = Receiver::start(cluster.dir.path(), 200).await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    let ping = json!({"pingInterval": "2s", "pendingTimeout": "1h", "externalUrl": receiver.url});
    create_pinged(&cluster, "sast", 7, "sast-token", ping).await;
    let _first = Operator::start(&cluster, &[]).await;
    let _second = Operator::start(&cluster, &[]).await;

    tokio::time::sleep(Duration::from_secs(7)).await;
    let status = cluster.control("sast").await.status.unwrap();
    let last_reset = time(status.last_ping_time.as_ref());
    let created = cluster
        .control("sast")
        .await
        .metadata
        .creation_timestamp
        .unwrap()
        .0;
    let resets = last_reset.duration_since(created).as_secs() / 2;
    let pings = receiver.pings();
    assert!(resets >= 2, "at least two resets in 7 s, got {resets}");
    assert_eq!(pings.len() as i64, resets, "one ping per reset: {pings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_without_its_secret_is_still_reset_but_not_notified() {
    let cluster = Cluster::start().await;
    let receiver = Receiver::start(cluster.dir.path(), 200).await;
    let ping = json!({"pingInterval": "2s", "externalUrl": receiver.url});
    create_pinged(&cluster, "sast", 7, "missing", ping).await;
    let _operator = Operator::start(&cluster, &[]).await;

    let outcome = wait_for(Duration::from_secs(6), || async {
        cluster.control("sast").await.status?.last_ping
    })
    .await
    .expect("the reset happened and its (skipped) notification was recorded");
    assert!(outcome.error.unwrap().contains("\"missing\" not found"));
    let control = cluster.control("sast").await;
    assert!(
        control.status.as_ref().unwrap().last_ping_time.is_some(),
        "reset anyway"
    );
    assert_eq!(
        support::ready_reason(&control).as_deref(),
        Some("SecretNotFound")
    );
    assert!(receiver.pings().is_empty(), "nothing was sent unsigned");
    let warned = wait_for(Duration::from_secs(5), || async {
        let notes = cluster.event_notes("sast").await;
        notes
            .iter()
            .any(|n| n.starts_with("Not notifying") && n.contains("not found"))
            .then_some(())
    })
    .await;
    assert!(
        warned.is_some(),
        "a Warning says why: {:?}",
        cluster.event_notes("sast").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ping_outcome_never_overwrites_a_later_rounds() {
    use extctl::crd::PingOutcome;
    use extctl::kubernetes::controller::KubeStore;
    use extctl::kubernetes::lease::Leadership;
    use extctl::kubernetes::watch::{self, Scope};
    use extctl::reconciler::ControlStore;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    let (cluster, _) = cluster_with(json!({"pingInterval": "1h"})).await;
    let earlier = Timestamp::from_microsecond(1_700_000_000_123_456).unwrap();
    let later = Timestamp::from_microsecond(1_700_003_600_123_456).unwrap();
    // Another replica has carried out the later reset.
    let reset = json!({"status": {"status": "pending", "lastPingTime": MicroTime(later)}});
    cluster
        .controls()
        .patch_status("sast", &PatchParams::default(), &Patch::Merge(&reset))
        .await
        .unwrap();
    let (triggers, _) = futures::channel::mpsc::unbounded();
    let store = KubeStore {
        client: cluster.client.clone(),
        stores: watch::start(
            cluster.client.clone(),
            &Scope::Cluster,
            triggers,
            Duration::from_secs(60),
        )
        .stores,
        leadership: Leadership::Always,
    };
    let control = cluster.control("sast").await;
    let outcome = |time| PingOutcome {
        time: MicroTime(time),
        http_status: Some(200),
        error: None,
    };

    // The earlier round's ping answers late: dropped, not written over the later round.
    store
        .write_last_ping(&control, &outcome(earlier))
        .await
        .unwrap();
    let status = cluster.control("sast").await.status.unwrap();
    assert_eq!(status.last_ping, None);
    // The later round's own outcome is recorded.
    store
        .write_last_ping(&control, &outcome(later))
        .await
        .unwrap();
    let status = cluster.control("sast").await.status.unwrap();
    assert_eq!(status.last_ping, Some(outcome(later)));

    // Any other refusal, a 422 among them, is an error, not a superseded outcome.
    cluster
        .proxy
        .faults()
        .fail_next(1, Some(axum::http::Method::PATCH), "/sast/status", 422);
    let refused = store.write_last_ping(&control, &outcome(later)).await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_about_the_longest_url_the_schema_admits_is_still_an_event() {
    let cluster = Cluster::start().await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let base = format!("http://{closed_port}/");
    // 1024 characters, the schema's maxLength: with the error, the note is over the API
    // server's 1024-byte limit for an Event note.
    let url = format!("{base}{}", "p".repeat(1024 - base.len()));
    assert_eq!(url.len(), 1024);
    let ping = json!({"pingInterval": "1s", "pendingTimeout": "1s", "externalUrl": url});
    create_pinged(&cluster, "sast", 7, "sast-token", ping).await;
    let _operator = Operator::start(&cluster, &[]).await;

    let warned = wait_for(Duration::from_secs(8), || async {
        let notes = cluster.event_notes("sast").await;
        notes.into_iter().find(|n| n.starts_with("Notifying "))
    })
    .await;
    let note = warned.expect("a PingFailed Event is stored despite the long URL");
    assert!(note.len() <= 1024, "{} bytes", note.len());
    assert!(note.contains(&base), "{note}");
    assert!(note.ends_with('…'), "{note}");
}

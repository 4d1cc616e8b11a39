//! Scheduled resets to `pending`, through the real `extctl run` binary against a genuine
//! kube-apiserver (one namespace per test), with intervals of seconds. Where a claim is about
//! every change (one reset per due time, one ping per reset), the test watches the control on
//! the API server, which misses no version, rather than polling it.

mod support;

use std::time::Duration;

use extctl_core::crd::{ControlStatus, ExternalControl};
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::versions::Versions;
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
            "metadata": {"name": name, "namespace": cluster.namespace}, "spec": spec
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
async fn reported(ping: serde_json::Value, status: ControlStatus) -> (Cluster, Operator) {
    let (cluster, token) = cluster_with(ping).await;
    let operator = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    report(&operator, &token, status.as_str()).await;
    (cluster, operator)
}

/// A reset counts as on time when it happened no earlier than its due time and within 2 s
/// after it: the real binary on a busy 2-core machine (the wake-up itself is exact: the
/// schedule's unit tests, and `cargo bench --bench ping_scale` measures lateness).
#[track_caller]
fn assert_on_time(reset_at: Timestamp, due: Timestamp) {
    let late = reset_at.duration_since(due).as_secs_f64();
    assert!((0.0..2.0).contains(&late), "reset {late} s after due");
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

/// Sleeps until `at` (at once when it has passed).
async fn sleep_until(at: Timestamp) {
    let left = at.duration_since(Timestamp::now());
    tokio::time::sleep(Duration::try_from(left).unwrap_or_default()).await;
}

/// One reset, as stored: when it happened (`lastPingTime`) and the due time of the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reset {
    at: Timestamp,
    next: Timestamp,
}

/// The resets among `versions` (every version with a new `lastPingTime`), counted from `start`.
fn resets(start: &ExternalControl, versions: &[ExternalControl]) -> Vec<Reset> {
    let last_ping = |c: &ExternalControl| c.status.as_ref()?.last_ping_time.as_ref().map(|t| t.0);
    let mut previous = last_ping(start);
    let mut found = Vec::new();
    for version in versions {
        let at = last_ping(version);
        if let Some(at) = at.filter(|_| at != previous) {
            let status = version.status.as_ref().unwrap();
            found.push(Reset {
                at,
                next: time(status.next_ping_time.as_ref()),
            });
        }
        previous = at;
    }
    found
}

/// Each reset falls in its own due time's slot (`next - interval` to `next`), and successive
/// resets are exactly one interval apart in due time: none repeated, none skipped.
#[track_caller]
fn assert_one_reset_per_due_time(resets: &[Reset], interval: SignedDuration) {
    for reset in resets {
        let due = reset.next - interval;
        assert!(
            due <= reset.at && reset.at < reset.next,
            "a reset outside its due time's slot: {reset:?} in {resets:?}"
        );
    }
    for pair in resets.windows(2) {
        assert_eq!(
            pair[1].next.duration_since(pair[0].next),
            interval,
            "one reset per due time: {resets:?}"
        );
    }
}

/// The reset time a ping carries.
fn ping_time(ping: &serde_json::Value) -> Timestamp {
    let text = ping["body"]["extctl"]["resetAt"]
        .as_str()
        .expect("a ping carries its time");
    text.parse().expect("an RFC 3339 time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinged_control_is_reset_on_time_and_the_change_is_an_event() {
    let (cluster, token) = cluster_with(json!({"pingInterval": "2s"})).await;
    let operator = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let start = cluster.control("sast").await;
    let versions = Versions::after(
        &cluster,
        start.resource_version().expect("a stored control"),
    );
    report(&operator, &token, "pass").await;

    // The reset that follows the report, and the due time stored just before it.
    let (due, status) = wait_for(Duration::from_secs(10), || async {
        let versions = versions.of("sast");
        let reported = versions
            .iter()
            .position(|c| status_of(c) == Some(ControlStatus::Pass))?;
        let reset = reported
            + 1
            + versions[reported + 1..]
                .iter()
                .position(|c| status_of(c) == Some(ControlStatus::Pending))?;
        let before = versions[reset - 1].status.clone().unwrap();
        Some((
            time(before.next_ping_time.as_ref()),
            versions[reset].status.clone().unwrap(),
        ))
    })
    .await
    .expect("a reset after the report");
    assert_on_time(time(status.last_ping_time.as_ref()), due);
    // The next reset counts from the due time, not from when the reset happened.
    assert_eq!(
        time(status.next_ping_time.as_ref()).duration_since(due),
        SignedDuration::from_secs(2)
    );

    // The reset is an Event.
    let note = "Changed compliance control status from 'pass' to 'pending'";
    cluster
        .wait_event_note("sast", note, Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_schedule() {
    let (cluster, token) = cluster_with(json!({"pingInterval": "4s"})).await;
    let mut operator = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    // A round counts when the new process is up before the due time the old one left: on a
    // slow machine, the restart may take longer than what was left of the interval, and then
    // the next round is tried.
    for _ in 0..3 {
        report(&operator, &token, "pass").await;
        assert!(operator.stop().await.success());
        // As the stopped process left it (it may have reset once more before it stopped).
        let left = cluster.control("sast").await.status.unwrap();
        let due = time(left.next_ping_time.as_ref());

        operator = Operator::start(&cluster, &[]).await;
        let control = cluster.control("sast").await.status.unwrap();
        let restarted_before_due = Timestamp::now() < due;
        if restarted_before_due {
            assert_eq!(
                (control.status, &control.last_ping_time),
                (left.status, &left.last_ping_time),
                "no early reset"
            );
        }
        let reset = wait_for(Duration::from_secs(10), || async {
            let status = cluster.control("sast").await.status?;
            (status.last_ping_time != left.last_ping_time).then_some(status)
        })
        .await
        .expect("the restarted process resets the control");
        if restarted_before_due {
            assert_on_time(time(reset.last_ping_time.as_ref()), due);
            assert_eq!(
                time(reset.next_ping_time.as_ref()).duration_since(due),
                SignedDuration::from_secs(4),
                "the schedule goes on from the due time"
            );
            drop(operator);
            return;
        }
    }
    panic!("the restart never completed within what was left of an interval");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_stored_after_the_due_time_is_not_overwritten() {
    let (cluster, operator) = reported(json!({"pingInterval": "2s"}), ControlStatus::Fail).await;
    assert!(operator.stop().await.success());
    let left = cluster.control("sast").await.status.unwrap();
    let due = time(left.next_ping_time.as_ref());

    // While no reconciler runs, the due time passes and a checker's `pass` is stored (as another
    // replica's endpoint would store it).
    sleep_until(due + SignedDuration::from_secs(1)).await;
    let reported_at = Timestamp::from_microsecond(Timestamp::now().as_microsecond()).unwrap();
    let patch = json!({"status": {"status": "pass", "lastUpdateTime": reported_at.to_string()}});
    let patched = cluster
        .controls()
        .patch_status("sast", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    // Every version written from now on: the first that moves the schedule on is the
    // reconciler's decision about the missed due time.
    let versions = Versions::after(
        &cluster,
        patched.resource_version().expect("a stored control"),
    );
    let _operator = Operator::start(&cluster, &[]).await;
    let rescheduled = wait_for(Duration::from_secs(10), || async {
        let versions = versions.of("sast");
        versions.into_iter().find_map(|control| {
            let status = control.status?;
            (time(status.next_ping_time.as_ref()) > due).then_some(status)
        })
    })
    .await
    .expect("rescheduled");
    assert_eq!(
        rescheduled.status,
        Some(ControlStatus::Pass),
        "the later report stands: {rescheduled:?}"
    );
    assert_eq!(time(rescheduled.last_update_time.as_ref()), reported_at);
    assert_eq!(rescheduled.last_ping_time, left.last_ping_time, "no reset");
    // Scheduled from the missed due time, on the same grid.
    let offset = time(rescheduled.next_ping_time.as_ref()).duration_since(due);
    assert!(offset.is_positive(), "{offset:?}");
    assert_eq!(
        offset.as_micros() % 2_000_000,
        0,
        "next reset on the 2 s grid from {due}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_disabled_keeps_the_status_and_re_enabling_counts_from_then() {
    let (cluster, _operator) = reported(
        json!({"pingInterval": "1s", "pingEnabled": false}),
        ControlStatus::Pass,
    )
    .await;
    // A witness pinged every second in the same namespace: once it has been reset twice, the
    // operator has gone through two of sast's intervals, and sast must not have been reset.
    create_pinged(
        &cluster,
        "witness",
        8,
        "sast-token",
        json!({"pingInterval": "1s"}),
    )
    .await;
    let witness_reset = || async {
        let control = cluster.control("witness").await;
        control.status?.last_ping_time.map(|t| t.0)
    };
    let first = wait_for(Duration::from_secs(20), witness_reset)
        .await
        .expect("the witness is reset");
    let moved = wait_for(Duration::from_secs(20), || async {
        let last = witness_reset().await?;
        (last >= first + SignedDuration::from_secs(2)).then_some(())
    })
    .await;
    assert!(
        moved.is_some(),
        "the witness was not reset for two more intervals"
    );
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
    let scheduled = wait_for(Duration::from_secs(10), || async {
        cluster.control("sast").await.status?.next_ping_time
    })
    .await
    .expect("scheduled once enabled")
    .0;
    let seen_at = Timestamp::now();
    // One interval from the reconcile that saw the change (after enabling, before it was read
    // back), plus the control's fixed spread (less than one more interval).
    let from_enabling = scheduled.duration_since(enabled_at).as_secs_f64();
    assert!(
        from_enabling >= 3.0,
        "next reset {from_enabling} s after enabling"
    );
    let from_seen = scheduled.duration_since(seen_at).as_secs_f64();
    assert!(
        from_seen < 6.0,
        "next reset {from_seen} s after it was scheduled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_change_reschedules_at_once() {
    let (cluster, _operator) = reported(json!({"pingInterval": "1h"}), ControlStatus::Pass).await;

    let patch = json!({"spec": {"pingInterval": "2s"}});
    cluster
        .controls()
        .patch("sast", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    // Within the new interval and its spread of creation, not an hour later.
    let control = wait_status(&cluster, ControlStatus::Pending, Duration::from_secs(10)).await;
    let status = control.status.unwrap();
    assert!(status.last_ping_time.is_some(), "{status:?}");
    assert_eq!(status.ping_interval.unwrap().0, "2s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Both replicas reconcile (no leader election: the Lease would keep the second idle), so
/// each reset races: the status writes' resourceVersion precondition alone makes it one.
async fn two_reconciling_replicas_reset_once_per_due_time() {
    let (cluster, token) = cluster_with(json!({"pingInterval": "2s"})).await;
    let both = ["--leader-election=false"];
    let first = Operator::start(&cluster, &both).await;
    let _second = Operator::start(&cluster, &both).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    report(&first, &token, "pass").await;

    // Every version over four resets: each due time yields exactly one reset, i.e. one new
    // lastPingTime, stored with the next due time one interval on.
    let start = cluster.control("sast").await;
    let versions = Versions::after(
        &cluster,
        start.resource_version().expect("a stored control"),
    );
    let resets = wait_for(Duration::from_secs(20), || async {
        let resets = resets(&start, &versions.of("sast"));
        (resets.len() >= 4).then_some(resets)
    })
    .await
    .unwrap_or_else(|| panic!("four resets: {:?}", resets(&start, &versions.of("sast"))));
    assert_one_reset_per_due_time(&resets, SignedDuration::from_secs(2));
    // The race was run: a write lost to the other replica's (409) at least once.
    let lost = cluster
        .proxy
        .requests()
        .iter()
        .filter(|r| r.method == axum::http::Method::PATCH && r.path.ends_with("/sast/status"))
        .filter(|r| r.code == 409)
        .count();
    assert!(lost > 0, "the two replicas never raced for a reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_ping_then_silence_times_out_to_fail() {
    let scratch = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(scratch.path(), 200).await;
    let ping = json!({"pingInterval": "4s", "pendingTimeout": "1s", "externalUrl": receiver.url});
    let (cluster, _operator) = reported(ping, ControlStatus::Pass).await;

    let failed = wait_status(&cluster, ControlStatus::Fail, Duration::from_secs(12)).await;
    let status = failed.status.unwrap();
    let reset_at = time(status.last_ping_time.as_ref());
    let outcome = status.last_ping.as_ref().expect("the ping's outcome");
    assert_eq!((outcome.time.0, outcome.http_status), (reset_at, Some(200)));
    let failed_at = time(status.last_update_time.as_ref());
    let waited = failed_at.duration_since(reset_at).as_secs_f64();
    assert!(waited >= 1.0, "failed {waited} s after the reset");

    // The round that failed was pinged once (a reset before the report has its own ping).
    let pings = receiver.pings();
    let this_round: Vec<_> = pings.iter().filter(|p| ping_time(p) == reset_at).collect();
    assert_eq!(this_round.len(), 1, "{pings:?}");
    let ping = this_round[0];
    assert_eq!(ping["valid"], true, "signature verified independently");
    assert_eq!(ping["content_type"], "application/json");
    // GitLab's shape: the project, then the status record (what a GitLab checker reads).
    let record = &ping["body"]["project_control_compliance_status"];
    assert_eq!(ping["body"]["id"], 42);
    assert_eq!(record["compliance_requirements_control_id"], 7);
    assert_eq!(record["project_id"], 42);
    assert_eq!(record["status"], "pending");
    assert_eq!(ping["body"]["extctl"]["name"], "sast");
    assert_eq!(
        ping["body"]["extctl"]["namespace"],
        cluster.namespace.as_str()
    );

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

/// For control `name`: waits for the outcome of a round (a `lastPing` of the reset in
/// `lastPingTime`, never an earlier round's), and checks that round once its pending timeout
/// (1 s) is 1 s past: still `pending`, that outcome kept. A round that ends before it could be
/// checked (a slow machine) hands over to the next.
async fn a_round_stays_pending(cluster: &Cluster, name: &str) -> extctl_core::crd::PingOutcome {
    for _ in 0..3 {
        let (reset_at, outcome) = wait_for(Duration::from_secs(10), || async {
            let status = cluster.control(name).await.status?;
            let reset_at = status.last_ping_time?.0;
            let outcome = status.last_ping.filter(|o| o.time.0 == reset_at)?;
            Some((reset_at, outcome))
        })
        .await
        .unwrap_or_else(|| panic!("{name}: no ping outcome recorded for its reset"));
        assert!(!outcome.accepted(), "{name}: {outcome:?}");

        // Past the pending timeout: nothing to wait for, nothing must happen.
        sleep_until(reset_at + SignedDuration::from_secs(2)).await;
        let status = cluster.control(name).await.status.unwrap();
        if status.last_ping_time.as_ref().map(|t| t.0) != Some(reset_at) {
            continue;
        }
        assert_eq!(
            status.status,
            Some(ControlStatus::Pending),
            "{name}: {status:?}"
        );
        assert_eq!(status.last_ping.as_ref(), Some(&outcome), "{name}");
        return *outcome;
    }
    panic!("{name}: three rounds ended before each could be checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_or_no_answer_leaves_the_status_pending() {
    let cluster = Cluster::start().await;
    let receiver = Receiver::start(cluster.dir.path(), 500).await;
    let (_held, closed_port) = support::closed_port();
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
            json!({"pingInterval": "3s", "pendingTimeout": "1s", "externalUrl": url}),
        )
        .await;
    }
    // Without retries: each round's one attempt is what is judged (tests/outbound.rs retries).
    let _operator = Operator::start(&cluster, &["--outbound-retries", "0"]).await;

    let five_hundred = a_round_stays_pending(&cluster, "five-hundred").await;
    assert_eq!(five_hundred.http_status, Some(500));
    let unreachable = a_round_stays_pending(&cluster, "unreachable").await;
    assert_eq!(unreachable.http_status, None);
    assert!(unreachable.error.is_some_and(|e| !e.is_empty()));
    assert!(receiver.pings().iter().all(|p| p["valid"] == true));
    for (name, why) in [
        ("five-hundred", "failed after 1 attempt(s): HTTP 500"),
        ("unreachable", "failed after 1 attempt(s): "),
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
/// Both replicas reconcile (no leader election), so both try every reset: only the one whose
/// write won pings.
async fn two_reconciling_replicas_send_one_ping_per_reset() {
    let cluster = Cluster::start().await;
    let receiver = Receiver::start(cluster.dir.path(), 200).await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    let ping = json!({"pingInterval": "2s", "pendingTimeout": "1h", "externalUrl": receiver.url});
    create_pinged(&cluster, "sast", 7, "sast-token", ping).await;
    // Every version from creation on: every reset either replica stores.
    let start = cluster.control("sast").await;
    let versions = Versions::after(
        &cluster,
        start.resource_version().expect("a stored control"),
    );
    let both = ["--leader-election=false"];
    let _first = Operator::start(&cluster, &both).await;
    let _second = Operator::start(&cluster, &both).await;

    let resets = wait_for(Duration::from_secs(20), || async {
        let resets = resets(&start, &versions.of("sast"));
        (resets.len() >= 3).then_some(resets)
    })
    .await
    .unwrap_or_else(|| panic!("three resets: {:?}", resets(&start, &versions.of("sast"))));
    assert_one_reset_per_due_time(&resets, SignedDuration::from_secs(2));
    // Each reset's ping, sent after it was stored, arrives.
    let reset_times: Vec<Timestamp> = resets.iter().map(|r| r.at).collect();
    let pings = wait_for(Duration::from_secs(10), || async {
        let pings = receiver.pings();
        let times: Vec<_> = pings.iter().map(ping_time).collect();
        reset_times
            .iter()
            .all(|at| times.contains(at))
            .then_some(pings)
    })
    .await
    .unwrap_or_else(|| panic!("a ping per reset {reset_times:?}: {:?}", receiver.pings()));
    // Up to the last reset watched: one ping per reset, none for anything else.
    let last = *reset_times.last().unwrap();
    let mut pinged: Vec<Timestamp> = pings.iter().map(ping_time).filter(|t| *t <= last).collect();
    pinged.sort();
    assert_eq!(pinged, reset_times, "one ping per reset: {pings:?}");
    assert!(pings.iter().all(|p| p["valid"] == true), "{pings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_without_its_secret_is_still_reset_but_not_notified() {
    let cluster = Cluster::start().await;
    let receiver = Receiver::start(cluster.dir.path(), 200).await;
    let ping = json!({"pingInterval": "2s", "externalUrl": receiver.url});
    create_pinged(&cluster, "sast", 7, "missing", ping).await;
    let _operator = Operator::start(&cluster, &[]).await;

    let outcome = wait_for(Duration::from_secs(10), || async {
        cluster.control("sast").await.status?.last_ping
    })
    .await
    .expect("the reset happened and its (skipped) notification was recorded");
    assert!(
        outcome
            .error
            .as_deref()
            .is_some_and(|e| e.contains(r#""missing" not found"#)),
        "{outcome:?}"
    );
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
    use extctl::KubeControlStore;
    use extctl::Leadership;
    use extctl::{Scope, watch};
    use extctl_core::crd::PingOutcome;
    use extctl_core::ports::ControlStore;
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
    // The store writes through the proxy, as `extctl run` does, so that a fault can be
    // injected into its writes.
    let kubeconfig = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    let client = support::apiserver::client_for(&kubeconfig).await;
    let (triggers, _) = futures::channel::mpsc::unbounded();
    let store = KubeControlStore {
        client: client.clone(),
        reflectors: watch::start(
            client,
            &Scope::Namespace(cluster.namespace.clone()),
            false,
            triggers,
            futures::channel::mpsc::unbounded().0,
            Duration::from_secs(60),
            Default::default(),
        )
        .reflectors,
        leadership: Leadership::Always,
    };
    let control = cluster.control("sast").await;
    let outcome = |time| PingOutcome {
        time: MicroTime(time),
        http_status: Some(200),
        error: None,
        attempts: Some(1),
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
    assert_eq!(status.last_ping, Some(Box::new(outcome(later))));

    // Any other refusal, a 422 among them, is an error, not a superseded outcome.
    cluster
        .proxy
        .faults()
        .fail_next(1, Some(axum::http::Method::PATCH), "/sast/status", 422);
    let refused = store.write_last_ping(&control, &outcome(later)).await;
    assert!(refused.is_err(), "{refused:?}");
    let patches = cluster.proxy.requests();
    let patches: Vec<_> = patches
        .iter()
        .filter(|r| r.method == axum::http::Method::PATCH)
        .map(|r| r.code)
        .collect();
    // The superseded outcome's failed test (the real server's 422), the recorded one, the
    // injected refusal.
    assert_eq!(patches, [422, 200, 422], "{:?}", cluster.proxy.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_about_the_longest_url_the_schema_admits_is_still_an_event() {
    let cluster = Cluster::start().await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    let (_held, closed_port) = support::closed_port();
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

/// A checker written for GitLab from GitLab's protocol only (`gitlab_ping_checker.py`) answers
/// a ping unchanged: it verifies `X-GitLab-Signature`, reads the project from
/// `path_with_namespace` (or `id` when there is no path) and the control from
/// `project_control_compliance_status`, and reports `pass` through the status API, the path
/// URL-encoded as python-gitlab sends it. Each control goes pending → pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_written_for_gitlab_answers_the_ping_unchanged() {
    let cluster = Cluster::start().await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    let operator = Operator::start(&cluster, &[]).await;
    let gitlab_checker = support::PythonServer::start(
        "gitlab_ping_checker.py",
        cluster.dir.path(),
        TOKEN,
        &["--api-url", &operator.url],
    )
    .await;
    let url = format!("{}/ping", gitlab_checker.base_url);
    // An hour apart: the only ping of the test is the re-check asked for below.
    let by_path =
        json!({"pingInterval": "1h", "externalUrl": url, "projectPath": "group/sub/my.project"});
    create_pinged(&cluster, "by-path", 7, "sast-token", by_path).await;
    create_pinged(
        &cluster,
        "by-id",
        8,
        "sast-token",
        json!({"pingInterval": "1h", "externalUrl": url}),
    )
    .await;
    for name in ["by-path", "by-id"] {
        let ready = cluster.wait_ready_reason(name, "Ready").await;
        assert_eq!(status_of(&ready), Some(ControlStatus::Pending), "{name}");
        let annotation = json!({"metadata": {"annotations": {
            extctl_core::crd::REQUESTED_AT_ANNOTATION: Timestamp::now().to_string()
        }}});
        cluster
            .controls()
            .patch(name, &PatchParams::default(), &Patch::Merge(&annotation))
            .await
            .unwrap();
    }

    for (name, project, control) in [
        ("by-path", json!("group/sub/my.project"), 7),
        ("by-id", json!(42), 8),
    ] {
        let passed = wait_for(Duration::from_secs(20), || async {
            let control = cluster.control(name).await;
            (status_of(&control) == Some(ControlStatus::Pass)).then_some(control)
        })
        .await
        .unwrap_or_else(|| panic!("{name} never passed: {:?}", gitlab_checker.records()));
        let status = passed.status.unwrap();
        let reset_at = time(status.last_ping_time.as_ref());
        assert!(
            time(status.last_update_time.as_ref()) > reset_at,
            "{name}: passed after the reset"
        );
        let seen = support::assert_gitlab_checker_passed(&gitlab_checker, control, &project).await;
        assert_eq!(seen.len(), 1, "{name}: one ping: {seen:?}");
        let seen = &seen[0];
        // GitLab's time format: milliseconds, `Z`; the reset's instant.
        let updated_at = seen["updated_at"].as_str().unwrap();
        assert_eq!(
            updated_at.len(),
            "2026-01-15T10:00:00.123Z".len(),
            "{updated_at}"
        );
        let updated_at: Timestamp = updated_at.parse().unwrap();
        assert!(
            reset_at.duration_since(updated_at) < SignedDuration::from_millis(1),
            "{name}"
        );
    }
}

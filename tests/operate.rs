//! What a cluster admin runs and watches, through the real binaries: `/metrics` read by the
//! Prometheus project's own OpenMetrics parser, one reconciling replica elected with a Lease,
//! and the audit trail (`status.history` and one JSON log line per change).

mod support;

use std::time::{Duration, Instant};

use extctl::crd::ExternalControl;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{Value, json};
use support::scrape::Scrape;
use support::{Cluster, Dev, Operator, PingReceiver, TOKEN, checker, wait_for};

fn report_args<'a>(token_file: &'a str, status: &'a str) -> [&'a str; 8] {
    [
        "--project",
        "42",
        "--control",
        "7",
        "--token-file",
        token_file,
        "--status",
        status,
    ]
}

async fn report(url: &str, token_file: &str, status: &str) -> support::Answer {
    checker(url, &report_args(token_file, status)).await
}

/// Control `name` (project 42) pinged every `interval`, notifying `url`.
async fn create_pinged(cluster: &Cluster, name: &str, control_id: i64, interval: &str, url: &str) {
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"projectId": 42, "controlId": control_id, "secretRef": {"name": "token"},
                     "pingInterval": interval, "pendingTimeout": "1h", "externalUrl": url}
        }))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_metrics_count_calls_and_transitions_by_answer() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let (token, wrong) = (token.to_str().unwrap(), wrong.to_str().unwrap());
    let dev = Dev::start(&["--control", "42:7", "--token-file", token]).await;

    let before = Scrape::of(&dev.metrics_url).await;
    assert_eq!(
        before.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert_eq!(before.value("extctl_ready"), 1.0);
    assert_eq!(before.value("extctl_leader"), 1.0);
    assert_eq!(
        before.value(r#"extctl_controls{namespace="default",status="pending"}"#),
        1.0
    );
    assert_eq!(
        before.value(r#"extctl_controls_ready{namespace="default",ready="true"}"#),
        1.0
    );

    for status in ["pass", "fail"] {
        assert_eq!(report(&dev.url, token, status).await.code, 200);
    }
    let refused = report(&dev.url, wrong, "pass").await;
    assert_eq!(refused.error(), "Invalid signature");
    let unknown = checker(
        &dev.url,
        &["--project", "42", "--control", "8", "--token-file", token],
    )
    .await;
    assert_eq!(unknown.code, 404);

    let after = Scrape::of(&dev.metrics_url).await;
    let calls = |result: &str| format!(r#"extctl_status_calls_total{{result="{result}"}}"#);
    assert_eq!(after.delta(&before, &calls("stored")), 2.0);
    assert_eq!(after.delta(&before, &calls("invalid_signature")), 1.0);
    assert_eq!(after.delta(&before, &calls("control_not_found")), 1.0);
    assert_eq!(
        after.delta(&before, "extctl_status_call_duration_seconds_count"),
        4.0
    );
    let transition = |from: &str, to: &str| {
        format!(r#"extctl_status_transitions_total{{cause="reported",from="{from}",to="{to}"}}"#)
    };
    assert_eq!(after.delta(&before, &transition("pending", "pass")), 1.0);
    assert_eq!(after.delta(&before, &transition("pass", "fail")), 1.0);
    assert_eq!(
        after.value(r#"extctl_controls{namespace="default",status="fail"}"#),
        1.0
    );
    assert!(
        !after
            .samples
            .contains_key(r#"extctl_controls{namespace="default",status="pending"}"#)
    );
    // Bounded labels: no path, id, nonce or token ever becomes a label value.
    for key in after.samples.keys() {
        assert!(!key.contains("42") && !key.contains(TOKEN), "{key}");
    }
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_metrics_count_resets_pings_api_requests_and_conflicts() {
    let cluster = Cluster::start().await;
    let receiver = PingReceiver::start(cluster.dir.path(), 500).await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    create_pinged(&cluster, "sast", 7, "2s", &receiver.url).await;
    let operator = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let token = cluster.token_file("checker", TOKEN).display().to_string();

    // A reset and its refused ping (the receiver answers 500).
    let scraped = wait_for(Duration::from_secs(8), || async {
        let scrape = Scrape::of(&operator.metrics_url).await;
        (scrape.value(r#"extctl_pings_total{outcome="refused"}"#) >= 1.0).then_some(scrape)
    })
    .await
    .expect("a refused ping is counted");
    assert!(scraped.value("extctl_resets_total") >= 1.0);
    assert!(scraped.value("extctl_reset_lateness_seconds_count") >= 1.0);
    assert!(scraped.value("extctl_reconcile_duration_seconds_count") >= 1.0);
    let ok = |verb: &str| format!(r#"extctl_kube_requests_total{{outcome="ok",verb="{verb}"}}"#);
    for verb in ["get", "watch", "patch", "create"] {
        assert!(
            scraped.value(&ok(verb)) >= 1.0,
            "{verb}: {:?}",
            scraped.samples
        );
    }
    assert_eq!(scraped.value("extctl_leader"), 1.0);
    assert_eq!(scraped.value("extctl_ready"), 1.0);
    assert_eq!(scraped.families["extctl_kube_requests"], "counter");
    assert_eq!(
        scraped.families["extctl_reset_lateness_seconds"],
        "histogram"
    );

    // A conflict on the status write: retried, stored, and counted once as a conflict.
    let before = Scrape::of(&operator.metrics_url).await;
    let faults = cluster.proxy.faults();
    faults.fail_next(
        1,
        Some(axum::http::Method::PATCH),
        "/externalcontrols/sast/status",
        409,
    );
    assert_eq!(report(&operator.url, &token, "pass").await.code, 200);
    let after = Scrape::of(&operator.metrics_url).await;
    let conflict = r#"extctl_kube_requests_total{outcome="conflict",verb="patch"}"#;
    assert_eq!(after.delta(&before, conflict), 1.0);
    assert_eq!(
        after.delta(&before, r#"extctl_status_calls_total{result="stored"}"#),
        1.0
    );
    operator.stop().await;
}

/// The Lease's holder, once there is one.
async fn holder(cluster: &Cluster) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "default");
    let lease = leases.get_opt("extctl").await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Status writes (conflicts included), the conflicts among them, and resets, over every
/// control, while `run` runs.
async fn writes_and_resets(
    cluster: &Cluster,
    names: &[String],
    run: Duration,
) -> (usize, usize, i64) {
    let last_pings = || async {
        let mut times = Vec::new();
        for name in names {
            let status = cluster.control(name).await.status.unwrap_or_default();
            times.push(status.last_ping_time.map(|t| t.0));
        }
        times
    };
    let start = last_pings().await;
    cluster.proxy.reset_requests();
    tokio::time::sleep(run).await;
    let writes: Vec<_> = cluster
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.is_write() && r.path.ends_with("/status"))
        .collect();
    let conflicts = writes.iter().filter(|r| r.code == 409).count();
    let end = last_pings().await;
    // Every 2 s: the resets in between are the whole intervals between the last resets.
    let resets = start
        .iter()
        .zip(&end)
        .map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => (b.duration_since(*a).as_secs_f64() / 2.0).round() as i64,
            _ => 0,
        })
        .sum();
    (writes.len(), conflicts, resets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_reconciles_with_the_write_load_of_one_and_a_standby_takes_over() {
    let cluster = Cluster::start().await;
    let receiver = PingReceiver::start(cluster.dir.path(), 200).await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    let names: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        create_pinged(&cluster, name, 100 + i as i64, "2s", &receiver.url).await;
    }
    let lease = ["--lease-duration", "3s"];
    let a = Operator::start(
        &cluster,
        &[&lease[..], &["--instance", "replica-a"]].concat(),
    )
    .await;
    let b = Operator::start(
        &cluster,
        &[&lease[..], &["--instance", "replica-b"]].concat(),
    )
    .await;
    let leader = wait_for(Duration::from_secs(5), || holder(&cluster))
        .await
        .expect("a replica takes the Lease");
    for name in &names {
        cluster.wait_ready_reason(name, "Ready").await;
    }
    // Past the first (spread) resets: every control is on its 2 s grid.
    wait_for(Duration::from_secs(10), || async {
        for name in &names {
            cluster.control(name).await.status?.last_ping_time?;
        }
        Some(())
    })
    .await
    .expect("every control was reset once");

    // With one reconciler, a reset costs its write plus its lastPing write, as with one
    // replica, and no write conflicts. A window cuts at most one reset's pair per control (a
    // lastPing write of a reset just before it, or a reset whose lastPing write is just after).
    let (writes, conflicts, resets) =
        writes_and_resets(&cluster, &names, Duration::from_secs(6)).await;
    assert!(
        resets >= 12,
        "6 controls, 6 s, 2 s interval: {resets} resets"
    );
    assert_eq!(conflicts, 0, "the standby wrote");
    let edges = names.len() as i64;
    assert!(
        (writes as i64 - 2 * resets).abs() <= edges,
        "{writes} status writes for {resets} resets"
    );
    // One ping per reset: the pings carry the reset's time, none repeats.
    let pings = receiver.pings();
    let mut rounds: Vec<(String, String)> = pings
        .iter()
        .map(|p| {
            (
                p["body"]["control"]["resource"].to_string(),
                p["body"]["time"].to_string(),
            )
        })
        .collect();
    let count = rounds.len();
    rounds.sort();
    rounds.dedup();
    assert_eq!(rounds.len(), count, "a reset was pinged twice: {pings:?}");

    // Kill the leader: the standby takes the Lease and the resets go on within the lease
    // duration (3 s) and a retry period.
    let (leader_process, standby) = if leader == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    let killed_at = Instant::now();
    leader_process.kill().await;
    let successor = wait_for(Duration::from_secs(8), || async {
        holder(&cluster).await.filter(|h| *h != leader)
    })
    .await
    .expect("the standby takes over");
    let takeover = killed_at.elapsed();
    assert!(takeover < Duration::from_millis(3900), "took {takeover:?}");
    let (_, _, resets) = writes_and_resets(&cluster, &names, Duration::from_secs(4)).await;
    assert!(resets >= 6, "the successor {successor} resets: {resets}");
    let metrics = Scrape::of(&standby.metrics_url).await;
    assert_eq!(metrics.value("extctl_leader"), 1.0);
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_reconciling_before_its_lease_could_pass_on() {
    let cluster = Cluster::start().await;
    let receiver = PingReceiver::start(cluster.dir.path(), 200).await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    create_pinged(&cluster, "sast", 7, "2s", &receiver.url).await;
    let args = ["--lease-duration", "3s", "--instance", "replica-a"];
    let operator = Operator::start(&cluster, &args).await;
    wait_for(Duration::from_secs(5), || holder(&cluster))
        .await
        .expect("it takes the Lease");
    // Read straight off /metrics (the parser's process start would blur the timing).
    let leading = |value: u8| {
        let url = operator.metrics_url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|line| line == format!("extctl_leader {value}"))
                .then_some(())
        }
    };
    wait_for(Duration::from_secs(5), || leading(1))
        .await
        .expect("leading");

    // The API server refuses every Lease write (kube's client retries the 503s itself).
    let faults = cluster.proxy.faults();
    faults.fail_next(100_000, Some(axum::http::Method::PUT), "/leases/", 503);
    let cut = Instant::now();
    wait_for(Duration::from_secs(6), || leading(0))
        .await
        .expect("it stops leading");
    let stepped_down = cut.elapsed();
    // Its last renewal was before the cut, so another replica may take the Lease no sooner than
    // 3 s (the lease duration) after the cut: it must have stopped by then. (It stops at the
    // renew deadline, 2 s after its last renewal, noticed within a retry period or two.)
    assert!(stepped_down < Duration::from_secs(3), "{stepped_down:?}");
    cluster.proxy.reset_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes: Vec<_> = cluster
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.is_write() && r.path.ends_with("/status"))
        .collect();
    assert!(
        writes.is_empty(),
        "reconciled while not leading: {writes:?}"
    );

    // Back to normal: it leads again and resets resume.
    faults.clear();
    wait_for(Duration::from_secs(6), || leading(1))
        .await
        .expect("leading again");
    let before = cluster.control("sast").await.status.unwrap().last_ping_time;
    let resumed = wait_for(Duration::from_secs(5), || async {
        let now = cluster.control("sast").await.status?.last_ping_time;
        (now != before).then_some(())
    })
    .await;
    assert!(resumed.is_some(), "resets resume once it leads again");
    operator.stop().await;
}

/// Log lines of `operator` that are audit records, parsed.
fn audit_lines(operator: &Operator) -> Vec<Value> {
    operator
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "extctl::audit")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_kept_in_status_history_and_logged_as_one_audit_line() {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "sast", "namespace": "default"},
            "spec": {"projectId": 42, "controlId": 7, "secretRef": {"name": "token"},
                     "pingInterval": "1h"}
        }))
        .await;
    let args = [
        "--log-format",
        "json",
        "--status-history",
        "2",
        "--instance",
        "pod-1",
    ];
    let operator = Operator::start(&cluster, &args).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let token = cluster.token_file("checker", TOKEN).display().to_string();
    for status in ["pass", "pass", "fail", "pass"] {
        assert_eq!(report(&operator.url, &token, status).await.code, 200);
    }

    // Three changes (pass twice in a row is one), of which the last two are kept.
    let control: ExternalControl = cluster.control("sast").await;
    let history = serde_json::to_value(&control.status.unwrap().history).unwrap();
    let shape: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["from"].clone(),
                h["to"].clone(),
                h["cause"].clone(),
                h["replica"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (
                json!("pass"),
                json!("fail"),
                json!("StatusReported"),
                json!("pod-1")
            ),
            (
                json!("fail"),
                json!("pass"),
                json!("StatusReported"),
                json!("pod-1")
            ),
        ]
    );

    let audit = wait_for(Duration::from_secs(5), || async {
        let lines = audit_lines(&operator);
        (lines.len() == 3).then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("three audit lines, logs:\n{}", operator.logs()));
    let fields: Vec<_> = audit.iter().map(|line| line["fields"].clone()).collect();
    assert_eq!(fields[0]["from"], "pending");
    assert_eq!(fields[0]["to"], "pass");
    assert_eq!(
        fields[0]["message"],
        "Changed compliance control status from 'pending' to 'pass'"
    );
    for (line, kept) in fields[1..].iter().zip(history.as_array().unwrap()) {
        for key in ["from", "to", "cause", "replica"] {
            assert_eq!(line[key], kept[key], "{key} in {line}");
        }
        // The same instant as the history entry (both RFC 3339, microseconds).
        let time = |v: &Value| v.as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
        assert_eq!(time(&line["time"]), time(&kept["time"]));
        assert_eq!(line["namespace"], "default");
        assert_eq!(line["name"], "sast");
        assert_eq!(line["project_id"], 42);
        assert_eq!(line["control_id"], 7);
    }
    assert!(!operator.logs().contains(TOKEN), "a token reached the logs");
    operator.stop().await;
}

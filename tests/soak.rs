//! A bounded soak through the real binaries: many controls reset every 2 s, concurrent
//! independent checkers (`tests/support/soak_checker.py`) calling two `extctl run` replicas,
//! and API faults injected throughout (503s and 409s on status writes, dropped watches,
//! `410 Gone`, latency, failed Lease renewals). At the end every accepted answer is in the
//! store, in order, with its Event, nothing refused was stored, and memory stayed flat.
//!
//! CI runs it for 12 s; `EXTCTL_SOAK_SECONDS=600 cargo test --test soak` soaks for longer.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::Method;
use extctl::core::report::Cause;
use extctl::crd::{ControlStatus, ExternalControl};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use support::{Cluster, Operator, TOKEN, python_json};

const CONTROLS: i64 = 12;

fn soak_seconds() -> f64 {
    std::env::var("EXTCTL_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12.0)
}

/// Runs the checkers for `seconds`; every call they made.
async fn run_checkers(urls: &str, token_file: &str, seconds: f64) -> Vec<Value> {
    let controls: Vec<String> = (0..CONTROLS).map(|i| (100 + i).to_string()).collect();
    let (controls, seconds) = (controls.join(","), seconds.to_string());
    let args = [
        "--urls",
        urls,
        "--token-file",
        token_file,
        "--project",
        "42",
        "--controls",
        &controls,
        "--threads",
        "4",
        "--seconds",
        &seconds,
    ];
    let calls = python_json("soak_checker.py", &args).await;
    calls.as_array().expect("a list of calls").clone()
}

/// Faults, one every 700 ms in turn, until `stop` fires.
async fn inject_faults(cluster: &Cluster, mut stop: tokio::sync::oneshot::Receiver<()>) -> usize {
    let faults = cluster.proxy.faults();
    let mut injected = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return injected,
            () = tokio::time::sleep(Duration::from_millis(700)) => {}
        }
        faults.set_latency(Duration::ZERO);
        match injected % 6 {
            0 => faults.fail_next(2, Some(Method::PATCH), "/status", 503),
            1 => faults.fail_next(3, Some(Method::PATCH), "/status", 409),
            2 => faults.drop_watches(),
            3 => faults.set_latency(Duration::from_millis(30)),
            4 => faults.compact(),
            _ => faults.fail_next(1, Some(Method::PUT), "/leases/", 503),
        }
        injected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_answers_equal_stored_statuses_and_events_under_faults() {
    let seconds = soak_seconds();
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    for i in 0..CONTROLS {
        cluster
            .create_control_from(json!({
                "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
                "metadata": {"name": format!("c{}", 100 + i), "namespace": "default"},
                "spec": {"projectId": 42, "controlId": 100 + i, "secretRef": {"name": "token"},
                         "pingInterval": "2s"}
            }))
            .await;
    }
    let args = ["--lease-duration", "3s", "--status-history", "100"];
    let a = Operator::start(&cluster, &args).await;
    let b = Operator::start(&cluster, &args).await;
    for i in 0..CONTROLS {
        cluster
            .wait_ready_reason(&format!("c{}", 100 + i), "Ready")
            .await;
    }
    let token = cluster.token_file("checker", TOKEN).display().to_string();

    let (stop_faults, faults_stop) = tokio::sync::oneshot::channel();
    let urls = format!("{},{}", a.url, b.url);
    let checkers = run_checkers(&urls, &token, seconds);
    let warm = async {
        tokio::time::sleep(Duration::from_secs_f64(seconds / 3.0)).await;
        (a.rss_kib(), b.rss_kib())
    };
    let (calls, (warm_a, warm_b), injected) = tokio::join!(
        async {
            let calls = checkers.await;
            let _ = stop_faults.send(());
            calls
        },
        warm,
        inject_faults(&cluster, faults_stop),
    );
    cluster.proxy.faults().set_latency(Duration::ZERO);
    assert!(injected >= 3, "{injected} faults injected");

    // Only 200 (stored, with the status sent) or 503 (nothing stored) are right answers.
    let mut accepted: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for call in &calls {
        match call["code"].as_u64() {
            Some(200) if call["error"].is_null() => accepted
                .entry(call["control"].as_i64().unwrap())
                .or_default()
                .push(call["status"].as_str().unwrap().to_owned()),
            Some(503) => {}
            _ => panic!("unexpected answer: {call}"),
        }
    }
    let total: usize = accepted.values().map(Vec::len).sum();
    eprintln!(
        "soak: {seconds} s, {} calls, {total} accepted, {injected} faults injected",
        calls.len()
    );
    assert!(
        total as f64 >= seconds * 10.0,
        "only {total} calls accepted"
    );

    // Events are published after the write, in the background.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let events = events.list(&ListParams::default()).await.unwrap().items;
    for (control_id, statuses) in &accepted {
        let name = format!("c{control_id}");
        let control: ExternalControl = cluster.control(&name).await;
        let status = control.status.unwrap();
        // Every accepted report is in the history, in order, and nothing else was reported.
        let reported: Vec<String> = status
            .history
            .iter()
            .filter(|entry| entry.cause == Cause::Reported)
            .map(|entry| entry.to.to_string())
            .collect();
        assert!(
            reported.len() <= statuses.len(),
            "{name}: stored more than accepted"
        );
        let tail = &statuses[statuses.len() - reported.len()..];
        assert_eq!(
            reported, tail,
            "{name}: stored reports differ from accepted answers"
        );
        if status.history.len() < 100 {
            assert_eq!(
                reported.len(),
                statuses.len(),
                "{name}: an accepted report is missing"
            );
        }
        let last = status.history.last().expect("history");
        assert_eq!(
            status.status,
            Some(last.to),
            "{name}: status is its last change"
        );
        // One Event per stored change, exactly.
        let reasons = |reason: &str| {
            events
                .iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&name))
                .filter(|e| e.reason.as_deref() == Some(reason))
                .count()
        };
        assert_eq!(reasons("StatusReported"), statuses.len(), "{name}: Events");
        if status.history.len() < 100 {
            let resets = status
                .history
                .iter()
                .filter(|e| e.cause == Cause::PingReset);
            assert_eq!(reasons("PingReset"), resets.count(), "{name}: reset Events");
            assert!(
                status.history.len() > statuses.len(),
                "{name}: no reset in {seconds} s"
            );
        }
        // The schedule survived the faults: no reset is overdue.
        let next = status.next_ping_time.expect("scheduled").0;
        let overdue = jiff::Timestamp::now().duration_since(next).as_secs_f64();
        assert!(overdue < 3.0, "{name}: reset overdue by {overdue} s");
        assert_ne!(status.status, None::<ControlStatus>);
    }

    // Memory stays flat once warm (20% and 4 MiB of slack for allocator noise).
    for (warm, now) in [(warm_a, a.rss_kib()), (warm_b, b.rss_kib())] {
        assert!(
            now <= warm + warm / 5 + 4096,
            "RSS grew from {warm} KiB to {now} KiB"
        );
    }
    a.stop().await;
    b.stop().await;
}

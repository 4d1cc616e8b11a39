//! What a cluster admin runs and watches, through the real binaries against a genuine
//! kube-apiserver (one namespace per test): `/metrics` read by the Prometheus project's own
//! OpenMetrics parser, one reconciling replica elected with a Lease, two reconcilers without
//! one kept apart by the API server's resourceVersion preconditions alone, and the audit trail
//! (`status.history` and one JSON log line per change).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::http::Method;
use extctl_core::crd::{ControlStatus, ExternalControl};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::apiserver::RequestRecord;
use support::scrape::Scrape;
use support::versions::Versions;
use support::{ADMIN_TOKEN, Cluster, Dev, Operator, PingReceiver, Proxy, TOKEN, checker, wait_for};

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
            "metadata": {"name": name, "namespace": cluster.namespace},
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
        before.value(r#"extctl_controls_ready{namespace="default",ready="true",reason="Ready"}"#),
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
    // No retries: a refused ping is counted after its one attempt (with the default three,
    // 1 s, 2 s and 4 s apart, after the first reset's spread of up to one more interval, it
    // could take longer than this test waited).
    let operator = Operator::start(&cluster, &["--outbound-retries", "0"]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let token = cluster.token_file("checker", TOKEN).display().to_string();
    // Transparent huge pages off for extctl (src/main.rs); on for this test's own process, so
    // the 0 is extctl's doing.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(own.contains("THP_enabled:\t1"), "{own}");
    assert_eq!(operator.process_status("THP_enabled"), "0");

    // A reset and its refused ping (the receiver answers 500): due within 4 s of creation.
    let scraped = wait_for(Duration::from_secs(20), || async {
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

    // A conflict on the status write: retried, stored, and counted once as a conflict. On a
    // control pinged hourly, which the reconciler leaves alone meanwhile (`sast`'s resets
    // would take the injected conflict, or meet the report's write for real).
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "hourly", "namespace": cluster.namespace},
            "spec": {"projectId": 42, "controlId": 8, "secretRef": {"name": "token"},
                     "pingInterval": "1h"}
        }))
        .await;
    cluster.wait_ready_reason("hourly", "Ready").await;
    // The conflicts the API server answered (through the proxy) while the scrapes ran bound
    // what the counter may add: the reconciler, reading from a cache, may meet one of its own.
    let conflicts_logged = |from: usize, to: usize| {
        let requests = cluster.proxy.requests();
        let patches = requests[from..to]
            .iter()
            .filter(|r| r.method == Method::PATCH);
        patches.filter(|r| r.code == 409).count() as f64
    };
    let logged = || cluster.proxy.requests().len();
    let before_scrape = logged();
    let before = Scrape::of(&operator.metrics_url).await;
    let after_before = logged();
    let faults = cluster.proxy.faults();
    faults.fail_next(
        1,
        Some(Method::PATCH),
        "/externalcontrols/hourly/status",
        409,
    );
    let args = [
        "--project",
        "42",
        "--control",
        "8",
        "--token-file",
        token.as_str(),
        "--status",
        "pass",
    ];
    assert_eq!(checker(&operator.url, &args).await.code, 200);
    let before_after = logged();
    let after = Scrape::of(&operator.metrics_url).await;
    let after_scrape = logged();
    let conflict = r#"extctl_kube_requests_total{outcome="conflict",verb="patch"}"#;
    let counted = after.delta(&before, conflict);
    let (at_least, at_most) = (
        conflicts_logged(after_before, before_after),
        conflicts_logged(before_scrape, after_scrape),
    );
    assert!(
        at_least >= 1.0 && (at_least..=at_most).contains(&counted),
        "{counted} conflicts counted, {at_least} to {at_most} answered: {:?}",
        cluster.proxy.requests()
    );
    assert_eq!(
        after.delta(&before, r#"extctl_status_calls_total{result="stored"}"#),
        1.0
    );
    // The report's write: refused, the status read again, written again (the reconciler never
    // reads the status subresource).
    let on_status: Vec<(Method, u16)> = cluster
        .proxy
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/hourly/status"))
        .map(|r| (r.method.clone(), r.code))
        .collect();
    assert_eq!(
        on_status.last_chunk(),
        Some(&[
            (Method::PATCH, 409),
            (Method::GET, 200),
            (Method::PATCH, 200)
        ]),
        "{on_status:?}"
    );
    assert_eq!(
        cluster.control("hourly").await.status.unwrap().status,
        Some(ControlStatus::Pass)
    );
    operator.stop().await;
}

/// The Lease's holder, once there is one.
async fn holder(cluster: &Cluster) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let lease = leases.get_opt("extctl").await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// The status writes through each of `proxies` (each replica's own) as (stored, conflicts), and
/// the resets of every control (new `lastPingTime`s, as the watch saw them), while `run` runs.
async fn writes_and_resets(
    cluster: &Cluster,
    versions: &Versions,
    proxies: &[&Proxy],
    names: &[String],
    run: Duration,
) -> (Vec<(usize, usize)>, usize) {
    for proxy in proxies {
        proxy.reset_requests();
    }
    let from = Timestamp::now();
    // A window of time to measure, not a condition to wait for.
    tokio::time::sleep(run).await;
    let until = Timestamp::now();
    let writes: Vec<(usize, usize)> = proxies
        .iter()
        .map(|proxy| {
            let requests = proxy.requests();
            let writes = requests
                .iter()
                .filter(|r| r.is_write() && r.path.ends_with("/status"));
            let codes: Vec<u16> = writes.map(|r| r.code).collect();
            let conflicts = codes.iter().filter(|c| **c == 409).count();
            (codes.len() - conflicts, conflicts)
        })
        .collect();
    // Every version written by now has been watched once the watch shows each control's.
    let listed = cluster
        .controls()
        .list(&ListParams::default())
        .await
        .unwrap();
    let caught_up = wait_for(Duration::from_secs(10), || async {
        listed
            .items
            .iter()
            .all(|control| {
                let seen = versions.of(&control.name_any());
                let version = control.resource_version();
                seen.iter().any(|c| c.resource_version() == version)
            })
            .then_some(())
    })
    .await;
    assert!(caught_up.is_some(), "the watch fell behind");
    let resets = names
        .iter()
        .map(|name| {
            let mut times: Vec<Timestamp> = versions
                .of(name)
                .iter()
                .filter_map(|c| c.status.as_ref()?.last_ping_time.as_ref().map(|t| t.0))
                .filter(|at| (from..=until).contains(at))
                .collect();
            times.dedup();
            times.len()
        })
        .sum();
    (writes, resets)
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
    let listed = cluster
        .controls()
        .list(&ListParams::default())
        .await
        .unwrap();
    let versions = Versions::after(&cluster, listed.metadata.resource_version.unwrap());
    // 6 s: renewed every 0.8 s, each attempt allowed 0.8 s, so that a busy machine does not
    // pass the Lease back and forth meanwhile.
    let lease = ["--lease-duration", "6s"];
    let (lease_duration, retry_period) = (Duration::from_secs(6), Duration::from_millis(800));
    let a = Operator::start(
        &cluster,
        &[&lease[..], &["--instance", "replica-a"]].concat(),
    )
    .await;
    // Through a proxy of its own: each replica's requests are counted apart.
    let (proxy_b, kubeconfig_b) = second_proxy(&cluster).await;
    let namespace = ["--namespace", cluster.namespace.as_str()];
    let b = Operator::start_with(
        &kubeconfig_b,
        &[&namespace[..], &lease[..], &["--instance", "replica-b"]].concat(),
    )
    .await;
    let leader = wait_for(Duration::from_secs(10), || holder(&cluster))
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
    // replica, and the standby writes nothing. A window cuts at most one reset's pair per
    // control (a lastPing write of a reset just before it, or a reset whose lastPing write is
    // just after).
    let (standby_name, leader_index) = if leader == "replica-a" {
        ("replica-b", 0)
    } else {
        ("replica-a", 1)
    };
    let (writes, resets) = writes_and_resets(
        &cluster,
        &versions,
        &[&cluster.proxy, &proxy_b],
        &names,
        Duration::from_secs(6),
    )
    .await;
    assert!(
        resets >= 12,
        "6 controls, 6 s, 2 s interval: {resets} resets"
    );
    assert_eq!(
        writes[1 - leader_index],
        (0, 0),
        "the standby {standby_name} wrote"
    );
    let (stored, conflicts) = writes[leader_index];
    let edges = names.len() as i64;
    assert!(
        (stored as i64 - 2 * resets as i64).abs() <= edges,
        "{stored} status writes stored ({conflicts} conflicts) for {resets} resets"
    );
    // One ping per reset: the pings carry the reset's time, none repeats.
    let pings = receiver.pings();
    let mut rounds: Vec<(String, String)> = pings
        .iter()
        .map(|p| {
            (
                p["body"]["extctl"]["name"].to_string(),
                p["body"]["extctl"]["resetAt"].to_string(),
            )
        })
        .collect();
    let count = rounds.len();
    rounds.sort();
    rounds.dedup();
    assert_eq!(rounds.len(), count, "a reset was pinged twice: {pings:?}");

    // Kill the leader: the standby takes the Lease and the resets go on within the lease
    // duration and two retry periods (one to see the last renewal, one to act on its expiry),
    // give or take a busy machine's scheduling.
    let (leader_process, standby) = if leader == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    let killed_at = Instant::now();
    leader_process.kill().await;
    let successor = wait_for(Duration::from_secs(15), || async {
        holder(&cluster).await.filter(|h| *h != leader)
    })
    .await
    .expect("the standby takes over");
    let takeover = killed_at.elapsed();
    // (The rule's exact timing is unit-tested on paused time in src/kubernetes/lease.rs; here,
    // the real processes on a busy machine get 2 s of slack.)
    let bound = lease_duration + 2 * retry_period + Duration::from_secs(2);
    assert!(takeover < bound, "took {takeover:?}");
    let (writes, resets) = writes_and_resets(
        &cluster,
        &versions,
        &[&cluster.proxy, &proxy_b],
        &names,
        Duration::from_secs(4),
    )
    .await;
    assert!(resets >= 6, "the successor {successor} resets: {resets}");
    assert!(
        writes[1 - leader_index].0 > 0,
        "the successor {successor} writes: {writes:?}"
    );
    let metrics = Scrape::of(&standby.metrics_url).await;
    assert_eq!(metrics.value("extctl_leader"), 1.0);
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_reconciling_before_its_lease_could_pass_on() {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    // Not notified: a reset's own lastPing write, made after the ping, could land after the
    // leader stepped down, and the only status writes here are the reconciler's decisions.
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "sast", "namespace": cluster.namespace},
            "spec": {"projectId": 42, "controlId": 7, "secretRef": {"name": "token"},
                     "pingInterval": "2s"}
        }))
        .await;
    // 6 s: renewed every 0.8 s (each attempt allowed as long), stepping down 4 s after the last
    // renewal, noticed within two retry periods: at most 5.6 s, before the 6 s after which
    // another replica may take the Lease.
    let args = ["--lease-duration", "6s", "--instance", "replica-a"];
    let operator = Operator::start(&cluster, &args).await;
    wait_for(Duration::from_secs(10), || holder(&cluster))
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
    wait_for(Duration::from_secs(10), || leading(1))
        .await
        .expect("leading");

    // The API server refuses every Lease write (kube's client retries the 503s itself).
    let faults = cluster.proxy.faults();
    faults.fail_next(100_000, Some(Method::PUT), "/leases/", 503);
    wait_for(Duration::from_secs(10), || leading(0))
        .await
        .unwrap_or_else(|| panic!("it stops leading; logs:\n{}", operator.logs()));
    let stepped_down_at = Timestamp::now();
    // Measured from the last renewal (the Lease's renewTime, written with this machine's
    // clock): before the lease duration (6 s), after which another replica may take the Lease,
    // and not long before the renew deadline (4 s; counted from the start of the renewing
    // round, a moment before renewTime was written). The rule's exact timing is unit-tested on
    // paused time in src/kubernetes/lease.rs.
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let lease = leases.get("extctl").await.unwrap();
    let renewed = lease.spec.and_then(|s| s.renew_time).expect("renewed").0;
    let after_renewal = stepped_down_at.duration_since(renewed);
    assert!(
        after_renewal >= SignedDuration::from_millis(3500)
            && after_renewal < SignedDuration::from_secs(6),
        "stepped down {after_renewal:?} after the last renewal"
    );
    // No status write may land once the Lease could pass on (the lease duration after its
    // last renewal); a reconcile begun while leading may still finish before then. Watched
    // until more than an interval (2 s) past that moment, so that a replica that went on
    // reconciling would be seen: nothing to wait for, nothing must happen.
    let may_pass_on = renewed + SignedDuration::from_secs(6);
    let mut seen = cluster.proxy.requests().len();
    let mut writes = Vec::new();
    let past = (may_pass_on + SignedDuration::from_millis(2500)).duration_since(Timestamp::now());
    let watched_until = Instant::now() + Duration::try_from(past).unwrap_or_default();
    while Instant::now() < watched_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let requests = cluster.proxy.requests();
        let seen_at = Timestamp::now();
        let new = requests[seen..]
            .iter()
            .filter(|r| r.is_write() && r.path.ends_with("/status"));
        writes.extend(new.map(|r| (r.clone(), seen_at)));
        seen = requests.len();
    }
    assert!(
        writes.iter().all(|(_, seen_at)| *seen_at < may_pass_on),
        "reconciled once the Lease (renewed {renewed}) could pass on: {writes:?}"
    );

    // Back to normal: it leads again and resets resume.
    faults.clear();
    wait_for(Duration::from_secs(15), || leading(1))
        .await
        .unwrap_or_else(|| panic!("leading again; logs:\n{}", operator.logs()));
    let before = cluster.control("sast").await.status.unwrap().last_ping_time;
    let resumed = wait_for(Duration::from_secs(10), || async {
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
            "metadata": {"name": "sast", "namespace": cluster.namespace},
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
        assert_eq!(line["namespace"], cluster.namespace.as_str());
        assert_eq!(line["name"], "sast");
        assert_eq!(line["project_id"], 42);
        assert_eq!(line["control_id"], 7);
    }
    assert!(!operator.logs().contains(TOKEN), "a token reached the logs");
    operator.stop().await;
}

/// What one stored version of a control did, judged against the version before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The status written for the first time (pending, Ready, the first due time).
    Initialised,
    /// A reset to `pending`: a new `lastPingTime`.
    Reset,
    /// The reset's ping outcome recorded in `lastPing`.
    PingRecorded,
    /// `pending` past its timeout after an accepted ping: `fail`.
    TimedOut,
    /// The `Compliant` condition turned `Unknown`: the last result (a timeout's `fail`) kept
    /// through `pending` for `maxStaleness` (interval and timeout) without a new one, which a
    /// busy machine's late timeout can bring about.
    GateExpired,
}

/// The `Compliant` condition's status and reason.
fn compliant(control: &ExternalControl) -> Option<(String, String)> {
    let conditions = &control.status.as_ref()?.conditions;
    let condition = conditions.iter().find(|c| c.type_ == "Compliant")?;
    Some((condition.status.to_string(), condition.reason.to_string()))
}

fn step(before: &ExternalControl, after: &ExternalControl) -> Option<Step> {
    let (Some(old), Some(new)) = (&before.status, &after.status) else {
        // First reconciled after its first due time (a slow start), it is reset at once.
        let reset = after.status.as_ref()?.last_ping_time.is_some();
        return Some(if reset {
            Step::Reset
        } else {
            Step::Initialised
        });
    };
    let same_round = old.last_ping_time == new.last_ping_time;
    if !same_round {
        let cleared = new.status == Some(ControlStatus::Pending) && new.last_ping.is_none();
        return (new.last_ping_time.is_some() && cleared).then_some(Step::Reset);
    }
    if old.last_ping.is_none() && new.last_ping.is_some() && old.status == new.status {
        return Some(Step::PingRecorded);
    }
    let timed_out = (old.status, new.status)
        == (Some(ControlStatus::Pending), Some(ControlStatus::Fail))
        && old.last_ping == new.last_ping;
    if timed_out {
        return Some(Step::TimedOut);
    }
    let unchanged = (
        &old.status,
        &old.last_update_time,
        &old.last_ping,
        &old.next_ping_time,
    ) == (
        &new.status,
        &new.last_update_time,
        &new.last_ping,
        &new.next_ping_time,
    );
    let gate = (compliant(before), compliant(after));
    let expired = gate.0 != gate.1 && gate.1.is_some_and(|(status, _)| status == "Unknown");
    (unchanged && expired).then_some(Step::GateExpired)
}

/// A control's versions between its first reset and the next: the reset, and what followed.
struct Round {
    reset: ExternalControl,
    after: Vec<(Step, ExternalControl)>,
}

impl Round {
    fn at(&self) -> Timestamp {
        let status = self.reset.status.as_ref().unwrap();
        status.last_ping_time.as_ref().unwrap().0
    }

    fn next(&self) -> Timestamp {
        let status = self.reset.status.as_ref().unwrap();
        status.next_ping_time.as_ref().unwrap().0
    }

    /// The reset and every step after it, with the status fields that tell them apart.
    fn describe(&self) -> String {
        let steps = std::iter::once((Step::Reset, &self.reset))
            .chain(self.after.iter().map(|(step, control)| (*step, control)));
        let lines: Vec<String> = steps
            .map(|(step, control)| format!("{step:?}: {}", describe(control)))
            .collect();
        lines.join("\n")
    }

    fn steps(&self, wanted: Step) -> Vec<&ExternalControl> {
        let found = self.after.iter().filter(|(step, _)| *step == wanted);
        found.map(|(_, control)| control).collect()
    }
}

/// The status fields a round is told by.
fn describe(control: &ExternalControl) -> String {
    let Some(status) = &control.status else {
        return "no status".into();
    };
    let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>| {
        t.as_ref().map_or("-".into(), |t| t.0.to_string())
    };
    format!(
        "{:?} updated {} reset {} next {} lastPing {:?} Compliant {:?}",
        status.status,
        time(&status.last_update_time),
        time(&status.last_ping_time),
        time(&status.next_ping_time),
        status
            .last_ping
            .as_ref()
            .map(|o| (o.time.0.to_string(), o.http_status)),
        compliant(control),
    )
}

/// A control's versions, oldest first, as the steps they took: the rounds, and any version
/// that is none of the known steps (with the step it was taken for, if it was one out of place).
fn rounds(created: &ExternalControl, versions: &[ExternalControl]) -> (Vec<Round>, Vec<String>) {
    let (mut rounds, mut unexplained) = (Vec::<Round>::new(), Vec::new());
    let mut before = created;
    for (index, version) in versions.iter().enumerate() {
        match (step(before, version), rounds.last_mut()) {
            (Some(Step::Reset), _) => rounds.push(Round {
                reset: version.clone(),
                after: Vec::new(),
            }),
            (Some(Step::Initialised), None) if index == 0 => {}
            (
                Some(step @ (Step::PingRecorded | Step::TimedOut | Step::GateExpired)),
                Some(round),
            ) => {
                round.after.push((step, version.clone()));
            }
            (step, _) => unexplained.push(format!(
                "version {index} ({step:?}): {} after {}",
                describe(version),
                describe(before)
            )),
        }
        before = version;
    }
    (rounds, unexplained)
}

/// A second proxy to the cluster's server and a kubeconfig through it: a second `extctl run`
/// with its requests counted apart from the first's.
async fn second_proxy(cluster: &Cluster) -> (Proxy, PathBuf) {
    let server = Cluster::server().await;
    let proxy = Proxy::start(server).await;
    let kubeconfig = cluster.dir.path().join("kubeconfig-b");
    let text = server.kubeconfig(&proxy.url(), ADMIN_TOKEN, &cluster.namespace);
    std::fs::write(&kubeconfig, text).unwrap();
    (proxy, kubeconfig)
}

fn status_patches(requests: &[RequestRecord], name: &str) -> Vec<u16> {
    let path = format!("/externalcontrols/{name}/status");
    let patches = requests
        .iter()
        .filter(|r| r.method == Method::PATCH && r.path.ends_with(&path));
    patches.map(|r| r.code).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_without_leader_election_carry_out_every_reset_exactly_once() {
    // Complete rounds to watch per control: a reset, its ping's outcome, its timeout. Every
    // 3 s with a timeout of 1 s: 2 s between a timeout and the next due time, so that each
    // round normally takes all three steps, in order, before the next reset.
    const ROUNDS: usize = 4;
    let interval = SignedDuration::from_secs(3);
    let cluster = Cluster::start().await;
    let receiver = PingReceiver::start(cluster.dir.path(), 200).await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    let names: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        // Accepted pings and a timeout of 1 s: each round is a reset to `pending` (from `fail`,
        // after the first), then `fail`, both transitions decided by whichever reconciler
        // writes first, on the resourceVersion it read.
        cluster
            .create_control_from(json!({
                "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
                "metadata": {"name": name, "namespace": cluster.namespace},
                "spec": {"projectId": 42, "controlId": 100 + i, "secretRef": {"name": "token"},
                         "pingInterval": "3s", "pendingTimeout": "1s",
                         "externalUrl": receiver.url}
            }))
            .await;
    }
    let listed = cluster
        .controls()
        .list(&ListParams::default())
        .await
        .unwrap();
    let created: BTreeMap<String, ExternalControl> = listed
        .items
        .iter()
        .map(|control| (control.name_any(), control.clone()))
        .collect();
    let versions = Versions::after(&cluster, listed.metadata.resource_version.unwrap());

    // Two reconcilers, neither waiting for a Lease, each through a proxy of its own.
    let (proxy_b, kubeconfig_b) = second_proxy(&cluster).await;
    let replica = |instance: &'static str| {
        [
            "--leader-election",
            "false",
            "--instance",
            instance,
            "--status-history",
            "100",
        ]
    };
    let a = Operator::start(&cluster, &replica("replica-a")).await;
    let namespace = ["--namespace", cluster.namespace.as_str()];
    let b = Operator::start_with(
        &kubeconfig_b,
        &[&namespace[..], &replica("replica-b")].concat(),
    )
    .await;
    let proxies = [("replica-a", &cluster.proxy), ("replica-b", &proxy_b)];

    let rounds_of = |name: &str| rounds(&created[name], &versions.of(name));
    // What went wrong, as the reconcilers tell it, for a failure's message.
    let warnings = || {
        let mut lines = Vec::new();
        for (instance, operator) in [("replica-a", &a), ("replica-b", &b)] {
            let logs = operator.logs();
            let warned = logs
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "));
            lines.extend(warned.map(|line| format!("{instance}: {line}")));
        }
        lines.join("\n")
    };
    let watched = wait_for(Duration::from_secs(40), || async {
        let enough = names.iter().all(|name| rounds_of(name).0.len() > ROUNDS);
        enough.then_some(())
    })
    .await;
    let progress: Vec<usize> = names.iter().map(|name| rounds_of(name).0.len()).collect();
    assert!(
        watched.is_some(),
        "{ROUNDS} complete rounds of each control: {progress:?} rounds\n{}",
        warnings()
    );

    // From now on no status write reaches the server (Events still do): whatever was stored
    // can be counted to the end.
    let frozen_at: Vec<usize> = proxies.iter().map(|(_, p)| p.requests().len()).collect();
    for (_, proxy) in &proxies {
        proxy
            .faults()
            .fail_next(usize::MAX, Some(Method::PATCH), "/status", 503);
    }
    // Every status write answered 2xx is a version the watch delivers, and every version one
    // such write: once the writes in flight have landed, the two tallies meet.
    let tally = || async {
        let mut tallies = BTreeMap::new();
        for name in &names {
            let stored = cluster.control(name).await.resource_version();
            let seen = versions.of(name);
            let written: usize = proxies
                .iter()
                .map(|(_, p)| status_patches(&p.requests(), name))
                .map(|codes| codes.iter().filter(|c| (200..300).contains(*c)).count())
                .sum();
            let caught_up = seen.last().and_then(|c| c.resource_version()) == stored;
            tallies.insert(name.clone(), (caught_up, written, seen.len()));
        }
        tallies
    };
    let settled = wait_for(Duration::from_secs(10), || async {
        let tallies = tally().await;
        let met = tallies
            .values()
            .all(|(caught_up, w, v)| *caught_up && w == v);
        met.then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "status writes stored (2xx) and versions watched, per control: {:?}",
        tally().await
    );

    let mut wins: BTreeMap<String, usize> = BTreeMap::new();
    for name in &names {
        let (rounds, unexplained) = rounds_of(name);
        let all = versions.of(name);
        assert!(
            unexplained.is_empty(),
            "{name}: {unexplained:#?}\n{}",
            warnings()
        );

        // Every due time reset exactly once: none repeated, none skipped.
        let resets: Vec<(Timestamp, Timestamp)> =
            rounds.iter().map(|r| (r.at(), r.next())).collect();
        for (at, next) in &resets {
            let due = *next - interval;
            assert!(
                due <= *at && at < next,
                "{name}: a reset outside its slot: {resets:?}"
            );
        }
        for pair in resets.windows(2) {
            assert_eq!(
                pair[1].1.duration_since(pair[0].1),
                interval,
                "{name}: {resets:?}"
            );
        }
        // Each round: its ping's outcome recorded at most once, for this round (or refused as
        // superseded, when the ping took longer than the interval), and at most one timeout,
        // a pending timeout after the reset and before the next. (A reset carried out late can
        // come before a timeout that was due: on a busy machine a round may have none.)
        let (mut outcomes, mut timeouts) = (0, 0);
        for (index, round) in rounds.iter().enumerate() {
            let (recorded, timed_out, expired) = (
                round.steps(Step::PingRecorded),
                round.steps(Step::TimedOut),
                round.steps(Step::GateExpired),
            );
            (outcomes, timeouts) = (outcomes + recorded.len(), timeouts + timed_out.len());
            let once = |steps: &[&ExternalControl]| steps.len() <= 1;
            let position = |wanted: Step| round.after.iter().position(|(step, _)| *step == wanted);
            // A timeout only after the accepted ping's outcome.
            let in_order = match (position(Step::PingRecorded), position(Step::TimedOut)) {
                (_, None) => true,
                (recorded, Some(timed_out)) => recorded.is_some_and(|r| r < timed_out),
            };
            assert!(
                once(&recorded) && once(&timed_out) && once(&expired) && in_order,
                "{name}, round {index}:\n{}\nall versions:\n{}\n{}",
                round.describe(),
                all.iter().map(describe).collect::<Vec<_>>().join("\n"),
                warnings()
            );
            for control in &recorded {
                let outcome = control.status.as_ref().unwrap().last_ping.clone().unwrap();
                assert_eq!(
                    (outcome.time.0, outcome.http_status),
                    (round.at(), Some(200))
                );
            }
            for control in &timed_out {
                let failed_at = control
                    .status
                    .as_ref()
                    .unwrap()
                    .last_update_time
                    .clone()
                    .unwrap();
                let after = failed_at.0.duration_since(round.at());
                assert!(
                    after >= SignedDuration::from_secs(1),
                    "{name}: failed {after:?} after the reset"
                );
                assert!(
                    failed_at.0 < round.next(),
                    "{name}: failed after the next due time"
                );
            }
        }

        // Every reset's ping outcome is recorded, or refused as superseded by a later reset
        // (a 422 from the JSON patch's test), but for the last round's, which the freeze may
        // have refused (503).
        let refused: usize = proxies
            .iter()
            .map(|(_, p)| status_patches(&p.requests(), name))
            .map(|codes| codes.iter().filter(|c| **c == 422).count())
            .sum();
        let accounted = outcomes + refused;
        assert!(
            accounted == rounds.len() || accounted + 1 == rounds.len(),
            "{name}: {outcomes} outcomes recorded, {refused} refused, for {} resets",
            rounds.len()
        );
        assert!(
            timeouts >= 1,
            "{name}: no timeout in {} rounds",
            rounds.len()
        );

        // One ping per reset, sent by the reconciler whose reset was stored.
        let reset_times: Vec<Timestamp> = resets.iter().map(|(at, _)| *at).collect();
        let pinged = wait_for(Duration::from_secs(5), || async {
            let mut pinged: Vec<Timestamp> = receiver
                .pings()
                .iter()
                .filter(|p| p["body"]["extctl"]["name"] == name.as_str())
                .map(|p| {
                    p["body"]["extctl"]["resetAt"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            pinged.sort();
            (pinged.len() >= reset_times.len()).then_some(pinged)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "{name}: a ping per reset {reset_times:?}: {:?}",
                receiver.pings()
            )
        });
        assert_eq!(pinged, reset_times, "{name}: one ping per reset");

        // `status.history` holds exactly the transitions the versions show, each once, in
        // order, by the replica that stored it.
        let mut transitions = Vec::new();
        for pair in all.windows(2) {
            let (old, new) = (
                pair[0].status.as_ref().unwrap(),
                pair[1].status.as_ref().unwrap(),
            );
            if old.status != new.status {
                let cause = if old.last_ping_time != new.last_ping_time {
                    ("PingReset", new.last_ping_time.clone().unwrap().0)
                } else {
                    ("PendingTimeout", new.last_update_time.clone().unwrap().0)
                };
                transitions.push((
                    cause.0.to_owned(),
                    old.status.unwrap(),
                    new.status.unwrap(),
                    cause.1,
                ));
            }
        }
        let history = all.last().unwrap().status.as_ref().unwrap().history.clone();
        let recorded: Vec<_> = history
            .iter()
            .map(|h| (h.cause.reason().to_owned(), h.from, h.to, h.time.0))
            .collect();
        assert_eq!(recorded, transitions, "{name}: {history:#?}");
        for entry in &history {
            let by = entry.replica.clone().unwrap_or_default();
            assert!(by == "replica-a" || by == "replica-b", "{name}: {entry:?}");
            *wins.entry(by).or_default() += 1;
        }

        // One Event per transition, from the replica that stored it.
        let expected_events: BTreeMap<(String, String), usize> =
            history.iter().fold(BTreeMap::new(), |mut counts, h| {
                let key = (
                    h.cause.reason().to_owned(),
                    h.replica.clone().unwrap_or_default(),
                );
                *counts.entry(key).or_default() += 1;
                counts
            });
        let events: Api<Event> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let published = || async {
            let listed = events.list(&ListParams::default()).await.unwrap().items;
            let about_it = listed.into_iter().filter(|e| {
                let regarding = e.regarding.as_ref().and_then(|r| r.name.as_deref());
                regarding == Some(name.as_str()) && e.type_.as_deref() == Some("Normal")
            });
            about_it.fold(BTreeMap::new(), |mut counts, e| {
                let key = (
                    e.reason.unwrap_or_default(),
                    e.reporting_instance.unwrap_or_default(),
                );
                *counts.entry(key).or_default() += 1;
                counts
            })
        };
        let events_met = wait_for(Duration::from_secs(10), || async {
            (published().await == expected_events).then_some(())
        })
        .await;
        assert!(
            events_met.is_some(),
            "{name}: Events {:?}, transitions {expected_events:?}",
            published().await
        );
    }

    // Each reconciler took part: it tried writes (stored or refused as conflicts). Before the
    // freeze, no status write was refused for any other reason.
    let mut tried = Vec::new();
    for ((instance, proxy), frozen_at) in proxies.iter().zip(&frozen_at) {
        let requests = proxy.requests();
        let before: Vec<u16> = names
            .iter()
            .flat_map(|name| status_patches(&requests[..*frozen_at], name))
            .collect();
        let conflicts = before.iter().filter(|c| **c == 409).count();
        // A conflict, or a ping's outcome superseded by a later reset (422).
        assert!(
            before
                .iter()
                .all(|c| (200..300).contains(c) || *c == 409 || *c == 422),
            "{instance}: {before:?}"
        );
        tried.push((instance, before.len(), conflicts));
    }
    assert!(
        tried.iter().all(|(_, writes, _)| *writes > 0),
        "(replica, status writes, conflicts): {tried:?}; transitions stored: {wins:?}"
    );
    eprintln!("(replica, status writes, conflicts): {tried:?}; transitions stored: {wins:?}");
    a.kill().await;
    b.kill().await;
}

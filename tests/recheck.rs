//! Re-check on demand: `extctl ping NAME` sets `extctl.dev/requestedAt`, and the real
//! `extctl run` on a genuine kube-apiserver resets the control to `pending` and pings its
//! checker at once, records the request as handled, and keeps the schedule and the gate.

mod support;

use std::process::Output;
use std::time::Duration;

use extctl_core::crd::{ControlStatus, ExternalControl, REQUESTED_AT_ANNOTATION};
use kube::ResourceExt;
use serde_json::json;
use support::chart_rbac::namespaced_user;
use support::{Cluster, Operator, PingReceiver, TOKEN};

/// `extctl ping ARGS` with the cluster's kubeconfig (through the proxy, as the admin).
async fn extctl_ping(cluster: &Cluster, args: &[&str]) -> Output {
    extctl_ping_as(&cluster.kubeconfig, args).await
}

async fn extctl_ping_as(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_extctl"))
        .arg("ping")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .await
        .expect("extctl runs")
}

async fn report(cluster: &Cluster, operator: &Operator, status: &str) {
    let token = cluster.token_file("token", TOKEN);
    let answer = support::report_as_checker(&operator.url, &token, 42, 7, status).await;
    assert_eq!(answer.code, 200, "{:?}", answer.body);
}

fn resets(control: &ExternalControl) -> usize {
    let history = &control.status.as_ref().unwrap().history;
    history
        .iter()
        .filter(|h| h.to == ControlStatus::Pending)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_re_check_resets_and_pings_at_once_exactly_once_per_request() {
    let cluster = Cluster::start().await;
    let receiver = PingReceiver::start(cluster.dir.path(), 200).await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "sast"},
            // The schedule's first reset is half a day away: only a request can reset it now.
            "spec": {"projectId": 42, "controlId": 7, "secretRef": {"name": "sast-token"},
                     "externalUrl": receiver.url},
        }))
        .await;
    let operator = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    report(&cluster, &operator, "pass").await;
    let before = cluster.control("sast").await;
    let next_ping = before.status.as_ref().unwrap().next_ping_time.clone();
    assert!(next_ping.is_some());

    for round in 1..=2 {
        let output = extctl_ping(
            &cluster,
            &["sast", "-n", &cluster.namespace, "--wait", "20s"],
        )
        .await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "round {round}: {stdout}{stderr}");
        assert!(
            stdout.contains(": re-check requested (extctl.dev/requestedAt="),
            "{stdout}"
        );
        assert!(stdout.ends_with(": reset to pending\n"), "{stdout}");

        let control = cluster.control("sast").await;
        let requested = control.annotations()[REQUESTED_AT_ANNOTATION].clone();
        let status = control.status.clone().unwrap();
        assert_eq!(
            status.last_handled_requested_at.as_deref(),
            Some(requested.as_str())
        );
        assert_eq!(status.status, Some(ControlStatus::Pending));
        // Exactly one reset per request, and the schedule where it was.
        assert_eq!(resets(&control), round, "{:?}", status.history);
        assert_eq!(
            status.next_ping_time, next_ping,
            "the schedule did not move"
        );
        // The gate keeps the pass through the re-check.
        let compliant = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Compliant")
            .unwrap();
        assert_eq!(compliant.status, "True", "{compliant:?}");
        assert!(
            compliant
                .message
                .ends_with("kept while a re-check is pending")
        );
        // The checker is told, once per request, and answers.
        let pings = support::wait_for(Duration::from_secs(10), || async {
            let pings = receiver.pings();
            (pings.len() >= round).then_some(pings)
        })
        .await
        .expect("the checker was pinged");
        assert_eq!(pings.len(), round, "{pings:?}");
        assert_eq!(pings[round - 1]["valid"], true, "{pings:?}");
        report(&cluster, &operator, "pass").await;
    }
    cluster
        .wait_event_note(
            "sast",
            "Changed compliance control status from 'pass' to 'pending'",
            Duration::from_secs(10),
        )
        .await;
    // Handled requests are not acted on again: still pass, still two resets, once every
    // replica has seen the last report (a second reconcile finds nothing to do).
    let settled = cluster.control("sast").await;
    assert_eq!(
        settled.status.as_ref().unwrap().status,
        Some(ControlStatus::Pass)
    );
    assert_eq!(resets(&settled), 2);
    assert!(!operator.logs().contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extctl_ping_says_what_went_wrong() {
    let cluster = Cluster::start().await;
    let output = extctl_ping(&cluster, &["missing", "-n", &cluster.namespace]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "extctl ping: cannot request a re-check of ExternalControl {}/missing: ",
        cluster.namespace
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");

    // No operator serves the namespace: the request is made, and --wait says none acted on it.
    cluster.create_control("sast", 42, 7, "sast-token").await;
    let output = extctl_ping(
        &cluster,
        &["sast", "-n", &cluster.namespace, "--wait", "1s"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("but no extctl replica acted on it within 1s"),
        "{stderr}"
    );
    let control = cluster.control("sast").await;
    assert!(control.annotations().contains_key(REQUESTED_AT_ANNOTATION));

    let output = extctl_ping(&cluster, &["sast", "--wait", "0s"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must be at least 1s"), "{stderr}");
}

/// docs/gating.md: `extctl ping --wait` needs `patch`, `list` and `watch` on externalcontrols in
/// the control's namespace, nothing more; without `watch` it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extctl_ping_wait_needs_patch_list_and_watch_on_the_control_only() {
    let cluster = Cluster::start().await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    cluster.create_control("sast", 42, 7, "sast-token").await;
    let operator = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let rule = |verbs: &[&str]| {
        json!([{"apiGroups": ["extctl.dev"], "resources": ["externalcontrols"],
                            "verbs": verbs}])
    };
    let ns = cluster.namespace.clone();
    let pinger = namespaced_user(&cluster, &ns, "pinger", rule(&["patch", "list", "watch"])).await;
    let output = extctl_ping_as(&pinger, &["sast", "--wait", "20s"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}\n{}", operator.logs());
    assert!(
        stdout.contains(&format!("{ns}/sast: reset to pending")),
        "{stdout}"
    );

    let patcher = namespaced_user(&cluster, &ns, "patcher", rule(&["patch"])).await;
    let output = extctl_ping_as(&patcher, &["sast", "--wait", "20s"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot be watched (needs list and watch on externalcontrols)")
            && stderr.contains("forbidden"),
        "{stderr}"
    );
}

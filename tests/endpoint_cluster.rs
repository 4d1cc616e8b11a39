//! The endpoint's behaviour as part of a cluster: several replicas, concurrent calls, a rotated
//! Secret, duplicate control ids, and an API server that fails and comes back.

mod support;

use std::time::Duration;

use extctl_core::crd::ControlStatus;
use support::{Cluster, Operator, TOKEN, checker, wait_for};

async fn cluster_with_control() -> (Cluster, String) {
    let cluster = Cluster::start().await;
    cluster
        .create_secret("sast-token", &[("token", TOKEN)])
        .await;
    cluster.create_control("sast", 42, 7, "sast-token").await;
    let token = cluster.token_file("token", TOKEN).display().to_string();
    (cluster, token)
}

fn call_args<'a>(token: &'a str, knobs: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--project", "42", "--control", "7", "--token-file", token];
    args.extend_from_slice(knobs);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_call_is_refused_across_replicas() {
    let (cluster, token) = cluster_with_control().await;
    let first = Operator::start(&cluster, &[]).await;
    let second = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;

    for round in 0..5 {
        // One signed call (fixed timestamp and nonce) sent to both replicas at once.
        let timestamp = jiff::Timestamp::now().as_second().to_string();
        let nonce = format!("{round:032}");
        let status = if round % 2 == 0 { "fail" } else { "pass" };
        let args = call_args(
            &token,
            &[
                "--timestamp",
                &timestamp,
                "--nonce",
                &nonce,
                "--status",
                status,
            ],
        );
        let (a, b) = tokio::join!(checker(&first.url, &args), checker(&second.url, &args));
        let mut codes = [a.code, b.code];
        codes.sort();
        assert_eq!(
            codes,
            [200, 401],
            "round {round}: {:?} / {:?}",
            a.body,
            b.body
        );
        let refused = if a.code == 401 { &a } else { &b };
        assert_eq!(refused.error(), "Invalid nonce", "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_for_one_control_are_all_stored() {
    let (cluster, token) = cluster_with_control().await;
    let first = Operator::start(&cluster, &[]).await;
    let second = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;

    let nonces: Vec<String> = (0..12).map(|i| format!("{:032x}", 0xc0ffee + i)).collect();
    let calls = nonces.iter().enumerate().map(|(i, nonce)| {
        let url = if i % 2 == 0 { &first.url } else { &second.url };
        let status = if i % 3 == 0 { "fail" } else { "pass" };
        let args = call_args(&token, &["--nonce", nonce, "--status", status]);
        async move { checker(url, &args).await }
    });
    let answers = futures::future::join_all(calls).await;
    for answer in &answers {
        assert_eq!(answer.code, 200, "{:?}", answer.body);
    }
    // Every accepted call's nonce made it into the shared status: no write was lost.
    let stored = cluster.control("sast").await.status.unwrap();
    for nonce in &nonces {
        assert!(
            stored.recent_nonces.iter().any(|n| &n.nonce == nonce),
            "nonce {nonce} lost"
        );
    }
}

/// GET requests for the Secret `sast-token` extctl has made so far (through the proxy).
fn secret_reads(cluster: &Cluster) -> usize {
    cluster
        .proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/secrets/sast-token"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_used_at_once_without_restart() {
    let (cluster, old_token) = cluster_with_control().await;
    // The Secret is kept far longer than this test runs: only a failed verification can make
    // extctl read it again.
    let operator = Operator::start(&cluster, &["--secret-ttl", "1h"]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let new_token = cluster.token_file("new", "n3w-t0ken").display().to_string();

    // Step 1 of a rotation: the new token, with the old one kept as previousToken.
    cluster
        .replace_secret(
            "sast-token",
            &[("token", "n3w-t0ken"), ("previousToken", TOKEN)],
        )
        .await;
    let accepted = wait_for(Duration::from_secs(4), || async {
        let answer = checker(&operator.url, &call_args(&new_token, &[])).await;
        (answer.code == 200).then_some(())
    })
    .await;
    assert!(
        accepted.is_some(),
        "the new token is accepted within seconds"
    );
    assert_eq!(
        checker(&operator.url, &call_args(&old_token, &[]))
            .await
            .code,
        200,
        "the previous token still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_token_stops_working_within_the_secret_ttl() {
    let cluster = Cluster::start().await;
    cluster
        .create_secret(
            "sast-token",
            &[("token", "n3w-t0ken"), ("previousToken", TOKEN)],
        )
        .await;
    cluster.create_control("sast", 42, 7, "sast-token").await;
    let old_token = cluster.token_file("old", TOKEN).display().to_string();
    let new_token = cluster.token_file("new", "n3w-t0ken").display().to_string();
    let operator = Operator::start(&cluster, &["--secret-ttl", "2s"]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let old_call = call_args(&old_token, &[]);
    assert_eq!(checker(&operator.url, &old_call).await.code, 200);

    // Step 3 of a rotation: drop previousToken; the old token stops working.
    cluster
        .replace_secret("sast-token", &[("token", "n3w-t0ken")])
        .await;
    let refused = wait_for(Duration::from_secs(5), || async {
        let answer = checker(&operator.url, &old_call).await;
        (answer.error() == "Invalid signature").then_some(())
    })
    .await;
    assert!(refused.is_some(), "the old token is refused after rotation");
    assert_eq!(
        checker(&operator.url, &call_args(&new_token, &[]))
            .await
            .code,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_calls_do_not_turn_into_secret_reads() {
    let (cluster, _) = cluster_with_control().await;
    let operator = Operator::start(&cluster, &["--secret-ttl", "1h"]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let forged = cluster
        .token_file("forged", "not-the-token")
        .display()
        .to_string();
    // Past the shortest time between forced reads since the Secret was read at start: the
    // first forged call must read it again (a window begun sooner may see none, which a CI run
    // met: 0 reads in 1.3 s).
    tokio::time::sleep(extctl::MIN_REREAD).await;
    let before = secret_reads(&cluster);
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let answer = checker(&operator.url, &call_args(&forged, &[])).await;
        assert_eq!(answer.error(), "Invalid signature");
    }
    let seconds = started.elapsed().as_secs_f64();
    let reads = secret_reads(&cluster) - before;
    // At most one read per 2 s, plus one at the start of the window.
    let allowed = (seconds / 2.0).floor() as usize + 1;
    assert!(
        (1..=allowed).contains(&reads),
        "{reads} reads of the Secret for 20 forged calls in {seconds:.1} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_referenced_secrets_are_read_never_listed() {
    let (cluster, token) = cluster_with_control().await;
    for i in 0..20 {
        cluster
            .create_secret(&format!("unrelated-{i}"), &[("release", "x")])
            .await;
    }
    cluster.proxy.reset_requests();
    let operator = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    assert_eq!(
        checker(&operator.url, &call_args(&token, &[])).await.code,
        200
    );
    let secret_requests: Vec<String> = cluster
        .proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains("/secrets"))
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert!(!secret_requests.is_empty());
    let only_read = format!(
        "GET /api/v1/namespaces/{}/secrets/sast-token?",
        cluster.namespace
    );
    assert!(
        secret_requests.iter().all(|r| r.starts_with(&only_read)),
        "{secret_requests:?}"
    );
}

/// A Secret no control names any more is forgotten at once, not kept for `--secret-ttl` (an
/// hour here): once its control is deleted, the control created again with it reads it anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_controls_secret_is_forgotten_at_once() {
    let (cluster, token) = cluster_with_control().await;
    cluster
        .create_secret("other-token", &[("token", TOKEN)])
        .await;
    let operator = Operator::start(&cluster, &["--secret-ttl", "1h"]).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    assert_eq!(
        checker(&operator.url, &call_args(&token, &[])).await.code,
        200
    );
    let reads = || {
        let requests = cluster.proxy.requests();
        let path = format!(
            "/api/v1/namespaces/{}/secrets/sast-token",
            cluster.namespace
        );
        requests
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    };
    let before = reads();
    assert!(before >= 1, "the token was read");

    cluster
        .controls()
        .delete("sast", &Default::default())
        .await
        .unwrap();
    // The watch delivers in order: once a control created after the delete is Ready, the
    // delete has been seen.
    cluster.create_control("other", 42, 8, "other-token").await;
    cluster.wait_ready_reason("other", "Ready").await;
    assert_eq!(reads(), before, "nothing read sast-token meanwhile");

    cluster.create_control("sast", 42, 7, "sast-token").await;
    cluster.wait_ready_reason("sast", "Ready").await;
    assert_eq!(
        reads(),
        before + 1,
        "read again, within the hour of its TTL"
    );
    assert_eq!(
        checker(&operator.url, &call_args(&token, &[])).await.code,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_or_key_is_explained_and_refused() {
    let cluster = Cluster::start().await;
    cluster.create_control("sast", 42, 7, "sast-token").await;
    let token = cluster.token_file("token", TOKEN).display().to_string();
    // A control that is not ready is looked at again every --secret-ttl.
    let operator = Operator::start(&cluster, &["--secret-ttl", "1s"]).await;

    let control = cluster.wait_ready_reason("sast", "SecretNotFound").await;
    assert_eq!(control.status.unwrap().status, Some(ControlStatus::Pending));
    let answer = checker(&operator.url, &call_args(&token, &[])).await;
    assert_eq!(
        (answer.code, answer.error()),
        (503, "Control signing token is not available")
    );

    cluster
        .create_secret("sast-token", &[("other", TOKEN)])
        .await;
    let control = cluster.wait_ready_reason("sast", "SecretKeyMissing").await;
    let message = &control.status.unwrap().conditions[0].message;
    assert!(message.contains("key \"token\" is missing"), "{message}");
    assert!(!message.contains(TOKEN), "a condition never shows a token");

    cluster
        .replace_secret("sast-token", &[("token", TOKEN)])
        .await;
    cluster.wait_ready_reason("sast", "Ready").await;
    assert_eq!(
        checker(&operator.url, &call_args(&token, &[])).await.code,
        200
    );
    assert!(!operator.logs().contains(TOKEN), "logs never show a token");
}

/// A control keeps the id it holds: a newcomer claiming it is not served and says why (its
/// `Ready` condition, a Warning Event, the `extctl_controls_ready` gauge), calls keep reaching
/// the holder, across a restart too, and the newcomer takes over only once the holder is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_keeps_the_id_it_holds_and_a_newcomer_is_not_served() {
    let (cluster, token) = cluster_with_control().await;
    let operator = Operator::start(&cluster, &[]).await;
    let holder = cluster.wait_ready_reason("sast", "Ready").await;
    // creationTimestamp has whole seconds: the newcomer is created in a later second.
    let created = holder.metadata.creation_timestamp.clone().unwrap().0;
    let later = created + jiff::SignedDuration::from_secs(1);
    let wait = later.duration_since(jiff::Timestamp::now());
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    cluster
        .create_control("sast-copy", 42, 7, "sast-token")
        .await;

    let copy = cluster
        .wait_ready_reason("sast-copy", "ControlIdTaken")
        .await;
    let message = &copy.status.unwrap().conditions[0].message;
    assert!(
        message.contains(
            "controlId 7 for this project is held by ExternalControl \"sast\" of this namespace"
        ),
        "{message}"
    );
    let note = message.clone();
    cluster
        .wait_event_note("sast-copy", &note, Duration::from_secs(10))
        .await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let scraped = support::scrape::Scrape::of(&operator.metrics_url).await;
    let taken = format!(
        "extctl_controls_ready{{namespace=\"{}\",ready=\"false\",reason=\"ControlIdTaken\"}}",
        cluster.namespace
    );
    assert_eq!(scraped.value(&taken), 1.0, "{:?}", scraped.samples);

    // Calls reach the holder, before and after a restart (a re-list ranks the same way).
    let mut operator = operator;
    for (round, status) in [(0, "pass"), (1, "fail")] {
        if round == 1 {
            operator.sigterm().await;
            operator = Operator::start(&cluster, &[]).await;
        }
        let answer = checker(&operator.url, &call_args(&token, &["--status", status])).await;
        assert_eq!(
            (answer.code, &answer.body),
            (200, &serde_json::json!({"status": status}))
        );
        let stored = |name: &'static str| {
            let cluster = &cluster;
            async move { cluster.control(name).await.status.and_then(|s| s.status) }
        };
        let expected: ControlStatus = serde_json::from_value(serde_json::json!(status)).unwrap();
        assert_eq!(stored("sast").await, Some(expected), "round {round}");
        assert_eq!(
            stored("sast-copy").await,
            Some(ControlStatus::Pending),
            "round {round}"
        );
    }

    // Once the holder is gone, the id is the newcomer's.
    cluster
        .controls()
        .delete("sast", &Default::default())
        .await
        .unwrap();
    cluster.wait_ready_reason("sast-copy", "Ready").await;
    let answer = checker(&operator.url, &call_args(&token, &["--status", "pass"])).await;
    assert_eq!(answer.code, 200, "{:?}", answer.body);
    let copy = cluster.control("sast-copy").await;
    assert_eq!(
        copy.status.and_then(|s| s.status),
        Some(ControlStatus::Pass)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_api_server_gets_503_never_a_false_200() {
    let (cluster, token) = cluster_with_control().await;
    let operator = Operator::start(&cluster, &[]).await;
    cluster.wait_ready_reason("sast", "Ready").await;

    cluster.proxy.faults().set_unavailable(true);
    let answer = checker(&operator.url, &call_args(&token, &["--status", "fail"])).await;
    assert_eq!(answer.code, 503, "{:?}", answer.body);
    // kube's client retries the 503s until the request timeout: extctl cannot tell whether a
    // write got through, and says so rather than claim nothing was stored.
    assert_eq!(
        answer.error(),
        "Status store did not answer in time; the status may have been stored: retry"
    );
    cluster.proxy.faults().set_unavailable(false);

    assert_eq!(
        cluster.control("sast").await.status.unwrap().status,
        Some(ControlStatus::Pending),
        "the refused call stored nothing"
    );
    let recovered = wait_for(Duration::from_secs(20), || async {
        let answer = checker(&operator.url, &call_args(&token, &["--status", "fail"])).await;
        (answer.code == 200).then_some(())
    })
    .await;
    assert!(
        recovered.is_some(),
        "calls succeed again once the API server is back"
    );
    assert_eq!(
        cluster.control("sast").await.status.unwrap().status,
        Some(ControlStatus::Fail)
    );
}

//! Outbound calls of the real `extctl run` on a genuine kube-apiserver: pings to `externalUrl`
//! and `spec.notify` notifications, received by an independent Python server that verifies
//! them (Python's `hmac` for GitLab's and Flux's signatures, the `standardwebhooks` reference
//! library for Standard Webhooks). CA bundles, retries, destination rules, signing during a
//! rotation, delivery after a restart.

mod support;

use std::path::Path;
use std::time::Duration;

use extctl_core::crd::{ControlStatus, ExternalControl, PingOutcome, REQUESTED_AT_ANNOTATION};
use kube::Api;
use kube::core::{ApiResource, DynamicObject};
use serde_json::{Value, json};
use support::scrape::Scrape;
use support::{Cluster, Operator, PythonServer, TOKEN, pytools, wait_for};

/// A Standard Webhooks secret (`whsec_` + base64) and the one it replaces.
const WEBHOOK_SECRET: &str = "whsec_ZXh0Y3RsLW5vdGlmeS1zZWNyZXQtMDEyMzQ1Njc4OQ==";
const PREVIOUS_WEBHOOK_SECRET: &str = "whsec_b2xkLXNlY3JldC1zdGlsbC1hY2NlcHRlZA==";
const FLUX_TOKEN: &str = "flux-receiver-token";

/// Quick retries (at most 1s, 2s and 4s apart), so a test sees them all within seconds.
const FAST_RETRIES: &[&str] = &["--outbound-retries", "3", "--outbound-backoff", "1s"];

/// The receiver: answers with `codes` in turn (the last repeats), verifying with `token`.
async fn receiver(dir: &Path, token: &str, args: &[&str]) -> PythonServer {
    let python = tokio::task::spawn_blocking(pytools::python).await.unwrap();
    PythonServer::start_in(&python, "webhook_receiver.py", dir, token, args).await
}

/// A control whose checker is pinged at once (a re-check is requested at creation).
fn pinged_control(name: &str, control_id: i64, url: &str, extra: Value) -> Value {
    let mut spec = json!({
        "projectId": 42, "controlId": control_id, "secretRef": {"name": "token"},
        "externalUrl": url,
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({
        "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
        "metadata": {"name": name, "annotations": {REQUESTED_AT_ANNOTATION: "now"}},
        "spec": spec,
    })
}

async fn last_ping(cluster: &Cluster, name: &str) -> PingOutcome {
    wait_for(Duration::from_secs(30), || async {
        let control = cluster.control(name).await;
        control.status?.last_ping.map(|ping| *ping)
    })
    .await
    .unwrap_or_else(|| panic!("{name}: no ping outcome recorded"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_retried_after_5xx_and_network_errors_never_after_4xx() {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    let dir = cluster.dir.path();
    let flaky = receiver(dir, TOKEN, &["--codes", "503,502,200"]).await;
    let refusing = receiver(dir, TOKEN, &["--codes", "404"]).await;
    let (_held, closed) = support::closed_port();
    let closed = format!("http://{closed}/ping");
    let urls = [
        ("flaky", &format!("{}/ping", flaky.base_url)),
        ("refusing", &format!("{}/ping", refusing.base_url)),
        ("closed", &closed),
    ];
    for (id, (name, url)) in (1..).zip(urls) {
        cluster
            .create_control_from(pinged_control(name, id, url, json!({})))
            .await;
    }
    let _operator = Operator::start(&cluster, FAST_RETRIES).await;

    let flaky_outcome = last_ping(&cluster, "flaky").await;
    assert_eq!(flaky_outcome.http_status, Some(200), "{flaky_outcome:?}");
    assert_eq!(flaky_outcome.attempts, Some(3));
    let pings = flaky.records();
    assert_eq!(pings.len(), 3, "{pings:?}");
    assert!(pings.iter().all(|p| p["gitlab_valid"] == true), "{pings:?}");
    // Every attempt carries the same signed body.
    assert!(pings.iter().all(|p| p["body"] == pings[0]["body"]));

    let refused = last_ping(&cluster, "refusing").await;
    assert_eq!(
        (refused.http_status, refused.attempts),
        (Some(404), Some(1))
    );
    assert_eq!(refusing.records().len(), 1, "a 4xx is not retried");

    let unreachable = last_ping(&cluster, "closed").await;
    assert_eq!(unreachable.attempts, Some(4), "{unreachable:?}");
    let error = unreachable.error.unwrap();
    assert!(error.contains("onnection refused"), "{error}");
    let note =
        format!("Notifying {closed} failed after 4 attempt(s): {error}; the status stays pending");
    cluster
        .wait_event_note("closed", &note, Duration::from_secs(10))
        .await;
}

/// A CA, and a certificate for 127.0.0.1 it signed, as PEM files in `dir`.
fn internal_ca(dir: &Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "checkers internal CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("checker.crt"), dir.join("checker.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca.pem(), cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_with_an_internal_ca_is_verified_with_the_controls_ca_bundle() {
    let cluster = Cluster::start().await;
    let dir = cluster.dir.path();
    let (ca_pem, cert, key) = internal_ca(dir);
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    cluster
        .create_secret("checker-ca", &[("ca.crt", &ca_pem)])
        .await;
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let https = receiver(dir, TOKEN, &["--cert", cert, "--key", key]).await;
    let url = format!("{}/ping", https.base_url);
    assert!(url.starts_with("https://127.0.0.1:"));
    let with_ca = json!({"caSecretRef": {"name": "checker-ca"}});
    let missing = json!({"caSecretRef": {"name": "no-such-secret"}});
    cluster
        .create_control_from(pinged_control("trusted", 1, &url, with_ca))
        .await;
    cluster
        .create_control_from(pinged_control("untrusted", 2, &url, json!({})))
        .await;
    cluster
        .create_control_from(pinged_control("missing-ca", 3, &url, missing))
        .await;
    let _operator = Operator::start(&cluster, FAST_RETRIES).await;

    let trusted = last_ping(&cluster, "trusted").await;
    assert_eq!(trusted.http_status, Some(200), "{trusted:?}");
    let untrusted = last_ping(&cluster, "untrusted").await;
    assert_eq!(untrusted.http_status, None);
    let error = untrusted.error.unwrap();
    assert!(error.contains("UnknownIssuer"), "{error}");
    let missing = last_ping(&cluster, "missing-ca").await;
    assert_eq!(
        missing.error.as_deref(),
        Some("CA bundle Secret \"no-such-secret\" not found")
    );
    assert_eq!(missing.attempts, Some(0));
    // Only the trusted control's ping got through, signed.
    let pings = https.records();
    assert_eq!(pings.len(), 1, "{pings:?}");
    assert_eq!(pings[0]["gitlab_valid"], true);
    assert_eq!(pings[0]["body"]["extctl"]["name"], "trusted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_never_reach_the_api_server_or_metadata_by_default() {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    let dir = cluster.dir.path();
    // The API server as the operator reaches it (its kubeconfig goes through the proxy).
    let api_server = format!("{}/api/v1/namespaces", cluster.proxy.url());
    let open = receiver(dir, TOKEN, &[]).await;
    let open_url = format!("{}/ping", open.base_url);
    let urls = [
        ("api-server", api_server.as_str()),
        ("metadata", "http://169.254.169.254/latest/meta-data/"),
        ("mapped-metadata", "http://[::ffff:169.254.169.254]/latest/"),
        ("alibaba-metadata", "http://100.100.100.200/latest/"),
        ("open", open_url.as_str()),
    ];
    for (id, (name, url)) in (1..).zip(urls) {
        cluster
            .create_control_from(pinged_control(name, id, url, json!({})))
            .await;
    }
    let operator = Operator::start(&cluster, FAST_RETRIES).await;
    cluster.proxy.reset_requests();

    let refused = [
        ("api-server", "is the Kubernetes API server"),
        ("metadata", "169.254.169.254:80 is a link-local address"),
        ("mapped-metadata", "is a link-local address"),
        (
            "alibaba-metadata",
            "100.100.100.200:80 is a cloud metadata service",
        ),
    ];
    for (name, why) in refused {
        let outcome = last_ping(&cluster, name).await;
        let error = outcome.error.clone().unwrap_or_default();
        assert!(
            error.contains("refused: ") && error.contains(why),
            "{name}: {error}"
        );
        assert!(
            error.contains("refused unless --outbound-allow lists it"),
            "{error}"
        );
        assert_eq!(
            outcome.attempts,
            Some(1),
            "a refused destination is not retried"
        );
    }
    assert_eq!(last_ping(&cluster, "open").await.http_status, Some(200));
    // Nothing was sent to the API server by the ping.
    let posts: Vec<_> = cluster
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/api/v1/namespaces"))
        .collect();
    assert!(posts.is_empty(), "{posts:?}");
    drop(operator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rules_deny_and_allow_destinations_after_resolving_names() {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    let open = receiver(cluster.dir.path(), TOKEN, &[]).await;
    let port = open.base_url.rsplit(':').next().unwrap().to_owned();
    // `localhost` is a name: refused for what it resolves to.
    let by_name = format!("http://localhost:{port}/ping");
    cluster
        .create_control_from(pinged_control("by-name", 1, &by_name, json!({})))
        .await;
    let args = [FAST_RETRIES, &["--outbound-deny", "127.0.0.0/8,::1"]].concat();
    let operator = Operator::start(&cluster, &args).await;
    let outcome = last_ping(&cluster, "by-name").await;
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.starts_with(&format!("destination localhost refused: 127.0.0.1:{port} is denied by --outbound-deny 127.0.0.0/8")),
        "{error}"
    );
    assert!(open.records().is_empty(), "nothing was sent");
    drop(operator);

    // An allow list admits only what it lists.
    let url = format!("{}/ping", open.base_url);
    cluster
        .create_control_from(pinged_control("outside", 2, &url, json!({})))
        .await;
    let args = [FAST_RETRIES, &["--outbound-allow", "10.0.0.0/8"]].concat();
    let _operator = Operator::start(&cluster, &args).await;
    let outcome = last_ping(&cluster, "outside").await;
    assert_eq!(
        outcome.error.as_deref(),
        Some(
            format!("destination 127.0.0.1 refused: 127.0.0.1:{port} is not in --outbound-allow")
                .as_str()
        )
    );
}

/// A control whose status changes are told to `notify`.
async fn notifying_control(cluster: &Cluster, name: &str, control_id: i64, notify: Value) {
    cluster
        .create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": name},
            "spec": {"projectId": 42, "controlId": control_id, "secretRef": {"name": "token"},
                     "notify": notify},
        }))
        .await;
}

async fn report(cluster: &Cluster, operator: &Operator, control_id: i64, status: &str) {
    let token = cluster.token_file("checker-token", TOKEN);
    let answer = support::report_as_checker(&operator.url, &token, 42, control_id, status).await;
    assert_eq!(answer.code, 200, "{:?}", answer.body);
}

async fn wait_records(server: &PythonServer, count: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(30), || async {
        let records = server.records();
        (records.len() >= count).then_some(records)
    })
    .await
    .unwrap_or_else(|| panic!("fewer than {count} requests: {:?}", server.records()))
}

/// The control's `status.notifications` entry for `target`, once it has a delivery for `to`.
async fn delivered(cluster: &Cluster, name: &str, target: &str, to: ControlStatus) -> Value {
    wait_for(Duration::from_secs(30), || async {
        let control: ExternalControl = cluster.control(name).await;
        let entry = control
            .status?
            .notifications
            .into_iter()
            .find(|n| n.name == target)?;
        let delivery = entry.last_delivery.clone()?;
        (delivery.to == to).then(|| serde_json::to_value(entry).unwrap())
    })
    .await
    .unwrap_or_else(|| panic!("{name}: no delivery to {target} of {to}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_are_told_signed_filtered_and_recorded() {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    cluster
        .create_secret(
            "hooks",
            &[
                ("token", WEBHOOK_SECRET),
                ("previousToken", PREVIOUS_WEBHOOK_SECRET),
            ],
        )
        .await;
    cluster
        .create_secret("flux-receiver", &[("token", FLUX_TOKEN)])
        .await;
    let dir = cluster.dir.path();
    let previous = dir.join("previous-secret");
    std::fs::write(&previous, PREVIOUS_WEBHOOK_SECRET).unwrap();
    let previous = previous.to_str().unwrap();
    let all = receiver(dir, WEBHOOK_SECRET, &["--previous-file", previous]).await;
    let failures = receiver(dir, WEBHOOK_SECRET, &[]).await;
    let flux = receiver(dir, FLUX_TOKEN, &[]).await;
    notifying_control(
        &cluster,
        "sast",
        7,
        json!([
            {"name": "all", "url": format!("{}/hooks/all", all.base_url),
             "secretRef": {"name": "hooks"}},
            {"name": "failures", "url": format!("{}/hooks/failures", failures.base_url),
             "secretRef": {"name": "hooks"}, "statuses": ["fail"]},
            {"name": "flux", "url": format!("{}/hook/0123abcd", flux.base_url),
             "format": "fluxGenericHmac", "secretRef": {"name": "flux-receiver"}},
        ]),
    )
    .await;
    let operator = Operator::start(&cluster, FAST_RETRIES).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    let before = Scrape::of(&operator.metrics_url).await;

    report(&cluster, &operator, 7, "pass").await;
    let told = &wait_records(&all, 1).await[0];
    // Verified by the reference library with the current secret and, during the rotation,
    // with the previous one too.
    assert_eq!(told["standard_valid"], true, "{told}");
    assert_eq!(told["standard_previous_valid"], true, "{told}");
    let signatures = told["headers"]["webhook-signature"].as_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    let data = &told["body"]["data"];
    assert_eq!(told["body"]["type"], "extctl.control.status_changed");
    assert_eq!(
        (&data["from"], &data["to"], &data["cause"]),
        (&json!("pending"), &json!("pass"), &json!("StatusReported"))
    );
    assert_eq!(
        (&data["namespace"], &data["name"], &data["controlId"]),
        (&json!(cluster.namespace), &json!("sast"), &json!(7))
    );
    let flux_told = &wait_records(&flux, 1).await[0];
    assert_eq!(flux_told["flux_valid"], true, "{flux_told}");
    assert_eq!(flux_told["body"]["data"]["to"], "pass");
    let entry = delivered(&cluster, "sast", "all", ControlStatus::Pass).await;
    let delivery = &entry["lastDelivery"];
    assert_eq!(delivery["delivered"], true);
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["httpStatus"], 200);
    assert_eq!(delivery["webhookId"], told["headers"]["webhook-id"]);
    assert_eq!(entry["since"], told["body"]["data"]["time"]);
    assert!(failures.records().is_empty(), "a pass is not a failure");

    report(&cluster, &operator, 7, "fail").await;
    let failure = &wait_records(&failures, 1).await[0];
    assert_eq!(failure["standard_valid"], true);
    assert_eq!(failure["body"]["data"]["from"], "pass");
    assert_eq!(failure["body"]["data"]["to"], "fail");
    delivered(&cluster, "sast", "failures", ControlStatus::Fail).await;
    let records = wait_records(&all, 2).await;
    assert_ne!(
        records[0]["headers"]["webhook-id"], records[1]["headers"]["webhook-id"],
        "every change has its own id"
    );
    delivered(&cluster, "sast", "flux", ControlStatus::Fail).await;
    let after = Scrape::of(&operator.metrics_url).await;
    let key = r#"extctl_notifications_total{outcome="delivered"}"#;
    assert_eq!(after.delta(&before, key), 5.0, "2 + 1 + 2 deliveries");
    // Nothing more is sent for changes already told: a next change (fail -> pass) reaches
    // `all` and `flux` as their third record, and `failures` hears nothing of it.
    report(&cluster, &operator, 7, "pass").await;
    let records = wait_records(&all, 3).await;
    assert_eq!(records[2]["body"]["data"]["to"], "pass");
    let flux_records = wait_records(&flux, 3).await;
    assert_eq!(flux_records[2]["body"]["data"]["to"], "pass");
    delivered(&cluster, "sast", "all", ControlStatus::Pass).await;
    assert_eq!(all.records().len(), 3);
    assert_eq!(failures.records().len(), 1);
    assert_eq!(flux.records().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_with_the_same_id_and_a_refusal_is_recorded() {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    cluster
        .create_secret("hooks", &[("token", WEBHOOK_SECRET)])
        .await;
    cluster
        .create_secret("not-base64", &[("token", "not a webhook secret!")])
        .await;
    let dir = cluster.dir.path();
    let flaky = receiver(dir, WEBHOOK_SECRET, &["--codes", "503,200"]).await;
    let refusing = receiver(dir, WEBHOOK_SECRET, &["--codes", "400"]).await;
    notifying_control(
        &cluster,
        "sast",
        7,
        json!([
            {"name": "flaky", "url": flaky.base_url, "secretRef": {"name": "hooks"}},
            {"name": "refusing", "url": refusing.base_url, "secretRef": {"name": "hooks"}},
            {"name": "misconfigured", "url": flaky.base_url, "secretRef": {"name": "not-base64"}},
        ]),
    )
    .await;
    let operator = Operator::start(&cluster, FAST_RETRIES).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    report(&cluster, &operator, 7, "pass").await;

    let entry = delivered(&cluster, "sast", "flaky", ControlStatus::Pass).await;
    assert_eq!(entry["lastDelivery"]["attempts"], 2);
    assert_eq!(entry["lastDelivery"]["delivered"], true);
    let attempts = wait_records(&flaky, 2).await;
    let id = &attempts[0]["headers"]["webhook-id"];
    assert_eq!(
        &attempts[1]["headers"]["webhook-id"], id,
        "stable across retries"
    );
    assert!(attempts.iter().all(|a| a["standard_valid"] == true));

    let entry = delivered(&cluster, "sast", "refusing", ControlStatus::Pass).await;
    let delivery = &entry["lastDelivery"];
    assert_eq!(
        (
            &delivery["delivered"],
            &delivery["attempts"],
            &delivery["httpStatus"]
        ),
        (&json!(false), &json!(1), &json!(400))
    );
    let note = format!(
        "Notifying refusing ({}/) of pending -> pass failed after 1 attempt(s): HTTP 400",
        refusing.base_url
    );
    cluster
        .wait_event_note("sast", &note, Duration::from_secs(10))
        .await;

    let entry = delivered(&cluster, "sast", "misconfigured", ControlStatus::Pass).await;
    let error = entry["lastDelivery"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("Secret \"not-base64\" key \"token\" is not a Standard Webhooks secret"),
        "{error}"
    );
    assert!(
        !error.contains("not a webhook secret!"),
        "the value is never shown"
    );
    // Given up on: not sent again. The next change (pass -> fail) is the next thing each
    // receiver hears.
    report(&cluster, &operator, 7, "fail").await;
    let refused = wait_records(&refusing, 2).await;
    assert_eq!(refused[1]["body"]["data"]["to"], "fail", "{refused:?}");
    delivered(&cluster, "sast", "flaky", ControlStatus::Fail).await;
    let heard = flaky.records();
    assert!(
        heard[2..].iter().all(|r| r["body"]["data"]["to"] == "fail"),
        "{heard:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_not_yet_told_when_the_operator_stops_is_told_by_the_next() {
    let cluster = Cluster::start().await;
    cluster.create_secret("token", &[("token", TOKEN)]).await;
    cluster
        .create_secret("hooks", &[("token", WEBHOOK_SECRET)])
        .await;
    // The first request hangs; the operator is stopped while it waits for the answer.
    let hanging = receiver(cluster.dir.path(), WEBHOOK_SECRET, &["--hang-first", "60"]).await;
    notifying_control(
        &cluster,
        "sast",
        7,
        json!([{"name": "alerts", "url": hanging.base_url, "secretRef": {"name": "hooks"}}]),
    )
    .await;
    let args = ["--ping-timeout", "50s"];
    let mut first = Operator::start(&cluster, &args).await;
    cluster.wait_ready_reason("sast", "Ready").await;
    report(&cluster, &first, 7, "fail").await;
    let sent = wait_records(&hanging, 1).await;
    first.sigterm().await;
    let control = cluster.control("sast").await;
    let entry = &control.status.unwrap().notifications[0];
    assert!(entry.last_delivery.is_none(), "{entry:?}");

    let _second = Operator::start(&cluster, &args).await;
    let entry = delivered(&cluster, "sast", "alerts", ControlStatus::Fail).await;
    let records = wait_records(&hanging, 2).await;
    assert_eq!(
        records[1]["headers"]["webhook-id"], sent[0]["headers"]["webhook-id"],
        "the same message, for the receiver to drop if it had it"
    );
    assert_eq!(
        entry["lastDelivery"]["webhookId"],
        sent[0]["headers"]["webhook-id"]
    );
    assert_eq!(entry["lastDelivery"]["delivered"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_example_is_accepted_with_its_defaults_and_bad_targets_are_refused() {
    let cluster = Cluster::start().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/notify/notifications.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut kinds = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let object: Value = serde::Deserialize::deserialize(document).unwrap();
        let kind = object["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "ExternalControl" => cluster.create_control_from(object).await,
            "Secret" => {
                let secret = serde_json::from_value(object).unwrap();
                cluster
                    .secrets()
                    .create(&Default::default(), &secret)
                    .await
                    .unwrap();
            }
            // Flux's CRDs are not installed here; the Receiver is shown for its fields.
            _ => assert_eq!(kind, "Receiver"),
        }
        kinds.push(kind);
    }
    assert_eq!(kinds, ["ExternalControl", "Secret", "Secret", "Receiver"]);
    let stored = serde_json::to_value(cluster.control("sast-notified").await).unwrap();
    let notify = &stored["spec"]["notify"];
    assert_eq!(
        notify[0]["format"], "standardWebhooks",
        "the default format"
    );
    assert_eq!(notify[0]["caSecretRef"]["key"], "ca.crt");
    assert_eq!(
        notify[1]["statuses"],
        json!(["pass", "fail", "not_applicable"])
    );
    assert_eq!(notify[1]["secretRef"]["key"], "token");

    let target = |extra: Value| {
        let mut target = json!({"name": "alerts", "url": "https://hooks.example/x",
                                "secretRef": {"name": "h"}});
        target
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        target
    };
    let refused = [
        (
            json!([target(json!({"name": "Alerts!"}))]),
            "spec.notify[0].name",
        ),
        (
            json!([target(json!({"url": "ftp://hooks.example/x"}))]),
            "spec.notify[0].url",
        ),
        (
            json!([target(json!({"format": "slack"}))]),
            "spec.notify[0].format",
        ),
        (
            json!([target(json!({"statuses": ["passed"]}))]),
            "spec.notify[0].statuses[0]",
        ),
        (
            json!([target(json!({})), target(json!({}))]),
            "spec.notify[1]: Duplicate value",
        ),
    ];
    // As written, not as extctl's types would have it: the server is what refuses.
    let resource = ApiResource::erase::<ExternalControl>(&());
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &resource);
    for (notify, field) in refused {
        let control: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "bad"},
            "spec": {"projectId": 1, "controlId": 1, "secretRef": {"name": "t"}, "notify": notify},
        }))
        .unwrap();
        let error = api
            .create(&Default::default(), &control)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(field), "{field}: {error}");
    }
}

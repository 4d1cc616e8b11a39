//! The reconciler's decisions, unit-tested through its ports: `extctl dev`'s in-memory store
//! (the same API-server semantics the Kubernetes adapter relies on: resourceVersions, conflicts,
//! conditioned writes), a fake notifier that records every POST and answers as told, a journal
//! that records what it is told, and metrics of its own. No network, no clock: every reconcile
//! is given its `now`. Signatures are checked with the `hmac` crate, not extctl's code.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, KeyInit, Mac};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use sha2::Sha256;

use extctl::Metrics;
use extctl::{Console, MemoryStore};
use extctl_core::crd::Cause;
use extctl_core::crd::{ControlStatus, ExternalControl, StatusChangeRecord};
use extctl_core::history::HistoryPolicy;
use extctl_core::key::ObjectKey;
use extctl_core::ports::{Journal, Notifier, Outcome, Post};
use extctl_core::reconciler::Reconciler;

const CHECKER_URL: &str = "https://checker.example/ping";
const HOOK_URL: &str = "https://hooks.example/receiver";
const TOKEN: &str = "control-token";
const HOOK_TOKEN: &str = "receiver-token";

/// One POST the reconciler made.
#[derive(Debug, Clone)]
struct Sent {
    url: String,
    body: Value,
    raw: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Sent {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(key, _)| *key == name);
        found.map(|(_, value)| value.as_str())
    }
}

/// A notifier that records what it is asked to send and answers from a script (200 once the
/// script runs out).
#[derive(Clone, Default)]
struct FakeNotifier {
    sent: Arc<Mutex<Vec<Sent>>>,
    answers: Arc<Mutex<VecDeque<Result<u16, String>>>>,
}

impl FakeNotifier {
    fn answer_next(&self, answer: Result<u16, String>) {
        self.answers.lock().unwrap().push_back(answer);
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }
}

impl Notifier for FakeNotifier {
    async fn post(&self, post: &Post<'_>) -> Outcome {
        self.sent.lock().unwrap().push(Sent {
            url: post.url.to_owned(),
            body: serde_json::from_slice(&post.body).expect("a JSON body"),
            raw: post.body.clone(),
            headers: (post.headers)(Timestamp::now()),
        });
        let answer = self.answers.lock().unwrap().pop_front();
        Outcome {
            answer: answer.unwrap_or(Ok(200)),
            attempts: 1,
        }
    }
}

/// A journal that keeps what it is told.
#[derive(Clone, Default)]
struct Recorded {
    changes: Arc<Mutex<Vec<StatusChangeRecord>>>,
    warnings: Arc<Mutex<Vec<(String, String)>>>,
}

impl Journal for Recorded {
    fn status_changed(&self, _: &ExternalControl, record: &StatusChangeRecord) {
        self.changes.lock().unwrap().push(record.clone());
    }

    fn warning(&self, _: &ExternalControl, reason: &str, note: String) {
        self.warnings
            .lock()
            .unwrap()
            .push((reason.to_owned(), note));
    }
}

type TestReconciler = Reconciler<MemoryStore, Recorded, FakeNotifier>;

struct Setup {
    reconciler: TestReconciler,
    store: MemoryStore,
    notifier: FakeNotifier,
    journal: Recorded,
    metrics: Arc<Metrics>,
}

fn secret(name: &str, token: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
    }))
    .map(|mut secret: Secret| {
        secret.data = Some([("token".to_owned(), ByteString(token.into()))].into());
        secret
    })
    .unwrap()
}

/// `sast`: pinged hourly, failed 1 min after an accepted ping, `fail` told to a Flux receiver.
fn setup() -> Setup {
    let control: ExternalControl = serde_json::from_value(json!({
        "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
        "metadata": {"name": "sast", "namespace": "default"},
        "spec": {
            "projectId": 1, "projectPath": "group/sast", "controlId": 7,
            "secretRef": {"name": "token"}, "externalUrl": CHECKER_URL, "pingInterval": "1h", "pendingTimeout": "1m",
            "notify": [{"name": "flux", "url": HOOK_URL, "format": "fluxGenericHmac",
                        "secretRef": {"name": "hooks"}, "statuses": ["fail"]}],
        },
    }))
    .unwrap();
    let secrets = vec![secret("token", TOKEN), secret("hooks", HOOK_TOKEN)];
    let (store, _changes) = MemoryStore::new(vec![control], secrets, Console { json: true });
    let (notifier, journal) = (FakeNotifier::default(), Recorded::default());
    let metrics = Arc::new(Metrics::new());
    let history = HistoryPolicy {
        limit: 10,
        replica: None,
    };
    let reconciler = Reconciler::new(
        store.clone(),
        journal.clone(),
        notifier.clone(),
        history,
        metrics.clone(),
    );
    Setup {
        reconciler,
        store,
        notifier,
        journal,
        metrics,
    }
}

impl Setup {
    fn control(&self) -> Arc<ExternalControl> {
        self.store
            .get(&ObjectKey::new("default", "sast"))
            .expect("the control is loaded")
    }

    /// The metric line `series` as scraped now.
    fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics, &self.store, series)
    }

    /// The first reconcile initialises the control; returns its first reset's due time.
    async fn initialised(&self, now: Timestamp) -> Timestamp {
        let first = self.reconciler.reconcile(&self.control(), now).await;
        let first = first.unwrap();
        assert!(first.ping.is_none() && first.deliveries.is_empty());
        let status = self.control().status.clone().unwrap();
        assert_eq!(status.status, Some(ControlStatus::Pending));
        let next = status.next_ping_time.expect("a reset is scheduled").0;
        // One interval, plus this control's place in the first reset's spread (at most 5 min).
        let latest = now + SignedDuration::from_mins(65);
        assert!(
            next > now + SignedDuration::from_mins(59) && next <= latest,
            "{now} {next}"
        );
        assert_eq!(first.wake, Some(next));
        next
    }

    /// Carries out the reset due at `at` and sends its ping.
    async fn reset_and_ping(&self, at: Timestamp) {
        let reset = self
            .reconciler
            .reconcile(&self.control(), at)
            .await
            .unwrap();
        let ping = reset.ping.expect("a ping is owed after the reset");
        self.reconciler.ping(ping).await.unwrap();
    }
}

fn metric(metrics: &Metrics, store: &MemoryStore, series: &str) -> f64 {
    let text = metrics.encode(store);
    let line = text
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"));
    line[series.len()..].trim().parse().unwrap()
}

fn hmac_hex(key: &str, message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn a_reset_pings_the_checker_signed_and_an_accepted_ping_times_out_to_fail() {
    let setup = setup();
    let start = Timestamp::now();
    let due = setup.initialised(start).await;
    assert!(setup.notifier.sent().is_empty(), "nothing is due yet");

    setup.reset_and_ping(due).await;
    let sent = setup.notifier.sent();
    assert_eq!(sent.len(), 1);
    let ping = &sent[0];
    assert_eq!(ping.url, CHECKER_URL);
    assert_eq!(
        ping.header("X-GitLab-Signature"),
        Some(hmac_hex(TOKEN, &ping.raw).as_str()),
        "signed with the control's token"
    );
    let record = &ping.body["project_control_compliance_status"];
    assert_eq!(
        (
            &ping.body["id"],
            &record["compliance_requirements_control_id"]
        ),
        (&json!(1), &json!(7))
    );
    assert_eq!(record["status"], "pending");
    let status = setup.control().status.clone().unwrap();
    assert_eq!(status.status, Some(ControlStatus::Pending));
    let outcome = status.last_ping.expect("the ping's outcome is recorded");
    assert!(outcome.accepted());
    assert_eq!(outcome.attempts, Some(1));

    // Before the timeout nothing changes; after it, the control fails.
    let control = setup.control();
    let early = setup
        .reconciler
        .reconcile(&control, due + SignedDuration::from_secs(30));
    let early = early.await.unwrap();
    assert!(early.deliveries.is_empty());
    assert_eq!(early.wake, Some(due + SignedDuration::from_mins(1)));
    let late = due + SignedDuration::from_mins(2);
    let control = setup.control();
    let timed_out = setup.reconciler.reconcile(&control, late).await;
    let timed_out = timed_out.unwrap();
    let status = setup.control().status.clone().unwrap();
    assert_eq!(status.status, Some(ControlStatus::Fail));
    let change = status.history.last().expect("the change is kept");
    assert_eq!(
        (change.from, change.to, change.cause),
        (
            ControlStatus::Pending,
            ControlStatus::Fail,
            Cause::PendingTimeout
        )
    );
    assert_eq!(setup.journal.changes.lock().unwrap().len(), 1);
    assert_eq!(
        timed_out.deliveries.len(),
        1,
        "the fail is owed to the target"
    );

    assert_eq!(setup.metric("extctl_resets_total"), 1.0);
    assert_eq!(
        setup.metric(r#"extctl_pings_total{outcome="accepted"}"#),
        1.0
    );
    let transition =
        r#"extctl_status_transitions_total{cause="pending_timeout",from="pending",to="fail"}"#;
    assert_eq!(setup.metric(transition), 1.0);
}

#[tokio::test]
async fn a_change_is_told_once_even_to_a_reconcile_of_the_object_before_its_cursor() {
    let setup = setup();
    let due = setup.initialised(Timestamp::now()).await;
    setup.reset_and_ping(due).await;
    let late = due + SignedDuration::from_mins(2);
    let control = setup.control();
    let timed_out = setup.reconciler.reconcile(&control, late).await;
    // The object as a watch may still hold it after the delivery below has moved the cursor.
    let before_cursor = setup.control();
    for delivery in timed_out.unwrap().deliveries {
        setup.reconciler.deliver(delivery).await.unwrap();
    }
    let sent = setup.notifier.sent();
    assert_eq!(sent.len(), 2, "the ping, then the notification");
    let told = &sent[1];
    assert_eq!(told.url, HOOK_URL);
    let expected = format!("sha256={}", hmac_hex(HOOK_TOKEN, &told.raw));
    assert_eq!(told.header("X-Signature"), Some(expected.as_str()));
    assert_eq!(
        (&told.body["data"]["from"], &told.body["data"]["to"]),
        (&json!("pending"), &json!("fail"))
    );
    assert_eq!(told.body["data"]["projectPath"], "group/sast");
    let entry = setup.control().status.clone().unwrap().notifications[0].clone();
    let delivery = entry.last_delivery.expect("the outcome is recorded");
    assert!(delivery.delivered);
    assert_eq!(
        (delivery.to, delivery.http_status),
        (ControlStatus::Fail, Some(200))
    );

    let again = setup.reconciler.reconcile(&before_cursor, late).await;
    assert!(
        again.unwrap().deliveries.is_empty(),
        "a change already told is not sent again"
    );
    let control = setup.control();
    let current = setup.reconciler.reconcile(&control, late).await;
    assert!(current.unwrap().deliveries.is_empty());
    assert_eq!(setup.notifier.sent().len(), 2);
    assert_eq!(
        setup.metric(r#"extctl_notifications_total{outcome="delivered"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_refused_ping_warns_and_never_times_the_control_out() {
    let setup = setup();
    let due = setup.initialised(Timestamp::now()).await;
    setup.notifier.answer_next(Ok(503));
    setup.reset_and_ping(due).await;
    let warnings = setup.journal.warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let (reason, note) = &warnings[0];
    assert_eq!(reason, "PingFailed");
    assert!(
        note.contains("HTTP 503") && note.contains("the status stays pending"),
        "{note}"
    );
    assert!(!note.contains(TOKEN));
    let outcome = setup.control().status.clone().unwrap().last_ping.unwrap();
    assert_eq!(
        (outcome.http_status, outcome.accepted()),
        (Some(503), false)
    );

    // Only a checker that accepted the ping owes a result: no timeout.
    let control = setup.control();
    let late = setup
        .reconciler
        .reconcile(&control, due + SignedDuration::from_mins(5));
    assert!(late.await.unwrap().deliveries.is_empty());
    let status = setup.control().status.clone().unwrap();
    assert_eq!(status.status, Some(ControlStatus::Pending));
    assert_eq!(
        setup.metric(r#"extctl_pings_total{outcome="refused"}"#),
        1.0
    );
}

#[tokio::test]
async fn two_reconcilers_in_one_process_count_apart() {
    let (one, other) = (setup(), setup());
    let due = one.initialised(Timestamp::now()).await;
    one.reset_and_ping(due).await;
    assert_eq!(one.metric("extctl_resets_total"), 1.0);
    assert_eq!(other.metric("extctl_resets_total"), 0.0);
    let due = other.initialised(Timestamp::now()).await;
    other.reset_and_ping(due).await;
    let next = other
        .control()
        .status
        .clone()
        .unwrap()
        .next_ping_time
        .unwrap()
        .0;
    other.reset_and_ping(next).await;
    assert_eq!(one.metric(r#"extctl_pings_total{outcome="accepted"}"#), 1.0);
    assert_eq!(
        other.metric(r#"extctl_pings_total{outcome="accepted"}"#),
        2.0
    );
    // The reconcile durations are each reconciler's own too.
    let count = |setup: &Setup| setup.metric("extctl_reconcile_duration_seconds_count");
    assert_eq!((count(&one), count(&other)), (2.0, 3.0));
}

/// A control that does not hold its id (another, loaded first, does) is reset on schedule like
/// any other, but not pinged: its checker's answer would reach the holder, not it.
#[tokio::test]
async fn a_control_that_is_not_served_is_reset_but_not_pinged() {
    let setup = setup();
    let mut newcomer = (*setup.control()).clone();
    newcomer.metadata.name = Some("zz-copy".into());
    newcomer.metadata.uid = None;
    newcomer.status = None;
    let secrets = vec![secret("token", TOKEN), secret("hooks", HOOK_TOKEN)];
    let holder = (*setup.control()).clone();
    let (store, _changes) =
        MemoryStore::new(vec![holder, newcomer], secrets, Console { json: true });
    let reconciler = Reconciler::new(
        store.clone(),
        Recorded::default(),
        FakeNotifier::default(),
        HistoryPolicy {
            limit: 10,
            replica: None,
        },
        Arc::new(Metrics::new()),
    );
    let copy = || store.get(&ObjectKey::new("default", "zz-copy")).unwrap();
    let start = Timestamp::now();
    let first = reconciler.reconcile(&copy(), start).await.unwrap();
    assert!(first.ping.is_none());
    let ready = copy().status.clone().unwrap().conditions;
    let ready = ready.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "ControlIdTaken");
    let due = copy().status.clone().unwrap().next_ping_time.unwrap().0;
    let reset = reconciler.reconcile(&copy(), due).await.unwrap();
    let status = copy().status.clone().unwrap();
    assert_eq!(
        status.last_ping_time.map(|t| t.0),
        Some(due),
        "reset on schedule"
    );
    assert!(reset.ping.is_none(), "but not pinged");
}

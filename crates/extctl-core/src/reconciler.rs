//! The reconciler's logic, whatever stores the controls: keeps each control's status initialised
//! (`pending`), its `Ready` condition current, `observedGeneration` current, resets pinged
//! controls to `pending` when due, notifies the checker, and fails a notified control that stays
//! `pending` past its `pendingTimeout`, and tells `spec.notify` targets of status changes.
//!
//! `extctl run` drives it from kube-rs's `Controller` with a [`ControlStore`] on the Kubernetes
//! API; `extctl dev` drives it from a timer loop with an in-memory store. The decisions are made
//! here once, on top of the pure rules of this crate, and reach the world only through
//! [`crate::ports`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use crate::condition::Condition;
use kube::ResourceExt;

use crate::compliance::{Compliance, GateFacts};
use crate::crd::AppliedWaiver;
use crate::crd::{
    CaBundleRef, ControlStatus, DeliveryOutcome, ExternalControl, ExternalControlStatus,
    NotificationStatus, NotifyTarget, PingOutcome, REQUESTED_AT_ANNOTATION, StatusChangeRecord,
};
use crate::crd::{Cause, StatusChange};
use crate::destinations::shown_url;
use crate::history::HistoryPolicy;
use crate::key::ObjectKey;
use crate::notify;
use crate::ping::{self, PingSubject};
use crate::ports::{
    ControlStore, DeliveryResult, Journal, Notifier, Outcome, PingResult, Post, Recorder,
    SecretReadError,
};
use crate::readiness::{READY, Readiness};
use crate::report::current_status;
use crate::schedule::{self, PingFacts, PingPlan};
use crate::signature;
use crate::sync::lock;
use crate::tokens::SigningTokens;
use crate::waiver;
use crate::webhooks::{self, ChangeData};

/// What a reconcile did and leaves to do.
#[derive(Debug)]
pub struct Reconciled {
    /// When the control next needs a look, if before any change to it.
    pub wake: Option<Timestamp>,
    /// The notification owed to the checker for the reset just carried out.
    pub ping: Option<Ping>,
    /// Status changes to tell `spec.notify` targets, one delivery per target.
    pub deliveries: Vec<Delivery>,
}

/// The changes to tell one target, oldest first, and where its entry stands.
#[derive(Debug)]
pub struct Delivery {
    control: ExternalControl,
    target: NotifyTarget,
    index: usize,
    since: MicroTime,
    changes: Vec<StatusChangeRecord>,
}

/// How soon a control whose target is still being delivered to is looked at again, for the
/// changes stored meanwhile.
const DELIVERY_RECHECK: Duration = Duration::from_secs(1);

/// A notification to send: the control as reset, and when.
#[derive(Debug)]
pub struct Ping {
    control: ExternalControl,
    reset_at: Timestamp,
}

/// The longest a waiver may last after its creation, unless `--max-waiver-duration` says
/// otherwise: 90 days.
pub const DEFAULT_MAX_WAIVER: Duration = Duration::from_secs(90 * 24 * 3600);

/// The status a control reports before anyone has written it.
pub const INITIAL_STATUS: ControlStatus = ControlStatus::Pending;

/// The reconciler: its store, where it tells what happened, how it calls out, what history it
/// keeps, and where it counts what it did.
pub struct Reconciler<S, J, N> {
    pub store: S,
    pub journal: J,
    notifier: N,
    history: HistoryPolicy,
    metrics: Arc<dyn Recorder>,
    /// The longest a waiver may last after its creation (`--max-waiver-duration`).
    max_waiver: Duration,
    /// Per (control uid, target): one delivery at a time, and the cursor it last wrote.
    targets: Mutex<HashMap<(String, String), TargetState>>,
}

/// What this reconciler knows of one notification target.
#[derive(Debug, Default)]
struct TargetState {
    /// A delivery to it is under way.
    busy: bool,
    /// The cursor (`since`) this reconciler last wrote for it. The watch may bring a control
    /// from before that write after the delivery ended: its changes up to here are told, and
    /// must not be sent again.
    written: Option<MicroTime>,
}

impl<S: ControlStore, J: Journal, N: Notifier> Reconciler<S, J, N> {
    pub fn new(
        store: S,
        journal: J,
        notifier: N,
        history: HistoryPolicy,
        metrics: Arc<dyn Recorder>,
    ) -> Self {
        Self {
            store,
            journal,
            notifier,
            history,
            metrics,
            max_waiver: DEFAULT_MAX_WAIVER,
            targets: Mutex::default(),
        }
    }

    /// The longest a waiver may last after its creation; longer ones are refused.
    pub fn with_max_waiver(mut self, max: Duration) -> Self {
        self.max_waiver = max;
        self
    }

    /// Brings `control` up to date as of `now`; returns when it next needs a look (a reset or
    /// a pending timeout falling due; `None` when only a change to it can matter), and the
    /// notification owed to its checker after a reset this call carried out. The caller sends
    /// it with [`Self::ping`], off the reconcile path, so a slow checker holds up no reset.
    pub async fn reconcile(
        &self,
        control: &ExternalControl,
        now: Timestamp,
    ) -> Result<Reconciled, S::Error> {
        let started = std::time::Instant::now();
        let reconciled = self.reconcile_at(control, now).await;
        self.metrics.reconciled(started.elapsed());
        reconciled
    }

    async fn reconcile_at(
        &self,
        control: &ExternalControl,
        now: Timestamp,
    ) -> Result<Reconciled, S::Error> {
        // At the precision times are stored with: a ping's `time` equals `lastPingTime`.
        let now = schedule::to_microsecond(now);
        let current = control.status.clone().unwrap_or_default();
        let plan = ping_plan(control, &current, now);
        let deadline = control
            .spec
            .pending_timeout
            .parse()
            .ok()
            .and_then(|timeout| ping::timeout_deadline(&current, timeout));
        let requested = recheck_requested(control, &current);
        let change = match plan {
            PingPlan::Reset { .. } => Some(Cause::PingReset),
            _ if requested.is_some() => Some(Cause::PingReset),
            _ if deadline.is_some_and(|deadline| deadline <= now) => Some(Cause::PendingTimeout),
            _ => None,
        };
        let readiness = self.store.readiness(control).await?;
        let waivers = self.store.waivers(control);
        let waiver =
            waiver::applicable(waivers.iter().map(|w| &**w), control, now, self.max_waiver)
                .map(|w| waiver::applied(w, current.waiver.as_deref()));
        let waiver_expires = waiver.as_ref().map(|w| w.expires.0);
        let (mut desired, gate_expires) =
            desired_status(control, &current, &readiness, plan, change, waiver, now);
        if let Some(requested) = requested {
            desired.last_handled_requested_at = Some(requested.to_owned());
        }
        let (from, to) = (
            current_status(Some(&current)),
            current_status(Some(&desired)),
        );
        let record = change
            .and_then(|cause| StatusChange::between(cause, from, to))
            .map(|change| self.history.record(change, now));
        let history = self.history.for_control(control);
        if let Some(record) = &record {
            desired.history = history.appended(&current.history, record);
        }
        let waiver_records = waiver_changes(&self.history, &current, &desired, now);
        for record in &waiver_records {
            desired.history = history.appended(&desired.history, record);
        }
        desired.notifications = notify::entries(
            &control.spec.notify,
            &current.notifications,
            &desired.history,
            now,
        );
        let mut ping = None;
        if desired != current {
            self.store.write_status(control, &desired).await?;
            if let PingPlan::Reset { due, .. } = plan {
                self.metrics.reset(duration_until(due, now));
            }
            if let Some(record) = &record {
                self.metrics.transition(record.change());
                self.journal.status_changed(control, record);
            }
            for record in &waiver_records {
                self.journal.status_changed(control, record);
            }
            if !readiness.is_ready() {
                tracing::info!(control = %ObjectKey::of(control), reason = readiness.reason(), "control not ready");
            }
            // A control that claims an id another holds, or a project its namespace may not
            // claim, is told so once, as a Warning.
            let was = current.conditions.iter().find(|c| c.type_ == READY);
            let newly_refused = was.is_none_or(|c| c.reason != readiness.reason());
            let refused = matches!(
                readiness,
                Readiness::ControlIdTaken { .. } | Readiness::ProjectNotAllowed(_)
            );
            if newly_refused && refused {
                let note = readiness.message();
                self.journal.warning(control, readiness.reason(), note);
            }
            let pinged = control.spec.external_url.is_some() && readiness.is_served();
            if change == Some(Cause::PingReset) && pinged {
                // Only the writer whose reset won gets here: one ping per reset.
                ping = Some(Ping {
                    control: control.clone(),
                    reset_at: now,
                });
            }
        }
        let recheck = (!readiness.is_ready())
            .then(|| self.store.recheck_not_ready())
            .flatten()
            .and_then(|after| now.checked_add(after).ok());
        let (deliveries, busy) = self.due_deliveries(control, &desired);
        let wake = [
            plan.next(),
            deadline.filter(|d| *d > now),
            recheck,
            gate_expires,
            // The waiver's end is told on time, whether it holds the gate open or not.
            waiver_expires.filter(|at| *at > now),
            busy.then(|| now.checked_add(DELIVERY_RECHECK).ok())
                .flatten(),
        ];
        Ok(Reconciled {
            wake: wake.into_iter().flatten().min(),
            ping,
            deliveries,
        })
    }

    /// The deliveries to start for the changes in `status` (as stored), and whether any target
    /// had changes due but was still being delivered to.
    fn due_deliveries(
        &self,
        control: &ExternalControl,
        status: &ExternalControlStatus,
    ) -> (Vec<Delivery>, bool) {
        let uid = control.metadata.uid.clone().unwrap_or_default();
        let mut targets = lock(&self.targets);
        let mut busy = false;
        let mut deliveries = Vec::new();
        for (index, entry) in status.notifications.iter().enumerate() {
            let Some(target) = control.spec.notify.iter().find(|t| t.name == entry.name) else {
                continue;
            };
            let state = targets
                .entry((uid.clone(), target.name.clone()))
                .or_default();
            let since = match &state.written {
                Some(written) if written.0 > entry.since.0 => written.clone(),
                _ => entry.since.clone(),
            };
            let entry = NotificationStatus {
                since: since.clone(),
                ..entry.clone()
            };
            let changes = notify::due(target, &entry, &status.history);
            if changes.is_empty() {
                continue;
            }
            if state.busy {
                busy = true;
                continue;
            }
            state.busy = true;
            deliveries.push(Delivery {
                control: control.clone(),
                target: target.clone(),
                index,
                since,
                changes: changes.into_iter().cloned().collect(),
            });
        }
        (deliveries, busy)
    }

    /// Notifies the checker after a reset and records the outcome in `status.lastPing`.
    /// Failures leave the status `pending` and raise a warning.
    pub async fn ping(&self, ping: Ping) -> Result<(), S::Error> {
        let Ping { control, reset_at } = ping;
        let control = &control;
        let Some(url) = control.spec.external_url.as_deref() else {
            return Ok(());
        };
        let shown = shown_url(url);
        let outcome = match self.store.signing_tokens(control).await {
            Err(why) => {
                self.metrics.ping(PingResult::Skipped);
                let note = format!("Not notifying {shown}: {why}");
                self.journal.warning(control, "PingSkipped", note);
                PingOutcome {
                    time: MicroTime(reset_at),
                    http_status: None,
                    error: Some(why.to_string()),
                    attempts: Some(0),
                }
            }
            Ok(tokens) => {
                let namespace = control.namespace().unwrap_or_default();
                let name = control.name_any();
                let subject = PingSubject {
                    project_id: control.spec.project_id,
                    project_path: control.spec.project_path.as_deref(),
                    control_id: control.spec.control_id,
                    namespace: &namespace,
                    name: &name,
                    display_name: control.spec.display_name.as_deref(),
                    created: control.metadata.creation_timestamp.as_ref().map(|t| t.0),
                };
                let body = ping::payload(&subject, reset_at);
                let signature = signature::sign(tokens.current(), &body);
                let sent = match self
                    .ca_bundle(control, control.spec.ca_secret_ref.as_deref())
                    .await
                {
                    Ok(ca_bundle) => {
                        let headers = |_| vec![(ping::PING_SIGNATURE_HEADER, signature.clone())];
                        let post = Post {
                            url,
                            body,
                            ca_bundle: ca_bundle.as_deref(),
                            headers: &headers,
                        };
                        self.notifier.post(&post).await
                    }
                    Err(why) => Outcome::not_sent(why),
                };
                let outcome = PingOutcome {
                    time: MicroTime(reset_at),
                    http_status: sent.answer.as_ref().ok().copied(),
                    error: sent.answer.as_ref().err().cloned(),
                    attempts: Some(sent.attempts),
                };
                self.metrics.ping(match sent.answer {
                    _ if outcome.accepted() => PingResult::Accepted,
                    Ok(_) => PingResult::Refused,
                    Err(_) => PingResult::Failed,
                });
                if !outcome.accepted() {
                    let note = format!(
                        "Notifying {shown} failed after {} attempt(s): {}; the status stays pending",
                        sent.attempts,
                        sent.describe()
                    );
                    self.journal.warning(control, "PingFailed", note);
                }
                outcome
            }
        };
        self.store.write_last_ping(control, &outcome).await
    }

    /// The PEM bundle a CA reference names, or why there is none to use.
    async fn ca_bundle(
        &self,
        control: &ExternalControl,
        reference: Option<&CaBundleRef>,
    ) -> Result<Option<Vec<u8>>, Unsendable> {
        let Some(reference) = reference else {
            return Ok(None);
        };
        let name = &reference.name;
        let data = self
            .existing_secret(control, name, "CA bundle Secret")
            .await?;
        match data.get(&reference.key) {
            Some(pem) if !pem.0.is_empty() => Ok(Some(pem.0.clone())),
            _ => Err(Unsendable::NoCaBundle {
                secret: name.clone(),
                key: reference.key.clone(),
            }),
        }
    }

    /// Tells one target the changes due to it, oldest first, recording each outcome (and
    /// moving the target's cursor) before the next. A change whose delivery failed after every
    /// retry is recorded as not delivered and not tried again.
    pub async fn deliver(&self, delivery: Delivery) -> Result<(), S::Error> {
        let uid = delivery.control.metadata.uid.clone().unwrap_or_default();
        let mut written = None;
        let told = self.deliver_in_order(&delivery, &mut written).await;
        let mut targets = lock(&self.targets);
        let state = targets
            .entry((uid, delivery.target.name.clone()))
            .or_default();
        state.busy = false;
        if written.is_some() {
            state.written = written;
        }
        told
    }

    /// Delivers in order; `written` is the last cursor stored.
    async fn deliver_in_order(
        &self,
        delivery: &Delivery,
        written: &mut Option<MicroTime>,
    ) -> Result<(), S::Error> {
        let Delivery {
            control,
            target,
            index,
            ..
        } = delivery;
        let mut since = delivery.since.clone();
        for change in &delivery.changes {
            let outcome = self.deliver_one(control, target, change).await;
            let entry = NotificationStatus {
                name: target.name.clone(),
                since: change.time.clone(),
                last_delivery: Some(outcome),
            };
            if !self
                .store
                .write_notification(control, *index, &since, &entry)
                .await?
            {
                tracing::info!(control = %ObjectKey::of(control), target = %target.name, "another sender moved this notification target on");
                return Ok(());
            }
            since = change.time.clone();
            *written = Some(since.clone());
        }
        Ok(())
    }

    async fn deliver_one(
        &self,
        control: &ExternalControl,
        target: &NotifyTarget,
        change: &StatusChangeRecord,
    ) -> DeliveryOutcome {
        let uid = control.metadata.uid.as_deref().unwrap_or_default();
        let webhook_id = webhooks::message_id(uid, &target.name, change.time.0);
        let shown = shown_url(&target.url);
        let (result, attempts, answer) =
            match self.send_change(control, target, change, &webhook_id).await {
                Err(why) => {
                    let note = format!("Not notifying {} ({shown}): {why}", target.name);
                    self.journal.warning(control, "NotificationSkipped", note);
                    (DeliveryResult::Skipped, 0, Err(why.to_string()))
                }
                Ok(sent) => {
                    let result = match &sent.answer {
                        _ if sent.accepted() => DeliveryResult::Delivered,
                        Ok(_) => DeliveryResult::Refused,
                        Err(_) => DeliveryResult::Failed,
                    };
                    if result != DeliveryResult::Delivered {
                        let note = format!(
                            "Notifying {} ({shown}) of {} -> {} failed after {} attempt(s): {}",
                            target.name,
                            change.from,
                            change.to,
                            sent.attempts,
                            sent.describe()
                        );
                        self.journal.warning(control, "NotificationFailed", note);
                    }
                    (result, sent.attempts, sent.answer)
                }
            };
        self.metrics.delivery(result);
        DeliveryOutcome {
            webhook_id,
            to: change.to,
            time: MicroTime(schedule::to_microsecond(Timestamp::now())),
            delivered: result == DeliveryResult::Delivered,
            attempts,
            http_status: answer.as_ref().ok().copied(),
            error: answer.err(),
        }
    }

    /// POSTs the change to the target, signed; `Err` when it could not be sent at all (its
    /// Secret or CA bundle unusable).
    async fn send_change(
        &self,
        control: &ExternalControl,
        target: &NotifyTarget,
        change: &StatusChangeRecord,
        webhook_id: &str,
    ) -> Result<Outcome, Unsendable> {
        let (tokens, ca_bundle) = self.prepare(control, target).await?;
        let namespace = control.namespace().unwrap_or_default();
        let name = control.name_any();
        let body = webhooks::payload(&ChangeData {
            namespace: &namespace,
            name: &name,
            display_name: control.spec.display_name.as_deref(),
            project_id: control.spec.project_id,
            project_path: control.spec.project_path.as_deref(),
            control_id: control.spec.control_id,
            from: change.from,
            to: change.to,
            cause: change.cause,
            time: change.time.clone(),
        });
        let headers = |now| {
            // `prepare` checked the secrets for the format: signing cannot fail here.
            webhooks::signed_headers(target.format, &tokens, webhook_id, now, &body)
                .unwrap_or_default()
        };
        let post = Post {
            url: &target.url,
            body: body.clone(),
            ca_bundle: ca_bundle.as_deref(),
            headers: &headers,
        };
        Ok(self.notifier.post(&post).await)
    }

    /// The data of Secret `name` in the control's namespace; a missing one is an error that
    /// calls it `what`.
    async fn existing_secret(
        &self,
        control: &ExternalControl,
        name: &str,
        what: &'static str,
    ) -> Result<BTreeMap<String, ByteString>, Unsendable> {
        self.store
            .secret_data(control, name)
            .await?
            .ok_or_else(|| Unsendable::NotFound {
                what,
                secret: name.to_owned(),
            })
    }

    /// The target's signing tokens (checked for its format) and CA bundle.
    async fn prepare(
        &self,
        control: &ExternalControl,
        target: &NotifyTarget,
    ) -> Result<(SigningTokens, Option<Vec<u8>>), Unsendable> {
        let reference = &target.secret_ref;
        let name = &reference.name;
        let data = self.existing_secret(control, name, "Secret").await?;
        let tokens = SigningTokens::from_secret_data(&data, &reference.key).map_err(|problem| {
            Unsendable::Token {
                secret: name.clone(),
                problem,
            }
        })?;
        if target.format == crate::crd::NotifyFormat::StandardWebhooks {
            for secret in tokens.all() {
                webhooks::standard_key(secret).map_err(|problem| Unsendable::NotBase64 {
                    secret: name.clone(),
                    key: reference.key.clone(),
                    problem,
                })?;
            }
        }
        let ca_bundle = self
            .ca_bundle(control, target.ca_secret_ref.as_ref())
            .await?;
        Ok((tokens, ca_bundle))
    }
}

/// Why a ping or a notification could not be sent at all: what to fix, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsendable {
    #[error(transparent)]
    Unreadable(#[from] SecretReadError),
    #[error("{what} {secret:?} not found")]
    NotFound { what: &'static str, secret: String },
    #[error("Secret {secret:?}: {problem}")]
    Token {
        secret: String,
        problem: crate::tokens::TokenProblem,
    },
    #[error("Secret {secret:?} key {key:?} {problem}")]
    NotBase64 {
        secret: String,
        key: String,
        problem: webhooks::NotBase64,
    },
    #[error("CA bundle Secret {secret:?}: key {key:?} is missing or empty")]
    NoCaBundle { secret: String, key: String },
}

/// The `extctl.dev/requestedAt` value to act on: set, and not the one last handled. A value
/// that is a time (what `extctl ping` writes) no later than the last reset counts as handled
/// too: should the server drop `lastHandledRequestedAt` (a CRD older than this extctl), a
/// request is still acted on once, never in a loop of resets and pings.
fn recheck_requested<'a>(
    control: &'a ExternalControl,
    status: &ExternalControlStatus,
) -> Option<&'a str> {
    let requested = control.annotations().get(REQUESTED_AT_ANNOTATION)?;
    if status.last_handled_requested_at.as_ref() == Some(requested) {
        return None;
    }
    let asked_at = requested.parse::<Timestamp>().ok();
    let reset_since = status.last_ping_time.as_ref().map(|t| t.0);
    if let (Some(asked_at), Some(reset_at)) = (asked_at, reset_since)
        && reset_at >= asked_at
    {
        return None;
    }
    Some(requested.as_str())
}

fn ping_plan(
    control: &ExternalControl,
    status: &ExternalControlStatus,
    now: Timestamp,
) -> PingPlan {
    // The schema guarantees a valid interval; should one slip past it, ping stays off.
    let Ok(interval) = control.spec.ping_interval.parse() else {
        return PingPlan::Off;
    };
    let facts = PingFacts {
        enabled: control.spec.ping_enabled,
        interval,
        created: control
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(now, |t| t.0),
        seen_before: status.observed_generation.is_some(),
        status: current_status(Some(status)),
        last_update: status.last_update_time.as_ref().map(|t| t.0),
        next_ping: status.next_ping_time.as_ref().map(|t| t.0),
        scheduled_interval: status.ping_interval.as_ref().and_then(|i| i.parse().ok()),
        spread_seed: spread_seed(control),
    };
    schedule::plan(&facts, now)
}

/// A number fixed per control, the same on every replica: from its uid (or, without one, its
/// name).
fn spread_seed(control: &ExternalControl) -> u64 {
    use sha2::Digest;
    let identity = control
        .metadata
        .uid
        .clone()
        .unwrap_or_else(|| ObjectKey::of(control).to_string());
    let digest = sha2::Sha256::digest(identity.as_bytes());
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 8 bytes"),
    )
}

/// The records of a waiver ending and another (or the same, changed) beginning between the
/// stored status and the desired one. A waiver a pass ended was recorded ended by that report.
fn waiver_changes(
    history: &HistoryPolicy,
    current: &ExternalControlStatus,
    desired: &ExternalControlStatus,
    now: Timestamp,
) -> Vec<StatusChangeRecord> {
    let status = current_status(Some(desired));
    let (was, is) = (current.waiver.as_ref(), desired.waiver.as_ref());
    let same = |a: &AppliedWaiver, b: &AppliedWaiver| a.name == b.name;
    let mut records = Vec::new();
    if let Some(was) = was.filter(|was| was.ended.is_none() && is.is_none_or(|is| !same(was, is))) {
        records.push(history.record_waiver(Cause::WaiverEnded, &was.name, status, now));
    }
    if let Some(is) = is.filter(|is| was.is_none_or(|was| !same(was, is))) {
        records.push(history.record_waiver(Cause::WaiverApplied, &is.name, status, now));
    }
    records
}

/// The status the reconciler wants, from the current one (equal to it when nothing is to do),
/// and when the gate it holds changes by itself (a result kept through a re-check expiring).
fn desired_status(
    control: &ExternalControl,
    current: &ExternalControlStatus,
    readiness: &Readiness,
    plan: PingPlan,
    change: Option<Cause>,
    waiver: Option<AppliedWaiver>,
    now: Timestamp,
) -> (ExternalControlStatus, Option<Timestamp>) {
    let generation = control.metadata.generation;
    let mut desired = current.clone();
    desired.status = Some(current.status.unwrap_or(INITIAL_STATUS));
    desired.observed_generation = generation;
    desired.conditions = replace_ready(
        &current.conditions,
        readiness.condition(generation, &current.conditions, now),
    );
    desired.next_ping_time = plan.next().map(MicroTime);
    desired.ping_interval = control
        .spec
        .ping_enabled
        .then(|| control.spec.ping_interval.clone());
    match change {
        Some(Cause::PingReset) => {
            desired.status = Some(ControlStatus::Pending);
            desired.last_update_time = Some(MicroTime(now));
            desired.last_ping_time = Some(MicroTime(now));
            // The previous round's outcome must not time out this one.
            desired.last_ping = None;
        }
        Some(Cause::PendingTimeout) => {
            desired.status = Some(ControlStatus::Fail);
            desired.last_update_time = Some(MicroTime(now));
            desired.last_result_time = Some(MicroTime(now));
        }
        Some(Cause::Reported | Cause::WaiverApplied | Cause::WaiverEnded) | None => {}
    }
    let status = current_status(Some(&desired));
    let facts = GateFacts {
        status,
        last_result_time: desired.last_result_time.as_ref().map(|t| t.0),
        // The schema guarantees valid durations; should one slip past it, a kept result
        // expires at once rather than never.
        max_staleness: control.spec.max_staleness().unwrap_or_default(),
        previous: &desired.conditions,
        timed_out: change == Some(Cause::PendingTimeout),
        reported: false,
        waiver: waiver.as_ref(),
        waived_before: current.waiver.as_ref().and_then(|w| w.waiving),
    };
    let (gate, expires) = Compliance::assess(&facts, now);
    desired.conditions = gate.conditions(status, &desired.conditions, generation, now);
    desired.waiver = waiver.map(|waiver| {
        Box::new(AppliedWaiver {
            waiving: gate.waiving(),
            ..waiver
        })
    });
    (desired, expires)
}

fn replace_ready(conditions: &[Condition], ready: Condition) -> Vec<Condition> {
    conditions
        .iter()
        .filter(|c| c.type_ != READY)
        .cloned()
        .chain(std::iter::once(ready))
        .collect()
}

/// How long from `now` until `next` (zero when it is already due).
pub fn duration_until(now: Timestamp, next: Timestamp) -> std::time::Duration {
    std::time::Duration::try_from(next.duration_since(now)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested(value: Option<&str>, handled: Option<&str>, reset_at: Option<&str>) -> bool {
        let mut control = ExternalControl::new(
            "c",
            serde_json::from_value(serde_json::json!({
                "projectId": 1, "controlId": 1, "secretRef": {"name": "s"}
            }))
            .unwrap(),
        );
        if let Some(value) = value {
            control
                .annotations_mut()
                .insert(REQUESTED_AT_ANNOTATION.into(), value.into());
        }
        let status = ExternalControlStatus {
            last_handled_requested_at: handled.map(str::to_owned),
            last_ping_time: reset_at.map(|t| MicroTime(t.parse().unwrap())),
            ..Default::default()
        };
        recheck_requested(&control, &status).is_some()
    }

    #[test]
    fn a_re_check_is_acted_on_once_per_new_value() {
        let asked = "2026-12-03T10:00:00Z";
        assert!(!requested(None, None, None), "no annotation");
        assert!(requested(Some(asked), None, None), "never handled");
        assert!(
            requested(Some("again"), Some("before"), None),
            "any new value"
        );
        assert!(!requested(Some(asked), Some(asked), None), "handled");
        // A time no later than the last reset is handled, even if the server dropped the record.
        assert!(!requested(Some(asked), None, Some("2026-12-03T10:00:01Z")));
        assert!(requested(Some(asked), None, Some("2026-12-03T09:59:59Z")));
        // A value that is not a time has only the record to go by.
        assert!(requested(
            Some("now please"),
            None,
            Some("2026-12-03T10:00:01Z")
        ));
    }

    #[test]
    fn a_waiver_starting_changing_or_ending_is_recorded_once() {
        let policy = HistoryPolicy {
            limit: 10,
            replica: None,
        };
        let terms = |name: &str, ended: bool| AppliedWaiver {
            name: name.into(),
            reason: "r".into(),
            expires: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::MAX),
            ticket: None,
            outcomes: vec![],
            granted_by: "alice".into(),
            waiving: None,
            ended: ended.then_some(MicroTime(Timestamp::UNIX_EPOCH)),
        };
        let status = |waiver: Option<AppliedWaiver>| ExternalControlStatus {
            status: Some(ControlStatus::Fail),
            waiver: waiver.map(Box::new),
            ..Default::default()
        };
        let recorded = |was, is| -> Vec<(Cause, String, ControlStatus)> {
            waiver_changes(&policy, &status(was), &status(is), Timestamp::UNIX_EPOCH)
                .into_iter()
                .map(|r| (r.cause, r.waiver.unwrap(), r.to))
                .collect()
        };
        let fail = ControlStatus::Fail;
        assert_eq!(
            recorded(None, Some(terms("a", false))),
            [(Cause::WaiverApplied, "a".into(), fail)]
        );
        assert_eq!(
            recorded(Some(terms("a", false)), Some(terms("a", false))),
            []
        );
        assert_eq!(
            recorded(Some(terms("a", false)), Some(terms("b", false))),
            [
                (Cause::WaiverEnded, "a".into(), fail),
                (Cause::WaiverApplied, "b".into(), fail)
            ]
        );
        assert_eq!(
            recorded(Some(terms("a", false)), None),
            [(Cause::WaiverEnded, "a".into(), fail)]
        );
        // A pass ended it, and that report recorded it.
        assert_eq!(recorded(Some(terms("a", true)), None), []);
    }
}

//! The reconciler: keeps each control's status initialised (`pending`), its `Ready` condition
//! true to the cluster (Secret present, key present, id unique), `observedGeneration` current,
//! and resets pinged controls to `pending` when due, waking each control at its own
//! `nextPingTime` (no polling loop, no periodic list).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::events::{Cause, StatusEvents};
use super::notify::Notifier;
use super::registry::is_conflict;
use super::watch::{Stores, controls_with_id, qualified_name};
use crate::core::ping::{self, PingSubject};
use crate::core::readiness::{READY, Readiness};
use crate::core::report::current_status;
use crate::core::schedule::{self, PingFacts, PingPlan};
use crate::core::signature;
use crate::crd::{
    ControlStatus, DurationString, ExternalControl, ExternalControlStatus, PingOutcome,
};

pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub events: StatusEvents,
    pub notifier: Notifier,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("writing the status of {control} failed: {source}")]
    Write {
        control: String,
        #[source]
        source: kube::Error,
    },
}

pub async fn reconcile(
    control: Arc<ExternalControl>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let now = Timestamp::now();
    let current = control.status.clone().unwrap_or_default();
    let plan = ping_plan(&control, &current, now);
    let deadline = control
        .spec
        .pending_timeout
        .parse()
        .ok()
        .and_then(|timeout| ping::timeout_deadline(&current, timeout));
    let change = match plan {
        PingPlan::Reset { .. } => Some(Cause::PingReset),
        _ if deadline.is_some_and(|deadline| deadline <= now) => Some(Cause::PendingTimeout),
        _ => None,
    };
    let readiness = evaluate(&control, &context.stores);
    let desired = desired_status(&control, &current, &readiness, plan, change, now);
    if desired != current {
        write_status(&context.client, &control, &desired).await?;
        let (from, to) = (
            current_status(Some(&current)),
            current_status(Some(&desired)),
        );
        if let Some(cause) = change.filter(|_| from != to) {
            context.events.status_changed(&control, cause, from, to);
        }
        if !readiness.is_ready() {
            tracing::info!(control = %qualified_name(control.as_ref()), reason = readiness.reason(), "control not ready");
        }
        if change == Some(Cause::PingReset) {
            // Only the replica whose reset write won gets here: one ping per reset.
            notify(&control, &context, now).await?;
        }
    }
    let wake = [plan.next(), deadline.filter(|d| *d > now)];
    Ok(match wake.into_iter().flatten().min() {
        Some(next) => Action::requeue(until(now, next)),
        None => Action::await_change(),
    })
}

/// Notifies the checker after a reset, when the control has an `externalUrl`, and records the
/// outcome in `status.lastPing`. Failures leave the status `pending` and raise a Warning.
async fn notify(
    control: &ExternalControl,
    context: &Context,
    reset_at: Timestamp,
) -> Result<(), ReconcileError> {
    let Some(url) = control.spec.external_url.as_deref() else {
        return Ok(());
    };
    let outcome = match context.stores.tokens(control) {
        Err(why) => {
            let note = format!("Not notifying {url}: {why}");
            context.events.warning(control, "PingSkipped", note);
            PingOutcome {
                time: MicroTime(reset_at),
                http_status: None,
                error: Some(why),
            }
        }
        Ok(tokens) => {
            let namespace = control.namespace().unwrap_or_default();
            let name = control.name_any();
            let subject = PingSubject {
                project_id: control.spec.project_id,
                control_id: control.spec.control_id,
                namespace: &namespace,
                name: &name,
                display_name: control.spec.display_name.as_deref(),
            };
            let body = ping::payload(&subject, reset_at);
            let signature = signature::sign(tokens.current(), &body);
            let answer = context.notifier.ping(url, body, signature).await;
            let outcome = PingOutcome {
                time: MicroTime(reset_at),
                http_status: answer.as_ref().ok().copied(),
                error: answer.as_ref().err().cloned(),
            };
            if !outcome.accepted() {
                let why = answer.map_or_else(|error| error, |code| format!("HTTP {code}"));
                let note = format!("Notifying {url} failed: {why}; the status stays pending");
                context.events.warning(control, "PingFailed", note);
            }
            outcome
        }
    };
    // Written without a precondition: only the replica that carried out this reset writes it.
    let patch = json!({ "status": { "lastPing": outcome } });
    patch_status(&context.client, control, &patch).await
}

/// A conflict means a newer version is already on its way through the watch: retry soon.
pub fn error_policy(_: Arc<ExternalControl>, error: &ReconcileError, _: Arc<Context>) -> Action {
    let ReconcileError::Write { source, .. } = error;
    if is_conflict(source) {
        Action::requeue(Duration::from_millis(200))
    } else {
        tracing::warn!(%error, "reconcile failed");
        Action::requeue(Duration::from_secs(5))
    }
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
    };
    schedule::plan(&facts, now)
}

/// The status the reconciler wants, from the current one; equal to it when nothing is to do.
fn desired_status(
    control: &ExternalControl,
    current: &ExternalControlStatus,
    readiness: &Readiness,
    plan: PingPlan,
    change: Option<Cause>,
    now: Timestamp,
) -> ExternalControlStatus {
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
            desired.last_update_time = Some(Time(now));
            desired.last_ping_time = Some(MicroTime(now));
            // The previous round's outcome must not time out this one.
            desired.last_ping = None;
        }
        Some(Cause::PendingTimeout) => {
            desired.status = Some(ControlStatus::Fail);
            desired.last_update_time = Some(Time(now));
        }
        Some(Cause::Reported) | None => {}
    }
    desired
}

/// Writes the reconciler's fields, conditioned on the version read: a checker's report stored
/// meanwhile is never overwritten, and of several replicas exactly one carries out a reset.
async fn write_status(
    client: &Client,
    control: &ExternalControl,
    desired: &ExternalControlStatus,
) -> Result<(), ReconcileError> {
    let patch = json!({
        "metadata": { "resourceVersion": control.resource_version() },
        "status": {
            "status": desired.status,
            "lastUpdateTime": desired.last_update_time,
            "lastPingTime": desired.last_ping_time,
            "lastPing": desired.last_ping,
            // `null` removes the field in a merge patch: ping disabled has no next reset.
            "nextPingTime": desired.next_ping_time,
            "pingInterval": desired.ping_interval.as_ref().map(|DurationString(text)| text),
            "observedGeneration": desired.observed_generation,
            "conditions": desired.conditions,
        }
    });
    patch_status(client, control, &patch).await
}

/// A merge patch of the control's status subresource.
async fn patch_status(
    client: &Client,
    control: &ExternalControl,
    patch: &serde_json::Value,
) -> Result<(), ReconcileError> {
    let namespace = control.namespace().unwrap_or_default();
    let api: Api<ExternalControl> = Api::namespaced(client.clone(), &namespace);
    api.patch_status(
        &control.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| ReconcileError::Write {
        control: qualified_name(control),
        source,
    })
}

fn until(now: Timestamp, next: Timestamp) -> Duration {
    Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO)
}

fn evaluate(control: &ExternalControl, stores: &Stores) -> Readiness {
    let namespace = control.namespace().unwrap_or_default();
    let secret = stores
        .secrets
        .get(&ObjectRef::new(&control.spec.secret_ref.name).within(&namespace));
    let me = qualified_name(control);
    let mut others: Vec<String> = controls_with_id(&stores.controls, control.spec.control_id)
        .iter()
        .map(|other| qualified_name(other.as_ref()))
        .filter(|other| *other != me)
        .collect();
    others.sort();
    Readiness::evaluate(control, secret.as_deref(), others)
}

fn replace_ready(conditions: &[Condition], ready: Condition) -> Vec<Condition> {
    conditions
        .iter()
        .filter(|c| c.type_ != READY)
        .cloned()
        .chain(std::iter::once(ready))
        .collect()
}

/// The status a control reports before anyone has written it.
pub const INITIAL_STATUS: ControlStatus = ControlStatus::Pending;

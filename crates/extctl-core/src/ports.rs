//! The ports: every trait the core's logic needs from the outside world, each implemented by
//! an adapter in the `extctl` binary crate (Kubernetes, or `extctl dev`'s memory) or by a test.
//!
//! - [`EndpointStore`]: what the endpoint needs from wherever controls live (look a control up
//!   by id, read its tokens, store a verified report);
//! - [`ControlStore`]: what the reconciler needs from it (readiness, conditioned status writes);
//! - [`Journal`]: where status changes and warnings are told (Events, or the dev console);
//! - [`Notifier`]: how a signed POST leaves (pings, status-change notifications);
//! - [`Recorder`]: the metrics the reconciler records.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use crate::crd::{Cause, StatusChange};
use crate::crd::{
    ControlStatus, ExternalControl, ExternalControlSpec, ExternalControlStatus, NotificationStatus,
    PingOutcome, StatusChangeRecord,
};
use crate::protocol::Rejection;
use crate::readiness::Readiness;
use crate::report::Report;
use crate::tokens::{NoTokens, SigningTokens};

/// How fresh the copy of a control's Secret must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// A copy kept from a recent read will do.
    Kept,
    /// Read it again, unless that was done a moment ago (forged calls must not become API load).
    Reread,
}

/// The outcome of a stored report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub previous: ControlStatus,
    pub stored: ControlStatus,
}

impl Recorded {
    /// The change this report made, if it made one (an audit event, then).
    pub fn change(&self) -> Option<StatusChange> {
        StatusChange::between(Cause::Reported, self.previous, self.stored)
    }
}

/// A Secret the store could not read, with the store's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading Secret {secret:?} failed: {reason}")]
pub struct SecretReadError {
    pub secret: String,
    pub reason: String,
}

/// What the endpoint needs from wherever controls live.
pub trait EndpointStore: Send + Sync + 'static {
    /// Whether controls and Secrets have been loaded, so lookups can be trusted.
    fn ready(&self) -> bool;

    /// The control a call for `project` (the `:id` as decoded) and this `controlId` reaches
    /// (see [`the_holder`]): `ControlNotFound`, or `Unavailable` while controls (and the
    /// namespaces' allowances) are still loading. Answered from memory.
    fn lookup(&self, project: &str, control_id: i64) -> Result<Arc<ExternalControl>, Rejection>;

    /// The control's signing tokens, or why there are none (never the token itself).
    /// `Freshness::Reread` asks for the Secret as it is now, after a signature did not verify
    /// with the copy kept (a token may have just been rotated).
    fn tokens(
        &self,
        control: &ExternalControl,
        freshness: Freshness,
    ) -> impl Future<Output = Result<SigningTokens, NoTokens>> + Send;

    /// Stores a verified report, atomically with its nonce: a nonce already recorded by anyone
    /// (any replica) yields `InvalidNonce`. Returns only once the store has accepted the write.
    fn record(
        &self,
        control: &ExternalControl,
        report: Report,
    ) -> impl Future<Output = Result<Recorded, Rejection>> + Send;
}

/// The control a call for `project` reaches among `claimants` (the controls with the
/// `controlId` called that may claim their projects), ranked by `rank`
/// ([`crate::readiness::holder_rank`] of each): the served one naming `project` (see
/// [`crate::readiness::holders`]), or else the first served one (the project check then
/// answers `Project not found`, in GitLab's order); `ControlNotFound` when none. A newcomer
/// claiming a project's id that is served never takes it, nor blocks its holder.
pub fn the_holder<T, R: Ord>(
    claimants: impl IntoIterator<Item = T>,
    rank: impl Fn(&T) -> R,
    spec: impl Fn(&T) -> &ExternalControlSpec,
    project: &str,
) -> Result<T, Rejection> {
    let mut claimants: Vec<T> = claimants.into_iter().collect();
    if claimants.len() > 1 {
        claimants.sort_by_cached_key(|claimant| rank(claimant));
    }
    let at = {
        let specs: Vec<&ExternalControlSpec> = claimants.iter().map(&spec).collect();
        let holders = crate::readiness::holders(&specs);
        let mut served = (0..specs.len()).filter(|&at| holders[at].is_none());
        served
            .clone()
            .find(|&at| crate::project::names_project(project, specs[at]))
            .or_else(|| served.next())
            .ok_or(Rejection::ControlNotFound)?
    };
    Ok(claimants.swap_remove(at))
}

/// Where status changes and warnings are told: Kubernetes Events, or `extctl dev`'s console.
/// Telling must not fail the write it reports (the status is already stored).
pub trait Journal: Send + Sync + 'static {
    /// A stored change of status (also kept in `status.history`, when that is on).
    fn status_changed(&self, control: &ExternalControl, record: &StatusChangeRecord);

    /// Something about `control` needs attention (a failed or skipped ping); `reason` is
    /// PascalCase.
    fn warning(&self, control: &ExternalControl, reason: &str, note: String);
}

/// What the reconciler needs from wherever controls live.
pub trait ControlStore: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether calls for `control` can succeed, judged from its Secret and the other controls.
    fn readiness(
        &self,
        control: &ExternalControl,
    ) -> impl Future<Output = Result<Readiness, Self::Error>> + Send;

    /// The control's signing tokens, or why there are none (never the token itself).
    fn signing_tokens(
        &self,
        control: &ExternalControl,
    ) -> impl Future<Output = Result<SigningTokens, NoTokens>> + Send;

    /// The waivers of the control's namespace (every one: which applies is decided in
    /// [`crate::waiver::applicable`]).
    fn waivers(&self, control: &ExternalControl) -> Vec<std::sync::Arc<crate::waiver::Waiver>>;

    /// How soon a control that is not ready is looked at again, when the store does not tell
    /// of every change to Secrets (`None`: it does).
    fn recheck_not_ready(&self) -> Option<std::time::Duration>;

    /// Writes the reconciler's status fields, conditioned on the version `control` was read at:
    /// a report stored meanwhile is never overwritten, and of several writers exactly one
    /// carries out a reset.
    fn write_status(
        &self,
        control: &ExternalControl,
        desired: &ExternalControlStatus,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Records a notification's outcome, if `lastPingTime` is still the reset it notified
    /// (`outcome.time`); otherwise a later reset superseded it, and it is dropped.
    fn write_last_ping(
        &self,
        control: &ExternalControl,
        outcome: &PingOutcome,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The data of a Secret in the control's namespace (`None`: it does not exist), or why it
    /// could not be read.
    fn secret_data(
        &self,
        control: &ExternalControl,
        name: &str,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, ByteString>>, SecretReadError>> + Send;

    /// Replaces `status.notifications[index]` with `entry`, if it still is the entry for
    /// `entry.name` with the cursor `since`; `Ok(false)` when it is not (another sender moved
    /// it, or the targets changed), and nothing is written.
    fn write_notification(
        &self,
        control: &ExternalControl,
        index: usize,
        since: &MicroTime,
        entry: &NotificationStatus,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

/// One POST to make: where, what, and the headers to sign each attempt with (a signature may
/// cover the attempt's time).
pub struct Post<'a> {
    pub url: &'a str,
    pub body: Vec<u8>,
    /// A PEM CA bundle for the destination's certificate, in addition to the system's roots.
    pub ca_bundle: Option<&'a [u8]>,
    pub headers: &'a (dyn Fn(Timestamp) -> Vec<(&'static str, String)> + Send + Sync),
}

/// What a call came to, after its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The last attempt's HTTP status, or why it had none.
    pub answer: Result<u16, String>,
    pub attempts: u32,
}

impl Outcome {
    /// Not sent at all, for `why`.
    pub fn not_sent(why: impl std::fmt::Display) -> Self {
        Self {
            answer: Err(why.to_string()),
            attempts: 0,
        }
    }

    /// A 2xx answer.
    pub fn accepted(&self) -> bool {
        self.answer
            .as_ref()
            .is_ok_and(|code| (200..300).contains(code))
    }

    /// The answer as a line for an Event: `HTTP 503` or the error.
    pub fn describe(&self) -> String {
        match &self.answer {
            Ok(code) => format!("HTTP {code}"),
            Err(error) => error.clone(),
        }
    }
}

/// How signed POSTs leave: retried, checked against the destination rules, over TLS with the
/// CA bundle given.
pub trait Notifier: Send + Sync + 'static {
    fn post(&self, post: &Post<'_>) -> impl Future<Output = Outcome> + Send;
}

/// What happened to an outbound ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingResult {
    /// The checker answered 2xx.
    Accepted,
    /// The checker answered, but not 2xx.
    Refused,
    /// No answer: connection failure or timeout.
    Failed,
    /// Not sent: the control's signing token is unavailable.
    Skipped,
}

impl PingResult {
    pub const ALL: [Self; 4] = [Self::Accepted, Self::Refused, Self::Failed, Self::Skipped];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// What happened to a status-change notification (`spec.notify`), after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    /// The receiver answered 2xx.
    Delivered,
    /// The receiver answered, but not 2xx.
    Refused,
    /// No answer: connection failure, timeout, or a destination refused by the rules.
    Failed,
    /// Not sent: the target's Secret or CA bundle is unusable.
    Skipped,
}

impl DeliveryResult {
    pub const ALL: [Self; 4] = [Self::Delivered, Self::Refused, Self::Failed, Self::Skipped];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// The metrics the reconciler records; passed in, so two reconcilers in one process count
/// apart.
pub trait Recorder: Send + Sync + 'static {
    /// One control reconciled in `elapsed`.
    fn reconciled(&self, elapsed: Duration);
    /// A scheduled reset stored `lateness` after it fell due.
    fn reset(&self, lateness: Duration);
    /// A stored change of status.
    fn transition(&self, change: StatusChange);
    fn ping(&self, result: PingResult);
    fn delivery(&self, result: DeliveryResult);
}

//! What the endpoint needs from wherever controls live.
//!
//! `extctl run` implements it on Kubernetes (reflector stores and status-subresource writes);
//! any other store (such as an in-memory one for a local sandbox) implements the same trait, so
//! the endpoint's verification code is shared, never copied.

use std::future::Future;
use std::sync::Arc;

use crate::core::protocol::Rejection;
use crate::core::report::{Cause, Report, StatusChange};
use crate::core::tokens::SigningTokens;
use crate::crd::{ControlStatus, ExternalControl};

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

pub trait ControlRegistry: Send + Sync + 'static {
    /// Whether controls and Secrets have been loaded, so lookups can be trusted.
    fn ready(&self) -> bool;

    /// The one control with this `controlId`: `ControlNotFound`, `ControlAmbiguous` when several
    /// claim it, `Unavailable` while controls are still loading. Answered from memory.
    fn lookup(&self, control_id: i64) -> Result<Arc<ExternalControl>, Rejection>;

    /// The control's signing tokens, or why there are none (never the token itself).
    /// `Freshness::Reread` asks for the Secret as it is now, after a signature did not verify
    /// with the copy kept (a token may have just been rotated).
    fn tokens(
        &self,
        control: &ExternalControl,
        freshness: Freshness,
    ) -> impl Future<Output = Result<SigningTokens, String>> + Send;

    /// Stores a verified report, atomically with its nonce: a nonce already recorded by anyone
    /// (any replica) yields `InvalidNonce`. Returns only once the store has accepted the write.
    fn record(
        &self,
        control: &ExternalControl,
        report: Report,
    ) -> impl Future<Output = Result<Recorded, Rejection>> + Send;
}

/// The control among `claimants` (the controls with the id called): `ControlNotFound` when
/// none, `ControlAmbiguous` when several, so no call updates one of them arbitrarily.
pub fn the_only<T>(claimants: impl IntoIterator<Item = T>) -> Result<T, Rejection> {
    let mut claimants = claimants.into_iter();
    match (claimants.next(), claimants.next()) {
        (None, _) => Err(Rejection::ControlNotFound),
        (Some(control), None) => Ok(control),
        (Some(_), Some(_)) => Err(Rejection::ControlAmbiguous),
    }
}

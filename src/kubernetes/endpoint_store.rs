//! [`EndpointStore`] on Kubernetes: lookups from the reflector stores, writes to the status
//! subresource with a resourceVersion precondition.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::events::StatusEvents;
use super::watch::Reflectors;
use extctl_core::crd::{Cause, StatusChange};
use extctl_core::crd::{ExternalControl, StatusChangeRecord};
use extctl_core::history::HistoryPolicy;
use extctl_core::key::ObjectKey;
use extctl_core::ports::Journal;
use extctl_core::ports::{EndpointStore, Freshness, Recorded, the_holder};
use extctl_core::protocol::Rejection;
use extctl_core::readiness::holder_rank;
use extctl_core::report::{self, Report, ReportUpdate};
use extctl_core::tokens::{NoTokens, SigningTokens};

/// How often a write is retried after a 409 Conflict before giving up with 503. Each conflict
/// means another write succeeded, so this bounds contention, not progress.
const MAX_WRITE_ATTEMPTS: usize = 32;

pub struct KubeEndpointStore {
    client: Client,
    reflectors: Reflectors,
    events: StatusEvents,
    history: HistoryPolicy,
    /// The request timeout: no write is *started* after it has passed since the call came.
    answer_within: std::time::Duration,
}

impl KubeEndpointStore {
    /// Answers `Unavailable` until the controls have been listed in full.
    pub fn new(
        client: Client,
        reflectors: Reflectors,
        events: StatusEvents,
        history: HistoryPolicy,
        answer_within: std::time::Duration,
    ) -> Self {
        Self {
            client,
            reflectors,
            events,
            history,
            answer_within,
        }
    }

    fn api(&self, control: &ExternalControl) -> Api<ExternalControl> {
        Api::namespaced(
            self.client.clone(),
            &control.namespace().unwrap_or_default(),
        )
    }
}

impl EndpointStore for KubeEndpointStore {
    fn ready(&self) -> bool {
        self.reflectors.loaded()
    }

    fn lookup(&self, project: &str, control_id: i64) -> Result<Arc<ExternalControl>, Rejection> {
        if !self.ready() {
            return Err(Rejection::Unavailable("controls are still loading".into()));
        }
        the_holder(
            self.reflectors.claimants(control_id),
            |c| holder_rank(c),
            |c| &c.spec,
            project,
        )
    }

    async fn tokens(
        &self,
        control: &ExternalControl,
        freshness: Freshness,
    ) -> Result<SigningTokens, NoTokens> {
        self.reflectors.tokens(control, freshness).await
    }

    async fn record(
        &self,
        control: &ExternalControl,
        report: Report,
    ) -> Result<Recorded, Rejection> {
        let api = self.api(control);
        let name = control.name_any();
        // The control as last read after a conflict (the cached one until then, not copied).
        let mut reread: Option<ExternalControl> = None;
        let deadline = std::time::Instant::now() + self.answer_within;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            // The write in flight when the caller stops waiting is finished (and told, if it
            // was stored); a new attempt after that could store a report older than one sent
            // since, so none is started.
            if reread.is_some() && std::time::Instant::now() >= deadline {
                return Err(Rejection::StoreTimeout);
            }
            let current = reread.as_ref().unwrap_or(control);
            // Checked against the state the write is conditioned on: a nonce another replica
            // stored in between shows up here after the conflict.
            let update = report::apply(current.status.as_ref(), &report)?;
            let change = StatusChange::between(Cause::Reported, update.previous, update.status)
                .map(|change| self.history.record(change, update.last_update_time.0));
            let history = change.as_ref().map(|record| {
                let kept = current.status.as_ref().map_or(&[][..], |s| &s.history[..]);
                self.history.for_control(control).appended(kept, record)
            });
            let patch = status_patch(current, &update, history);
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    let recorded = Recorded {
                        previous: update.previous,
                        stored: update.status,
                    };
                    if let Some(record) = &change {
                        self.events.status_changed(control, record);
                    }
                    tracing::info!(control = %ObjectKey::of(control), from = %update.previous, to = %update.status, "status stored");
                    return Ok(recorded);
                }
                Err(error) if is_conflict(&error) => {
                    reread = Some(api.get_status(&name).await.map_err(rejection)?);
                }
                Err(error) => return Err(rejection(error)),
            }
        }
        Err(Rejection::Unavailable(
            "the control kept changing; retry".into(),
        ))
    }
}

/// The endpoint's fields only (with the gate's conditions the result decides), conditioned on
/// the resourceVersion they were computed from; `history` when the status changed.
fn status_patch(
    current: &ExternalControl,
    update: &ReportUpdate,
    history: Option<Vec<StatusChangeRecord>>,
) -> serde_json::Value {
    let mut next = current.status.clone().unwrap_or_default();
    update.apply_to(&mut next, current.metadata.generation);
    let mut patch = json!({
        "metadata": { "resourceVersion": current.resource_version() },
        "status": {
            "status": next.status,
            "lastUpdateTime": next.last_update_time,
            "lastResultTime": next.last_result_time,
            "recentNonces": next.recent_nonces,
            "conditions": next.conditions,
        }
    });
    if let Some(history) = history {
        patch["status"]["history"] = json!(history);
    }
    patch
}

pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_conflict())
}

/// What the caller is told when the API server did not store the status.
fn rejection(error: kube::Error) -> Rejection {
    match error {
        kube::Error::Api(status) if status.is_not_found() => Rejection::ControlNotFound,
        kube::Error::Api(status) if status.code == 400 || status.is_invalid() => {
            Rejection::UpdateRejected(status.message)
        }
        kube::Error::Api(status) => Rejection::Unavailable(status.message),
        other => Rejection::Unavailable(other.to_string()),
    }
}

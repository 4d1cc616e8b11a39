//! The reconciler on Kubernetes: the shared [`Reconciler`] with a [`ControlStore`] on the API
//! (reflector stores for reads, status-subresource patches for writes), run by
//! [`crate::schedule::reconcile_each`] on every change to a control (or to what it depends on)
//! and at its own `nextPingTime` or sooner wake (no polling loop, no periodic list).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::endpoint_store::is_conflict;
use super::events::StatusEvents;
use super::lease::Leadership;
use super::watch::Reflectors;
use crate::outbound::Outbound;
use crate::schedule::Next;
use extctl_core::crd::{
    DurationString, ExternalControl, ExternalControlStatus, NotificationStatus, PingOutcome,
};
use extctl_core::key::ObjectKey;
use extctl_core::ports::ControlStore;
use extctl_core::ports::{Freshness, SecretReadError};
use extctl_core::readiness::Readiness;
use extctl_core::reconciler::Reconciler;
use extctl_core::tokens::{NoTokens, SigningTokens};
use extctl_core::waiver::Waiver;

pub(crate) type Context = Reconciler<KubeControlStore, StatusEvents, Outbound>;

/// Controls and Secrets as the watches see them; writes go to the API server, while this
/// replica leads.
pub struct KubeControlStore {
    pub client: Client,
    pub reflectors: Reflectors,
    pub leadership: Leadership,
}

/// Why a reconcile did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("writing the status of {control} failed: {source}")]
    Status {
        control: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading the Secret of {control} failed: {source}")]
    Secret {
        control: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Status { source, .. } if is_conflict(source))
    }
}

/// Reconciles the control named `key` (see [`crate::schedule::reconcile_each`]): when it is
/// due next, or when to try again.
pub(crate) async fn reconcile(key: Arc<ObjectKey>, context: Arc<Context>) -> Next {
    let reflectors = &context.store.reflectors;
    // Deleted: nothing is due.
    let Some(control) = reflectors.control(&key) else {
        return Next::At(None);
    };
    if !context.store.leadership.is_leader() {
        // The leader reconciles; this replica looks at every control when it takes over.
        return Next::At(None);
    }
    // Before the waivers are listed, which one covers a control is unknown: a restart must not
    // shut a waived gate for a moment.
    reflectors.waivers.wait_loaded().await;
    let reconciled = match context.reconcile(&control, Timestamp::now()).await {
        Ok(reconciled) => reconciled,
        Err(error) => return retry_after(&error),
    };
    if let Some(ping) = reconciled.ping {
        // Off the reconcile path: the concurrency bound is for API writes, and a slow checker
        // must not hold a slot for its ping timeout.
        let context = context.clone();
        tokio::spawn(async move {
            if let Err(error) = context.ping(ping).await {
                tracing::warn!(%error, "recording a ping's outcome failed");
            }
        });
    }
    for delivery in reconciled.deliveries {
        let context = context.clone();
        tokio::spawn(async move {
            if let Err(error) = context.deliver(delivery).await {
                tracing::warn!(%error, "recording a notification's outcome failed");
            }
        });
    }
    Next::At(reconciled.wake)
}

/// A conflict means a newer version is already on its way through the watch: retry soon.
fn retry_after(error: &ReconcileError) -> Next {
    if error.is_conflict() {
        Next::Retry(Duration::from_millis(200))
    } else {
        tracing::warn!(%error, "reconcile failed");
        Next::Retry(Duration::from_secs(5))
    }
}

impl ControlStore for KubeControlStore {
    type Error = ReconcileError;

    async fn readiness(&self, control: &ExternalControl) -> Result<Readiness, ReconcileError> {
        // Before the Namespaces are listed, whether a control may claim its project is unknown.
        self.reflectors.allowances.wait_loaded().await;
        let claimants = self.reflectors.claimants(control.spec.control_id);
        let secret = self
            .reflectors
            .secret_of(control, Freshness::Kept)
            .await
            .map_err(|source| ReconcileError::Secret {
                control: ObjectKey::of(control).to_string(),
                source,
            })?;
        Ok(Readiness::among(
            control,
            secret.as_deref(),
            self.reflectors.allowances.check(control),
            claimants.iter().map(AsRef::as_ref),
        ))
    }

    async fn signing_tokens(&self, control: &ExternalControl) -> Result<SigningTokens, NoTokens> {
        self.reflectors.tokens(control, Freshness::Kept).await
    }

    fn recheck_not_ready(&self) -> Option<Duration> {
        Some(self.reflectors.secrets.ttl())
    }

    fn waivers(&self, control: &ExternalControl) -> Vec<Arc<Waiver>> {
        self.reflectors
            .waivers
            .in_namespace(control.metadata.namespace.as_deref())
    }

    async fn write_status(
        &self,
        control: &ExternalControl,
        desired: &ExternalControlStatus,
    ) -> Result<(), ReconcileError> {
        let patch = json!({
            "metadata": { "resourceVersion": control.resource_version() },
            "status": {
                "status": desired.status,
                "lastUpdateTime": desired.last_update_time,
                "lastResultTime": desired.last_result_time,
                "lastPingTime": desired.last_ping_time,
                "lastHandledRequestedAt": desired.last_handled_requested_at,
                "lastPing": desired.last_ping,
                // `null` removes the field in a merge patch: ping disabled has no next reset.
                "nextPingTime": desired.next_ping_time,
                "pingInterval": desired.ping_interval.as_ref().map(|DurationString(text)| text),
                "observedGeneration": desired.observed_generation,
                "conditions": desired.conditions,
                "history": desired.history,
                "notifications": desired.notifications,
                "waiver": desired.waiver,
            }
        });
        self.patch_status(control, &Patch::Merge(&patch)).await
    }

    async fn write_last_ping(
        &self,
        control: &ExternalControl,
        outcome: &PingOutcome,
    ) -> Result<(), ReconcileError> {
        // Only onto the round it belongs to: with a ping slower than the interval, another
        // replica may have reset the control again, and its outcome must not be overwritten.
        let operations = json!([
            { "op": "test", "path": "/status/lastPingTime", "value": outcome.time },
            { "op": "add", "path": "/status/lastPing", "value": outcome },
        ]);
        let patch = Patch::Json::<()>(
            serde_json::from_value(operations).expect("a JSON Patch of two operations"),
        );
        match self.patch_status(control, &patch).await {
            // The test failed: a later reset owns `lastPing` now. Any other refusal (a 422 for
            // an invalid value among them) is an error to report, not a superseded outcome.
            Err(ReconcileError::Status { source, .. }) if is_failed_json_patch(&source) => {
                let control = ObjectKey::of(control);
                tracing::info!(%control, "a later reset superseded this ping's outcome");
                Ok(())
            }
            written => written,
        }
    }

    async fn secret_data(
        &self,
        control: &ExternalControl,
        name: &str,
    ) -> Result<Option<BTreeMap<String, ByteString>>, SecretReadError> {
        let key = ObjectKey::new(control.namespace().unwrap_or_default(), name);
        match self.reflectors.secrets.get(&key, Freshness::Kept).await {
            Ok(secret) => Ok(secret.map(|s| s.data.clone().unwrap_or_default())),
            Err(error) => Err(SecretReadError {
                secret: name.to_owned(),
                reason: error.to_string(),
            }),
        }
    }

    async fn write_notification(
        &self,
        control: &ExternalControl,
        index: usize,
        since: &MicroTime,
        entry: &NotificationStatus,
    ) -> Result<bool, ReconcileError> {
        // Only onto the entry as it was when the delivery began: the name and cursor tested.
        let path = format!("/status/notifications/{index}");
        let operations = json!([
            { "op": "test", "path": format!("{path}/name"), "value": entry.name },
            { "op": "test", "path": format!("{path}/since"), "value": since },
            { "op": "replace", "path": path, "value": entry },
        ]);
        let patch = Patch::Json::<()>(
            serde_json::from_value(operations).expect("a JSON Patch of three operations"),
        );
        match self.patch_status(control, &patch).await {
            Err(ReconcileError::Status { source, .. }) if is_failed_json_patch(&source) => {
                Ok(false)
            }
            written => written.map(|()| true),
        }
    }
}

/// kube-apiserver's answer to a JSON patch whose operation failed (here only the `test` can):
/// 422 with this message and no causes, unlike a schema refusal, which names the object and
/// its fields (kube-apiserver v1.36; the late-ping-outcome test in `tests/ping.rs` meets it).
pub(crate) const JSON_PATCH_FAILED: &str =
    "the server rejected our request due to an error in our request";

fn is_failed_json_patch(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 422 && status.message == JSON_PATCH_FAILED)
}

impl KubeControlStore {
    /// A patch of the control's status subresource.
    async fn patch_status<P: serde::Serialize + std::fmt::Debug>(
        &self,
        control: &ExternalControl,
        patch: &Patch<P>,
    ) -> Result<(), ReconcileError> {
        let namespace = control.namespace().unwrap_or_default();
        let api: Api<ExternalControl> = Api::namespaced(self.client.clone(), &namespace);
        api.patch_status(&control.name_any(), &PatchParams::default(), patch)
            .await
            .map(|_| ())
            .map_err(|source| ReconcileError::Status {
                control: ObjectKey::of(control).to_string(),
                source,
            })
    }
}

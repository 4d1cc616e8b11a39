//! Controls and Secrets in memory, for `extctl dev`: the same two ports the Kubernetes adapters
//! implement ([`ControlRegistry`] for the endpoint, [`ControlStore`] for the reconciler), with
//! the API server's semantics that extctl relies on: every write bumps a resourceVersion, a
//! conditional write against an older one is a conflict, and a report is stored atomically
//! with its nonce.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tokio::sync::watch;

use super::console::Console;
use super::manifests::DEFAULT_NAMESPACE;
use crate::core::protocol::Rejection;
use crate::core::readiness::Readiness;
use crate::core::report::{self, Report};
use crate::core::tokens::SigningTokens;
use crate::crd::{ExternalControl, ExternalControlStatus, PingOutcome, qualified_name};
use crate::reconciler::{ControlStore, Journal};
use crate::registry::{ControlRegistry, Recorded, the_only};

/// `(namespace, name)`.
pub type Key = (String, String);

/// A cheap handle; clones share the same state.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    changes: watch::Sender<u64>,
    console: Console,
}

#[derive(Default)]
struct State {
    controls: BTreeMap<Key, ExternalControl>,
    secrets: BTreeMap<Key, Secret>,
    /// The last resourceVersion handed out, like the API server's revision.
    revision: u64,
}

/// Why the reconciler's write was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Conditioned on a resourceVersion that is no longer current.
    #[error("{0} changed meanwhile")]
    Conflict(String),
    #[error("{0} is gone")]
    NotFound(String),
}

impl WriteError {
    fn of(control: &ExternalControl, error: UpdateError) -> Self {
        match error {
            UpdateError::Conflict => Self::Conflict(qualified_name(control)),
            _ => Self::NotFound(qualified_name(control)),
        }
    }
}

impl MemoryStore {
    /// Creates the objects as the API server would: namespace defaulted, creation time,
    /// generation 1 and a resourceVersion set.
    pub fn new(controls: Vec<ExternalControl>, secrets: Vec<Secret>, console: Console) -> Self {
        let now = Timestamp::now();
        let mut state = State::default();
        for mut secret in secrets {
            state.created(&mut secret.metadata, now);
            state.secrets.insert(key(&secret), secret);
        }
        for mut control in controls {
            state.created(&mut control.metadata, now);
            control.metadata.generation = Some(1);
            state.controls.insert(key(&control), as_stored(&control));
        }
        Self {
            state: Arc::new(Mutex::new(state)),
            changes: watch::channel(0).0,
            console,
        }
    }

    /// Every control, as stored now.
    pub fn controls(&self) -> Vec<ExternalControl> {
        self.lock().controls.values().cloned().collect()
    }

    /// Tells of every write; `changed()` on the receiver completes after the next one.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written object: every write is
        // one assignment. Keep serving rather than poison every later call.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to the stored control when `expected` (a resourceVersion) is still
    /// current, or unconditionally when it is `None`; bumps the resourceVersion.
    fn update<T>(
        &self,
        control: &ExternalControl,
        expected: Option<&str>,
        change: impl FnOnce(&mut ExternalControlStatus) -> Result<T, Rejection>,
    ) -> Result<T, UpdateError> {
        let mut state = self.lock();
        let revision = state.revision + 1;
        let stored = state
            .controls
            .get_mut(&key(control))
            .ok_or(UpdateError::NotFound)?;
        if expected
            .is_some_and(|version| stored.metadata.resource_version.as_deref() != Some(version))
        {
            return Err(UpdateError::Conflict);
        }
        let mut status = stored.status.clone().unwrap_or_default();
        let outcome = change(&mut status).map_err(UpdateError::Rejected)?;
        stored.status = Some(as_stored(&status));
        stored.metadata.resource_version = Some(revision.to_string());
        state.revision = revision;
        drop(state);
        self.changes.send_replace(revision);
        Ok(outcome)
    }
}

enum UpdateError {
    NotFound,
    Conflict,
    Rejected(Rejection),
}

impl State {
    fn created(&mut self, metadata: &mut kube::api::ObjectMeta, now: Timestamp) {
        self.revision += 1;
        metadata
            .namespace
            .get_or_insert_with(|| DEFAULT_NAMESPACE.into());
        metadata.creation_timestamp = Some(Time(now));
        metadata.resource_version = Some(self.revision.to_string());
    }

    fn secret_of(&self, control: &ExternalControl) -> Option<&Secret> {
        let namespace = control.namespace().unwrap_or_default();
        self.secrets
            .get(&(namespace, control.spec.secret_ref.name.clone()))
    }
}

/// `value` as it reads back from the API server: through JSON, so times have the precision
/// their types store (`Time` whole seconds, `MicroTime` microseconds), as in a cluster.
fn as_stored<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .expect("extctl's own types read back what they write")
}

pub fn key(object: &impl ResourceExt) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

impl ControlRegistry for MemoryStore {
    fn ready(&self) -> bool {
        true
    }

    fn lookup(&self, control_id: i64) -> Result<Arc<ExternalControl>, Rejection> {
        let state = self.lock();
        let claimants = state
            .controls
            .values()
            .filter(|control| control.spec.control_id == control_id);
        the_only(claimants).map(|control| Arc::new(control.clone()))
    }

    fn tokens(&self, control: &ExternalControl) -> Result<SigningTokens, String> {
        self.signing_tokens(control)
    }

    async fn record(
        &self,
        control: &ExternalControl,
        report: Report,
    ) -> Result<Recorded, Rejection> {
        // Checked and written under one lock: the nonce check sees every earlier report.
        let write = self.update(control, None, |status| {
            let update = report::apply(Some(status), &report)?;
            update.apply_to(status);
            Ok(Recorded {
                previous: update.previous,
                stored: update.status,
            })
        });
        let recorded = match write {
            Ok(recorded) => recorded,
            Err(UpdateError::Rejected(rejection)) => return Err(rejection),
            Err(UpdateError::NotFound) => return Err(Rejection::ControlNotFound),
            Err(UpdateError::Conflict) => unreachable!("an unconditional update cannot conflict"),
        };
        if let Some(change) = recorded.change() {
            self.console.status_changed(control, change);
        }
        Ok(recorded)
    }
}

impl ControlStore for MemoryStore {
    type Error = WriteError;

    fn readiness(&self, control: &ExternalControl) -> Readiness {
        let state = self.lock();
        Readiness::among(control, state.secret_of(control), state.controls.values())
    }

    fn signing_tokens(&self, control: &ExternalControl) -> Result<SigningTokens, String> {
        SigningTokens::for_control(control, self.lock().secret_of(control))
    }

    async fn write_status(
        &self,
        control: &ExternalControl,
        desired: &ExternalControlStatus,
    ) -> Result<(), WriteError> {
        let version = control.resource_version();
        self.update(
            control,
            Some(version.as_deref().unwrap_or_default()),
            |status| {
                // The version matched, so `desired` was computed from exactly this status.
                *status = desired.clone();
                Ok(())
            },
        )
        .map_err(|error| WriteError::of(control, error))
    }

    async fn write_last_ping(
        &self,
        control: &ExternalControl,
        outcome: &PingOutcome,
    ) -> Result<(), WriteError> {
        self.update(control, None, |status| {
            // Only onto the round it belongs to, as on Kubernetes (compared as stored: in
            // microseconds).
            if status.last_ping_time == Some(as_stored(&outcome.time)) {
                status.last_ping = Some(outcome.clone());
            }
            Ok(())
        })
        .map_err(|error| WriteError::of(control, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ControlStatus;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use serde_json::json;

    fn control(name: &str, control_id: i64) -> ExternalControl {
        serde_json::from_value(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": name},
            "spec": {"projectId": 42, "controlId": control_id, "secretRef": {"name": "s"}}
        }))
        .unwrap()
    }

    fn store(controls: Vec<ExternalControl>) -> MemoryStore {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("s".into()),
                ..Default::default()
            },
            data: Some([("token".into(), ByteString(b"t0k".to_vec()))].into()),
            ..Default::default()
        };
        MemoryStore::new(controls, vec![secret], Console { json: true })
    }

    fn report(status: ControlStatus, nonce: &str) -> Report {
        let now = Timestamp::now();
        Report {
            status,
            nonce: nonce.into(),
            nonce_expires_at: now + jiff::SignedDuration::from_secs(15),
            received_at: now,
        }
    }

    #[tokio::test]
    async fn a_write_from_a_stale_version_conflicts() {
        let store = store(vec![control("a", 7)]);
        let read = store.controls().remove(0);
        assert_eq!(read.namespace().as_deref(), Some(DEFAULT_NAMESPACE));
        store
            .record(&read, report(ControlStatus::Pass, "n1"))
            .await
            .unwrap();
        let desired = ExternalControlStatus {
            status: Some(ControlStatus::Pending),
            ..Default::default()
        };
        assert!(store.write_status(&read, &desired).await.is_err());
        let fresh = store.controls().remove(0);
        assert_ne!(fresh.resource_version(), read.resource_version());
        store.write_status(&fresh, &desired).await.unwrap();
        let written = store.controls().remove(0);
        assert_eq!(written.status.unwrap().status, Some(ControlStatus::Pending));
    }

    #[tokio::test]
    async fn a_nonce_is_stored_with_the_report_and_refused_again() {
        let store = store(vec![control("a", 7)]);
        let read = store.controls().remove(0);
        let first = store.record(&read, report(ControlStatus::Pass, "n1")).await;
        assert_eq!(
            first.unwrap(),
            Recorded {
                previous: ControlStatus::Pending,
                stored: ControlStatus::Pass
            }
        );
        // Even from the same (now stale) copy: the check runs against the stored state.
        let replay = store.record(&read, report(ControlStatus::Fail, "n1")).await;
        assert_eq!(replay, Err(Rejection::InvalidNonce));
    }

    #[tokio::test]
    async fn a_ping_outcome_is_recorded_only_for_the_current_round() {
        let store = store(vec![control("a", 7)]);
        // Nanoseconds, as `Timestamp::now()` gives; the store keeps microseconds.
        let at = |second: i128| {
            jiff::Timestamp::from_nanosecond((1_700_000_000 + second) * 1_000_000_000 + 123_456_789)
                .unwrap()
        };
        let reset = ExternalControlStatus {
            last_ping_time: Some(MicroTime(at(60))),
            ..Default::default()
        };
        store
            .write_status(&store.controls()[0], &reset)
            .await
            .unwrap();
        let outcome = |time| PingOutcome {
            time: MicroTime(time),
            http_status: Some(200),
            error: None,
        };
        let read = store.controls().remove(0);
        store.write_last_ping(&read, &outcome(at(0))).await.unwrap();
        assert_eq!(store.controls()[0].status.as_ref().unwrap().last_ping, None);
        store
            .write_last_ping(&read, &outcome(at(60)))
            .await
            .unwrap();
        let recorded = store.controls()[0].status.clone().unwrap().last_ping;
        assert_eq!(recorded, Some(as_stored(&outcome(at(60)))));
    }

    #[test]
    fn lookups_find_one_control_by_id_and_its_readiness() {
        let store = store(vec![control("a", 7), control("b", 8), control("c", 8)]);
        assert_eq!(store.lookup(7).unwrap().name_any(), "a");
        assert_eq!(store.lookup(9).unwrap_err(), Rejection::ControlNotFound);
        assert_eq!(store.lookup(8).unwrap_err(), Rejection::ControlAmbiguous);
        let b = store.lookup(7).unwrap();
        assert!(store.readiness(&b).is_ready());
        assert!(store.tokens(&b).is_ok());
        let c = store.controls().remove(2);
        assert_eq!(store.readiness(&c).reason(), "DuplicateControl");
    }
}

//! Controls and Secrets in memory, for `extctl dev`: the same two ports the Kubernetes adapters
//! implement ([`ControlRegistry`] for the endpoint, [`ControlStore`] for the reconciler), with
//! the API server's semantics that extctl relies on: every write bumps a resourceVersion, a
//! conditional write against an older one is a conflict, and a report is stored atomically
//! with its nonce.
//!
//! Every cost is O(1) in the number of controls and in the call rate: controls are shared
//! (`Arc`) rather than copied, found through an index by id and by Secret, nonces live in a
//! set per control, and each write tells the reconcile loop which control changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::ResourceExt;
use tokio::sync::mpsc;

use super::console::Console;
use super::manifests::DEFAULT_NAMESPACE;
use crate::core::index::{ControlIndex, Entry};
use crate::core::nonces::NonceSet;
use crate::core::protocol::Rejection;
use crate::core::readiness::Readiness;
use crate::core::report::{Report, current_status};
use crate::core::schedule::to_microsecond;
use crate::core::tokens::SigningTokens;
use crate::crd::{ExternalControl, ExternalControlStatus, PingOutcome, qualified_name};
use crate::reconciler::{ControlStore, Journal};
use crate::registry::{ControlRegistry, Freshness, Recorded, the_only};

/// `(namespace, name)`.
pub type Key = (String, String);

/// A cheap handle; clones share the same state.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    changes: mpsc::UnboundedSender<Key>,
    console: Console,
}

#[derive(Default)]
struct State {
    controls: BTreeMap<Key, Arc<ExternalControl>>,
    index: ControlIndex<Key>,
    secrets: HashMap<Key, Secret>,
    /// Nonces of accepted calls, per control.
    nonces: HashMap<Key, NonceSet>,
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
    /// generation 1 and a resourceVersion set. The receiver tells of every control written
    /// (each control once at the start).
    pub fn new(
        controls: Vec<ExternalControl>,
        secrets: Vec<Secret>,
        console: Console,
    ) -> (Self, mpsc::UnboundedReceiver<Key>) {
        let now = Timestamp::now();
        let mut state = State::default();
        for mut secret in secrets {
            state.created(&mut secret.metadata, now);
            state.secrets.insert(key(&secret), secret);
        }
        let (changes, changed) = mpsc::unbounded_channel();
        for mut control in controls {
            state.created(&mut control.metadata, now);
            control.metadata.generation = Some(1);
            let key = key(&control);
            state.index.upsert(key.clone(), Entry::of(&control));
            state
                .controls
                .insert(key.clone(), Arc::new(as_stored(&control)));
            let _ = changes.send(key);
        }
        let store = Self {
            state: Arc::new(Mutex::new(state)),
            changes,
            console,
        };
        (store, changed)
    }

    /// Every control, as stored now (shared, not copied).
    pub fn controls(&self) -> Vec<Arc<ExternalControl>> {
        self.lock().controls.values().cloned().collect()
    }

    /// One control, as stored now.
    pub fn get(&self, key: &Key) -> Option<Arc<ExternalControl>> {
        self.lock().controls.get(key).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written object: every write is
        // one assignment. Keep serving rather than poison every later call.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to the stored control's status when `expected` (a resourceVersion) is
    /// still current, or unconditionally when it is `None`; bumps the resourceVersion and
    /// tells the reconcile loop.
    fn update<T>(
        &self,
        control: &ExternalControl,
        expected: Option<&str>,
        change: impl FnOnce(&mut State, &Key) -> Result<(T, ExternalControlStatus), Rejection>,
    ) -> Result<T, UpdateError> {
        let key = key(control);
        let mut state = self.lock();
        let stored = state.controls.get(&key).ok_or(UpdateError::NotFound)?;
        if expected
            .is_some_and(|version| stored.metadata.resource_version.as_deref() != Some(version))
        {
            return Err(UpdateError::Conflict);
        }
        let (outcome, status) = change(&mut state, &key).map_err(UpdateError::Rejected)?;
        let revision = state.revision + 1;
        state.revision = revision;
        let stored = state
            .controls
            .get_mut(&key)
            .expect("checked above, under the same lock");
        // Copies the control only while a reader still holds the previous version.
        let written = Arc::make_mut(stored);
        written.status = Some(status);
        written.metadata.resource_version = Some(revision.to_string());
        drop(state);
        let _ = self.changes.send(key);
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
        self.secrets.get(&Entry::of(control).secret)
    }

    fn status_of(&self, key: &Key) -> ExternalControlStatus {
        self.controls
            .get(key)
            .and_then(|control| control.status.clone())
            .unwrap_or_default()
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
        let claimants = state.index.with_id(control_id);
        the_only(claimants.iter().filter_map(|key| state.controls.get(key))).cloned()
    }

    async fn tokens(
        &self,
        control: &ExternalControl,
        _: Freshness,
    ) -> Result<SigningTokens, String> {
        // Secrets in memory are always current.
        SigningTokens::for_control(control, self.lock().secret_of(control))
    }

    async fn record(
        &self,
        control: &ExternalControl,
        report: Report,
    ) -> Result<Recorded, Rejection> {
        // Checked and written under one lock: the nonce check sees every earlier report.
        let write = self.update(control, None, |state, key| {
            state.nonces.entry(key.clone()).or_default().admit(
                &report.nonce,
                report.nonce_expires_at,
                report.received_at,
            )?;
            let mut status = state.status_of(key);
            let previous = current_status(Some(&status));
            status.status = Some(report.status);
            status.last_update_time = Some(MicroTime(to_microsecond(report.received_at)));
            let recorded = Recorded {
                previous,
                stored: report.status,
            };
            Ok((recorded, status))
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

    async fn readiness(&self, control: &ExternalControl) -> Result<Readiness, WriteError> {
        let state = self.lock();
        let claimants = state.index.with_id(control.spec.control_id);
        let claimants = claimants
            .iter()
            .filter_map(|key| state.controls.get(key))
            .map(AsRef::as_ref);
        Ok(Readiness::among(
            control,
            state.secret_of(control),
            claimants,
        ))
    }

    async fn signing_tokens(&self, control: &ExternalControl) -> Result<SigningTokens, String> {
        SigningTokens::for_control(control, self.lock().secret_of(control))
    }

    fn recheck_not_ready(&self) -> Option<std::time::Duration> {
        // Every change is told through the store itself.
        None
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
            // The version matched, so `desired` was computed from exactly this status.
            |_, _| Ok(((), as_stored(desired))),
        )
        .map_err(|error| WriteError::of(control, error))
    }

    async fn write_last_ping(
        &self,
        control: &ExternalControl,
        outcome: &PingOutcome,
    ) -> Result<(), WriteError> {
        self.update(control, None, |state, key| {
            let mut status = state.status_of(key);
            // Only onto the round it belongs to, as on Kubernetes (compared as stored: in
            // microseconds).
            if status.last_ping_time == Some(as_stored(&outcome.time)) {
                status.last_ping = Some(as_stored(outcome));
            }
            Ok(((), status))
        })
        .map_err(|error| WriteError::of(control, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ControlStatus;
    use k8s_openapi::ByteString;
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
        MemoryStore::new(controls, vec![secret], Console { json: true }).0
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
        assert_eq!(
            written.status.clone().unwrap().status,
            Some(ControlStatus::Pending)
        );
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

    #[tokio::test]
    async fn lookups_find_one_control_by_id_and_its_readiness() {
        let store = store(vec![control("a", 7), control("b", 8), control("c", 8)]);
        assert_eq!(store.lookup(7).unwrap().name_any(), "a");
        assert_eq!(store.lookup(9).unwrap_err(), Rejection::ControlNotFound);
        assert_eq!(store.lookup(8).unwrap_err(), Rejection::ControlAmbiguous);
        let b = store.lookup(7).unwrap();
        assert!(store.readiness(&b).await.unwrap().is_ready());
        assert!(store.tokens(&b, Freshness::Kept).await.is_ok());
        let c = store.controls().remove(2);
        assert_eq!(
            store.readiness(&c).await.unwrap().reason(),
            "DuplicateControl"
        );
    }
}

//! Controls and Secrets in memory, for `extctl dev`: the same two ports the Kubernetes adapters
//! implement ([`EndpointStore`] for the endpoint, [`ControlStore`] for the reconciler), with
//! the API server's semantics that extctl relies on: every write bumps a resourceVersion, a
//! conditional write against an older one is a conflict, and a report is stored atomically
//! with its nonce.
//!
//! Every cost of a call is O(1) in the number of controls and in the call rate: the set of
//! controls and Secrets is fixed at start (indexed by id, each control's readiness and tokens
//! worked out once), each control has its own lock, nonces live in a set, and a report is
//! kept beside the control's object rather than written into a copy of it: the object is
//! brought up to date only when the reconciler reads it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::ResourceExt;
use tokio::sync::mpsc;

use super::console::Console;
use super::manifests::DEFAULT_NAMESPACE;
use crate::metrics::{Census, ControlCounts};
use extctl_core::crd::{
    ControlStatus, ExternalControl, ExternalControlStatus, NotificationStatus, PingOutcome,
};
use extctl_core::history::HistoryPolicy;
use extctl_core::index::{ControlIndex, Entry};
use extctl_core::key::ObjectKey;
use extctl_core::nonces::NonceSet;
use extctl_core::ports::{ControlStore, Journal, SecretReadError};
use extctl_core::ports::{EndpointStore, Freshness, Recorded, the_holder};
use extctl_core::protocol::Rejection;
use extctl_core::readiness::Readiness;
use extctl_core::report::{Report, current_status, record_result};
use extctl_core::schedule::to_microsecond;
use extctl_core::sync::lock;
use extctl_core::tokens::{NoTokens, SigningTokens};

/// A cheap handle; clones share the same state.
#[derive(Clone)]
pub struct MemoryStore {
    controls: Arc<Controls>,
    /// The Secrets loaded, for the CA bundles and notification secrets controls name.
    secrets: Arc<HashMap<ObjectKey, Secret>>,
    /// The last resourceVersion handed out, like the API server's revision.
    revision: Arc<AtomicU64>,
    changes: mpsc::UnboundedSender<ObjectKey>,
    console: Console,
}

/// Fixed once loaded: `extctl dev` creates and deletes nothing.
struct Controls {
    /// In `(namespace, name)` order.
    cells: Vec<Mutex<Cell>>,
    /// Namespace, then name, to the cell's position: looked up by `&str`, no key built.
    positions: HashMap<String, HashMap<String, usize>>,
    /// By `controlId` (and Secret), to positions.
    index: ControlIndex<usize>,
}

impl Controls {
    fn position(&self, namespace: &str, name: &str) -> Option<usize> {
        self.positions.get(namespace)?.get(name).copied()
    }
}

/// One control's state.
struct Cell {
    /// The control as last written by the reconciler (or as loaded).
    object: Arc<ExternalControl>,
    /// A checker's report stored since (status, when), not yet folded into `object`.
    reported: Option<(ControlStatus, MicroTime)>,
    /// This control's resourceVersion.
    revision: u64,
    nonces: NonceSet,
    readiness: Readiness,
    tokens: Result<SigningTokens, NoTokens>,
}

impl Cell {
    /// The control as stored now, the last report folded in.
    fn current(&mut self) -> Arc<ExternalControl> {
        let revision = Some(self.revision.to_string());
        if self.reported.is_some() || self.object.metadata.resource_version != revision {
            let object = Arc::make_mut(&mut self.object);
            if let Some((status, at)) = self.reported.take() {
                let generation = object.metadata.generation;
                let stored = object.status.get_or_insert_default();
                record_result(stored, status, at.0, generation);
            }
            object.metadata.resource_version = revision;
        }
        self.object.clone()
    }
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

impl MemoryStore {
    /// Creates the objects as the API server would: namespace defaulted, creation time,
    /// generation 1 and a resourceVersion set. The receiver tells which controls need a look
    /// (each control once at the start, then those whose ping outcome was written).
    pub fn new(
        controls: Vec<ExternalControl>,
        secrets: Vec<Secret>,
        console: Console,
    ) -> (Self, mpsc::UnboundedReceiver<ObjectKey>) {
        let now = Timestamp::now();
        let mut revision = 0;
        let mut created = |metadata: &mut kube::api::ObjectMeta| {
            revision += 1;
            metadata
                .namespace
                .get_or_insert_with(|| DEFAULT_NAMESPACE.into());
            metadata.creation_timestamp = Some(Time(now));
            metadata.resource_version = Some(revision.to_string());
            revision
        };
        let mut secrets_by_key = HashMap::new();
        for mut secret in secrets {
            created(&mut secret.metadata);
            secrets_by_key.insert(ObjectKey::of(&secret), secret);
        }
        let mut objects = BTreeMap::new();
        for mut control in controls {
            let revision = created(&mut control.metadata);
            control.metadata.generation = Some(1);
            objects.insert(ObjectKey::of(&control), (as_stored(&control), revision));
        }
        let mut index = ControlIndex::default();
        let mut positions: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (at, (key, (control, _))) in objects.iter_mut().enumerate() {
            control.metadata.uid = Some(uid_of(at));
            index.upsert(at, Entry::of(control));
            let names = positions.entry(key.namespace.clone()).or_default();
            names.insert(key.name.clone(), at);
        }
        let all: Vec<ExternalControl> = objects.values().map(|(c, _)| c.clone()).collect();
        let cells: Vec<Mutex<Cell>> = objects
            .into_values()
            .map(|(control, revision)| {
                let secret = secrets_by_key.get(&*Entry::of(&control).secret);
                let claimants = index.with_id_iter(control.spec.control_id);
                let claimants = claimants.map(|at| &all[*at]);
                // A sandbox serves every namespace's controls: no allowance to check.
                let readiness = Readiness::among(&control, secret, Ok(()), claimants);
                let cell = Cell {
                    tokens: SigningTokens::for_control(&control, secret),
                    readiness,
                    object: Arc::new(control),
                    reported: None,
                    revision,
                    nonces: NonceSet::default(),
                };
                Mutex::new(cell)
            })
            .collect();
        let (changes, changed) = mpsc::unbounded_channel();
        for cell in &cells {
            let _ = changes.send(ObjectKey::of(lock(cell).object.as_ref()));
        }
        let controls = Controls {
            cells,
            positions,
            index,
        };
        let store = Self {
            controls: Arc::new(controls),
            secrets: Arc::new(secrets_by_key),
            revision: Arc::new(AtomicU64::new(revision)),
            changes,
            console,
        };
        (store, changed)
    }

    /// Every control, as stored now.
    pub(crate) fn controls(&self) -> Vec<Arc<ExternalControl>> {
        let cells = self.controls.cells.iter();
        cells.map(|cell| lock(cell).current()).collect()
    }

    /// One control, as stored now.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<ExternalControl>> {
        let at = self.controls.position(&key.namespace, &key.name)?;
        Some(lock(&self.controls.cells[at]).current())
    }

    fn cell(&self, control: &ExternalControl) -> Option<MutexGuard<'_, Cell>> {
        let metadata = &control.metadata;
        if let Some(at) = metadata.uid.as_deref().and_then(position_of) {
            return self.controls.cells.get(at).map(lock);
        }
        let namespace = metadata.namespace.as_deref().unwrap_or_default();
        let name = metadata.name.as_deref().unwrap_or_default();
        let at = self.controls.position(namespace, name)?;
        Some(lock(&self.controls.cells[at]))
    }

    fn next_revision(&self) -> u64 {
        self.revision.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The uid of the control at position `at`: as the API server gives every object a uid, and
/// one that tells the store where the control is without hashing its name on every call.
fn uid_of(at: usize) -> String {
    format!("{UID_PREFIX}{at:012x}")
}

const UID_PREFIX: &str = "00000000-0000-4000-8000-";

fn position_of(uid: &str) -> Option<usize> {
    usize::from_str_radix(uid.strip_prefix(UID_PREFIX)?, 16).ok()
}

/// `value` as it reads back from the API server: through JSON, so times have the precision
/// their types store (`Time` whole seconds, `MicroTime` microseconds), as in a cluster.
fn as_stored<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .expect("extctl's own types read back what they write")
}

impl EndpointStore for MemoryStore {
    fn ready(&self) -> bool {
        true
    }

    /// The control's object as last written by the reconciler: its spec and name are what the
    /// endpoint needs (a report since is kept beside it, see [`Cell`]).
    fn lookup(&self, project: &str, control_id: i64) -> Result<Arc<ExternalControl>, Rejection> {
        let controls = &self.controls;
        let claimants = controls.index.with_id_iter(control_id);
        // Loaded together, dev's controls are ranked by uid (`holder_rank`), which is their
        // position: the lowest position holds the id.
        let claimants = claimants.map(|at| (*at, lock(&controls.cells[*at]).object.clone()));
        let (_, control) = the_holder(claimants, |(at, _)| *at, |(_, c)| &c.spec, project)?;
        Ok(control)
    }

    async fn tokens(
        &self,
        control: &ExternalControl,
        _: Freshness,
    ) -> Result<SigningTokens, NoTokens> {
        // Secrets in memory do not change.
        self.signing_tokens(control).await
    }

    async fn record(
        &self,
        control: &ExternalControl,
        report: Report,
    ) -> Result<Recorded, Rejection> {
        let recorded = {
            let mut cell = self.cell(control).ok_or(Rejection::ControlNotFound)?;
            // Checked and written under the control's lock: the nonce check sees every earlier
            // report.
            cell.nonces
                .admit(&report.nonce, report.nonce_expires_at, report.received_at)?;
            let previous = match cell.reported {
                Some((status, _)) => status,
                None => current_status(cell.object.status.as_ref()),
            };
            let at = MicroTime(to_microsecond(report.received_at));
            cell.reported = Some((report.status, at));
            cell.revision = self.next_revision();
            Recorded {
                previous,
                stored: report.status,
            }
        };
        // No reconcile needed: a report moves neither the schedule nor readiness, and a due
        // reset or timeout reads it when it comes.
        if let Some(change) = recorded.change() {
            // No `status.history` in memory (the console prints every change): a record only.
            let record = HistoryPolicy::default().record(change, report.received_at);
            self.console.status_changed(control, &record);
        }
        Ok(recorded)
    }
}

impl Census for MemoryStore {
    fn count(&self) -> ControlCounts {
        let mut counts = ControlCounts::default();
        for cell in &self.controls.cells {
            let cell = lock(cell);
            let status = match cell.reported {
                Some((status, _)) => status,
                None => current_status(cell.object.status.as_ref()),
            };
            let namespace = cell
                .object
                .metadata
                .namespace
                .as_deref()
                .unwrap_or_default();
            let readiness = &cell.readiness;
            counts.add(namespace, status, readiness.is_ready(), readiness.reason());
        }
        counts
    }

    fn ready(&self) -> bool {
        // Everything is loaded before the endpoint starts.
        true
    }
}

impl ControlStore for MemoryStore {
    type Error = WriteError;

    async fn readiness(&self, control: &ExternalControl) -> Result<Readiness, WriteError> {
        let cell = self.cell(control);
        let cell = cell.ok_or_else(|| WriteError::NotFound(ObjectKey::of(control).to_string()))?;
        Ok(cell.readiness.clone())
    }

    async fn signing_tokens(&self, control: &ExternalControl) -> Result<SigningTokens, NoTokens> {
        match self.cell(control) {
            Some(cell) => cell.tokens.clone(),
            None => Err(NoTokens::ControlGone(ObjectKey::of(control).to_string())),
        }
    }

    fn recheck_not_ready(&self) -> Option<std::time::Duration> {
        // Nothing changes in memory that could make a control ready.
        None
    }

    fn waivers(&self, _: &ExternalControl) -> Vec<Arc<extctl_core::waiver::Waiver>> {
        // The sandbox has no waivers: they are a Kubernetes resource.
        Vec::new()
    }

    async fn write_status(
        &self,
        control: &ExternalControl,
        desired: &ExternalControlStatus,
    ) -> Result<(), WriteError> {
        let mut cell = self
            .cell(control)
            .ok_or_else(|| WriteError::NotFound(ObjectKey::of(control).to_string()))?;
        let current = Some(cell.revision.to_string());
        if control.metadata.resource_version != current {
            return Err(WriteError::Conflict(ObjectKey::of(control).to_string()));
        }
        // The version matched, so `desired` was computed from exactly this status.
        let mut object = (*cell.current()).clone();
        object.status = Some(as_stored(desired));
        cell.revision = self.next_revision();
        object.metadata.resource_version = Some(cell.revision.to_string());
        cell.object = Arc::new(object);
        Ok(())
    }

    async fn write_last_ping(
        &self,
        control: &ExternalControl,
        outcome: &PingOutcome,
    ) -> Result<(), WriteError> {
        {
            let mut cell = self
                .cell(control)
                .ok_or_else(|| WriteError::NotFound(ObjectKey::of(control).to_string()))?;
            cell.current();
            let object = Arc::make_mut(&mut cell.object);
            let status = object.status.get_or_insert_default();
            // Only onto the round it belongs to, as on Kubernetes (compared as stored: in
            // microseconds).
            if status.last_ping_time == Some(as_stored(&outcome.time)) {
                status.last_ping = Some(Box::new(as_stored(outcome)));
            }
            cell.revision = self.next_revision();
        }
        // The outcome may start a pending timeout: look again.
        let _ = self.changes.send(ObjectKey::of(control));
        Ok(())
    }

    async fn secret_data(
        &self,
        control: &ExternalControl,
        name: &str,
    ) -> Result<Option<BTreeMap<String, ByteString>>, SecretReadError> {
        let key = ObjectKey::new(control.namespace().unwrap_or_default(), name);
        Ok(self
            .secrets
            .get(&key)
            .map(|secret| secret.data.clone().unwrap_or_default()))
    }

    async fn write_notification(
        &self,
        control: &ExternalControl,
        index: usize,
        since: &MicroTime,
        entry: &NotificationStatus,
    ) -> Result<bool, WriteError> {
        let mut cell = self
            .cell(control)
            .ok_or_else(|| WriteError::NotFound(ObjectKey::of(control).to_string()))?;
        cell.current();
        let object = Arc::make_mut(&mut cell.object);
        let status = object.status.get_or_insert_default();
        // As on Kubernetes: only onto the entry the delivery began from.
        let Some(kept) = status
            .notifications
            .get_mut(index)
            .filter(|kept| kept.name == entry.name && kept.since == as_stored(since))
        else {
            return Ok(false);
        };
        *kept = as_stored(entry);
        cell.revision = self.next_revision();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use extctl_core::crd::ControlStatus;
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
            attempts: Some(1),
        };
        let read = store.controls().remove(0);
        store.write_last_ping(&read, &outcome(at(0))).await.unwrap();
        assert_eq!(store.controls()[0].status.as_ref().unwrap().last_ping, None);
        store
            .write_last_ping(&read, &outcome(at(60)))
            .await
            .unwrap();
        let recorded = store.controls()[0].status.clone().unwrap().last_ping;
        assert_eq!(recorded, Some(Box::new(as_stored(&outcome(at(60))))));
    }

    #[test]
    fn a_uid_tells_the_position_and_nothing_else_does() {
        for at in [0, 1, 4095, 100_000] {
            assert_eq!(position_of(&uid_of(at)), Some(at));
        }
        assert_eq!(position_of("2a7b5c1e-0000-4000-8000-000000000001"), None);
        assert_eq!(position_of(&format!("{UID_PREFIX}zz")), None);
    }

    #[tokio::test]
    async fn lookups_find_one_control_by_id_and_its_readiness() {
        let store = store(vec![control("a", 7), control("b", 8), control("c", 8)]);
        assert_eq!(store.lookup("42", 7).unwrap().name_any(), "a");
        assert_eq!(
            store.lookup("42", 9).unwrap_err(),
            Rejection::ControlNotFound
        );
        // Loaded together, the first by namespace and name holds a shared id.
        assert_eq!(store.lookup("42", 8).unwrap().name_any(), "b");
        let b = store.lookup("42", 7).unwrap();
        assert!(store.readiness(&b).await.unwrap().is_ready());
        assert!(store.tokens(&b, Freshness::Kept).await.is_ok());
        let c = store.controls().remove(2);
        assert_eq!(
            store.readiness(&c).await.unwrap().reason(),
            "ControlIdTaken"
        );
    }
}

//! The object store: what etcd plus the watch cache are to the real API server. One global
//! resourceVersion counter orders every write, a bounded history of events lets watches resume
//! from a resourceVersion, and a broadcast channel feeds open watches.
//!
//! Every read-modify-write runs under one lock (see [`Store::write`]) so that the
//! resourceVersion precondition and the event order are exact, like etcd's transactions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::status::ApiError;

/// Events kept for resuming watches; a watch from before the oldest one gets 410 Gone.
const HISTORY_LIMIT: usize = 10_000;

/// Events an open watch may fall behind before it is ended (the client then re-watches), so a
/// slow watcher never blocks writers.
const LIVE_BUFFER: usize = 4_096;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects. Ordered like etcd
/// keys, so lists come back sorted by namespace then name.
pub type ObjectKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as recorded in the history and sent to watches.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    /// The qualified resource (`plural.group`) the object belongs to.
    pub resource: String,
    pub kind: EventType,
    /// The object after the change (for a deletion: its last state, with the deletion's rv).
    pub object: Value,
    /// The object before the change, so a watch with a selector can turn a MODIFIED that moves
    /// an object out of (or into) its selection into DELETED (or ADDED).
    pub previous: Option<Value>,
}

/// What a write decided to do with the object under its key.
pub enum Outcome {
    /// Store this object (create or update); the store assigns its resourceVersion.
    Put(Value),
    /// Remove the object; the value is its final state, sent in the DELETED event.
    Remove(Value),
    /// Nothing changed: no new resourceVersion, no event (as a no-op update on the real server).
    Unchanged(Value),
}

/// A watch's starting point: the events it must replay and the channel of later ones.
pub struct Subscription {
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The resourceVersion the backlog brings the watcher up to.
    pub rv: u64,
}

#[derive(Default)]
struct State {
    rv: u64,
    collections: HashMap<String, BTreeMap<ObjectKey, Value>>,
    history: VecDeque<Arc<Event>>,
    /// Every event with a resourceVersion above this is still in `history`.
    history_floor: u64,
}

pub struct Store {
    state: Mutex<State>,
    live: broadcast::Sender<Arc<Event>>,
}

impl Store {
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock fails that test anyway; keep serving the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, resource: &str, key: &ObjectKey) -> Option<Value> {
        self.lock().collections.get(resource)?.get(key).cloned()
    }

    /// The objects of `resource` (in `namespace`, or all), in key order, with the current
    /// resourceVersion.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let state = self.lock();
        let items = state
            .collections
            .get(resource)
            .into_iter()
            .flatten()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, obj)| obj.clone())
            .collect();
        (items, state.rv)
    }

    /// Reads the object under `key`, lets `decide` choose the outcome, and commits it, all
    /// under the lock. With `dry_run` the decision is returned but not committed.
    pub fn write(
        &self,
        resource: &str,
        key: &ObjectKey,
        dry_run: bool,
        decide: impl FnOnce(Option<&Value>) -> Result<Outcome, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let current = state.collections.get(resource).and_then(|c| c.get(key));
        let outcome = decide(current)?;
        Ok(match outcome {
            Outcome::Unchanged(obj) => obj,
            Outcome::Put(obj) | Outcome::Remove(obj) if dry_run => obj,
            Outcome::Put(obj) => self.commit(&mut state, resource, key, obj, false),
            Outcome::Remove(obj) => self.commit(&mut state, resource, key, obj, true),
        })
    }

    fn commit(
        &self,
        state: &mut State,
        resource: &str,
        key: &ObjectKey,
        mut obj: Value,
        remove: bool,
    ) -> Value {
        state.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        let collection = state.collections.entry(resource.to_string()).or_default();
        let previous = if remove {
            collection.remove(key)
        } else {
            collection.insert(key.clone(), obj.clone())
        };
        let kind = match (remove, &previous) {
            (true, _) => EventType::Deleted,
            (false, None) => EventType::Added,
            (false, Some(_)) => EventType::Modified,
        };
        let event = Arc::new(Event {
            rv: state.rv,
            resource: resource.to_string(),
            kind,
            object: obj.clone(),
            previous,
        });
        state.record(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(event);
        obj
    }

    /// Starts a watch of `resource`. From `since = None`, the backlog is a synthetic ADDED per
    /// current object; from a resourceVersion, the recorded events after it — or 410 Gone when
    /// the history no longer reaches back that far.
    pub fn subscribe(&self, resource: &str, since: Option<u64>) -> Result<Subscription, ApiError> {
        let state = self.lock();
        // Subscribing under the lock means the live channel carries exactly the events after
        // the backlog: none lost, none twice.
        let live = self.live.subscribe();
        let backlog = match since {
            None => state.snapshot_events(resource),
            Some(rv) if rv < state.history_floor => {
                return Err(ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    state.history_floor
                )));
            }
            Some(rv) => state
                .history
                .iter()
                .filter(|e| e.rv > rv && e.resource == resource)
                .cloned()
                .collect(),
        };
        Ok(Subscription {
            backlog,
            live,
            rv: state.rv,
        })
    }

    /// Forgets the event history, as etcd compaction does: watches from any resourceVersion
    /// older than the current one now get 410 Gone.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.history_floor = state.rv;
    }

    /// Objects (with their resource and key) that list `owner_uid` among their owners and
    /// whose owners are now all gone: what the garbage collector deletes.
    pub fn orphaned_dependents(&self, owner_uid: &str) -> Vec<(String, ObjectKey)> {
        let state = self.lock();
        let live_uids: Vec<&str> = state
            .collections
            .values()
            .flat_map(|c| c.values())
            .filter_map(|o| o["metadata"]["uid"].as_str())
            .collect();
        let mut orphans = Vec::new();
        for (resource, collection) in &state.collections {
            for (key, obj) in collection {
                let owners = owner_uids(obj);
                if owners.contains(&owner_uid) && owners.iter().all(|u| !live_uids.contains(u)) {
                    orphans.push((resource.clone(), key.clone()));
                }
            }
        }
        orphans
    }
}

impl State {
    fn record(&mut self, event: Arc<Event>) {
        if self.history.len() == HISTORY_LIMIT
            && let Some(oldest) = self.history.pop_front()
        {
            self.history_floor = oldest.rv;
        }
        self.history.push_back(event);
    }

    fn snapshot_events(&self, resource: &str) -> Vec<Arc<Event>> {
        let objects = self.collections.get(resource).into_iter().flatten();
        objects
            .map(|(_, obj)| {
                Arc::new(Event {
                    rv: parse_rv(obj).unwrap_or(self.rv),
                    resource: resource.to_string(),
                    kind: EventType::Added,
                    object: obj.clone(),
                    previous: None,
                })
            })
            .collect()
    }
}

fn owner_uids(obj: &Value) -> Vec<&str> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
        .collect()
}

/// An object's `metadata.resourceVersion` as a number.
pub fn parse_rv(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

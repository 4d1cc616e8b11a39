//! Controls by `controlId` and by the Secret they reference, kept current from the writes (in
//! memory) or the watch (on Kubernetes), so that finding the control a call names, the
//! duplicates of an id, or the controls a Secret change affects costs O(1) in the number of
//! controls rather than a scan of all of them.
//!
//! Pure and I/O-free; `K` identifies a control (a shared [`ObjectKey`] on Kubernetes, a
//! position in the dev store's table). Every copy of a key is the same allocation: `K` is cheap
//! to clone, and each Secret's key is kept once however many controls name it (100,000 controls
//! cost about 0.2 KiB each here: BENCHMARKS.md, "Memory and scale").

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use kube::ResourceExt;

use crate::crd::ExternalControl;
use crate::key::ObjectKey;

/// What the index knows of one control: the id it claims and the Secret it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub control_id: i64,
    pub secret: Arc<ObjectKey>,
}

impl Entry {
    pub fn of(control: &ExternalControl) -> Self {
        Self {
            control_id: control.spec.control_id,
            secret: Arc::new(ObjectKey::new(
                control.namespace().unwrap_or_default(),
                &control.spec.secret_ref.name,
            )),
        }
    }
}

#[derive(Debug)]
pub struct ControlIndex<K> {
    entries: HashMap<K, Entry>,
    /// Sorted, without repeats; small (one control per id, unless duplicated), so a vector.
    by_id: HashMap<i64, Vec<K>>,
    by_secret: HashMap<Arc<ObjectKey>, Vec<K>>,
}

impl<K> Default for ControlIndex<K> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            by_id: HashMap::new(),
            by_secret: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> ControlIndex<K> {
    /// Records `key`'s current entry; returns the one it replaces (the id it may have left).
    pub fn upsert(&mut self, key: K, mut entry: Entry) -> Option<Entry> {
        if self.entries.get(&key) == Some(&entry) {
            return Some(entry);
        }
        let previous = self.remove(&key);
        insert_into(self.by_id.entry(entry.control_id).or_default(), &key);
        // The Secret's key as already kept, if another control names it.
        if let Some((kept, _)) = self.by_secret.get_key_value(&entry.secret) {
            entry.secret = kept.clone();
        }
        insert_into(
            self.by_secret.entry(entry.secret.clone()).or_default(),
            &key,
        );
        self.entries.insert(key, entry);
        previous
    }

    /// The key kept for `key` (a copy of it shares its allocation), if it is indexed.
    pub fn kept_key<Q>(&self, key: &Q) -> Option<&K>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get_key_value(key).map(|(kept, _)| kept)
    }

    /// Forgets `key`; returns its entry.
    pub fn remove(&mut self, key: &K) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        remove_from(&mut self.by_id, &entry.control_id, key);
        remove_from(&mut self.by_secret, &entry.secret, key);
        Some(entry)
    }

    /// Replaces everything (after a full list), returning every key that was or is indexed.
    pub fn replace_all(&mut self, entries: impl IntoIterator<Item = (K, Entry)>) -> Vec<K> {
        let mut touched: Vec<K> = self.entries.keys().cloned().collect();
        *self = Self::default();
        for (key, entry) in entries {
            touched.push(key.clone());
            self.upsert(key, entry);
        }
        touched.sort();
        touched.dedup();
        touched
    }

    /// The controls claiming `control_id`, in key order.
    pub fn with_id(&self, control_id: i64) -> Vec<K> {
        collect(self.by_id.get(&control_id))
    }

    /// The controls claiming `control_id`, in key order, without copying them.
    pub fn with_id_iter(&self, control_id: i64) -> impl Iterator<Item = &K> {
        self.by_id.get(&control_id).into_iter().flatten()
    }

    /// The controls that reference `secret`.
    pub fn using_secret(&self, secret: &ObjectKey) -> Vec<K> {
        collect(self.by_secret.get(secret))
    }

    /// Whether any control references `secret`.
    pub fn uses_secret(&self, secret: &ObjectKey) -> bool {
        self.by_secret.contains_key(secret)
    }

    /// The Secrets referenced, each once.
    pub fn secrets(&self) -> impl Iterator<Item = &Arc<ObjectKey>> {
        self.by_secret.keys()
    }

    /// Every indexed control.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn insert_into<K: Clone + Ord>(keys: &mut Vec<K>, key: &K) {
    if let Err(at) = keys.binary_search(key) {
        keys.insert(at, key.clone());
    }
}

fn remove_from<I: Eq + Hash, K: Ord>(map: &mut HashMap<I, Vec<K>>, at: &I, key: &K) {
    if let Some(keys) = map.get_mut(at) {
        if let Ok(position) = keys.binary_search(key) {
            keys.remove(position);
        }
        if keys.is_empty() {
            map.remove(at);
        }
    }
}

fn collect<K: Clone>(keys: Option<&Vec<K>>) -> Vec<K> {
    keys.cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(control_id: i64, secret: &str) -> Entry {
        Entry {
            control_id,
            secret: Arc::new(ObjectKey::new("ns", secret)),
        }
    }

    fn secret(name: &str) -> ObjectKey {
        ObjectKey::new("ns", name)
    }

    #[test]
    fn finds_controls_by_id_and_by_secret() {
        let mut index = ControlIndex::default();
        assert_eq!(index.upsert("a", entry(7, "s")), None);
        index.upsert("b", entry(8, "s"));
        index.upsert("c", entry(8, "t"));
        assert_eq!(index.with_id(7), ["a"]);
        assert_eq!(index.with_id(8), ["b", "c"]);
        assert_eq!(index.with_id_iter(8).count(), 2);
        assert!(index.with_id(9).is_empty());
        assert_eq!(index.using_secret(&secret("s")), ["a", "b"]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn a_changed_id_or_secret_moves_the_control_and_tells_where_it_was() {
        let mut index = ControlIndex::default();
        index.upsert("a", entry(7, "s"));
        assert_eq!(index.upsert("a", entry(8, "t")), Some(entry(7, "s")));
        assert!(index.with_id(7).is_empty());
        assert!(index.using_secret(&secret("s")).is_empty());
        assert_eq!(index.with_id(8), ["a"]);
        // The same entry again changes nothing.
        assert_eq!(index.upsert("a", entry(8, "t")), Some(entry(8, "t")));
        assert_eq!(index.with_id(8), ["a"]);
    }

    #[test]
    fn removal_and_replacement_leave_no_stale_entries() {
        let mut index = ControlIndex::default();
        index.upsert("a", entry(7, "s"));
        index.upsert("b", entry(7, "s"));
        assert_eq!(index.remove(&"a"), Some(entry(7, "s")));
        assert_eq!(index.remove(&"a"), None);
        assert_eq!(index.with_id(7), ["b"]);
        let touched = index.replace_all([("c", entry(9, "u"))]);
        assert_eq!(touched, ["b", "c"]);
        assert!(index.with_id(7).is_empty());
        assert!(index.using_secret(&secret("s")).is_empty());
        assert_eq!(index.with_id(9), ["c"]);
        assert!(!index.uses_secret(&secret("s")) && index.uses_secret(&secret("u")));
        assert_eq!(
            index.secrets().collect::<Vec<_>>(),
            [&Arc::new(secret("u"))]
        );
        assert_eq!(index.len(), 1);
        assert!(!index.is_empty());
    }

    #[test]
    fn keys_are_kept_once_and_shared() {
        let mut index = ControlIndex::default();
        let (a, b) = (Arc::new(secret("a")), Arc::new(secret("b")));
        index.upsert(a.clone(), entry(7, "s"));
        index.upsert(b.clone(), entry(7, "s"));
        // Each control's key is the one given; looked up by value, the same allocation.
        let kept = index.kept_key(&secret("a")).unwrap();
        assert!(Arc::ptr_eq(kept, &a));
        assert!(index.kept_key(&secret("c")).is_none());
        // Both controls name Secret s: one key for it, wherever it is kept.
        let secrets: Vec<_> = index.secrets().collect();
        assert_eq!(secrets.len(), 1);
        let a_secret = index.remove(&a).unwrap().secret;
        assert!(Arc::ptr_eq(&a_secret, index.secrets().next().unwrap()));
        assert_eq!(index.with_id(7), [b]);
    }
}

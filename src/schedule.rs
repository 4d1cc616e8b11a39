//! When each control next falls due without a change to its object (its next reset, a pending
//! timeout, a staleness limit, a waiver's expiry: [`Reconciled::wake`]), on tokio-util's timer
//! wheel. `extctl dev`'s loop owns one; on Kubernetes, [`Wakes`] does, in a task of its own.
//!
//! Not kube-runtime's `Action::requeue`: its scheduler keeps two copies of a control's
//! `ReconcileRequest` (an `ObjectRef` of four strings each) plus its map's and queue's slack,
//! for every control, since every control waits for its next reset. Here a control costs one
//! key, shared by the queue and the map (BENCHMARKS.md, "Memory and scale").
//!
//! [`Reconciled::wake`]: extctl_core::reconciler::Reconciled::wake

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::time::{DelayQueue, delay_queue};

use extctl_core::key::ObjectKey;
use extctl_core::reconciler::duration_until;

/// The furthest ahead a wake is kept: tokio-util's wheel holds about two years, and a wake that
/// comes early costs one reconcile, which sets the next.
const FURTHEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// When each control next falls due; `K` names a control (a shared `ObjectKey` on
/// Kubernetes, the one the index keeps).
pub struct Schedule<K> {
    queue: DelayQueue<K>,
    entries: HashMap<K, delay_queue::Key>,
}

impl<K> Default for Schedule<K> {
    fn default() -> Self {
        Self {
            queue: DelayQueue::new(),
            entries: HashMap::new(),
        }
    }
}

impl<K: Clone + Hash + Eq> Schedule<K> {
    /// `key` falls due at `at` (at once if past), instead of when it was to.
    pub fn set(&mut self, key: K, at: Timestamp) {
        let after = duration_until(Timestamp::now(), at).min(FURTHEST);
        match self.entries.get(&key) {
            Some(entry) => self.queue.reset(entry, after),
            None => {
                let entry = self.queue.insert(key.clone(), after);
                self.entries.insert(key, entry);
            }
        }
    }

    /// `key` no longer falls due.
    pub fn clear(&mut self, key: &K) {
        if let Some(entry) = self.entries.remove(key) {
            self.queue.remove(&entry);
        }
    }

    /// The next control to fall due, when it does (never, while nothing is scheduled).
    pub async fn next_due(&mut self) -> K {
        match poll_fn(|cx| self.queue.poll_expired(cx)).await {
            Some(expired) => {
                let key = expired.into_inner();
                self.entries.remove(&key);
                key
            }
            None => std::future::pending().await,
        }
    }

    /// How many controls are scheduled.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A handle on a [`Schedule`] kept by a task of its own (see [`Wakes::new`]), for the
/// reconciles that set wakes and the watch that forgets deleted controls.
#[derive(Clone)]
pub(crate) struct Wakes {
    requests: mpsc::UnboundedSender<(Arc<ObjectKey>, Option<Timestamp>)>,
}

impl Wakes {
    /// The handle, and the task to run: it calls `due` with each control as it falls due, and
    /// ends when every handle is dropped.
    pub(crate) fn new(
        due: impl Fn(&ObjectKey) + Send + 'static,
    ) -> (Self, impl Future<Output = ()>) {
        let (requests, mut received) = mpsc::unbounded_channel();
        let task = async move {
            let mut schedule = Schedule::<Arc<ObjectKey>>::default();
            loop {
                tokio::select! {
                    request = received.recv() => match request {
                        Some((key, Some(at))) => schedule.set(key, at),
                        Some((key, None)) => schedule.clear(&key),
                        None => return,
                    },
                    key = schedule.next_due() => due(&key),
                }
            }
        };
        (Self { requests }, task)
    }

    /// `control` falls due at `at`, or (`None`) only when something changes.
    pub(crate) fn set(&self, control: Arc<ObjectKey>, at: Option<Timestamp>) {
        // The task lives as long as the watch; after shutdown nothing falls due.
        let _ = self.requests.send((control, at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn key(name: &str) -> Arc<ObjectKey> {
        Arc::new(ObjectKey::new("team", name))
    }

    fn in_secs(seconds: i64) -> Timestamp {
        Timestamp::now() + jiff::SignedDuration::from_secs(seconds)
    }

    /// A running [`Wakes`] task, and what has fallen due so far.
    fn wakes() -> (Wakes, Arc<Mutex<Vec<String>>>) {
        let fallen = Arc::new(Mutex::new(Vec::new()));
        let seen = fallen.clone();
        let (wakes, task) = Wakes::new(move |key| seen.lock().unwrap().push(key.name.clone()));
        tokio::spawn(task);
        (wakes, fallen)
    }

    /// Lets the task take the requests sent, moves tokio's clock, and lets the task see what
    /// fell due.
    async fn advance(seconds: u64) {
        settle().await;
        tokio::time::advance(Duration::from_secs(seconds)).await;
        settle().await;
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    // The wake is computed from the wall clock (a `Timestamp`), the queue runs on tokio's:
    // paused, tokio's clock moves only when told, and the wall clock barely moves meanwhile.
    #[tokio::test(start_paused = true)]
    async fn each_control_falls_due_at_its_latest_wake_and_not_after_it_is_cleared() {
        let (wakes, fallen) = wakes();
        wakes.set(key("a"), Some(in_secs(10)));
        wakes.set(key("b"), Some(in_secs(20)));
        wakes.set(key("c"), Some(in_secs(30)));
        // A later reconcile moves a's wake later, b's earlier, and c's away.
        wakes.set(key("a"), Some(in_secs(40)));
        wakes.set(key("b"), Some(in_secs(5)));
        wakes.set(key("c"), None);
        advance(4).await;
        assert!(fallen.lock().unwrap().is_empty());
        advance(2).await;
        assert_eq!(*fallen.lock().unwrap(), ["b"]);
        advance(30).await;
        assert_eq!(
            *fallen.lock().unwrap(),
            ["b"],
            "a was moved to 40 s, c cleared"
        );
        advance(5).await;
        assert_eq!(*fallen.lock().unwrap(), ["b", "a"]);
        // Nothing is kept once fallen due: the same control can be set again.
        wakes.set(key("a"), Some(in_secs(1)));
        advance(2).await;
        assert_eq!(*fallen.lock().unwrap(), ["b", "a", "a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_past_wake_falls_due_at_once_and_a_distant_one_is_kept_within_the_wheel() {
        let (wakes, fallen) = wakes();
        wakes.set(key("late"), Some(in_secs(-60)));
        // Beyond the timer wheel's reach (about two years): kept at a year, not a panic.
        wakes.set(key("far"), Some(in_secs(10 * 365 * 24 * 3600)));
        advance(0).await;
        assert_eq!(*fallen.lock().unwrap(), ["late"]);
        advance(365 * 24 * 3600).await;
        assert_eq!(*fallen.lock().unwrap(), ["late", "far"]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_per_control_however_often_it_is_set() {
        let mut schedule = Schedule::default();
        for second in 1..100 {
            schedule.set(key("a"), in_secs(second));
        }
        schedule.set(key("b"), in_secs(5));
        assert_eq!(schedule.len(), 2);
        schedule.clear(&key("a"));
        schedule.clear(&key("never set"));
        assert_eq!(schedule.len(), 1);
        assert_eq!(schedule.next_due().await, key("b"));
        assert_eq!(schedule.len(), 0);
    }
}

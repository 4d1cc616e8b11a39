//! Which control is reconciled when: the loop both `extctl run` and `extctl dev` reconcile
//! with ([`reconcile_each`]), and the [`Schedule`] of when each control next falls due without
//! a change to its object (its next reset, a pending timeout, a staleness limit, a waiver's
//! expiry: [`Reconciled::wake`]), on tokio-util's timer wheel.
//!
//! Not kube-runtime's `Controller`: its scheduler holds a `ReconcileRequest` (an `ObjectRef` of
//! four strings) twice for every control waiting for its next reset, which every control
//! does, and keeps the capacity its map and queue grew to when every control was queued at
//! start, for good. Here a waiting control costs one key, shared with the index, and a burst's
//! queue is given back once drained (BENCHMARKS.md, "Memory and scale").
//!
//! [`Reconciled::wake`]: extctl_core::reconciler::Reconciled::wake

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{Future, poll_fn};
use std::hash::Hash;
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::{SignedDuration, Timestamp};
use tokio::task::JoinSet;
use tokio_util::time::{DelayQueue, delay_queue};

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

/// How a reconcile ended: when the control falls due again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Done: again at this time, or (`None`) only when something changes.
    At(Option<Timestamp>),
    /// Not done: again after this long.
    Retry(Duration),
}

/// Reconciles each control named by `changed` (its object or something it depends on changed)
/// and each one as it falls due, with `reconcile`: one reconcile at a time per control (a
/// control named while its reconcile runs is reconciled again after it), at most `concurrency`
/// at once, in the order named; none before `loaded` is done (names are taken meanwhile, so the
/// stream never waits). Ends when `changed` does, or when `until` is done, after the running
/// reconciles end.
pub(crate) async fn reconcile_each<K, F, Fut>(
    changed: impl Stream<Item = K>,
    concurrency: usize,
    loaded: impl Future<Output = ()>,
    until: impl Future<Output = ()>,
    reconcile: F,
) where
    K: Clone + Hash + Eq + Send + 'static,
    F: Fn(K) -> Fut,
    Fut: Future<Output = Next> + Send + 'static,
{
    let mut schedule = Schedule::<K>::default();
    let mut queue = Queue::default();
    let mut tasks = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, K> = HashMap::new();
    let mut busy: HashSet<K> = HashSet::new();
    // Controls named while their reconcile runs: again once it ends.
    let mut again: HashSet<K> = HashSet::new();
    let mut is_loaded = false;
    futures::pin_mut!(changed, loaded, until);
    loop {
        while is_loaded && tasks.len() < concurrency {
            let Some(key) = queue.pop() else { break };
            if busy.contains(&key) {
                again.insert(key);
                continue;
            }
            let task = tasks.spawn(reconcile(key.clone()));
            running.insert(task.id(), key.clone());
            busy.insert(key);
        }
        tokio::select! {
            () = &mut until => break,
            () = &mut loaded, if !is_loaded => is_loaded = true,
            key = changed.next() => match key {
                Some(key) => queue.push(key),
                None => break,
            },
            key = schedule.next_due() => queue.push(key),
            Some(done) = tasks.join_next_with_id() => {
                let (id, next) = match done {
                    Ok((id, next)) => (id, next),
                    // A reconcile that panicked is tried again a little later.
                    Err(error) => (error.id(), Next::Retry(Duration::from_secs(5))),
                };
                let Some(key) = running.remove(&id) else { continue };
                busy.remove(&key);
                match next {
                    Next::At(Some(at)) => schedule.set(key.clone(), at),
                    Next::At(None) => schedule.clear(&key),
                    Next::Retry(after) => {
                        let at = SignedDuration::try_from(after)
                            .ok()
                            .and_then(|after| Timestamp::now().checked_add(after).ok())
                            .unwrap_or(Timestamp::MAX);
                        schedule.set(key.clone(), at);
                    }
                }
                if again.remove(&key) {
                    queue.push(key);
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Controls waiting for a reconcile slot, each once, in the order named.
struct Queue<K> {
    order: VecDeque<K>,
    queued: HashSet<K>,
}

impl<K> Default for Queue<K> {
    fn default() -> Self {
        Self {
            order: VecDeque::new(),
            queued: HashSet::new(),
        }
    }
}

impl<K: Clone + Hash + Eq> Queue<K> {
    fn push(&mut self, key: K) {
        if self.queued.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    fn pop(&mut self) -> Option<K> {
        let key = self.order.pop_front()?;
        self.queued.remove(&key);
        // Every control is queued at start (and after downtime, when all fall due at once):
        // what that took is given back, not kept for good.
        if self.order.is_empty() && self.order.capacity() > 1024 {
            self.order = VecDeque::new();
            self.queued = HashSet::new();
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn in_secs(seconds: i64) -> Timestamp {
        Timestamp::now() + SignedDuration::from_secs(seconds)
    }

    /// What a test's reconciles did: each start (the control and tokio's clock, in whole
    /// seconds since the test began), and the most running at once.
    #[derive(Default)]
    struct Log {
        starts: Vec<(&'static str, u64)>,
        running: usize,
        most: usize,
    }

    /// A running [`reconcile_each`]: the channel naming controls, its log, the switch that
    /// stops it, and its task.
    struct Running {
        names: futures::channel::mpsc::UnboundedSender<&'static str>,
        log: Arc<Mutex<Log>>,
        stop: tokio::sync::oneshot::Sender<()>,
        run: tokio::task::JoinHandle<()>,
    }

    /// Runs [`reconcile_each`] over the names sent on the returned channel, each reconcile
    /// taking `busy` seconds and ending as `next` says for its control and start count.
    fn start(
        concurrency: usize,
        busy: u64,
        loaded: impl Future<Output = ()> + Send + 'static,
        next: fn(&'static str, usize) -> Next,
    ) -> Running {
        let (names, changed) = futures::channel::mpsc::unbounded();
        let (stop, until) = tokio::sync::oneshot::channel::<()>();
        let log = Arc::new(Mutex::new(Log::default()));
        let began = tokio::time::Instant::now();
        let shared = log.clone();
        let run = reconcile_each(
            changed,
            concurrency,
            loaded,
            async {
                let _ = until.await;
            },
            move |name| {
                let log = shared.clone();
                async move {
                    let count = {
                        let mut log = log.lock().unwrap();
                        log.starts.push((name, began.elapsed().as_secs()));
                        log.running += 1;
                        log.most = log.most.max(log.running);
                        log.starts.iter().filter(|(n, _)| *n == name).count()
                    };
                    tokio::time::sleep(Duration::from_secs(busy)).await;
                    log.lock().unwrap().running -= 1;
                    next(name, count)
                }
            },
        );
        Running {
            names,
            log,
            stop,
            run: tokio::spawn(run),
        }
    }

    async fn advance(seconds: u64) {
        for _ in 0..seconds * 10 {
            tokio::time::advance(Duration::from_millis(100)).await;
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
        }
    }

    fn starts(log: &Mutex<Log>) -> Vec<(&'static str, u64)> {
        log.lock().unwrap().starts.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn each_control_is_reconciled_when_named_and_again_when_it_falls_due() {
        // a: due again 10 s after each reconcile, twice; b: only when named.
        let next = |name, count| match (name, count) {
            ("a", 1 | 2) => Next::At(Some(in_secs(10))),
            _ => Next::At(None),
        };
        let Running {
            names,
            log,
            stop: _stop,
            ..
        } = start(8, 0, async {}, next);
        names.unbounded_send("a").unwrap();
        names.unbounded_send("b").unwrap();
        advance(35).await;
        assert_eq!(starts(&log), [("a", 0), ("b", 0), ("a", 10), ("a", 20)]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_reconcile_at_a_time_per_control_and_at_most_the_concurrency() {
        let Running {
            names,
            log,
            stop: _stop,
            ..
        } = start(2, 3, async {}, |_, _| Next::At(None));
        for name in ["a", "a", "b", "c", "a"] {
            names.unbounded_send(name).unwrap();
        }
        advance(1).await;
        // a named again while it runs: once more after it, not twice at once.
        names.unbounded_send("a").unwrap();
        advance(12).await;
        assert_eq!(starts(&log), [("a", 0), ("b", 0), ("c", 3), ("a", 3)]);
        assert_eq!(log.lock().unwrap().most, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_reconciled_before_the_controls_are_loaded_and_a_failure_is_retried() {
        let (loaded, is_loaded) = tokio::sync::oneshot::channel::<()>();
        let next = |_, count| match count {
            1 => Next::Retry(Duration::from_secs(5)),
            _ => Next::At(None),
        };
        let wait = async {
            let _ = is_loaded.await;
        };
        let Running {
            names,
            log,
            stop: _stop,
            ..
        } = start(8, 0, wait, next);
        names.unbounded_send("a").unwrap();
        advance(4).await;
        assert!(starts(&log).is_empty(), "named, but not loaded yet");
        loaded.send(()).unwrap();
        advance(10).await;
        assert_eq!(starts(&log), [("a", 4), ("a", 9)]);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_lets_the_running_reconciles_end_and_starts_no_other() {
        let Running {
            names,
            log,
            stop,
            run,
        } = start(1, 3, async {}, |_, _| Next::At(None));
        names.unbounded_send("a").unwrap();
        names.unbounded_send("b").unwrap();
        advance(1).await;
        stop.send(()).unwrap();
        advance(1).await;
        assert!(!run.is_finished(), "a is still running");
        advance(3).await;
        assert!(run.is_finished());
        assert_eq!(starts(&log), [("a", 0)]);
        assert_eq!(log.lock().unwrap().running, 0, "a ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_distant_wake_is_kept_within_the_wheel_and_a_key_is_kept_once() {
        let mut schedule = Schedule::default();
        for second in 1..100 {
            schedule.set("a", in_secs(second));
        }
        // Beyond the timer wheel's reach (about two years): kept at a year, not a panic.
        schedule.set("far", in_secs(10 * 365 * 24 * 3600));
        schedule.set("b", in_secs(5));
        assert_eq!(schedule.len(), 3);
        schedule.clear(&"a");
        schedule.clear(&"never set");
        assert_eq!(schedule.len(), 2);
        assert_eq!(schedule.next_due().await, "b");
        let began = tokio::time::Instant::now();
        assert_eq!(schedule.next_due().await, "far");
        let waited = began.elapsed();
        assert!(
            waited > FURTHEST - Duration::from_secs(6) && waited <= FURTHEST,
            "{waited:?}"
        );
        assert_eq!(schedule.len(), 0);
    }
}

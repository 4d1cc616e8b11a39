//! One reconciling replica: leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica serves the endpoint; only the Lease holder reconciles (resets, pings,
//! timeouts). The rules are client-go's (see [`extctl_core::lease`]): the holder renews every
//! retry period with a resourceVersion-conditioned update, stops leading once it has failed to
//! renew for the renew deadline, and the others take over only after seeing the Lease unchanged
//! for its whole duration, so the old leader has stopped before a new one starts. The status
//! writes stay conditioned on what they were computed from, as the safety net.
//!
//! Written here rather than taken from `kube-lease-manager`: that crate keeps reporting
//! leadership while its renewals fail (it logs and retries), so a partitioned leader would go on
//! reconciling after another replica took over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
// Tokio's clock, so that the unit tests below can run the election on paused time.
use tokio::time::Instant;

use extctl_core::lease::{Timing, may_hold, still_leading};
use std::sync::Arc;

use crate::metrics::Metrics;

/// Which Lease elects the reconciling replica (`--lease-name`, `--lease-namespace`, the
/// `--lease-*` durations).
#[derive(Debug, Clone)]
pub(crate) struct LeaseSettings {
    pub(crate) name: String,
    /// Default: the namespace served, else the client's default namespace.
    pub(crate) namespace: Option<String>,
    pub(crate) timing: Timing,
}

/// Whether this replica leads now; cheap to clone and to ask.
#[derive(Debug, Clone)]
pub enum Leadership {
    /// No election (one replica, or `--leader-election=false`): always leading.
    Always,
    /// As the [`Elector`] last decided.
    Elected(watch::Receiver<bool>),
}

impl Leadership {
    pub(crate) fn is_leader(&self) -> bool {
        match self {
            Self::Always => true,
            Self::Elected(leading) => *leading.borrow(),
        }
    }

    /// Completes when this replica leads (at once if it does).
    pub(crate) async fn gained(&mut self) {
        if let Self::Elected(leading) = self {
            // An error means the elector stopped (shutdown): then leadership never comes.
            if leading.wait_for(|leading| *leading).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Completes when this replica stops leading (never without election).
    pub(crate) async fn lost(&mut self) {
        match self {
            Self::Always => std::future::pending().await,
            Self::Elected(leading) => {
                let _ = leading.wait_for(|leading| !*leading).await;
            }
        }
    }
}

/// The elector: run [`Elector::run`] until shutdown; [`Elector::leadership`] tells the rest.
pub(crate) struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// Where the Lease is, `settings.namespace` resolved.
    namespace: String,
    /// This replica's name in the Lease (the pod name).
    identity: String,
    metrics: Arc<Metrics>,
    leading: watch::Sender<bool>,
    /// The Lease as last seen, and since when (on this replica's clock) it has not changed.
    observed: Option<(Lease, Instant)>,
    last_renewal: Option<Instant>,
}

impl Elector {
    pub(crate) fn new(
        client: Client,
        settings: LeaseSettings,
        namespace: String,
        identity: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.set_leader(false);
        Self {
            api: Api::namespaced(client, &namespace),
            settings,
            namespace,
            identity,
            metrics,
            leading: watch::channel(false).0,
            observed: None,
            last_renewal: None,
        }
    }

    pub(crate) fn leadership(&self) -> Leadership {
        Leadership::Elected(self.leading.subscribe())
    }

    /// Tries to take or renew the Lease every retry period until `shutdown`, then gives it up
    /// (if held) so another replica takes over at once instead of after the lease duration.
    pub(crate) async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(self.settings.timing.retry_period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticks.tick() => self.round().await,
            }
        }
        if self.is_leading() {
            self.set_leading(false);
            self.release().await;
        }
    }

    fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// One attempt to acquire or renew, and the step-down rule: another holder means stepping
    /// down at once; failing to reach the API server, only at the renew deadline.
    async fn round(&mut self) {
        let started = Instant::now();
        let timing = self.settings.timing;
        // A leader's attempt may take until its renew deadline, as client-go bounds renewal
        // (a slow API server is not a lost Lease); a candidate's, up to a lease duration. The
        // client's own retries of a failing server cannot hold the step-down rule past that.
        let bound = match self.last_renewal {
            Some(renewed) => timing
                .renew_deadline
                .saturating_sub(started.duration_since(renewed)),
            None => timing.lease_duration,
        };
        let attempt = tokio::time::timeout(bound, self.try_hold());
        match attempt.await {
            // Counted from the attempt's start: the write may have landed any time after it.
            Ok(Ok(true)) => self.last_renewal = Some(started),
            Ok(Ok(false)) => self.last_renewal = None,
            Ok(Err(error)) => {
                tracing::warn!(%error, lease = %self.settings.name, "reading or writing the Lease failed");
            }
            Err(_) => {
                tracing::warn!(lease = %self.settings.name, "the Lease could not be read or written in time");
            }
        }
        // Judged when the attempt is over, however long it took.
        let leading = self
            .last_renewal
            .is_some_and(|renewed| still_leading(renewed.elapsed(), &timing));
        if !leading {
            self.last_renewal = None;
        }
        if leading != self.is_leading() {
            self.set_leading(leading);
        }
    }

    fn set_leading(&self, leading: bool) {
        tracing::info!(
            identity = %self.identity,
            lease = %self.settings.name,
            "{}",
            if leading { "leading: this replica reconciles" } else { "not leading: reconciling stopped" }
        );
        self.metrics.set_leader(leading);
        self.leading.send_replace(leading);
    }

    /// Writes this replica into the Lease if it may; `Ok(false)` when another holds it (or won
    /// the race to it).
    async fn try_hold(&mut self) -> Result<bool, kube::Error> {
        let Some(current) = self.api.get_opt(&self.settings.name).await? else {
            return self.create().await;
        };
        let unchanged_for = self.observe(&current);
        let spec = current.spec.clone().unwrap_or_default();
        let declared = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.timing.lease_duration, Duration::from_secs);
        let holder = spec.holder_identity.as_deref();
        if !may_hold(holder, &self.identity, unchanged_for, declared) {
            return Ok(false);
        }
        let now = MicroTime(jiff::Timestamp::now());
        let taking_over = holder != Some(self.identity.as_str());
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            renew_time: Some(now.clone()),
            acquire_time: if taking_over {
                Some(now)
            } else {
                spec.acquire_time
            },
            lease_transitions: Some(
                spec.lease_transitions.unwrap_or(0) + i32::from(taking_over && holder.is_some()),
            ),
            ..spec
        });
        self.write(
            |api, params| async move { api.replace(&lease.name_any(), &params, &lease).await },
        )
        .await
    }

    async fn create(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        self.write(|api, params| async move { api.create(&params, &lease).await })
            .await
    }

    /// Runs a conditioned write; a conflict (or, for a create, an existing Lease) means another
    /// replica wrote first, which is an answer, not an error.
    async fn write<F, Fut>(&mut self, write: F) -> Result<bool, kube::Error>
    where
        F: FnOnce(Api<Lease>, PostParams) -> Fut,
        Fut: std::future::Future<Output = Result<Lease, kube::Error>>,
    {
        match write(self.api.clone(), PostParams::default()).await {
            Ok(written) => {
                self.observe(&written);
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Remembers `lease` if it changed; returns how long it has been seen unchanged.
    fn observe(&mut self, lease: &Lease) -> Duration {
        let now = Instant::now();
        match &self.observed {
            Some((seen, since))
                if seen.metadata.resource_version == lease.metadata.resource_version =>
            {
                now.duration_since(*since)
            }
            _ => {
                self.observed = Some((lease.clone(), now));
                Duration::ZERO
            }
        }
    }

    /// Empties the Lease so the next replica need not wait out its duration.
    async fn release(&mut self) {
        let Some((mut lease, _)) = self.observed.take() else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        let name = self.settings.name.clone();
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %name, "Lease released"),
            Err(error) => {
                tracing::warn!(%error, lease = %name, "releasing the Lease failed; another replica takes over when it expires")
            }
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.timing.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// The elector's timing on paused tokio time, against the Lease API of one namespace kept in
/// memory (get, create, and replace conditioned on the resourceVersion, answered as the API
/// server answers them). What it does with a genuine server is `tests/operate.rs`'s.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::Method;
    use serde_json::Value;

    use super::*;
    use crate::kubernetes::test_api::{self, status};

    const NAME: &str = "extctl";
    const S: Duration = Duration::from_secs(1);

    /// How the in-memory server answers.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Up,
        /// Every request gets 503.
        Failing,
        /// No request is answered.
        Hanging,
    }

    struct State {
        lease: Option<Lease>,
        version: u64,
        mode: Mode,
        /// Each write that succeeded: when, and the holder it wrote.
        writes: Vec<(Instant, Option<String>)>,
    }

    type Shared = Arc<Mutex<State>>;

    fn answer(state: &Shared, method: &Method, body: &[u8]) -> Option<(u16, Value)> {
        let mut state = state.lock().unwrap();
        match state.mode {
            Mode::Hanging => return None,
            Mode::Failing => return Some(status(503, "ServiceUnavailable")),
            Mode::Up => {}
        }
        let json = |code, lease: &Lease| Some((code, serde_json::to_value(lease).unwrap()));
        match *method {
            Method::GET => match &state.lease {
                Some(lease) => json(200, lease),
                None => Some(status(404, "NotFound")),
            },
            Method::POST if state.lease.is_some() => Some(status(409, "AlreadyExists")),
            Method::POST | Method::PUT => {
                let mut lease: Lease = serde_json::from_slice(body).unwrap();
                let current = state.lease.as_ref().map(|l| l.resource_version());
                if *method == Method::PUT && current != Some(lease.resource_version()) {
                    return Some(status(409, "Conflict"));
                }
                state.version += 1;
                lease.metadata.resource_version = Some(state.version.to_string());
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
                state.writes.push((Instant::now(), holder));
                state.lease = Some(lease.clone());
                json(if *method == Method::POST { 201 } else { 200 }, &lease)
            }
            _ => Some(status(405, "MethodNotAllowed")),
        }
    }

    /// The Lease API of namespace `team`, in memory: get, create, and replace conditioned on
    /// the resourceVersion.
    fn server(lease: Option<Lease>) -> (Shared, Client) {
        let state = Arc::new(Mutex::new(State {
            lease,
            version: 1,
            mode: Mode::Up,
            writes: Vec::new(),
        }));
        let shared = state.clone();
        let client = test_api::client(move |method, _path, body| {
            let answered = answer(&shared, &method, &body);
            async move { answered }
        });
        (state, client)
    }

    /// An elector for `identity` with client-go's default timing (15 s / 10 s / 2 s), running
    /// until the returned sender is dropped or sent to.
    fn start(
        client: Client,
        identity: &str,
    ) -> (
        Leadership,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let settings = LeaseSettings {
            name: NAME.into(),
            namespace: None,
            timing: Timing::new(15 * S),
        };
        let metrics = Arc::new(Metrics::new());
        let elector = Elector::new(client, settings, "team".into(), identity.into(), metrics);
        let leadership = elector.leadership();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(elector.run(async move {
            let _ = stopped.await;
        }));
        (leadership, stop, run)
    }

    fn held_by(holder: &str) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": NAME, "namespace": "team", "resourceVersion": "1"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": "2026-12-05T00:00:00.000000Z"}
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_replica_leads_at_once_and_renews_every_retry_period() {
        let (state, client) = server(None);
        let started = Instant::now();
        let (mut leadership, _stop, _run) = start(client, "a");
        leadership.gained().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        tokio::time::sleep(19 * S).await;
        let writes = state.lock().unwrap().writes.clone();
        let times: Vec<u64> = writes
            .iter()
            .map(|(at, _)| at.duration_since(started).as_secs())
            .collect();
        assert_eq!(times, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
        assert!(
            writes
                .iter()
                .all(|(_, holder)| holder.as_deref() == Some("a"))
        );
        assert!(leadership.is_leader());
    }

    /// client-go's rule: a leader that cannot renew stops leading once its last successful
    /// renewal is a renew deadline old, whether the server refuses or does not answer.
    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_a_renew_deadline_after_its_last_renewal() {
        for mode in [Mode::Failing, Mode::Hanging] {
            let (state, client) = server(None);
            let (mut leadership, _stop, _run) = start(client, "a");
            leadership.gained().await;
            tokio::time::sleep(5 * S).await;
            state.lock().unwrap().mode = mode;
            let last_renewal = state.lock().unwrap().writes.last().unwrap().0;
            leadership.lost().await;
            let since = Instant::now().duration_since(last_renewal);
            // Judged by rounds (every 2 s), or by the attempt's bound when it hangs.
            assert_eq!(
                since,
                10 * S,
                "stepped down {since:?} after the last renewal"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn another_replica_takes_over_only_after_the_lease_stood_still_its_duration() {
        let (state, client) = server(Some(held_by("b")));
        let started = Instant::now();
        let (mut leadership, _stop, _run) = start(client, "a");
        // "b" renews every 2 s for 20 s: "a" never takes over meanwhile.
        for _ in 0..10 {
            tokio::time::sleep(2 * S).await;
            let mut state = state.lock().unwrap();
            state.version += 1;
            let version = state.version.to_string();
            state.lease.as_mut().unwrap().metadata.resource_version = Some(version);
        }
        assert!(!leadership.is_leader());
        assert!(
            state.lock().unwrap().writes.is_empty(),
            "no write while b renews"
        );
        // "b" stops at 20 s: "a" takes over at the first round that finds it 15 s unchanged.
        let stopped_at = Instant::now();
        leadership.gained().await;
        let after = Instant::now().duration_since(stopped_at);
        assert!(
            (15 * S..=17 * S).contains(&after),
            "took over {after:?} after b stopped"
        );
        assert_eq!(
            state.lock().unwrap().writes.last().unwrap().1.as_deref(),
            Some("a")
        );
        assert!(started.elapsed() >= 35 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn on_shutdown_the_leader_gives_the_lease_up() {
        let (state, client) = server(None);
        let (mut leadership, stop, run) = start(client, "a");
        leadership.gained().await;
        stop.send(()).unwrap();
        run.await.unwrap();
        let lease = state.lock().unwrap().lease.clone().unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert!(!leadership.is_leader());
    }
}

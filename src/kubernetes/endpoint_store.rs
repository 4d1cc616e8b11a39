//! [`EndpointStore`] on Kubernetes: lookups from the reflector stores, writes to the status
//! subresource with a resourceVersion precondition.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::events::StatusEvents;
use super::watch::Reflectors;
use extctl_core::crd::{Cause, StatusChange};
use extctl_core::crd::{ExternalControl, ExternalControlStatus, StatusChangeRecord};
use extctl_core::history::HistoryPolicy;
use extctl_core::key::ObjectKey;
use extctl_core::ports::Journal;
use extctl_core::ports::{EndpointStore, Freshness, Recorded, the_holder};
use extctl_core::protocol::Rejection;
use extctl_core::readiness::holder_rank;
use extctl_core::report::{self, Report};
use extctl_core::tokens::{NoTokens, SigningTokens};

/// How often a write is retried after a 409 Conflict before giving up with 503. Each conflict
/// means another write succeeded, so this bounds contention, not progress.
const MAX_WRITE_ATTEMPTS: usize = 32;

pub(crate) struct KubeEndpointStore {
    client: Client,
    reflectors: Reflectors,
    events: StatusEvents,
    history: HistoryPolicy,
    /// The request timeout: no write is *started* after it has passed since the call came.
    answer_within: std::time::Duration,
}

impl KubeEndpointStore {
    /// Answers `Unavailable` until the controls have been listed in full.
    pub(crate) fn new(
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
        let deadline = tokio::time::Instant::now() + self.answer_within;
        for _ in 0..MAX_WRITE_ATTEMPTS {
            // The write in flight when the caller stops waiting is finished (and told, if it
            // was stored); a new attempt after that could store a report older than one sent
            // since, so none is started.
            if reread.is_some() && tokio::time::Instant::now() >= deadline {
                return Err(Rejection::StoreTimeout);
            }
            let current = reread.as_ref().unwrap_or(control);
            // Checked against the state the write is conditioned on: a nonce another replica
            // stored in between shows up here after the conflict.
            let update = report::apply(current.status.as_ref(), &report)?;
            let at = update.last_update_time.0;
            let change = StatusChange::between(Cause::Reported, update.previous, update.status)
                .map(|change| self.history.record(change, at));
            let mut next = current.status.clone().unwrap_or_default();
            update.apply_to(&mut next, current.metadata.generation);
            // A pass over a failure a waiver held open ends the waiver's effect: on record too.
            let ended = ended_waiver(current, &next).map(|name| {
                self.history
                    .record_waiver(Cause::WaiverEnded, name, update.status, at)
            });
            let records: Vec<_> = change.iter().chain(&ended).collect();
            let history = (!records.is_empty()).then(|| {
                let policy = self.history.for_control(control);
                let kept = current.status.as_ref().map_or(&[][..], |s| &s.history[..]);
                records
                    .iter()
                    .fold(kept.to_vec(), |kept, record| policy.appended(&kept, record))
            });
            let patch = status_patch(current, &next, history);
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    let recorded = Recorded {
                        previous: update.previous,
                        stored: update.status,
                    };
                    for record in records {
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
    next: &ExternalControlStatus,
    history: Option<Vec<StatusChangeRecord>>,
) -> serde_json::Value {
    let mut patch = json!({
        "metadata": { "resourceVersion": current.resource_version() },
        "status": {
            "status": next.status,
            "lastUpdateTime": next.last_update_time,
            "lastResultTime": next.last_result_time,
            "recentNonces": next.recent_nonces,
            "conditions": next.conditions,
            "waiver": next.waiver,
        }
    });
    if let Some(history) = history {
        patch["status"]["history"] = json!(history);
    }
    patch
}

/// The waiver whose effect `next` ends (a pass over a failure it held open), if any.
fn ended_waiver<'a>(current: &ExternalControl, next: &'a ExternalControlStatus) -> Option<&'a str> {
    let was = current.status.as_ref()?.waiver.as_ref()?;
    let is = next.waiver.as_ref()?;
    (was.ended.is_none() && is.ended.is_some()).then_some(is.name.as_str())
}

pub(crate) fn is_conflict(error: &kube::Error) -> bool {
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

/// The conflict retry on paused tokio time, against one control kept in memory whose status
/// patches the test makes conflict; the genuine server's conflicts are `tests/faults.rs`'s.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use http::Method;
    use jiff::Timestamp;
    use serde_json::Value;

    use super::*;
    use crate::kubernetes::test_api::{self, status};
    use crate::kubernetes::watch::{self, Scope};
    use extctl_core::crd::ControlStatus;

    const PATH: &str = "/apis/extctl.dev/v1alpha1/namespaces/team/externalcontrols/sast/status";

    /// The control as stored, how many status patches are still to conflict (each as if
    /// another replica had written meanwhile, storing `meanwhile` when given), how long a
    /// patch's answer takes, and the requests made.
    struct Server {
        control: Value,
        version: u64,
        conflicts: usize,
        meanwhile: Option<Value>,
        latency: Duration,
        started: tokio::time::Instant,
        /// Each request to the status, and when (whole seconds after the start).
        requests: Vec<(Method, u64)>,
    }

    fn control() -> Value {
        serde_json::json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "sast", "namespace": "team", "resourceVersion": "1",
                         "uid": "u-1", "generation": 1},
            "spec": {"projectId": 42, "controlId": 7, "secretRef": {"name": "sast-token"}},
            "status": {"status": "pending"}
        })
    }

    fn answer(server: &Mutex<Server>, method: Method, path: &str, body: &[u8]) -> (u16, Value) {
        let mut server = server.lock().unwrap();
        if path != PATH {
            // The Event of a stored change.
            return (201, serde_json::from_slice(body).unwrap());
        }
        let seconds = server.started.elapsed().as_secs();
        server.requests.push((method.clone(), seconds));
        if method == Method::GET {
            return (200, server.control.clone());
        }
        let patch: Value = serde_json::from_slice(body).unwrap();
        let version = server.version.to_string();
        if server.conflicts > 0 {
            server.conflicts -= 1;
            server.version += 1;
            let version = server.version.to_string();
            if let Some(status) = server.meanwhile.clone() {
                server.control["status"] = status;
            }
            server.control["metadata"]["resourceVersion"] = version.into();
            return status(409, "Conflict");
        }
        assert_eq!(patch["metadata"]["resourceVersion"], version.as_str());
        server.version += 1;
        let version = server.version.to_string();
        json_patch::merge(&mut server.control["status"], &patch["status"]);
        server.control["metadata"]["resourceVersion"] = version.into();
        (200, server.control.clone())
    }

    fn store(server: Server) -> (Arc<Mutex<Server>>, KubeEndpointStore, ExternalControl) {
        let control: ExternalControl = serde_json::from_value(server.control.clone()).unwrap();
        let latency = server.latency;
        let server = Arc::new(Mutex::new(server));
        let shared = server.clone();
        let client = test_api::client(move |method, path, body| {
            let shared = shared.clone();
            async move {
                let patch = method == Method::PATCH;
                let answered = answer(&shared, method, &path, &body);
                if patch {
                    tokio::time::sleep(latency).await;
                }
                Some(answered)
            }
        });
        let (triggers, _) = futures::channel::mpsc::unbounded();
        let scope = Scope::Namespace("team".into());
        let reflectors = watch::start(
            client.clone(),
            &scope,
            false,
            triggers,
            futures::channel::mpsc::unbounded().0,
            Duration::from_secs(60),
            Default::default(),
        )
        .reflectors;
        let events = StatusEvents::new(client.clone(), None);
        let history = HistoryPolicy {
            limit: 10,
            replica: None,
        };
        let store =
            KubeEndpointStore::new(client, reflectors, events, history, Duration::from_secs(10));
        (server, store, control)
    }

    fn server(conflicts: usize, latency: Duration) -> Server {
        Server {
            control: control(),
            version: 1,
            conflicts,
            meanwhile: None,
            latency,
            started: tokio::time::Instant::now(),
            requests: Vec::new(),
        }
    }

    fn report(nonce: &str) -> Report {
        let now = Timestamp::now();
        Report {
            status: ControlStatus::Pass,
            nonce: nonce.into(),
            nonce_expires_at: now + jiff::SignedDuration::from_secs(30),
            received_at: now,
        }
    }

    fn methods(server: &Mutex<Server>) -> Vec<Method> {
        let server = server.lock().unwrap();
        server.requests.iter().map(|(m, _)| m.clone()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_reads_the_status_again_and_retries_until_stored() {
        let (server, store, control) = store(server(3, Duration::ZERO));
        let recorded = store.record(&control, report("n-1")).await.unwrap();
        assert_eq!(recorded.stored, ControlStatus::Pass);
        use Method as M;
        let expected = [
            M::PATCH,
            M::GET,
            M::PATCH,
            M::GET,
            M::PATCH,
            M::GET,
            M::PATCH,
        ];
        assert_eq!(methods(&server), expected);
        let stored = server.lock().unwrap().control["status"].clone();
        assert_eq!(stored["status"], "pass");
        assert_eq!(stored["recentNonces"][0]["nonce"], "n-1");
    }

    /// Another replica stored the same nonce meanwhile: the report is refused after the
    /// conflict, against the state read again, and nothing more is written.
    #[tokio::test(start_paused = true)]
    async fn a_nonce_stored_meanwhile_by_another_replica_is_refused_after_the_conflict() {
        let mut server = server(1, Duration::ZERO);
        let later = Timestamp::now() + jiff::SignedDuration::from_secs(30);
        server.meanwhile = Some(serde_json::json!({"status": "fail",
            "recentNonces": [{"nonce": "n-1", "expiresAt": later.to_string()}]}));
        let (server, store, control) = store(server);
        let refused = store.record(&control, report("n-1")).await.unwrap_err();
        assert_eq!(refused, Rejection::InvalidNonce);
        assert_eq!(methods(&server), [Method::PATCH, Method::GET]);
    }

    /// No attempt starts after the request timeout (10 s here): one in flight then is
    /// finished, and the caller told the store timed out.
    #[tokio::test(start_paused = true)]
    async fn no_attempt_starts_after_the_request_timeout() {
        let (server, store, control) = store(server(usize::MAX, Duration::from_secs(3)));
        let refused = store.record(&control, report("n-1")).await.unwrap_err();
        assert_eq!(refused, Rejection::StoreTimeout);
        let patches: Vec<u64> = server
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(m, _)| *m == Method::PATCH)
            .map(|(_, at)| at)
            .copied()
            .collect();
        assert_eq!(patches, [0, 3, 6, 9], "attempts started at these seconds");
    }

    #[tokio::test(start_paused = true)]
    async fn a_control_that_keeps_changing_gives_up_after_its_attempts() {
        let (server, store, control) = store(server(usize::MAX, Duration::ZERO));
        let refused = store.record(&control, report("n-1")).await.unwrap_err();
        assert!(matches!(refused, Rejection::Unavailable(_)), "{refused:?}");
        let patches = methods(&server)
            .iter()
            .filter(|m| **m == Method::PATCH)
            .count();
        assert_eq!(patches, MAX_WRITE_ATTEMPTS);
    }
}

//! `--reports`: keeps one OpenReports `Report` (or wgpolicyk8s.io `PolicyReport`) per namespace
//! whose results are its controls (the body is [`extctl_core::policy_reports`]'), for Policy Reporter
//! and other compliance dashboards.
//!
//! - Only the Lease holder writes. On taking the lead it lists the reports extctl keeps (those
//!   labelled `app.kubernetes.io/managed-by=extctl`), so a report left by an earlier leader is
//!   updated or deleted rather than written blindly; the list is repeated every [`RELIST`].
//! - Every [`SWEEP`] it looks at the controls in the watch's store (no API call): a
//!   namespace whose controls changed since its report was last made current (a fingerprint of
//!   their uids and resourceVersions, so a deleted control, which the controller never
//!   reconciles, counts too) gets its report computed again, and written only if it differs
//!   from the stored one.
//! - Every write is conditioned: a create, a merge patch carrying the resourceVersion last
//!   seen, or a delete with that resourceVersion as precondition. A conflict (someone else wrote
//!   the report) reads it again (`get`) and retries, up to [`ATTEMPTS`] times per sweep. A
//!   namespace without controls has its report deleted.
//!
//! RBAC: `list`, `get`, `create`, `patch` and `delete` on the kind written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    Preconditions,
};
use kube::{Client, ResourceExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
// Tokio's clock, so that the unit tests below can run the writer on paused time.
use tokio::time::Instant;

use super::lease::Leadership;
use super::watch::{Reflectors, Scope};
use extctl_core::crd::ExternalControl;
use extctl_core::policy_reports::{self, Flavor, MANAGED_BY, MANAGED_BY_LABEL, REPORT_NAME};

/// How often the controls are compared with the reports: a change (a deletion included) is in
/// its namespace's report within about this, plus the write.
pub(crate) const SWEEP: Duration = Duration::from_secs(2);
/// How often the stored reports are listed again (a report deleted or edited by someone else
/// is then put right).
pub(crate) const RELIST: Duration = Duration::from_secs(300);
/// How long a namespace whose report could not be written (other than a conflict), or a list
/// that failed, waits before the next try.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Conditioned writes tried per namespace and sweep when each conflicts.
pub(crate) const ATTEMPTS: usize = 3;
/// Reports per list page.
const PAGE: u32 = 50;

/// The report writer: [`PolicyReportWriter::run`] until the process ends.
pub(crate) struct PolicyReportWriter {
    client: Client,
    scope: Scope,
    flavor: Flavor,
    resource: ApiResource,
    reflectors: Reflectors,
    leadership: Leadership,
}

/// A report as last seen on the server.
struct Stored {
    resource_version: String,
    /// Of [`policy_reports::managed`]: whether it says what extctl would write.
    digest: [u8; 32],
    /// Labelled as extctl's: one that is not (someone else's object of that name) is left alone.
    ours: bool,
}

/// What this replica knows while it leads.
struct State {
    listed_at: Instant,
    stored: HashMap<String, Stored>,
    /// Per namespace, the fingerprint of the controls its report was last made current with.
    synced: HashMap<String, u64>,
    /// Namespaces not tried again before then (their last write failed).
    retry_at: HashMap<String, Instant>,
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("it kept changing: {ATTEMPTS} writes conflicted")]
    Conflicts,
    #[error(
        "an object of that name exists without the label {MANAGED_BY_LABEL}={MANAGED_BY}; it is left alone"
    )]
    NotOurs,
}

impl PolicyReportWriter {
    pub(crate) fn new(
        client: Client,
        scope: Scope,
        flavor: Flavor,
        reflectors: Reflectors,
        leadership: Leadership,
    ) -> Self {
        let resource = ApiResource {
            group: flavor.group().into(),
            version: flavor.version().into(),
            api_version: flavor.api_version(),
            kind: flavor.kind().into(),
            plural: flavor.plural().into(),
        };
        Self {
            client,
            scope,
            flavor,
            resource,
            reflectors,
            leadership,
        }
    }

    /// Keeps the reports while this replica leads, for ever.
    pub(crate) async fn run(self) {
        let mut leadership = self.leadership.clone();
        loop {
            leadership.gained().await;
            self.lead(leadership.clone()).await;
        }
    }

    /// Until leadership is lost.
    async fn lead(&self, mut leadership: Leadership) {
        let lost = leadership.lost();
        tokio::pin!(lost);
        let mut ticks = tokio::time::interval(SWEEP);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state: Option<State> = None;
        let mut list_after = Instant::now();
        loop {
            tokio::select! {
                _ = &mut lost => return,
                _ = ticks.tick() => {}
            }
            // Before the controls are loaded, an empty store would delete every report.
            if !self.reflectors.loaded() {
                continue;
            }
            let stale = state
                .as_ref()
                .is_none_or(|s| s.listed_at.elapsed() >= RELIST);
            if stale && Instant::now() >= list_after {
                match self.list().await {
                    Ok(stored) => {
                        tracing::debug!(
                            reports = stored.len(),
                            kind = self.flavor.kind(),
                            "reports listed"
                        );
                        state = Some(State {
                            listed_at: Instant::now(),
                            stored,
                            synced: HashMap::new(),
                            retry_at: HashMap::new(),
                        });
                    }
                    Err(error) => {
                        list_after = Instant::now() + RETRY_AFTER;
                        tracing::warn!(
                            %error,
                            kind = %self.resource.api_version,
                            resource = self.flavor.plural(),
                            "cannot list the compliance reports (is the CRD installed, and may extctl list them?); retrying in {}s",
                            RETRY_AFTER.as_secs()
                        );
                    }
                }
            }
            if let Some(state) = state.as_mut() {
                self.sweep(state).await;
            }
        }
    }

    fn api(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &self.resource),
            None => Api::all_with(self.client.clone(), &self.resource),
        }
    }

    /// The reports extctl keeps where it serves, by namespace.
    async fn list(&self) -> Result<HashMap<String, Stored>, kube::Error> {
        let api = match &self.scope {
            Scope::Cluster => self.api(None),
            Scope::Namespace(namespace) => self.api(Some(namespace)),
        };
        let mut params = ListParams::default()
            .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
            .limit(PAGE);
        let mut stored = HashMap::new();
        loop {
            let page = api.list(&params).await?;
            for report in page.items {
                if report.name_any() == REPORT_NAME
                    && let Some(namespace) = report.namespace()
                {
                    stored.insert(namespace, Stored::of(&report));
                }
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(stored),
            }
        }
    }

    /// Brings every namespace whose controls changed up to date.
    async fn sweep(&self, state: &mut State) {
        let mut by_namespace: BTreeMap<String, Vec<Arc<ExternalControl>>> = BTreeMap::new();
        for control in self.reflectors.controls.state() {
            let namespace = control.namespace().unwrap_or_default();
            by_namespace.entry(namespace).or_default().push(control);
        }
        let namespaces: BTreeSet<String> = by_namespace
            .keys()
            .chain(state.stored.keys())
            .chain(state.synced.keys())
            .cloned()
            .collect();
        let now = Instant::now();
        state.retry_at.retain(|_, at| *at > now);
        for namespace in namespaces {
            let controls = by_namespace.get(&namespace).map_or(&[][..], Vec::as_slice);
            let print = fingerprint(controls);
            if state.synced.get(&namespace) == Some(&print)
                || state.retry_at.contains_key(&namespace)
            {
                continue;
            }
            // Leadership may end during a sweep; the successor lists for itself.
            if !self.leadership.is_leader() {
                return;
            }
            let desired = policy_reports::report(controls.iter().map(AsRef::as_ref))
                .map(|report| policy_reports::object(self.flavor, &namespace, &report));
            match self.sync(state, &namespace, desired.as_ref()).await {
                Ok(()) => {
                    state.synced.insert(namespace, print);
                }
                Err(error @ SyncError::NotOurs) => {
                    tracing::warn!(%namespace, %error, "not writing the compliance report {REPORT_NAME}");
                    state.synced.insert(namespace, print);
                }
                Err(error) => {
                    tracing::warn!(%namespace, %error, kind = self.flavor.kind(), "writing the compliance report failed; trying again");
                    if !matches!(error, SyncError::Conflicts) {
                        state.retry_at.insert(namespace, now + RETRY_AFTER);
                    }
                }
            }
        }
        state.synced.retain(|namespace, _| {
            by_namespace.contains_key(namespace) || state.stored.contains_key(namespace)
        });
    }

    /// Makes the stored report of `namespace` `desired` (`None`: no report), with conditioned
    /// writes only.
    async fn sync(
        &self,
        state: &mut State,
        namespace: &str,
        desired: Option<&Value>,
    ) -> Result<(), SyncError> {
        let api = self.api(Some(namespace));
        for _ in 0..ATTEMPTS {
            let current = state.stored.get(namespace);
            if current.is_some_and(|stored| !stored.ours) {
                return Err(SyncError::NotOurs);
            }
            let outcome = match (desired, current) {
                (None, None) => return Ok(()),
                (Some(desired), Some(stored))
                    if stored.digest == digest(&policy_reports::managed(desired)) =>
                {
                    return Ok(());
                }
                (None, Some(stored)) => {
                    let params = DeleteParams::default().preconditions(Preconditions {
                        resource_version: Some(stored.resource_version.clone()),
                        uid: None,
                    });
                    match api.delete(REPORT_NAME, &params).await {
                        Ok(_) => Ok(None),
                        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
                        Err(error) => Err(error),
                    }
                }
                (Some(desired), None) => {
                    let object: DynamicObject =
                        serde_json::from_value(desired.clone()).expect("a report is an object");
                    api.create(&PostParams::default(), &object).await.map(Some)
                }
                (Some(desired), Some(stored)) => {
                    let patch = policy_reports::patch(desired, &stored.resource_version);
                    api.patch(REPORT_NAME, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(Some)
                }
            };
            match outcome {
                Ok(written) => {
                    let results =
                        desired.map_or(0, |d| d["results"].as_array().map_or(0, Vec::len));
                    tracing::debug!(%namespace, results, kind = self.flavor.kind(), deleted = written.is_none(), "compliance report written");
                    match written {
                        Some(report) => state
                            .stored
                            .insert(namespace.to_owned(), Stored::of(&report)),
                        None => state.stored.remove(namespace),
                    };
                    return Ok(());
                }
                // Changed, created or deleted since it was seen: read it again and retry.
                Err(kube::Error::Api(status))
                    if status.is_conflict()
                        || status.is_already_exists()
                        || status.is_not_found() =>
                {
                    match api.get_opt(REPORT_NAME).await? {
                        Some(report) => state
                            .stored
                            .insert(namespace.to_owned(), Stored::of(&report)),
                        None => state.stored.remove(namespace),
                    };
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(SyncError::Conflicts)
    }
}

impl Stored {
    fn of(report: &DynamicObject) -> Self {
        let value = serde_json::to_value(report).unwrap_or_default();
        Self {
            resource_version: report.resource_version().unwrap_or_default(),
            digest: digest(&policy_reports::managed(&value)),
            ours: report.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY),
        }
    }
}

/// Which controls, in which versions, a namespace has (order-independent). Equal fingerprints:
/// the report computed from them is the same.
fn fingerprint(controls: &[Arc<ExternalControl>]) -> u64 {
    let each = controls.iter().fold(0_u64, |sum, control| {
        let mut hasher = DefaultHasher::new();
        control.metadata.uid.hash(&mut hasher);
        control.metadata.name.hash(&mut hasher);
        control.metadata.resource_version.hash(&mut hasher);
        sum.wrapping_add(hasher.finish())
    });
    let mut hasher = DefaultHasher::new();
    (controls.len(), each).hash(&mut hasher);
    hasher.finish()
}

/// SHA-256 of `value` in a canonical form (object keys sorted, whatever the map's order).
fn digest(value: &Value) -> [u8; 32] {
    fn feed(value: &Value, hasher: &mut Sha256) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                hasher.update(b"{");
                for key in keys {
                    feed(&Value::String(key.clone()), hasher);
                    hasher.update(b":");
                    feed(&map[key], hasher);
                    hasher.update(b",");
                }
                hasher.update(b"}");
            }
            Value::Array(items) => {
                hasher.update(b"[");
                for item in items {
                    feed(item, hasher);
                    hasher.update(b",");
                }
                hasher.update(b"]");
            }
            scalar => hasher.update(scalar.to_string().as_bytes()),
        }
    }
    let mut hasher = Sha256::new();
    feed(value, &mut hasher);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_digest_ignores_key_order_only() {
        let a = json!({"a": 1, "b": [1, 2], "c": {"x": "y", "z": null}});
        let b: Value =
            serde_json::from_str(r#"{"c": {"z": null, "x": "y"}, "b": [1, 2], "a": 1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(
            digest(&a),
            digest(&json!({"a": 1, "b": [2, 1], "c": {"x": "y", "z": null}}))
        );
        assert_ne!(digest(&json!({"a": "1"})), digest(&json!({"a": 1})));
        assert_ne!(digest(&json!(["a,b"])), digest(&json!(["a", "b"])));
    }

    fn control(name: &str, version: &str) -> Arc<ExternalControl> {
        let control: ExternalControl = serde_json::from_value(json!({
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "metadata": {"name": name, "namespace": "n", "uid": format!("u-{name}"), "resourceVersion": version},
            "spec": {"projectId": 1, "controlId": 1, "secretRef": {"name": "s"}}
        }))
        .unwrap();
        Arc::new(control)
    }

    #[test]
    fn the_fingerprint_changes_with_any_control_added_removed_or_written() {
        let (a, b) = (control("a", "1"), control("b", "1"));
        let both = fingerprint(&[a.clone(), b.clone()]);
        assert_eq!(both, fingerprint(&[b.clone(), a.clone()]));
        assert_ne!(both, fingerprint(std::slice::from_ref(&a)));
        assert_ne!(both, fingerprint(&[a.clone(), control("b", "2")]));
        assert_ne!(fingerprint(&[]), fingerprint(&[a]));
    }

    // The writer on paused tokio time, against the reports of namespace `n` kept in memory;
    // what a genuine server and Policy Reporter make of them is `tests/reports.rs`'s.

    use std::sync::Mutex;

    use http::Method;
    use kube::runtime::watcher;
    use tokio::sync::watch;

    use crate::kubernetes::test_api::{self, status};

    const S: Duration = Duration::from_secs(1);

    /// The stored report (`None`: none), how the next writes are answered, and the requests.
    #[derive(Default)]
    struct Server {
        report: Option<Value>,
        version: u64,
        /// Writes still to be answered so (409 or 500), before writes succeed again.
        failing: Vec<u16>,
        requests: Vec<(Method, u64)>,
    }

    fn answer(server: &mut Server, method: Method, body: &[u8], at: u64) -> (u16, Value) {
        server.requests.push((method.clone(), at));
        let write = matches!(method, Method::POST | Method::PATCH | Method::DELETE);
        if write && !server.failing.is_empty() {
            let code = server.failing.remove(0);
            server.version += 1;
            return status(
                code,
                if code == 409 {
                    "Conflict"
                } else {
                    "InternalError"
                },
            );
        }
        let stored = |server: &mut Server, mut report: Value| {
            server.version += 1;
            report["metadata"]["resourceVersion"] = server.version.to_string().into();
            server.report = Some(report.clone());
            report
        };
        match method {
            Method::GET if server.report.is_some() => (200, server.report.clone().unwrap()),
            Method::GET => {
                // The list of the kind (the writer lists with a label selector).
                let items: Vec<Value> = server.report.iter().cloned().collect();
                (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": server.version.to_string()}, "items": items}),
                )
            }
            Method::POST => {
                let report: Value = serde_json::from_slice(body).unwrap();
                (201, stored(server, report))
            }
            Method::PATCH => {
                let patch: Value = serde_json::from_slice(body).unwrap();
                let mut report = server.report.clone().unwrap();
                json_patch::merge(&mut report, &patch);
                (200, stored(server, report))
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }

    struct Run {
        server: Arc<Mutex<Server>>,
        controls: kube::runtime::reflector::store::Writer<ExternalControl>,
        leading: watch::Sender<bool>,
        started: Instant,
    }

    impl Run {
        fn requests(&self) -> Vec<(Method, u64)> {
            self.server.lock().unwrap().requests.clone()
        }

        fn writes(&self) -> Vec<u64> {
            let requests = self.requests();
            let writes = requests.iter().filter(|(m, _)| *m != Method::GET);
            writes.map(|(_, at)| *at).collect()
        }

        fn set_controls(&mut self, controls: &[Arc<ExternalControl>]) {
            self.controls.apply_watcher_event(&watcher::Event::Init);
            for control in controls {
                let event = watcher::Event::InitApply(control.as_ref().clone());
                self.controls.apply_watcher_event(&event);
            }
            self.controls.apply_watcher_event(&watcher::Event::InitDone);
        }

        fn seconds(&self) -> u64 {
            self.started.elapsed().as_secs()
        }
    }

    /// The writer of `n`'s OpenReports Report over the controls `controls`, not leading yet.
    fn start(controls: &[Arc<ExternalControl>]) -> Run {
        let server = Arc::new(Mutex::new(Server::default()));
        let started = Instant::now();
        let shared = server.clone();
        let client = test_api::client(move |method, _path, body| {
            let at = started.elapsed().as_secs();
            let answered = answer(&mut shared.lock().unwrap(), method, &body, at);
            async move { Some(answered) }
        });
        let (reflectors, writer) = Reflectors::holding(client.clone());
        let (leading, leadership) = watch::channel(false);
        let scope = Scope::Namespace("n".into());
        let report_writer = PolicyReportWriter::new(
            client,
            scope,
            Flavor::OpenReports,
            reflectors,
            Leadership::Elected(leadership),
        );
        tokio::spawn(report_writer.run());
        let mut run = Run {
            server,
            controls: writer,
            leading,
            started,
        };
        run.set_controls(controls);
        run
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_leader_writes_and_only_what_changed() {
        let mut run = start(&[control("a", "1")]);
        tokio::time::sleep(10 * S).await;
        assert_eq!(run.requests(), [], "not leading: nothing read or written");
        run.leading.send_replace(true);
        tokio::time::sleep(S).await;
        assert_eq!(run.requests(), [(Method::GET, 10), (Method::POST, 10)]);
        // A minute of sweeps with nothing changed: nothing written.
        tokio::time::sleep(60 * S).await;
        assert_eq!(run.writes(), [10]);
        // A control written again with the same result: its report is the same, not written.
        run.set_controls(&[control("a", "2")]);
        tokio::time::sleep(4 * S).await;
        assert_eq!(run.writes(), [10]);
        // Then a control comes: written within a sweep, which shows the sweeps went on.
        run.set_controls(&[control("a", "2"), control("b", "1")]);
        let changed_at = run.seconds();
        tokio::time::sleep(2 * S).await;
        let writes = run.writes();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(
            writes[1] - changed_at <= 2,
            "written {writes:?} after {changed_at}"
        );
        // Leadership lost: nothing more, even when a control changes.
        run.leading.send_replace(false);
        tokio::time::sleep(S).await;
        run.set_controls(&[control("a", "3")]);
        tokio::time::sleep(30 * S).await;
        assert_eq!(run.writes().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_reads_the_report_again_and_a_failure_waits_retry_after() {
        let mut run = start(&[control("a", "1")]);
        run.leading.send_replace(true);
        tokio::time::sleep(S).await;
        assert_eq!(run.writes(), [0]);
        // Two conflicts, then the write goes through, all in one sweep: each conflict reads
        // the report again (GET) before the next conditioned write.
        run.server.lock().unwrap().failing = vec![409, 409];
        run.set_controls(&[control("a", "1"), control("b", "1")]);
        tokio::time::sleep(2 * S).await;
        let methods: Vec<Method> = run.requests().into_iter().skip(2).map(|(m, _)| m).collect();
        use Method as M;
        assert_eq!(methods, [M::PATCH, M::GET, M::PATCH, M::GET, M::PATCH]);
        // A write that fails otherwise is tried again RETRY_AFTER later, not every sweep.
        run.server.lock().unwrap().failing = vec![500];
        run.set_controls(&[control("a", "1")]);
        let changed_at = run.seconds();
        tokio::time::sleep(RETRY_AFTER + 4 * S).await;
        let writes: Vec<u64> = run
            .writes()
            .into_iter()
            .filter(|at| *at >= changed_at)
            .collect();
        assert_eq!(
            writes.len(),
            2,
            "the failed write and its retry: {writes:?}"
        );
        let waited = writes[1] - writes[0];
        assert!(
            (RETRY_AFTER.as_secs()..=RETRY_AFTER.as_secs() + 2).contains(&waited),
            "retried {waited} s later"
        );
    }
}

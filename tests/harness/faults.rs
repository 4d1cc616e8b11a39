//! Fault injection and request accounting. A middleware consults the switches before every
//! request and records every answer, so tests can break the API server the ways a real one
//! breaks (unavailable, erroring, slow, restarting, compacted) and count the calls made.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::status::ApiError;
use super::store::Store;

/// One request served, as seen by the middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: Method,
    pub path: String,
    /// The raw query string, empty when there was none.
    pub query: String,
    /// The response code (for a watch, the code the stream started with).
    pub code: u16,
}

impl RequestRecord {
    /// POST, PUT, PATCH or DELETE: the calls that change state.
    pub fn is_write(&self) -> bool {
        matches!(
            self.method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        )
    }

    pub fn is_watch(&self) -> bool {
        self.query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1")
    }
}

/// An armed `fail_next`.
struct FailRule {
    remaining: usize,
    method: Option<Method>,
    path_contains: String,
    code: u16,
}

/// Where an armed delay holds a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DelayAt {
    /// Before the request is handled: nothing happens until the delay is over (a slow or
    /// overloaded server).
    Request,
    /// After it was handled: the change is made at once, the answer comes late (a slow
    /// network, or a client that gives up just before the answer).
    Answer,
}

/// An armed `delay_next_request` or `delay_next_answer`.
struct DelayRule {
    remaining: usize,
    method: Option<Method>,
    path_contains: String,
    delay: Duration,
    at: DelayAt,
}

#[derive(Default)]
struct Switches {
    unavailable: bool,
    latency: Duration,
    rules: Vec<FailRule>,
    delays: Vec<DelayRule>,
}

/// The fault switches of one [`ApiServer`](super::ApiServer).
pub struct Faults {
    switches: Mutex<Switches>,
    requests: Mutex<Vec<RequestRecord>>,
    /// Bumped to end every open watch stream; each watch holds a receiver.
    watch_generation: watch::Sender<u64>,
    store: Arc<Store>,
}

impl Faults {
    pub(super) fn new(store: Arc<Store>) -> Self {
        Self {
            switches: Mutex::default(),
            requests: Mutex::default(),
            watch_generation: watch::Sender::new(0),
            store,
        }
    }

    /// While on, every request gets a 503 `ServiceUnavailable` Status; turning it on also ends
    /// every open watch. Note that kube's default client retries 503s with backoff by itself.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.switches().unavailable = unavailable;
        if unavailable {
            self.drop_watches();
        }
    }

    /// The next `n` requests with `method` (any method when None) whose path and query contain
    /// `path_contains` get an error Status with `code` (and the usual reason for that code).
    pub fn fail_next(&self, n: usize, method: Option<Method>, path_contains: &str, code: u16) {
        if n == 0 {
            return;
        }
        self.switches().rules.push(FailRule {
            remaining: n,
            method,
            path_contains: path_contains.to_string(),
            code,
        });
    }

    /// Delay added before answering every request.
    pub fn set_latency(&self, latency: Duration) {
        self.switches().latency = latency;
    }

    /// The next `n` requests with `method` (any method when None) whose path and query contain
    /// `path_contains` are held for `delay` before they are handled: nothing happens until then
    /// (a slow or overloaded server). Unlike [`Self::set_latency`], other requests are not slowed.
    pub fn delay_next_request(
        &self,
        n: usize,
        method: Option<Method>,
        path_contains: &str,
        delay: Duration,
    ) {
        self.delay_next(n, method, path_contains, delay, DelayAt::Request);
    }

    /// As [`Self::delay_next_request`], but the request is handled at once and its answer held:
    /// a write is made, and the client learns of it only after `delay` (a slow network, or a
    /// client that gives up just before the answer comes).
    pub fn delay_next_answer(
        &self,
        n: usize,
        method: Option<Method>,
        path_contains: &str,
        delay: Duration,
    ) {
        self.delay_next(n, method, path_contains, delay, DelayAt::Answer);
    }

    fn delay_next(
        &self,
        n: usize,
        method: Option<Method>,
        path_contains: &str,
        delay: Duration,
        at: DelayAt,
    ) {
        if n == 0 {
            return;
        }
        self.switches().delays.push(DelayRule {
            remaining: n,
            method,
            path_contains: path_contains.to_string(),
            delay,
            at,
        });
    }

    /// Ends every open watch stream now, cleanly, as an API server restart does; clients
    /// re-watch from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.watch_generation
            .send_modify(|generation| *generation += 1);
    }

    /// Forgets the event history (etcd compaction): a watch from an older resourceVersion
    /// gets 410 Gone.
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Turns every switch off and disarms pending `fail_next` and delay rules.
    pub fn clear(&self) {
        *self.switches() = Switches::default();
    }

    /// Every request answered so far (since the last `reset_requests`), in order of answer.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log().clone()
    }

    pub fn reset_requests(&self) {
        self.log().clear();
    }

    /// A receiver that sees a change when open watches must end.
    pub(super) fn watch_ender(&self) -> watch::Receiver<u64> {
        self.watch_generation.subscribe()
    }

    fn switches(&self) -> MutexGuard<'_, Switches> {
        self.switches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The delay an armed delay rule gives this request, if one matches (consuming it).
    fn injected_delay(&self, method: &Method, path_and_query: &str) -> Option<(Duration, DelayAt)> {
        let mut switches = self.switches();
        let index = switches.delays.iter().position(|rule| {
            rule.method.as_ref().is_none_or(|m| m == method)
                && path_and_query.contains(&rule.path_contains)
        })?;
        let rule = &mut switches.delays[index];
        let delay = (rule.delay, rule.at);
        rule.remaining -= 1;
        if rule.remaining == 0 {
            switches.delays.remove(index);
        }
        Some(delay)
    }

    /// The error to answer instead of serving the request, if a switch says so.
    fn injected_failure(&self, method: &Method, path_and_query: &str) -> Option<ApiError> {
        let mut switches = self.switches();
        if switches.unavailable {
            return Some(ApiError::for_code(
                503,
                "the server is currently unable to handle the request",
            ));
        }
        let index = switches.rules.iter().position(|rule| {
            rule.method.as_ref().is_none_or(|m| m == method)
                && path_and_query.contains(&rule.path_contains)
        })?;
        let rule = &mut switches.rules[index];
        let code = rule.code;
        rule.remaining -= 1;
        if rule.remaining == 0 {
            switches.rules.remove(index);
        }
        Some(ApiError::for_code(
            code,
            format!("injected failure ({code})"),
        ))
    }
}

/// The middleware: latency, then an injected failure or the real handler, then the record.
pub async fn inject(State(faults): State<Arc<Faults>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let latency = faults.switches().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_else(|| uri.path());
    let delay = faults.injected_delay(&method, path_and_query);
    if let Some((delay, DelayAt::Request)) = delay {
        tokio::time::sleep(delay).await;
    }
    let response = match faults.injected_failure(&method, path_and_query) {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    };
    if let Some((delay, DelayAt::Answer)) = delay {
        tokio::time::sleep(delay).await;
    }
    faults.log().push(RequestRecord {
        method,
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        code: response.status().as_u16(),
    });
    response
}

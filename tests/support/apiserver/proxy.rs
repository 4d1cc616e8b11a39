//! A fault-injecting HTTP proxy between `extctl` (or kubectl) and the genuine kube-apiserver.
//! The server is never imitated: every request is forwarded to it, and [`Faults`] only changes
//! what the client sees the ways a real server and network break: unavailable (503), a refused
//! request with an error `Status` of the real server's shape, latency, an answer held after the
//! change was made, watches ending (a restart) and a resumed watch expired (410 Gone, as an
//! ERROR event, the way the real server reports a compacted resourceVersion). It also counts
//! the requests, so tests can say how many writes a reset took or how often a Secret was read.
//!
//! Clients speak plain HTTP to the proxy (on 127.0.0.1) and the proxy speaks TLS to the server,
//! passing the client's `Authorization` through: the server authenticates and authorises every
//! request as if it came directly.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;

use super::server::Server;

/// One request answered through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: Method,
    pub path: String,
    /// The raw query string, empty when there was none.
    pub query: String,
    /// The answer's code (for a watch, the code its stream started with).
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
        is_watch(&self.query)
    }
}

fn is_watch(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
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
    /// Before it is forwarded: nothing happens until the delay is over (a slow server).
    Request,
    /// After the server answered: the change is made at once, the client learns of it late.
    Answer,
}

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
    /// Since the last `compact`: the collection paths listed again (watches resumed on
    /// others get 410 Gone). None: no compaction pending.
    relisted_since_compaction: Option<HashSet<String>>,
}

/// The fault switches and request log of one [`Proxy`].
pub struct Faults {
    switches: Mutex<Switches>,
    requests: Mutex<Vec<RequestRecord>>,
    /// Requests received and not yet answered (logged): a request the server has already
    /// applied may still be on its way back through the proxy.
    in_flight: watch::Sender<usize>,
    /// Bumped to end every open watch stream; each stream holds a receiver.
    watch_generation: watch::Sender<u64>,
}

impl Faults {
    fn new() -> Self {
        Self {
            switches: Mutex::default(),
            requests: Mutex::default(),
            in_flight: watch::Sender::new(0),
            watch_generation: watch::Sender::new(0),
        }
    }

    /// While on, every request gets a 503 `ServiceUnavailable` Status and is not forwarded;
    /// turning it on also ends every open watch. kube's default client retries 503s itself.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.switches().unavailable = unavailable;
        if unavailable {
            self.drop_watches();
        }
    }

    /// The next `n` requests with `method` (any when None) whose path and query contain
    /// `path_contains` get an error Status with `code` instead of reaching the server.
    pub fn fail_next(&self, n: usize, method: Option<Method>, path_contains: &str, code: u16) {
        if n > 0 {
            self.switches().rules.push(FailRule {
                remaining: n,
                method,
                path_contains: path_contains.to_owned(),
                code,
            });
        }
    }

    /// Delay added before forwarding every request.
    pub fn set_latency(&self, latency: Duration) {
        self.switches().latency = latency;
    }

    /// The next `n` matching requests are held for `delay` before they are forwarded.
    pub fn delay_next_request(
        &self,
        n: usize,
        method: Option<Method>,
        path_contains: &str,
        delay: Duration,
    ) {
        self.delay_next(n, method, path_contains, delay, DelayAt::Request);
    }

    /// The next `n` matching requests are forwarded at once and their answers held for
    /// `delay`: the change is made, and the client learns of it only later.
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
        if n > 0 {
            self.switches().delays.push(DelayRule {
                remaining: n,
                method,
                path_contains: path_contains.to_owned(),
                delay,
                at,
            });
        }
    }

    /// Ends every open watch stream now, as a server restart does; clients resume from their
    /// last resourceVersion.
    pub fn drop_watches(&self) {
        self.watch_generation.send_modify(|g| *g += 1);
    }

    /// As if etcd had compacted its history: open watches end, and a watch resumed from a
    /// resourceVersion gets 410 Gone (an ERROR event with an `Expired` Status, as the real
    /// server sends) until its collection is listed again.
    pub fn compact(&self) {
        self.switches().relisted_since_compaction = Some(HashSet::new());
        self.drop_watches();
    }

    /// Turns every switch off and disarms pending rules.
    pub fn clear(&self) {
        *self.switches() = Switches::default();
    }

    /// Every request answered so far (since the last `reset_requests`), in order of answer.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log().clone()
    }

    /// Every request answered so far, once every request received before this call has
    /// been answered (a write the server has applied is then in the log; a watch counts as
    /// answered when its stream starts). Gives up waiting after 30 s.
    pub async fn answered_requests(&self) -> Vec<RequestRecord> {
        let mut in_flight = self.in_flight.subscribe();
        let settled = in_flight.wait_for(|n| *n == 0);
        let _ = tokio::time::timeout(Duration::from_secs(30), settled).await;
        self.requests()
    }

    pub fn reset_requests(&self) {
        self.log().clear();
    }

    fn switches(&self) -> MutexGuard<'_, Switches> {
        self.switches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The delay an armed rule gives this request, if one matches (consuming it).
    fn injected_delay(&self, method: &Method, target: &str) -> Option<(Duration, DelayAt)> {
        let mut switches = self.switches();
        let index = switches.delays.iter().position(|rule| {
            rule.method.as_ref().is_none_or(|m| m == method) && target.contains(&rule.path_contains)
        })?;
        let rule = &mut switches.delays[index];
        let delay = (rule.delay, rule.at);
        rule.remaining -= 1;
        if rule.remaining == 0 {
            switches.delays.remove(index);
        }
        Some(delay)
    }

    /// The error code to answer instead of forwarding, if a switch says so.
    fn injected_failure(&self, method: &Method, target: &str) -> Option<u16> {
        let mut switches = self.switches();
        if switches.unavailable {
            return Some(503);
        }
        let index = switches.rules.iter().position(|rule| {
            rule.method.as_ref().is_none_or(|m| m == method) && target.contains(&rule.path_contains)
        })?;
        let rule = &mut switches.rules[index];
        let code = rule.code;
        rule.remaining -= 1;
        if rule.remaining == 0 {
            switches.rules.remove(index);
        }
        Some(code)
    }

    /// Whether this watch must be told its resourceVersion expired; a list clears its path.
    fn expired(&self, method: &Method, path: &str, query: &str) -> bool {
        let mut switches = self.switches();
        let Some(relisted) = switches.relisted_since_compaction.as_mut() else {
            return false;
        };
        if method != Method::GET {
            return false;
        }
        if !is_watch(query) {
            relisted.insert(path.to_owned());
            return false;
        }
        let resumed = query.split('&').any(|p| {
            p.strip_prefix("resourceVersion=")
                .is_some_and(|v| !v.is_empty() && v != "0")
        });
        resumed && !relisted.contains(path)
    }
}

/// A running proxy; it stops when dropped (its task ends with the test's runtime).
pub struct Proxy {
    address: SocketAddr,
    faults: Arc<Faults>,
}

struct Upstream {
    base: String,
    http: reqwest::Client,
    faults: Arc<Faults>,
}

impl Proxy {
    /// Starts a proxy to `server` on 127.0.0.1 in the current runtime.
    pub async fn start(server: &Server) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(server.ca_pem.as_bytes()).expect("the CA");
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            .build()
            .expect("the proxy's client");
        let faults = Arc::new(Faults::new());
        let upstream = Arc::new(Upstream {
            base: server.url.clone(),
            http,
            faults: faults.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let app = Router::new().fallback(forward).with_state(upstream);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { address, faults }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Every request answered so far (since the last [`Self::reset_requests`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.faults.requests()
    }

    /// See [`Faults::answered_requests`].
    pub async fn answered_requests(&self) -> Vec<RequestRecord> {
        self.faults.answered_requests().await
    }

    pub fn reset_requests(&self) {
        self.faults.reset_requests();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.faults.drop_watches();
    }
}

/// Hop-by-hop headers, which a proxy must not pass on (RFC 9110, 7.6.1), and `Host`.
const NOT_FORWARDED: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

async fn forward(State(upstream): State<Arc<Upstream>>, request: Request) -> Response {
    let faults = &upstream.faults;
    let _in_flight = InFlight::enter(faults);
    let method = request.method().clone();
    let uri = request.uri().clone();
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or_default().to_owned();
    let target = uri.path_and_query().map_or(path.clone(), |p| p.to_string());

    let latency = faults.switches().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let delay = faults.injected_delay(&method, &target);
    if let Some((delay, DelayAt::Request)) = delay {
        tokio::time::sleep(delay).await;
    }
    let response = if let Some(code) = faults.injected_failure(&method, &target) {
        injected_error(code, &path)
    } else if faults.expired(&method, &path, &query) {
        let auth = request.headers().get("authorization").cloned();
        let current = current_version(&upstream, auth, &path).await;
        expired_watch(&query, current.as_deref().unwrap_or("0"))
    } else {
        match send(&upstream, request, &target).await {
            Ok(response) => response,
            Err(error) => status_error(502, format!("proxy: {error}")),
        }
    };
    if let Some((delay, DelayAt::Answer)) = delay {
        tokio::time::sleep(delay).await;
    }
    faults.log().push(RequestRecord {
        method,
        path,
        query,
        code: response.status().as_u16(),
    });
    response
}

/// Counts a request in flight until it is answered or dropped (its client went away).
struct InFlight<'a>(&'a Faults);

impl<'a> InFlight<'a> {
    fn enter(faults: &'a Faults) -> Self {
        faults.in_flight.send_modify(|n| *n += 1);
        Self(faults)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

/// Forwards `request` to the server; the answer's body is streamed (watches never end by
/// themselves), and a watch's stream is cut when the faults say watches end.
async fn send(upstream: &Upstream, request: Request, target: &str) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    let mut outgoing = upstream
        .http
        .request(parts.method.clone(), format!("{}{target}", upstream.base))
        .body(body);
    for (name, value) in &parts.headers {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = outgoing.send().await.map_err(|e| e.to_string())?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !NOT_FORWARDED.contains(&name.as_str())
            && name != HeaderName::from_static("content-length")
        {
            response = response.header(name, value);
        }
    }
    let ended = upstream.faults.watch_generation.subscribe();
    let watching = parts.uri.query().is_some_and(is_watch);
    let chunks =
        futures::stream::unfold((answer, ended), move |(mut answer, mut ended)| async move {
            let chunk = if watching {
                tokio::select! {
                    chunk = answer.chunk() => chunk,
                    _ = ended.changed() => return None,
                }
            } else {
                answer.chunk().await
            };
            match chunk {
                Ok(Some(bytes)) => Some((Ok::<Bytes, reqwest::Error>(bytes), (answer, ended))),
                Ok(None) => None,
                Err(error) => Some((Err(error), (answer, ended))),
            }
        });
    response
        .body(Body::from_stream(chunks))
        .map_err(|e| e.to_string())
}

/// An error `Status` with the reason the real server gives `code`.
fn status_error(code: u16, message: String) -> Response {
    status_response(code, message, None)
}

fn status_response(code: u16, message: String, details: Option<serde_json::Value>) -> Response {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Gone",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    };
    let mut status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    let code = StatusCode::from_u16(code).expect("a valid code");
    let mut response = (code, axum::Json(status)).into_response();
    if code == StatusCode::TOO_MANY_REQUESTS || code == StatusCode::SERVICE_UNAVAILABLE {
        // What the real server sends with both (APF and unavailability).
        response
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    response
}

/// An injected refusal. A conflict on an object is worded as kube-apiserver words it, with its
/// `details` (recorded: `tests/fixtures/kube-apiserver/v1.36/05-status-stale-rv.json`,
/// compared by `tests/proxy.rs`). No fixture records the server's own 500, 503, 429 or an
/// injected 422 for these paths: those keep the real reason for their code and say plainly
/// that they were injected (extctl reads only the code, and passes the message on).
fn injected_error(code: u16, path: &str) -> Response {
    match (code, object_of(path)) {
        (409, Some((group, plural, name))) => {
            let resource = if group.is_empty() {
                plural.to_owned()
            } else {
                format!("{plural}.{group}")
            };
            let message = format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            );
            let details = json!({"name": name, "group": group, "kind": plural});
            status_response(code, message, Some(details))
        }
        _ => status_error(code, format!("injected failure ({code})")),
    }
}

/// `(group, plural, name)` of an object path (`/api/v1/namespaces/NS/PLURAL/NAME[/SUB]` or
/// `/apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME[/SUB]`).
fn object_of(path: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", _, "namespaces", _, plural, name, ..] => Some(("", plural, name)),
        ["apis", group, _, "namespaces", _, plural, name, ..] => Some((group, plural, name)),
        _ => None,
    }
}

/// The collection's current resourceVersion, asked of the server with the client's own
/// credentials (for the message of an expired watch).
async fn current_version(
    upstream: &Upstream,
    auth: Option<axum::http::HeaderValue>,
    path: &str,
) -> Option<String> {
    let mut asking = upstream
        .http
        .get(format!("{}{path}?limit=1", upstream.base));
    if let Some(auth) = auth {
        asking = asking.header("authorization", auth);
    }
    let list: serde_json::Value = asking.send().await.ok()?.json().await.ok()?;
    list["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned)
}

/// What the server streams to a watch whose resourceVersion was compacted away (recorded:
/// `tests/fixtures/kube-apiserver/v1.36/15-list-watch.json`, compared by `tests/proxy.rs`):
/// one ERROR event, then the end of the stream.
fn expired_watch(query: &str, current: &str) -> Response {
    let requested = query
        .split('&')
        .find_map(|p| p.strip_prefix("resourceVersion="))
        .unwrap_or_default();
    let event = json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {requested} ({current})"),
            "reason": "Expired", "code": 410,
        }
    });
    let body = format!("{event}\n");
    ([("content-type", "application/json")], body).into_response()
}

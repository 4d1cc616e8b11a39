//! WATCH: a chunked HTTP response of JSON lines, one `{"type", "object"}` event per line, as
//! kube-rs reads it. The stream starts with the events the client has not seen (the current
//! objects, or the history after its resourceVersion), then follows live writes.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, Interval};

use super::faults::Faults;
use super::resources::ResourceType;
use super::selectors::Selectors;
use super::status::ApiError;
use super::store::{Event, EventType, Store};
use super::verbs::{Target, present};

/// How often a watch that allows bookmarks gets one. Real servers send one about every minute;
/// tests want resourceVersions to advance quickly.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a GET on a collection is a watch.
pub fn is_watch(query: &HashMap<String, String>) -> bool {
    matches!(query.get("watch").map(String::as_str), Some("true" | "1"))
}

/// The query parameters of a watch.
struct WatchParams {
    /// None (`resourceVersion` unset, empty or "0"): start with the current objects.
    since: Option<u64>,
    bookmarks: bool,
    /// `sendInitialEvents=true` (streaming lists): mark the end of the initial objects with a
    /// bookmark annotated `k8s.io/initial-events-end`.
    initial_events_end: bool,
    timeout: Option<Duration>,
}

impl WatchParams {
    fn from_query(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let initial_events_end = query.get("sendInitialEvents").is_some_and(|v| v == "true");
        let since =
            match query.get("resourceVersion").map(String::as_str) {
                _ if initial_events_end => None,
                None | Some("" | "0") => None,
                Some(rv) => Some(rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {rv:?}"))
                })?),
            };
        let timeout = match query.get("timeoutSeconds") {
            Some(t) => {
                Some(Duration::from_secs(t.parse().map_err(|_| {
                    ApiError::bad_request("invalid timeoutSeconds")
                })?))
            }
            None => None,
        };
        Ok(Self {
            since,
            bookmarks: query
                .get("allowWatchBookmarks")
                .is_some_and(|v| v == "true"),
            initial_events_end,
            timeout,
        })
    }
}

/// Starts a watch of `target`'s collection. A resourceVersion older than the kept history
/// gets, like on the real server, a 200 whose only event is an ERROR carrying a 410 Status.
pub fn serve(
    store: &Store,
    faults: &Faults,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let params = WatchParams::from_query(query)?;
    let scope = Scope {
        rt: target.rt.clone(),
        namespace: target.namespace.clone(),
        selectors: Selectors::from_query(&target.rt, query)?,
    };
    let ender = faults.watch_ender();
    let subscription = match store.subscribe(&target.rt.storage(), params.since) {
        Ok(subscription) => subscription,
        Err(gone) => {
            let line = to_line(&json!({"type": "ERROR", "object": gone.to_status()}));
            return Ok(stream_response(stream::once(async { Ok(line) })));
        }
    };
    let session = WatchSession {
        scope,
        backlog: subscription.backlog.into(),
        live: subscription.live,
        ender,
        deadline: params.timeout.map(|t| Instant::now() + t),
        bookmarks: params.bookmarks.then(|| {
            tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL)
        }),
        rv: subscription.rv,
        initial_events_end: params.initial_events_end,
    };
    let lines = stream::unfold(session, |mut session| async move {
        let line = session.next_line().await?;
        Some((Ok(line), session))
    });
    Ok(stream_response(lines))
}

fn stream_response(
    lines: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response {
    (
        [(CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// What one watch selects: a resource type, a namespace (or all), label and field selectors.
struct Scope {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    selectors: Selectors,
}

impl Scope {
    fn selects(&self, obj: &Value) -> bool {
        let in_namespace = self
            .namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns));
        in_namespace && self.selectors.matches(obj)
    }

    /// The line this watch sends for `event`, if any. As on the real server, a change that
    /// moves an object into the selection is ADDED and one that moves it out is DELETED
    /// (carrying the previous object at the new resourceVersion).
    fn render(&self, event: &Event) -> Option<Bytes> {
        if event.resource != self.rt.storage() {
            return None;
        }
        let now_in = self.selects(&event.object);
        let was_in = event.previous.as_ref().is_some_and(|p| self.selects(p));
        let (kind, object) = match (event.kind, was_in, now_in) {
            (EventType::Added, _, true) => ("ADDED", event.object.clone()),
            (EventType::Deleted, _, true) => ("DELETED", event.object.clone()),
            (EventType::Modified, true, true) => ("MODIFIED", event.object.clone()),
            (EventType::Modified, false, true) => ("ADDED", event.object.clone()),
            (EventType::Modified, true, false) => {
                let mut previous = event
                    .previous
                    .clone()
                    .expect("was_in implies a previous object");
                previous["metadata"]["resourceVersion"] = json!(event.rv.to_string());
                ("DELETED", previous)
            }
            _ => return None,
        };
        Some(to_line(
            &json!({"type": kind, "object": present(&self.rt, object)}),
        ))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"apiVersion": self.rt.api_version(), "kind": self.rt.kind, "metadata": metadata});
        to_line(&json!({"type": "BOOKMARK", "object": object}))
    }
}

/// The state of one open watch stream.
struct WatchSession {
    scope: Scope,
    backlog: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
    /// Changes when the harness ends all watches (`drop_watches`, unavailability).
    ender: watch::Receiver<u64>,
    deadline: Option<Instant>,
    bookmarks: Option<Interval>,
    /// The resourceVersion the client is up to date with: every event up to it was sent or
    /// filtered out. Bookmarks carry it.
    rv: u64,
    /// A streaming-list end marker still to send after the backlog.
    initial_events_end: bool,
}

impl WatchSession {
    /// The next line to send; None ends the stream cleanly (the client then re-watches).
    async fn next_line(&mut self) -> Option<Bytes> {
        while let Some(event) = self.backlog.pop_front() {
            if let Some(line) = self.scope.render(&event) {
                return Some(line);
            }
        }
        if std::mem::take(&mut self.initial_events_end) {
            return Some(self.scope.bookmark(self.rv, true));
        }
        loop {
            tokio::select! {
                biased;
                _ = self.ender.changed() => return None,
                () = sleep_until(self.deadline) => return None,
                () = tick(&mut self.bookmarks) => return Some(self.scope.bookmark(self.rv, false)),
                received = self.live.recv() => {
                    // Lagging behind (or the store going away) ends the stream: the client
                    // resumes from its last resourceVersion instead of blocking writers.
                    let event = received.ok()?;
                    // An event committed after the watches were told to end must not slip
                    // through, so that `drop_watches` followed by a write is deterministic.
                    if self.ender.has_changed().unwrap_or(true) {
                        return None;
                    }
                    self.rv = event.rv;
                    if let Some(line) = self.scope.render(&event) {
                        return Some(line);
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn to_line(value: &Value) -> Bytes {
    let mut line = serde_json::to_vec(value).expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

//! Ping at scale, where every reset is a real change: N controls (default 1,000), one
//! `extctl run --namespace` (release build) against a genuine kube-apiserver and etcd
//! (`tests/support/apiserver/`, started by this process).
//!
//!     cargo bench --bench ping_scale                          # steady state: 1,000 controls, 60 s
//!     EXTCTL_BENCH_BURST=1 cargo bench --bench ping_scale     # burst: all due at one instant, 30 s
//!     EXTCTL_BENCH_CONTROLS=3000 EXTCTL_BENCH_INTERVAL=120 cargo bench --bench ping_scale
//!
//! `EXTCTL_BENCH_CONTROLS` (1,000) and `EXTCTL_BENCH_INTERVAL` (seconds: 60, or 30 in burst
//! mode) set the scale; `EXTCTL_BENCH_ARGS` adds flags to `extctl run` (such as
//! `--reconcile-concurrency 16`). Each reset is four writes on the server (this process's
//! `pass` report among them), and a genuine kube-apiserver with etcd on the 2-core development
//! machine sustains a few hundred writes/s, so 10,000 controls a minute (the default on the
//! earlier in-process imitation of the server) would measure the server, not extctl. extctl
//! talks to the server through the fault-free proxy of `tests/support/apiserver/proxy.rs` in
//! this process, which counts its requests; this process creates the controls, watches them
//! and reports `pass` straight to the server.
//!
//! Every control has an `externalUrl` (a receiver in this process that answers 200 and keeps
//! each ping), a `pendingTimeout` that cannot fire during the run, and a `pass` reported before
//! each of its resets falls due: this process acts as the checkers, and whenever it sees a
//! control `pending` with its next reset due before the end of the measuring window, it stores
//! `pass` with a status merge patch, as a checker's call lands. So each reset measured is the
//! expensive kind: status write, `PingReset` Event, ping, and the ping's outcome in `lastPing`.
//!
//! - Steady state (default): controls are created evenly over one interval, as schedules
//!   anchored at creation spread in a cluster. A first reset falls one interval after creation
//!   plus an offset fixed per control of less than one more interval (`extctl_core::schedule`), so
//!   first resets spread over less than two intervals; the window is the one interval that
//!   ends just after the last first reset, which holds exactly one due time of every control
//!   (its first, or its second).
//! - Burst (`EXTCTL_BENCH_BURST=1`): every control created as fast as possible, and right after
//!   its creation given `pass` and a `nextPingTime` a day ahead with a status merge patch (so
//!   the spread first resets of the schedule never come); once all exist, each gets the same
//!   `nextPingTime`, one instant a few seconds ahead, with another status patch (the schedule
//!   keeps a stored due time whose `pingInterval` is the spec's). So every control falls due
//!   at that instant, not spread; the window is the one interval from it.
//!
//! For the resets due in the window, it prints: resets per second as seen (first to last, not
//! the configured rate); how many controls reset exactly once, not at all, more than once (each
//! must reset exactly once, from `pass`, never before its due time, else the bench exits 1); API
//! writes per reset, counting every write extctl sent during the window (through the proxy),
//! by kind; pings received per reset; the lateness; the operator's peak RSS (`VmHWM`), also per
//! control; and the CPU extctl, the server (kube-apiserver and etcd) and this process used.
//!
//! Lateness runs from the persisted due time (the `nextPingTime` seen before the reset) to the
//! moment this process sees the reset through its own watch, so it over-states the real
//! lateness by the server's answer and the watch's delivery (and by this process's own delays:
//! the proxy, the receiver and the watch share its two worker threads). It is also printed to
//! the `lastPingTime` extctl stored, which under-states it by the duration of the write.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use extctl_core::crd::{ControlStatus, ExternalControl};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use support::apiserver::RequestRecord;
use support::{
    Cluster, NAMESPACE, Operator, Proxy, cpu_time, cpu_time_of, create_secret, setting, sleep_until,
};

/// The fieldManager of this process's `pass` reports (which go straight to the server, never
/// through the proxy that counts extctl's requests; filtered out there all the same).
const CHECKER: &str = "extctl-bench-checker";

struct Settings {
    controls: u64,
    interval: Duration,
    burst: bool,
}

impl Settings {
    fn from_env() -> Self {
        let burst = setting("EXTCTL_BENCH_BURST", 0) == 1;
        let interval = setting("EXTCTL_BENCH_INTERVAL", if burst { 30 } else { 60 });
        Self {
            controls: setting("EXTCTL_BENCH_CONTROLS", 1_000),
            interval: Duration::from_secs(interval),
            burst,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::from_env();
    let cluster = Cluster::start().await;
    let server_pids = cluster.server_pids();
    let receiver = Receiver::start().await;
    create_secret(
        &cluster.client,
        NAMESPACE,
        "token",
        [("token", b"t".to_vec())],
    )
    .await;
    let proxy = Proxy::start(cluster.server).await;
    let kubeconfig = cluster.kubeconfig(&proxy.url(), "kubeconfig");
    let operator = Operator::start(&kubeconfig, &["--namespace", NAMESPACE]).await;
    let idle_rss = operator.memory_kib("VmRSS");

    let api: Api<ExternalControl> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let observed = observe(api.clone());
    let creation = create_controls(&api, &settings, &receiver.url).await;
    let window = match settings.burst {
        true => burst_window(&api, &observed, &settings, creation).await,
        false => measuring_window(&observed, &settings).await,
    };
    sleep_until(window.start).await;
    proxy.reset_requests();
    let cpu_before = (
        operator.cpu_time(),
        cpu_time_of(&server_pids),
        cpu_time(std::process::id()),
    );
    sleep_until(window.end).await;
    let requests = proxy.requests();
    let cpu_used = (
        operator.cpu_time() - cpu_before.0,
        cpu_time_of(&server_pids) - cpu_before.1,
        cpu_time(std::process::id()) - cpu_before.2,
    );
    settle(&observed, window, settings.controls).await;
    let usage = Usage {
        idle_kib: idle_rss,
        peak_kib: operator.memory_kib("VmHWM"),
        extctl_cpu: cpu_used.0,
        server_cpu: cpu_used.1,
        own_cpu: cpu_used.2,
    };

    let observed = lock(&observed);
    let pings = lock(&receiver.pings);
    let fine = report(
        &settings, creation, window, &observed, &pings, &requests, usage,
    );
    if fine {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every ping received: (control, reset time).
type Pings = Arc<Mutex<Vec<(String, Timestamp)>>>;

/// The checkers' endpoint: answers every ping 200 and keeps which control and reset it was for.
struct Receiver {
    url: String,
    pings: Pings,
}

impl Receiver {
    async fn start() -> Self {
        let pings = Pings::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ping", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/ping", post(receive))
            .with_state(Arc::clone(&pings));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, pings }
    }
}

/// One ping: `control.resource` names the control, `time` is its reset (kept to the
/// microsecond, as `lastPingTime` is stored).
async fn receive(State(pings): State<Pings>, Json(body): Json<Value>) -> StatusCode {
    let control = body["control"]["resource"].as_str().unwrap_or_default();
    let time = body["time"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok());
    if let Some(time) = time.and_then(|t| Timestamp::from_microsecond(t.as_microsecond()).ok()) {
        lock(&pings).push((control.to_owned(), time));
    }
    StatusCode::OK
}

/// Creates controls `c0`… evenly over one interval (steady state), or all at once, each held
/// (`pass`, next reset a day ahead) right after its creation (burst); returns how long that
/// took.
async fn create_controls(api: &Api<ExternalControl>, settings: &Settings, url: &str) -> Duration {
    let started = Instant::now();
    let count = u32::try_from(settings.controls).unwrap().max(1);
    let controls = (0..count).map(|i| (format!("c{i}"), spec(i, settings.interval, url)));
    let client = api.clone().into_client();
    if settings.burst {
        let hold = Timestamp::now() + SignedDuration::from_hours(24);
        let hold =
            |name: String| async move { schedule(api, &name, hold, settings.interval).await };
        support::create_controls_then(&client, NAMESPACE, controls, Duration::ZERO, hold).await;
    } else {
        let step = settings.interval / count;
        support::create_controls(&client, controls, step).await;
    }
    started.elapsed()
}

/// Stores `pass` and `due` as the control's next reset (with the spec's interval, which the
/// schedule requires of a stored due time): a status merge patch.
async fn schedule(api: &Api<ExternalControl>, name: &str, due: Timestamp, interval: Duration) {
    let due = Timestamp::from_microsecond(due.as_microsecond()).unwrap();
    let patch = json!({"status": {
        "status": "pass", "lastUpdateTime": MicroTime(Timestamp::now()),
        "nextPingTime": MicroTime(due), "pingInterval": format!("{}s", interval.as_secs()),
    }});
    let params = PatchParams {
        field_manager: Some(CHECKER.into()),
        ..PatchParams::default()
    };
    api.patch_status(name, &params, &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("scheduling {name}: {e}"));
}

/// Burst: every control's next reset set to one instant, far enough ahead for the patches
/// (about as long as the creation took, which was two requests per control), plus 5 s; the
/// window is the one interval from it.
async fn burst_window(
    api: &Api<ExternalControl>,
    observed: &Shared,
    settings: &Settings,
    creation: Duration,
) -> Window {
    let lead = SignedDuration::from_secs(5) + SignedDuration::try_from(creation).unwrap();
    let due = Timestamp::from_microsecond((Timestamp::now() + lead).as_microsecond()).unwrap();
    let window = Window {
        start: due,
        end: due + SignedDuration::try_from(settings.interval).unwrap(),
    };
    lock(observed).window_end = Some(window.end);
    let started = Instant::now();
    futures::stream::iter(0..settings.controls)
        .map(|i| async move { schedule(api, &format!("c{i}"), due, settings.interval).await })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let spare = due.duration_since(Timestamp::now()).as_secs_f64();
    eprintln!(
        "burst: {} controls due at one instant, scheduled in {:.1} s, {spare:.1} s before it",
        settings.controls,
        started.elapsed().as_secs_f64()
    );
    if spare < 0.0 {
        eprintln!("burst: scheduling took longer than planned; some resets fell due during it");
    }
    window
}

fn spec(i: u32, interval: Duration, url: &str) -> Value {
    json!({"projectId": 1, "controlId": i + 1, "pingInterval": format!("{}s", interval.as_secs()),
           "pendingTimeout": "24h", "externalUrl": url, "secretRef": {"name": "token"}})
}

type Shared = Arc<Mutex<Observed>>;

fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the watch has shown so far.
#[derive(Default)]
struct Observed {
    controls: HashMap<String, Seen>,
    resets: Vec<Reset>,
    /// `lastPing` as written: (control, reset time, HTTP status).
    outcomes: Vec<(String, Timestamp, Option<u16>)>,
    /// Controls get `pass` before every reset due before this (before every reset, until set).
    window_end: Option<Timestamp>,
}

/// One control, as last seen.
#[derive(Clone, Default)]
struct Seen {
    status: Option<ControlStatus>,
    next_ping: Option<Timestamp>,
    last_ping: Option<Timestamp>,
    outcome: Option<(Timestamp, Option<u16>)>,
    first_due: Option<Timestamp>,
    /// The due time of the reset the last `pass` was reported for.
    reported_for: Option<Timestamp>,
}

/// A new `lastPingTime`, seen through the watch.
struct Reset {
    control: String,
    /// The `nextPingTime` seen before it.
    due: Timestamp,
    /// The new `lastPingTime`.
    at: Timestamp,
    seen: Timestamp,
    /// Whether the status was `pass` (or `fail`) before: a real change.
    changed: bool,
}

impl Observed {
    /// Takes in a control as delivered at `seen`; its name when its checker should report `pass`.
    fn note(&mut self, control: &ExternalControl, seen: Timestamp) -> Option<String> {
        let name = control.name_any();
        let before = self.controls.remove(&name).unwrap_or_default();
        let status = control.status.clone().unwrap_or_default();
        let next_ping = status.next_ping_time.map(|t| t.0);
        let mut now = Seen {
            status: status.status,
            next_ping,
            last_ping: status.last_ping_time.map(|t| t.0),
            outcome: status.last_ping.map(|o| (o.time.0, o.http_status)),
            first_due: before.first_due.or(next_ping),
            reported_for: before.reported_for,
        };
        if let Some((time, code)) = now.outcome.filter(|_| now.outcome != before.outcome) {
            self.outcomes.push((name.clone(), time, code));
        }
        if let (Some(at), Some(due)) = (now.last_ping, before.next_ping)
            && now.last_ping != before.last_ping
        {
            let changed = before.status != Some(ControlStatus::Pending);
            let control = name.clone();
            self.resets.push(Reset {
                control,
                due,
                at,
                seen,
                changed,
            });
        }
        let report = now.status == Some(ControlStatus::Pending)
            && next_ping.is_some_and(|next| {
                now.reported_for != Some(next) && self.window_end.is_none_or(|end| next < end)
            });
        if report {
            now.reported_for = next_ping;
        }
        self.controls.insert(name.clone(), now);
        report.then_some(name)
    }
}

/// Watches the controls for the whole run, and reports `pass` as their checkers would.
fn observe(api: Api<ExternalControl>) -> Shared {
    let observed = Shared::default();
    let (reports, to_report) = futures::channel::mpsc::unbounded::<String>();
    tokio::spawn(watch_controls(api.clone(), Arc::clone(&observed), reports));
    tokio::spawn(to_report.for_each_concurrent(8, move |name| {
        let api = api.clone();
        async move { report_pass(&api, &name).await }
    }));
    observed
}

/// Follows every change from the start; a watch that ends (the server ends each after a few
/// minutes) or fails is resumed from the last resourceVersion seen, as a client does.
async fn watch_controls(
    api: Api<ExternalControl>,
    observed: Shared,
    reports: futures::channel::mpsc::UnboundedSender<String>,
) {
    let mut version = "0".to_string();
    loop {
        let events = match api.watch(&WatchParams::default(), &version).await {
            Ok(events) => events,
            Err(error) => panic!("the watch cannot start: {error}"),
        };
        let mut events = events.boxed();
        while let Some(event) = events.next().await {
            let control = match event {
                Ok(WatchEvent::Added(control) | WatchEvent::Modified(control)) => control,
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    version = bookmark.metadata.resource_version;
                    continue;
                }
                Ok(WatchEvent::Deleted(_)) => continue,
                Ok(WatchEvent::Error(error)) => panic!("the watch failed: {error:?}"),
                Err(error) => {
                    eprintln!("the watch failed ({error}); resuming");
                    break;
                }
            };
            version = control.resource_version().unwrap_or(version);
            if let Some(name) = lock(&observed).note(&control, Timestamp::now()) {
                let _ = reports.unbounded_send(name);
            }
        }
    }
}

/// A checker's `pass`, landing as its call does: a merge patch of the status subresource.
async fn report_pass(api: &Api<ExternalControl>, name: &str) {
    let patch =
        json!({"status": {"status": "pass", "lastUpdateTime": MicroTime(Timestamp::now())}});
    let params = PatchParams {
        field_manager: Some(CHECKER.into()),
        ..PatchParams::default()
    };
    if let Err(error) = api.patch_status(name, &params, &Patch::Merge(&patch)).await {
        eprintln!("reporting pass for {name} failed: {error}");
    }
}

/// Due times in `[start, end)` are measured.
#[derive(Clone, Copy)]
struct Window {
    start: Timestamp,
    end: Timestamp,
}

impl Window {
    fn holds(&self, at: Timestamp) -> bool {
        self.start <= at && at < self.end
    }
}

/// One interval holding exactly one due time of every control: it ends just after the last
/// first reset, and starts no earlier than the first one (nor than now).
async fn measuring_window(observed: &Shared, settings: &Settings) -> Window {
    let deadline = Instant::now() + settings.interval;
    let dues = loop {
        let dues: Vec<Timestamp> = (lock(observed).controls.values())
            .filter_map(|seen| seen.first_due)
            .collect();
        if dues.len() as u64 >= settings.controls {
            break dues;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} controls were scheduled one interval after creation",
            dues.len(),
            settings.controls
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let interval = SignedDuration::try_from(settings.interval).unwrap();
    let (first, last) = (*dues.iter().min().unwrap(), *dues.iter().max().unwrap());
    let start = (last - interval + SignedDuration::from_micros(1))
        .max(first)
        .max(Timestamp::now());
    let window = Window {
        start,
        end: start + interval,
    };
    lock(observed).window_end = Some(window.end);
    window
}

/// Waits until every control has reset for a due time in the window and each of those resets
/// has its ping's outcome written; at most 30 s after the window.
async fn settle(observed: &Shared, window: Window, controls: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        {
            let observed = lock(observed);
            let resets = resets_in(&observed, window);
            let reset = resets.iter().map(|r| &r.control).collect::<HashSet<_>>();
            let outcomes = matching(&resets, observed.outcomes.iter().map(|(c, t, _)| (c, *t)));
            if reset.len() as u64 == controls && outcomes >= resets.len() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn resets_in(observed: &Observed, window: Window) -> Vec<&Reset> {
    let resets = observed.resets.iter();
    resets.filter(|r| window.holds(r.due)).collect()
}

/// How many of `items` (control, reset time) belong to one of `resets`.
fn matching<'a>(resets: &[&Reset], items: impl Iterator<Item = (&'a String, Timestamp)>) -> usize {
    let keys: HashSet<(&str, Timestamp)> = resets.iter().map(|r| (&*r.control, r.at)).collect();
    items
        .filter(|(c, t)| keys.contains(&(c.as_str(), *t)))
        .count()
}

/// The operator's memory, and the CPU time used during the window.
struct Usage {
    idle_kib: u64,
    peak_kib: u64,
    extctl_cpu: Duration,
    /// kube-apiserver and etcd.
    server_cpu: Duration,
    /// This process: the proxy, the receiver, the watch and the `pass` reports.
    own_cpu: Duration,
}

/// Prints the figures; whether every control reset exactly once, each time from `pass`, and
/// never early.
fn report(
    settings: &Settings,
    creation: Duration,
    window: Window,
    observed: &Observed,
    pings: &[(String, Timestamp)],
    requests: &[RequestRecord],
    usage: Usage,
) -> bool {
    let resets = resets_in(observed, window);
    let mode = match settings.burst {
        true => "burst (created at once, all due at one instant)",
        false => "steady state (created evenly over one interval)",
    };
    println!(
        "\n{mode}: {} controls, interval {} s, created in {:.1} s",
        settings.controls,
        settings.interval.as_secs(),
        creation.as_secs_f64()
    );
    let fine = report_resets(settings.controls, &resets);
    report_pings(&resets, observed, pings);
    report_requests(requests, resets.len());
    report_lateness(&resets);
    report_usage(&usage, settings, window);
    fine
}

fn report_usage(usage: &Usage, settings: &Settings, window: Window) {
    let per_control = |kib: u64| kib as f64 / settings.controls.max(1) as f64;
    println!(
        "operator RSS: idle {:.1} MiB, peak {:.1} MiB (VmHWM): {:.2} KiB per control, {:.2} KiB above idle",
        usage.idle_kib as f64 / 1024.0,
        usage.peak_kib as f64 / 1024.0,
        per_control(usage.peak_kib),
        per_control(usage.peak_kib.saturating_sub(usage.idle_kib)),
    );
    let seconds = window.end.duration_since(window.start).as_secs_f64();
    println!(
        "CPU during the window ({seconds:.0} s, 2 cores shared): extctl {:.1} s, server (kube-apiserver, etcd) {:.1} s, this process (proxy, receiver, watch, pass reports) {:.1} s",
        usage.extctl_cpu.as_secs_f64(),
        usage.server_cpu.as_secs_f64(),
        usage.own_cpu.as_secs_f64(),
    );
}

fn report_resets(controls: u64, resets: &[&Reset]) -> bool {
    let seen: Vec<Timestamp> = resets.iter().map(|r| r.seen).collect();
    let span = match (seen.iter().min(), seen.iter().max()) {
        (Some(first), Some(last)) => last.duration_since(*first).as_secs_f64(),
        _ => 0.0,
    };
    println!(
        "resets due in the window: {}, seen at {:.0} resets/s (first to last seen: {span:.1} s)",
        resets.len(),
        resets.len() as f64 / span.max(f64::EPSILON)
    );
    let mut per_control: HashMap<&str, u64> = HashMap::new();
    for reset in resets {
        *per_control.entry(&reset.control).or_default() += 1;
    }
    let once = per_control.values().filter(|n| **n == 1).count() as u64;
    let more = per_control.values().filter(|n| **n > 1).count() as u64;
    let zero = controls.saturating_sub(per_control.len() as u64);
    let unchanged = resets.iter().filter(|r| !r.changed).count();
    let early = resets.iter().filter(|r| r.at < r.due).count();
    println!(
        "controls reset exactly once: {once}, not at all: {zero}, more than once: {more} (of {controls})"
    );
    println!(
        "resets that changed the status to pending: {}; that found it pending: {unchanged}; before their due time: {early}",
        resets.len() - unchanged
    );
    once == controls && unchanged == 0 && early == 0
}

fn report_pings(resets: &[&Reset], observed: &Observed, pings: &[(String, Timestamp)]) {
    let per_reset = |n: usize| n as f64 / resets.len().max(1) as f64;
    let received = matching(resets, pings.iter().map(|(c, t)| (c, *t)));
    let ok = observed
        .outcomes
        .iter()
        .filter(|(_, _, code)| *code == Some(200));
    let recorded = matching(resets, ok.map(|(c, t, _)| (c, *t)));
    println!(
        "pings received for them: {received} ({:.2} per reset); outcomes written with HTTP 200: {recorded} ({:.2} per reset)",
        per_reset(received),
        per_reset(recorded)
    );
}

/// Every request extctl sent in the window (through the proxy), by kind.
fn report_requests(requests: &[RequestRecord], resets: usize) {
    let extctl = requests.iter().filter(|r| !r.query.contains(CHECKER));
    let mut kinds: BTreeMap<(bool, String), usize> = BTreeMap::new();
    let mut refused: BTreeMap<(String, u16), usize> = BTreeMap::new();
    for request in extctl {
        *kinds
            .entry((!request.is_write(), kind(request)))
            .or_default() += 1;
        if request.is_write() && request.code >= 300 {
            *refused.entry((kind(request), request.code)).or_default() += 1;
        }
    }
    let writes: usize = (kinds.iter())
        .filter(|((read, _), _)| !read)
        .map(|(_, n)| n)
        .sum();
    let per_reset = |n: usize| n as f64 / resets.max(1) as f64;
    let refused_text: Vec<String> = (refused.iter())
        .map(|((kind, code), n)| format!("{n} {kind} {code}"))
        .collect();
    println!(
        "API writes in the window: {writes}, {:.2} per reset (refused: {}); requests by kind:",
        per_reset(writes),
        match refused_text.is_empty() {
            true => "none".to_owned(),
            false => refused_text.join(", "),
        }
    );
    for ((_, kind), n) in &kinds {
        println!("  {kind:<32} {n:>7}  {:.2} per reset", per_reset(*n));
    }
}

/// `METHOD resource[/subresource]`; a GET of a collection is `LIST` or `WATCH`.
fn kind(request: &RequestRecord) -> String {
    let segments: Vec<&str> = request.path.split('/').filter(|s| !s.is_empty()).collect();
    let prefix = if segments.first() == Some(&"api") {
        2
    } else {
        3
    };
    let rest = segments.get(prefix..).unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        _ => rest,
    };
    match (request.method.as_str(), rest) {
        ("GET", [plural]) if request.is_watch() => format!("WATCH {plural}"),
        ("GET", [plural]) => format!("LIST {plural}"),
        (method, [plural, _, sub]) => format!("{method} {plural}/{sub}"),
        (method, [plural, ..]) => format!("{method} {plural}"),
        (method, []) => format!("{method} {}", request.path),
    }
}

/// Lateness two ways: to the moment this process saw the reset (over-states: includes the
/// server's answer and the watch's delivery, and this process's own delays), and to the
/// `lastPingTime` extctl stored (when it carried the reset out; under-states by the write).
fn report_lateness(resets: &[&Reset]) {
    let seen = quantiles(resets.iter().map(|r| r.seen.duration_since(r.due)));
    let stored = quantiles(resets.iter().map(|r| r.at.duration_since(r.due)));
    println!(
        "lateness, due time to seen through the watch (over-states): {seen}\n\
         lateness, due time to the lastPingTime stored (under-states): {stored}"
    );
}

fn quantiles(lateness: impl Iterator<Item = SignedDuration>) -> String {
    let mut ms: Vec<f64> = lateness.map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = (q * ms.len() as f64).ceil() as usize;
        ms.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
    };
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; later than 1 s: {}",
        at(0.5),
        at(0.99),
        at(1.0),
        ms.iter().filter(|l| **l > 1000.0).count()
    )
}

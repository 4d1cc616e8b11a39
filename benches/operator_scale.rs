//! The operator at scale: N controls in one namespace (ping every 12 h, no `externalUrl`), one
//! `extctl run --namespace` (release build) against a genuine kube-apiserver and etcd
//! (`tests/support/apiserver/`, started by this process).
//!
//!     cargo bench --bench operator_scale                                # 10,000 controls
//!     EXTCTL_BENCH_CONTROLS=100000 cargo bench --bench operator_scale
//!
//! It prints, in order:
//! 1. **Idle**: the RSS of an operator serving no control, 10 s after it was ready (the
//!    baseline the per-control figures are counted from).
//! 2. **Start-up**, the N controls created first (as fast as the server takes them, 32 at a
//!    time): time to ready (`/readyz`: every control listed) and until every control is
//!    initialised (`Ready` True, seen by this process's own watch); then, 10 s idle, the RSS
//!    (`VmRSS`) and the peak (`VmHWM`), and the RSS per control above the idle operator; and
//!    the size of a cached control's fields before any of its heap data (`size_of`, the
//!    inline part of the per-control figure).
//! 3. **Where a control's memory goes**, counted by this process's allocator (bytes asked for,
//!    on this thread, not freed) while it builds what the operator keeps per control from
//!    control `c1` as the server sends it (`managedFields` included), N times: the object as
//!    the watch caches it (trimmed, behind its `Arc`; its conditions apart), the reflector
//!    store's key and table, the index, the schedule of wakes. The sum against the per-control
//!    RSS above leaves the allocator's size classes and free space.
//! 4. **Catch-up after downtime**: the operator stopped, every control's next reset set to one
//!    instant in the past (a status merge patch each, 32 at a time: how fast this process gets
//!    status writes through is the server's own status-write capacity, measured in the same
//!    run), the operator started again: how fast it carries out the N overdue resets (each a
//!    status write conditioned on its resourceVersion), against that capacity; and, during the
//!    catch-up, the endpoint's latency for signed status calls (one control, 10 calls a second).
//!
//! Reset lateness at a spread the server can carry is `ping_scale`'s (steady mode).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use extctl::{Project, Schedule, SignedCall};
use extctl_core::crd::{
    ControlStatus, ExternalControl, ExternalControlSpec, ExternalControlStatus,
    keep_what_extctl_reads,
};
use extctl_core::index::{ControlIndex, Entry};
use extctl_core::key::ObjectKey;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use support::{Cluster, NAMESPACE, Operator, create_secret, setting};

#[global_allocator]
static ALLOCATOR: counted::Counting = counted::Counting;

const TOKEN: &[u8] = b"t";
/// How long the operator is left idle before its memory is read.
const IDLE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let controls = setting("EXTCTL_BENCH_CONTROLS", 10_000);
    let cluster = Cluster::start().await;
    create_secret(
        &cluster.client,
        NAMESPACE,
        "token",
        [("token", TOKEN.to_vec())],
    )
    .await;
    let kubeconfig = cluster.kubeconfig(&cluster.server.url, "kubeconfig");
    let args = ["--namespace", NAMESPACE];

    // 1. The idle operator.
    let operator = Operator::start(&kubeconfig, &args).await;
    tokio::time::sleep(IDLE).await;
    let idle_kib = operator.memory_kib("VmRSS");
    operator.stop().await;
    println!("idle operator (no control): RSS {}", mib(idle_kib));

    // 2. Start-up with N controls.
    let api: Api<ExternalControl> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let seen = watch(api.clone());
    let started = Instant::now();
    let specs = (1..=controls).map(|i| {
        let spec = json!({"projectId": 1, "controlId": i, "secretRef": {"name": "token"}});
        (format!("c{i}"), spec)
    });
    support::create_controls(&cluster.client, specs, Duration::ZERO).await;
    println!(
        "{controls} controls created in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let operator = Operator::start(&kubeconfig, &args).await;
    let ready = started.elapsed();
    wait_until(&seen, controls, |state| state.ready).await;
    let initialised = started.elapsed();
    tokio::time::sleep(IDLE).await;
    let (rss, peak) = (operator.memory_kib("VmRSS"), operator.memory_kib("VmHWM"));
    operator.stop().await;
    println!(
        "start-up: ready in {:.1} s, every control initialised in {:.1} s",
        ready.as_secs_f64(),
        initialised.as_secs_f64()
    );
    println!(
        "memory with {controls} controls, {} s idle: RSS {}, peak {}; {} per control above the idle operator",
        IDLE.as_secs(),
        mib(rss),
        mib(peak),
        per_control(rss.saturating_sub(idle_kib), controls)
    );
    println!(
        "a cached control's fields before any heap data: {} bytes (metadata {}, spec {}, status {})",
        size_of::<ExternalControl>(),
        size_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(),
        size_of::<ExternalControlSpec>(),
        size_of::<ExternalControlStatus>()
    );

    // 3. Where a control's memory goes.
    let sample = api.get("c1").await.expect("control c1");
    let parts = account(&sample, controls as usize);
    let sum = parts.object + parts.store + parts.index + parts.schedule;
    println!(
        "per control, counted: object in the cache {:.0} B (its struct {} B, conditions {:.0} B), store key and table {:.0} B, index {:.0} B, schedule {:.0} B: {sum:.0} B of the {:.0} B of RSS",
        parts.object,
        size_of::<ExternalControl>(),
        parts.conditions,
        parts.store,
        parts.index,
        parts.schedule,
        rss.saturating_sub(idle_kib) as f64 * 1024.0 / controls as f64,
    );

    // 4. Catch-up after downtime.
    // To the microsecond, as stored.
    let due = Timestamp::from_microsecond(Timestamp::now().as_microsecond() - 1_000_000).unwrap();
    let started = Instant::now();
    futures::stream::iter(1..=controls)
        .map(|i| overdue(&api, i, due))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let capacity = controls as f64 / started.elapsed().as_secs_f64();
    println!(
        "server status-write capacity: {controls} status patches in {:.1} s, {capacity:.0}/s (32 in flight)",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let operator = Operator::start(&kubeconfig, &args).await;
    let latencies: Latencies = Arc::default();
    let calls = tokio::spawn(status_calls(operator.url.clone(), latencies.clone()));
    // Done when rescheduled past the overdue time: reset, or (control 1, which the status
    // calls keep reporting) skipped because a result was stored after the reset fell due.
    wait_until(&seen, controls, move |state| {
        state.next_ping.is_some_and(|at| at > due)
    })
    .await;
    let caught_up = started.elapsed();
    calls.abort();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    if let Some(last) = latencies.len().checked_sub(1) {
        let at = |q: f64| latencies[(last as f64 * q).round() as usize].as_secs_f64() * 1e3;
        println!(
            "endpoint during the catch-up, {} signed calls: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            latencies.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    let rate = controls as f64 / caught_up.as_secs_f64();
    println!(
        "catch-up: {controls} overdue resets done {:.1} s after start, {rate:.0}/s = {:.2} of the server's capacity; peak RSS {}",
        caught_up.as_secs_f64(),
        rate / capacity,
        mib(operator.memory_kib("VmHWM"))
    );
    operator.stop().await;
}

/// What this process's watch has seen of one control.
#[derive(Debug, Default, Clone, Copy)]
struct State {
    ready: bool,
    next_ping: Option<Timestamp>,
}

type Seen = Arc<Mutex<HashMap<String, State>>>;

/// Watches the controls, keeping what each one's status says.
fn watch(api: Api<ExternalControl>) -> Seen {
    let seen: Seen = Arc::default();
    let shared = seen.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            // The watcher starts again by itself after an error.
            let Ok(control) = event else { continue };
            let status = control.status.as_ref();
            let state = State {
                ready: status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                }),
                next_ping: status.and_then(|s| s.next_ping_time.as_ref()).map(|t| t.0),
            };
            let name = control.metadata.name.clone().unwrap_or_default();
            shared.lock().unwrap().insert(name, state);
        }
    });
    seen
}

/// Waits until `count` controls meet `done` (looked at every 100 ms), for at most 30 minutes.
async fn wait_until(seen: &Seen, count: u64, done: impl Fn(&State) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let met = seen.lock().unwrap().values().filter(|s| done(s)).count() as u64;
        if met >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{met} of {count} within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sets control `i`'s next reset to `due` (with the spec's interval, as the schedule requires
/// of a stored due time).
async fn overdue(api: &Api<ExternalControl>, i: u64, due: Timestamp) {
    let patch = json!({"status": {"nextPingTime": MicroTime(due), "pingInterval": "12h"}});
    api.patch_status(
        &format!("c{i}"),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap_or_else(|e| panic!("scheduling c{i}: {e}"));
}

/// The endpoint's answer times.
type Latencies = Arc<Mutex<Vec<Duration>>>;

/// Signed status calls for control 1, 10 a second, alternating `pass` and `fail`, until
/// aborted; each answer's time is kept in `latencies`.
async fn status_calls(url: reqwest::Url, latencies: Latencies) {
    let http = reqwest::Client::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    // Unique within the run (this process's start time and a count): never a replay.
    let run = Timestamp::now().as_microsecond();
    for n in 0_usize.. {
        ticks.tick().await;
        let status = [ControlStatus::Pass, ControlStatus::Fail][n % 2];
        let (nonce, now) = (format!("{run:016x}{n:016x}"), Timestamp::now().as_second());
        let call = SignedCall::new(TOKEN, &Project::Id(1), 1, status, now.to_string(), nonce);
        let mut request = http
            .patch(url.join(&call.path[1..]).unwrap())
            .header("Content-Type", "application/json")
            .body(call.json_body());
        for (name, value) in call.headers() {
            request = request.header(name, value);
        }
        let sent = Instant::now();
        let answer = request.send().await;
        latencies.lock().unwrap().push(sent.elapsed());
        match answer {
            Ok(answer) if answer.status().is_success() => {}
            Ok(answer) => eprintln!("a status call was answered {}", answer.status()),
            Err(error) => eprintln!("a status call failed: {error}"),
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn per_control(kib: u64, controls: u64) -> String {
    format!("{:.2} KiB", kib as f64 / controls as f64)
}

/// What one control costs in each place the operator keeps it, in bytes (averaged over N).
struct Parts {
    object: f64,
    conditions: f64,
    store: f64,
    index: f64,
    schedule: f64,
}

/// Builds, N times from `sample` (with its own name, uid and id each time, as JSON from the
/// server), what the operator keeps per control, counting each part apart.
fn account(sample: &ExternalControl, n: usize) -> Parts {
    let template = serde_json::to_value(sample).unwrap();
    let sent = |i: usize| {
        let mut control = template.clone();
        control["metadata"]["name"] = json!(format!("c{i}"));
        control["metadata"]["uid"] = json!(format!("{i:08x}-1111-4222-8333-444455556666"));
        control["spec"]["controlId"] = json!(i);
        serde_json::to_vec(&control).unwrap()
    };
    let cached = |raw: &[u8]| {
        let mut control: ExternalControl = serde_json::from_slice(raw).unwrap();
        keep_what_extctl_reads(&mut control);
        control
    };
    let per = |bytes: isize| bytes as f64 / n as f64;

    // The object as the watch caches it: deserialised, trimmed, and (as kube-runtime's store
    // does) cloned behind an `Arc`, so without the slack of the vectors deserialised.
    let mut objects = Vec::with_capacity(n);
    let mut object = 0;
    for i in 1..=n {
        let raw = sent(i);
        object += counted::during(|| objects.push(Arc::new(cached(&raw).clone())));
    }
    // One control's conditions, copied and kept (leaked: a few hundred bytes).
    let conditions = counted::during(|| {
        std::mem::forget(objects[0].status.as_ref().unwrap().conditions.clone());
    });

    // The reflector store: its key (an `ObjectRef`) and table, beside the object it holds.
    let mut writer = reflector::store::Writer::<ExternalControl>::default();
    let mut store = 0;
    for control in &objects {
        let event = watcher::Event::Apply(ExternalControl::clone(control));
        store += counted::during(|| writer.apply_watcher_event(&event));
    }
    let store = store - object;

    // The index, and the schedule sharing its keys.
    let mut index = ControlIndex::default();
    let index_bytes = counted::during(|| {
        for control in &objects {
            index.upsert(
                Arc::new(ObjectKey::of(control.as_ref())),
                Entry::of(control),
            );
        }
    });
    let mut schedule = Schedule::default();
    let at = Timestamp::now() + jiff::SignedDuration::from_hours(12);
    let schedule_bytes = counted::during(|| {
        for control in &objects {
            let key = index.kept_key(&ObjectKey::of(control.as_ref())).unwrap();
            schedule.set(key.clone(), at);
        }
    });
    Parts {
        object: per(object),
        conditions: conditions as f64,
        store: per(store),
        index: per(index_bytes),
        schedule: per(schedule_bytes),
    }
}

/// The bench's allocator: the system's, counting per thread what is allocated and not freed.
mod counted {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    fn add(bytes: isize) {
        // After the thread's locals are gone (at its exit), nothing is counted.
        let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// The bytes `f` leaves allocated on this thread.
    pub fn during(f: impl FnOnce()) -> isize {
        let before = LIVE.with(Cell::get);
        f();
        LIVE.with(Cell::get) - before
    }
}

//! `extctl run` under checkers' load, end to end on the API harness (`tests/harness/`, in this
//! process), next to the same load sent straight to the harness.
//!
//!     cargo bench --bench run_load
//!     EXTCTL_BENCH_CONTROLS=200 EXTCTL_BENCH_RESETS=500 EXTCTL_BENCH_DURATION=3 cargo bench --bench run_load
//!
//! Setup: one Secret, `EXTCTL_BENCH_CONTROLS` controls (1,000; ping off) that the checkers call,
//! and `EXTCTL_BENCH_RESETS` pinged controls (3,000; one-hour interval, an `externalUrl` on a
//! receiver in this process that answers 200), all `Ready` before anything is measured. extctl
//! runs at its default log level (info), as in a cluster; `EXTCTL_BENCH_ARGS` adds flags.
//!
//! 1. Throughput: `EXTCTL_BENCH_CONCURRENCY` (32) checkers with `extctl::checker::load` (each
//!    call signed anew, round-robin over the called controls) against extctl, then the same
//!    number of workers sending `{"status":{"status":"pass"}}` merge patches of the same
//!    controls' status straight to the harness, one keep-alive connection each, measured the
//!    same way: `EXTCTL_BENCH_WARMUP` (2 s) then `EXTCTL_BENCH_DURATION` (10 s). Printed:
//!    calls/s, p50/p99/max and the ratio extctl / direct (target ≥ 0.9): what extctl's checks
//!    and its own API write cost on top of the write itself; and the CPU (in cores: CPU time
//!    over wall time) extctl and this process used meanwhile. The harness validates every write
//!    (schema, CEL) in this process, so where cores are few both paths can be bound by it, and
//!    the CPU columns tell how much of the machine each side took.
//! 2. The same, with 2 ms of harness latency on every request (`faults().set_latency`), as an
//!    API server farther away than loopback.
//! 3. Priority: every pinged control is set to `pass` with the same `nextPingTime` a few seconds
//!    ahead, so that extctl resets them all at once (status write, Event, ping, `lastPing`
//!    write each) while the checkers keep calling through the burst, measured from the due time
//!    for `EXTCTL_BENCH_BURST_DURATION` (15 s). Printed: the endpoint's p50/p99/max during it
//!    (target p99 < 1 s) and how long after the due time every reset, and every ping's outcome,
//!    was stored. Every reset must happen (`lastPingTime` set on every pinged control, read from
//!    the harness's store), else the bench exits 1.

mod support;

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Request, StatusCode, header};
use axum::routing::post;
use extctl::checker::load::{self, ControlRange, Figures, Load};
use extctl::crd::{ControlStatus, ExternalControl};
use futures::StreamExt;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams};
use reqwest::Url;
use serde_json::{Value, json};
use support::harness::ApiServer;
use support::{
    GROUP_VERSION, NAMESPACE, Operator, cpu_time, create_controls, create_secret, setting,
    sleep_until, wait_ready,
};
use tokio::net::TcpStream;

const TOKEN: &str = "bench-token-value";
/// The interval of the pinged controls, in their spec and in their status.
const PING_INTERVAL: &str = "1h";

#[tokio::main]
async fn main() -> ExitCode {
    let (called, pinged) = (
        setting("EXTCTL_BENCH_CONTROLS", 1_000),
        setting("EXTCTL_BENCH_RESETS", 3_000),
    );
    let load = Load {
        controls: ControlRange {
            project: 1,
            first: 1,
            last: called.max(1),
        },
        concurrency: setting("EXTCTL_BENCH_CONCURRENCY", 32) as usize,
        warmup: Duration::from_secs(setting("EXTCTL_BENCH_WARMUP", 2)),
        duration: Duration::from_secs(setting("EXTCTL_BENCH_DURATION", 10)),
        status: ControlStatus::Pass,
        token: TOKEN.as_bytes().to_vec(),
    };
    let server = ApiServer::start().await;
    let receiver = receiver().await;
    create_objects(&server, called, pinged, &receiver).await;
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::start(&server.write_kubeconfig(dir.path())).await;
    wait_ready(&server, called + pinged).await;

    println!(
        "\n| harness latency | extctl calls/s | p50 | p99 | max | direct calls/s | p50 | p99 | max | ratio | CPU extctl / this process | CPU this process, direct |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for latency in [Duration::ZERO, Duration::from_millis(2)] {
        server.faults().set_latency(latency);
        compare(&server, &operator.url, &load, latency, operator.pid()).await;
    }
    server.faults().clear();

    let burst_load = Load {
        duration: Duration::from_secs(setting("EXTCTL_BENCH_BURST_DURATION", 15)),
        ..load
    };
    let names: Vec<String> = (1..=pinged).map(|i| format!("p{i}")).collect();
    match priority(&server, &operator.url, &burst_load, &names).await {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// Where the pinged controls' notifications go: answers 200.
async fn receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ping", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/ping", post(|| async { StatusCode::OK }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The Secret, the called controls `c1`… (ping off) and the pinged controls `p1`….
async fn create_objects(server: &ApiServer, called: u64, pinged: u64, receiver: &str) {
    let token = [("token", TOKEN.as_bytes().to_vec())];
    create_secret(server, NAMESPACE, "bench-token", token).await;
    let spec = |id: u64, extra: Value| {
        let spec = json!({"projectId": 1, "controlId": id, "secretRef": {"name": "bench-token"}});
        merged(spec, extra)
    };
    let called_controls =
        (1..=called).map(|id| (format!("c{id}"), spec(id, json!({"pingEnabled": false}))));
    let ping =
        json!({"pingInterval": PING_INTERVAL, "pendingTimeout": "24h", "externalUrl": receiver});
    let pinged_controls = (1..=pinged).map(|i| (format!("p{i}"), spec(called + i, ping.clone())));
    let controls = called_controls.chain(pinged_controls);
    create_controls(server, controls, Duration::ZERO).await;
}

fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

/// Calls/s and latency, from either generator.
struct Rate {
    calls_per_second: f64,
    p50: f64,
    p99: f64,
    max: f64,
    /// Answers by code; calls that got none count as 0.
    answers: BTreeMap<u16, u64>,
}

impl From<Figures> for Rate {
    fn from(figures: Figures) -> Self {
        let mut answers = figures.answers;
        if figures.transport_errors > 0 {
            answers.insert(0, figures.transport_errors);
        }
        Self {
            calls_per_second: figures.calls_per_second,
            p50: figures.latency_ms.p50,
            p99: figures.latency_ms.p99,
            max: figures.latency_ms.max,
            answers,
        }
    }
}

impl Rate {
    fn not_ok(&self) -> u64 {
        let answers = self.answers.iter();
        answers
            .filter(|(code, _)| **code != 200)
            .map(|(_, n)| n)
            .sum()
    }
}

/// extctl, then the harness directly, under the same load; prints one row, with the CPU used
/// (in cores) by extctl and by this process (harness and load generator) during each.
async fn compare(server: &ApiServer, url: &Url, load: &Load, latency: Duration, extctl_pid: u32) {
    let pids = [extctl_pid, std::process::id()];
    eprintln!(
        "harness latency {latency:?}: extctl, {} checkers",
        load.concurrency
    );
    let (extctl, extctl_cores) = with_cpu(pids, load::measure(url, load)).await;
    let extctl = Rate::from(extctl.expect("extctl measured"));
    server.reset_requests();
    eprintln!("harness latency {latency:?}: direct merge patches");
    let (direct, direct_cores) = with_cpu(pids, measure_direct(server, load)).await;
    server.reset_requests();
    let cells = |r: &Rate| {
        format!(
            "{:.0} | {:.2} ms | {:.2} ms | {:.2} ms",
            r.calls_per_second, r.p50, r.p99, r.max
        )
    };
    println!(
        "| {} ms | {} | {} | {:.2} | {:.2} / {:.2} | {:.2} |",
        latency.as_millis(),
        cells(&extctl),
        cells(&direct),
        extctl.calls_per_second / direct.calls_per_second,
        extctl_cores[0],
        extctl_cores[1],
        direct_cores[1],
    );
    for (target, rate) in [("extctl", &extctl), ("direct", &direct)] {
        if rate.not_ok() > 0 {
            println!("  {target}: answers by code (0: none) {:?}", rate.answers);
        }
    }
}

/// Runs `work`; also the CPU each of `pids` used meanwhile, in cores (CPU time / wall time).
async fn with_cpu<T>(pids: [u32; 2], work: impl Future<Output = T>) -> (T, [f64; 2]) {
    let (started, before) = (Instant::now(), pids.map(cpu_time));
    let output = work.await;
    let wall = started.elapsed().as_secs_f64();
    let after = pids.map(cpu_time);
    let cores = [0, 1].map(|i| (after[i] - before[i]).as_secs_f64() / wall);
    (output, cores)
}

/// Calls one worker made after the warm-up: latencies and answers.
#[derive(Default)]
struct Calls {
    latencies_ns: Vec<u64>,
    answers: BTreeMap<u16, u64>,
}

/// `load.concurrency` workers, each on one keep-alive connection to the harness, patching the
/// same controls' status in turn with `{"status":{"status":"pass"}}`.
async fn measure_direct(server: &ApiServer, load: &Load) -> Rate {
    let address: SocketAddr = server.url().trim_start_matches("http://").parse().unwrap();
    let start = Instant::now();
    let (from, until) = (start + load.warmup, start + load.warmup + load.duration);
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..load.concurrency)
        .map(|_| {
            tokio::spawn(patch_worker(
                address,
                load.controls,
                next.clone(),
                from,
                until,
            ))
        })
        .collect();
    let mut all = Calls::default();
    for worker in workers {
        let calls = worker.await.unwrap();
        all.latencies_ns.extend(calls.latencies_ns);
        for (code, n) in calls.answers {
            *all.answers.entry(code).or_default() += n;
        }
    }
    let seconds = from.elapsed().as_secs_f64();
    all.latencies_ns.sort_unstable();
    let ms = |q: f64| {
        let rank = (q * all.latencies_ns.len() as f64).ceil() as usize;
        let nanos = all.latencies_ns.get(rank.saturating_sub(1)).copied();
        nanos.unwrap_or(0) as f64 / 1e6
    };
    Rate {
        calls_per_second: all.latencies_ns.len() as f64 / seconds,
        p50: ms(0.5),
        p99: ms(0.99),
        max: ms(1.0),
        answers: all.answers,
    }
}

async fn patch_worker(
    address: SocketAddr,
    controls: ControlRange,
    next: Arc<AtomicU64>,
    from: Instant,
    until: Instant,
) -> Calls {
    let stream = TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut calls = Calls::default();
    let count = controls.last - controls.first + 1;
    loop {
        let started = Instant::now();
        if started >= until {
            return calls;
        }
        let control = controls.first + next.fetch_add(1, Ordering::Relaxed) % count;
        let path = format!(
            "/apis/{GROUP_VERSION}/namespaces/{NAMESPACE}/externalcontrols/c{control}/status"
        );
        let request = Request::patch(path)
            .header(header::HOST, address.to_string())
            .header(header::CONTENT_TYPE, "application/merge-patch+json")
            .body(r#"{"status":{"status":"pass"}}"#.to_string())
            .unwrap();
        sender.ready().await.expect("the connection stays open");
        let response = sender.send_request(request).await.expect("an answer");
        let code = response.status().as_u16();
        drain(response.into_body()).await;
        if started >= from {
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            calls.latencies_ns.push(nanos);
            *calls.answers.entry(code).or_default() += 1;
        }
    }
}

async fn drain(mut body: Incoming) {
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        frame.expect("the body arrives");
    }
}

/// Scenario 3; whether every reset happened.
async fn priority(server: &ApiServer, url: &Url, load: &Load, names: &[String]) -> bool {
    // Time to schedule them all (a few ms per patch), then a few seconds of calls before.
    let lead = SignedDuration::from_secs(5) + SignedDuration::from_millis(2 * names.len() as i64);
    let now = Timestamp::now();
    let due = Timestamp::from_microsecond((now + lead).as_microsecond()).unwrap();
    schedule(server, names, due).await;
    let spare = due.duration_since(Timestamp::now()).as_secs_f64();
    eprintln!(
        "priority: {} resets scheduled, due in {spare:.1} s",
        names.len()
    );
    if spare < load.warmup.as_secs_f64() {
        eprintln!("priority: scheduling took longer than planned; some resets fell due during it");
    }
    // The warm-up ends at the due time: what is measured is the burst and what follows.
    sleep_until(due - SignedDuration::try_from(load.warmup).unwrap()).await;
    let calling = {
        let (url, load) = (url.clone(), load.clone());
        tokio::spawn(async move { load::measure(&url, &load).await })
    };
    let resets = completion(server, names, "lastPingTime", due).await;
    let outcomes = completion(server, names, "lastPing", due).await;
    let endpoint = Rate::from(calling.await.unwrap().expect("extctl measured"));
    println!(
        "\npriority: {} resets due at once, {} checkers calling through them for {} s from the due time",
        names.len(),
        load.concurrency,
        load.duration.as_secs()
    );
    println!(
        "  endpoint: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; not 200: {} (target p99 < 1 s)",
        endpoint.calls_per_second,
        endpoint.p50,
        endpoint.p99,
        endpoint.max,
        endpoint.not_ok()
    );
    for (what, done) in [("resets", &resets), ("ping outcomes", &outcomes)] {
        match done.after {
            Some(after) => println!(
                "  {what} stored: {} of {} ({:.2} s after the due time)",
                done.count,
                names.len(),
                after.as_secs_f64()
            ),
            None => println!(
                "  {what} stored: {} of {} (not all!)",
                done.count,
                names.len()
            ),
        }
    }
    resets.after.is_some()
}

/// Sets every control to `pass` with its next reset at `due`, and the interval the spec has.
async fn schedule(server: &ApiServer, names: &[String], due: Timestamp) {
    let api: Api<ExternalControl> = Api::namespaced(server.client(), NAMESPACE);
    let patch = json!({"status": {
        "status": "pass", "lastUpdateTime": MicroTime(Timestamp::now()),
        "nextPingTime": MicroTime(due), "pingInterval": PING_INTERVAL,
    }});
    futures::stream::iter(names)
        .map(|name| {
            let (api, patch) = (&api, &patch);
            async move {
                let patch = Patch::Merge(patch);
                api.patch_status(name, &PatchParams::default(), &patch)
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// How many controls have `status.<field>`, and when (from `due`) the last of them got it.
struct Done {
    count: usize,
    after: Option<Duration>,
}

/// Polls the store (directly, not through HTTP; only the controls still without `field`)
/// every 100 ms until every control has it, for at most 60 s after `due`.
async fn completion(server: &ApiServer, names: &[String], field: &str, due: Timestamp) -> Done {
    let deadline = due + SignedDuration::from_secs(60);
    let mut missing: Vec<&String> = names.iter().collect();
    loop {
        missing.retain(|name| {
            let control =
                server.get_object(GROUP_VERSION, "externalcontrols", Some(NAMESPACE), name);
            control.is_none_or(|c| c["status"][field].is_null())
        });
        if missing.is_empty() || Timestamp::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = Duration::try_from(Timestamp::now().duration_since(due)).unwrap_or_default();
    Done {
        count: names.len() - missing.len(),
        after: missing.is_empty().then_some(after),
    }
}

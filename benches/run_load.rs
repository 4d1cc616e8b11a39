//! `extctl run` under checkers' load, end to end on a genuine kube-apiserver and etcd
//! (`tests/support/apiserver/`, started by this process), next to the same load sent straight
//! to the server.
//!
//!     cargo bench --bench run_load
//!     EXTCTL_BENCH_CONTROLS=200 EXTCTL_BENCH_RESETS=500 EXTCTL_BENCH_DURATION=3 cargo bench --bench run_load
//!
//! Setup: one Secret, `EXTCTL_BENCH_CONTROLS` controls (1,000; ping off) that the checkers call,
//! and `EXTCTL_BENCH_RESETS` pinged controls (1,000; one-hour interval, an `externalUrl` on a
//! receiver in this process that answers 200 and counts the pings of each control), all in a
//! namespace of their own and `Ready` before anything is measured; then calls, two per called
//! control (unmeasured), and a twin of each called control (same spec, same status, copied)
//! in a second namespace, which extctl does not serve but this process watches (dropping what
//! it reads), for the direct side. extctl runs with `--namespace` at its default log level
//! (info) and with leader election, as in a cluster; its kubeconfig has the server's
//! administrator token (exempt from API Priority and Fairness, like the direct side's).
//! `EXTCTL_BENCH_ARGS` adds flags.
//!
//! 1. Throughput, extctl's kubeconfig straight to the server (HTTPS on loopback):
//!    `EXTCTL_BENCH_CONCURRENCY` (32) checkers with `extctl::bench` (each call signed
//!    anew, round-robin over the called controls) against extctl, then the same number of
//!    workers sending merge patches of the twins' status straight to the server, one
//!    keep-alive HTTPS connection each, measured the same way. The two take turns for
//!    `EXTCTL_BENCH_ROUNDS` (5) rounds, each turn `EXTCTL_BENCH_WARMUP` (2 s) then
//!    `EXTCTL_BENCH_DURATION` (10 s) divided by the rounds, so that whatever else the machine
//!    runs weighs on both sides alike. Every direct patch changes the twin: its status
//!    alternates, round-robin round by round, `fail`, `pass`, `fail`, ... and `lastUpdateTime`
//!    is the time of sending, as extctl's own write changes `lastUpdateTime` and `recentNonces`
//!    (the server skips a patch that changes nothing cheaply, which would flatter the direct
//!    side). The twins are out of extctl's sight because its reconciler answers a status
//!    changed behind its back with a write of its own (the `Compliant` condition follows the
//!    status), which would make the direct side pay for extctl's writes; this process's watch
//!    of them costs the server what extctl's watch of its controls does. Printed: calls/s,
//!    p50/p99/max (the turns' means; max the largest) and the ratio extctl / direct over all
//!    turns, and each round's (target ≥ 0.9: the row says `met` or `MISSED`): what extctl's
//!    checks and its own API write cost on top of the write itself; and the CPU (in cores: CPU
//!    time over wall time) used meanwhile by extctl, by the server (kube-apiserver and etcd)
//!    and by this process (the load). On 2 cores the server takes most of them, so both paths
//!    are bound by it, and the CPU columns tell how much of the machine each side took.
//! 2. Priority: every pinged control gets `pass` and the same `nextPingTime` (one instant, a few
//!    seconds ahead) with a status merge patch, so that extctl resets them all at once (status
//!    write, Event, ping, `lastPing` write each) while the checkers keep calling through the
//!    burst, measured from the due time for `EXTCTL_BENCH_BURST_DURATION` (30 s). Printed: the
//!    endpoint's p50/p99/max during it (target p99 < 1 s: `met` or `MISSED`) and how long after
//!    the due time every reset, and every ping's outcome, was stored (followed through a watch
//!    of this process). Every pinged control must reset exactly once (one new `lastPingTime`,
//!    one ping received), else the bench exits 1.
//! 3. Throughput as in 1, with 2 ms added to every request on both paths: extctl (restarted,
//!    after the first one stopped with SIGTERM) and the direct workers both go through the
//!    proxy of `tests/support/apiserver/proxy.rs` in this process, which waits 2 ms and
//!    forwards each request over HTTPS, as an API server farther away than loopback. The proxy
//!    costs this process CPU on both sides alike.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use extctl::{ControlRange, Figures, Load};
use extctl_core::crd::{ControlStatus, ExternalControl};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use support::{
    ADMIN_TOKEN, Cluster, GROUP_VERSION, NAMESPACE, Operator, Proxy, cpu_time_of, create_controls,
    create_controls_then, create_namespace, create_secret, setting, sleep_until, wait_ready,
};

const TOKEN: &str = "bench-token-value";
/// Where the direct side's controls are: twins of the called controls (same spec, same
/// status), in a namespace extctl does not serve, so that its reconciler does not answer
/// their changes with writes of its own (the `Compliant` condition follows the status).
const DIRECT_NAMESPACE: &str = "extctl-bench-direct";
/// The interval of the pinged controls, in their spec and in their status.
const PING_INTERVAL: &str = "1h";
/// Targets: extctl's calls/s over the direct patches/s, and the endpoint's p99 in the burst.
const RATIO_TARGET: f64 = 0.9;
const BURST_P99_TARGET_MS: f64 = 1000.0;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (called, pinged) = (
        setting("EXTCTL_BENCH_CONTROLS", 1_000),
        setting("EXTCTL_BENCH_RESETS", 1_000),
    );
    let load = Load {
        controls: ControlRange {
            project: 1,
            first: 1,
            last: i64::try_from(called.max(1)).expect("a control count fits an id"),
        },
        concurrency: setting("EXTCTL_BENCH_CONCURRENCY", 32) as usize,
        warmup: Duration::from_secs(setting("EXTCTL_BENCH_WARMUP", 2)),
        duration: Duration::from_secs(setting("EXTCTL_BENCH_DURATION", 10)),
        status: ControlStatus::Pass,
        token: TOKEN.as_bytes().to_vec(),
    };
    let cluster = Cluster::start().await;
    let receiver = Receiver::start().await;
    let created = Instant::now();
    create_objects(&cluster.client, called, pinged, &receiver.url).await;
    let server_pids = cluster.server_pids();
    let args = ["--namespace", NAMESPACE];
    let operator = Operator::start(&cluster.kubeconfig(&cluster.server.url, "direct"), &args).await;
    wait_ready(&cluster.client, called + pinged).await;
    eprintln!(
        "{} controls created and ready in {:.1} s",
        called + pinged,
        created.elapsed().as_secs_f64()
    );
    // Calls, unmeasured, until every called control has had two (so its status holds what it
    // does under load: `pass`, recent nonces, a history entry); the twins get the same status.
    let warm = Load {
        warmup: Duration::ZERO,
        duration: Duration::from_secs(2),
        ..load.clone()
    };
    let mut warm_calls = 0;
    for _ in 0..30 {
        let figures = extctl::measure(&operator.url, &warm).await;
        warm_calls += figures.expect("extctl called").calls;
        if warm_calls >= 2 * called {
            break;
        }
    }
    copy_statuses(&cluster.client, called).await;
    watch_twins(&cluster.server.url, &cluster.server.ca_pem);

    let direct = Target {
        base: cluster.server.url.clone(),
        ca_pem: Some(cluster.server.ca_pem.clone()),
    };
    let rounds = setting("EXTCTL_BENCH_ROUNDS", 5).max(1) as u32;
    let compared = compare(
        &direct,
        &operator,
        &load,
        Duration::ZERO,
        &server_pids,
        rounds,
    );
    let mut rows = vec![compared.await];

    let burst_load = Load {
        duration: Duration::from_secs(setting("EXTCTL_BENCH_BURST_DURATION", 30)),
        ..load.clone()
    };
    let names: Vec<String> = (1..=pinged).map(|i| format!("p{i}")).collect();
    let burst = priority(
        &cluster,
        &operator,
        &burst_load,
        &names,
        &receiver,
        &server_pids,
    )
    .await;
    operator.stop().await;

    let latency = Duration::from_millis(2);
    let proxy = Proxy::start(cluster.server).await;
    proxy.faults().set_latency(latency);
    let operator = Operator::start(&cluster.kubeconfig(&proxy.url(), "proxied"), &args).await;
    let proxied = Target {
        base: proxy.url(),
        ca_pem: None,
    };
    rows.push(compare(&proxied, &operator, &load, latency, &server_pids, rounds).await);

    println!(
        "\n{called} called controls, {} checkers / direct workers; CPU in cores (CPU time / wall time), 2 cores shared",
        load.concurrency
    );
    println!(
        "\n| added API latency | extctl calls/s | p50 | p99 | max | direct patches/s | p50 | p99 | max | ratio (target ≥ {RATIO_TARGET}) | CPU extctl / server / bench, extctl side | CPU extctl / server / bench, direct side |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{}", row.line);
        for note in &row.notes {
            println!("  {note}");
        }
    }
    println!("{}", burst.text);
    let missed: Vec<&str> = (rows.iter().filter(|r| r.missed).map(|r| r.what.as_str()))
        .chain(burst.p99_missed.then_some("burst p99"))
        .collect();
    match missed.is_empty() {
        true => println!("\ntargets: all met"),
        false => println!("\ntargets: MISSED: {}", missed.join(", ")),
    }
    match burst.every_reset_once {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every ping received, by control: the reset times (`time`, to the microsecond).
type Pings = Arc<Mutex<HashMap<String, Vec<Timestamp>>>>;

/// Where the pinged controls' notifications go: answers 200 and keeps each ping.
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

async fn receive(State(pings): State<Pings>, Json(body): Json<Value>) -> StatusCode {
    let control = body["control"]["resource"].as_str().unwrap_or_default();
    let time = body["time"].as_str().and_then(|t| t.parse().ok());
    if let Some(time) = time {
        (lock(&pings).entry(control.to_owned()).or_default()).push(time);
    }
    StatusCode::OK
}

/// The Secret, the called controls `c1`… (ping off) and the pinged controls `p1`…; and the
/// called controls' twins in [`DIRECT_NAMESPACE`].
async fn create_objects(client: &kube::Client, called: u64, pinged: u64, receiver: &str) {
    let token = [("token", TOKEN.as_bytes().to_vec())];
    create_secret(client, NAMESPACE, "bench-token", token).await;
    let spec = |id: u64, extra: Value| {
        let spec = json!({"projectId": 1, "controlId": id, "secretRef": {"name": "bench-token"}});
        merged(spec, extra)
    };
    let called_controls =
        (1..=called).map(|id| (format!("c{id}"), spec(id, json!({"pingEnabled": false}))));
    let ping =
        json!({"pingInterval": PING_INTERVAL, "pendingTimeout": "24h", "externalUrl": receiver});
    let pinged_controls = (1..=pinged).map(|i| (format!("p{i}"), spec(called + i, ping.clone())));
    let controls = called_controls.clone().chain(pinged_controls);
    create_controls(client, controls, Duration::ZERO).await;
    create_namespace(client, DIRECT_NAMESPACE).await;
    let nothing = |_| async {};
    create_controls_then(
        client,
        DIRECT_NAMESPACE,
        called_controls,
        Duration::ZERO,
        nothing,
    )
    .await;
}

/// Watches the twins for the rest of the run, reading and dropping every event: the server
/// serializes and sends each change to a watcher, as it sends extctl each change of its
/// controls, so both sides' writes cost it the same watch.
fn watch_twins(server: &str, ca_pem: &str) {
    let url = format!(
        "{server}/apis/{GROUP_VERSION}/namespaces/{DIRECT_NAMESPACE}/externalcontrols?watch=true"
    );
    let target = Target {
        base: server.to_owned(),
        ca_pem: Some(ca_pem.to_owned()),
    };
    let http = target.client();
    tokio::spawn(async move {
        loop {
            let watch = http.get(&url).bearer_auth(ADMIN_TOKEN).send().await;
            let Ok(mut events) = watch else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            while let Ok(Some(_)) = events.chunk().await {}
        }
    });
}

/// Gives each twin in [`DIRECT_NAMESPACE`] the status of its control in [`NAMESPACE`].
async fn copy_statuses(client: &kube::Client, count: u64) {
    let controls: Api<ExternalControl> = Api::namespaced(client.clone(), NAMESPACE);
    let twins: Api<ExternalControl> = Api::namespaced(client.clone(), DIRECT_NAMESPACE);
    let listed = controls.list(&Default::default()).await.unwrap().items;
    let called: Vec<ExternalControl> = (listed.into_iter())
        .filter(|c| c.name_any().starts_with('c'))
        .collect();
    assert_eq!(called.len() as u64, count, "called controls listed");
    futures::stream::iter(&called)
        .map(|control| {
            let twins = &twins;
            async move {
                let patch = json!({"status": control.status});
                let params = PatchParams::default();
                (twins.patch_status(&control.name_any(), &params, &Patch::Merge(&patch)))
                    .await
                    .unwrap_or_else(|e| panic!("copying the status of {}: {e}", control.name_any()))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

/// Calls/s and latency, from either generator.
struct Rate {
    calls: u64,
    seconds: f64,
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
            calls: figures.calls,
            seconds: figures.seconds,
            p50: figures.latency_ms.p50,
            p99: figures.latency_ms.p99,
            max: figures.latency_ms.max,
            answers,
        }
    }
}

impl Rate {
    fn calls_per_second(&self) -> f64 {
        self.calls as f64 / self.seconds.max(f64::EPSILON)
    }

    fn not_ok(&self) -> u64 {
        let answers = self.answers.iter();
        answers
            .filter(|(code, _)| **code != 200)
            .map(|(_, n)| n)
            .sum()
    }

    /// Several rounds as one: calls over time; p50 and p99 the rounds' means, max the largest.
    fn combined(rounds: &[Rate]) -> Rate {
        let n = rounds.len().max(1) as f64;
        let mut answers = BTreeMap::new();
        for (code, count) in rounds.iter().flat_map(|r| &r.answers) {
            *answers.entry(*code).or_default() += count;
        }
        Rate {
            calls: rounds.iter().map(|r| r.calls).sum(),
            seconds: rounds.iter().map(|r| r.seconds).sum(),
            p50: rounds.iter().map(|r| r.p50).sum::<f64>() / n,
            p99: rounds.iter().map(|r| r.p99).sum::<f64>() / n,
            max: rounds.iter().map(|r| r.max).fold(0.0, f64::max),
            answers,
        }
    }
}

/// Where the direct side sends its patches: the server (HTTPS, its CA) or the proxy (HTTP).
struct Target {
    base: String,
    ca_pem: Option<String>,
}

impl Target {
    /// A client of one keep-alive HTTP/1.1 connection (one request in flight at a time).
    fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1);
        if let Some(ca) = &self.ca_pem {
            builder = builder.tls_certs_only([
                reqwest::Certificate::from_pem(ca.as_bytes()).expect("the server's CA")
            ]);
        }
        builder.build().expect("a client for the direct patches")
    }
}

/// The status subresource of called control `c<control>`, under `base`.
fn status_url(base: &str, control: i64) -> String {
    let namespace = DIRECT_NAMESPACE;
    format!("{base}/apis/{GROUP_VERSION}/namespaces/{namespace}/externalcontrols/c{control}/status")
}

/// One row of the throughput table.
struct Row {
    line: String,
    notes: Vec<String>,
    what: String,
    missed: bool,
}

/// extctl, then the server directly (`target`), under the same load, taking turns for
/// `rounds` rounds of `load.duration / rounds` each (after its own warm-up), so that what else
/// the machine runs weighs on both alike; one row, with the CPU used (in cores) by extctl, by
/// the server and by this process during each side's turns.
async fn compare(
    target: &Target,
    operator: &Operator,
    load: &Load,
    latency: Duration,
    server_pids: &[u32],
    rounds: u32,
) -> Row {
    let pids = [
        vec![operator.pid()],
        server_pids.to_vec(),
        vec![std::process::id()],
    ];
    let turn = Load {
        duration: load.duration / rounds,
        ..load.clone()
    };
    let (mut extctl, mut direct) = (Vec::new(), Vec::new());
    let (mut extctl_cpu, mut direct_cpu) = (Cpu::default(), Cpu::default());
    for round in 1..=rounds {
        eprintln!(
            "added latency {latency:?}, round {round} of {rounds}: extctl, {} checkers; then direct patches",
            load.concurrency
        );
        let (figures, cpu) = with_cpu(&pids, extctl::measure(&operator.url, &turn)).await;
        extctl.push(Rate::from(figures.expect("extctl measured")));
        extctl_cpu.add(cpu);
        let (rate, cpu) = with_cpu(&pids, measure_direct(target, &turn)).await;
        direct.push(rate);
        direct_cpu.add(cpu);
    }
    let by_round: Vec<String> = (extctl.iter().zip(&direct))
        .map(|(e, d)| format!("{:.2}", e.calls_per_second() / d.calls_per_second()))
        .collect();
    let (extctl, direct) = (Rate::combined(&extctl), Rate::combined(&direct));
    let cells = |r: &Rate| {
        format!(
            "{:.0} | {:.1} ms | {:.1} ms | {:.1} ms",
            r.calls_per_second(),
            r.p50,
            r.p99,
            r.max
        )
    };
    let ratio = extctl.calls_per_second() / direct.calls_per_second();
    let met = ratio >= RATIO_TARGET;
    let line = format!(
        "| {} ms | {} | {} | **{ratio:.2}** {} ({}) | {} | {} |",
        latency.as_millis(),
        cells(&extctl),
        cells(&direct),
        if met { "met" } else { "MISSED" },
        by_round.join(", "),
        extctl_cpu.cores(),
        direct_cpu.cores(),
    );
    let mut notes = Vec::new();
    for (side, rate) in [("extctl", &extctl), ("direct", &direct)] {
        if rate.not_ok() > 0 {
            notes.push(format!(
                "{side}: answers by code (0: none) {:?}",
                rate.answers
            ));
        }
    }
    Row {
        line,
        notes,
        what: format!("ratio at {} ms", latency.as_millis()),
        missed: !met,
    }
}

/// CPU seconds of extctl, the server and this process, over wall seconds.
#[derive(Default)]
struct Cpu {
    seconds: [f64; 3],
    wall: f64,
}

impl Cpu {
    fn add(&mut self, (seconds, wall): ([f64; 3], f64)) {
        for (total, s) in self.seconds.iter_mut().zip(seconds) {
            *total += s;
        }
        self.wall += wall;
    }

    fn cores(&self) -> String {
        let [extctl, server, bench] = self.seconds.map(|s| s / self.wall.max(f64::EPSILON));
        format!("{extctl:.2} / {server:.2} / {bench:.2}")
    }
}

/// Runs `work`; also the CPU seconds each group of `pids` used meanwhile, and the wall
/// seconds.
async fn with_cpu<T, const N: usize>(
    pids: &[Vec<u32>; N],
    work: impl Future<Output = T>,
) -> (T, ([f64; N], f64)) {
    let (started, before) = (Instant::now(), pids.each_ref().map(|p| cpu_time_of(p)));
    let output = work.await;
    let wall = started.elapsed().as_secs_f64();
    let after = pids.each_ref().map(|p| cpu_time_of(p));
    let seconds = std::array::from_fn(|i| (after[i].saturating_sub(before[i])).as_secs_f64());
    (output, (seconds, wall))
}

/// Calls one worker made after the warm-up: latencies and answers.
#[derive(Default)]
struct Calls {
    latencies_ns: Vec<u64>,
    answers: BTreeMap<u16, u64>,
}

/// The direct patches sent so far, over every turn: the next one's control and round.
static DIRECT_PATCHES: AtomicU64 = AtomicU64::new(0);

/// `load.concurrency` workers, each on one keep-alive connection to `target`, patching the
/// twins' status in turn (round-robin, as the checkers call the controls).
async fn measure_direct(target: &Target, load: &Load) -> Rate {
    let start = Instant::now();
    let (from, until) = (start + load.warmup, start + load.warmup + load.duration);
    let workers: Vec<_> = (0..load.concurrency)
        .map(|_| {
            let worker = PatchWorker {
                http: target.client(),
                base: target.base.clone(),
                controls: load.controls,
            };
            tokio::spawn(worker.run(from, until))
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
        calls: all.latencies_ns.len() as u64,
        seconds,
        p50: ms(0.5),
        p99: ms(0.99),
        max: ms(1.0),
        answers: all.answers,
    }
}

/// The status the `call`th direct patch (counted from 0) over `count` controls sets: round 0
/// turns the copied `pass` into `fail`, round 1 back, and so on, so that every patch changes
/// the status.
fn direct_status(call: u64, count: u64) -> &'static str {
    ["fail", "pass"][(call / count % 2) as usize]
}

struct PatchWorker {
    http: reqwest::Client,
    base: String,
    controls: ControlRange,
}

impl PatchWorker {
    /// Patches until `until`; keeps what it saw from `from`.
    async fn run(self, from: Instant, until: Instant) -> Calls {
        let mut calls = Calls::default();
        let count = self.controls.count();
        loop {
            let started = Instant::now();
            if started >= until {
                return calls;
            }
            let call = DIRECT_PATCHES.fetch_add(1, Ordering::Relaxed);
            let control = self.controls.nth(call);
            let body = json!({"status": {
                "status": direct_status(call, count),
                "lastUpdateTime": MicroTime(Timestamp::now()),
            }});
            let sent = self
                .http
                .patch(status_url(&self.base, control))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/merge-patch+json")
                .body(body.to_string())
                .send()
                .await;
            let code = match sent {
                Ok(response) => {
                    let code = response.status().as_u16();
                    // Read whole, so the connection is kept for the next patch.
                    if response.bytes().await.is_ok() {
                        code
                    } else {
                        0
                    }
                }
                Err(_) => 0,
            };
            if started >= from {
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                calls.latencies_ns.push(nanos);
                *calls.answers.entry(code).or_default() += 1;
            }
        }
    }
}

/// What scenario 2 found.
struct Burst {
    text: String,
    p99_missed: bool,
    /// Every pinged control reset exactly once (one new `lastPingTime`, one ping).
    every_reset_once: bool,
}

/// Scenario 2.
async fn priority(
    cluster: &Cluster,
    operator: &Operator,
    load: &Load,
    names: &[String],
    receiver: &Receiver,
    server_pids: &[u32],
) -> Burst {
    let api: Api<ExternalControl> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    // Time to schedule them all (a few ms per patch), then a few seconds of calls before.
    let lead = SignedDuration::from_secs(5) + SignedDuration::from_millis(5 * names.len() as i64);
    let due = Timestamp::from_microsecond((Timestamp::now() + lead).as_microsecond()).unwrap();
    let progress = follow(api.clone(), due).await;
    let scheduling = Instant::now();
    schedule(&api, names, due).await;
    let spare = due.duration_since(Timestamp::now()).as_secs_f64();
    eprintln!(
        "priority: {} resets scheduled in {:.1} s, due in {spare:.1} s",
        names.len(),
        scheduling.elapsed().as_secs_f64()
    );
    if spare < load.warmup.as_secs_f64() {
        eprintln!("priority: scheduling took longer than planned; some resets fell due during it");
    }
    // The warm-up ends at the due time: what is measured is the burst and what follows.
    sleep_until(due - SignedDuration::try_from(load.warmup).unwrap()).await;
    let pids = [
        vec![operator.pid()],
        server_pids.to_vec(),
        vec![std::process::id()],
    ];
    let calling = {
        let (url, load) = (operator.url.clone(), load.clone());
        tokio::spawn(async move { with_cpu(&pids, extctl::measure(&url, &load)).await })
    };
    let done = completion(&progress, names, due).await;
    let (figures, (seconds, wall)) = calling.await.unwrap();
    let cores = seconds.map(|s| s / wall);
    let endpoint = Rate::from(figures.expect("extctl measured"));
    // A second reset of the same due time would come at once; give it a moment to show.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut text = format!(
        "\npriority: {} resets due at one instant, {} checkers calling through them for {} s from the due time",
        names.len(),
        load.concurrency,
        load.duration.as_secs()
    );
    let p99_met = endpoint.p99 < BURST_P99_TARGET_MS;
    let p99_missed = !p99_met;
    text += &format!(
        "\n  endpoint: {:.0} calls/s, p50 {:.2} ms, **p99 {:.2} ms**, max {:.2} ms; not 200: {} (target p99 < 1 s: {})",
        endpoint.calls_per_second(),
        endpoint.p50,
        endpoint.p99,
        endpoint.max,
        endpoint.not_ok(),
        if p99_missed { "MISSED" } else { "met" },
    );
    text += &format!(
        "\n  CPU meanwhile, in cores: extctl {:.2}, server {:.2}, this process {:.2}",
        cores[0], cores[1], cores[2]
    );
    for (what, after) in [
        ("resets", done.resets_seen),
        ("ping outcomes", done.outcomes_seen),
    ] {
        match after {
            Some(after) => {
                let after = after.as_secs_f64();
                text += &format!(
                    "\n  {what} stored: all {} (the last seen through the watch {after:.2} s after the due time)",
                    names.len()
                );
            }
            None => text += &format!("\n  {what} stored: not all within 60 s!"),
        }
    }
    if let Some(last) = done.last_reset_stored {
        text += &format!(
            "\n  the last lastPingTime stored: {:.2} s after the due time",
            last.as_secs_f64()
        );
    }
    if done.outcomes_seen.is_none_or(|after| after > load.duration) {
        text += "\n  (the burst outlasted the calls measured: raise EXTCTL_BENCH_BURST_DURATION)";
    }
    let resets = lock(&progress.controls);
    let pings = lock(&receiver.pings);
    let mut by_count: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for name in names {
        let reset = resets.get(name).map_or(0, |p| p.resets.len());
        let pinged = (pings.get(name).into_iter().flatten())
            .filter(|t| **t >= due)
            .count();
        *by_count.entry((reset, pinged)).or_default() += 1;
    }
    let once = by_count.get(&(1, 1)).copied().unwrap_or(0);
    text += &format!(
        "\n  controls reset exactly once (one new lastPingTime, one ping): {once} of {}",
        names.len()
    );
    for ((reset, pinged), n) in by_count.iter().filter(|(key, _)| **key != (1, 1)) {
        text += &format!("\n  NOT ONCE: {n} controls with {reset} resets and {pinged} pings");
    }
    Burst {
        text,
        p99_missed,
        every_reset_once: once == names.len(),
    }
}

/// Sets every control to `pass` with its next reset at `due`, and the interval the spec has
/// (the schedule keeps a stored `nextPingTime` whose `pingInterval` is the spec's).
async fn schedule(api: &Api<ExternalControl>, names: &[String], due: Timestamp) {
    let patch = json!({"status": {
        "status": "pass", "lastUpdateTime": MicroTime(Timestamp::now()),
        "nextPingTime": MicroTime(due), "pingInterval": PING_INTERVAL,
    }});
    futures::stream::iter(names)
        .map(|name| {
            let patch = &patch;
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

/// A pinged control's resets for the burst, as the watch showed them.
#[derive(Default)]
struct ControlProgress {
    /// Every `lastPingTime` at or after the due time.
    resets: BTreeSet<Timestamp>,
    /// When the first of them was delivered.
    reset_seen: Option<Timestamp>,
    /// When a `lastPing` for the last of them was delivered.
    outcome_seen: Option<Timestamp>,
}

struct Progress {
    controls: Arc<Mutex<HashMap<String, ControlProgress>>>,
}

/// Watches the controls (this process's own watch, straight to the server) from now on, and
/// keeps each one's resets at or after `due`.
async fn follow(api: Api<ExternalControl>, due: Timestamp) -> Progress {
    let controls: Arc<Mutex<HashMap<String, ControlProgress>>> = Arc::default();
    let (listed, is_listed) = tokio::sync::oneshot::channel();
    let shared = controls.clone();
    tokio::spawn(async move {
        let mut listed = Some(listed);
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let control = match event {
                Ok(watcher::Event::Apply(control) | watcher::Event::InitApply(control)) => control,
                Ok(watcher::Event::InitDone) => {
                    if let Some(listed) = listed.take() {
                        let _ = listed.send(());
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(error) => {
                    eprintln!("priority: the watch failed ({error}); it resumes");
                    continue;
                }
            };
            let status = control.status.clone().unwrap_or_default();
            let Some(reset) = status.last_ping_time.map(|t| t.0).filter(|t| *t >= due) else {
                continue;
            };
            let now = Timestamp::now();
            let mut controls = lock(&shared);
            let progress = controls.entry(control.name_any()).or_default();
            progress.resets.insert(reset);
            progress.reset_seen.get_or_insert(now);
            let outcome = status.last_ping.is_some_and(|o| o.time.0 == reset);
            if outcome && progress.resets.last() == Some(&reset) {
                progress.outcome_seen.get_or_insert(now);
            }
        }
    });
    let _ = is_listed.await;
    Progress { controls }
}

/// When (from `due`) the watch had shown every control's reset, and every reset's outcome;
/// and the latest `lastPingTime`.
struct Done {
    resets_seen: Option<Duration>,
    outcomes_seen: Option<Duration>,
    last_reset_stored: Option<Duration>,
}

/// Waits until the watch has shown every control's reset and its ping's outcome, for at most
/// 60 s after `due`.
async fn completion(progress: &Progress, names: &[String], due: Timestamp) -> Done {
    let deadline = due + SignedDuration::from_secs(60);
    let after_due = |at: Timestamp| Duration::try_from(at.duration_since(due)).unwrap_or_default();
    loop {
        {
            let controls = lock(&progress.controls);
            let latest = |field: fn(&ControlProgress) -> Option<Timestamp>| {
                let times: Option<Vec<Timestamp>> = (names.iter())
                    .map(|name| controls.get(name).and_then(field))
                    .collect();
                times.and_then(|t| t.into_iter().max())
            };
            let resets = latest(|p| p.reset_seen);
            let outcomes = latest(|p| p.outcome_seen);
            if (resets.is_some() && outcomes.is_some()) || Timestamp::now() >= deadline {
                let stored = latest(|p| p.resets.first().copied());
                return Done {
                    resets_seen: resets.map(after_due),
                    outcomes_seen: outcomes.map(after_due),
                    last_reset_stored: stored.map(after_due),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

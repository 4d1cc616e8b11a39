//! `extctl bench`: load on the status endpoint, as many checkers would put it, to measure what
//! extctl sustains and what it costs compared with a bare HTTP handler.
//!
//! Every call is signed anew, with the current second as its timestamp and a fresh random
//! 32-character nonce, the way a checker signs: extctl refuses a nonce it has seen (and a
//! timestamp 15 s old), so recorded calls cannot be replayed, and a generator that reused
//! them would measure refusals. Signing costs about a microsecond, little beside a call.
//!
//! Each worker owns one keep-alive HTTP/1.1 connection with one call in flight, driven by
//! hyper's connection API in the worker's own task: no pool, no redirect or timeout layers, so
//! the generator stays cheap enough not to be what is measured (`--bare` shows its ceiling).
//! `--bare` and `--compare-bare` serve the same route in this process with a handler that only
//! reads the body and answers `200 {"status":"pass"}`, through the endpoint's own serving loop
//! ([`crate::serve::serve`]): the ratio is the cost of extctl's checks and store per call.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::http::{Request, StatusCode, header};
use axum::routing::patch;
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::checker::{
    Project, SignedCall, endpoint_url, parse_base_url, random_nonce, read_token, timestamp_now,
};
use crate::endpoint::STATUS_ROUTE;
use extctl_core::crd::ControlStatus;
use extctl_core::duration;
use extctl_core::tokens::SigningTokens;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("token"))]
pub(crate) struct BenchArgs {
    /// Base URL of extctl (or GitLab), e.g. http://127.0.0.1:8080 (a trailing /api/v4 is
    /// accepted too). Plain HTTP only.
    #[arg(long, value_name = "URL", value_parser = parse_base_url, required_unless_present = "bare")]
    pub(crate) url: Option<Url>,

    /// File holding the controls' signing token (one trailing line break is ignored).
    #[arg(long, group = "token")]
    pub(crate) token_file: Option<std::path::PathBuf>,
    /// Name of an environment variable holding the token.
    #[arg(long, group = "token", value_name = "VAR")]
    pub(crate) token_env: Option<String>,

    /// The controls called, as PROJECT:FIRST-LAST (e.g. 1:1-10000) or PROJECT:ID; calls go to
    /// them in turn (round-robin), all in the one project, all signed with the one token.
    #[arg(long, value_name = "PROJECT:FIRST-LAST", value_parser = ControlRange::parse, required_unless_present = "bare")]
    pub(crate) controls: Option<ControlRange>,

    /// Concurrent checkers: each one keep-alive connection with one call in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub(crate) concurrency: u16,

    /// How long to measure (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = duration::parse_positive)]
    pub(crate) duration: Duration,

    /// How long to call before measuring (connections opened, caches warm); not counted.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    pub(crate) warmup: Duration,

    /// The status every call reports: pass, fail or not_applicable.
    #[arg(long, default_value = "pass", value_parser = crate::checker::parse_status)]
    pub(crate) status: ControlStatus,

    /// Instead of --url, call a bare handler on the same route in this process (no checks,
    /// always 200): the ceiling of the generator and of HTTP on this machine. No token needed.
    #[arg(long, conflicts_with_all = ["url", "compare_bare"])]
    pub(crate) bare: bool,

    /// Measure a bare handler in this process first, then --url with the same settings, and
    /// print the ratio of their calls/s.
    #[arg(long, requires = "url")]
    pub(crate) compare_bare: bool,

    /// Print one JSON object per target instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Controls `first..=last` of one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlRange {
    pub project: i64,
    pub first: i64,
    pub last: i64,
}

impl ControlRange {
    /// `PROJECT:FIRST-LAST` or `PROJECT:ID`, ids from 1.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let usage = || format!("{text:?} is not PROJECT:FIRST-LAST or PROJECT:ID, such as 1:1-100");
        let id = |part: &str| part.parse::<i64>().ok().filter(|id| *id >= 1);
        let (project, controls) = text.split_once(':').ok_or_else(usage)?;
        let (first, last) = controls.split_once('-').unwrap_or((controls, controls));
        let range = Self {
            project: id(project).ok_or_else(usage)?,
            first: id(first).ok_or_else(usage)?,
            last: id(last).ok_or_else(usage)?,
        };
        match range.first <= range.last {
            true => Ok(range),
            false => Err(format!("{text:?}: the first control is after the last")),
        }
    }

    /// How many controls the range holds.
    pub fn count(&self) -> u64 {
        // `first >= 1`: the span fits.
        (self.last - self.first + 1).unsigned_abs()
    }

    /// The `n`th call's control, round-robin.
    pub fn nth(&self, n: u64) -> i64 {
        // Below `count()`, which fits an i64.
        self.first + (n % self.count()) as i64
    }
}

impl std::fmt::Display for ControlRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.first == self.last {
            true => write!(f, "{}:{}", self.project, self.first),
            false => write!(f, "{}:{}-{}", self.project, self.first, self.last),
        }
    }
}

/// One measurement's settings.
#[derive(Debug, Clone)]
pub struct Load {
    pub controls: ControlRange,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub status: ControlStatus,
    /// The signing token (any non-empty token for a bare handler).
    pub token: Vec<u8>,
}

/// What one measurement saw: calls started after the warm-up, until the end.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// `bare` or the base URL.
    pub target: String,
    pub controls: String,
    pub concurrency: usize,
    pub seconds: f64,
    pub calls: u64,
    pub calls_per_second: f64,
    /// Answers by HTTP status code.
    pub answers: BTreeMap<u16, u64>,
    /// Calls that got no answer (connection refused or closed).
    pub transport_errors: u64,
    pub latency_ms: Latency,
    /// The first answer other than 200 (code and body), or the first transport error.
    pub first_error: Option<String>,
    /// This target's calls/s over the bare handler's, with `--compare-bare`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_bare: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Figures {
    /// Whether every call was answered 200.
    pub fn all_ok(&self) -> bool {
        self.first_error.is_none() && self.answers.keys().all(|code| *code == 200)
    }

    /// The human-readable block.
    pub(crate) fn text(&self, load: &Load) -> String {
        let answers: Vec<String> = match self.answers.is_empty() {
            true => vec!["none".into()],
            false => self
                .answers
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect(),
        };
        let Latency { p50, p99, max } = self.latency_ms;
        let (run, warmup) = (
            duration::format(load.duration),
            duration::format(load.warmup),
        );
        let mut lines = vec![
            format!(
                "{}: controls {}, {} checkers, {run} after {warmup} warm-up",
                self.target, self.controls, self.concurrency
            ),
            format!(
                "  calls/s   {:.0} ({} calls in {:.2} s)",
                self.calls_per_second, self.calls, self.seconds
            ),
            format!("  answers   {}", answers.join(", ")),
            format!("  latency   p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms"),
        ];
        if self.transport_errors > 0 {
            lines.push(format!("  no answer {}", self.transport_errors));
        }
        if let Some(error) = &self.first_error {
            lines.push(format!("  first error: {error}"));
        }
        lines.join("\n") + "\n"
    }
}

/// `extctl bench`: measures, prints, and returns whether every answer was 200. An error is
/// a setup problem (no token, an https URL, a host that does not resolve); a server that
/// cannot be reached shows as calls without an answer.
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<bool> {
    let load = Load {
        // Only --bare goes without --controls, and any control will do there.
        controls: args.controls.unwrap_or(ControlRange {
            project: 1,
            first: 1,
            last: 1,
        }),
        concurrency: usize::from(args.concurrency),
        warmup: args.warmup,
        duration: args.duration,
        status: args.status,
        token: token(args)?,
    };
    let mut all_ok = true;
    let mut bare_rate = None;
    if args.bare || args.compare_bare {
        let figures = measure_bare(&load).await?;
        bare_rate = Some(figures.calls_per_second);
        all_ok &= show(&figures, &load, args.json);
    }
    if let Some(url) = &args.url {
        let mut figures = measure(url, &load).await?;
        figures.ratio_to_bare = bare_rate.map(|bare| figures.calls_per_second / bare);
        all_ok &= show(&figures, &load, args.json);
        if let (Some(ratio), false) = (figures.ratio_to_bare, args.json) {
            println!("ratio to bare: {ratio:.3} of the bare handler's calls/s");
        }
    }
    Ok(all_ok)
}

fn token(args: &BenchArgs) -> anyhow::Result<Vec<u8>> {
    if args.token_file.is_none() && args.token_env.is_none() {
        match args.bare {
            true => return Ok(b"bare".to_vec()),
            false => bail!("give the controls' token with --token-file or --token-env"),
        }
    }
    let token = read_token(args.token_file.as_deref(), args.token_env.as_deref())?;
    let tokens = SigningTokens::single(&token).context("the token is empty")?;
    Ok(tokens.current().to_vec())
}

/// Prints one target's figures (with `--json`, the first error on stderr too); whether all
/// its answers were 200.
fn show(figures: &Figures, load: &Load, json: bool) -> bool {
    if !json {
        print!("{}", figures.text(load));
        return figures.all_ok();
    }
    let line = serde_json::to_string(figures).expect("figures serialize");
    println!("{line}");
    if let Some(error) = &figures.first_error {
        let target = &figures.target;
        eprintln!("extctl bench: {target}: not every call was answered 200; first: {error}");
    }
    figures.all_ok()
}

/// Measures a bare handler on the same route, served in this process.
pub async fn measure_bare(load: &Load) -> anyhow::Result<Figures> {
    let server = BareServer::start().await?;
    let mut figures = measure(&server.url, load).await?;
    figures.target = "bare".into();
    Ok(figures)
}

/// A handler on the status route that checks nothing: reads the body, answers
/// `200 {"status":"pass"}`. Served on 127.0.0.1 until dropped.
pub(crate) struct BareServer {
    pub(crate) url: Url,
    task: tokio::task::JoinHandle<()>,
}

impl BareServer {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = Url::parse(&format!("http://{}", listener.local_addr()?))?;
        let router = Router::new().route(STATUS_ROUTE, patch(bare_status));
        // Served as extctl serves it, with its default request timeout for the headers.
        let header_timeout = std::time::Duration::from_secs(10);
        let serve = crate::serve::serve(listener, router, header_timeout, std::future::pending());
        Ok(Self {
            url,
            task: tokio::spawn(serve),
        })
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bare_status(_body: Bytes) -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"pass"}"#,
    )
}

/// Where the calls go: resolved once.
struct Target {
    base: Url,
    address: SocketAddr,
    host: String,
}

impl Target {
    fn new(base: &Url) -> anyhow::Result<Self> {
        if base.scheme() != "http" {
            bail!("{base}: extctl bench speaks plain HTTP only");
        }
        let address = base
            .socket_addrs(|| None)
            .with_context(|| format!("cannot resolve {base}"))?
            .into_iter()
            .next()
            .with_context(|| format!("{base} resolves to no address"))?;
        let host = base.host_str().context("a base URL has a host")?;
        let host = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Self {
            base: base.clone(),
            address,
            host,
        })
    }
}

/// What every worker shares.
struct Shared {
    target: Target,
    load: Load,
    calls: AtomicU64,
    measure_from: Instant,
    until: Instant,
}

impl Shared {
    /// The next call, freshly signed, for the next control in turn.
    fn request(&self) -> anyhow::Result<Request<String>> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let controls = self.load.controls;
        let call = SignedCall::new(
            &self.load.token,
            &Project::Id(controls.project),
            controls.nth(n),
            self.load.status,
            timestamp_now(),
            random_nonce()?,
        );
        let url = endpoint_url(&self.target.base, &call.path);
        let mut request = Request::patch(url.path())
            .header(header::HOST, &self.target.host)
            .header(header::CONTENT_TYPE, "application/json");
        for (name, value) in call.headers() {
            request = request.header(name, value);
        }
        Ok(request.body(call.json_body())?)
    }
}

/// Puts `load` on `base` and measures it. An error is a setup problem; refusals and lost
/// connections are counted in the figures.
pub async fn measure(base: &Url, load: &Load) -> anyhow::Result<Figures> {
    let start = Instant::now();
    let shared = Arc::new(Shared {
        target: Target::new(base)?,
        load: load.clone(),
        calls: AtomicU64::new(0),
        measure_from: start + load.warmup,
        until: start + load.warmup + load.duration,
    });
    let mut workers = JoinSet::new();
    for _ in 0..load.concurrency {
        workers.spawn(worker(shared.clone()));
    }
    let mut total = Record::default();
    while let Some(record) = workers.join_next().await {
        total.merge(record?);
    }
    Ok(total.figures(base, &shared))
}

/// The longest latency told apart: an hour.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// What one worker saw.
struct Record {
    /// Latencies in nanoseconds, to 3 significant digits (0.1%): quantiles without keeping
    /// or sorting every sample.
    latencies_ns: Histogram<u64>,
    answers: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    finished: Option<Instant>,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            latencies_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("valid bounds and 3 significant digits"),
            answers: BTreeMap::new(),
            transport_errors: 0,
            first_error: None,
            finished: None,
        }
    }
}

impl Record {
    fn answer(&mut self, code: StatusCode, latency: Duration, body: &[u8]) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // Beyond an hour, counted as an hour rather than lost.
        self.latencies_ns.saturating_record(nanos);
        *self.answers.entry(code.as_u16()).or_default() += 1;
        if code != StatusCode::OK && self.first_error.is_none() {
            let body = String::from_utf8_lossy(body);
            self.first_error = Some(format!("HTTP {}: {}", code.as_u16(), body.trim()));
        }
    }

    fn transport_error(&mut self, error: &anyhow::Error) {
        self.transport_errors += 1;
        self.first_error
            .get_or_insert_with(|| format!("no answer: {error:#}"));
    }

    fn merge(&mut self, other: Record) {
        self.latencies_ns
            .add(&other.latencies_ns)
            .expect("histograms of the same bounds merge");
        for (code, count) in other.answers {
            *self.answers.entry(code).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.finished = self.finished.max(other.finished);
    }

    fn figures(self, base: &Url, shared: &Shared) -> Figures {
        let end = self.finished.unwrap_or(shared.until);
        let seconds = end
            .saturating_duration_since(shared.measure_from)
            .as_secs_f64();
        let calls = self.latencies_ns.len();
        let ms = |nanos: u64| nanos as f64 / 1e6;
        let quantile = |q: f64| ms(self.latencies_ns.value_at_quantile(q));
        Figures {
            target: base.to_string(),
            controls: shared.load.controls.to_string(),
            concurrency: shared.load.concurrency,
            seconds,
            calls,
            calls_per_second: if seconds > 0.0 {
                calls as f64 / seconds
            } else {
                0.0
            },
            answers: self.answers,
            transport_errors: self.transport_errors,
            latency_ms: Latency {
                p50: quantile(0.50),
                p99: quantile(0.99),
                max: ms(self.latencies_ns.max()),
            },
            first_error: self.first_error,
            ratio_to_bare: None,
        }
    }
}

/// One checker: calls over one connection until the end, reconnecting when it is lost.
async fn worker(shared: Arc<Shared>) -> Record {
    let mut record = Record::default();
    while Instant::now() < shared.until {
        if let Err(error) = connection(&shared, &mut record).await {
            if Instant::now() >= shared.measure_from {
                record.transport_error(&error);
            }
            // A refused connection fails at once: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    record.finished = Some(Instant::now());
    record
}

/// Opens a connection and calls over it, driving it in this task, until the end or an error.
async fn connection(shared: &Shared, record: &mut Record) -> anyhow::Result<()> {
    let stream = TcpStream::connect(shared.target.address).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let lost = tokio::select! {
        ended = connection => Some(ended),
        called = calls(&mut sender, shared, record) => return called,
    };
    match lost {
        Some(Err(error)) => Err(error.into()),
        _ => bail!("the server closed the connection"),
    }
}

/// Calls one after another over `sender` until the end.
async fn calls(
    sender: &mut SendRequest<String>,
    shared: &Shared,
    record: &mut Record,
) -> anyhow::Result<()> {
    loop {
        let started = Instant::now();
        if started >= shared.until {
            return Ok(());
        }
        let request = shared.request()?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let code = response.status();
        let body = read_body(response.into_body()).await?;
        if started >= shared.measure_from {
            record.answer(code, started.elapsed(), &body);
        }
    }
}

/// How much of an answer is kept (an answer is a short JSON object).
const MAX_ANSWER_BYTES: usize = 4096;

/// Reads the whole answer (so the connection can carry the next call), keeping its start.
async fn read_body(mut body: Incoming) -> anyhow::Result<Vec<u8>> {
    let mut kept = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            let room = MAX_ANSWER_BYTES.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_ranges_are_parsed_and_walked_in_turn() {
        let range = ControlRange::parse("1:3-5").unwrap();
        assert_eq!((range.project, range.first, range.last), (1, 3, 5));
        let walked: Vec<i64> = (0..4).map(|n| range.nth(n)).collect();
        assert_eq!(walked, [3, 4, 5, 3]);
        assert_eq!(range.to_string(), "1:3-5");
        let one = ControlRange::parse("42:7").unwrap();
        assert_eq!((one.nth(0), one.nth(9)), (7, 7));
        assert_eq!(one.to_string(), "42:7");
        for bad in ["7", "1:0", "0:1", "1:5-3", "1:a-b", "1:1-", ":1"] {
            assert!(ControlRange::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quantiles_come_from_the_histogram_to_a_thousandth() {
        let mut record = Record::default();
        for ms in 1..=100 {
            record.answer(StatusCode::OK, Duration::from_millis(ms), b"");
        }
        let mut other = Record::default();
        other.answer(StatusCode::OK, Duration::from_millis(1000), b"");
        record.merge(other);
        let near = |value: u64, ms: u64| value.abs_diff(ms * 1_000_000) <= ms * 1_000;
        let latencies = &record.latencies_ns;
        assert_eq!(latencies.len(), 101);
        let median = latencies.value_at_quantile(0.5);
        assert!(near(median, 51), "{median}");
        assert!(near(latencies.value_at_quantile(0.99), 100));
        assert!(near(latencies.max(), 1000));
    }

    #[tokio::test]
    async fn a_bare_handler_answers_every_call() {
        let load = Load {
            controls: ControlRange::parse("1:1-3").unwrap(),
            concurrency: 2,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(300),
            status: ControlStatus::Pass,
            token: b"t".to_vec(),
        };
        let figures = measure_bare(&load).await.unwrap();
        assert!(figures.all_ok(), "{figures:?}");
        assert!(figures.calls > 0);
        assert_eq!(figures.answers.keys().collect::<Vec<_>>(), [&200]);
    }
}

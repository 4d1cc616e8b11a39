//! Endpoint load: the release `extctl dev` under many checkers' signed calls, next to a bare
//! handler on the same route, the same load generator (`extctl bench`'s) and the same machine.
//!
//!     cargo bench --bench endpoint_load
//!     EXTCTL_BENCH_SCENARIOS=one,hot EXTCTL_BENCH_CONTROLS=1000 cargo bench --bench endpoint_load
//!
//! Scenarios (`EXTCTL_BENCH_SCENARIOS`, comma-separated, default all):
//! - `one`: one control, every checker calling it;
//! - `hot`: `EXTCTL_BENCH_HOT` controls (64), calls spread over all of them;
//! - `many`: `EXTCTL_BENCH_CONTROLS` controls (10,000), calls spread over all of them;
//! - `large`: `EXTCTL_BENCH_LARGE` controls (100,000), calls spread over all of them;
//! - `ready`: time from start to `/readyz` answering 200, for the `many` and `large` counts
//!   (taken from those scenarios when they ran);
//! - `sigterm`: time from SIGTERM to exit, under full load, with the `many` count.
//!
//! Each load scenario first measures the bare handler (in this process), then starts
//! `extctl dev --json --listen 127.0.0.1:0` on a manifest with the controls (ping off, one
//! Secret), waits for `/readyz`, and measures it with the same load: `EXTCTL_BENCH_CONCURRENCY`
//! checkers (32), `EXTCTL_BENCH_WARMUP` (1 s) then `EXTCTL_BENCH_DURATION` (5 s), each call
//! signed with a fresh timestamp and nonce. `EXTCTL_BENCH_READY_TIMEOUT` (600 s) bounds a start.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use extctl::{ControlRange, Figures, Load};
use extctl_core::crd::ControlStatus;
use reqwest::Url;
use support::setting;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOKEN: &str = "bench-token-value";

fn wanted(scenario: &str) -> bool {
    match std::env::var("EXTCTL_BENCH_SCENARIOS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|s| s.trim() == scenario),
        _ => true,
    }
}

fn load(controls: u64, hot: u64) -> Load {
    Load {
        controls: ControlRange {
            project: 1,
            first: 1,
            last: i64::try_from(hot.min(controls)).expect("a control count fits an id"),
        },
        concurrency: setting("EXTCTL_BENCH_CONCURRENCY", 32) as usize,
        warmup: Duration::from_secs(setting("EXTCTL_BENCH_WARMUP", 1)),
        duration: Duration::from_secs(setting("EXTCTL_BENCH_DURATION", 5)),
        status: ControlStatus::Pass,
        token: TOKEN.as_bytes().to_vec(),
    }
}

/// One load scenario's row.
struct Row {
    scenario: &'static str,
    controls: u64,
    hot: u64,
    extctl: Figures,
    bare: Figures,
    peak_rss_kib: u64,
}

/// One start-up's row.
struct Start {
    controls: u64,
    listening: Duration,
    ready: Duration,
}

#[tokio::main]
async fn main() {
    // reqwest (for /readyz) needs a TLS provider chosen, as extctl's main does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hot = setting("EXTCTL_BENCH_HOT", 64);
    let many = setting("EXTCTL_BENCH_CONTROLS", 10_000);
    let large = setting("EXTCTL_BENCH_LARGE", 100_000);
    let mut rows = Vec::new();
    let mut starts = Vec::new();
    for (scenario, controls, hot) in [
        ("one", 1, 1),
        ("hot", hot, hot),
        ("many", many, many),
        ("large", large, large),
    ] {
        if wanted(scenario) {
            let (row, start) = load_scenario(scenario, controls, hot).await;
            rows.push(row);
            starts.extend(start);
        }
    }
    if wanted("ready") {
        for controls in [many, large] {
            if !starts.iter().any(|s| s.controls == controls) {
                let dir = manifest_dir(controls);
                let (dev, start) = Dev::start(dir.path(), controls).await;
                starts.extend(start);
                dev.stop().await;
            }
        }
    }
    let stop = match wanted("sigterm") {
        true => Some(sigterm_scenario(many).await),
        false => None,
    };
    print_tables(&rows, &starts, stop.as_ref());
}

/// Bare handler first (nothing else running), then extctl dev with `controls`, `hot` of them
/// called.
async fn load_scenario(scenario: &'static str, controls: u64, hot: u64) -> (Row, Option<Start>) {
    let load = load(controls, hot);
    eprintln!("{scenario}: bare handler, {} checkers", load.concurrency);
    let bare = extctl::measure_bare(&load)
        .await
        .expect("bare handler measured");
    let dir = manifest_dir(controls);
    let (dev, start) = Dev::start(dir.path(), controls).await;
    eprintln!("{scenario}: extctl dev, {controls} controls, {hot} called");
    let extctl = extctl::measure(&dev.url, &load)
        .await
        .expect("extctl measured");
    if let Some(error) = &extctl.first_error {
        eprintln!("{scenario}: not every call was answered 200; first: {error}");
    }
    let peak_rss_kib = dev.peak_rss_kib();
    dev.stop().await;
    let row = Row {
        scenario,
        controls,
        hot,
        extctl,
        bare,
        peak_rss_kib,
    };
    (row, start)
}

/// Time from SIGTERM to exit while every checker is calling.
struct Stop {
    controls: u64,
    exit: Duration,
    status: String,
    figures: Figures,
}

async fn sigterm_scenario(controls: u64) -> Stop {
    let load = load(controls, controls);
    let dir = manifest_dir(controls);
    let (mut dev, _) = Dev::start(dir.path(), controls).await;
    eprintln!("sigterm: extctl dev, {controls} controls, SIGTERM under load");
    let url = dev.url.clone();
    // Halfway through the measured part: warm-up over, every connection busy.
    let settle = load.warmup + load.duration / 2;
    let calling = tokio::spawn(async move { extctl::measure(&url, &load).await });
    tokio::time::sleep(settle).await;
    let signalled = Instant::now();
    assert!(dev.signal("TERM"), "SIGTERM sent to extctl dev");
    let status = dev.child.wait().await.expect("extctl dev waited for");
    let exit = signalled.elapsed();
    let figures = calling.await.unwrap().expect("load measured");
    Stop {
        controls,
        exit,
        status: status.to_string(),
        figures,
    }
}

/// A manifest with one Secret and `controls` ExternalControls (ping off), in a tempdir.
fn manifest_dir(controls: u64) -> tempfile::TempDir {
    use std::fmt::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bench-token\nstringData:\n  token: {TOKEN}\n"
    );
    for id in 1..=controls {
        write!(
            yaml,
            "---\napiVersion: extctl.dev/v1alpha1\nkind: ExternalControl\nmetadata:\n  name: c{id}\n\
             spec:\n  projectId: 1\n  controlId: {id}\n  pingEnabled: false\n  secretRef:\n    name: bench-token\n"
        )
        .expect("write to a String");
    }
    std::fs::write(dir.path().join("bench.yaml"), yaml).expect("manifest written");
    dir
}

/// A running `extctl dev`; stopped when dropped (even by a panic).
struct Dev {
    child: Child,
    url: Url,
}

impl Drop for Dev {
    /// SIGTERM, so that extctl dev removes its token files; killed (`kill_on_drop`) if it has
    /// not exited within 5 s.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) || !self.signal("TERM") {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Dev {
    /// Starts extctl dev on `manifests`, waits for its `listening` line and for `/readyz`.
    /// No start-up row when it does not get ready in time.
    async fn start(manifests: &Path, controls: u64) -> (Self, Option<Start>) {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_extctl"))
            .args([
                "dev",
                "--json",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--manifests")
            .arg(manifests)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("extctl dev started");
        let url = listening_url(&mut child).await;
        let listening = started.elapsed();
        let dev = Self { child, url };
        let limit = Duration::from_secs(setting("EXTCTL_BENCH_READY_TIMEOUT", 600));
        let ready = dev.wait_ready(started + limit).await.then(|| Start {
            controls,
            listening,
            ready: started.elapsed(),
        });
        match &ready {
            Some(start) => eprintln!(
                "extctl dev, {controls} controls: listening after {:.2} s, ready after {:.2} s",
                start.listening.as_secs_f64(),
                start.ready.as_secs_f64()
            ),
            None => eprintln!("extctl dev, {controls} controls: not ready after {limit:?}"),
        }
        (dev, ready)
    }

    async fn wait_ready(&self, deadline: Instant) -> bool {
        let http = reqwest::Client::new();
        let readyz = self.url.join("readyz").expect("a URL");
        while Instant::now() < deadline {
            let answer = http.get(readyz.clone()).send().await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Sends signal `name` (such as `TERM`); whether it was delivered.
    fn signal(&self, name: &str) -> bool {
        let Some(pid) = self.child.id() else {
            return false;
        };
        let sent = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status();
        sent.is_ok_and(|status| status.success())
    }

    fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id().unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, as in a cluster; killed if it has not exited within 20 s.
    async fn stop(mut self) {
        if !self.signal("TERM") {
            return;
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("extctl dev did not exit within 20 s of SIGTERM; killed");
        }
    }
}

/// Reads stdout up to the `listening` event, then drains the rest in the background (a full
/// pipe would block extctl dev's console).
async fn listening_url(child: &mut Child) -> Url {
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await.expect("stdout readable") {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["event"] == "listening" {
            let url = event["url"].as_str().expect("listening has a url");
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Url::parse(url).expect("listening url parses");
        }
    }
    panic!("extctl dev exited before listening");
}

fn print_tables(rows: &[Row], starts: &[Start], stop: Option<&Stop>) {
    if !rows.is_empty() {
        println!(
            "\n| scenario | controls | hot controls | calls/s extctl | calls/s bare | ratio | p50 extctl | p99 extctl | not 200 | peak RSS |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    for row in rows {
        let (e, b) = (&row.extctl, &row.bare);
        let not_ok: u64 = e
            .answers
            .iter()
            .filter(|(code, _)| **code != 200)
            .map(|(_, n)| n)
            .sum::<u64>()
            + e.transport_errors;
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} ms | {:.2} ms | {not_ok} | {:.0} MiB |",
            row.scenario,
            row.controls,
            row.hot,
            e.calls_per_second,
            b.calls_per_second,
            e.calls_per_second / b.calls_per_second,
            e.latency_ms.p50,
            e.latency_ms.p99,
            row.peak_rss_kib as f64 / 1024.0,
        );
    }
    if !starts.is_empty() {
        println!("\n| controls | listening after | ready after |\n|---|---|---|");
    }
    for start in starts {
        println!(
            "| {} | {:.2} s | {:.2} s |",
            start.controls,
            start.listening.as_secs_f64(),
            start.ready.as_secs_f64()
        );
    }
    if let Some(stop) = stop {
        let f = &stop.figures;
        println!(
            "\nSIGTERM under load ({} controls, {} checkers): exited {:.0} ms after the signal ({}); \
             answers {:?}; calls or reconnections without an answer {} (after the exit, each \
             checker retries every 10 ms until the load's end)",
            stop.controls,
            f.concurrency,
            stop.exit.as_secs_f64() * 1000.0,
            stop.status,
            f.answers,
            f.transport_errors,
        );
    }
}

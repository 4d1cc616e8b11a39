//! Ping at scale: N controls (default 10,000) on their own schedules, one `extctl run` (release
//! build) against the API harness. Prints reset lateness (p50/p99/max), API writes per reset,
//! LIST calls while measuring, and the operator's peak RSS.
//!
//!     cargo bench --bench ping_scale
//!     EXTCTL_BENCH_CONTROLS=2000 EXTCTL_BENCH_INTERVAL=20 cargo bench --bench ping_scale
//!
//! Controls are created evenly over one interval (their schedules are anchored at creation),
//! then one full interval of resets is measured: every control should reset exactly once.
//!
//! Lateness is measured from the persisted due time (`nextPingTime` before the reset) to the
//! moment this process sees the reset arrive through a watch, so it over-states the real
//! lateness by the watch delivery delay.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use extctl::crd::ExternalControl;
use futures::{StreamExt, TryStreamExt};
use harness::ApiServer;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let controls = setting("EXTCTL_BENCH_CONTROLS", 10_000);
    let interval = setting("EXTCTL_BENCH_INTERVAL", 60);
    let server = ApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.write_kubeconfig(dir.path());
    let client = server.client();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "token", "namespace": "default"}, "stringData": {"token": "t"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_extctl"))
        .args(["run", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Controls arrive evenly over one interval, so their due times spread as schedules anchored
    // at creation do in a real cluster: this is the steady state, at `controls / interval`
    // resets per second.
    let api: Api<ExternalControl> = Api::namespaced(client.clone(), "default");
    let created = Instant::now();
    let step = Duration::from_secs(interval) / u32::try_from(controls).unwrap().max(1);
    futures::stream::iter(0..controls)
        .then(|i| async move {
            tokio::time::sleep_until((created + step * u32::try_from(i).unwrap()).into()).await;
            i
        })
        .map(|i| {
            let api = api.clone();
            async move {
                let control: ExternalControl = serde_json::from_value(json!({
                    "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
                    "metadata": {"name": format!("c{i}"), "namespace": "default"},
                    "spec": {"projectId": 1, "controlId": i + 1, "pingInterval": format!("{interval}s"),
                             "secretRef": {"name": "token"}}
                }))
                .unwrap();
                api.create(&PostParams::default(), &control).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<()>()
        .await;
    println!(
        "created {controls} controls in {:.1} s",
        created.elapsed().as_secs_f64()
    );

    // Measure one full interval of resets, starting once every control has been scheduled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.reset_requests();
    let window = Duration::from_secs(interval);
    let latenesses = observe_resets(&api, window).await;
    let requests = server.requests();
    let writes = requests.iter().filter(|r| r.is_write()).count();
    let lists = requests
        .iter()
        .filter(|r| {
            r.method == "GET"
                && !r.is_watch()
                && !r.path.contains("/namespaces/default/externalcontrols/")
        })
        .count();
    let peak_rss = peak_rss_kib(operator.id().unwrap());
    operator.kill().await.unwrap();

    report(controls, interval, &latenesses, writes, lists, peak_rss);
}

/// Reset lateness in milliseconds, for every reset seen through a watch during `window`.
async fn observe_resets(api: &Api<ExternalControl>, window: Duration) -> Vec<f64> {
    let mut due: HashMap<String, (Option<Timestamp>, Option<Timestamp>)> = HashMap::new();
    let mut latenesses = Vec::new();
    let deadline = Instant::now() + window;
    let mut version = "0".to_string();
    while Instant::now() < deadline {
        let params = WatchParams::default().timeout(window.as_secs().max(1) as u32);
        let mut stream = api.watch(&params, &version).await.unwrap().boxed();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(Ok(Some(event))) = tokio::time::timeout(remaining, stream.try_next()).await
            else {
                break;
            };
            let (WatchEvent::Added(control) | WatchEvent::Modified(control)) = event else {
                continue;
            };
            let seen = Timestamp::now();
            version = control.metadata.resource_version.clone().unwrap_or(version);
            let status = control.status.unwrap_or_default();
            let last_ping = status.last_ping_time.map(|t| t.0);
            let next_ping = status.next_ping_time.map(|t| t.0);
            let name = control.metadata.name.unwrap_or_default();
            let before = due.insert(name, (last_ping, next_ping));
            // A new lastPingTime is a reset; it was due at the nextPingTime seen before it.
            if let Some((before_ping, Some(before_due))) = before
                && last_ping.is_some()
                && last_ping != before_ping
            {
                latenesses.push(seen.duration_since(before_due).as_secs_f64() * 1000.0);
            }
        }
    }
    latenesses
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn report(
    controls: u64,
    interval: u64,
    latenesses: &[f64],
    writes: usize,
    lists: usize,
    peak_rss_kib: u64,
) {
    let mut sorted = latenesses.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let resets = sorted.len();
    println!(
        "controls: {controls}, interval: {interval} s ({:.0} resets/s), resets observed in one interval: {resets}",
        controls as f64 / interval as f64
    );
    println!(
        "reset lateness (ms): p50 {:.0}, p99 {:.0}, max {:.0}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    println!(
        "resets later than 1 s: {}",
        sorted.iter().filter(|l| **l > 1000.0).count()
    );
    println!(
        "API writes per reset: {:.2} ({writes} writes / {resets} resets); LIST calls while measuring: {lists}",
        writes as f64 / resets.max(1) as f64
    );
    println!("operator peak RSS: {:.1} MiB", peak_rss_kib as f64 / 1024.0);
}

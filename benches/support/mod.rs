//! Shared pieces of the benches that run the release `extctl run` against the API harness
//! (`tests/harness/`, in the bench's process): settings from the environment, the operator
//! process and its CPU and memory, the controls and Secrets they need, and waiting for them.

// Each bench includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use extctl::crd::ExternalControl;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use reqwest::Url;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

#[path = "../../tests/harness/mod.rs"]
pub mod harness;

use harness::ApiServer;

/// Where the benches create their controls and the Secret they use.
pub const NAMESPACE: &str = "default";
pub const GROUP_VERSION: &str = "extctl.dev/v1alpha1";

/// The number in the environment variable `name`, or `default` when unset or not a number.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `extctl run` (release build) on the harness, with the flags in `EXTCTL_BENCH_ARGS` added;
/// killed when dropped.
pub struct Operator {
    child: Child,
    pub url: Url,
}

impl Operator {
    /// Starts it, finds its address in its log (as `tests/support` does), waits for `/readyz`.
    pub async fn start(kubeconfig: &Path) -> Self {
        let extra = std::env::var("EXTCTL_BENCH_ARGS").unwrap_or_default();
        let mut child = Command::new(env!("CARGO_BIN_EXE_extctl"))
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(extra.split_whitespace())
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("extctl starts");
        let address = listen_address(child.stderr.take().unwrap()).await;
        let url = Url::parse(&format!("http://{address}")).unwrap();
        wait_readyz(&url).await;
        Self { child, url }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("extctl is running")
    }

    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        (status.unwrap_or_default().lines())
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Reads extctl's log up to `listen=ADDRESS`, then drains it, passing warnings and errors on.
async fn listen_address(stderr: ChildStderr) -> String {
    let mut lines = BufReader::new(stderr).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        let found = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="));
        if let Some(address) = found.map(str::to_owned) {
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("WARN") || line.contains("ERROR") {
                        eprintln!("extctl: {line}");
                    }
                }
            });
            return address;
        }
    }
    panic!("extctl exited before logging its address");
}

/// Polls `/readyz` every 50 ms until it answers with success, for at most 20 s.
async fn wait_readyz(url: &Url) {
    let (http, readyz) = (reqwest::Client::new(), url.join("readyz").unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(http.get(readyz.clone()).send().await).is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "extctl not ready within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The CPU time a process's threads have used (`/proc/PID/task/*/schedstat`).
pub fn cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let schedstats =
        tasks.filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok());
    let nanos = schedstats.filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok());
    Duration::from_nanos(nanos.sum())
}

pub async fn sleep_until(at: Timestamp) {
    let wait = at.duration_since(Timestamp::now());
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
}

/// A Secret `name` in `namespace` with `data` (key, value).
pub async fn create_secret<const N: usize>(
    server: &ApiServer,
    namespace: &str,
    name: &str,
    data: [(&str, Vec<u8>); N],
) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key.to_owned(), ByteString(value)))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(server.client(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// A control `name` in [`NAMESPACE`] with `spec`.
pub fn control(name: &str, spec: Value) -> ExternalControl {
    serde_json::from_value(json!({
        "apiVersion": GROUP_VERSION, "kind": "ExternalControl",
        "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec
    }))
    .unwrap()
}

/// Creates `controls` (name, spec) in [`NAMESPACE`], 32 at a time, each no earlier than `step`
/// after the one before it (`Duration::ZERO`: as fast as they go).
pub async fn create_controls(
    server: &ApiServer,
    controls: impl IntoIterator<Item = (String, Value)>,
    step: Duration,
) {
    let api: Api<ExternalControl> = Api::namespaced(server.client(), NAMESPACE);
    let started = Instant::now();
    futures::stream::iter(controls.into_iter().zip(0u32..))
        .then(|(control, i)| async move {
            let at = started + step * i;
            if at > Instant::now() {
                tokio::time::sleep_until(at.into()).await;
            }
            control
        })
        .map(|(name, spec)| {
            let (api, control) = (api.clone(), control(&name, spec));
            async move { api.create(&PostParams::default(), &control).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// Waits until `count` controls have `Ready` True (read from the store, not through HTTP), for
/// at most 300 s.
pub async fn wait_ready(server: &ApiServer, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let controls = server.list_objects(GROUP_VERSION, "externalcontrols", Some(NAMESPACE));
        let ready = controls.iter().filter(|c| is_ready(c)).count() as u64;
        if ready == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {count} controls ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_ready(control: &Value) -> bool {
    let conditions = control["status"]["conditions"].as_array();
    conditions.is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

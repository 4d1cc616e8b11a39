//! Shared pieces of the benches that run the release `extctl run` against the genuine
//! kube-apiserver and etcd the tests use (`tests/support/apiserver/`: one per bench process,
//! TLS, RBAC, the CRDs of `crds/` installed): settings from the environment, the bench's
//! namespace, the operator process and its CPU and memory, the API server's CPU, the controls
//! and Secrets they need, and waiting for them.

// Each bench includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use extctl_core::crd::ExternalControl;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use reqwest::Url;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

#[path = "../../tests/support/apiserver/mod.rs"]
pub mod apiserver;
// `apiserver::binaries` names its build directory with `super::super::pytools::fnv1a`.
#[path = "../../tests/support/pytools.rs"]
mod pytools;

// Not every bench uses every one (`endpoint_load` includes this module for `setting` only).
#[allow(unused_imports)]
pub use apiserver::{ADMIN_TOKEN, Proxy, Server};

/// Where the benches create their controls and the Secret they use (a namespace of the bench's
/// own server, created by [`Cluster::start`]).
pub const NAMESPACE: &str = "extctl-bench";
pub const GROUP_VERSION: &str = "extctl.dev/v1alpha1";

/// The number in the environment variable `name`, or `default` when unset or not a number.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bench's API server (started, or its binaries built, on first use), [`NAMESPACE`] on it,
/// the administrator's client (straight to the server), and a scratch directory.
pub struct Cluster {
    pub server: &'static Server,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start() -> Self {
        let started = Instant::now();
        let server = tokio::task::spawn_blocking(apiserver::server)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        eprintln!(
            "kube-apiserver {} at {} ({:.1} s to start)",
            apiserver::KUBERNETES_VERSION,
            server.url,
            started.elapsed().as_secs_f64()
        );
        let client = server.admin_client(NAMESPACE).await;
        create_namespace(&client, NAMESPACE).await;
        Self {
            server,
            client,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A kubeconfig file for `server_url` (the server's, or a proxy's in front of it) with the
    /// admin token and [`NAMESPACE`] as the default namespace.
    pub fn kubeconfig(&self, server_url: &str, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = self.server.kubeconfig(server_url, ADMIN_TOKEN, NAMESPACE);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The PIDs of this bench's kube-apiserver and etcd: the processes whose command line
    /// names the server's run directory.
    pub fn server_pids(&self) -> Vec<u32> {
        let dir = self.server.dir.to_string_lossy().into_owned();
        let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        entries
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains(&dir)
                    .then_some(pid)
            })
            .filter(|pid| *pid != std::process::id())
            .collect()
    }
}

pub async fn create_namespace(client: &kube::Client, name: &str) {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

/// `extctl run` (release build) with `args` and the flags in `EXTCTL_BENCH_ARGS` added;
/// killed when dropped.
pub struct Operator {
    child: Child,
    pub url: Url,
}

impl Operator {
    /// Starts it, finds its address in its log (as `tests/support` does), waits for `/readyz`
    /// (its controls listed).
    pub async fn start(kubeconfig: &Path, args: &[&str]) -> Self {
        let extra = std::env::var("EXTCTL_BENCH_ARGS").unwrap_or_default();
        let mut child = Command::new(env!("CARGO_BIN_EXE_extctl"))
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .args(extra.split_whitespace())
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdout(Stdio::null())
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

    /// Stops it as Kubernetes stops a pod (SIGTERM; it gives up its Lease), waiting up to 20 s
    /// before killing it.
    pub async fn stop(mut self) {
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: kill(2) on the PID of a child this process started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let exited = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        if exited.is_err() {
            eprintln!("extctl did not stop within 20 s of SIGTERM; killed");
            let _ = self.child.kill().await;
        }
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

/// Polls `/readyz` every 50 ms until it answers with success, for at most 60 s.
async fn wait_readyz(url: &Url) {
    let (http, readyz) = (reqwest::Client::new(), url.join("readyz").unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(http.get(readyz.clone()).send().await).is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "extctl not ready within 60 s");
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

/// The CPU time of several processes together.
pub fn cpu_time_of(pids: &[u32]) -> Duration {
    pids.iter().map(|pid| cpu_time(*pid)).sum()
}

pub async fn sleep_until(at: Timestamp) {
    let wait = at.duration_since(Timestamp::now());
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
}

/// A Secret `name` in `namespace` with `data` (key, value).
pub async fn create_secret<const N: usize>(
    client: &kube::Client,
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
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// A control `name` in `namespace` with `spec`.
pub fn control(namespace: &str, name: &str, spec: Value) -> ExternalControl {
    serde_json::from_value(json!({
        "apiVersion": GROUP_VERSION, "kind": "ExternalControl",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec
    }))
    .unwrap()
}

/// Creates `controls` (name, spec) in `namespace`, 32 at a time, each no earlier than `step`
/// after the one before it (`Duration::ZERO`: as fast as they go); `then` runs after each
/// create (with the control's name).
pub async fn create_controls_then<F, Fut>(
    client: &kube::Client,
    namespace: &str,
    controls: impl IntoIterator<Item = (String, Value)>,
    step: Duration,
    then: F,
) where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let api: Api<ExternalControl> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let then = &then;
    futures::stream::iter(controls.into_iter().zip(0u32..))
        .then(|(control, i)| async move {
            let at = started + step * i;
            if at > Instant::now() {
                tokio::time::sleep_until(at.into()).await;
            }
            control
        })
        .map(|(name, spec)| {
            let (api, control) = (api.clone(), control(namespace, &name, spec));
            async move {
                api.create(&PostParams::default(), &control).await.unwrap();
                then(name).await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// [`create_controls_then`] in [`NAMESPACE`] with nothing after each create.
pub async fn create_controls(
    client: &kube::Client,
    controls: impl IntoIterator<Item = (String, Value)>,
    step: Duration,
) {
    create_controls_then(client, NAMESPACE, controls, step, |_| async {}).await;
}

/// Waits until `count` controls in [`NAMESPACE`] have `Ready` True (listed every 500 ms), for
/// at most 300 s.
pub async fn wait_ready(client: &kube::Client, count: u64) {
    let api: Api<ExternalControl> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let controls = api.list(&ListParams::default()).await.unwrap().items;
        let ready = controls.iter().filter(|c| is_ready(c)).count() as u64;
        if ready == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {count} controls ready"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_ready(control: &ExternalControl) -> bool {
    let conditions = control.status.as_ref().map(|s| &s.conditions[..]);
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

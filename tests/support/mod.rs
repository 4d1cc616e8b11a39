//! Shared pieces of the integration tests: the genuine Kubernetes API server and the proxy in
//! front of it, the real `extctl run` process, the independent Python checker, and fixtures.

// Each test crate includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use extctl_core::crd::ExternalControl;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod apiserver;
pub mod chart_rbac;
pub mod ecosystem;
pub mod kubectl;
pub mod pytools;
pub mod scrape;
pub mod upstream_crds;
pub mod versions;

pub use apiserver::{ADMIN_TOKEN, Proxy, Server};

pub const TOKEN: &str = "s3cr3t-t0ken";

/// A namespace of its own on the test binary's genuine API server, the fault-injecting proxy
/// in front of the server, a kubeconfig through that proxy, and a scratch directory.
pub struct Cluster {
    /// Between `extctl` (and kubectl) and the server: faults and request counts.
    pub proxy: Proxy,
    /// The administrator's client, directly to the server (never through the proxy, so the
    /// test's own requests are neither counted nor broken by the faults).
    pub client: Client,
    /// The test's namespace: every control, Secret and Event of the test is in it.
    pub namespace: String,
    pub dir: tempfile::TempDir,
    /// Through the proxy, with the admin token and `namespace` as the default.
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// A fresh namespace on the server (started on first use), named after the test.
    pub async fn start() -> Self {
        let server = Self::server().await;
        let namespace = test_namespace();
        let client = server.admin_client(&namespace).await;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let object = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        namespaces
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {namespace}: {e}"));
        let proxy = Proxy::start(server).await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            server.kubeconfig(&proxy.url(), ADMIN_TOKEN, &namespace),
        )
        .unwrap();
        Self {
            proxy,
            client,
            namespace,
            dir,
            kubeconfig,
        }
    }

    /// The test binary's server, started (or built, the first time) as needed.
    pub async fn server() -> &'static Server {
        tokio::task::spawn_blocking(apiserver::server)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    pub fn controls(&self) -> Api<ExternalControl> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn waivers(&self) -> Api<extctl_core::waiver::Waiver> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a Waiver in the test's namespace from its manifest (as the admin).
    pub async fn create_waiver_from(&self, manifest: Value) -> extctl_core::waiver::Waiver {
        let waiver = serde_json::from_value(manifest).unwrap();
        self.waivers()
            .create(&PostParams::default(), &waiver)
            .await
            .unwrap()
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `NAMESPACE/name`, as extctl names a control.
    pub fn qualified(&self, name: &str) -> String {
        format!("{}/{name}", self.namespace)
    }

    /// Writes `token` to a file for the checker (tokens never go on a command line).
    pub fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, token).unwrap();
        path
    }

    pub async fn create_secret(&self, name: &str, pairs: &[(&str, &str)]) {
        let secret = secret(&self.namespace, name, pairs);
        self.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    pub async fn replace_secret(&self, name: &str, pairs: &[(&str, &str)]) {
        let mut secret = secret(&self.namespace, name, pairs);
        let current = self.secrets().get(name).await.unwrap();
        secret.metadata.resource_version = current.metadata.resource_version;
        self.secrets()
            .replace(name, &PostParams::default(), &secret)
            .await
            .unwrap();
    }

    pub async fn create_control(&self, name: &str, project: i64, control: i64, secret: &str) {
        self.create_control_from(json!({
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"projectId": project, "controlId": control, "secretRef": {"name": secret}}
        }))
        .await;
    }

    pub async fn create_control_from(&self, manifest: Value) {
        let control: ExternalControl = serde_json::from_value(manifest).unwrap();
        self.controls()
            .create(&PostParams::default(), &control)
            .await
            .unwrap();
    }

    pub async fn control(&self, name: &str) -> ExternalControl {
        self.controls().get(name).await.unwrap()
    }

    /// Waits until the control's `Ready` condition has `reason` (the operator has seen it).
    pub async fn wait_ready_reason(&self, name: &str, reason: &str) -> ExternalControl {
        let found = wait_for(Duration::from_secs(20), || async {
            let control = self.control(name).await;
            (ready_reason(&control).as_deref() == Some(reason)).then_some(control)
        })
        .await;
        match found {
            Some(control) => control,
            None => panic!(
                "{name} never became {reason}: {:?}",
                self.control(name).await.status
            ),
        }
    }

    /// The notes of the status-change Events about `name`, oldest first.
    pub async fn event_notes(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut events = events.list(&ListParams::default()).await.unwrap().items;
        events.retain(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name));
        events.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
        events.into_iter().filter_map(|e| e.note).collect()
    }
}

impl Cluster {
    /// Waits up to `within` for an Event on control `name` with exactly `note`; panics with
    /// the notes there are when none comes.
    pub async fn wait_event_note(&self, name: &str, note: &str, within: Duration) {
        let published = wait_for(within, || async {
            let notes = self.event_notes(name).await;
            notes.iter().any(|n| n == note).then_some(())
        })
        .await;
        assert!(
            published.is_some(),
            "no Event {note:?} on {name}: {:?}",
            self.event_notes(name).await
        );
    }
}

pub fn ready_reason(control: &ExternalControl) -> Option<String> {
    let status = control.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(ready.reason.to_string())
}

/// A namespace name for the running test: its name (the test thread's), made a DNS label,
/// and a number no other test of this process gets.
fn test_namespace() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    let test = test.rsplit("::").next().unwrap_or(test);
    let mut label: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    label = label.trim_matches('-').to_owned();
    format!("{label}-{}", COUNT.fetch_add(1, Ordering::Relaxed))
}

fn secret(namespace: &str, name: &str, pairs: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// A loopback address where nothing listens, for as long as the returned socket is kept: bound
/// but never listening, so a connection to it is refused and no other process can take the
/// port meanwhile (a port bound and dropped could be).
pub fn closed_port() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("a loopback port");
    let address = socket.local_addr().expect("its address");
    (socket, address)
}

/// Polls `check` every 50 ms until it yields a value or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real `extctl run` binary, talking to the API server through the cluster's proxy.
pub struct Operator {
    child: Child,
    pub url: String,
    /// `http://ADDRESS/metrics`.
    pub metrics_url: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Operator {
    /// `extctl run --namespace NAMESPACE` with `extra_args`: other tests' controls, on the same
    /// server, are not its business.
    pub async fn start(cluster: &Cluster, extra_args: &[&str]) -> Self {
        let mut args = vec!["--namespace", cluster.namespace.as_str()];
        args.extend_from_slice(extra_args);
        Self::start_with(&cluster.kubeconfig, &args).await
    }

    /// `extctl run` with `args` and this kubeconfig, serving what its permissions let it see;
    /// waits until it is ready.
    pub async fn start_with(kubeconfig: &Path, args: &[&str]) -> Self {
        let operator = Self::spawn_with(kubeconfig, args).await;
        operator.wait_ready().await;
        operator
    }

    /// As [`Self::start_with`], without waiting for it to be ready (only for its address).
    pub async fn spawn_with(kubeconfig: &Path, args: &[&str]) -> Self {
        let mut child = extctl_command(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("extctl binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(collect_logs(
            child.stderr.take().unwrap(),
            logs.clone(),
            address_tx,
        ));
        let start_line = tokio::time::timeout(Duration::from_secs(20), address_rx)
            .await
            .expect("extctl logs its address")
            .expect("extctl logs its address");
        let field = |name: &str| start_field(&start_line, name);
        Self {
            child,
            url: format!("http://{}", field("listen")),
            metrics_url: format!("http://{}/metrics", field("metrics")),
            logs,
        }
    }

    async fn wait_ready(&self) {
        let client = http_client();
        let url = format!("{}/readyz", self.url);
        let ready = wait_for(Duration::from_secs(20), || async {
            let response = client.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "extctl never became ready; logs:\n{}",
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Resident memory now, in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let value = self.process_status("VmRSS");
        let kib = value.trim_end_matches("kB").trim().parse().ok();
        kib.expect("VmRSS in /proc/PID/status")
    }

    /// A field of `/proc/PID/status`, as the kernel shows it.
    pub fn process_status(&self, field: &str) -> String {
        let pid = self.child.id().expect("extctl is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let prefix = format!("{field}:");
        let line = status.lines().find_map(|l| l.strip_prefix(&prefix));
        line.unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
            .trim()
            .to_owned()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.sigterm().await
    }

    /// Sends SIGTERM and waits for the exit, keeping the handle (and the logs).
    pub async fn sigterm(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child).await
    }

    /// SIGTERM, without waiting; [`Self::wait_exit`] then waits.
    pub fn send_sigterm(&self) {
        send_term(&self.child);
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_exit(&mut self.child).await
    }
}

/// A field of extctl's start-up line, in text (`listen=ADDR`) or JSON log format.
fn start_field(line: &str, name: &str) -> String {
    let json = serde_json::from_str::<Value>(line).ok();
    let from_json = json.as_ref().and_then(|v| v["fields"][name].as_str());
    let prefix = format!("{name}=");
    let from_text = || {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
    };
    from_json
        .or_else(from_text)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .to_owned()
}

/// Keeps stderr's lines; sends the first that says where extctl listens (`listen=`).
async fn collect_logs(
    stderr: tokio::process::ChildStderr,
    logs: Arc<Mutex<Vec<String>>>,
    start_line: tokio::sync::oneshot::Sender<String>,
) {
    let mut start_line = Some(start_line);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let found = line.contains("listen=") || line.contains(r#""listen":"#);
        if let Some(sender) = start_line.take_if(|_| found) {
            let _ = sender.send(line.clone());
        }
        logs.lock().unwrap().push(line);
    }
}

/// What the Python checker got back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: u16,
    pub body: Value,
}

impl Answer {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

/// Runs the independent Python checker against `url`; `args` are its flags
/// (`--project`, `--control`, `--status`, `--token-file`, knobs).
pub async fn checker(url: &str, args: &[&str]) -> Answer {
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    let line = python_json("gitlab_checker.py", &all).await;
    Answer {
        code: line["code"].as_u64().unwrap() as u16,
        body: line["body"].clone(),
    }
}

/// The Python checker's call reporting `status` for `control` of `project`, signed with the
/// token in `token_file`.
pub async fn report_as_checker(
    url: &str,
    token_file: &Path,
    project: i64,
    control: i64,
    status: &str,
) -> Answer {
    let (project, control) = (project.to_string(), control.to_string());
    let token = token_file.display().to_string();
    let args = [
        "--project",
        &project,
        "--control",
        &control,
        "--status",
        status,
        "--token-file",
        &token,
    ];
    checker(url, &args).await
}

/// Runs one of the independent Python programs in `tests/support/` with `args` and returns the
/// JSON it prints; fails the test if it fails.
pub async fn python_json(script: &str, args: &[&str]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script);
    let output = Command::new("python3")
        .arg(path)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{script} prints JSON: {e}"))
}

/// The real `extctl dev` binary with `--json`: its stdout lines, parsed.
pub struct Dev {
    child: Child,
    pub url: String,
    /// `http://ADDRESS/metrics`.
    pub metrics_url: String,
    lines: Arc<Mutex<Vec<Value>>>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Dev {
    /// Starts `extctl dev --json --listen 127.0.0.1:0` with `args` (`/metrics` on the same
    /// address, the default); waits for its endpoint.
    pub async fn start(args: &[&str]) -> Self {
        let mut child = extctl_command(&["dev", "--json", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("extctl binary starts");
        let (lines, logs) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        tokio::spawn(collect_json_lines(
            child.stdout.take().unwrap(),
            lines.clone(),
        ));
        // Drained, so that verbose logging can never fill the pipe and block extctl.
        let (address, _) = tokio::sync::oneshot::channel();
        tokio::spawn(collect_logs(
            child.stderr.take().unwrap(),
            logs.clone(),
            address,
        ));
        let mut dev = Self {
            child,
            url: String::new(),
            metrics_url: String::new(),
            lines,
            logs,
        };
        // Started once it has said where it listens and introduced every control.
        let listening = wait_for(Duration::from_secs(20), || async {
            let listening = dev.events("listening").into_iter().next()?;
            let controls = listening["controls"].as_u64()? as usize;
            (dev.events("control").len() == controls).then_some(listening)
        })
        .await;
        let Some(listening) = listening else {
            panic!(
                "extctl dev did not start: {}",
                dev.logs.lock().unwrap().join("\n")
            );
        };
        dev.url = listening["url"].as_str().unwrap().to_owned();
        dev.metrics_url = listening["metrics"].as_str().unwrap().to_owned();
        dev
    }

    /// The lines printed so far whose `event` is `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|line| line["event"] == event)
            .cloned()
            .collect()
    }

    /// The `control` line of `namespace/name`.
    pub fn control(&self, qualified_name: &str) -> Value {
        self.events("control")
            .into_iter()
            .find(|line| line["control"] == qualified_name)
            .unwrap_or_else(|| panic!("no control line for {qualified_name}"))
    }

    /// `(reason, from, to)` of every status change of `namespace/name` printed so far.
    pub fn changes(&self, qualified_name: &str) -> Vec<(String, String, String)> {
        self.events("statusChanged")
            .into_iter()
            .filter(|line| line["control"] == qualified_name)
            .map(|line| {
                let text = |key: &str| line[key].as_str().unwrap_or_default().to_owned();
                (text("reason"), text("from"), text("to"))
            })
            .collect()
    }

    /// The status `namespace/name` has, from the changes printed, or else from its `control`
    /// line at start (never assumed: a missing line fails the check).
    pub fn status(&self, qualified_name: &str) -> String {
        match self.changes(qualified_name).pop() {
            Some((_, _, to)) => to,
            None => self.control(qualified_name)["status"]
                .as_str()
                .unwrap_or_else(|| panic!("no status in the control line of {qualified_name}"))
                .to_owned(),
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.sigterm().await
    }

    /// Sends SIGTERM and waits for the exit, keeping the handle (and the logs).
    pub async fn sigterm(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child).await
    }

    /// SIGTERM, without waiting; [`Self::wait_exit`] then waits.
    pub fn send_sigterm(&self) {
        send_term(&self.child);
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_exit(&mut self.child).await
    }
}

async fn collect_json_lines(stdout: tokio::process::ChildStdout, lines: Arc<Mutex<Vec<Value>>>) {
    let mut reader = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        let value = serde_json::from_str(&line)
            .unwrap_or_else(|error| panic!("extctl dev --json printed {line:?}: {error}"));
        lines.lock().unwrap().push(value);
    }
}

/// Sends SIGTERM, as Kubernetes does to stop a pod, without waiting.
fn send_term(child: &Child) {
    let pid = child.id().expect("running") as i32;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
}

/// Stops a process the way Kubernetes stops a pod (SIGTERM) and waits up to 15 s for it.
async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    send_term(child);
    wait_exit(child).await
}

/// Waits up to 15 s for a process sent SIGTERM to exit.
async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("extctl stops within 15 s of SIGTERM")
        .unwrap()
}

/// The extctl binary with `args`, logging at `EXTCTL_TEST_LOG` (default `info`), without
/// colours, killed when dropped.
fn extctl_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_extctl"));
    command
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("EXTCTL_TEST_LOG").unwrap_or("info".into()),
        )
        .env("NO_COLOR", "1")
        // Loopback is never proxied, whatever the environment says.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .kill_on_drop(true);
    command
}

/// A client for a test's own HTTP requests. rustls needs its crypto provider installed first,
/// whichever test of the binary runs first (alone, `cargo test NAME`, too).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Runs `extctl` with `args` to completion.
pub async fn extctl(args: &[&str]) -> std::process::Output {
    extctl_command(args)
        .output()
        .await
        .expect("extctl binary runs")
}

/// The independent Python ping receiver, answering every ping with `code`.
pub struct PingReceiver {
    server: PythonServer,
    pub url: String,
}

impl PingReceiver {
    pub async fn start(dir: &Path, code: u16) -> Self {
        let code = code.to_string();
        let server = PythonServer::start("ping_receiver.py", dir, TOKEN, &["--code", &code]).await;
        let url = format!("{}/hooks/extctl", server.base_url);
        Self { server, url }
    }

    pub fn pings(&self) -> Vec<Value> {
        self.server.records()
    }
}

/// One of the independent Python servers in `tests/support` (the ping receiver, the GitLab
/// stand-in), given a token file holding `token`, a JSON-lines log in `dir`, and `args`.
pub struct PythonServer {
    _process: Child,
    pub base_url: String,
    log: PathBuf,
}

impl PythonServer {
    pub async fn start(script: &str, dir: &Path, token: &str, args: &[&str]) -> Self {
        Self::start_in(Path::new("python3"), script, dir, token, args).await
    }

    /// With the interpreter `python` (the tools' virtual environment, for a script that
    /// imports one of them); over https when `args` give it a `--cert`.
    pub async fn start_in(
        python: &Path,
        script: &str,
        dir: &Path,
        token: &str,
        args: &[&str],
    ) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support")
            .join(script);
        let stem = script.trim_end_matches(".py");
        let log = tempfile::Builder::new()
            .prefix(stem)
            .suffix(".jsonl")
            .tempfile_in(dir)
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let token_file = dir.join(format!("{stem}-token"));
        std::fs::write(&token_file, token).unwrap();
        let mut process = Command::new(python)
            .arg(path)
            .arg("--token-file")
            .arg(&token_file)
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = process.stdout.take().unwrap();
        let port = BufReader::new(stdout)
            .lines()
            .next_line()
            .await
            .unwrap()
            .expect("the server prints its port");
        let scheme = match args.contains(&"--cert") {
            true => "https",
            false => "http",
        };
        Self {
            _process: process,
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            log,
        }
    }

    /// What it logged, one JSON object per request.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

/// What `gitlab_ping_checker.py` did for `control`, waited for until its report was answered
/// (it logs a ping then, just after extctl stored the report): every ping it got verified,
/// and those for `control` read `project` and the `pending` status, and got
/// `200 {"status":"pass"}`. Returns them.
pub async fn assert_gitlab_checker_passed(
    checker: &PythonServer,
    control: i64,
    project: &Value,
) -> Vec<Value> {
    let records = wait_for(Duration::from_secs(5), || async {
        let records = checker.records();
        let answered = records
            .iter()
            .any(|r| r["control"] == control && r.get("code").is_some());
        answered.then_some(records)
    })
    .await
    .unwrap_or_else(|| panic!("control {control}: {:?}", checker.records()));
    assert!(records.iter().all(|r| r["valid"] == true), "{records:?}");
    let seen: Vec<Value> = records
        .into_iter()
        .filter(|r| r["control"] == control)
        .collect();
    for ping in &seen {
        assert_eq!(&ping["project"], project, "{ping}");
        assert_eq!(ping["pinged_status"], "pending", "{ping}");
        assert_eq!(
            (&ping["code"], &ping["answer"]),
            (&json!(200), &json!({"status": "pass"})),
            "{ping}"
        );
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Helpers for calls built by hand (tests/bad_input.rs, tests/faults.rs).

/// The fields of one signed call, as a checker signs them: token, timestamp, nonce, the
/// project and control of the signed path, and the status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Signing {
    pub token: String,
    pub timestamp: String,
    pub nonce: String,
    pub project: String,
    pub control: String,
    pub status: String,
}

/// The signatures of `calls`, computed in one Python run by the independent checker's own
/// `sign` and `status_path` (`tests/support/gitlab_checker.py`, Python's `hmac`): no extctl
/// code takes part.
pub async fn python_signatures(calls: &[Signing]) -> Vec<String> {
    use tokio::io::AsyncWriteExt;
    const PROGRAM: &str = "\
import json, sys
sys.path.insert(0, sys.argv[1])
from gitlab_checker import sign, status_path
calls = json.load(sys.stdin)
print(json.dumps([sign(c['token'].encode(), c['timestamp'], c['nonce'],
                       status_path(c['project'], c['control']), c['status']) for c in calls]))
";
    let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PROGRAM)
        .arg(support)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let input = serde_json::to_vec(calls).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&input).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "signing in Python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let signatures: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(signatures.len(), calls.len());
    signatures
}

/// 32 hexadecimal characters that no other call of this test run uses.
pub fn fresh_nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let process = u64::from(std::process::id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:08x}{:012x}{:012x}",
        process as u32,
        now & 0xffff_ffff_ffff,
        count
    )
}

/// An HTTP answer read off the socket as it came.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub code: u16,
    /// The status line and headers.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `(code, error message)`, the message empty when the body carries none.
    pub fn error(&self) -> (u16, String) {
        let message = self
            .json()
            .and_then(|body| body["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        (self.code, message)
    }
}

/// Sends `request` (every byte as given: the caller writes `Connection: close`) to `url`
/// (`http://HOST:PORT`) and reads the answer until the server closes the connection. `None`
/// when there was no answer (connection refused, or ended without an answer).
pub async fn raw_request(url: &str, request: &[u8]) -> Option<RawAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    // The server may answer (413, 431) and close before reading everything sent.
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buffer = [0_u8; 8192];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 30 s");
    parse_raw_answer(&received)
}

/// Splits an HTTP/1.1 answer into code, head and body (`Content-Length` or chunked framing).
pub fn parse_raw_answer(received: &[u8]) -> Option<RawAnswer> {
    let split = received.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&received[..split]).into_owned();
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let rest = &received[split + 4..];
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        let mut rest = rest;
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?, 16).ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body
    } else {
        let length = header("content-length").and_then(|v| v.parse().ok());
        rest[..length.unwrap_or(rest.len()).min(rest.len())].to_vec()
    };
    Some(RawAnswer { code, head, body })
}

impl Operator {
    /// Kills the process with SIGKILL, as the kernel's OOM killer or a node failure does: no
    /// request is drained, nothing is flushed.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL sent");
        let _ = self.child.wait().await;
    }
}

//! One genuine etcd and kube-apiserver per test binary, as envtest starts them: loopback ports,
//! TLS with a CA of the run's own, RBAC authorisation, a static admin token, a
//! service-account signing key (so ServiceAccount tokens can be requested), and the CRDs of
//! `crds/` installed and Established before any test uses the server. Started on first use;
//! stopped when the test binary ends, however it ends (the processes get SIGKILL when their
//! parent goes, and their directory is removed at exit or by the next run).

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};

use super::binaries::{Binaries, binaries};

/// The static token of the server's administrator (group `system:masters`).
pub const ADMIN_TOKEN: &str = "extctl-tests-admin-token";

/// Time the server gets to start and to establish the CRDs.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running kube-apiserver; lives as long as the test binary.
pub struct Server {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA that signed the serving certificate, PEM.
    pub ca_pem: String,
    /// Where its certificates, data and logs are.
    pub dir: PathBuf,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// The test binary's server, started on first use (blocking: call it from `spawn_blocking`).
/// A server that failed to start fails every test that needs it, with the same message.
pub fn server() -> &'static Server {
    let started = SERVER.get_or_init(|| {
        std::panic::catch_unwind(start).map_err(|panic| {
            let text = panic.downcast_ref::<String>().cloned();
            let text = text.or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            text.unwrap_or_else(|| "starting the API server panicked".to_owned())
        })
    });
    match started {
        Ok(server) => server,
        Err(message) => panic!("{message}"),
    }
}

impl Server {
    /// A kubeconfig for `server_url` (this server, or a proxy in front of it) with the admin
    /// token and `namespace` as the default.
    pub fn kubeconfig(&self, server_url: &str, token: &str, namespace: &str) -> String {
        let tls = if server_url.starts_with("https://") {
            let ca = base64_encode(self.ca_pem.as_bytes());
            format!("\n    certificate-authority-data: {ca}")
        } else {
            String::new()
        };
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: test\n  cluster:\n    server: {server_url}{tls}\n\
             users:\n\
             - name: test\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {namespace}\n\
             current-context: test\n"
        )
    }

    /// A client for this server as its administrator, default namespace `namespace`.
    pub async fn admin_client(&self, namespace: &str) -> kube::Client {
        client_for(&self.kubeconfig(&self.url, ADMIN_TOKEN, namespace)).await
    }
}

/// A client from kubeconfig text, as `extctl run` reads one.
pub async fn client_for(kubeconfig: &str) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig).expect("a valid kubeconfig");
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(parsed, &options)
        .await
        .expect("a client configuration from the kubeconfig");
    kube::Client::try_from(config).expect("a client")
}

fn start() -> Server {
    let Binaries {
        kube_apiserver,
        etcd,
    } = binaries();
    let dir = run_dir();
    let ca_pem = write_pki(&dir);
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{ADMIN_TOKEN},admin,admin-uid,system:masters\n"),
    )
    .expect("writing the token file");

    let (etcd_url, etcd_exit) = start_etcd(&etcd, &dir);
    let secure = free_port();

    let mut apiserver = Command::new(kube_apiserver);
    apiserver
        .args(["--etcd-servers", &etcd_url])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
        ])
        .args(["--secure-port", &secure.to_string()])
        .arg("--tls-cert-file")
        .arg(dir.join("server.crt"))
        .arg("--tls-private-key-file")
        .arg(dir.join("server.key"))
        .arg("--client-ca-file")
        .arg(dir.join("ca.crt"))
        .arg("--token-auth-file")
        .arg(dir.join("tokens.csv"))
        .args(["--authorization-mode", "RBAC"])
        .args(["--service-account-issuer", "https://kubernetes.default.svc"])
        .arg("--service-account-key-file")
        .arg(dir.join("sa.pub"))
        .arg("--service-account-signing-key-file")
        .arg(dir.join("sa.key"))
        .args(["--service-cluster-ip-range", "10.0.0.0/24"])
        .arg("--cert-dir")
        .arg(dir.join("certs"));
    let apiserver_exit = keep(apiserver, &dir.join("kube-apiserver.log"));

    let server = Server {
        url: format!("https://127.0.0.1:{secure}"),
        ca_pem,
        dir,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime to start the server with");
    runtime.block_on(become_ready(&server, &[etcd_exit, apiserver_exit]));
    server
}

/// Waits for `/readyz`, then installs the CRDs and waits until they are Established.
async fn become_ready(server: &Server, exits: &[Exit]) {
    let deadline = Instant::now() + START_TIMEOUT;
    let client = server.admin_client("default").await;
    loop {
        let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
        let outcome = client.request_text(request).await;
        if outcome.as_ref().is_ok_and(|text| text.trim() == "ok") {
            break;
        }
        let exited = exits.iter().find_map(|exit| exit.lock().unwrap().clone());
        if exited.is_some() || Instant::now() > deadline {
            let logs: Vec<String> = ["kube-apiserver.log"]
                .iter()
                .map(|name| format!("{name}:\n{}", log_tail(&server.dir.join(name))))
                .collect();
            panic!(
                "kube-apiserver not ready within {START_TIMEOUT:?} ({}; last answer {outcome:?})\n{}",
                exited.unwrap_or_else(|| "still running".to_owned()),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for entry in std::fs::read_dir(&crd_dir).expect("reading crds/") {
        let path = entry.expect("a directory entry").path();
        let text = std::fs::read_to_string(&path).expect("reading a CRD");
        let crd: CustomResourceDefinition = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a CRD: {e}", path.display()));
        let name = crd.metadata.name.clone().expect("a CRD has a name");
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("installing {name}: {e}"));
        wait_established(&crds, &name, deadline).await;
    }
}

/// Waits until CRD `name` is Established (its kinds are served).
pub async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str, deadline: Instant) {
    loop {
        let crd = crds.get(name).await.expect("reading a CRD");
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            return;
        }
        assert!(Instant::now() < deadline, "CRD {name} never Established");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `target/kube/runs/<pid>`, removed when the test binary exits; directories of runs whose
/// process is gone (killed before its exit handler ran) are removed first.
fn run_dir() -> PathBuf {
    let runs = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kube/runs");
    std::fs::create_dir_all(&runs).expect("creating target/kube/runs");
    for entry in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !Path::new("/proc").join(&pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = runs.join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).expect("creating the run directory");
    RUN_DIR
        .set(dir.clone())
        .expect("one run directory per process");
    if std::env::var_os("EXTCTL_KEEP_KUBE_RUN").is_none() {
        // SAFETY: `remove_run_dir` is an `extern "C" fn()` that touches only a static.
        unsafe { libc::atexit(remove_run_dir) };
    }
    dir
}

static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_run_dir() {
    if let Some(dir) = RUN_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The CA, the serving certificate for 127.0.0.1 and the service-account key; returns the CA.
fn write_pki(dir: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "extctl-tests-ca");
    let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("a serving key");
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned()]).expect("serving parameters");
    server_params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let serving = server_params
        .signed_by(&server_key, &ca_issuer)
        .expect("the serving certificate");
    let service_accounts = KeyPair::generate().expect("a service-account key");

    let write = |name: &str, text: &str| {
        let mut file = std::fs::File::create(dir.join(name)).expect("creating a PKI file");
        file.write_all(text.as_bytes()).expect("writing a PKI file");
    };
    write("ca.crt", &ca.pem());
    write("server.crt", &serving.pem());
    write("server.key", &server_key.serialize_pem());
    write("sa.key", &service_accounts.serialize_pem());
    write("sa.pub", &service_accounts.public_key_pem());
    ca.pem()
}

/// etcd on free loopback ports, once it accepts connections. A port found free can be taken
/// before etcd binds it (by any process's outgoing connection): then etcd exits at once, and
/// is started again on other ports.
fn start_etcd(etcd: &Path, dir: &Path) -> (String, Exit) {
    for attempt in 0..5 {
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let mut command = Command::new(etcd);
        command
            .arg("--data-dir")
            .arg(dir.join(format!("etcd-{attempt}")))
            .args(["--listen-client-urls", &url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")]);
        let exit = keep(command, &dir.join(format!("etcd-{attempt}.log")));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline && exit.lock().unwrap().is_none() {
            if std::net::TcpStream::connect(("127.0.0.1", client)).is_ok() {
                return (url, exit);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!(
        "etcd did not start in 5 attempts: see {}",
        dir.join("etcd-4.log").display()
    );
}

/// A port free on 127.0.0.1 now (bound, then released for the server to bind).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("a bound address").port()
}

/// How a kept process ended, once it has.
type Exit = Arc<Mutex<Option<String>>>;

/// Starts `command` with its output in `log`, on a thread that lives as long as the test
/// binary: the kernel sends the process SIGKILL when that thread ends (`PR_SET_PDEATHSIG`
/// follows the thread that forked), which is when the test binary ends, by exit or by panic.
fn keep(mut command: Command, log: &Path) -> Exit {
    let log = std::fs::File::create(log).expect("creating a log file");
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a log handle"))
        .stderr(log);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have gone before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let program = command.get_program().to_string_lossy().into_owned();
    let exit = Exit::default();
    let exit_written = exit.clone();
    let name = program.rsplit('/').next().unwrap_or_default().to_owned();
    let (started, outcome) = mpsc::channel();
    std::thread::Builder::new()
        .name("kube-process".into())
        .spawn(move || {
            let child: std::io::Result<Child> = command.spawn();
            let failed = child.as_ref().err().map(ToString::to_string);
            let _ = started.send(failed);
            if let Ok(mut child) = child {
                let status = child.wait();
                *exit_written.lock().unwrap() = Some(format!("{name} exited: {status:?}"));
            }
            // Parked rather than returned: the process may have died, but nothing it
            // started should outlive this thread before the test binary ends.
            loop {
                std::thread::park();
            }
        })
        .expect("starting a thread");
    if let Some(error) = outcome.recv().expect("the process thread answers") {
        panic!("cannot start {program}: {error}");
    }
    exit
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

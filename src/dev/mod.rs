//! `extctl dev`: the endpoint and the reconciler of `extctl run`, without a cluster.
//!
//! Controls and Secrets come from manifests (or `--control` flags) and live in a
//! [`MemoryStore`], which implements the same ports as the Kubernetes adapters: the endpoint's
//! verification and the reconciler's ping logic are the very code `extctl run` uses. Instead of
//! kube-rs's `Controller`, a loop reconciles every control after each change and when it falls
//! due ([`crate::schedule`]).

mod console;
pub mod manifests;
mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use serde_json::json;
use tokio::sync::mpsc;

use crate::checker::shell_quote;
use crate::endpoint::{self, EndpointConfig};
use crate::metrics::{Census, Metrics};
use crate::outbound::{Outbound, OutboundSettings};
use crate::schedule::{Next, reconcile_each};
use crate::scrape;
use crate::shutdown::shutdown_signal;
pub use console::Console;
use extctl_core::crd::ExternalControl;
use extctl_core::history::HistoryPolicy;
use extctl_core::key::ObjectKey;
use extctl_core::ports::{ControlStore, Journal};
use extctl_core::reconciler::Reconciler;
use extctl_core::tokens::SigningTokens;
use manifests::{DEFAULT_NAMESPACE, Manifests};
pub use store::MemoryStore;

/// A control given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ControlIds {
    pub(crate) project_id: i64,
    pub(crate) control_id: i64,
}

/// Everything `extctl dev` needs to know.
#[derive(Debug, Clone)]
pub(crate) struct DevSettings {
    pub(crate) listen: SocketAddr,
    /// `/metrics` on a listener of its own; None: on the endpoint's listener.
    pub(crate) metrics_listen: Option<SocketAddr>,
    pub(crate) manifests: Vec<PathBuf>,
    pub(crate) controls: Vec<ControlIds>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) endpoint: EndpointConfig,
    pub(crate) outbound: OutboundSettings,
}

/// The Secret that holds the token of `--control` controls.
const FLAG_SECRET: &str = "extctl-dev-token";

/// Runs until SIGINT, SIGTERM or SIGHUP.
pub(crate) async fn run(settings: DevSettings) -> anyhow::Result<()> {
    let mut loaded = manifests::load(&settings.manifests).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the manifests have problems:\n  {}", lines.join("\n  "))
    })?;
    add_flag_controls(&mut loaded, &settings)?;
    if loaded.controls.is_empty() {
        bail!(
            "no ExternalControl to serve: give --manifests DIR_OR_FILE, or --control \
             PROJECT:CONTROL with --token-file FILE"
        );
    }
    let console = Console {
        json: settings.json,
    };
    let (store, changed) = MemoryStore::new(loaded.controls, loaded.secrets, console);

    // Installed now: a signal from here on, even during start-up, stops extctl dev cleanly
    // (and removes its token files).
    let shutdown = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let metrics_listener = match settings.metrics_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (--metrics-listen)"))?,
        ),
        None => None,
    };
    let url = local_url(listener.local_addr()?);
    let metrics_url = match &metrics_listener {
        Some(own) => format!("{}/metrics", local_url(own.local_addr()?)),
        None => format!("{url}/metrics"),
    };
    tracing::debug!(%url, %metrics_url, "extctl dev starting");
    // The console prints every change; `status.history` is kept on Kubernetes.
    let outbound = Outbound::new(settings.outbound.clone())?;
    let metrics = Arc::new(Metrics::new());
    let reconciler = Arc::new(Reconciler::new(
        store.clone(),
        console,
        outbound,
        HistoryPolicy::default(),
        metrics.clone(),
    ));
    metrics.set_leader(true);
    let census: Arc<dyn Census> = Arc::new(store.clone());
    // Token files for the printed `extctl send` lines: owner-only, removed on exit.
    let token_dir = private_dir()?;
    let urls = (url.as_str(), metrics_url.as_str());
    introduce(&store, console, urls, &settings, token_dir.path()).await?;

    let header_timeout = settings.endpoint.request_timeout;
    let mut router = endpoint::router(Arc::new(store), settings.endpoint, metrics.clone());
    match metrics_listener {
        Some(own) => {
            let scrapes = scrape::serve(own, metrics, census, header_timeout, shutdown_signal());
            tokio::spawn(scrapes);
        }
        None => router = router.merge(scrape::router(metrics, census)),
    }
    tokio::select! {
        () = crate::serve::serve(listener, router, header_timeout, shutdown) => {},
        () = reconcile_forever(reconciler, changed) => {},
    }
    Ok(())
}

/// Reconciles each control at start, when it falls due, and when the store says so
/// ([`reconcile_each`], as `extctl run` does): a slow ping to one checker does not hold up
/// another control's reset, since the ping is part of its control's reconcile only.
async fn reconcile_forever(
    reconciler: Arc<Reconciler<MemoryStore, Console, Outbound>>,
    mut changed: mpsc::UnboundedReceiver<ObjectKey>,
) {
    let changed = futures::stream::poll_fn(move |cx| changed.poll_recv(cx));
    reconcile_each(
        changed,
        usize::MAX,
        async {},
        std::future::pending(),
        move |key| {
            let reconciler = reconciler.clone();
            async move {
                let Some(control) = reconciler.store.get(&key) else {
                    return Next::At(None);
                };
                let reconciled = match reconciler.reconcile(&control, Timestamp::now()).await {
                    Ok(reconciled) => reconciled,
                    // A conflict: a report landed meanwhile. Look again.
                    Err(error) => {
                        tracing::debug!(%error, "reconcile did not complete");
                        return Next::Retry(Duration::ZERO);
                    }
                };
                if let Some(ping) = reconciled.ping
                    && let Err(error) = reconciler.ping(ping).await
                {
                    tracing::debug!(%error, "recording a ping's outcome did not complete");
                    return Next::Retry(Duration::ZERO);
                }
                Next::At(reconciled.wake)
            }
        },
    )
    .await;
}

/// The `--control` flags as objects: a control `control-<project>-<id>` each, sharing one
/// Secret with the token. A name the manifests already use is an error, not an overwrite.
fn add_flag_controls(loaded: &mut Manifests, settings: &DevSettings) -> anyhow::Result<()> {
    let Some(token_file) = &settings.token_file else {
        return Ok(());
    };
    let token = std::fs::read(token_file)
        .with_context(|| format!("cannot read --token-file {}", token_file.display()))?;
    SigningTokens::single(&token).map_err(|_| {
        anyhow::anyhow!("--token-file {}: the token is empty", token_file.display())
    })?;
    if loaded.secrets.iter().any(is_flag_secret) {
        bail!(
            "the manifests define Secret {DEFAULT_NAMESPACE}/{FLAG_SECRET}, which --control uses"
        );
    }
    loaded.secrets.push(Secret {
        metadata: metadata(FLAG_SECRET),
        data: Some([("token".to_owned(), ByteString(token))].into()),
        ..Default::default()
    });
    for ids in &settings.controls {
        let name = format!("control-{}-{}", ids.project_id, ids.control_id);
        let taken = |control: &ExternalControl| {
            control.namespace().as_deref() == Some(DEFAULT_NAMESPACE) && control.name_any() == name
        };
        if loaded.controls.iter().any(taken) {
            bail!(
                "--control {}:{} is given twice, or the manifests define ExternalControl \
                 {DEFAULT_NAMESPACE}/{name}",
                ids.project_id,
                ids.control_id
            );
        }
        let control = serde_json::from_value(json!({
            "apiVersion": "extctl.dev/v1alpha1",
            "kind": "ExternalControl",
            "metadata": metadata(&name),
            "spec": {
                "projectId": ids.project_id,
                "controlId": ids.control_id,
                "secretRef": { "name": FLAG_SECRET },
            },
        }))
        .expect("a control from valid ids deserializes");
        loaded.controls.push(control);
    }
    Ok(())
}

fn is_flag_secret(secret: &Secret) -> bool {
    secret.namespace().as_deref().unwrap_or(DEFAULT_NAMESPACE) == DEFAULT_NAMESPACE
        && secret.name_any() == FLAG_SECRET
}

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(DEFAULT_NAMESPACE.to_owned()),
        ..Default::default()
    }
}

/// Prints where the endpoint is, and each control with an `extctl send` line that works as
/// printed. Tokens from manifests are written to owner-only files in `token_dir` so that the
/// line names a file rather than showing the token.
async fn introduce(
    store: &MemoryStore,
    console: Console,
    (url, metrics_url): (&str, &str),
    settings: &DevSettings,
    token_dir: &Path,
) -> anyhow::Result<()> {
    let controls = store.controls();
    console.listening(url, metrics_url, controls.len());
    let program = shell_quote(&program_name());
    // One file per Secret and key, shared by the controls that use it.
    let mut token_files: HashMap<(String, String, String), PathBuf> = HashMap::new();
    for control in &controls {
        let readiness = store
            .readiness(control)
            .await
            .expect("readiness in memory cannot fail");
        let send = match store.signing_tokens(control).await {
            Ok(tokens) if readiness.is_ready() => {
                let uses_flag_secret = control.namespace().as_deref() == Some(DEFAULT_NAMESPACE)
                    && control.spec.secret_ref.name == FLAG_SECRET;
                let file = match &settings.token_file {
                    // Absolute, so the line works from any directory.
                    Some(file) if uses_flag_secret => std::path::absolute(file)?,
                    _ => {
                        let secret = (
                            control.namespace().unwrap_or_default(),
                            control.spec.secret_ref.name.clone(),
                            control.spec.secret_ref.key.clone(),
                        );
                        match token_files.get(&secret) {
                            Some(file) => file.clone(),
                            None => {
                                let file = write_token_file(token_dir, &secret, tokens.current())?;
                                token_files.entry(secret).or_insert(file).clone()
                            }
                        }
                    }
                };
                Some(format!(
                    "{program} send --url {} --project {} --control {} --status pass \
                     --token-file {}",
                    shell_quote(url),
                    control.spec.project_id,
                    control.spec.control_id,
                    shell_quote(&file.display().to_string()),
                ))
            }
            _ => None,
        };
        console.control(control, &readiness, send.as_deref());
        if !control.spec.notify.is_empty() {
            // Said, not silently dropped: a sandbox keeps no `status.history` to send from.
            let note = "spec.notify is not sent by extctl dev (it keeps no status.history);                         extctl run sends the notifications"
                .to_owned();
            console.warning(control, "NotificationsOff", note);
        }
    }
    Ok(())
}

/// Writes the token of `(namespace, secret, key)` to an owner-only file in `dir`.
fn write_token_file(
    dir: &Path,
    (namespace, secret, key): &(String, String, String),
    token: &[u8],
) -> anyhow::Result<PathBuf> {
    // `_` occurs in neither namespaces nor Secret names, and the key comes last: one file per
    // Secret and key.
    let file = dir.join(format!("{namespace}_{secret}_{key}.token"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut handle = options
        .open(&file)
        .with_context(|| format!("cannot write the token file of Secret {namespace}/{secret}"))?;
    std::io::Write::write_all(&mut handle, token)?;
    Ok(file)
}

/// A directory only this user can read, removed when dropped.
fn private_dir() -> anyhow::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("extctl-dev-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    builder
        .tempdir()
        .context("cannot create a directory for token files")
}

/// `extctl` when run from the PATH, else the path it was run by (such as `target/debug/extctl`).
fn program_name() -> String {
    std::env::args()
        .next()
        .filter(|name| name.contains('/'))
        .unwrap_or_else(|| "extctl".into())
}

/// A URL clients can use: a wildcard address is reached on loopback.
fn local_url(address: SocketAddr) -> String {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{address}")
}

//! `extctl dev`: the endpoint and the reconciler of `extctl run`, without a cluster.
//!
//! Controls and Secrets come from manifests (or `--control` flags) and live in a
//! [`MemoryStore`], which implements the same ports as the Kubernetes adapters: the endpoint's
//! verification and the reconciler's ping logic are the very code `extctl run` uses. Instead of
//! kube-rs's `Controller`, a loop reconciles every control after each change and sleeps until
//! the earliest due time.

mod console;
pub mod manifests;
mod store;

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

use crate::core::tokens::SigningTokens;
use crate::crd::{ExternalControl, qualified_name};
use crate::endpoint::{self, EndpointConfig};
use crate::notify::Notifier;
use crate::reconciler::{ControlStore, Reconciler, duration_until};
use crate::shutdown::shutdown_signal;
pub use console::Console;
use manifests::{DEFAULT_NAMESPACE, Manifests};
pub use store::MemoryStore;

/// A control given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlIds {
    pub project_id: i64,
    pub control_id: i64,
}

/// Everything `extctl dev` needs to know.
#[derive(Debug, Clone)]
pub struct DevSettings {
    pub listen: SocketAddr,
    pub manifests: Vec<PathBuf>,
    pub controls: Vec<ControlIds>,
    pub token_file: Option<PathBuf>,
    pub json: bool,
    pub endpoint: EndpointConfig,
    pub ping_timeout: Duration,
}

/// The Secret that holds the token of `--control` controls.
const FLAG_SECRET: &str = "extctl-dev-token";

/// Runs until SIGINT or SIGTERM.
pub async fn run(settings: DevSettings) -> anyhow::Result<()> {
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
    let store = MemoryStore::new(loaded.controls, loaded.secrets, console);

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let url = local_url(listener.local_addr()?);
    tracing::debug!(listen = %listener.local_addr()?, "extctl dev starting");
    // Token files for the printed `extctl send` lines; removed when extctl dev stops.
    let token_dir = tempfile::Builder::new().prefix("extctl-dev-").tempdir()?;
    introduce(&store, console, &url, &settings, token_dir.path())?;

    let router = endpoint::router(Arc::new(store.clone()), settings.endpoint);
    let server = endpoint::serve(listener, router, shutdown_signal());
    let reconciler = Reconciler {
        store,
        journal: console,
        notifier: Notifier::new(settings.ping_timeout)?,
    };
    tokio::select! {
        () = server => {},
        () = reconcile_forever(&reconciler) => {},
    }
    Ok(())
}

/// Reconciles every control after each change, and otherwise sleeps until the earliest time
/// one falls due (as kube-rs's Controller requeues each control at its own time).
async fn reconcile_forever(reconciler: &Reconciler<MemoryStore, Console>) {
    let mut changes = reconciler.store.subscribe();
    loop {
        changes.borrow_and_update();
        let mut wake: Option<Timestamp> = None;
        for control in reconciler.store.controls() {
            // A conflict means a report landed meanwhile; its change notice brings another pass.
            if let Ok(Some(next)) = reconciler.reconcile(&control, Timestamp::now()).await {
                wake = Some(wake.map_or(next, |wake| wake.min(next)));
            }
        }
        let sleep = async {
            match wake {
                Some(next) => tokio::time::sleep(duration_until(Timestamp::now(), next)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {},
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// The `--control` flags as objects: one control each, sharing one Secret with the token.
fn add_flag_controls(loaded: &mut Manifests, settings: &DevSettings) -> anyhow::Result<()> {
    let Some(token_file) = &settings.token_file else {
        return Ok(());
    };
    let token = std::fs::read(token_file)
        .with_context(|| format!("cannot read --token-file {}", token_file.display()))?;
    SigningTokens::single(&token).map_err(|_| {
        anyhow::anyhow!("--token-file {}: the token is empty", token_file.display())
    })?;
    loaded.secrets.push(Secret {
        metadata: metadata(FLAG_SECRET),
        data: Some([("token".to_owned(), ByteString(token))].into()),
        ..Default::default()
    });
    for ids in &settings.controls {
        let name = format!("control-{}", ids.control_id);
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
fn introduce(
    store: &MemoryStore,
    console: Console,
    url: &str,
    settings: &DevSettings,
    token_dir: &Path,
) -> anyhow::Result<()> {
    let controls = store.controls();
    console.listening(url, controls.len());
    let program = program_name();
    for control in &controls {
        let readiness = store.readiness(control);
        let send = match store.signing_tokens(control) {
            Ok(tokens) if readiness.is_ready() => {
                let file = match (&settings.token_file, control.spec.secret_ref.name.as_str()) {
                    (Some(file), FLAG_SECRET) => file.clone(),
                    _ => write_token_file(token_dir, control, tokens.current())?,
                };
                Some(format!(
                    "{program} send --url {url} --project {} --control {} --status pass \
                     --token-file {}",
                    control.spec.project_id,
                    control.spec.control_id,
                    shell_quote(&file.display().to_string()),
                ))
            }
            _ => None,
        };
        console.control(control, &readiness, send.as_deref());
    }
    Ok(())
}

fn write_token_file(
    dir: &Path,
    control: &ExternalControl,
    token: &[u8],
) -> anyhow::Result<PathBuf> {
    let file = dir.join(format!(
        "{}.{}.token",
        control.namespace().unwrap_or_default(),
        control.name_any()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut handle = options
        .open(&file)
        .with_context(|| format!("cannot write the token file of {}", qualified_name(control)))?;
    std::io::Write::write_all(&mut handle, token)?;
    Ok(file)
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

fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@".contains(c);
    if text.chars().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

//! Kubernetes adapters: watches and stores, the registry the endpoint uses, Events, and the
//! reconciler, wired together by [`run`].

pub mod controller;
pub mod events;
pub mod notify;

pub mod registry;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use kube::Client;
use kube::runtime::Controller;

use crate::endpoint::{self, EndpointConfig};
use controller::{Context, error_policy, reconcile};
use events::StatusEvents;
use notify::Notifier;
use registry::KubeRegistry;
use watch::Scope;

/// Everything `extctl run` needs to know.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub listen: SocketAddr,
    pub scope: Scope,
    pub endpoint: EndpointConfig,
    /// This replica's name in Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// Time an outbound ping may take, connection included.
    pub ping_timeout: Duration,
}

/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open requests get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the endpoint and the reconciler until SIGINT or SIGTERM.
pub async fn run(settings: RunSettings) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration found (in-cluster or kubeconfig)")?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let address = listener.local_addr().unwrap_or(settings.listen);
    tracing::info!(listen = %address, scope = ?settings.scope, "extctl starting");

    let (triggers, triggered) = futures::channel::mpsc::unbounded();
    let watches = watch::start(client.clone(), &settings.scope, triggers);
    let stores = watches.stores.clone();
    for driver in watches.drivers {
        tokio::spawn(driver);
    }

    let events = StatusEvents::new(client.clone(), settings.instance.clone());
    let registry = Arc::new(KubeRegistry::new(
        client.clone(),
        stores.clone(),
        events.clone(),
    ));
    let router = endpoint::router(registry, settings.endpoint);
    let server = endpoint::serve(
        listener,
        router,
        HEADER_TIMEOUT,
        DRAIN_TIMEOUT,
        shutdown_signal(),
    );

    let context = Arc::new(Context {
        client,
        stores: stores.clone(),
        events,
        notifier: Notifier::new(settings.ping_timeout)?,
    });

    let reconciler = Controller::for_shared_stream(watches.control_events, stores.controls)
        .reconcile_on(triggered)
        .graceful_shutdown_on(shutdown_signal())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile did not complete");
            }
        });

    tokio::join!(server, reconciler);
    tracing::info!("extctl stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM (what Kubernetes sends to stop a pod).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
}

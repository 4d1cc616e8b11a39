//! Kubernetes adapters: watches and stores, the registry the endpoint uses, Events, and the
//! reconciler, wired together by [`run`].

pub mod controller;
pub mod events;
pub mod registry;
pub mod secrets;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use kube::Client;
use kube::runtime::Controller;
use kube::runtime::controller::Config as ControllerConfig;

use crate::endpoint::{self, EndpointConfig};
use crate::notify::Notifier;
use crate::reconciler::Reconciler;
use crate::shutdown::shutdown_signal;
use controller::{KubeStore, error_policy, reconcile};
use events::StatusEvents;
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
    /// How long a Secret read is used before it is read again.
    pub secret_ttl: Duration,
    /// Controls reconciled at once: bounds the reconciler's status writes, so that checkers'
    /// calls keep headroom when many resets fall due together.
    pub reconcile_concurrency: u16,
}

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
    let watches = watch::start(
        client.clone(),
        &settings.scope,
        triggers,
        settings.secret_ttl,
    );
    let stores = watches.stores.clone();
    tokio::spawn(watches.driver);

    let events = StatusEvents::new(client.clone(), settings.instance.clone());
    let registry = Arc::new(KubeRegistry::new(
        client.clone(),
        stores.clone(),
        events.clone(),
    ));
    let router = endpoint::router(registry, settings.endpoint);
    let server = endpoint::serve(listener, router, shutdown_signal());

    let context = Arc::new(Reconciler {
        store: KubeStore {
            client,
            stores: stores.clone(),
        },
        journal: events,
        notifier: Notifier::new(settings.ping_timeout)?,
    });

    let config = ControllerConfig::default().concurrency(settings.reconcile_concurrency);
    let reconciler = Controller::for_shared_stream(watches.control_events, stores.controls)
        .with_config(config)
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

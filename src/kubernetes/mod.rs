//! Kubernetes adapters: the watch and its reflectors, the endpoint's store, the reconciler's
//! store and its controller, Events, the Lease and the policy reports, wired together by
//! [`run`].

pub(crate) mod client;
pub(crate) mod controller;
pub(crate) mod endpoint_store;
pub(crate) mod events;
pub(crate) mod lease;
pub(crate) mod namespaces;
pub(crate) mod policy_reports;
pub(crate) mod recheck;
pub(crate) mod secrets;
#[cfg(test)]
mod test_api;
pub(crate) mod waivers;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use kube::runtime::Controller;
use tokio::net::TcpListener;

use crate::endpoint::{self, EndpointConfig};
use crate::metrics::{Census, Metrics};
use crate::outbound::{Outbound, OutboundSettings};
use crate::schedule::reconcile_each;
use crate::scrape;
use crate::shutdown::shutdown_signal;
use controller::{KubeControlStore, reconcile};
use endpoint_store::KubeEndpointStore;
use events::StatusEvents;
use extctl_core::destinations::Rule;
use extctl_core::history::HistoryPolicy;
use extctl_core::reconciler::Reconciler;
use lease::{Elector, Leadership, LeaseSettings};
use watch::Scope;

/// Everything `extctl run` needs to know.
#[derive(Debug, Clone)]
pub(crate) struct RunSettings {
    pub(crate) listen: SocketAddr,
    pub(crate) metrics_listen: SocketAddr,
    pub(crate) scope: Scope,
    pub(crate) endpoint: EndpointConfig,
    /// This replica's name in Events, the Lease and `status.history` (the pod name in a
    /// cluster).
    pub(crate) instance: Option<String>,
    /// How pings and notifications are sent (the API server's addresses are added to the
    /// destination rules at start).
    pub(crate) outbound: OutboundSettings,
    /// How long a Secret read is used before it is read again.
    pub(crate) secret_ttl: Duration,
    /// Controls reconciled at once: bounds the reconciler's status writes, so that checkers'
    /// calls keep headroom when many resets fall due together.
    pub(crate) reconcile_concurrency: u16,
    /// Leader election: only the Lease holder reconciles. `None`: this replica always does.
    pub(crate) election: Option<LeaseSettings>,
    /// Status changes kept per control in `status.history`.
    pub(crate) history_limit: usize,
    /// Which compliance report to keep per namespace (`--reports`); `None`: none.
    pub(crate) reports: Option<extctl_core::policy_reports::Flavor>,
    /// A namespace without the `extctl.dev/projects` annotation may claim no project
    /// (`--require-project-allowance`; cluster-wide only).
    pub(crate) require_project_allowance: bool,
    /// The longest a waiver may last after its creation (`--max-waiver-duration`).
    pub(crate) max_waiver_duration: Duration,
}

/// Runs the endpoint, `/metrics` and (while leading) the reconciler until SIGINT or SIGTERM.
pub(crate) async fn run(settings: RunSettings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let (client, api_server) = client::connect(metrics.clone()).await?;
    let mut outbound = settings.outbound.clone();
    outbound.destinations.api_server = api_server.into_iter().map(Rule::Socket).collect();
    let listener = bind(settings.listen, "--listen").await?;
    let metrics_listener = bind(settings.metrics_listen, "--metrics-listen").await?;
    let identity = settings.instance.clone().unwrap_or_else(default_identity);
    tracing::info!(
        listen = %listener.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        scope = ?settings.scope,
        %identity,
        "extctl starting"
    );

    let (triggers, triggered) = futures::channel::mpsc::unbounded();
    let (waiver_triggers, waivers_triggered) = futures::channel::mpsc::unbounded();
    let watches = watch::start(
        client.clone(),
        &settings.scope,
        settings.require_project_allowance,
        triggers,
        waiver_triggers,
        settings.secret_ttl,
        metrics.clone(),
    );
    let reflectors = watches.reflectors.clone();
    tokio::spawn(watches.driver);

    let census: Arc<dyn Census> = Arc::new(reflectors.clone());
    let metrics_server = scrape::serve(
        metrics_listener,
        metrics.clone(),
        census,
        settings.endpoint.request_timeout,
        shutdown_signal(),
    );

    let history = HistoryPolicy {
        limit: settings.history_limit,
        replica: Some(identity.clone()),
    };
    let events = StatusEvents::new(client.clone(), settings.instance.clone());
    let endpoint_store = Arc::new(KubeEndpointStore::new(
        client.clone(),
        reflectors.clone(),
        events.clone(),
        history.clone(),
        settings.endpoint.request_timeout,
    ));
    let router = endpoint::router(endpoint_store, settings.endpoint, metrics.clone());
    let header_timeout = settings.endpoint.request_timeout;
    let server = crate::serve::serve(listener, router, header_timeout, shutdown_signal());

    let (leadership, elector) = match &settings.election {
        Some(election) => {
            let namespace = election
                .namespace
                .clone()
                .or_else(|| scope_namespace(&settings.scope))
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let elector = Elector::new(
                client.clone(),
                election.clone(),
                namespace,
                identity,
                metrics.clone(),
            );
            (elector.leadership(), Some(elector))
        }
        None => (Leadership::Always, None),
    };
    metrics.set_leader(leadership.is_leader());
    if let Some(flavor) = settings.reports {
        let writer = policy_reports::PolicyReportWriter::new(
            client.clone(),
            settings.scope.clone(),
            flavor,
            reflectors.clone(),
            leadership.clone(),
        );
        tokio::spawn(writer.run());
    }
    // The Lease is given up only after the reconciler has stopped, so no successor starts
    // while this replica still writes.
    let (stop_elector, elector_stop) = tokio::sync::oneshot::channel::<()>();
    let elector = elector.map(|elector| {
        tokio::spawn(elector.run(async move {
            let _ = elector_stop.await;
        }))
    });

    let waiver_status = Controller::for_shared_stream(watches.waiver_events, watches.waiver_store)
        .reconcile_on(waivers_triggered)
        .reconcile_all_on(leadership_gained(leadership.clone()))
        .graceful_shutdown_on(shutdown_signal())
        .run(
            waivers::reconcile_status,
            waivers::status_error_policy,
            Arc::new(waivers::StatusContext {
                client: client.clone(),
                controls: reflectors.controls.clone(),
                leadership: leadership.clone(),
                max_duration: settings.max_waiver_duration,
            }),
        )
        .for_each(|_| async {});

    let store = KubeControlStore {
        client,
        reflectors: reflectors.clone(),
        leadership: leadership.clone(),
    };
    let context = Arc::new(
        Reconciler::new(store, events, Outbound::new(outbound)?, history, metrics)
            .with_max_waiver(settings.max_waiver_duration),
    );

    // What names a control to reconcile: a change to it (the watch), to something it depends
    // on (triggers), or this replica becoming leader (every control), each as the index's key.
    let controls = reflectors.clone();
    let changed = futures::stream::select(
        watches
            .control_events
            .map(move |control| controls.key_of(&control)),
        futures::stream::select(
            triggered.map({
                let reflectors = reflectors.clone();
                move |key| reflectors.shared(key)
            }),
            leadership_gained(leadership).flat_map({
                let reflectors = reflectors.clone();
                move |()| {
                    let all = reflectors.controls.state();
                    let keys: Vec<_> = all.iter().map(|c| reflectors.key_of(c)).collect();
                    futures::stream::iter(keys)
                }
            }),
        ),
    );
    let loaded = reflectors.controls.clone();
    let reconciler = reconcile_each(
        changed,
        settings.reconcile_concurrency.into(),
        async move {
            // Only fails once the writer is gone, at shutdown.
            let _ = loaded.wait_until_ready().await;
        },
        shutdown_signal(),
        move |key| reconcile(key, context.clone()),
    );

    tokio::join!(server, reconciler, waiver_status, metrics_server);
    let _ = stop_elector.send(());
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    tracing::info!("extctl stopped");
    Ok(())
}

async fn bind(address: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} ({flag})"))
}

fn scope_namespace(scope: &Scope) -> Option<String> {
    match scope {
        Scope::Cluster => None,
        Scope::Namespace(namespace) => Some(namespace.clone()),
    }
}

/// Without `--instance` (POD_NAME): the host name and process id, unique among replicas.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "extctl".into());
    format!("{host}-{}", std::process::id())
}

/// Each time this replica becomes leader (at once without election): while not leading,
/// reconciles do nothing (see [`controller::reconcile`]), so every control is looked at then, and
/// no reset waits for a change to its object.
fn leadership_gained(leadership: Leadership) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold((leadership, true), |(mut leadership, first)| async move {
        if !first {
            leadership.lost().await;
        }
        leadership.gained().await;
        Some(((), (leadership, false)))
    })
}

//! `/metrics`: the [`Metrics`] as OpenMetrics text, served on `--metrics-listen` (its own
//! listener, so scrapes never compete with checkers' calls and the endpoint port need not be
//! open to the monitoring namespace), or merged into the endpoint's router (`extctl dev`
//! without `--metrics-listen`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::{Census, Metrics};

/// The media type of the OpenMetrics text format.
pub(crate) const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads: the metrics, and the store the census gauges are counted from.
#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    census: Arc<dyn Census>,
}

/// The `/metrics` route alone.
pub(crate) fn router(metrics: Arc<Metrics>, census: Arc<dyn Census>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { metrics, census })
}

/// Serves `/metrics` on `listener` until `shutdown` completes, with the endpoint's bound on
/// reading request headers (`header_timeout`).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    census: Arc<dyn Census>,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::serve::serve(listener, router(metrics, census), header_timeout, shutdown).await;
}

async fn scrape(State(scrape): State<Scrape>) -> impl IntoResponse {
    let text = scrape.metrics.encode(scrape.census.as_ref());
    ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], text)
}

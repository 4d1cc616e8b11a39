//! The GitLab-compatible status endpoint:
//! `PATCH|POST /api/v4/projects/{id}/compliance_external_controls/{control_id}/status`.
//!
//! This module is the HTTP adapter only: it reads the request (bounded), runs the checks in
//! GitLab's order (see [`verify`]) and maps each [`Rejection`] to GitLab's answer. Controls,
//! tokens and writes come from a [`EndpointStore`].

mod request;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use serde_json::json;

use crate::metrics::Metrics;
use extctl_core::freshness::TimestampWindow;
use extctl_core::ports::EndpointStore;
use extctl_core::protocol::Rejection;

/// The route GitLab serves, with axum's parameter syntax.
pub(crate) const STATUS_ROUTE: &str =
    "/api/v4/projects/{id}/compliance_external_controls/{control_id}/status";

/// Limits and windows the endpoint enforces.
#[derive(Debug, Clone, Copy)]
pub struct EndpointConfig {
    pub window: TimestampWindow,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Time allowed to receive a request's body, and separately to store the status.
    pub request_timeout: Duration,
}

struct Endpoint<S> {
    store: Arc<S>,
    config: EndpointConfig,
    metrics: Arc<Metrics>,
}

/// The endpoint's routes: the status API, `/healthz`, `/readyz`, and GitLab-style JSON 404/405s.
pub fn router<S: EndpointStore>(
    store: Arc<S>,
    config: EndpointConfig,
    metrics: Arc<Metrics>,
) -> Router {
    let endpoint = Arc::new(Endpoint {
        store,
        config,
        metrics,
    });
    Router::new()
        .route(
            STATUS_ROUTE,
            on(MethodFilter::PATCH.or(MethodFilter::POST), set_status::<S>)
                .fallback(method_not_allowed),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<S>))
        .fallback(not_found)
        .with_state(endpoint)
}

async fn set_status<S: EndpointStore>(
    State(endpoint): State<Arc<Endpoint<S>>>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    // Ids that are not UTF-8 (`%FF`): a JSON error like every other answer, not axum's text.
    let (project, control) = match path {
        Ok(Path(ids)) => ids,
        Err(rejection) => {
            endpoint
                .metrics
                .status_call("bad_request", started.elapsed());
            return error_response(rejection.status(), rejection.body_text());
        }
    };
    let config = endpoint.config;
    let body = match request::read_body(body, config.max_body_bytes, config.request_timeout).await {
        Ok(body) => body,
        Err(refusal) => {
            endpoint
                .metrics
                .status_call("bad_request", started.elapsed());
            return refusal;
        }
    };
    let call = request::StatusCall {
        project: &project,
        control: &control,
        query: query.as_deref(),
        headers: &headers,
        body: &body,
    };
    let now = jiff::Timestamp::now();
    let outcome =
        verify::verify_and_record(&endpoint.store, &config, &call, now, &endpoint.metrics).await;
    let result = outcome.as_ref().map_or_else(Rejection::label, |_| "stored");
    endpoint.metrics.status_call(result, started.elapsed());
    match outcome {
        Ok(stored) => Json(json!({ "status": stored })).into_response(),
        Err(rejection) => rejection_response(&rejection),
    }
}

async fn readyz<S: EndpointStore>(State(endpoint): State<Arc<Endpoint<S>>>) -> Response {
    if endpoint.store.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "controls not loaded yet").into_response()
    }
}

/// GitLab's error body: `{"error":"<message>"}`.
fn error_response(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

fn rejection_response(rejection: &Rejection) -> Response {
    let code =
        StatusCode::from_u16(rejection.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_response(code, rejection.to_string())
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "404 Not Found")
}

async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed")
}

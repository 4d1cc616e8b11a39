//! HTTP plumbing: the router, the mapping of Kubernetes REST paths to a [`Target`], and the
//! dispatch of each method to its verb. Every error leaves as a `Status`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, middleware};
use serde_json::Value;

use super::discovery;
use super::faults::{self, Faults};
use super::openapi;
use super::patch::Patch;
use super::resources::Registry;
use super::status::ApiError;
use super::store::Store;
use super::strategy::Subresource;
use super::table;
use super::verbs::{self, Target, WriteOptions};
use super::watch;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    /// `host:port`, for the discovery document that reports it.
    pub address: String,
}

/// Kubernetes paths are too regular and too many to list as routes: one fallback handler
/// parses them all, behind the fault-injection middleware.
pub fn router(state: AppState) -> Router {
    let faults = state.faults.clone();
    Router::new()
        .fallback(handle)
        .with_state(state)
        .layer(middleware::from_fn_with_state(faults, faults::inject))
}

async fn handle(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    dispatch(&app, &method, &uri, &headers, &body).unwrap_or_else(IntoResponse::into_response)
}

fn dispatch(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let query = Query::<HashMap<String, String>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?
        .0;
    let accept = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if method == Method::GET {
        let registry = &app.registry;
        if let Some((document, content_type)) =
            discovery::document(registry, &app.address, uri.path(), accept)
        {
            return Ok(([(CONTENT_TYPE, content_type)], Json(document)).into_response());
        }
        if let Some((document, content_type)) = openapi::document(registry, uri.path()) {
            return Ok(([(CONTENT_TYPE, content_type)], Json(document)).into_response());
        }
    }
    let target = parse_target(&app.registry, uri.path())?;
    check_method(method, &target)?;
    if method == Method::GET {
        read(app, &target, &query, table::requested(accept))
    } else {
        write(app, method, &target, &query, headers, body)
    }
}

/// Rejects what the real server has no route for.
fn check_method(method: &Method, target: &Target) -> Result<(), ApiError> {
    // Across all namespaces a namespaced resource can only be read (listed or watched).
    if target.rt.namespaced && target.namespace.is_none() && method != Method::GET {
        return Err(ApiError::unknown_resource());
    }
    let allowed = match target.subresource {
        Subresource::Status => [Method::GET, Method::PUT, Method::PATCH].contains(method),
        Subresource::Main if target.name.is_some() => method != Method::POST,
        Subresource::Main => [Method::GET, Method::POST, Method::DELETE].contains(method),
    };
    // The verbs /status refuses as recorded (`20-status-subresource.json`); any other refusal
    // keeps the generic answer, which no fixture records yet.
    match (allowed, target.subresource, method) {
        (true, ..) => Ok(()),
        (false, Subresource::Status, &Method::POST) => {
            Err(ApiError::verb_not_supported(&target.rt, "create"))
        }
        (false, Subresource::Status, &Method::DELETE) => {
            Err(ApiError::verb_not_supported(&target.rt, "delete"))
        }
        (false, ..) => Err(ApiError::method_not_allowed()),
    }
}

/// GET: one object, a watch or a list; an object or list as a Table when `table` (the Table
/// version the client asked for) says so.
fn read(
    app: &AppState,
    target: &Target,
    query: &HashMap<String, String>,
    table: Option<&str>,
) -> Result<Response, ApiError> {
    let rt = &target.rt;
    if target.name.is_some() {
        let obj = verbs::get(&app.store, target)?;
        match table {
            Some(version) => ok(table::of_object(rt, version, query, obj)?),
            None => ok(obj),
        }
    } else if watch::is_watch(query) {
        watch::serve(&app.store, &app.faults, target, query)
    } else {
        let list = verbs::list(&app.store, target, query)?;
        match table {
            Some(version) => ok(table::of_list(rt, version, query, list)?),
            None => ok(list),
        }
    }
}

fn write(
    app: &AppState,
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let (store, opts) = (&app.store, WriteOptions::from_query(query));
    match (method.clone(), target.name.is_some()) {
        (Method::POST, _) => {
            let created = verbs::create(store, target, json_body(body)?, &opts)?;
            reply(StatusCode::CREATED, created)
        }
        (Method::PUT, _) => {
            let (obj, created) = verbs::replace(store, target, json_body(body)?, &opts)?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            reply(code, obj)
        }
        (Method::PATCH, _) => {
            let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let patch = Patch::parse(&target.rt, content_type.unwrap_or_default(), body)?;
            let (obj, created) = verbs::patch(store, target, &patch, &opts)?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            reply(code, obj)
        }
        (Method::DELETE, true) => ok(verbs::delete(store, target, &delete_options(body)?, &opts)?),
        (Method::DELETE, false) => {
            let options = delete_options(body)?;
            ok(verbs::delete_collection(
                store, target, query, &options, &opts,
            )?)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn ok(obj: Value) -> Result<Response, ApiError> {
    reply(StatusCode::OK, obj)
}

fn reply(code: StatusCode, obj: Value) -> Result<Response, ApiError> {
    Ok((code, Json(obj)).into_response())
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// The optional DeleteOptions body of a DELETE.
fn delete_options(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Value::Null)
    } else {
        json_body(body)
    }
}

/// Maps `/api/v1/...` and `/apis/{group}/{version}/...` paths, namespaced
/// (`namespaces/{ns}/{plural}[/{name}[/status]]`) or not (`{plural}[/{name}[/status]]`), to
/// the resource they address; 404 for anything else.
pub fn parse_target(registry: &Registry, path: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::unknown_resource()),
    };
    // `namespaces/{name}/status` is the Namespace's own subresource, not a resource in it.
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if rest.first().is_some_and(|r| *r != "status") => {
            (Some(*ns), rest)
        }
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, Subresource::Main),
        [plural, name] => (*plural, Some(*name), Subresource::Main),
        [plural, name, "status"] => (*plural, Some(*name), Subresource::Status),
        _ => return Err(ApiError::unknown_resource()),
    };
    let rt = registry
        .find(group, version, plural)
        .ok_or_else(ApiError::unknown_resource)?;
    let misplaced = match namespace {
        Some(_) => !rt.namespaced,
        None => rt.namespaced && name.is_some(),
    };
    if misplaced || (subresource == Subresource::Status && !rt.status_subresource) {
        return Err(ApiError::unknown_resource());
    }
    Ok(Target {
        rt,
        namespace: namespace.map(String::from),
        name: name.map(String::from),
        subresource,
    })
}

//! Errors answered as Kubernetes `Status` objects, with the codes, reasons and messages of the
//! real API server: kube-rs decodes them into `kube::Error::Api`, and operators branch on
//! `code` and `reason` (409 Conflict → retry, 404 → gone, 410 → re-list), so these must match.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::resources::ResourceType;
use super::schema::FieldError;

/// A failed request, rendered as a `Status` with `status: Failure`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// An error whose reason is the usual one for `code`, as injected by the fault switches.
    pub fn for_code(code: u16, message: impl Into<String>) -> Self {
        Self::new(code, reason_for_code(code), message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// The answer for a path that names no served resource.
    pub fn unknown_resource() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            // The real server does not name the type it was sent (`21-patch-content-types.json`).
            "the body of the request was in an unknown format - accepted media types include: \
             application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        )
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified()),
        )
        .with_resource_details(rt, name)
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified()),
        )
        .with_resource_details(rt, name)
    }

    /// The optimistic-concurrency failure: the caller's `resourceVersion` (or DeleteOptions
    /// precondition) no longer matches the stored object.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .with_resource_details(rt, name)
    }

    /// A 422 listing every field error, formatted like the API server's aggregate message.
    pub fn invalid(rt: &ResourceType, name: &str, errors: &[FieldError]) -> Self {
        let kind = match rt.group.as_str() {
            "" => rt.kind.clone(),
            group => format!("{}.{group}", rt.kind),
        };
        Self::invalid_as(&kind, &rt.kind, rt, name, errors)
    }

    /// A 422 naming the object as `{message_kind} "name"`, with `details.kind` as given: schema
    /// errors name the kind (`ExternalControl.extctl.dev`), some others the resource.
    fn invalid_as(
        message_kind: &str,
        details_kind: &str,
        rt: &ResourceType,
        name: &str,
        errors: &[FieldError],
    ) -> Self {
        let messages: Vec<String> = errors.iter().map(FieldError::to_string).collect();
        let summary = match messages.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.detail, "field": e.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{message_kind} \"{name}\" is invalid: {summary}"),
        )
        .with_details(
            json!({"name": name, "group": rt.group, "kind": details_kind, "causes": causes}),
        )
    }

    /// 410 for a watch or continue token older than the kept event history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Like the real server, `details.kind` is the resource (plural) for lookups and conflicts.
    /// (The core group is left out, as the real server leaves it for Secrets in `18-secrets.json`
    /// and Events in `34-events.json`; Leases name theirs, `31-leases.json`.)
    fn with_resource_details(self, rt: &ResourceType, name: &str) -> Self {
        let mut details = json!({"name": name, "kind": rt.plural});
        if !rt.group.is_empty() {
            details["group"] = json!(rt.group);
        }
        self.with_details(details)
    }

    /// 405 for a verb a subresource does not serve: `create` (POST) and `delete` (DELETE) on
    /// `/status`, as recorded in `20-status-subresource.json`.
    pub fn verb_not_supported(rt: &ResourceType, verb: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!(
                "{verb} is not supported on resources of kind \"{}\"",
                rt.qualified()
            ),
        )
        .with_details(json!({"group": rt.group, "kind": rt.plural}))
    }

    /// 422 for an update of a custom resource without `metadata.resourceVersion`, naming the
    /// resource rather than the kind (`09-put-without-rv.json`).
    pub fn resource_version_required(rt: &ResourceType, name: &str) -> Self {
        let error = FieldError::new(
            "metadata.resourceVersion",
            "FieldValueInvalid",
            "Invalid value: 0: must be specified for an update",
        );
        Self::invalid_as(&rt.qualified(), &rt.plural, rt, name, &[error])
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self.to_status())).into_response()
    }
}

/// The `StatusReason` the API server pairs with each HTTP code.
fn reason_for_code(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

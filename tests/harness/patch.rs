//! PATCH bodies, by content type: JSON merge patch (RFC 7386), JSON patch (RFC 6902),
//! server-side apply, and strategic merge patch (built-in kinds only, treated as a merge patch).
//!
//! Server-side apply is modelled as "create if absent, else merge the applied fields in like a
//! merge patch". Field ownership is not tracked: no `managedFields`, no conflicts between field
//! managers (so `force` has no effect), fields dropped from a later apply are not removed, and
//! lists are replaced whole rather than merged by `x-kubernetes-list-map-keys`.

use json_patch::{AddOperation, PatchOperation};
use serde_json::{Value, json};

use super::resources::ResourceType;
use super::status::ApiError;

/// A parsed PATCH body.
#[derive(Debug)]
pub enum Patch {
    Merge(Value),
    Json(json_patch::Patch),
    /// Server-side apply: the applied configuration, a (partial) object.
    Apply(Value),
}

impl Patch {
    /// Parses `body` according to `content_type`: 415 for a type the resource does not accept,
    /// 400 for a body that does not parse.
    pub fn parse(rt: &ResourceType, content_type: &str, body: &[u8]) -> Result<Self, ApiError> {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        match media_type {
            "application/merge-patch+json" => parse_json(body).map(Self::Merge),
            // The real server only knows the patch strategies of built-in types; for those,
            // merging covers what an operator sends (maps; lists are replaced).
            "application/strategic-merge-patch+json" if !rt.custom => {
                parse_json(body).map(Self::Merge)
            }
            "application/json-patch+json" => serde_json::from_slice(body)
                .map(Self::Json)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}"))),
            "application/apply-patch+yaml" => parse_applied(body).map(Self::Apply),
            _ => Err(ApiError::unsupported_media_type()),
        }
    }

    /// The result of applying this patch to `target`; 422 when a JSON patch operation fails
    /// (a `test` that does not match, a path that does not exist), with the real server's
    /// message and empty details (`10-jsonpatch-test.json`).
    pub fn apply_to(&self, target: &Value) -> Result<Value, ApiError> {
        let mut doc = target.clone();
        match self {
            Self::Merge(patch) | Self::Apply(patch) => json_patch::merge(&mut doc, patch),
            Self::Json(patch) => {
                for operation in &patch.0 {
                    apply_operation(&mut doc, operation).map_err(|_| {
                        ApiError::new(422, "Invalid", JSON_PATCH_FAILED).with_details(json!({}))
                    })?;
                }
            }
        }
        Ok(doc)
    }
}

/// One JSON patch operation as kube-apiserver's library (evanphx/json-patch) applies it, where
/// it departs from RFC 6902 (`10-jsonpatch-test.json`, `11-jsonpatch-test-missing-null.json`):
/// `replace` of a missing key adds it, and `test` of a missing key with the value `null` passes
/// when the parent exists.
fn apply_operation(doc: &mut Value, operation: &PatchOperation) -> Result<(), ()> {
    let parent_exists = |path: &str| {
        let parent = &path[..path.rfind('/').unwrap_or(0)];
        doc.pointer(parent).is_some()
    };
    let operation = match operation {
        PatchOperation::Replace(replace) if doc.pointer(replace.path.as_str()).is_none() => {
            PatchOperation::Add(AddOperation {
                path: replace.path.clone(),
                value: replace.value.clone(),
            })
        }
        PatchOperation::Test(test) if doc.pointer(test.path.as_str()).is_none() => {
            let passes = test.value.is_null() && parent_exists(test.path.as_str());
            return if passes { Ok(()) } else { Err(()) };
        }
        other => other.clone(),
    };
    json_patch::patch(doc, &[operation]).map_err(|_| ())
}

/// What kube-apiserver v1.36 answers when a JSON patch operation fails, whatever the operation.
pub const JSON_PATCH_FAILED: &str =
    "the server rejected our request due to an error in our request";

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// An applied configuration: kube-rs sends JSON, which is YAML; other clients may send YAML.
/// Like the real server, it must say what it is (apiVersion and kind).
fn parse_applied(body: &[u8]) -> Result<Value, ApiError> {
    let applied: Value = serde_json::from_slice(body)
        .or_else(|_| serde_yaml::from_slice(body))
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    let named = |field: &str| applied[field].as_str().is_some_and(|s| !s.is_empty());
    if !named("apiVersion") || !named("kind") {
        return Err(ApiError::bad_request(
            "apiVersion and kind must be set in an applied configuration",
        ));
    }
    Ok(applied)
}

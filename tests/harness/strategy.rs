//! How each write shapes the stored object, after the real server's registry strategies
//! (PrepareForCreate, PrepareForUpdate, Validate, BeforeDelete): server-owned metadata, the
//! split between a resource and its `/status` subresource, `metadata.generation`, schema
//! handling for custom resources, and graceful deletion with finalizers.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use regex::Regex;
use serde_json::{Map, Value, json};

use super::resources::ResourceType;
use super::schema::{self, FieldError};
use super::status::ApiError;
use super::store::Outcome;

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

/// Metadata only the server sets; a client's values for them are ignored on update (its
/// `resourceVersion` only serves as a precondition, checked before).
const SERVER_OWNED_METADATA: [&str; 8] = [
    "name",
    "resourceVersion",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
];

/// What the server checks names against: a DNS-1123 subdomain (a label for Namespaces).
static SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("valid regex")
});
static LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("valid regex"));

/// Options of a write request that change how the object is prepared.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteMode {
    /// `fieldValidation=Strict`: reject undeclared fields instead of pruning them.
    pub strict: bool,
    /// A write through `/status`: the status is validated against its own schema.
    pub status_write: bool,
}

/// The object a create stores. Namespace and name (or a generated one) are settled here and
/// the server-owned metadata set; status is dropped when `/status` is a subresource.
pub fn prepare_create(
    rt: &ResourceType,
    namespace: Option<&str>,
    mut obj: Value,
    mode: WriteMode,
) -> Result<Value, ApiError> {
    check_body(rt, &obj)?;
    settle_namespace(rt, namespace, &mut obj)?;
    let name = settle_name(rt, &mut obj)?;
    let meta = &mut obj["metadata"];
    meta["uid"] = json!(new_uid());
    meta["creationTimestamp"] = json!(now());
    for transient in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        remove_field(meta, transient);
    }
    if rt.custom {
        meta["generation"] = json!(1);
    }
    if rt.status_subresource {
        remove_field(&mut obj, "status");
    }
    if rt.kind == "Namespace" {
        obj["status"] = json!({"phase": "Active"});
    }
    normalize(rt, &name, &mut obj, None, mode)?;
    Ok(obj)
}

/// The object an update of `old` with `new` (a PUT body or a patched object) stores.
///
/// On the main resource a status subresource's `.status` is kept as stored; on `/status` only
/// `.status` is taken from `new`. Server-owned metadata always stays as stored, and
/// `metadata.generation` moves when anything but metadata and status changed.
pub fn prepare_update(
    rt: &ResourceType,
    old: &Value,
    new: Value,
    subresource: Subresource,
    mode: WriteMode,
) -> Result<Value, ApiError> {
    check_body(rt, &new)?;
    let mut obj = match subresource {
        Subresource::Status => with_field_from(old.clone(), "status", &new),
        Subresource::Main if rt.status_subresource => with_field_from(new, "status", old),
        Subresource::Main => new,
    };
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    for field in SERVER_OWNED_METADATA {
        copy_field(&old["metadata"], &mut obj["metadata"], field);
    }
    let name = old["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    forbid_new_finalizers_while_deleting(rt, &name, old, &obj)?;
    let status_write = matches!(subresource, Subresource::Status);
    normalize(
        rt,
        &name,
        &mut obj,
        Some(old),
        WriteMode {
            status_write,
            ..mode
        },
    )?;
    bump_generation(rt, old, &mut obj);
    Ok(obj)
}

/// 409 Conflict when `new` carries a `metadata.resourceVersion` other than the stored one.
pub fn check_resource_version(rt: &ResourceType, old: &Value, new: &Value) -> Result<(), ApiError> {
    match new["metadata"]["resourceVersion"].as_str() {
        Some(rv) if Some(rv) != old["metadata"]["resourceVersion"].as_str() => Err(
            ApiError::conflict(rt, old["metadata"]["name"].as_str().unwrap_or_default()),
        ),
        _ => Ok(()),
    }
}

/// What storing the prepared update `new` of `old` amounts to: nothing when it is identical (no
/// new resourceVersion, no watch event), removal when it empties the finalizers of an object
/// being deleted, a plain update otherwise.
pub fn update_outcome(old: &Value, new: Value) -> Outcome {
    if &new == old {
        Outcome::Unchanged(new)
    } else if is_deleting(&new) && !has_finalizers(&new) {
        Outcome::Remove(new)
    } else {
        Outcome::Put(new)
    }
}

/// What a DELETE (or the garbage collector) does: an object with finalizers only gets a
/// `deletionTimestamp` (and, as on the real server, a generation bump) and stays until an
/// update empties them; any other object goes at once.
pub fn deletion_outcome(current: &Value) -> Outcome {
    if !has_finalizers(current) {
        return Outcome::Remove(current.clone());
    }
    if is_deleting(current) {
        return Outcome::Unchanged(current.clone());
    }
    let mut obj = current.clone();
    let meta = &mut obj["metadata"];
    meta["deletionTimestamp"] = json!(now());
    meta["deletionGracePeriodSeconds"] = json!(0);
    if let Some(generation) = meta["generation"].as_u64() {
        meta["generation"] = json!(generation + 1);
    }
    Outcome::Put(obj)
}

pub fn is_deleting(obj: &Value) -> bool {
    obj["metadata"]
        .get("deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// Type, apiVersion and kind as served, Secret `stringData` folded into `data`, and for custom
/// resources the schema applied: prune, default, validate (OpenAPI, then CEL rules, which see
/// the stored object `old` as `oldSelf`).
fn normalize(
    rt: &ResourceType,
    name: &str,
    obj: &mut Value,
    old: Option<&Value>,
    mode: WriteMode,
) -> Result<(), ApiError> {
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    if rt.group.is_empty() && rt.plural == "secrets" {
        fold_secret_string_data(obj);
    }
    if rt.is_lease() {
        return settle_lease(rt, name, obj);
    }
    let Some(schema) = &rt.schema else {
        return Ok(());
    };
    let pruned = schema::prune(schema, obj);
    if mode.strict && !pruned.is_empty() {
        let fields: Vec<String> = pruned
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            fields.join(", ")
        )));
    }
    schema::apply_defaults(schema, obj);
    let status_schema = &schema["properties"]["status"];
    let mut errors = if mode.status_write && status_schema.is_object() {
        schema::validate_field(status_schema, "status", &obj["status"])
    } else {
        schema::validate(schema, obj)
    };
    // The CEL rules run alongside the OpenAPI checks unless one of these blocks them
    // (fixtures 04 and 13).
    if let Some(cel) = &rt.cel {
        if errors.iter().any(FieldError::blocks_cel) {
            errors.push(FieldError::cel_not_checked());
        } else {
            errors.extend(cel.check(obj, old));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, name, &errors))
    }
}

/// A Lease's spec as the Go types keep it (every field a pointer left out when nil, so a
/// `null` such as the `holderIdentity` of a released Lease disappears), validated as
/// `ValidateLeaseSpec` does (`31-leases.json`).
fn settle_lease(rt: &ResourceType, name: &str, obj: &mut Value) -> Result<(), ApiError> {
    if let Some(spec) = obj["spec"].as_object_mut() {
        spec.retain(|_, value| !value.is_null());
    }
    let spec = &obj["spec"];
    let mut errors = Vec::new();
    if let Some(seconds) = spec["leaseDurationSeconds"].as_i64().filter(|s| *s <= 0) {
        errors.push(FieldError::new(
            "spec.leaseDurationSeconds",
            "FieldValueInvalid",
            format!("Invalid value: {seconds}: must be greater than 0"),
        ));
    }
    if let Some(transitions) = spec["leaseTransitions"].as_i64().filter(|t| *t < 0) {
        errors.push(FieldError::new(
            "spec.leaseTransitions",
            "FieldValueInvalid",
            format!("Invalid value: {transitions}: must be greater than or equal to 0"),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, name, &errors))
    }
}

/// Like the real server: `stringData` is write-only and lands base64-encoded in `data`.
fn fold_secret_string_data(obj: &mut Value) {
    if obj.get("type").is_none_or(Value::is_null) {
        obj["type"] = json!("Opaque");
    }
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (key, value) in string_data {
        let plain = value.as_str().unwrap_or_default().as_bytes().to_vec();
        obj["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(plain));
    }
}

fn bump_generation(rt: &ResourceType, old: &Value, obj: &mut Value) {
    let Some(generation) = old["metadata"]["generation"].as_u64() else {
        return;
    };
    if rt.custom && generation_relevant(rt, old) != generation_relevant(rt, obj) {
        obj["metadata"]["generation"] = json!(generation + 1);
    }
}

/// The part of an object whose changes move `metadata.generation`: all but metadata, and but
/// status when status is a subresource.
fn generation_relevant(rt: &ResourceType, obj: &Value) -> Map<String, Value> {
    let mut fields = obj.as_object().cloned().unwrap_or_default();
    for ignored in ["apiVersion", "kind", "metadata"] {
        fields.remove(ignored);
    }
    if rt.status_subresource {
        fields.remove("status");
    }
    fields
}

fn forbid_new_finalizers_while_deleting(
    rt: &ResourceType,
    name: &str,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    if !is_deleting(old) {
        return Ok(());
    }
    let old_finalizers = old["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let added: Vec<&Value> = new["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| !old_finalizers.contains(f))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    let detail = format!(
        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {}",
        json!(added)
    );
    let error = FieldError::new("metadata.finalizers", "FieldValueForbidden", detail);
    Err(ApiError::invalid(rt, name, &[error]))
}

fn settle_namespace(
    rt: &ResourceType,
    namespace: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    match namespace.filter(|_| rt.namespaced) {
        Some(ns) => {
            if meta["namespace"]
                .as_str()
                .is_some_and(|body_ns| body_ns != ns)
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta["namespace"] = json!(ns);
        }
        None => remove_field(meta, "namespace"),
    }
    Ok(())
}

/// The name a create stores: the given one, or `generateName` plus five random characters.
fn settle_name(rt: &ResourceType, obj: &mut Value) -> Result<String, ApiError> {
    let meta = &mut obj["metadata"];
    let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => generate_name(prefix),
        _ => {
            let error = FieldError::new(
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            );
            return Err(ApiError::invalid(rt, "", &[error]));
        }
    };
    let (pattern, max, what) = if rt.kind == "Namespace" {
        (&*LABEL, 63, "RFC 1123 label")
    } else {
        (&*SUBDOMAIN, 253, "RFC 1123 subdomain")
    };
    if name.len() > max || !pattern.is_match(&name) {
        let detail = format!(
            "Invalid value: {}: a lowercase {what} must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character",
            json!(name)
        );
        let error = FieldError::new("metadata.name", "FieldValueInvalid", detail);
        return Err(ApiError::invalid(rt, &name, &[error]));
    }
    meta["name"] = json!(name);
    Ok(name)
}

fn generate_name(prefix: &str) -> String {
    // The alphabet the real server draws from (no vowels, no look-alike characters).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bits = random_u64();
    let suffix: String = (0..5)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char;
            bits /= ALPHABET.len() as u64;
            c
        })
        .collect();
    let prefix: String = prefix.chars().take(58).collect();
    format!("{prefix}{suffix}")
}

fn with_field_from(mut target: Value, field: &str, source: &Value) -> Value {
    match source.get(field) {
        Some(value) => target[field] = value.clone(),
        None => remove_field(&mut target, field),
    }
    target
}

fn copy_field(from: &Value, to: &mut Value, field: &str) {
    match from.get(field) {
        Some(value) => to[field] = value.clone(),
        None => remove_field(to, field),
    }
}

fn remove_field(obj: &mut Value, field: &str) {
    if let Some(map) = obj.as_object_mut() {
        map.remove(field);
    }
}

/// 400 unless the body is an object of this resource's type (a missing apiVersion or kind
/// is taken from the URL, as the real server does).
fn check_body(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let expected = [
        ("API version", "apiVersion", rt.api_version()),
        ("kind", "kind", rt.kind.clone()),
    ];
    for (what, field, want) in expected {
        if let Some(got) = obj[field]
            .as_str()
            .filter(|got| !got.is_empty() && *got != want)
        {
            return Err(ApiError::bad_request(format!(
                "the {what} in the data ({got}) does not match the expected {what} ({want})"
            )));
        }
    }
    Ok(())
}

/// RFC 3339 in seconds, as `metav1.Time` serializes.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// Random enough for uids and generated names without a `rand` dependency: std's per-instance
/// random hasher keys, fed a counter so consecutive calls differ.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

//! Validating like the API server: an ExternalControl against the CRD's own schema (the
//! OpenAPI checks with `jsonschema`, the CEL rules with `kube-cel`, unknown fields refused as
//! `kubectl apply` does), and object names by Kubernetes' naming rules.

use std::fmt;
use std::sync::LazyLock;

use kube::CustomResourceExt;
use serde_json::Value;

use super::DEFAULT_NAMESPACE;
use extctl_core::crd::ExternalControl;
use extctl_core::duration;

/// `namespace/name`, defaulting the namespace, with Kubernetes' naming rules: a name is a
/// DNS subdomain, a namespace a DNS label.
pub(super) fn object_name(value: &Value) -> Result<String, String> {
    let metadata = &value["metadata"];
    let name = metadata["name"]
        .as_str()
        .ok_or("metadata.name: Required value")?;
    if !is_dns_subdomain(name) {
        return Err(format!(
            "metadata.name: {name:?} must be lowercase letters, digits, '-' and '.', each \
             '.'-separated part starting and ending with a letter or digit, at most 253 characters"
        ));
    }
    let namespace = match &metadata["namespace"] {
        Value::Null => DEFAULT_NAMESPACE,
        Value::String(namespace) => namespace,
        _ => return Err("metadata.namespace: must be a string".into()),
    };
    if namespace.len() > 63 || !is_dns_label(namespace) {
        return Err(format!(
            "metadata.namespace: {namespace:?} must be lowercase letters, digits and '-', \
             starting and ending with a letter or digit, at most 63 characters"
        ));
    }
    Ok(format!("{namespace}/{name}"))
}

/// RFC 1123 label characters and edges (the length limit is the caller's).
pub(super) fn is_dns_label(text: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let bytes = text.as_bytes();
    bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && edge(bytes.first())
        && edge(bytes.last())
}

pub(super) fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// The CRD's schema, compiled once: the OpenAPI part and the CEL rules.
struct ControlSchema {
    openapi: Value,
    structure: jsonschema::Validator,
    rules: kube_cel::CompiledSchema,
    /// Built once: building one registers every CEL function, which costs more than checking
    /// a control.
    cel: kube_cel::Validator,
}

static CONTROL_SCHEMA: LazyLock<ControlSchema> = LazyLock::new(|| {
    let crd = serde_json::to_value(ExternalControl::crd()).expect("a CRD always serializes");
    let openapi = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    ControlSchema {
        structure: jsonschema::validator_for(&openapi).expect("the CRD's schema compiles"),
        rules: kube_cel::compile_schema(&openapi),
        cel: kube_cel::Validator::new(),
        openapi,
    }
});

/// Validates an ExternalControl as the API server would, then reads it (schema defaults are
/// the serde defaults, which a test keeps equal).
pub(super) fn parse_control(mut value: Value) -> Result<ExternalControl, String> {
    if let Some(object) = value.as_object_mut() {
        // The status subresource is not writable through a manifest: the API server drops it.
        object.remove("status");
    }
    // `null` means "not set" to the API server (nullable fields keep it, others drop it);
    // either way extctl reads it as absent, and the schema check must not see it.
    drop_nulls(&mut value);
    let schema = &*CONTROL_SCHEMA;
    let mut problems: Vec<String> = unknown_fields(&schema.openapi, &value, "");
    problems.extend(
        schema
            .structure
            .iter_errors(&value)
            .map(|error| field_problem(&pointer_to_path(error.instance_path().as_str()), &error)),
    );
    if problems.is_empty()
        && let Err(errors) = schema.cel.validate_compiled(&schema.rules, &value, None)
    {
        problems.extend(
            errors
                .iter()
                .map(|error| format!("{}: {}", error.field_path, error.message)),
        );
    }
    if problems.is_empty() {
        problems.extend(durations_out_of_range(&value));
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    serde_path_to_error::deserialize(value).map_err(|error| path_problem(&error))
}

/// The duration fields Go's `time.Duration` cannot hold. The API server's CEL rule refuses
/// them (its `duration()` fails); kube-cel reads them as capped floats and would let them
/// through, and extctl would then run the control with ping silently off.
fn durations_out_of_range(value: &Value) -> Vec<String> {
    ["pingInterval", "pendingTimeout"]
        .into_iter()
        .filter_map(|field| {
            let text = value["spec"][field].as_str()?;
            let error = duration::parse(text).err()?;
            Some(format!("spec.{field}: {error}"))
        })
        .collect()
}

/// The fields of every Kubernetes object, absent from a CRD's schema.
const OBJECT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn drop_nulls(value: &mut Value) {
    if let Some(object) = value.as_object_mut() {
        object.retain(|_, field| !field.is_null());
        object.values_mut().for_each(drop_nulls);
    }
}

/// Fields the schema does not know, which the API server would silently drop (and `kubectl
/// apply` refuses): almost always a typo, such as `controlID`.
fn unknown_fields(schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let (Some(properties), Some(object)) = (schema["properties"].as_object(), value.as_object())
    else {
        return Vec::new();
    };
    object
        .iter()
        .flat_map(|(key, child)| {
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match properties.get(key) {
                Some(child_schema) => unknown_fields(child_schema, child, &field),
                // Every object has these; the API server checks them itself.
                None if path.is_empty() && OBJECT_FIELDS.contains(&key.as_str()) => Vec::new(),
                None => vec![format!("{field}: unknown field")],
            }
        })
        .collect()
}

fn field_problem(path: &str, error: &impl fmt::Display) -> String {
    if path.is_empty() {
        error.to_string()
    } else {
        format!("{path}: {error}")
    }
}

/// `/spec/secretRef/name` as `spec.secretRef.name`.
fn pointer_to_path(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

fn path_problem<E: fmt::Display>(error: &serde_path_to_error::Error<E>) -> String {
    let path = error.path().to_string();
    let path = if path == "." { String::new() } else { path };
    field_problem(&path, error.inner())
}

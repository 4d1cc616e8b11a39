//! CEL validation rules (`x-kubernetes-validations`) of custom resources, evaluated with
//! kube-cel, which implements the Kubernetes CEL libraries. As on the real server they run
//! after the OpenAPI checks pass, transition rules see `oldSelf` on updates, and failures are
//! reported as field errors in the 422 `Invalid` Status.

use kube_cel::{CompiledSchema, ErrorKind, RootContext, ValidationError, Validator};
use serde_json::Value;

use super::schema::FieldError;

thread_local! {
    /// Registering the Kubernetes CEL functions is costly; do it once per server thread.
    static VALIDATOR: Validator = Validator::new();
}

/// The compiled rules of one version of a CRD.
#[derive(Debug)]
pub struct CelRules {
    compiled: CompiledSchema,
    root: RootContext,
}

impl CelRules {
    /// Compiles the rules of `schema`; None when it has none (the common case, kept cheap).
    pub fn compile(schema: &Value, group: &str, api_version: &str, kind: &str) -> Option<Self> {
        if !schema.to_string().contains("x-kubernetes-validations") {
            return None;
        }
        let root = RootContext {
            api_version: api_version.to_string(),
            api_group: group.to_string(),
            kind: kind.to_string(),
        };
        Some(Self {
            compiled: kube_cel::compile_schema(schema),
            root,
        })
    }

    /// The rules `obj` breaks; `old` is the stored object on an update (for `oldSelf`).
    pub fn check(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let outcome = VALIDATOR
            .with(|v| v.validate_compiled_with_context(&self.compiled, obj, old, Some(&self.root)));
        match outcome {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| field_error(obj, e)).collect(),
        }
    }
}

/// A failed rule as the server reports it: by the rule's `reason` when it gives one, else as
/// an invalid value quoting the field's type (not its value), e.g.
/// `spec.interval: Invalid value: "string": must be at least 1s`.
fn field_error(obj: &Value, error: &ValidationError) -> FieldError {
    let message = match error.kind {
        ErrorKind::ValidationFailure => error.message.clone(),
        _ => format!(
            "rule {:?} could not be evaluated: {}",
            error.rule, error.message
        ),
    };
    let path = error.field_path.as_str();
    match error.reason.as_deref() {
        Some("FieldValueForbidden") => {
            FieldError::new(path, "FieldValueForbidden", format!("Forbidden: {message}"))
        }
        Some("FieldValueRequired") => FieldError::new(
            path,
            "FieldValueRequired",
            format!("Required value: {message}"),
        ),
        Some("FieldValueDuplicate") => FieldError::new(
            path,
            "FieldValueDuplicate",
            format!("Duplicate value: {message}"),
        ),
        _ => {
            let type_name = value_at(obj, path).map_or("object", json_type_name);
            FieldError::new(
                path,
                "FieldValueInvalid",
                format!("Invalid value: \"{type_name}\": {message}"),
            )
        }
    }
}

/// The value at a dotted path with optional `[index]` steps, e.g. `spec.items[0].name`.
fn value_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut steps = path.split('.').filter(|s| !s.is_empty());
    steps.try_fold(obj, |value, step| {
        let (key, indexes) = step
            .split_once('[')
            .map_or((step, ""), |(k, rest)| (k, rest));
        let mut value = if key.is_empty() {
            value
        } else {
            value.get(key)?
        };
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            value = value.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
        Some(value)
    })
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

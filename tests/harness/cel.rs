//! CEL validation rules (`x-kubernetes-validations`) of custom resources, evaluated with
//! kube-cel, which implements the Kubernetes CEL libraries. As on the real server they run
//! alongside the OpenAPI checks, transition rules see `oldSelf` on updates, and failures are
//! reported as field errors in the 422 `Invalid` Status, worded as the server words them.

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
    /// Each rule's `message`, by its expression (the server names a rule by its message).
    messages: std::collections::HashMap<String, String>,
    /// The schema, to find the fields whose rules convert them with `duration()`.
    schema: Value,
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
        let mut messages = std::collections::HashMap::new();
        collect_messages(schema, &mut messages);
        Some(Self {
            compiled: kube_cel::compile_schema(schema),
            root,
            messages,
            schema: schema.clone(),
        })
    }

    /// The rules `obj` breaks; `old` is the stored object on an update (for `oldSelf`).
    pub fn check(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let outcome = VALIDATOR
            .with(|v| v.validate_compiled_with_context(&self.compiled, obj, old, Some(&self.root)));
        let mut errors: Vec<FieldError> = match outcome {
            Ok(()) => Vec::new(),
            Err(errors) => errors
                .iter()
                .map(|e| field_error(obj, e, &self.messages))
                .collect(),
        };
        // cel-go's `duration()` refuses what Go's time.Duration cannot hold, where kube-cel
        // saturates: the rule fails to evaluate there, whatever it compares.
        for (field, message) in durations_beyond_go(&self.schema, obj, "") {
            errors.retain(|e| e.field != field);
            errors.push(FieldError::new(
                &field,
                "FieldValueInvalid",
                format!(
                    "Invalid value: \"string\": type conversion error from 'string' to \
                     'google.protobuf.Duration' evaluating rule: {message}"
                ),
            ));
        }
        errors
    }
}

/// The fields (path, rule message) whose value a rule converts with `duration(self)` and that
/// Go's `time.ParseDuration` reads as a well-formed duration beyond its range
/// (2562047h47m16.854775807s). Not in a recording: from cel-go's and Go's code.
fn durations_beyond_go(schema: &Value, value: &Value, path: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if let Value::String(text) = value
        && go_duration_seconds(text).is_some_and(|seconds| seconds > GO_MAX_SECONDS)
    {
        let rules = schema["x-kubernetes-validations"].as_array();
        for rule in rules.into_iter().flatten() {
            if rule["rule"]
                .as_str()
                .is_some_and(|r| r.contains("duration(self)"))
            {
                let message = rule["message"].as_str().or(rule["rule"].as_str());
                found.push((path.to_owned(), message.unwrap_or_default().to_owned()));
            }
        }
    }
    if let (Value::Object(fields), Some(properties)) = (value, schema["properties"].as_object()) {
        for (key, child) in fields {
            if let Some(child_schema) = properties.get(key) {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                found.extend(durations_beyond_go(child_schema, child, &child_path));
            }
        }
    }
    found
}

/// Go's largest `time.Duration`, in seconds.
const GO_MAX_SECONDS: f64 = i64::MAX as f64 / 1e9;

/// The length of a Go duration string (`1h30m`, `1.5s`, `300ms`) in seconds, when well formed.
fn go_duration_seconds(text: &str) -> Option<f64> {
    let units = [
        ("ns", 1e-9),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    let mut rest = text.strip_prefix(['+', '-']).unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|end| *end > 0)?;
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let (unit, scale) = units
            .iter()
            .filter(|(unit, _)| rest.starts_with(unit))
            .max_by_key(|(unit, _)| unit.len())?;
        total += number * scale;
        rest = &rest[unit.len()..];
    }
    Some(total)
}

/// A failed rule as the server reports it: by the rule's `reason` when it gives one, else as
/// an invalid value. A rule that evaluated to false quotes the value and says its message; one
/// that could not be evaluated quotes the value's type and says why, then which rule (fixture
/// 04: `Invalid value: "string": type conversion error from 'string' to
/// 'google.protobuf.Duration' evaluating rule: must be at least 1s`).
fn field_error(
    obj: &Value,
    error: &ValidationError,
    messages: &std::collections::HashMap<String, String>,
) -> FieldError {
    let rule_message = || messages.get(&error.rule).unwrap_or(&error.rule).clone();
    let message = match error.kind {
        ErrorKind::ValidationFailure => error.message.clone(),
        ErrorKind::EvaluationError => {
            format!(
                "{} evaluating rule: {}",
                cel_go_error(&error.message),
                rule_message()
            )
        }
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
        // A rule that evaluated to false quotes the value; one that could not be evaluated
        // quotes the value's type (fixture 04: `"0s"`, `"500ms"`, but `"string"` for `12 hours`).
        _ if error.kind == ErrorKind::ValidationFailure => {
            let value = value_at(obj, path).map_or("null".to_owned(), Value::to_string);
            FieldError::new(
                path,
                "FieldValueInvalid",
                format!("Invalid value: {value}: {message}"),
            )
        }
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

/// cel-go's wording for what kube-cel reports as a failed conversion function (only the
/// conversions the CRDs here use; anything else keeps kube-cel's text).
fn cel_go_error(message: &str) -> String {
    for (function, target) in [
        ("duration", "google.protobuf.Duration"),
        ("timestamp", "google.protobuf.Timestamp"),
    ] {
        if message.contains(&format!("Error executing function '{function}'")) {
            return format!("type conversion error from 'string' to '{target}'");
        }
    }
    message.to_owned()
}

/// Every `x-kubernetes-validations` rule's message in `schema`, by the rule's expression.
fn collect_messages(schema: &Value, messages: &mut std::collections::HashMap<String, String>) {
    match schema {
        Value::Object(map) => {
            for rule in map
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(expression), Some(message)) =
                    (rule["rule"].as_str(), rule["message"].as_str())
                {
                    messages.insert(expression.to_owned(), message.to_owned());
                }
            }
            map.values().for_each(|v| collect_messages(v, messages));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_messages(v, messages)),
        _ => {}
    }
}

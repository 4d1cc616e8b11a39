//! What the API server does with a custom resource's structural `openAPIV3Schema` on every
//! write: prune undeclared fields, apply `default`s, then validate. An operator that writes a
//! field its CRD does not declare loses it on a real cluster, so the harness must drop it too.
//!
//! Validation covers `type`, `nullable`, `enum`, `minimum`/`maximum` (and the exclusive forms),
//! `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`, `minProperties`/`maxProperties`,
//! `required`, `x-kubernetes-int-or-string`, and `allOf`/`anyOf`/`oneOf`/`not`. It does not
//! cover `format`, `multipleOf`, `uniqueItems` or list-type uniqueness. CEL rules
//! (`x-kubernetes-validations`) are checked in `cel.rs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use serde_json::{Map, Value};

/// Top-level fields every object keeps whatever its schema says.
const OBJECT_META_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// One field-level validation failure, rendered like the server's `field.Error`.
#[derive(Debug, Clone)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.items[0].name`.
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, ...: the `causes[].reason` of the Status.
    pub reason: &'static str,
    /// The message after the path, e.g. `Required value`.
    pub detail: String,
}

impl FieldError {
    pub fn new(field: &str, reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            reason,
            detail: detail.into(),
        }
    }

    fn invalid(field: &str, value: &Value, why: &str) -> Self {
        Self::new(
            field,
            "FieldValueInvalid",
            format!("Invalid value: {}: {why}", render(value)),
        )
    }

    /// A value of the wrong type or format (Go's `field.TypeInvalid`: same wording, its own
    /// reason, and it stops the CEL rules, see [`Self::blocks_cel`]; fixture 13, steps 3 to 5).
    fn type_invalid(field: &str, value: &Value, why: &str) -> Self {
        Self {
            reason: "FieldValueTypeInvalid",
            ..Self::invalid(field, value, why)
        }
    }

    /// The cause kube-apiserver adds when errors stopped it from running the CEL rules
    /// (fixture 13: field `<nil>`).
    pub fn cel_not_checked() -> Self {
        Self::new(
            "<nil>",
            "FieldValueInvalid",
            "Invalid value: null: some validation rules were not checked because the object \
             was invalid; correct the existing errors to complete validation",
        )
    }

    /// Whether kube-apiserver skips the CEL rules after this error (`hasBlockingErr` in
    /// apiextensions-apiserver: unsupported values, missing or too long or too many values,
    /// wrong types). A pattern or bound failure does not (fixture 04, steps 2 and 6).
    pub fn blocks_cel(&self) -> bool {
        matches!(
            self.reason,
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field.as_str() {
            "" => write!(f, "{}", self.detail),
            field => write!(f, "{field}: {}", self.detail),
        }
    }
}

/// Removes the fields `schema` does not declare, and `null`s of non-nullable fields, from the
/// top-level object `obj`. Returns the removed paths (for `fieldValidation=Strict`).
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut removed = Vec::new();
    prune_object(schema, obj, "", true, &mut removed);
    removed
}

fn prune_value(schema: &Value, value: &mut Value, path: &str, removed: &mut Vec<String>) {
    match value {
        Value::Object(_) => prune_object(schema, value, path, false, removed),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_value(item_schema, item, &format!("{path}[{i}]"), removed);
                }
            }
        }
        _ => {}
    }
}

fn prune_object(
    schema: &Value,
    value: &mut Value,
    path: &str,
    root: bool,
    removed: &mut Vec<String>,
) {
    let Value::Object(fields) = value else { return };
    let declares_fields = schema.get("properties").is_some()
        || schema.get("additionalProperties").is_some()
        || schema["type"] == "object";
    let keeps_unknown = schema["x-kubernetes-preserve-unknown-fields"] == true
        || schema["additionalProperties"] == true
        || !declares_fields;
    let keeps_meta = root || schema["x-kubernetes-embedded-resource"] == true;
    let keys: Vec<String> = fields.keys().cloned().collect();
    for key in keys {
        if keeps_meta && OBJECT_META_FIELDS.contains(&key.as_str()) {
            continue;
        }
        let child_path = join(path, &key);
        let child_schema = schema["properties"]
            .get(&key)
            .or_else(|| schema.get("additionalProperties").filter(|s| s.is_object()));
        match child_schema {
            Some(s) if fields[&key].is_null() && s["nullable"] != true => {
                fields.remove(&key);
            }
            Some(s) => prune_value(
                s,
                fields.get_mut(&key).expect("key listed"),
                &child_path,
                removed,
            ),
            None if keeps_unknown => {}
            None => {
                fields.remove(&key);
                removed.push(child_path);
            }
        }
    }
}

/// Fills in absent fields that declare a `default`, top-down, so defaults nested inside a
/// defaulted object apply too (as on the real server).
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(fields) => default_object(schema, fields),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                items
                    .iter_mut()
                    .for_each(|item| apply_defaults(item_schema, item));
            }
        }
        _ => {}
    }
}

fn default_object(schema: &Value, fields: &mut Map<String, Value>) {
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (key, prop) in properties {
            if let (false, Some(default)) = (fields.contains_key(key), prop.get("default")) {
                fields.insert(key.clone(), default.clone());
            }
            if let Some(child) = fields.get_mut(key) {
                apply_defaults(prop, child);
            }
        }
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|s| s.is_object()) {
        let declared = schema.get("properties");
        for (key, child) in fields.iter_mut() {
            if declared.and_then(|p| p.get(key)).is_none() {
                apply_defaults(extra, child);
            }
        }
    }
}

/// Every violation of `schema` by the top-level object `obj` (whose metadata is not checked).
pub fn validate(schema: &Value, obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Value::Object(fields) = obj else {
        return errors;
    };
    let body: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| !OBJECT_META_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut root_schema = schema.clone();
    if let Some(Value::Array(required)) = root_schema.get_mut("required") {
        required.retain(|r| !OBJECT_META_FIELDS.contains(&r.as_str().unwrap_or_default()));
    }
    validate_value(&root_schema, &Value::Object(body), "", &mut errors);
    errors
}

/// Validates `value`, the object's `field` (such as `status`), against its own schema, as
/// kube-apiserver validates a write through `/status`: the messages name paths from `field`
/// down (`observedGeneration in body must be of type integer`), the causes the full path
/// (`status.observedGeneration`), as fixture 13 records.
pub fn validate_field(schema: &Value, field: &str, value: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_value(schema, value, "", &mut errors);
    for error in &mut errors {
        error.field = match error.field.as_str() {
            "" => field.to_owned(),
            path if path.starts_with('[') => format!("{field}{path}"),
            path => format!("{field}.{path}"),
        };
    }
    errors
}

fn validate_value(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    if !type_matches(schema, value, path, errors) {
        return;
    }
    check_enum(schema, value, path, errors);
    check_combinators(schema, value, path, errors);
    match value {
        Value::Number(_) => check_number(schema, value, path, errors),
        Value::String(s) => check_string(schema, s, value, path, errors),
        Value::Array(items) => check_array(schema, items, value, path, errors),
        Value::Object(fields) => check_object(schema, fields, path, errors),
        _ => {}
    }
}

/// Checks `type` (and `x-kubernetes-int-or-string`); false stops further checks of the value.
fn type_matches(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) -> bool {
    let ok = if schema["x-kubernetes-int-or-string"] == true {
        value.is_string() || is_integer(value)
    } else {
        match schema["type"].as_str() {
            None => true,
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => is_integer(value),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            Some(_) => true,
        }
    };
    if !ok {
        let expected = schema["type"].as_str().unwrap_or("integer or string");
        let actual = Value::String(json_type(value).to_string());
        errors.push(FieldError::type_invalid(
            path,
            &actual,
            &format!(
                "{path} in body must be of type {expected}: {}",
                render(&actual)
            ),
        ));
    }
    ok
}

fn check_enum(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(Value::Array(allowed)) = schema.get("enum") else {
        return;
    };
    if !allowed.contains(value) {
        let supported: Vec<String> = allowed.iter().map(render).collect();
        errors.push(FieldError::new(
            path,
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                render(value),
                supported.join(", ")
            ),
        ));
    }
}

fn check_combinators(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let passes = |s: &Value| {
        let mut sub = Vec::new();
        validate_value(s, value, path, &mut sub);
        sub.is_empty()
    };
    if let Some(Value::Array(all)) = schema.get("allOf") {
        all.iter()
            .for_each(|s| validate_value(s, value, path, errors));
    }
    if let Some(Value::Array(any)) = schema.get("anyOf")
        && !any.iter().any(passes)
    {
        errors.push(FieldError::invalid(
            path,
            value,
            "must validate at least one schema (anyOf)",
        ));
    }
    if let Some(Value::Array(one)) = schema.get("oneOf")
        && one.iter().filter(|s| passes(s)).count() != 1
    {
        errors.push(FieldError::invalid(
            path,
            value,
            "must validate one and only one schema (oneOf)",
        ));
    }
    if let Some(not) = schema.get("not")
        && passes(not)
    {
        errors.push(FieldError::invalid(
            path,
            value,
            "must not validate the schema (not)",
        ));
    }
}

fn check_number(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let n = value.as_f64().unwrap_or_default();
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = schema["exclusiveMinimum"] == true;
        if n < min || (exclusive && n == min) {
            let rel = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            let why = format!("{path} in body should be {rel} {}", go_number(min));
            errors.push(FieldError::invalid(path, value, &why));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = schema["exclusiveMaximum"] == true;
        if n > max || (exclusive && n == max) {
            let rel = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            let why = format!("{path} in body should be {rel} {}", go_number(max));
            errors.push(FieldError::invalid(path, value, &why));
        }
    }
}

fn check_string(schema: &Value, s: &str, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        let why = format!("{path} in body should be at least {min} chars long");
        errors.push(FieldError::invalid(path, value, &why));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        let detail = format!("Too long: may not be more than {max} bytes");
        errors.push(FieldError::new(path, "FieldValueTooLong", detail));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
        && !cached_regex(pattern).is_match(s)
    {
        let why = format!("{path} in body should match '{pattern}'");
        errors.push(FieldError::invalid(path, value, &why));
    }
    if schema["format"] == "date-time" && s.parse::<jiff::Timestamp>().is_err() {
        let why = format!(
            "{path} in body must be of type date-time: {}",
            render(value)
        );
        errors.push(FieldError::type_invalid(path, value, &why));
    }
}

fn check_array(
    schema: &Value,
    items: &[Value],
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let count = items.len() as u64;
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && count < min
    {
        let why = format!("{path} in body should have at least {min} items");
        errors.push(FieldError::invalid(path, value, &why));
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && count > max
    {
        let detail = format!("Too many: {count}: must have at most {max} items");
        errors.push(FieldError::new(path, "FieldValueTooMany", detail));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate_value(item_schema, item, &format!("{path}[{i}]"), errors);
        }
    }
}

fn check_object(
    schema: &Value,
    fields: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    for key in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !fields.contains_key(key) {
            errors.push(FieldError::new(
                &join(path, key),
                "FieldValueRequired",
                "Required value",
            ));
        }
    }
    let count = fields.len() as u64;
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && count < min
    {
        let why = format!("{path} in body should have at least {min} properties");
        errors.push(FieldError::invalid(
            path,
            &Value::Object(fields.clone()),
            &why,
        ));
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && count > max
    {
        let detail = format!("Too many: {count}: must have at most {max} items");
        errors.push(FieldError::new(path, "FieldValueTooMany", detail));
    }
    for (key, child) in fields {
        let child_schema = schema["properties"]
            .get(key)
            .or_else(|| schema.get("additionalProperties").filter(|s| s.is_object()));
        if let Some(child_schema) = child_schema {
            validate_value(child_schema, child, &join(path, key), errors);
        }
    }
}

fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) if is_integer(value) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as the server quotes it in messages: strings quoted, the rest as compact JSON.
fn render(value: &Value) -> String {
    value.to_string()
}

/// A bound as Go prints it: a YAML `minimum: 1.0` reads `1` in the server's messages.
fn go_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// CRD patterns are checked on every write; compiling each once keeps that cheap.
fn cached_regex(pattern: &str) -> Regex {
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .expect("regex cache poisoned");
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| {
            // A pattern Rust's regex cannot compile never matches, so the write is rejected
            // visibly instead of the rule being skipped silently.
            Regex::new(pattern).unwrap_or_else(|_| Regex::new("[^\\s\\S]").expect("valid regex"))
        })
        .clone()
}

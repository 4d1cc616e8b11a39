//! Events, as kube-apiserver serves them: core `v1` and `events.k8s.io/v1` are two views of
//! one storage, so an Event extctl creates through `events.k8s.io/v1` is what `kubectl
//! describe` and `kubectl get events` list through core `v1`. The harness stores the core
//! shape and converts (`16-events.json`: `note` is `message`, `regarding` is
//! `involvedObject`, `reportingController` is `reportingComponent`, `deprecatedSource` is
//! `source`), serialises both as the server's Go types do (`source: {}`, `firstTimestamp:
//! null`, `reportingComponent: ""` and so on), decodes `eventTime` as a MicroTime (exactly six
//! fractional digits, returned in UTC) and selects by the server's Event fields. An Event
//! written through either API is read, patched, listed by field selector and deleted through
//! the other, and an update through `events.k8s.io/v1` may change only `series` and metadata
//! (`34-events.json` in `tests/fixtures/kube-apiserver/`).

use serde_json::{Map, Value, json};

use super::resources::ResourceType;
use super::status::ApiError;

/// `events.k8s.io/v1` field -> core `v1` field, for the fields whose names differ.
const RENAMED: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// How a field the Go types always serialise reads when empty: a struct without `omitempty`
/// is `{}`, a zero time `null`, a string without `omitempty` `""`.
#[derive(Debug, Clone, Copy)]
enum Empty {
    Object,
    Null,
    Text,
}

impl Empty {
    fn value(self) -> Value {
        match self {
            Self::Object => json!({}),
            Self::Null => Value::Null,
            Self::Text => json!(""),
        }
    }
}

/// Fields serialised even when empty; every other field is left out when empty.
const CORE_ALWAYS: [(&str, Empty); 7] = [
    ("involvedObject", Empty::Object),
    ("source", Empty::Object),
    ("firstTimestamp", Empty::Null),
    ("lastTimestamp", Empty::Null),
    ("eventTime", Empty::Null),
    ("reportingComponent", Empty::Text),
    ("reportingInstance", Empty::Text),
];
const EVENTS_V1_ALWAYS: [(&str, Empty); 5] = [
    ("eventTime", Empty::Null),
    ("regarding", Empty::Object),
    ("deprecatedSource", Empty::Object),
    ("deprecatedFirstTimestamp", Empty::Null),
    ("deprecatedLastTimestamp", Empty::Null),
];

/// Decodes the times of an Event body as the server's JSON decoder does: MicroTimes
/// (`eventTime`, `series.lastObservedTime`) must have exactly six fractional digits, Times
/// (`firstTimestamp`, `lastTimestamp`) are RFC 3339; both come back in UTC. A value that does
/// not parse is a 400 (`16-events.json`). A Lease's `acquireTime` and `renewTime` are
/// MicroTimes too (`31-leases.json`). Anything else is returned as it is.
pub fn decode(rt: &ResourceType, mut obj: Value) -> Result<Value, ApiError> {
    if rt.is_lease() {
        for field in ["acquireTime", "renewTime"] {
            let value = obj.get_mut("spec").and_then(|s| s.get_mut(field));
            convert_time(value, micro_time).map_err(|error| {
                ApiError::bad_request(format!(
                    "Lease in version \"{}\" cannot be handled as a Lease: {error}",
                    rt.version
                ))
            })?;
        }
        return Ok(obj);
    }
    if !rt.is_event() {
        return Ok(obj);
    }
    let (first, last) = if rt.group.is_empty() {
        ("firstTimestamp", "lastTimestamp")
    } else {
        ("deprecatedFirstTimestamp", "deprecatedLastTimestamp")
    };
    let cannot_decode = |error: String| {
        ApiError::bad_request(format!(
            "Event in version \"{}\" cannot be handled as a Event: {error}",
            rt.version
        ))
    };
    if !obj.is_object() {
        return Ok(obj);
    }
    convert_time(obj.get_mut("eventTime"), micro_time).map_err(cannot_decode)?;
    let series_time = obj
        .get_mut("series")
        .and_then(|s| s.get_mut("lastObservedTime"));
    convert_time(series_time, micro_time).map_err(cannot_decode)?;
    for field in [first, last] {
        convert_time(obj.get_mut(field), time).map_err(cannot_decode)?;
    }
    Ok(obj)
}

fn convert_time(
    value: Option<&mut Value>,
    parse: fn(&str) -> Result<String, String>,
) -> Result<(), String> {
    if let Some(value) = value
        && let Some(text) = value.as_str()
    {
        *value = json!(parse(text)?);
    }
    Ok(())
}

/// `metav1.MicroTime`: Go's `time.Parse` with `2006-01-02T15:04:05.000000Z07:00`, reporting
/// where it stops as Go does; the result in UTC with six digits.
fn micro_time(text: &str) -> Result<String, String> {
    const LAYOUT: &str = "2006-01-02T15:04:05.000000Z07:00";
    let fail = |rest: &str, element: &str| {
        format!("parsing time {text:?} as {LAYOUT:?}: cannot parse {rest:?} as {element:?}")
    };
    let seconds_end = "2006-01-02T15:04:05".len();
    let date_ok = text.len() >= seconds_end
        && text.is_char_boundary(seconds_end)
        && text[..seconds_end].parse::<jiff::civil::DateTime>().is_ok();
    if !date_ok {
        return Err(fail(text, "2006"));
    }
    let rest = &text[seconds_end..];
    let fraction_ok = rest.len() >= 7
        && rest.starts_with('.')
        && rest.as_bytes()[1..7].iter().all(u8::is_ascii_digit);
    if !fraction_ok {
        return Err(fail(rest, ".000000"));
    }
    let zone = &rest[7..];
    let offset_ok = zone == "Z"
        || (zone.len() == 6
            && (zone.starts_with('+') || zone.starts_with('-'))
            && zone.as_bytes()[3] == b':');
    if !offset_ok {
        return Err(fail(zone, "Z07:00"));
    }
    let instant: jiff::Timestamp = text.parse().map_err(|_| fail(zone, "Z07:00"))?;
    Ok(instant.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// `metav1.Time`: RFC 3339, kept to the second, in UTC.
fn time(text: &str) -> Result<String, String> {
    let instant: jiff::Timestamp = text.parse().map_err(|_| {
        format!(
            "parsing time {text:?} as \"2006-01-02T15:04:05Z07:00\": cannot parse {text:?} as \"2006\""
        )
    })?;
    Ok(instant.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The stored (core `v1`) shape of an Event written through `rt`; anything but an Event is
/// returned as it is.
pub fn to_storage(rt: &ResourceType, obj: Value) -> Value {
    if !rt.is_event() {
        return obj;
    }
    let Value::Object(mut fields) = obj else {
        return obj;
    };
    if !rt.group.is_empty() {
        for (events_v1, core) in RENAMED {
            match fields.remove(events_v1) {
                Some(value) => fields.insert(core.into(), value),
                None => fields.remove(core),
            };
        }
    }
    fields.insert("apiVersion".into(), json!("v1"));
    fields.insert("kind".into(), json!("Event"));
    serialised(fields, &CORE_ALWAYS)
}

/// An Event as served at `rt` (`stored` is the core shape); anything else as stored.
pub fn present(rt: &ResourceType, stored: Value) -> Value {
    if !rt.is_event() || rt.group.is_empty() {
        return stored;
    }
    let Value::Object(mut fields) = stored else {
        return stored;
    };
    for (events_v1, core) in RENAMED {
        match fields.remove(core) {
            Some(value) => fields.insert(events_v1.into(), value),
            None => fields.remove(events_v1),
        };
    }
    serialised(fields, &EVENTS_V1_ALWAYS)
}

/// The fields as Go serialises them: the always-present ones filled in, empty strings, zero
/// counts and nulls of the others left out.
fn serialised(mut fields: Map<String, Value>, always: &[(&str, Empty)]) -> Value {
    fields.retain(|key, value| {
        always.iter().any(|(k, _)| k == key)
            || !(value.is_null()
                || *value == json!("")
                || (["count", "deprecatedCount"].contains(&key.as_str()) && *value == json!(0)))
    });
    for (key, empty) in always {
        let empty = empty.value();
        if fields
            .get(*key)
            .is_none_or(|v| v.is_null() && !empty.is_null())
        {
            fields.insert((*key).into(), empty);
        }
    }
    Value::Object(fields)
}

/// The core field label a field selector on `rt` names, or the server's 400 for a label it
/// does not support. `events.k8s.io/v1` labels are translated to the core ones
/// (`regarding.name` is `involvedObject.name`); other kinds select by `metadata.name` and
/// `metadata.namespace` only.
pub fn field_label(rt: &ResourceType, label: &str) -> Result<String, ApiError> {
    let unsupported = || ApiError::bad_request(format!("field label not supported: {label}"));
    if !rt.is_event() {
        return match label {
            "metadata.name" | "metadata.namespace" => Ok(label.into()),
            _ => Err(unsupported()),
        };
    }
    let core = if rt.group.is_empty() {
        let supported = label.strip_prefix("involvedObject.").map_or(
            ["reason", "reportingComponent", "source", "type"].contains(&label),
            |field| REFERENCE_FIELDS.contains(&field),
        );
        supported.then(|| label.to_string())
    } else {
        match label {
            "reportingController" => Some("reportingComponent".into()),
            "reason" | "type" => Some(label.into()),
            _ => label
                .strip_prefix("regarding.")
                .filter(|field| REFERENCE_FIELDS.contains(field))
                .map(|field| format!("involvedObject.{field}")),
        }
    };
    match core {
        Some(core) => Ok(core),
        None if label == "metadata.name" || label == "metadata.namespace" => Ok(label.into()),
        None => Err(unsupported()),
    }
}

const REFERENCE_FIELDS: [&str; 7] = [
    "kind",
    "namespace",
    "name",
    "uid",
    "apiVersion",
    "resourceVersion",
    "fieldPath",
];

/// The value of a core field label of a stored Event (empty when unset), as the server's
/// `ToSelectableFields`: `source` falls back to the reporting controller.
pub fn field_value(stored: &Value, label: &str) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    match label {
        "metadata.name" => text(&stored["metadata"]["name"]),
        "metadata.namespace" => text(&stored["metadata"]["namespace"]),
        "source" => match stored["source"]["component"].as_str() {
            Some(component) if !component.is_empty() => component.into(),
            _ => text(&stored["reportingComponent"]),
        },
        _ => match label.strip_prefix("involvedObject.") {
            Some(field) => text(&stored["involvedObject"][field]),
            None => text(&stored[label]),
        },
    }
}

/// kube-apiserver's limits on an Event's fields, in bytes.
const NOTE_LIMIT: usize = 1024;
const SHORT_FIELD_LIMIT: usize = 128;

/// Validates an Event about to be stored (`event` in the core shape) as kube-apiserver's
/// `ValidateEventCreate` and `ValidateEventUpdate` do, reporting core field names (`message`,
/// not `note`) with group-less details (`16-events.json`, steps 3 to 7): the legacy rules for
/// every Event, and for a create through `events.k8s.io` the stricter ones (eventTime
/// required, type Normal or Warning). The strict rules on the deprecated fields and on series
/// and the immutability checks of updates are kube-apiserver's too, unrecorded. Anything but an
/// Event passes.
pub fn validate(rt: &ResourceType, event: &Value, create: bool) -> Result<(), ApiError> {
    if !rt.is_event() {
        return Ok(());
    }
    let text = |field: &str| event[field].as_str().unwrap_or_default();
    let mut errors: Vec<(&str, &str, String)> = Vec::new();
    let required = |field| (field, "FieldValueRequired", "Required value".to_string());
    let invalid = |field, value: &str, why: &str| {
        (
            field,
            "FieldValueInvalid",
            format!("Invalid value: {}: {why}", json!(value)),
        )
    };
    let too_long =
        |field, limit| invalid(field, "", &format!("can have at most {limit} characters"));
    let controller_field = if rt.group.is_empty() {
        "reportingComponent"
    } else {
        "reportingController"
    };
    let namespace = event["metadata"]["namespace"].as_str().unwrap_or_default();
    let involved_namespace = event["involvedObject"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let has_event_time = event["eventTime"].is_string();
    if !has_event_time {
        let mismatch = if involved_namespace.is_empty() {
            !["", "default"].contains(&namespace)
        } else {
            namespace != involved_namespace
        };
        if mismatch {
            errors.push(invalid(
                "involvedObject.namespace",
                involved_namespace,
                "does not match event.namespace",
            ));
        }
    } else {
        if involved_namespace.is_empty() && !["default", "kube-system"].contains(&namespace) {
            errors.push(invalid(
                "involvedObject.namespace",
                involved_namespace,
                "does not match event.namespace",
            ));
        }
        let controller = text("reportingComponent");
        if controller.is_empty() {
            errors.push(required(controller_field));
        }
        for message in qualified_name_errors(controller) {
            errors.push(invalid(controller_field, controller, &message));
        }
        if text("reportingInstance").is_empty() {
            errors.push(required("reportingInstance"));
        }
        if text("reportingInstance").len() > SHORT_FIELD_LIMIT {
            errors.push(too_long("reportingInstance", SHORT_FIELD_LIMIT));
        }
        for field in ["action", "reason"] {
            if text(field).is_empty() {
                errors.push(required(field));
            }
            if text(field).len() > SHORT_FIELD_LIMIT {
                errors.push(too_long(field, SHORT_FIELD_LIMIT));
            }
        }
        if text("message").len() > NOTE_LIMIT {
            errors.push(too_long("message", NOTE_LIMIT));
        }
    }
    if create && !rt.group.is_empty() {
        if event["series"].is_object() {
            if event["series"]["count"].as_i64().unwrap_or(0) < 2 {
                errors.push(invalid("series.count", "", "should be at least 2"));
            }
            if !event["series"]["lastObservedTime"].is_string() {
                errors.push(required("series.lastObservedTime"));
            }
        }
        if !has_event_time {
            errors.push(required("eventTime"));
        }
        if !["Normal", "Warning"].contains(&text("type")) {
            errors.push(invalid(
                "type",
                "",
                &format!("has invalid value: {}", text("type")),
            ));
        }
        for field in ["firstTimestamp", "lastTimestamp"] {
            if event[field].is_string() {
                errors.push(invalid(field, "", "needs to be unset"));
            }
        }
        if event["count"].as_i64().unwrap_or(0) != 0 {
            errors.push(invalid("count", "", "needs to be unset"));
        }
        let source = &event["source"];
        if source["component"].as_str().is_some_and(|s| !s.is_empty())
            || source["host"].as_str().is_some_and(|s| !s.is_empty())
        {
            errors.push(invalid("source", "", "needs to be unset"));
        }
    }
    invalid_event(event, &errors)
}

/// The fields an update through `events.k8s.io/v1` may not change (apiserver's
/// `ValidateEventUpdate`; core `v1` updates are not checked), by their stored (core) name and
/// the field path reported: `34-events.json` records a changed `note` answered with 422 on
/// field `message`, "field is immutable".
const IMMUTABLE_THROUGH_EVENTS_V1: [(&str, &str); 13] = [
    ("involvedObject", "involvedObject"),
    ("reason", "reason"),
    ("message", "message"),
    ("source", "source"),
    ("firstTimestamp", "firstTimestamp"),
    ("lastTimestamp", "lastTimestamp"),
    ("count", "count"),
    ("type", "type"),
    ("eventTime", "eventTime"),
    ("action", "action"),
    ("related", "related"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
];

/// An update of the stored Event `old` to `new` (both in the stored shape) written through
/// `rt`: through `events.k8s.io/v1` only `series` (validated when changed) and metadata may
/// change.
pub fn validate_update(rt: &ResourceType, old: &Value, new: &Value) -> Result<(), ApiError> {
    if !rt.is_event() || rt.group.is_empty() {
        return Ok(());
    }
    let mut errors: Vec<(&str, &str, String)> = Vec::new();
    if new["series"] != old["series"] && new["series"].is_object() {
        if new["series"]["count"].as_i64().unwrap_or(0) < 2 {
            errors.push((
                "series.count",
                "FieldValueInvalid",
                "Invalid value: \"\": should be at least 2".into(),
            ));
        }
        if !new["series"]["lastObservedTime"].is_string() {
            errors.push((
                "series.lastObservedTime",
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
    }
    for (stored, field) in IMMUTABLE_THROUGH_EVENTS_V1 {
        if new[stored] != old[stored] {
            errors.push((
                field,
                "FieldValueInvalid",
                format!("Invalid value: {}: field is immutable", new[stored]),
            ));
        }
    }
    invalid_event(new, &errors)
}

/// 422 Invalid listing `errors` (field, reason, message), or Ok when there are none.
fn invalid_event(event: &Value, errors: &[(&str, &str, String)]) -> Result<(), ApiError> {
    if errors.is_empty() {
        return Ok(());
    }
    let name = event["metadata"]["name"].as_str().unwrap_or_default();
    let messages: Vec<String> = errors.iter().map(|(f, _, d)| format!("{f}: {d}")).collect();
    let summary = match messages.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|(field, reason, message)| json!({"reason": reason, "message": message, "field": field}))
        .collect();
    Err(ApiError::new(
        422,
        "Invalid",
        format!("Event {name:?} is invalid: {summary}"),
    )
    .with_details(json!({"name": name, "kind": "Event", "causes": causes})))
}

/// apimachinery's `IsQualifiedName`: an optional DNS-subdomain prefix and `/`, then a name of
/// at most 63 alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric.
fn qualified_name_errors(value: &str) -> Vec<String> {
    const NAME_FORMAT: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    let mut errors = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_string());
            } else if !is_subdomain(prefix) {
                errors.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name {NAME_FORMAT} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        errors.push("name part must be no more than 63 characters".into());
    }
    let bytes = name.as_bytes();
    let name_ok = !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b));
    if !name_ok {
        errors.push(format!("name part {NAME_FORMAT}"));
    }
    errors
}

fn is_subdomain(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
                && (bytes[bytes.len() - 1].is_ascii_lowercase()
                    || bytes[bytes.len() - 1].is_ascii_digit())
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        })
}

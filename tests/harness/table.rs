//! Server-side printing: a GET asking for `application/json;as=Table;v=v1;g=meta.k8s.io` (what
//! `kubectl get` sends) is answered with a `meta.k8s.io` Table instead of the object or list.
//!
//! Custom resources are printed as kube-apiserver prints them (`17-table-output.json`, and
//! with the current CRD's columns `30-table-output.json` in `tests/fixtures/kube-apiserver/`):
//! a `Name` column, then the version's `additionalPrinterColumns`, each cell found by its
//! JSONPath and converted by column type (`date` cells become an age such as `3m`, or
//! `<invalid>` for a time in the future; `string` cells are the value as stored); rows carry a
//! `PartialObjectMetadata`, nothing (`includeObject=None`) or the whole object
//! (`includeObject=Object`); `v1beta1` is still served. The built-in kinds' printers are
//! recorded too: Namespaces and Secrets (`30-table-output.json`), Leases (`31-leases.json`),
//! Events through both APIs (`34-events.json`). The defaults for a CRD without printer
//! columns (`Name`, `Age`) and the `Name`/`Created At` default for CRDs follow
//! kube-apiserver's code: no fixture records them yet. Not modelled: Tables in watches
//! (`kubectl get --watch` gets plain watch events) and `NoHeaders`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::events;
use super::resources::ResourceType;
use super::status::ApiError;

/// What `metav1.ObjectMeta`'s documentation says of `name` and `creationTimestamp`, which the
/// server uses as column descriptions.
const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// The Table version an `Accept` header asks for (`v1` or `v1beta1`), or None when the
/// first media range the server can serve is plain JSON (or nothing is asked for). As on the
/// real server, the client's order decides.
pub fn requested(accept: &str) -> Option<&'static str> {
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media_type = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        if !matches!(media_type, "application/json" | "*/*" | "application/*") {
            continue;
        }
        match (param("as"), param("g"), param("v")) {
            (None, ..) => return None,
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) => return Some("v1"),
            (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => return Some("v1beta1"),
            // Another form (PartialObjectMetadata, a Table version not served): the next one.
            _ => continue,
        }
    }
    None
}

/// The Table of a list the server answered (`items` as served at `rt`'s version).
pub fn of_list(
    rt: &ResourceType,
    version: &str,
    query: &HashMap<String, String>,
    list: Value,
) -> Result<Value, ApiError> {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut metadata = json!({"resourceVersion": list["metadata"]["resourceVersion"]});
    for field in ["continue", "remainingItemCount"] {
        if let Some(value) = list["metadata"].get(field) {
            metadata[field] = value.clone();
        }
    }
    table(rt, version, query, metadata, items)
}

/// The Table of one object (a single row).
pub fn of_object(
    rt: &ResourceType,
    version: &str,
    query: &HashMap<String, String>,
    obj: Value,
) -> Result<Value, ApiError> {
    let metadata = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
    table(rt, version, query, metadata, vec![obj])
}

fn table(
    rt: &ResourceType,
    version: &str,
    query: &HashMap<String, String>,
    metadata: Value,
    objects: Vec<Value>,
) -> Result<Value, ApiError> {
    let include = query
        .get("includeObject")
        .map_or("Metadata", String::as_str);
    if !["None", "Metadata", "Object"].contains(&include) {
        return Err(ApiError::bad_request(format!(
            "unrecognized includeObject value: {include:?}"
        )));
    }
    let printer = Printer::for_type(rt);
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|obj| {
            let cells = printer.cells(rt, &obj);
            let object = match include {
                "None" => Value::Null,
                "Object" => obj,
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": format!("meta.k8s.io/{version}"),
                    "metadata": obj["metadata"],
                }),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    Ok(json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": metadata,
        "columnDefinitions": printer.column_definitions(),
        "rows": rows,
    }))
}

/// One column: its definition, and for custom resources the JSONPath of its cells.
struct Column {
    name: String,
    kind: String,
    format: String,
    description: String,
    priority: i64,
    path: Option<JsonPath>,
}

impl Column {
    fn builtin(name: &str, kind: &str, description: &str) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
            format: String::new(),
            description: description.into(),
            priority: 0,
            path: None,
        }
    }

    fn name() -> Self {
        Self {
            format: "name".into(),
            ..Self::builtin("Name", "string", NAME_DESCRIPTION)
        }
    }

    fn wide(self) -> Self {
        Self {
            priority: 1,
            ..self
        }
    }

    /// A CRD's `additionalPrinterColumns` entry.
    fn custom(definition: &Value) -> Self {
        let text = |field: &str| definition[field].as_str().unwrap_or_default().to_string();
        let path = text("jsonPath");
        let description = match text("description") {
            d if d.is_empty() => {
                format!("Custom resource definition column (in JSONPath format): {path}")
            }
            d => d,
        };
        Self {
            name: text("name"),
            kind: text("type"),
            format: text("format"),
            description,
            priority: definition["priority"].as_i64().unwrap_or(0),
            path: Some(JsonPath::parse(&path).unwrap_or_else(|e| {
                panic!("the harness cannot evaluate printer column JSONPath {path:?}: {e}")
            })),
        }
    }

    fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// How a resource type is printed.
enum Printer {
    /// A custom resource: `Name`, then cells found by each column's JSONPath.
    Custom(Vec<Column>),
    /// A built-in kind: its columns, and the function computing a row's cells.
    Builtin(Vec<Column>, fn(&Value) -> Vec<Value>),
}

impl Printer {
    fn for_type(rt: &ResourceType) -> Self {
        if rt.custom {
            let mut columns = vec![Column::name()];
            if rt.printer_columns.is_empty() {
                // kube-apiserver's columns for a CRD that declares none.
                let age = json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": CREATED_DESCRIPTION});
                columns.push(Column::custom(&age));
            }
            columns.extend(rt.printer_columns.iter().map(Column::custom));
            return Self::Custom(columns);
        }
        let age = || Column::builtin("Age", "string", CREATED_DESCRIPTION);
        match (rt.group.as_str(), rt.kind.as_str()) {
            (_, "Event") => Self::Builtin(event_columns(), event_cells),
            ("", "Secret") => Self::Builtin(
                vec![
                    Column::name(),
                    Column::builtin("Type", "string", SECRET_TYPE),
                    Column::builtin("Data", "string", SECRET_DATA),
                    age(),
                ],
                |s| {
                    let data = s["data"].as_object().map_or(0, |d| d.len());
                    vec![name_of(s), s["type"].clone(), json!(data), age_of(s)]
                },
            ),
            ("", "Namespace") => Self::Builtin(
                vec![
                    Column::name(),
                    Column::builtin("Status", "string", "The status of the namespace"),
                    age(),
                ],
                |n| vec![name_of(n), json!(text(&n["status"]["phase"])), age_of(n)],
            ),
            ("coordination.k8s.io", "Lease") => Self::Builtin(
                vec![
                    Column::name(),
                    Column::builtin("Holder", "string", LEASE_HOLDER),
                    age(),
                ],
                |l| {
                    let holder = text(&l["spec"]["holderIdentity"]);
                    vec![name_of(l), json!(holder), age_of(l)]
                },
            ),
            // The default for kinds without a printer of their own (CRDs among them).
            _ => Self::Builtin(
                vec![
                    Column::name(),
                    Column::builtin("Created At", "date", CREATED_DESCRIPTION),
                ],
                |o| vec![name_of(o), o["metadata"]["creationTimestamp"].clone()],
            ),
        }
    }

    fn column_definitions(&self) -> Vec<Value> {
        let (Self::Custom(columns) | Self::Builtin(columns, _)) = self;
        columns.iter().map(Column::definition).collect()
    }

    /// The cells of `obj` (as served at `rt`'s version).
    fn cells(&self, rt: &ResourceType, obj: &Value) -> Vec<Value> {
        match self {
            Self::Custom(columns) => {
                let mut cells = vec![name_of(obj)];
                for column in &columns[1..] {
                    let path = column.path.as_ref().expect("custom columns have a path");
                    let found = path.find(obj).into_iter().next();
                    cells.push(found.map_or(Value::Null, |v| custom_cell(&column.kind, v)));
                }
                cells
            }
            Self::Builtin(_, cells) if rt.is_event() => cells(&events::to_storage(rt, obj.clone())),
            Self::Builtin(_, cells) => cells(obj),
        }
    }
}

const SECRET_TYPE: &str = "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types";
const SECRET_DATA: &str = "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4";
const LEASE_HOLDER: &str = "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.";

fn event_columns() -> Vec<Column> {
    vec![
        Column::builtin("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
        Column::builtin("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
        Column::builtin("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
        Column::builtin("Object", "string", "The object that this event is about."),
        Column::builtin("Subobject", "string", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object.").wide(),
        Column::builtin("Source", "string", "The component reporting this event. Should be a short machine understandable string.").wide(),
        Column::builtin("Message", "string", "A human-readable description of the status of this operation."),
        Column::builtin("First Seen", "string", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)").wide(),
        Column::builtin("Count", "string", "The number of times this event has occurred.").wide(),
        Column {
            format: "name".into(),
            ..Column::builtin("Name", "string", NAME_DESCRIPTION).wide()
        },
    ]
}

/// kube-apiserver's `printEvent` (wide, as the server always prints), on the stored shape.
fn event_cells(event: &Value) -> Vec<Value> {
    let first = match event["firstTimestamp"].as_str() {
        Some(first) => since(first),
        None => event["eventTime"]
            .as_str()
            .map_or("<unknown>".into(), since),
    };
    let mut last = event["lastTimestamp"]
        .as_str()
        .map_or_else(|| first.clone(), since);
    let mut count = event["count"].as_i64().unwrap_or(0);
    if event["series"].is_object() {
        let observed = event["series"]["lastObservedTime"].as_str();
        last = observed.map_or("<unknown>".into(), since);
        count = event["series"]["count"].as_i64().unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let involved = &event["involvedObject"];
    let kind = text(&involved["kind"]).to_lowercase();
    let target = match text(&involved["name"]) {
        name if name.is_empty() => kind,
        name => format!("{kind}/{name}"),
    };
    let first_non_empty = |a: &Value, b: &Value| match text(a) {
        a if a.is_empty() => text(b),
        a => a,
    };
    let component = first_non_empty(&event["source"]["component"], &event["reportingComponent"]);
    let instance = first_non_empty(&event["source"]["host"], &event["reportingInstance"]);
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(text(&event["type"])),
        json!(text(&event["reason"])),
        json!(target),
        json!(text(&involved["fieldPath"])),
        json!(source),
        json!(text(&event["message"]).trim()),
        json!(first),
        json!(count),
        name_of(event),
    ]
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn name_of(obj: &Value) -> Value {
    json!(text(&obj["metadata"]["name"]))
}

fn age_of(obj: &Value) -> Value {
    let created = obj["metadata"]["creationTimestamp"].as_str();
    json!(created.map_or("<unknown>".into(), since))
}

/// The age of a time the server stored: `<invalid>` when it does not parse.
fn since(time: &str) -> String {
    match time.parse::<jiff::Timestamp>() {
        Ok(at) => human_duration(jiff::Timestamp::now().as_nanosecond() - at.as_nanosecond()),
        Err(_) => "<invalid>".into(),
    }
}

/// A custom-resource cell, converted by column type as kube-apiserver's `cellForJSONValue`
/// does (a `string` column prints whatever it finds, as its JSONPath printer does).
fn custom_cell(kind: &str, value: &Value) -> Value {
    match (kind, value) {
        ("string", Value::String(_)) => value.clone(),
        ("string", Value::Object(_) | Value::Array(_)) => json!(value.to_string()),
        // Go's text printing of an absent value.
        ("string", Value::Null) => json!("<no value>"),
        ("string", other) => json!(other.to_string()),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map_or(Value::Null, |i| json!(i)),
        // Go writes a whole float64 without a fraction.
        ("number", Value::Number(n)) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => json!(f as i64),
            f => json!(f),
        },
        ("boolean", Value::Bool(_)) => value.clone(),
        ("date", Value::String(s)) if s.is_empty() || s == "null" => json!("<unknown>"),
        ("date", Value::String(s)) => json!(since(s)),
        _ => Value::Null,
    }
}

/// Go's `duration.HumanDuration` of `nanoseconds` (now minus the time): two or three
/// significant figures, `<invalid>` beyond two seconds in the future.
fn human_duration(nanoseconds: i128) -> String {
    const SECOND: i128 = 1_000_000_000;
    let seconds = nanoseconds / SECOND; // truncated toward zero, like Go's int(d.Seconds())
    if seconds < -1 {
        return "<invalid>".into();
    } else if seconds < 0 {
        return "0s".into();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    } else if hours < 48 {
        return format!("{hours}h");
    } else if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    } else if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    } else if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The JSONPath subset printer columns use: `.field`, `['field']`, `[n]`, `[*]` and filters
/// `[?(@.a.b == 'x')]` (also `!=`, `<`, `<=`, `>`, `>=`, or a bare `[?(@.a)]`), with missing
/// keys allowed, as kube-apiserver evaluates them.
#[derive(Debug, Clone)]
pub struct JsonPath(Vec<Step>);

#[derive(Debug, Clone)]
enum Step {
    Field(String),
    Index(i64),
    Wildcard,
    Filter(Vec<String>, Option<(String, Value)>),
}

impl JsonPath {
    pub fn parse(path: &str) -> Result<Self, String> {
        let path = path.trim();
        let path = path
            .strip_prefix('{')
            .and_then(|p| p.strip_suffix('}'))
            .unwrap_or(path);
        let mut steps = Vec::new();
        let mut rest = path.strip_prefix('$').unwrap_or(path);
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                if after.starts_with('.') {
                    return Err("recursive descent is not supported".into());
                }
                if let Some(after) = after.strip_prefix('*') {
                    steps.push(Step::Wildcard);
                    rest = after;
                    continue;
                }
                let end = after.find(['.', '[']).unwrap_or(after.len());
                if end == 0 {
                    return Err(format!("empty field name in {path:?}"));
                }
                steps.push(Step::Field(after[..end].to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = closing_bracket(after).ok_or(format!("unclosed [ in {path:?}"))?;
                steps.push(parse_bracket(after[..end].trim())?);
                rest = &after[end + 1..];
            } else {
                return Err(format!("unexpected {rest:?}"));
            }
        }
        Ok(Self(steps))
    }

    /// Every value the path finds in `root`, in document order.
    pub fn find<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.0 {
            current = current.into_iter().flat_map(|v| step.apply(v)).collect();
        }
        current
    }
}

/// The index of the `]` closing a bracket whose content starts `text`, quotes respected.
fn closing_bracket(text: &str) -> Option<usize> {
    let (mut quote, mut depth) = (None, 0usize);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, ']') if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_bracket(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::Wildcard);
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        return parse_filter(filter.trim());
    }
    if let Some(name) = unquote(inner) {
        return Ok(Step::Field(name));
    }
    inner
        .parse()
        .map(Step::Index)
        .map_err(|_| format!("unsupported [{inner}]"))
}

fn unquote(text: &str) -> Option<String> {
    let quoted = |q: char| text.strip_prefix(q).and_then(|t| t.strip_suffix(q));
    quoted('\'').or_else(|| quoted('"')).map(String::from)
}

fn parse_filter(filter: &str) -> Result<Step, String> {
    let left_end = filter
        .find(['=', '!', '<', '>', ' '])
        .unwrap_or(filter.len());
    let left = &filter[..left_end];
    let fields = left
        .strip_prefix("@.")
        .ok_or(format!("unsupported filter {filter:?}"))?
        .split('.')
        .map(String::from)
        .collect();
    let rest = filter[left_end..].trim();
    if rest.is_empty() {
        return Ok(Step::Filter(fields, None));
    }
    let op_len = if rest.starts_with("==")
        || rest.starts_with("!=")
        || rest.starts_with("<=")
        || rest.starts_with(">=")
    {
        2
    } else if rest.starts_with('<') || rest.starts_with('>') {
        1
    } else {
        return Err(format!("unsupported filter {filter:?}"));
    };
    let (op, literal) = (&rest[..op_len], rest[op_len..].trim());
    let value = match unquote(literal) {
        Some(s) => json!(s),
        None => {
            serde_json::from_str(literal).map_err(|_| format!("unsupported literal {literal:?}"))?
        }
    };
    Ok(Step::Filter(fields, Some((op.to_string(), value))))
}

impl Step {
    fn apply<'a>(&self, value: &'a Value) -> Vec<&'a Value> {
        match (self, value) {
            (Self::Field(name), Value::Object(map)) => map.get(name).into_iter().collect(),
            (Self::Index(i), Value::Array(items)) => {
                let index = if *i < 0 { items.len() as i64 + i } else { *i };
                usize::try_from(index)
                    .ok()
                    .and_then(|i| items.get(i))
                    .into_iter()
                    .collect()
            }
            (Self::Wildcard, Value::Array(items)) => items.iter().collect(),
            (Self::Wildcard, Value::Object(map)) => map.values().collect(),
            (Self::Filter(fields, test), Value::Array(items)) => items
                .iter()
                .filter(|item| {
                    let found = fields.iter().try_fold(*item, |v, f| v.get(f));
                    match (found, test) {
                        (None, _) => false,
                        (Some(_), None) => true,
                        (Some(left), Some((op, right))) => compare(left, op, right),
                    }
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn compare(left: &Value, op: &str, right: &Value) -> bool {
    let ordering = match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => (left == right).then_some(std::cmp::Ordering::Equal),
    };
    match op {
        "==" => ordering == Some(std::cmp::Ordering::Equal),
        "!=" => ordering != Some(std::cmp::Ordering::Equal),
        "<" => ordering == Some(std::cmp::Ordering::Less),
        ">" => ordering == Some(std::cmp::Ordering::Greater),
        "<=" => matches!(
            ordering,
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        ),
        ">=" => matches!(
            ordering,
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        ),
        _ => false,
    }
}

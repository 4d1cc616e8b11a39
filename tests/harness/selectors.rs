//! `labelSelector` and `fieldSelector` query parameters, for list, watch and deletecollection.

use std::collections::HashMap;

use serde_json::Value;

use super::events;
use super::resources::ResourceType;
use super::status::ApiError;

/// One label requirement of a selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn parse(term: &str) -> Result<Self, String> {
        let term = term.trim();
        if let Some(set) = parse_set(term, " notin ") {
            return set.map(|(k, v)| Self::NotIn(k, v));
        }
        if let Some(set) = parse_set(term, " in ") {
            return set.map(|(k, v)| Self::In(k, v));
        }
        if let Some((k, v)) = term.split_once("!=") {
            return Ok(Self::NotEquals(k.trim().into(), v.trim().into()));
        }
        if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            return Ok(Self::Equals(k.trim().into(), v.trim().into()));
        }
        if let Some(key) = term.strip_prefix('!') {
            return Ok(Self::NotExists(key.trim().into()));
        }
        if term.is_empty() || term.contains(char::is_whitespace) {
            return Err(format!("unable to parse requirement: {term:?}"));
        }
        Ok(Self::Exists(term.into()))
    }

    fn matches(&self, labels: &HashMap<&str, &str>) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k.as_str()) == Some(&v.as_str()),
            // As in Kubernetes, `!=` and `notin` also match objects without the label.
            Self::NotEquals(k, v) => labels.get(k.as_str()) != Some(&v.as_str()),
            Self::In(k, vs) => labels
                .get(k.as_str())
                .is_some_and(|l| vs.iter().any(|v| v == l)),
            Self::NotIn(k, vs) => !labels
                .get(k.as_str())
                .is_some_and(|l| vs.iter().any(|v| v == l)),
            Self::Exists(k) => labels.contains_key(k.as_str()),
            Self::NotExists(k) => !labels.contains_key(k.as_str()),
        }
    }
}

/// `key in (a,b)` / `key notin (a,b)`; None when `term` is not of that form.
fn parse_set(term: &str, operator: &str) -> Option<Result<(String, Vec<String>), String>> {
    let (key, rest) = term.split_once(operator)?;
    let values = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'));
    Some(match values {
        Some(values) => Ok((
            key.trim().to_string(),
            values.split(',').map(|v| v.trim().to_string()).collect(),
        )),
        None => Err(format!("unable to parse requirement: {term:?}")),
    })
}

/// Splits on commas outside parentheses, so `a in (x,y),b` is two terms.
fn split_terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms.into_iter().filter(|t| !t.trim().is_empty()).collect()
}

/// A field requirement: `metadata.name` and `metadata.namespace`, as for custom resources on
/// a real server, and for Events the fields kube-apiserver selects them by (see `events.rs`).
#[derive(Debug, Clone)]
struct FieldRequirement {
    /// The field, as its core label (an `events.k8s.io/v1` label translated).
    field: String,
    value: String,
    negated: bool,
}

impl FieldRequirement {
    fn parse(rt: &ResourceType, term: &str) -> Result<Self, ApiError> {
        let (field, value, negated) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, false)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector: {term:?}"
            )));
        };
        Ok(Self {
            field: events::field_label(rt, field.trim())?,
            value: value.trim().to_string(),
            negated,
        })
    }

    /// Whether the stored object `obj` meets the requirement.
    fn matches(&self, obj: &Value) -> bool {
        (events::field_value(obj, &self.field) == self.value) != self.negated
    }
}

/// The label and field selectors of one request; matches everything when both are absent.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    labels: Vec<Requirement>,
    fields: Vec<FieldRequirement>,
}

impl Selectors {
    /// The selectors of a request on `rt`.
    pub fn from_query(
        rt: &ResourceType,
        query: &HashMap<String, String>,
    ) -> Result<Self, ApiError> {
        let labels = match query.get("labelSelector") {
            Some(s) => split_terms(s)
                .into_iter()
                .map(Requirement::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    ApiError::bad_request(format!("unable to parse labelSelector: {e}"))
                })?,
            None => Vec::new(),
        };
        let fields = match query.get("fieldSelector") {
            Some(s) => split_terms(s)
                .into_iter()
                .map(|term| FieldRequirement::parse(rt, term))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Self { labels, fields })
    }

    /// Whether any selector was given (the server only reports `remainingItemCount` without).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels: HashMap<&str, &str> = obj["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                    .collect()
            })
            .unwrap_or_default();
        self.labels.iter().all(|r| r.matches(&labels)) && self.fields.iter().all(|f| f.matches(obj))
    }
}

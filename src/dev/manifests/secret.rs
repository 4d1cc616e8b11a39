//! Reading a Secret manifest as the API server stores it, never quoting its values.

use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

/// What is wrong with a Secret, without quoting the value: serde's messages quote it, and a
/// Secret's values are tokens.
fn secret_problem<E: fmt::Display>(error: &serde_path_to_error::Error<E>) -> String {
    let path = error.path().to_string();
    let inner = error.inner().to_string();
    let expected = inner
        .rsplit_once(", expected ")
        .map(|(_, expected)| expected);
    match expected {
        _ if path.starts_with("data.") => format!("{path}: not valid base64"),
        Some(expected) => format!("{path}: invalid value, expected {expected}"),
        None => format!("{path}: invalid value"),
    }
}

/// The fields a Secret manifest may have.
const SECRET_FIELDS: [&str; 7] = [
    "apiVersion",
    "kind",
    "metadata",
    "data",
    "stringData",
    "type",
    "immutable",
];

/// Reads a Secret as the API server stores it: `stringData` merged into `data` (winning on
/// a shared key), `data` values base64-decoded.
pub(super) fn parse_secret(value: Value) -> Result<Secret, String> {
    if let Some(object) = value.as_object() {
        let unknown: Vec<String> = object
            .keys()
            .filter(|key| !SECRET_FIELDS.contains(&key.as_str()))
            .map(|key| format!("{key}: unknown field"))
            .collect();
        if !unknown.is_empty() {
            return Err(unknown.join("; "));
        }
    }
    let mut secret: Secret =
        serde_path_to_error::deserialize(value).map_err(|error| secret_problem(&error))?;
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (key, text) in strings {
            data.insert(key, ByteString(text.into_bytes()));
        }
    }
    Ok(secret)
}

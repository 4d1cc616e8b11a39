//! Reading the manifests a cluster admin would `kubectl apply`: ExternalControls and Secrets,
//! several YAML documents per file, files or directories.
//!
//! An ExternalControl is checked against the CRD's own schema (the OpenAPI checks with
//! `jsonschema`, the CEL rules with `kube-cel`), so a manifest `extctl dev` accepts is one the
//! API server accepts, and the reverse. Every problem is reported, each naming the file, the
//! document (with its first line) and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::CustomResourceExt;
use serde_json::Value;

use extctl_core::crd::ExternalControl;
use extctl_core::duration;

/// The namespace of objects whose manifest names none, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What the manifests hold.
#[derive(Debug, Default)]
pub struct Manifests {
    pub controls: Vec<ExternalControl>,
    pub secrets: Vec<Secret>,
}

/// One problem, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// `file, document N (line L)`, and the object when it could be named.
    pub location: String,
    /// `field: what is wrong`, or what is wrong with the document as a whole.
    pub problem: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.problem)
    }
}

/// Reads every `.yaml`, `.yml` and `.json` file of each path (a directory is read in name
/// order, not recursively); all problems or none.
pub fn load(paths: &[PathBuf]) -> Result<Manifests, Vec<ManifestError>> {
    let mut reader = Reader::default();
    for path in paths {
        match files(path) {
            Ok(files) => files.iter().for_each(|file| reader.read_file(file)),
            Err(problem) => reader.errors.push(ManifestError {
                location: path.display().to_string(),
                problem,
            }),
        }
    }
    if reader.errors.is_empty() {
        Ok(reader.manifests)
    } else {
        Err(reader.errors)
    }
}

fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot read: {error}"))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path).map_err(|error| format!("cannot list: {error}"))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|file| {
            let extension = file.extension().and_then(|e| e.to_str());
            file.is_file() && matches!(extension, Some("yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err("no .yaml, .yml or .json files in this directory".into());
    }
    Ok(files)
}

#[derive(Default)]
struct Reader {
    manifests: Manifests,
    errors: Vec<ManifestError>,
    /// `kind namespace/name` to where it was first defined, to refuse a second definition.
    seen: BTreeMap<String, String>,
}

/// Where a document is, for messages.
struct Place<'a> {
    file: &'a Path,
    number: usize,
    line: usize,
}

impl Place<'_> {
    fn describe(&self, object: Option<&str>) -> String {
        let place = format!(
            "{}, document {} (line {})",
            self.file.display(),
            self.number,
            self.line
        );
        match object {
            Some(object) => format!("{place}, {object}"),
            None => place,
        }
    }
}

impl Reader {
    fn read_file(&mut self, file: &Path) {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(error) => {
                return self.errors.push(ManifestError {
                    location: file.display().to_string(),
                    problem: format!("cannot read: {error}"),
                });
            }
        };
        for (index, (line, document)) in documents(&text).into_iter().enumerate() {
            let place = Place {
                file,
                number: index + 1,
                line,
            };
            if let Err(error) = self.read_document(&place, &document) {
                self.errors.push(error);
            }
        }
    }

    fn read_document(&mut self, place: &Place, text: &str) -> Result<(), ManifestError> {
        let fail = |object: Option<&str>, problem: String| ManifestError {
            location: place.describe(object),
            problem,
        };
        let value: Value = serde_norway::from_str(text)
            .map_err(|error| fail(None, yaml_problem(&error, place.line)))?;
        if value.is_null() {
            return Ok(()); // an empty document, such as after a trailing `---`
        }
        let kind = value["kind"].as_str().unwrap_or_default();
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let name = object_name(&value).map_err(|problem| fail(None, problem))?;
        let object = format!("{kind} {name}");
        let fail = |problem: String| fail(Some(&object), problem);
        match (api_version, kind) {
            ("extctl.dev/v1alpha1", "ExternalControl") => {
                let control = parse_control(value).map_err(fail)?;
                self.remember(&object, place)?;
                self.manifests.controls.push(control);
            }
            ("v1", "Secret") => {
                let secret = parse_secret(value).map_err(fail)?;
                self.remember(&object, place)?;
                self.manifests.secrets.push(secret);
            }
            (_, "ExternalControl") => {
                return Err(fail(format!(
                    "apiVersion: must be extctl.dev/v1alpha1, not {api_version:?}"
                )));
            }
            (_, "Secret") => {
                return Err(fail(format!("apiVersion: must be v1, not {api_version:?}")));
            }
            ("", _) | (_, "") => {
                return Err(fail("apiVersion and kind are required".into()));
            }
            _ => {
                return Err(fail(
                    "kind: extctl dev reads only ExternalControl (extctl.dev/v1alpha1) and \
                     Secret (v1)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Records where `object` is defined; a second definition is an error naming the first.
    fn remember(&mut self, object: &str, place: &Place) -> Result<(), ManifestError> {
        let here = place.describe(None);
        match self.seen.get(object) {
            Some(first) => Err(ManifestError {
                location: place.describe(Some(object)),
                problem: format!("defined twice; first in {first}"),
            }),
            None => {
                self.seen.insert(object.to_owned(), here);
                Ok(())
            }
        }
    }
}

/// The documents of a YAML stream, each with the line it starts on. Split at `---` lines,
/// as `kubectl` does, so messages can give each document's own line numbers.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = vec![(1, String::new())];
    for (index, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            documents.push((index + 2, String::new()));
        } else if let Some((_, document)) = documents.last_mut() {
            document.push_str(line);
            document.push('\n');
        }
    }
    documents
}

/// serde_norway's message, with its line made relative to the file rather than the document.
fn yaml_problem(error: &serde_norway::Error, first_line: usize) -> String {
    let message = error.to_string();
    match error.location() {
        Some(location) => {
            let text = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            let line = first_line + location.line() - 1;
            format!(
                "invalid YAML at line {line}, column {}: {text}",
                location.column()
            )
        }
        None => format!("invalid YAML: {message}"),
    }
}

/// `namespace/name`, defaulting the namespace, with Kubernetes' naming rules: a name is a
/// DNS subdomain, a namespace a DNS label.
fn object_name(value: &Value) -> Result<String, String> {
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
fn is_dns_label(text: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let bytes = text.as_bytes();
    bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && edge(bytes.first())
        && edge(bytes.last())
}

fn is_dns_subdomain(text: &str) -> bool {
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
fn parse_control(mut value: Value) -> Result<ExternalControl, String> {
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
fn parse_secret(value: Value) -> Result<Secret, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` as one file; the problems, without the temporary path.
    fn load_text(text: &str) -> Result<Manifests, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yaml");
        std::fs::write(&file, text).unwrap();
        load(std::slice::from_ref(&file)).map_err(|errors| {
            let prefix = format!("{}, ", file.display());
            errors
                .iter()
                .map(|e| e.to_string().replace(&prefix, ""))
                .collect()
        })
    }

    const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n";
    const CONTROL: &str = "apiVersion: extctl.dev/v1alpha1\nkind: ExternalControl\n";

    #[test]
    fn documents_are_split_at_separator_lines_with_their_first_line() {
        let text = "---\na: 1\n--- # second\nb: 2\n---\n";
        let split = documents(text);
        let lines: Vec<usize> = split.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [1, 2, 4, 6]);
        assert_eq!(split[2].1, "b: 2\n");
        // `---` inside a value is not a separator.
        assert_eq!(documents("a: '---'\n").len(), 1);
    }

    #[test]
    fn a_minimal_control_gets_the_schema_defaults_and_no_status() {
        let text = format!(
            "{CONTROL}metadata: {{name: sast}}\nspec: {{projectId: 42, controlId: 7, secretRef: {{name: s}}}}\n\
             status: {{status: pass}}\n"
        );
        let manifests = load_text(&text).unwrap();
        let control = &manifests.controls[0];
        assert!(control.spec.ping_enabled);
        assert_eq!(control.spec.ping_interval.0, "12h");
        assert_eq!(control.spec.secret_ref.key, "token");
        assert_eq!(control.status, None, "status is not set through a manifest");
    }

    #[test]
    fn string_data_is_merged_into_data_and_wins() {
        let text =
            format!("{SECRET}data: {{token: b2xk, other: b3RoZXI=}}\nstringData: {{token: new}}\n");
        let manifests = load_text(&text).unwrap();
        let data = manifests.secrets[0].data.clone().unwrap();
        assert_eq!(data["token"].0, b"new");
        assert_eq!(data["other"].0, b"other");
        assert_eq!(manifests.secrets[0].string_data, None);
    }

    #[test]
    fn unknown_fields_are_found_at_any_depth() {
        let text = format!(
            "{CONTROL}metadata: {{name: a, labels: {{x: y}}}}\n\
             spec: {{projectId: 1, controlId: 2, secretRef: {{name: s, keyy: t}}, extra: 1}}\n"
        );
        let problems = load_text(&text).unwrap_err();
        assert_eq!(
            problems,
            [
                "document 1 (line 1), ExternalControl default/a: spec.extra: unknown field; \
              spec.secretRef.keyy: unknown field"
            ]
        );
    }

    #[test]
    fn yaml_errors_give_the_files_line() {
        let text = format!("{SECRET}---\n{SECRET}stringData: {{token: [x}}\n");
        let problems = load_text(&text).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("document 2 (line 5): invalid YAML at line 8, column"),
            "{problems:?}"
        );
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        for good in ["a", "sast-token", "a.b", "0x"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", "a.-b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(is_dns_label("team-a") && !is_dns_label("team.a"));
        let long = format!(
            "{CONTROL}metadata: {{name: a, namespace: {}}}\n",
            "n".repeat(64)
        );
        assert!(load_text(&long).unwrap_err()[0].contains("at most 63 characters"));
    }

    #[test]
    fn null_fields_read_as_absent() {
        let text = format!(
            "{CONTROL}metadata: {{name: a}}\n\
             spec: {{projectId: 1, controlId: 2, secretRef: {{name: s}}, displayName: null, externalUrl: ~}}\n"
        );
        let control = &load_text(&text).unwrap().controls[0];
        assert_eq!(control.spec.external_url, None);
    }

    #[test]
    fn secret_values_are_never_quoted_in_problems() {
        let text = format!(
            "{SECRET}stringData: {{token: 12345678}}\n---\n{SECRET}data: {{token: 'hunter2 '}}\n"
        );
        let problems = load_text(&text).unwrap_err().join("\n");
        assert!(
            problems.contains("stringData.token: invalid value, expected a string"),
            "{problems}"
        );
        assert!(
            problems.contains("data.token: not valid base64"),
            "{problems}"
        );
        assert!(
            !problems.contains("12345678") && !problems.contains("hunter2"),
            "{problems}"
        );
    }

    #[test]
    fn a_path_that_is_missing_or_empty_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let errors = load(&[dir.path().to_owned()]).unwrap_err();
        assert!(errors[0].problem.contains("no .yaml, .yml or .json files"));
        let errors = load(&[dir.path().join("missing.yaml")]).unwrap_err();
        assert!(errors[0].problem.starts_with("cannot read"));
    }
}

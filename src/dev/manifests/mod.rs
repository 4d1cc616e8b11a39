//! Reading the manifests a cluster admin would `kubectl apply`: ExternalControls and Secrets,
//! several YAML documents per file, files or directories.
//!
//! By job: this module reads files and reports problems; [`yaml`] splits a stream into its
//! documents; [`schema`] validates an ExternalControl as the API server would (so a manifest
//! `extctl dev` accepts is one the API server accepts, and the reverse); [`secret`] reads
//! Secrets. Every problem is reported, each naming the file, the document (with its first
//! line) and the field.

mod schema;
mod secret;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use extctl_core::crd::ExternalControl;
use schema::{object_name, parse_control};
use secret::parse_secret;
use yaml::{documents, yaml_problem};

/// The namespace of objects whose manifest names none, as with `kubectl apply`.
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

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

#[cfg(test)]
mod tests {
    use super::schema::{is_dns_label, is_dns_subdomain};
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

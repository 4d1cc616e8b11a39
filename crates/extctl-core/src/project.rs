//! How a status call names its project: GitLab's `:id` is "the ID or URL-encoded path of the
//! project". The route parameter arrives percent-decoded (`group%2Fsub%2Fmy%2Eproject` is
//! `group/sub/my.project`), and the signed path is built from that decoded text.
//!
//! GitLab reads a parameter of decimal digits as an id and anything else with a `/` as a full
//! path, found case-insensitively (GitLab's routes are); extctl does the same against
//! `spec.projectId` and `spec.projectPath`.
//!
//! A full path is what GitLab's `PathRegex` allows: up to 20 ancestor groups, the namespace,
//! and the project, separated by `/`. Each part is 1 to 255 of `A-Z a-z 0-9 _ - .`, does not
//! start with `-`, and does not end in `.git` or `.atom`; a group (every part but the last)
//! does not end in `.` either. The CRD's schema ([`PATTERN`] and [`CEL_RULES`]) and
//! [`check_path`] (the CLI) state the same rule, and a test holds them to it.

use crate::crd::ExternalControlSpec;

/// The full path's characters and structure, as the CRD's `pattern` (RE2 and ECMA alike):
/// 2 to 22 parts, groups not ending in `.`.
pub const PATTERN: &str = r"^([a-zA-Z0-9_]|[a-zA-Z0-9_.][a-zA-Z0-9_.-]*[a-zA-Z0-9_-])(/([a-zA-Z0-9_]|[a-zA-Z0-9_.][a-zA-Z0-9_.-]*[a-zA-Z0-9_-])){0,20}/[a-zA-Z0-9_.][a-zA-Z0-9_.-]*$";

/// The CRD's `maxLength`: 22 parts of 255 characters and their separators.
pub const MAX_LENGTH: usize = MAX_PARTS * MAX_PART_LENGTH + MAX_PARTS - 1;

/// What the pattern cannot say (RE2 has no look-behind), as CEL rules with their messages.
pub const CEL_RULES: [(&str, &str); 2] = [
    (
        r"!self.matches('[.](git|atom)(/|$)')",
        "no part of a project path may end in .git or .atom",
    ),
    (
        "!self.matches('[^/]{256}')",
        "each part of a project path is at most 255 characters",
    ),
];

const MAX_PARTS: usize = 22;
const MAX_PART_LENGTH: usize = 255;

/// Why a text is not a GitLab project's full path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a project path is its namespace and name, such as group/my-project: no / in {0:?}")]
    NoNamespace(String),
    #[error("a project path has at most 21 groups above the project")]
    TooDeep,
    #[error("{0:?} in a project path: each part is 1 to 255 of A-Z a-z 0-9 _ - .")]
    BadPart(String),
    #[error("{0:?} in a project path: a part does not start with -")]
    LeadingDash(String),
    #[error("{0:?} in a project path: a part does not end in .git or .atom")]
    ReservedSuffix(String),
    #[error("{0:?} in a project path: a group does not end in .")]
    GroupEndsInDot(String),
}

/// Checks `path` against GitLab's rule (see the module's documentation).
pub fn check_path(path: &str) -> Result<(), PathError> {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 2 {
        return Err(PathError::NoNamespace(path.to_owned()));
    }
    if parts.len() > MAX_PARTS {
        return Err(PathError::TooDeep);
    }
    let last = parts.len() - 1;
    for (i, part) in parts.into_iter().enumerate() {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
        if part.is_empty() || part.len() > MAX_PART_LENGTH || !part.chars().all(allowed) {
            return Err(PathError::BadPart(part.to_owned()));
        }
        if part.starts_with('-') {
            return Err(PathError::LeadingDash(part.to_owned()));
        }
        if part.ends_with(".git") || part.ends_with(".atom") {
            return Err(PathError::ReservedSuffix(part.to_owned()));
        }
        if i < last && part.ends_with('.') {
            return Err(PathError::GroupEndsInDot(part.to_owned()));
        }
    }
    Ok(())
}

/// An id in a path: plain decimal digits that fit an `i64` (`042` is 42).
pub fn decimal_id(text: &str) -> Option<i64> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// Whether the decoded `:id` of a call names `spec`'s project: its id when it is decimal,
/// else its full path, compared as GitLab finds routes (ignoring ASCII case).
pub fn names_project(given: &str, spec: &ExternalControlSpec) -> bool {
    match decimal_id(given) {
        Some(id) => id == spec.project_id,
        None => spec
            .project_path
            .as_deref()
            .is_some_and(|path| path.eq_ignore_ascii_case(given)),
    }
}

/// The project's own name (the last part of its path) and its namespace's full path.
pub fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/')
        .map_or(("", path), |(ns, name)| (ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: Option<&str>) -> ExternalControlSpec {
        serde_json::from_value(serde_json::json!({
            "projectId": 42, "controlId": 7, "secretRef": {"name": "t"}, "projectPath": path
        }))
        .unwrap()
    }

    #[test]
    fn a_call_names_the_project_by_id_or_by_path_in_any_case() {
        let with_path = spec(Some("group/sub/my.project"));
        assert!(names_project("42", &with_path));
        assert!(names_project("042", &with_path));
        assert!(names_project("group/sub/my.project", &with_path));
        assert!(names_project("Group/SUB/My.Project", &with_path));
        for other in [
            "43",
            "-42",
            "group/sub",
            "group/sub/my.project/",
            "my.project",
            "",
        ] {
            assert!(!names_project(other, &with_path), "{other:?}");
        }
        // Percent-decoding happens once, before: an encoded form is another path.
        assert!(!names_project("group%2Fsub%2Fmy.project", &with_path));
        assert!(!names_project("group/sub/my.project", &spec(None)));
    }

    #[test]
    fn gitlab_paths_are_accepted_and_others_refused_with_the_reason() {
        let deepest = vec!["g"; 21].join("/") + "/p";
        for good in [
            "group/proj",
            "group/sub/my.project",
            "g/p",
            "_a/.hidden",
            "a.b-c_d/e.",
            "9/8",
            deepest.as_str(),
        ] {
            assert_eq!(check_path(good), Ok(()), "{good:?}");
        }
        let too_deep = vec!["g"; 22].join("/") + "/p";
        let cases = [
            ("proj", PathError::NoNamespace("proj".into())),
            ("", PathError::NoNamespace("".into())),
            (too_deep.as_str(), PathError::TooDeep),
            ("group//proj", PathError::BadPart("".into())),
            ("group/", PathError::BadPart("".into())),
            ("/proj", PathError::BadPart("".into())),
            ("group/my project", PathError::BadPart("my project".into())),
            ("group/é", PathError::BadPart("é".into())),
            ("group/-proj", PathError::LeadingDash("-proj".into())),
            (
                "group/proj.git",
                PathError::ReservedSuffix("proj.git".into()),
            ),
            (
                "group.atom/proj",
                PathError::ReservedSuffix("group.atom".into()),
            ),
            ("group./proj", PathError::GroupEndsInDot("group.".into())),
        ];
        for (bad, expected) in cases {
            assert_eq!(check_path(bad), Err(expected), "{bad:?}");
        }
        let long = format!("g/{}", "p".repeat(256));
        assert!(matches!(check_path(&long), Err(PathError::BadPart(_))));
        assert_eq!(check_path(&format!("g/{}", "p".repeat(255))), Ok(()));
    }

    #[test]
    fn a_path_splits_into_namespace_and_name() {
        assert_eq!(split("group/sub/my.project"), ("group/sub", "my.project"));
        assert_eq!(split("g/p"), ("g", "p"));
    }
}

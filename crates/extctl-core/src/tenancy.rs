//! Which GitLab projects a namespace's controls may claim: the cluster admin's word, kept on
//! the Namespace (an object tenants with namespace-scoped rights cannot change).
//!
//! The annotation [`PROJECTS_ANNOTATION`] on a Namespace lists what its controls may claim,
//! entries separated by commas or white space:
//! - a project id (`4242`), matched against `spec.projectId`;
//! - a project path (`team-a/app`), or a pattern of one: `*` for any one part
//!   (`team-a/*/app`), `**` as the last part for any number of parts below a group
//!   (`team-a/**`); matched against `spec.projectPath`, ignoring case as GitLab does;
//! - `*` alone: any project.
//!
//! A control is served only when every way it names its project is allowed: its `projectId`
//! by an id entry and its `projectPath`, when set, by a path entry. A path cannot vouch for an
//! id (extctl does not ask GitLab which id a path has), so a namespace allowed only paths may
//! claim no control.
//!
//! Without the annotation, a namespace's controls may claim any project, unless the operator
//! requires an allowance ([`Allowances::required`], `--require-project-allowance`): then they
//! may claim none. An annotation that does not parse allows nothing until it is fixed.

use std::collections::BTreeSet;

use crate::crd::ExternalControlSpec;
use crate::project;

/// The Namespace annotation listing the projects its controls may claim.
pub const PROJECTS_ANNOTATION: &str = "extctl.dev/projects";

/// What one namespace's controls may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowance {
    /// Any project: no annotation, and none required.
    Any,
    /// No annotation, and the operator requires one.
    Missing,
    /// The annotation, as written and as parsed.
    Listed {
        text: String,
        parsed: Result<ProjectList, EntryError>,
    },
}

/// The parsed annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectList {
    any: bool,
    ids: BTreeSet<i64>,
    paths: Vec<PathPattern>,
}

/// A path entry: its parts, each a literal (compared ignoring ASCII case) or `*`, and whether
/// it ends in `**`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathPattern {
    parts: Vec<String>,
    below: bool,
}

/// Why an entry of the annotation is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("{0:?} is not a project id (a positive decimal number)")]
    BadId(String),
    #[error(
        "{0:?} is not a project path or pattern: parts of A-Z a-z 0-9 _ - ., `*` for one part, `**` as the last part"
    )]
    BadPath(String),
}

/// Why a control may not claim its project, for its `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error(
        "this namespace may claim no GitLab project: its Namespace has no {PROJECTS_ANNOTATION} annotation, and extctl requires one (--require-project-allowance); ask a cluster admin"
    )]
    NoAllowance,
    #[error(
        "the Namespace's {PROJECTS_ANNOTATION} annotation is invalid ({0}); no project is allowed until a cluster admin fixes it"
    )]
    InvalidAllowance(EntryError),
    #[error(
        "projectId {id} is not allowed in this namespace: its Namespace's {PROJECTS_ANNOTATION} annotation allows {allowed:?}{hint}; ask a cluster admin",
        hint = if *.no_ids { " (no project id: a path cannot vouch for an id)" } else { "" }
    )]
    IdNotAllowed {
        id: i64,
        allowed: String,
        no_ids: bool,
    },
    #[error(
        "projectPath {path:?} is not allowed in this namespace: its Namespace's {PROJECTS_ANNOTATION} annotation allows {allowed:?}; ask a cluster admin"
    )]
    PathNotAllowed { path: String, allowed: String },
}

impl Allowance {
    /// The allowance of a Namespace whose annotation is `annotation`.
    pub fn new(annotation: Option<&str>, required: bool) -> Self {
        match annotation {
            Some(text) => Self::Listed {
                text: text.to_owned(),
                parsed: ProjectList::parse(text),
            },
            None if required => Self::Missing,
            None => Self::Any,
        }
    }

    /// Whether a control with `spec` may claim its project here.
    pub fn check(&self, spec: &ExternalControlSpec) -> Result<(), NotAllowed> {
        let (text, list) = match self {
            Self::Any => return Ok(()),
            Self::Missing => return Err(NotAllowed::NoAllowance),
            Self::Listed { text, parsed } => match parsed {
                Ok(list) => (text, list),
                Err(error) => return Err(NotAllowed::InvalidAllowance(error.clone())),
            },
        };
        if list.any {
            return Ok(());
        }
        let allowed = || text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !list.ids.contains(&spec.project_id) {
            return Err(NotAllowed::IdNotAllowed {
                id: spec.project_id,
                allowed: allowed(),
                no_ids: list.ids.is_empty(),
            });
        }
        match &spec.project_path {
            Some(path) if !list.paths.iter().any(|pattern| pattern.matches(path)) => {
                Err(NotAllowed::PathNotAllowed {
                    path: path.clone(),
                    allowed: allowed(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl ProjectList {
    /// Parses the annotation: entries separated by commas or white space (none allows
    /// nothing).
    pub fn parse(text: &str) -> Result<Self, EntryError> {
        let mut list = Self::default();
        let entries = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty());
        for entry in entries {
            if entry == "*" {
                list.any = true;
            } else if entry.bytes().all(|b| b.is_ascii_digit()) {
                match project::decimal_id(entry) {
                    Some(id) if id > 0 => {
                        list.ids.insert(id);
                    }
                    _ => return Err(EntryError::BadId(entry.to_owned())),
                }
            } else {
                list.paths.push(PathPattern::parse(entry)?);
            }
        }
        Ok(list)
    }
}

impl PathPattern {
    fn parse(entry: &str) -> Result<Self, EntryError> {
        let bad = || EntryError::BadPath(entry.to_owned());
        let mut parts: Vec<String> = entry.split('/').map(str::to_owned).collect();
        let below = parts.last().is_some_and(|last| last == "**");
        if below {
            parts.pop();
        }
        let literal = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        };
        let well_formed = parts.iter().all(|part| part == "*" || literal(part));
        // A project has a namespace: `group/app`, or at least a group above `**`.
        let deep_enough = parts.len() >= if below { 1 } else { 2 };
        if !well_formed || !deep_enough {
            return Err(bad());
        }
        Ok(Self { parts, below })
    }

    fn matches(&self, path: &str) -> bool {
        let given: Vec<&str> = path.split('/').collect();
        let lengths_fit = if self.below {
            given.len() > self.parts.len()
        } else {
            given.len() == self.parts.len()
        };
        lengths_fit
            && self
                .parts
                .iter()
                .zip(&given)
                .all(|(part, given)| part == "*" || part.eq_ignore_ascii_case(given))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: i64, path: Option<&str>) -> ExternalControlSpec {
        serde_json::from_value(serde_json::json!({
            "projectId": id, "controlId": 7, "secretRef": {"name": "t"}, "projectPath": path
        }))
        .unwrap()
    }

    fn listed(text: &str) -> Allowance {
        Allowance::new(Some(text), false)
    }

    #[test]
    fn without_the_annotation_any_project_unless_one_is_required() {
        assert_eq!(Allowance::new(None, false).check(&spec(42, None)), Ok(()));
        let required = Allowance::new(None, true).check(&spec(42, None));
        assert_eq!(required, Err(NotAllowed::NoAllowance));
        assert!(
            required
                .unwrap_err()
                .to_string()
                .contains("--require-project-allowance")
        );
    }

    #[test]
    fn ids_are_allowed_by_id_entries_only() {
        let allowance = listed("42, 43\n  100");
        for id in [42, 43, 100] {
            assert_eq!(allowance.check(&spec(id, None)), Ok(()), "{id}");
        }
        let refused = allowance.check(&spec(44, None)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "projectId 44 is not allowed in this namespace: its Namespace's extctl.dev/projects annotation allows \"42, 43 100\"; ask a cluster admin"
        );
        // A path alone never vouches for an id.
        let paths_only = listed("team-a/**").check(&spec(42, Some("team-a/app")));
        assert!(
            paths_only
                .unwrap_err()
                .to_string()
                .contains("a path cannot vouch for an id")
        );
    }

    #[test]
    fn a_path_needs_a_path_entry_besides_its_id() {
        let allowance = listed("42 team-a/**");
        assert_eq!(allowance.check(&spec(42, Some("team-a/app"))), Ok(()));
        assert_eq!(allowance.check(&spec(42, Some("Team-A/sub/App"))), Ok(()));
        assert_eq!(
            allowance.check(&spec(42, Some("team-b/app"))),
            Err(NotAllowed::PathNotAllowed {
                path: "team-b/app".into(),
                allowed: "42 team-a/**".into()
            })
        );
        // Listed by id only: a control that also names a path is refused.
        assert!(matches!(
            listed("42").check(&spec(42, Some("team-a/app"))),
            Err(NotAllowed::PathNotAllowed { .. })
        ));
    }

    #[test]
    fn path_patterns() {
        let cases = [
            ("team-a/app", "team-a/app", true),
            ("team-a/app", "TEAM-A/APP", true),
            ("team-a/app", "team-a/app2", false),
            ("team-a/app", "team-a/sub/app", false),
            ("team-a/*", "team-a/app", true),
            ("team-a/*", "team-a/sub/app", false),
            ("team-a/*/app", "team-a/sub/app", true),
            ("team-a/**", "team-a/app", true),
            ("team-a/**", "team-a/sub/deeper/app", true),
            ("team-a/**", "team-a", false),
            ("team-a/**", "team-ab/app", false),
            ("*/app", "anyone/app", true),
        ];
        for (pattern, path, expected) in cases {
            let pattern = PathPattern::parse(pattern).unwrap();
            assert_eq!(pattern.matches(path), expected, "{pattern:?} {path}");
        }
    }

    #[test]
    fn a_star_allows_anything_and_nothing_listed_allows_nothing() {
        assert_eq!(listed("*").check(&spec(1, Some("x/y"))), Ok(()));
        assert!(matches!(
            listed("").check(&spec(1, None)),
            Err(NotAllowed::IdNotAllowed { .. })
        ));
    }

    #[test]
    fn an_invalid_annotation_allows_nothing_and_says_which_entry() {
        for (text, entry) in [
            ("42, team a/app", "team"),
            ("42 0", "0"),
            ("99999999999999999999", "99999999999999999999"),
            ("team-a", "team-a"),
            ("team-a/**/app", "team-a/**/app"),
            ("team-a//app", "team-a//app"),
            ("team-a/ap$p", "team-a/ap$p"),
            ("**", "**"),
        ] {
            let refused = listed(text).check(&spec(42, None)).unwrap_err();
            assert!(
                matches!(&refused, NotAllowed::InvalidAllowance(_)),
                "{text}: {refused:?}"
            );
            assert!(
                refused.to_string().contains(&format!("{entry:?}")),
                "{text}: {refused}"
            );
        }
    }
}

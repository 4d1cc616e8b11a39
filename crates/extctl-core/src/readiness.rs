//! The `Ready` condition: whether calls for a control can succeed, and if not, why.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::condition::Condition;

use super::tokens::{SigningTokens, TokenProblem};
use kube::ResourceExt;

use crate::crd::{ExternalControl, ExternalControlSpec};
use crate::key::ObjectKey;
use crate::tenancy::NotAllowed;

pub use crate::condition::words::READY;
use crate::condition::words::{
    CONTROL_ID_TAKEN, PROJECT_NOT_ALLOWED, READY_MESSAGE, SECRET_KEY_MISSING, SECRET_NOT_FOUND,
};

/// How the controls claiming one `controlId` for one project are ranked: the first holds it
/// (see [`holders`]), and calls for it reach that one alone. The oldest (`creationTimestamp`; one without comes last), then the
/// smallest uid, then namespace and name: the same on every replica and after every restart,
/// and a control created later never takes an id that one already holds.
pub fn holder_rank(control: &ExternalControl) -> (bool, Option<Timestamp>, String, ObjectKey) {
    let created = control.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let uid = control.metadata.uid.clone().unwrap_or_default();
    (created.is_none(), created, uid, ObjectKey::of(control))
}

/// Whether two claimants of one `controlId` name the same project: the same `projectId`, or
/// both the same `projectPath` (ignoring case, as calls find it). GitLab's control ids are
/// unique, so such claimants contend for the same calls; a claimant of the id for another
/// project contends with neither (it only ever meets calls for its own project).
pub fn same_project(a: &ExternalControlSpec, b: &ExternalControlSpec) -> bool {
    a.project_id == b.project_id
        || a.project_path
            .as_deref()
            .zip(b.project_path.as_deref())
            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// For the claimants of one `controlId`, in rank order ([`holder_rank`]): for each, the
/// position of the served claimant it contends with (`None`: it is served itself). The first
/// is always served; each next one is served unless it names the project of one served before
/// it.
pub fn holders(ranked: &[&ExternalControlSpec]) -> Vec<Option<usize>> {
    let mut holders: Vec<Option<usize>> = Vec::with_capacity(ranked.len());
    for (at, spec) in ranked.iter().enumerate() {
        let holder =
            (0..at).find(|&before| holders[before].is_none() && same_project(ranked[before], spec));
        holders.push(holder);
    }
    holders
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The namespace may not claim the control's project (see [`crate::tenancy`]): not served.
    ProjectNotAllowed(NotAllowed),
    /// Another ExternalControl, created before this one, holds the same `controlId` for the
    /// same project (see [`holders`]): this one is not served. `holder` is its name when it is in this
    /// control's namespace; `None` when it is in another, whose names are not this
    /// namespace's business.
    ControlIdTaken {
        control_id: i64,
        holder: Option<String>,
    },
    SecretNotFound {
        secret: String,
    },
    SecretKeyMissing {
        secret: String,
        problem: TokenProblem,
    },
}

impl Readiness {
    /// A taken id is reported first: the control is not served even when its Secret is fine.
    /// `holder` is the control that holds its id, when that is another one.
    pub fn evaluate(
        control: &ExternalControl,
        secret: Option<&Secret>,
        holder: Option<&ExternalControl>,
    ) -> Self {
        let secret_name = &control.spec.secret_ref.name;
        if let Some(holder) = holder {
            let same_namespace = holder.metadata.namespace == control.metadata.namespace;
            return Self::ControlIdTaken {
                control_id: control.spec.control_id,
                holder: same_namespace.then(|| holder.name_any()),
            };
        }
        let Some(secret) = secret else {
            return Self::SecretNotFound {
                secret: secret_name.clone(),
            };
        };
        let data = secret.data.clone().unwrap_or_default();
        match SigningTokens::from_secret_data(&data, &control.spec.secret_ref.key) {
            Ok(_) => Self::Ready,
            Err(problem) => Self::SecretKeyMissing {
                secret: secret_name.clone(),
                problem,
            },
        }
    }

    /// Readiness among `controls` (those that may claim their projects, `control` itself
    /// included when `allowed`); `allowed` is whether its namespace may claim its project.
    pub fn among<'a>(
        control: &'a ExternalControl,
        secret: Option<&Secret>,
        allowed: Result<(), NotAllowed>,
        controls: impl IntoIterator<Item = &'a ExternalControl>,
    ) -> Self {
        if let Err(not_allowed) = allowed {
            return Self::ProjectNotAllowed(not_allowed);
        }
        let me = ObjectKey::of(control);
        let mut ranked: Vec<&ExternalControl> = controls
            .into_iter()
            .filter(|other| other.spec.control_id == control.spec.control_id)
            .filter(|other| ObjectKey::of(*other) != me)
            .chain([control])
            .collect();
        ranked.sort_by_cached_key(|other| holder_rank(other));
        let specs: Vec<&ExternalControlSpec> = ranked.iter().map(|c| &c.spec).collect();
        let at = ranked
            .iter()
            .position(|other| std::ptr::eq(*other, control))
            .expect("the control is among those ranked");
        let holder = holders(&specs)[at].map(|holder| ranked[holder]);
        Self::evaluate(control, secret, holder)
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }

    /// Whether calls for the control's id and project reach it (its Secret may still be
    /// unusable): not when another control holds them, or its namespace may not claim the
    /// project. Such a control is not pinged either: its checker's answer would not reach it.
    pub fn is_served(&self) -> bool {
        !matches!(
            self,
            Self::ControlIdTaken { .. } | Self::ProjectNotAllowed(_)
        )
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Ready => READY,
            Self::ProjectNotAllowed(_) => PROJECT_NOT_ALLOWED,
            Self::ControlIdTaken { .. } => CONTROL_ID_TAKEN,
            Self::SecretNotFound { .. } => SECRET_NOT_FOUND,
            Self::SecretKeyMissing { .. } => SECRET_KEY_MISSING,
        }
    }

    /// A message for `kubectl describe`: names the Secret and key, never their contents.
    pub fn message(&self) -> String {
        match self {
            Self::Ready => READY_MESSAGE.into(),
            Self::ProjectNotAllowed(why) => why.to_string(),
            Self::ControlIdTaken { control_id, holder } => {
                let by = match holder {
                    Some(name) => format!("ExternalControl {name:?} of this namespace"),
                    None => "an ExternalControl of another namespace".to_owned(),
                };
                format!(
                    "controlId {control_id} for this project is held by {by}, created before this one; calls for it reach that control, not this one: give this control another controlId"
                )
            }
            Self::SecretNotFound { secret } => {
                format!("Secret {secret:?} not found in this namespace; calls cannot be verified")
            }
            Self::SecretKeyMissing { secret, problem } => {
                format!("Secret {secret:?}: {problem}; calls cannot be verified")
            }
        }
    }

    /// The condition to store, keeping `lastTransitionTime` when neither status nor reason moved.
    /// (Its words are shared: see [`crate::condition`].)
    pub fn condition(
        &self,
        generation: Option<i64>,
        previous: &[Condition],
        now: Timestamp,
    ) -> Condition {
        let status = if self.is_ready() { "True" } else { "False" };
        let reason = self.reason();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == READY && c.status == status && c.reason == reason)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: READY.into(),
            status: status.into(),
            reason: reason.into(),
            message: self.message().into(),
            observed_generation: generation,
            last_transition_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn control() -> ExternalControl {
        serde_json::from_value(json!({
            "apiVersion": "extctl.dev/v1alpha1", "kind": "ExternalControl",
            "metadata": {"name": "sast", "namespace": "team-a"},
            "spec": {"projectId": 42, "controlId": 7, "secretRef": {"name": "sast-token"}}
        }))
        .unwrap()
    }

    fn secret(key: &str, value: &str) -> Secret {
        Secret {
            data: Some([(key.to_owned(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn ready_with_a_secret_holding_the_key() {
        let readiness = Readiness::evaluate(&control(), Some(&secret("token", "t0p")), None);
        assert_eq!(readiness, Readiness::Ready);
        assert!(!readiness.message().contains("t0p"));
    }

    #[test]
    fn names_a_missing_secret_or_key() {
        let missing = Readiness::evaluate(&control(), None, None);
        assert_eq!(missing.reason(), "SecretNotFound");
        assert!(
            missing.message().contains("\"sast-token\""),
            "{}",
            missing.message()
        );

        let no_key = Readiness::evaluate(&control(), Some(&secret("other", "x")), None);
        assert_eq!(no_key.reason(), "SecretKeyMissing");
        assert!(
            no_key.message().contains("key \"token\" is missing"),
            "{}",
            no_key.message()
        );

        let empty = Readiness::evaluate(&control(), Some(&secret("token", "")), None);
        assert_eq!(empty.reason(), "SecretKeyMissing");
    }

    fn claimant(namespace: &str, name: &str, created: Option<i64>, uid: &str) -> ExternalControl {
        let mut control = control();
        control.metadata.namespace = Some(namespace.into());
        control.metadata.name = Some(name.into());
        control.metadata.uid = Some(uid.into());
        control.metadata.creation_timestamp =
            created.map(|s| Time(Timestamp::from_second(1_700_000_000 + s).unwrap()));
        control
    }

    #[test]
    fn the_oldest_claimant_holds_the_id_and_the_others_are_told_without_leaking_names() {
        let holder = claimant("team-a", "sast", Some(0), "u-2");
        let later = claimant("team-a", "copy", Some(5), "u-1");
        let elsewhere = claimant("team-b", "dast", Some(9), "u-0");
        let all = [&later, &elsewhere, &holder];
        let token = secret("token", "t");
        let readiness =
            |c: &ExternalControl| Readiness::among(c, Some(&token), Ok(()), all.iter().copied());
        assert_eq!(readiness(&holder), Readiness::Ready);
        let taken = readiness(&later);
        assert_eq!(taken.reason(), "ControlIdTaken");
        assert!(
            taken
                .message()
                .contains("ExternalControl \"sast\" of this namespace"),
            "{}",
            taken.message()
        );
        // Another namespace's holder is not named.
        let hidden = readiness(&elsewhere);
        assert_eq!(
            hidden,
            Readiness::ControlIdTaken {
                control_id: 7,
                holder: None
            }
        );
        assert!(!hidden.message().contains("sast") && !hidden.message().contains("team-a"));
        // A taken id is told even when the Secret is missing too.
        let both = Readiness::among(&later, None, Ok(()), all.iter().copied());
        assert_eq!(both.reason(), "ControlIdTaken");
    }

    #[test]
    fn claimants_of_an_id_for_other_projects_do_not_contend() {
        let holder = claimant("team-a", "sast", Some(5), "u-2");
        // Older, the same controlId, but another project: served for that project only.
        let mut squatter = claimant("team-b", "squat", Some(0), "u-1");
        squatter.spec.project_id = 43;
        let all = [&squatter, &holder];
        let token = secret("token", "t");
        for control in all {
            let readiness = Readiness::among(control, Some(&token), Ok(()), all);
            assert_eq!(readiness, Readiness::Ready, "{}", control.name_any());
        }
    }

    #[test]
    fn the_holder_does_not_depend_on_the_order_claimants_come_in() {
        let at = |name: &str, namespace: &str, created: i64, uid: &str, id: i64, path: &str| {
            let mut control = claimant(namespace, name, Some(created), uid);
            control.spec.project_id = id;
            control.spec.project_path = Some(path.into());
            control
        };
        // Another project's claim of the id, then the holder, in one second or two; the
        // newcomer later.
        for (squat_at, holder_at) in [(0, 0), (0, 1), (1, 0)] {
            for (squat_uid, holder_uid) in [("u-1", "u-2"), ("u-2", "u-1")] {
                let squat = at("squat", "b", squat_at, squat_uid, 43, "team-b/app");
                let holder = at("sast", "a", holder_at, holder_uid, 42, "team-a/app");
                let newcomer = at("impostor", "b", 10, "u-0", 42, "team-a/app");
                let all = [&squat, &holder, &newcomer];
                for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
                    let claimants = order.map(|i| all[i]);
                    let readiness = |c| Readiness::among(c, None, Ok(()), claimants);
                    assert_eq!(readiness(&newcomer).reason(), "ControlIdTaken", "{order:?}");
                    assert_ne!(readiness(&holder).reason(), "ControlIdTaken", "{order:?}");
                    assert_ne!(readiness(&squat).reason(), "ControlIdTaken", "{order:?}");
                }
            }
        }
    }

    #[test]
    fn a_path_is_a_project_too_and_only_served_claimants_hold() {
        let spec = |id: i64, path: Option<&str>| {
            let mut spec = control().spec;
            spec.project_id = id;
            spec.project_path = path.map(Into::into);
            spec
        };
        let (a, b, c, d) = (
            spec(42, Some("team/app")),
            spec(41, Some("TEAM/APP")),
            spec(41, None),
            spec(40, Some("team/other")),
        );
        // b names a's path: held by a. c names b's id, but b is not served: c is.
        assert_eq!(holders(&[&a, &b, &c, &d]), [None, Some(0), None, None]);
        assert!(same_project(&a, &b) && !same_project(&a, &c) && !same_project(&c, &d));
    }

    #[test]
    fn a_control_its_namespace_may_not_claim_says_why_first() {
        let refused =
            Readiness::among(&control(), None, Err(NotAllowed::NoAllowance), [&control()]);
        assert_eq!(refused.reason(), "ProjectNotAllowed");
        assert!(refused.message().contains("extctl.dev/projects"));
        assert!(!refused.is_ready());
    }

    #[test]
    fn the_rank_is_age_then_uid_then_key_and_a_control_without_a_time_comes_last() {
        let rank = |c: &ExternalControl| holder_rank(c);
        let old = claimant("b", "x", Some(0), "u-9");
        let same_time_smaller_uid = claimant("c", "y", Some(0), "u-1");
        let untimed = claimant("a", "a", None, "u-0");
        let mut ranked = [&untimed, &old, &same_time_smaller_uid];
        ranked.sort_by_key(|c| rank(c));
        let names: Vec<String> = ranked.iter().map(|c| c.name_any()).collect();
        assert_eq!(names, ["y", "x", "a"]);
    }

    #[test]
    fn transition_time_moves_only_when_the_condition_does() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_100).unwrap();
        let first = Readiness::Ready.condition(Some(1), &[], t0);
        assert_eq!(first.status, "True");
        assert_eq!(first.observed_generation, Some(1));
        let same = Readiness::Ready.condition(Some(2), std::slice::from_ref(&first), t1);
        assert_eq!(same.last_transition_time, Time(t0));
        let moved =
            Readiness::SecretNotFound { secret: "s".into() }.condition(Some(2), &[first], t1);
        assert_eq!(
            (moved.status.as_str(), moved.last_transition_time),
            ("False", Time(t1))
        );
    }
}

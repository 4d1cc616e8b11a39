//! The `Ready` condition: whether calls for a control can succeed, and if not, why.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::tokens::{SigningTokens, TokenProblem};
use kube::ResourceExt;

use crate::crd::ExternalControl;
use crate::key::ObjectKey;

pub const READY: &str = "Ready";

/// How the controls claiming one `controlId` are ranked: the first holds it, and calls for the
/// id reach it alone. The oldest (`creationTimestamp`; one without comes last), then the
/// smallest uid, then namespace and name: the same on every replica and after every restart,
/// and a control created later never takes an id that one already holds.
pub fn holder_rank(control: &ExternalControl) -> (bool, Option<Timestamp>, String, ObjectKey) {
    let created = control.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let uid = control.metadata.uid.clone().unwrap_or_default();
    (created.is_none(), created, uid, ObjectKey::of(control))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Another ExternalControl, created before this one, holds the same `controlId` (see
    /// [`holder_rank`]): this one is not served. `holder` is its name when it is in this
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

    /// Readiness among `controls` (all those served, `control` itself included).
    pub fn among<'a>(
        control: &ExternalControl,
        secret: Option<&Secret>,
        controls: impl IntoIterator<Item = &'a ExternalControl>,
    ) -> Self {
        let claimants = controls
            .into_iter()
            .filter(|other| other.spec.control_id == control.spec.control_id);
        let holder = claimants.min_by_key(|other| holder_rank(other));
        let me = ObjectKey::of(control);
        let taken_by = holder.filter(|holder| ObjectKey::of(*holder) != me);
        Self::evaluate(control, secret, taken_by)
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::ControlIdTaken { .. } => "ControlIdTaken",
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyMissing { .. } => "SecretKeyMissing",
        }
    }

    /// A message for `kubectl describe`: names the Secret and key, never their contents.
    pub fn message(&self) -> String {
        match self {
            Self::Ready => "Signed status calls for this control are accepted".into(),
            Self::ControlIdTaken { control_id, holder } => {
                let by = match holder {
                    Some(name) => format!("ExternalControl {name:?} of this namespace"),
                    None => "an ExternalControl of another namespace".to_owned(),
                };
                format!(
                    "controlId {control_id} is held by {by}, created before this one; calls for it reach that control, not this one: give this control another controlId"
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
            message: self.message(),
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
            |c: &ExternalControl| Readiness::among(c, Some(&token), all.iter().copied());
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
        let both = Readiness::among(&later, None, all.iter().copied());
        assert_eq!(both.reason(), "ControlIdTaken");
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

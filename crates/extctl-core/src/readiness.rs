//! The `Ready` condition: whether calls for a control can succeed, and if not, why.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::tokens::{SigningTokens, TokenProblem};
use crate::crd::ExternalControl;
use crate::key::ObjectKey;

pub const READY: &str = "Ready";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Other ExternalControls (namespace/name) claim the same `controlId`.
    DuplicateControl {
        control_id: i64,
        others: Vec<String>,
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
    /// A duplicate id is reported first: it blocks calls even when the Secret is fine.
    pub fn evaluate(
        control: &ExternalControl,
        secret: Option<&Secret>,
        others: Vec<String>,
    ) -> Self {
        let secret_name = &control.spec.secret_ref.name;
        if !others.is_empty() {
            return Self::DuplicateControl {
                control_id: control.spec.control_id,
                others,
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
        let me = ObjectKey::of(control);
        let mut others: Vec<String> = controls
            .into_iter()
            .filter(|other| other.spec.control_id == control.spec.control_id)
            .map(ObjectKey::of)
            .filter(|other| *other != me)
            .map(|other| other.to_string())
            .collect();
        others.sort();
        Self::evaluate(control, secret, others)
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::DuplicateControl { .. } => "DuplicateControl",
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyMissing { .. } => "SecretKeyMissing",
        }
    }

    /// A message for `kubectl describe`: names the Secret and key, never their contents.
    pub fn message(&self) -> String {
        match self {
            Self::Ready => "Signed status calls for this control are accepted".into(),
            Self::DuplicateControl { control_id, others } => format!(
                "controlId {control_id} is also used by {}; calls for it are refused with 409 until only one ExternalControl uses it",
                others.join(", ")
            ),
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
        let readiness = Readiness::evaluate(&control(), Some(&secret("token", "t0p")), vec![]);
        assert_eq!(readiness, Readiness::Ready);
        assert!(!readiness.message().contains("t0p"));
    }

    #[test]
    fn names_a_missing_secret_or_key() {
        let missing = Readiness::evaluate(&control(), None, vec![]);
        assert_eq!(missing.reason(), "SecretNotFound");
        assert!(
            missing.message().contains("\"sast-token\""),
            "{}",
            missing.message()
        );

        let no_key = Readiness::evaluate(&control(), Some(&secret("other", "x")), vec![]);
        assert_eq!(no_key.reason(), "SecretKeyMissing");
        assert!(
            no_key.message().contains("key \"token\" is missing"),
            "{}",
            no_key.message()
        );

        let empty = Readiness::evaluate(&control(), Some(&secret("token", "")), vec![]);
        assert_eq!(empty.reason(), "SecretKeyMissing");
    }

    #[test]
    fn duplicates_win_over_secret_problems() {
        let readiness = Readiness::evaluate(&control(), None, vec!["team-b/dast".into()]);
        assert_eq!(readiness.reason(), "DuplicateControl");
        assert!(
            readiness
                .message()
                .contains("controlId 7 is also used by team-b/dast")
        );
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

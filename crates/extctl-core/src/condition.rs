//! The conditions extctl stores in `status.conditions`: Kubernetes' `metav1.Condition` (the
//! same JSON, the same schema), whose words are kept once per process rather than once per
//! control.
//!
//! Every control in the watch cache carries its conditions (three, usually), and nearly every
//! string in them is one extctl writes itself: the types, `True`, `False` and `Unknown`, the
//! reasons and the fixed messages ([`words`], used by the modules that decide the conditions;
//! the [`vocabulary`]). Read back from the API server, each of those is a shared `&'static str`
//! ([`Text`]) instead of an allocation of its own; anything else (a message naming a Secret, a
//! condition another tool wrote) is owned as before.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::LazyLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::{Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A condition, as `metav1.Condition` has it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub last_transition_time: Time,
    pub message: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub reason: Text,
    pub status: Text,
    #[serde(rename = "type")]
    pub type_: Text,
}

/// `status.conditions`' schema: `metav1.Condition`'s own, as a list keyed by `type`.
pub(crate) fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema =
        generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), ["type"].into());
    schema
}

/// A condition's string: a word of the [vocabulary] shared, anything else owned.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Cow<'static, str>);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a shared word (no allocation of its own).
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Cow::Borrowed(_))
    }

    fn of(text: &str) -> Self {
        match vocabulary().get(text) {
            Some(word) => Self(Cow::Borrowed(word)),
            None => Self(Cow::Owned(text.to_owned())),
        }
    }
}

/// Every string extctl writes into a condition that never varies, each once per process.
pub fn vocabulary() -> &'static HashSet<&'static str> {
    static WORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
        let mut vocabulary: HashSet<&'static str> = words::OTHERS.into();
        for message in words::DECIDED_MESSAGES {
            vocabulary.insert(message);
            vocabulary.insert(Box::leak(words::kept_message(message).into_boxed_str()));
        }
        vocabulary
    });
    &WORDS
}

/// Every fixed string extctl writes into a condition, defined once.
pub mod words {
    pub const READY: &str = "Ready";
    pub const COMPLIANT: &str = "Compliant";
    /// kstatus: True means the resource is *Failed*.
    pub const STALLED: &str = "Stalled";
    /// kstatus: True means the resource is *InProgress*.
    pub const RECONCILING: &str = "Reconciling";

    pub const PROJECT_NOT_ALLOWED: &str = "ProjectNotAllowed";
    pub const CONTROL_ID_TAKEN: &str = "ControlIdTaken";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    pub const READY_MESSAGE: &str = "Signed status calls for this control are accepted";

    pub const CHECK_PASSED: &str = "CheckPassed";
    pub const NOT_APPLICABLE: &str = "NotApplicable";
    pub const CHECK_FAILED: &str = "CheckFailed";
    pub const PENDING_TIMEOUT: &str = "PendingTimeout";
    pub const AWAITING_RESULT: &str = "AwaitingResult";
    pub const RESULT_EXPIRED: &str = "ResultExpired";
    pub const WAIVED: &str = "Waived";

    pub const PASSED_MESSAGE: &str = "The checker reported pass";
    pub const NOT_APPLICABLE_MESSAGE: &str =
        "The checker reported not_applicable: the control does not apply";
    pub const FAILED_MESSAGE: &str = "The checker reported fail";
    pub const PENDING_TIMEOUT_MESSAGE: &str =
        "The checker was notified and did not report within pendingTimeout";
    pub const RESULT_EXPIRED_MESSAGE: &str =
        "No result within maxStaleness of the last one: the checker must report again";
    pub const AWAITING_RESULT_MESSAGE: &str =
        "No result yet: waiting for the checker's first report";
    pub const NOT_COMPLIANT_MESSAGE: &str =
        "The control is not compliant: see the Compliant condition";
    pub const WAITING_MESSAGE: &str = "Waiting for the checker's result";

    /// The messages of a decided gate, also written as kept through a re-check.
    pub(crate) const DECIDED_MESSAGES: [&str; 6] = [
        PASSED_MESSAGE,
        NOT_APPLICABLE_MESSAGE,
        FAILED_MESSAGE,
        PENDING_TIMEOUT_MESSAGE,
        RESULT_EXPIRED_MESSAGE,
        AWAITING_RESULT_MESSAGE,
    ];

    /// Every word above but the decided messages, and the statuses.
    pub(crate) const OTHERS: [&str; 21] = [
        "True",
        "False",
        "Unknown",
        READY,
        COMPLIANT,
        STALLED,
        RECONCILING,
        PROJECT_NOT_ALLOWED,
        CONTROL_ID_TAKEN,
        SECRET_NOT_FOUND,
        SECRET_KEY_MISSING,
        READY_MESSAGE,
        CHECK_PASSED,
        NOT_APPLICABLE,
        CHECK_FAILED,
        PENDING_TIMEOUT,
        AWAITING_RESULT,
        RESULT_EXPIRED,
        WAIVED,
        NOT_COMPLIANT_MESSAGE,
        WAITING_MESSAGE,
    ];

    /// A decided result's message while a re-check is pending (the status reset, the gate kept).
    pub(crate) fn kept_message(message: &str) -> String {
        format!("{message}; kept while a re-check is pending")
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Self(Cow::Borrowed(text))
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        match vocabulary().get(text.as_str()) {
            Some(word) => Self(Cow::Borrowed(word)),
            None => Self(Cow::Owned(text)),
        }
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        **self == *other.0
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            // A word of the vocabulary costs no allocation, not even a passing one.
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Text, E> {
                Ok(Text::of(text))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Text, E> {
                Ok(Text::from(text))
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_extctl_writes_are_shared_when_read_back_and_others_are_owned() {
        let json = r#"{"type":"Ready","status":"True","reason":"Ready",
            "message":"Signed status calls for this control are accepted",
            "lastTransitionTime":"2026-12-05T10:00:00Z","observedGeneration":2}"#;
        let ready: Condition = serde_json::from_str(json).unwrap();
        assert!(ready.type_.is_shared() && ready.status.is_shared());
        assert!(ready.reason.is_shared() && ready.message.is_shared());
        // The same JSON back, field for field.
        let again: serde_json::Value = serde_json::to_value(&ready).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );

        let other = r#"{"type":"Synced","status":"True","reason":"Applied",
            "message":"Secret \"sast-token\" not found","lastTransitionTime":"2026-12-05T10:00:00Z"}"#;
        let other: Condition = serde_json::from_str(other).unwrap();
        assert!(!other.type_.is_shared() && !other.message.is_shared());
        assert_eq!(other.type_, "Synced");
        assert!(other.status.is_shared(), "True is a word of the vocabulary");
        assert_eq!(
            serde_json::to_value(&other).unwrap()["observedGeneration"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn a_string_built_at_run_time_is_shared_when_it_is_a_word() {
        let built = format!("{}e", "Tru");
        assert!(Text::from(built).is_shared());
        assert!(!Text::from(format!("Tru{}", "th")).is_shared());
        assert_eq!(
            format!("{:?} {}", Text::from("True"), Text::from("True")),
            "\"True\" True"
        );
    }
}

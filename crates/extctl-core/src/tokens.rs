//! Signing tokens as read from a control's Secret, including the one being rotated out.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;

use super::signature;
use crate::crd::PREVIOUS_TOKEN_KEY;

/// Why a Secret yields no usable token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("key {0:?} is missing")]
    KeyMissing(String),
    #[error("key {0:?} is empty")]
    KeyEmpty(String),
}

/// Why a control has no signing token to use: what to fix, never a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoTokens {
    #[error("Secret {secret:?} not found")]
    SecretNotFound { secret: String },
    #[error("Secret {secret:?}: {problem}")]
    Unusable {
        secret: String,
        problem: TokenProblem,
    },
    /// The Secret could not be read (the store's error, as it says it).
    #[error("the Secret cannot be read: {0}")]
    Unreadable(String),
    /// The control is no longer in the store.
    #[error("{0} is gone")]
    ControlGone(String),
}

/// The current token and, during a rotation, the previous one. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningTokens {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl fmt::Debug for SigningTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningTokens(redacted)")
    }
}

impl SigningTokens {
    /// Reads `key` (and `previousToken`, if present and non-empty) from a Secret's data.
    ///
    /// One trailing line break is ignored: tokens saved with `echo` or an editor carry one, and a
    /// GitLab token (a single form field) never does.
    pub fn from_secret_data(
        data: &BTreeMap<String, ByteString>,
        key: &str,
    ) -> Result<Self, TokenProblem> {
        let current = data
            .get(key)
            .ok_or_else(|| TokenProblem::KeyMissing(key.to_owned()))?;
        let current = without_trailing_newline(&current.0);
        if current.is_empty() {
            return Err(TokenProblem::KeyEmpty(key.to_owned()));
        }
        let previous = data
            .get(PREVIOUS_TOKEN_KEY)
            .filter(|_| key != PREVIOUS_TOKEN_KEY)
            .map(|token| without_trailing_newline(&token.0))
            .filter(|token| !token.is_empty())
            .map(<[u8]>::to_vec);
        Ok(Self {
            current: current.to_vec(),
            previous,
        })
    }

    /// A control's tokens from its Secret (`None`: not found), or why there are none, naming
    /// the Secret and key but never their contents.
    pub fn for_control(
        control: &crate::crd::ExternalControl,
        secret: Option<&k8s_openapi::api::core::v1::Secret>,
    ) -> Result<Self, NoTokens> {
        let name = &control.spec.secret_ref.name;
        let secret = secret.ok_or_else(|| NoTokens::SecretNotFound {
            secret: name.clone(),
        })?;
        let data = secret.data.clone().unwrap_or_default();
        Self::from_secret_data(&data, &control.spec.secret_ref.key).map_err(|problem| {
            NoTokens::Unusable {
                secret: name.clone(),
                problem,
            }
        })
    }

    /// A token given directly (from a file, stdin or the environment).
    pub fn single(token: &[u8]) -> Result<Self, TokenProblem> {
        let token = without_trailing_newline(token);
        if token.is_empty() {
            return Err(TokenProblem::KeyEmpty("token".into()));
        }
        Ok(Self {
            current: token.to_vec(),
            previous: None,
        })
    }

    /// The token new signatures are made with.
    pub fn current(&self) -> &[u8] {
        &self.current
    }

    /// The current token, then the previous one during a rotation.
    pub fn all(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.current.as_slice()).chain(self.previous.as_deref())
    }

    /// Whether `signature` over `message` was made with the current or the previous token.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        // Both are checked, always, so timing does not tell which token matched.
        let current = signature::verify(&self.current, message, signature);
        let previous = self
            .previous
            .as_ref()
            .is_some_and(|token| signature::verify(token, message, signature));
        current | previous
    }
}

fn without_trailing_newline(token: &[u8]) -> &[u8] {
    let token = token.strip_suffix(b"\n").unwrap_or(token);
    token.strip_suffix(b"\r").unwrap_or(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    fn signed(token: &str, message: &str) -> String {
        signature::sign(token.as_bytes(), message.as_bytes())
    }

    #[test]
    fn reads_the_configured_key() {
        let tokens = SigningTokens::from_secret_data(&data(&[("tok", "foo")]), "tok").unwrap();
        assert_eq!(tokens.current(), b"foo");
        assert!(tokens.verify(b"m", &signed("foo", "m")));
        assert!(!tokens.verify(b"m", &signed("bar", "m")));
    }

    #[test]
    fn accepts_the_previous_token_during_rotation() {
        let secret = data(&[("token", "new"), ("previousToken", "old")]);
        let tokens = SigningTokens::from_secret_data(&secret, "token").unwrap();
        assert_eq!(tokens.current(), b"new");
        assert!(tokens.verify(b"m", &signed("new", "m")));
        assert!(tokens.verify(b"m", &signed("old", "m")));
        assert!(!tokens.verify(b"m", &signed("other", "m")));
    }

    #[test]
    fn ignores_one_trailing_line_break() {
        for raw in ["foo\n", "foo\r\n", "foo"] {
            let tokens =
                SigningTokens::from_secret_data(&data(&[("token", raw)]), "token").unwrap();
            assert_eq!(tokens.current(), b"foo", "{raw:?}");
        }
    }

    #[test]
    fn missing_or_empty_keys_are_named() {
        assert_eq!(
            SigningTokens::from_secret_data(&data(&[("other", "x")]), "token"),
            Err(TokenProblem::KeyMissing("token".into()))
        );
        assert_eq!(
            SigningTokens::from_secret_data(&data(&[("token", "\n")]), "token"),
            Err(TokenProblem::KeyEmpty("token".into()))
        );
        assert_eq!(
            TokenProblem::KeyMissing("token".into()).to_string(),
            "key \"token\" is missing"
        );
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let tokens = SigningTokens::single(b"hunter2").unwrap();
        assert!(!format!("{tokens:?}").contains("hunter2"));
    }
}

//! GitLab's answers for the external-control status API, in one table.
//!
//! Every error body is `{"error":"<message>"}`; the messages are GitLab's to the letter where
//! GitLab has the case, so checkers written for GitLab see what they expect.

/// Header carrying the Unix time, in seconds, at which the call was signed.
pub const TIMESTAMP_HEADER: &str = "X-Gitlab-Timestamp";
/// Header carrying the 32-character random nonce.
pub const NONCE_HEADER: &str = "X-Gitlab-Nonce";
/// Header carrying the lowercase hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "X-Gitlab-Hmac-Sha256";
/// Exact length of a nonce, in characters.
pub const NONCE_LENGTH: usize = 32;

/// Why a status call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("status does not have a valid value")]
    InvalidStatus,
    #[error("Control not found")]
    ControlNotFound,
    #[error("Missing required headers")]
    MissingHeaders,
    #[error("Invalid nonce")]
    InvalidNonce,
    #[error("Invalid signature")]
    InvalidSignature,
    #[error("Invalid timestamp")]
    InvalidTimestamp,
    #[error("Request has expired")]
    Expired,
    #[error("Project not found")]
    ProjectNotFound,
    /// The API server refused the write as invalid (GitLab's wording for a failed save).
    #[error("Failed to update compliance control status. Error: {0}")]
    UpdateRejected(String),
    /// The control's Secret or its key is missing, so no call can be verified (extctl only).
    #[error("Control signing token is not available")]
    TokenUnavailable,
    /// Controls are still loading, or the status store could not be reached: nothing was stored.
    #[error("Status store unavailable, nothing was stored: {0}")]
    Unavailable(String),
    /// The write was sent but not answered within the request timeout: it may still be stored,
    /// so the answer says neither (extctl only). A retry with a fresh nonce is always safe.
    #[error("Status store did not answer in time; the status may have been stored: retry")]
    StoreTimeout,
}

impl Rejection {
    /// The HTTP status GitLab (or extctl, for its own cases) answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidStatus | Self::UpdateRejected(_) => 400,
            Self::MissingHeaders
            | Self::InvalidNonce
            | Self::InvalidSignature
            | Self::InvalidTimestamp
            | Self::Expired => 401,
            Self::ControlNotFound | Self::ProjectNotFound => 404,
            Self::TokenUnavailable | Self::Unavailable(_) | Self::StoreTimeout => 503,
        }
    }

    /// A short, fixed name for metrics (never the message, which may carry an API error).
    pub fn label(&self) -> &'static str {
        match self {
            Self::InvalidStatus => "invalid_status",
            Self::ControlNotFound => "control_not_found",
            Self::MissingHeaders => "missing_headers",
            Self::InvalidNonce => "invalid_nonce",
            Self::InvalidSignature => "invalid_signature",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::Expired => "expired",
            Self::ProjectNotFound => "project_not_found",
            Self::UpdateRejected(_) => "update_rejected",
            Self::TokenUnavailable => "token_unavailable",
            Self::Unavailable(_) => "unavailable",
            Self::StoreTimeout => "store_timeout",
        }
    }
}

/// The three signature headers, present and non-blank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureHeaders<'a> {
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub signature: &'a str,
}

impl<'a> SignatureHeaders<'a> {
    /// GitLab refuses a call when any of the three headers is missing or blank.
    pub fn new(
        timestamp: Option<&'a str>,
        nonce: Option<&'a str>,
        signature: Option<&'a str>,
    ) -> Result<Self, Rejection> {
        let present = |value: Option<&'a str>| value.filter(|v| !v.trim().is_empty());
        match (present(timestamp), present(nonce), present(signature)) {
            (Some(timestamp), Some(nonce), Some(signature)) => Ok(Self {
                timestamp,
                nonce,
                signature,
            }),
            _ => Err(Rejection::MissingHeaders),
        }
    }

    /// A nonce must be exactly 32 characters (characters, not bytes, as GitLab counts).
    pub fn check_nonce_format(&self) -> Result<(), Rejection> {
        if self.nonce.chars().count() == NONCE_LENGTH {
            Ok(())
        } else {
            Err(Rejection::InvalidNonce)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_gitlabs_code_and_message() {
        let table = [
            (
                Rejection::InvalidStatus,
                400,
                "status does not have a valid value",
            ),
            (Rejection::ControlNotFound, 404, "Control not found"),
            (Rejection::MissingHeaders, 401, "Missing required headers"),
            (Rejection::InvalidNonce, 401, "Invalid nonce"),
            (Rejection::InvalidSignature, 401, "Invalid signature"),
            (Rejection::InvalidTimestamp, 401, "Invalid timestamp"),
            (Rejection::Expired, 401, "Request has expired"),
            (Rejection::ProjectNotFound, 404, "Project not found"),
            (
                Rejection::UpdateRejected("status.status: Unsupported value".into()),
                400,
                "Failed to update compliance control status. Error: status.status: Unsupported value",
            ),
        ];
        for (rejection, code, message) in table {
            assert_eq!(rejection.http_status(), code, "{rejection:?}");
            assert_eq!(rejection.to_string(), message);
        }
        assert_eq!(Rejection::TokenUnavailable.http_status(), 503);
        assert_eq!(Rejection::Unavailable("x".into()).http_status(), 503);
        assert_eq!(Rejection::StoreTimeout.http_status(), 503);
    }

    #[test]
    fn headers_must_all_be_present_and_non_blank() {
        let ok = SignatureHeaders::new(Some("1"), Some("n"), Some("s"));
        assert!(ok.is_ok());
        let cases = [
            (None, Some("n"), Some("s")),
            (Some("1"), None, Some("s")),
            (Some("1"), Some("n"), None),
            (Some(""), Some("n"), Some("s")),
            (Some("1"), Some("  "), Some("s")),
            (Some("1"), Some("n"), Some("\t")),
        ];
        for (t, n, s) in cases {
            assert_eq!(
                SignatureHeaders::new(t, n, s),
                Err(Rejection::MissingHeaders),
                "{t:?} {n:?} {s:?}"
            );
        }
    }

    #[test]
    fn nonce_must_be_exactly_32_characters() {
        let headers = |nonce| SignatureHeaders::new(Some("1"), Some(nonce), Some("s")).unwrap();
        assert!(
            headers("0123456789abcdef0123456789abcdef")
                .check_nonce_format()
                .is_ok()
        );
        assert_eq!(
            headers("0123456789abcdef0123456789abcde").check_nonce_format(),
            Err(Rejection::InvalidNonce)
        );
        assert_eq!(
            headers("0123456789abcdef0123456789abcdef0").check_nonce_format(),
            Err(Rejection::InvalidNonce)
        );
        // 32 characters, more than 32 bytes: GitLab counts characters.
        let multibyte = "é".repeat(32);
        assert!(headers(&multibyte).check_nonce_format().is_ok());
    }
}

//! Status-change notifications: what extctl POSTs to a control's `spec.notify` URLs when its
//! status changes, and how it signs it.
//!
//! Two formats:
//! - [Standard Webhooks](https://www.standardwebhooks.com/) (the default): headers
//!   `webhook-id` (the same for every retry of one change), `webhook-timestamp` (Unix seconds
//!   of the attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//!   keyed with the base64-decoded secret (a `whsec_` prefix is dropped). During a token
//!   rotation the header carries two signatures, `v1,<current> v1,<previous>`, which the
//!   scheme allows, so receivers that still hold the previous secret keep verifying.
//! - `fluxGenericHmac`: what a Flux `Receiver` of type `generic-hmac` verifies, `X-Signature:
//!   sha256=<hex HMAC-SHA256 of the body>` keyed with its Secret's `token`; a gated
//!   Kustomization then reconciles at once instead of at its next interval. One signature only
//!   (the header holds one).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::tokens::SigningTokens;
use crate::crd::Cause;
use crate::crd::{ControlStatus, NotifyFormat};

/// The prefix Standard Webhooks secrets are written with.
pub const SECRET_PREFIX: &str = "whsec_";

/// The event type of a status change, in the payload's `type`.
pub const STATUS_CHANGED: &str = "extctl.control.status_changed";

/// What identifies the control and the change told.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeData<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<&'a str>,
    pub project_id: i64,
    /// `spec.projectPath`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_path: Option<&'a str>,
    pub control_id: i64,
    pub from: ControlStatus,
    pub to: ControlStatus,
    pub cause: Cause,
    /// When the change was stored, as `status.history` has it (to the microsecond).
    pub time: MicroTime,
}

/// The JSON body: Standard Webhooks' recommended `{type, timestamp, data}` envelope.
pub fn payload(change: &ChangeData<'_>) -> Vec<u8> {
    let body = serde_json::json!({
        "type": STATUS_CHANGED,
        "timestamp": change.time,
        "data": change,
    });
    serde_json::to_vec(&body).expect("a JSON value always serializes")
}

/// The message id of one change told to one target: the same for every attempt and every
/// replica (a receiver drops duplicates by it), different for every change and target.
pub fn message_id(uid: &str, target: &str, change_time: Timestamp) -> String {
    let digest = Sha256::digest(format!("{uid}\n{target}\n{}", change_time.as_microsecond()));
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// Why a Secret's value is no Standard Webhooks secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "is not a Standard Webhooks secret: expected base64 (optionally after \"whsec_\"), as `openssl rand -base64 32` writes it"
)]
pub struct NotBase64;

/// The HMAC key of a Standard Webhooks secret: base64, optionally after `whsec_`.
pub fn standard_key(secret: &[u8]) -> Result<Vec<u8>, NotBase64> {
    let secret = secret
        .strip_prefix(SECRET_PREFIX.as_bytes())
        .unwrap_or(secret);
    match BASE64.decode(secret) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(NotBase64),
    }
}

/// The headers that sign `body` for a receiver of `format`, for an attempt at `now`.
/// `tokens` are the Secret's values as read (for Standard Webhooks, still base64).
pub fn signed_headers(
    format: NotifyFormat,
    tokens: &SigningTokens,
    id: &str,
    now: Timestamp,
    body: &[u8],
) -> Result<Vec<(&'static str, String)>, NotBase64> {
    match format {
        NotifyFormat::StandardWebhooks => {
            let timestamp = now.as_second().to_string();
            let content = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
            let signatures = tokens
                .all()
                .map(|secret| {
                    Ok(format!(
                        "v1,{}",
                        BASE64.encode(hmac(&standard_key(secret)?, &content))
                    ))
                })
                .collect::<Result<Vec<_>, NotBase64>>()?;
            Ok(vec![
                ("webhook-id", id.to_owned()),
                ("webhook-timestamp", timestamp),
                ("webhook-signature", signatures.join(" ")),
            ])
        }
        NotifyFormat::FluxGenericHmac => Ok(vec![(
            "X-Signature",
            format!("sha256={}", hex::encode(hmac(tokens.current(), body))),
        )]),
    }
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn header(headers: &[(&'static str, String)], name: &str) -> String {
        headers.iter().find(|(n, _)| *n == name).unwrap().1.clone()
    }

    #[test]
    fn standard_webhooks_signature_matches_the_reference_library() {
        // python -m pip install standardwebhooks==1.3.0; then
        // Webhook("whsec_ZXh0Y3RsLW5vdGlmeS1zZWNyZXQtMDEyMzQ1Njc4OQ==").sign(
        //   "msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1700000000, utc),
        //   '{"test": 2432232314}')
        let secret = b"whsec_ZXh0Y3RsLW5vdGlmeS1zZWNyZXQtMDEyMzQ1Njc4OQ==";
        let tokens = SigningTokens::single(secret).unwrap();
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let headers = signed_headers(
            NotifyFormat::StandardWebhooks,
            &tokens,
            id,
            at(1_700_000_000),
            BODY,
        )
        .unwrap();
        assert_eq!(header(&headers, "webhook-id"), id);
        assert_eq!(header(&headers, "webhook-timestamp"), "1700000000");
        assert_eq!(
            header(&headers, "webhook-signature"),
            "v1,ql1j2vhyGyQJmwlHciIDrjwIAwKeKXcMy5bWw40vYSY="
        );
        // The prefix is optional, as in the reference libraries.
        let bare = SigningTokens::single(&secret[SECRET_PREFIX.len()..]).unwrap();
        let again = signed_headers(
            NotifyFormat::StandardWebhooks,
            &bare,
            id,
            at(1_700_000_000),
            BODY,
        )
        .unwrap();
        assert_eq!(again, headers);
    }

    #[test]
    fn during_a_rotation_both_secrets_sign() {
        let data = [
            (
                "token",
                "whsec_ZXh0Y3RsLW5vdGlmeS1zZWNyZXQtMDEyMzQ1Njc4OQ==",
            ),
            ("previousToken", "b2xkLXNlY3JldA=="),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec())))
        .collect();
        let tokens = SigningTokens::from_secret_data(&data, "token").unwrap();
        let headers = signed_headers(
            NotifyFormat::StandardWebhooks,
            &tokens,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            at(1_700_000_000),
            BODY,
        )
        .unwrap();
        let signatures = header(&headers, "webhook-signature");
        let parts: Vec<_> = signatures.split(' ').collect();
        assert_eq!(parts.len(), 2, "{signatures}");
        assert_eq!(parts[0], "v1,ql1j2vhyGyQJmwlHciIDrjwIAwKeKXcMy5bWw40vYSY=");
        assert!(parts[1].starts_with("v1,") && parts[1] != parts[0]);
    }

    #[test]
    fn flux_generic_hmac_is_the_hex_hmac_of_the_body() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"flux-token",
        //   b"{\"test\": 2432232314}", hashlib.sha256).hexdigest())'
        let tokens = SigningTokens::single(b"flux-token").unwrap();
        let headers =
            signed_headers(NotifyFormat::FluxGenericHmac, &tokens, "msg_x", at(0), BODY).unwrap();
        assert_eq!(
            headers,
            [(
                "X-Signature",
                "sha256=a17fc861e977d4aaec0f588d7207ea0872a00de337e381fb745036a557ad72ef"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn a_secret_that_is_not_base64_is_refused_by_name() {
        for bad in [&b"not base64!"[..], b"whsec_", b"", b"whsec_%%%"] {
            assert_eq!(standard_key(bad), Err(NotBase64), "{bad:?}");
        }
        assert!(NotBase64.to_string().contains("openssl rand -base64 32"));
        assert_eq!(standard_key(b"aGk=").unwrap(), b"hi");
    }

    #[test]
    fn message_ids_are_stable_per_change_and_target() {
        let id = message_id("uid-1", "alerts", at(10));
        assert_eq!(id, message_id("uid-1", "alerts", at(10)));
        assert_eq!(id.len(), "msg_".len() + 32);
        assert_ne!(id, message_id("uid-1", "alerts", at(11)));
        assert_ne!(id, message_id("uid-1", "flux", at(10)));
        assert_ne!(id, message_id("uid-2", "alerts", at(10)));
    }

    #[test]
    fn the_payload_tells_the_control_and_the_change() {
        let change = ChangeData {
            namespace: "team-a",
            name: "sast",
            display_name: Some("SAST"),
            project_id: 42,
            project_path: Some("group/sast"),
            control_id: 7,
            from: ControlStatus::Pass,
            to: ControlStatus::Fail,
            cause: Cause::Reported,
            time: MicroTime(at(1_700_000_000)),
        };
        let body: serde_json::Value = serde_json::from_slice(&payload(&change)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "extctl.control.status_changed",
                "timestamp": "2023-11-14T22:13:20.000000Z",
                "data": {
                    "namespace": "team-a", "name": "sast", "displayName": "SAST",
                    "projectId": 42, "projectPath": "group/sast", "controlId": 7,
                    "from": "pass", "to": "fail",
                    "cause": "StatusReported", "time": "2023-11-14T22:13:20.000000Z"
                }
            })
        );
    }
}

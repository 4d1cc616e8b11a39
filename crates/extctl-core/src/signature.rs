//! GitLab's external-control request signature.
//!
//! The signed message is the plain concatenation, without separators, of
//! `timestamp + nonce + path + "status=" + status`, where `path` is rebuilt from the route
//! parameters (never the raw request line). The signature is the lowercase hex HMAC-SHA256 of
//! that message keyed with the control's secret token. The same HMAC, over a raw JSON body,
//! signs extctl's outbound pings (`X-GitLab-Signature`).

use constant_time_eq::constant_time_eq;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of a hex-encoded HMAC-SHA256.
const SIGNATURE_HEX_LEN: usize = 64;

/// The request path GitLab signs for a status update of `control` in `project`.
pub fn status_path(project: &str, control: &str) -> String {
    concat(&[
        "/api/v4/projects/",
        project,
        "/compliance_external_controls/",
        control,
        "/status",
    ])
}

/// The exact string a checker signs: `timestamp + nonce + path + "status=" + status`.
pub fn signed_string(timestamp: &str, nonce: &str, path: &str, status: &str) -> String {
    concat(&[timestamp, nonce, path, "status=", status])
}

/// `parts` joined, in one allocation (this is on every call's path; `format!` costs more).
fn concat(parts: &[&str]) -> String {
    let mut text = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    parts.iter().for_each(|part| text.push_str(part));
    text
}

/// Lowercase hex HMAC-SHA256 of `message` keyed with `token`.
pub fn sign(token: &[u8], message: &[u8]) -> String {
    let digest = hex_digest(token, message);
    // Hex digits are ASCII: the bytes are a string as they are.
    String::from_utf8(digest.to_vec()).expect("hex digits are ASCII")
}

/// Checks `signature` as GitLab does, comparing the lowercase hex strings themselves (an
/// uppercase digit never matches: a checker that works against extctl must also work against
/// GitLab), in constant time: nothing is decoded, so neither its value nor its format leaks.
pub fn verify(token: &[u8], message: &[u8], signature: &str) -> bool {
    // Slices of different lengths are unequal at once: the length is no secret.
    constant_time_eq(&hex_digest(token, message), signature.as_bytes())
}

/// The HMAC as 64 lowercase hex digits, in a fixed array (nothing allocated: this runs on
/// every call).
fn hex_digest(token: &[u8], message: &[u8]) -> [u8; SIGNATURE_HEX_LEN] {
    let mut digest = [0_u8; SIGNATURE_HEX_LEN];
    const_hex::encode_to_slice(keyed(token, message).finalize().into_bytes(), &mut digest)
        .expect("32 bytes are 64 hex digits");
    digest
}

fn keyed(token: &[u8], message: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(token).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol document's test vectors, computed independently with Python's `hmac`.
    /// The protocol document's vectors, and one for `not_applicable` computed with Python's
    /// `hmac` (the same token, time and nonce as the second).
    const VECTORS: [(&str, &str, &str, &str, &str, &str, &str); 3] = [
        (
            "foo",
            "1700000000",
            "0123456789abcdef0123456789abcdef",
            "1",
            "2",
            "pass",
            "25de0cc08468ff622368cd3e065faff71b6820ca3555fba5ef050fee2509092b",
        ),
        (
            "s3cr3t-t0ken",
            "1700000000",
            "fedcba9876543210fedcba9876543210",
            "42",
            "7",
            "fail",
            "df2a5ddb4dfb05f4a77e28b89fef12ab824b522a07773b7b4d09e67e68fbd65f",
        ),
        (
            "s3cr3t-t0ken",
            "1700000000",
            "fedcba9876543210fedcba9876543210",
            "42",
            "7",
            "not_applicable",
            "8be349f89d36541e36ff0726c2639351b18e941028c6ba5311cab931409e7af8",
        ),
    ];

    fn vector_message(v: &(&str, &str, &str, &str, &str, &str, &str)) -> String {
        signed_string(v.1, v.2, &status_path(v.3, v.4), v.5)
    }

    #[test]
    fn path_and_signed_string_match_the_protocol() {
        assert_eq!(
            status_path("42", "7"),
            "/api/v4/projects/42/compliance_external_controls/7/status"
        );
        assert_eq!(
            signed_string("1700000000", "n", "/p", "pass"),
            "1700000000n/pstatus=pass"
        );
    }

    #[test]
    fn signs_the_protocol_test_vectors() {
        for v in &VECTORS {
            assert_eq!(sign(v.0.as_bytes(), vector_message(v).as_bytes()), v.6);
        }
    }

    #[test]
    fn verifies_the_protocol_test_vectors() {
        for v in &VECTORS {
            assert!(verify(v.0.as_bytes(), vector_message(v).as_bytes(), v.6));
        }
    }

    #[test]
    fn rejects_any_change_to_the_signed_fields_or_key() {
        let v = &VECTORS[0];
        let good = vector_message(v);
        let altered = [
            signed_string("1700000001", v.2, &status_path(v.3, v.4), v.5),
            signed_string(
                v.1,
                "1123456789abcdef0123456789abcdef",
                &status_path(v.3, v.4),
                v.5,
            ),
            signed_string(v.1, v.2, &status_path("2", v.4), v.5),
            signed_string(v.1, v.2, &status_path(v.3, "3"), v.5),
            signed_string(v.1, v.2, &status_path(v.3, v.4), "fail"),
        ];
        for message in &altered {
            assert!(
                !verify(v.0.as_bytes(), message.as_bytes(), v.6),
                "{message}"
            );
        }
        assert!(!verify(b"bar", good.as_bytes(), v.6));
    }

    #[test]
    fn rejects_malformed_signatures() {
        let v = &VECTORS[0];
        let message = vector_message(v);
        let upper = v.6.to_uppercase();
        let truncated = &v.6[..62];
        let extended = format!("{}00", v.6);
        let non_hex = format!("{}zz", &v.6[..62]);
        let prefixed = format!("0x{}", &v.6[..62]);
        let multibyte = format!("{}é", &v.6[..62]);
        let padded = format!(" {}", &v.6[..63]);
        let malformed = [
            upper.as_str(),
            truncated,
            &extended,
            &non_hex,
            &prefixed,
            &multibyte,
        ];
        for signature in malformed.into_iter().chain([padded.as_str(), "", " "]) {
            assert!(
                !verify(v.0.as_bytes(), message.as_bytes(), signature),
                "{signature}"
            );
        }
    }
}

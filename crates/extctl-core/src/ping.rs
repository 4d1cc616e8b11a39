//! The outbound ping: what extctl POSTs to a control's `externalUrl` after a reset, and when a
//! notified checker's silence turns `pending` into `fail`.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::crd::{ControlStatus, ExternalControlStatus};

/// Header carrying the lowercase hex HMAC-SHA256 of the raw body, keyed with the token (GitLab's).
pub const PING_SIGNATURE_HEADER: &str = "X-GitLab-Signature";

/// What identifies the control in a ping.
pub struct PingSubject<'a> {
    pub project_id: i64,
    pub control_id: i64,
    pub namespace: &'a str,
    pub name: &'a str,
    pub display_name: Option<&'a str>,
}

/// The JSON body of a ping: the project, the control and its (now pending) status.
pub fn payload(subject: &PingSubject<'_>, reset_at: Timestamp) -> Vec<u8> {
    let body = json!({
        "object_kind": "compliance_control_ping",
        "project": { "id": subject.project_id },
        "control": {
            "id": subject.control_id,
            "name": subject.display_name,
            "namespace": subject.namespace,
            "resource": subject.name,
            "status": ControlStatus::Pending,
        },
        "time": reset_at.to_string(),
    });
    serde_json::to_vec(&body).expect("a JSON value always serializes")
}

/// When a still-`pending` status becomes `fail`: only after the checker accepted (2xx) the ping
/// for the current reset; an error answer or a network failure leaves it `pending`.
pub fn timeout_deadline(
    status: &ExternalControlStatus,
    pending_timeout: Duration,
) -> Option<Timestamp> {
    if status.status != Some(ControlStatus::Pending) {
        return None;
    }
    let outcome = status.last_ping.as_ref().filter(|o| o.accepted())?;
    // An outcome older than the last reset belongs to an earlier round.
    let current_round = status
        .last_ping_time
        .as_ref()
        .is_none_or(|reset| outcome.time.0 >= reset.0);
    let timeout = SignedDuration::try_from(pending_timeout).ok()?;
    current_round
        .then(|| outcome.time.0.checked_add(timeout).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PingOutcome;
    use crate::signature;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn pinged(code: Option<u16>, ping_at: i64, reset_at: i64) -> ExternalControlStatus {
        ExternalControlStatus {
            status: Some(ControlStatus::Pending),
            last_ping_time: Some(MicroTime(t(reset_at))),
            last_ping: Some(PingOutcome {
                time: MicroTime(t(ping_at)),
                http_status: code,
                error: code.is_none().then(|| "connection refused".into()),
                attempts: Some(1),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn payload_describes_the_project_control_and_pending_status() {
        let subject = PingSubject {
            project_id: 42,
            control_id: 7,
            namespace: "team-a",
            name: "sast",
            display_name: Some("SAST"),
        };
        let body: serde_json::Value = serde_json::from_slice(&payload(&subject, t(0))).unwrap();
        assert_eq!(body["project"]["id"], 42);
        assert_eq!(body["control"]["id"], 7);
        assert_eq!(body["control"]["status"], "pending");
        assert_eq!(body["control"]["namespace"], "team-a");
        assert_eq!(body["control"]["resource"], "sast");
        assert_eq!(body["time"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn the_signature_is_over_the_raw_body() {
        // Independently: python3 -c 'import hmac,hashlib;print(hmac.new(b"foo",b"{}",hashlib.sha256).hexdigest())'
        let expected = "c76356efa19d219d1d7e08ccb20b1d26db53b143156f406c99dcb8e0876d6c55";
        assert_eq!(signature::sign(b"foo", b"{}"), expected);
    }

    #[test]
    fn only_an_accepted_ping_for_the_current_reset_starts_the_timeout() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            timeout_deadline(&pinged(Some(200), 10, 10), minute),
            Some(t(70))
        );
        assert_eq!(
            timeout_deadline(&pinged(Some(204), 10, 10), minute),
            Some(t(70))
        );
        assert_eq!(timeout_deadline(&pinged(Some(500), 10, 10), minute), None);
        assert_eq!(timeout_deadline(&pinged(None, 10, 10), minute), None);
        // The outcome of an earlier round does not time out a newer reset.
        assert_eq!(timeout_deadline(&pinged(Some(200), 10, 20), minute), None);
        // A checker that answered settles it.
        let answered = ExternalControlStatus {
            status: Some(ControlStatus::Pass),
            ..pinged(Some(200), 10, 10)
        };
        assert_eq!(timeout_deadline(&answered, minute), None);
    }
}

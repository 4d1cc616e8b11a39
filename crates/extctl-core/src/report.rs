//! Applying a verified report to a control's status: the replay check and the fields it sets.
//!
//! The remembered nonces live in the control's status, which every replica reads and writes
//! with a resourceVersion precondition: a nonce accepted by one replica is refused by all.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};

use super::compliance::{Compliance, GateFacts};
use super::protocol::Rejection;
use crate::crd::{ControlStatus, ExternalControlStatus, RecentNonce};

/// A verified call from a checker, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub status: ControlStatus,
    pub nonce: String,
    /// When the nonce may be forgotten (the call would be expired by then anyway).
    pub nonce_expires_at: Timestamp,
    pub received_at: Timestamp,
}

/// The status fields a report writes (the endpoint owns exactly these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportUpdate {
    /// The status before this report (`pending` for a control never written yet).
    pub previous: ControlStatus,
    pub status: ControlStatus,
    pub last_update_time: MicroTime,
    pub recent_nonces: Vec<RecentNonce>,
}

impl ReportUpdate {
    /// Writes these fields into a status, and the gate's conditions for the result;
    /// `generation` is the control's, as read.
    pub fn apply_to(&self, status: &mut ExternalControlStatus, generation: Option<i64>) {
        record_result(status, self.status, self.last_update_time.0, generation);
        status.recent_nonces = self.recent_nonces.clone();
    }
}

/// Stores a result (`pass`, `fail`, `not_applicable`) reported at `at`: the status, its times,
/// and the `Compliant` condition (with kstatus's) it decides.
pub fn record_result(
    status: &mut ExternalControlStatus,
    result: ControlStatus,
    at: Timestamp,
    generation: Option<i64>,
) {
    status.status = Some(result);
    status.last_update_time = Some(MicroTime(at));
    status.last_result_time = Some(MicroTime(at));
    let waived_before = status.waiver.as_ref().and_then(|w| w.waiving);
    let facts = GateFacts {
        status: result,
        last_result_time: Some(at),
        // A result is never stale.
        max_staleness: std::time::Duration::MAX,
        previous: &status.conditions,
        timed_out: false,
        reported: true,
        waiver: status.waiver.as_deref(),
        waived_before,
    };
    let (gate, _) = Compliance::assess(&facts, at);
    status.conditions = gate.conditions(result, &status.conditions, generation, at);
    if let Some(waiver) = status.waiver.as_mut() {
        // A pass (or not_applicable) over a failure the waiver held open ends its effect.
        let decided = matches!(result, ControlStatus::Pass | ControlStatus::NotApplicable);
        if decided && waiver.waiving.is_some() && waiver.ended.is_none() {
            waiver.ended = Some(MicroTime(at));
        }
        waiver.waiving = gate.waiving();
    }
}

/// Refuses a nonce that an earlier accepted call used and that has not expired yet.
pub fn ensure_nonce_unused(
    status: Option<&ExternalControlStatus>,
    nonce: &str,
    now: Timestamp,
) -> Result<(), Rejection> {
    let used = status.is_some_and(|s| {
        s.recent_nonces
            .iter()
            .any(|seen| seen.nonce == nonce && seen.expires_at.0 > now)
    });
    if used {
        Err(Rejection::InvalidNonce)
    } else {
        Ok(())
    }
}

/// The update that stores `report` on top of `current`, or `InvalidNonce` for a replay.
/// Expired nonces are dropped, so the list stays as short as the timestamp window allows.
pub fn apply(
    current: Option<&ExternalControlStatus>,
    report: &Report,
) -> Result<ReportUpdate, Rejection> {
    ensure_nonce_unused(current, &report.nonce, report.received_at)?;
    let mut recent_nonces: Vec<RecentNonce> = current
        .map(|s| &s.recent_nonces[..])
        .unwrap_or_default()
        .iter()
        .filter(|seen| seen.expires_at.0 > report.received_at)
        .cloned()
        .collect();
    recent_nonces.push(RecentNonce {
        nonce: report.nonce.clone(),
        expires_at: Time(report.nonce_expires_at),
    });
    Ok(ReportUpdate {
        previous: current_status(current),
        status: report.status,
        last_update_time: MicroTime(report.received_at),
        recent_nonces,
    })
}

/// A control whose status was never written is `pending`, as a new GitLab control is.
pub fn current_status(status: Option<&ExternalControlStatus>) -> ControlStatus {
    status
        .and_then(|s| s.status)
        .unwrap_or(ControlStatus::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Cause, StatusChange};

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn report(status: ControlStatus, nonce: &str, second: i64) -> Report {
        Report {
            status,
            nonce: nonce.into(),
            nonce_expires_at: at(second + 15),
            received_at: at(second),
        }
    }

    fn stored(update: &ReportUpdate) -> ExternalControlStatus {
        let mut status = ExternalControlStatus::default();
        update.apply_to(&mut status, Some(1));
        status
    }

    #[test]
    fn first_report_on_a_new_control_changes_it_from_pending() {
        let update = apply(None, &report(ControlStatus::Pass, NONCE, 0)).unwrap();
        assert_eq!(update.previous, ControlStatus::Pending);
        assert_eq!(update.status, ControlStatus::Pass);
        assert_eq!(update.last_update_time, MicroTime(at(0)));
        assert_eq!(update.recent_nonces.len(), 1);
        assert_eq!(update.recent_nonces[0].expires_at, Time(at(15)));
    }

    #[test]
    fn same_status_again_is_not_a_change_but_is_stored() {
        let first = stored(&apply(None, &report(ControlStatus::Pass, NONCE, 0)).unwrap());
        let other = "ffffffffffffffffffffffffffffffff";
        let again = apply(Some(&first), &report(ControlStatus::Pass, other, 1)).unwrap();
        assert_eq!(again.previous, again.status, "not a change");
        assert_eq!(again.last_update_time, MicroTime(at(1)));
        assert_eq!(again.recent_nonces.len(), 2);
    }

    #[test]
    fn a_replayed_nonce_is_refused_until_it_expires() {
        let first = stored(&apply(None, &report(ControlStatus::Pass, NONCE, 0)).unwrap());
        for second in [0, 1, 14] {
            assert_eq!(
                apply(Some(&first), &report(ControlStatus::Fail, NONCE, second)),
                Err(Rejection::InvalidNonce),
                "second {second}"
            );
        }
        // By 15 s the signed timestamp itself has expired; the nonce may be forgotten.
        assert!(apply(Some(&first), &report(ControlStatus::Fail, NONCE, 15)).is_ok());
    }

    #[test]
    fn expired_nonces_are_pruned_on_write() {
        let first = stored(&apply(None, &report(ControlStatus::Pass, NONCE, 0)).unwrap());
        let other = "ffffffffffffffffffffffffffffffff";
        let later = apply(Some(&first), &report(ControlStatus::Fail, other, 20)).unwrap();
        assert_eq!(later.recent_nonces.len(), 1);
        assert_eq!(later.recent_nonces[0].nonce, other);
    }

    #[test]
    fn apply_to_keeps_fields_the_endpoint_does_not_own() {
        let mut status = ExternalControlStatus {
            observed_generation: Some(3),
            next_ping_time: Some(MicroTime(at(100))),
            ..Default::default()
        };
        apply(None, &report(ControlStatus::Fail, NONCE, 0))
            .unwrap()
            .apply_to(&mut status, Some(3));
        assert_eq!(status.status, Some(ControlStatus::Fail));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.next_ping_time, Some(MicroTime(at(100))));
        // The result decides the gate, at once: not compliant, Failed for kstatus.
        assert_eq!(status.last_result_time, Some(MicroTime(at(0))));
        let compliant = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Compliant")
            .unwrap();
        assert_eq!(
            (compliant.status.as_str(), compliant.reason.as_str()),
            ("False", "CheckFailed")
        );
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True")
        );
    }

    #[test]
    fn a_change_is_worded_as_gitlabs_audit_event_and_a_repeat_is_none() {
        let change =
            StatusChange::between(Cause::Reported, ControlStatus::Pending, ControlStatus::Pass);
        assert_eq!(
            change.unwrap().message(),
            "Changed compliance control status from 'pending' to 'pass'"
        );
        assert_eq!(
            StatusChange::between(Cause::PingReset, ControlStatus::Pass, ControlStatus::Pass),
            None
        );
    }

    #[test]
    fn a_report_under_a_waiver_keeps_the_truth_and_a_pass_ends_the_waiver() {
        use crate::compliance::{COMPLIANT, WAIVED};
        use crate::crd::{AppliedWaiver, WaivedOutcome};
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let mut status = ExternalControlStatus {
            waiver: Some(Box::new(AppliedWaiver {
                name: "w".into(),
                reason: "r".into(),
                expires: Time(at(100)),
                ticket: None,
                outcomes: vec![WaivedOutcome::Fail],
                granted_by: "alice".into(),
                waiving: None,
                ended: None,
            })),
            ..Default::default()
        };
        let compliant = |status: &ExternalControlStatus| {
            let c = status
                .conditions
                .iter()
                .find(|c| c.type_ == COMPLIANT)
                .unwrap();
            (c.status.clone(), c.reason.clone())
        };
        record_result(&mut status, ControlStatus::Fail, at(1), None);
        assert_eq!(status.status, Some(ControlStatus::Fail));
        assert_eq!(compliant(&status), ("True".into(), WAIVED.into()));
        assert_eq!(
            status.waiver.as_ref().unwrap().waiving,
            Some(WaivedOutcome::Fail)
        );

        record_result(&mut status, ControlStatus::Pass, at(2), None);
        assert_eq!(compliant(&status), ("True".into(), "CheckPassed".into()));
        let waiver = status.waiver.clone().unwrap();
        assert_eq!(
            (waiver.waiving, waiver.ended),
            (None, Some(MicroTime(at(2))))
        );

        // Ended: a later fail before the expiry shuts the gate.
        record_result(&mut status, ControlStatus::Fail, at(3), None);
        assert_eq!(compliant(&status), ("False".into(), "CheckFailed".into()));
    }
}

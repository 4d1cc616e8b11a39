//! `status.history`: the last changes of a control's status, kept on the control itself.
//!
//! Kubernetes Events expire (after an hour by default) while GitLab keeps an audit event for
//! every change; a short history on the object survives as long as the control does, and is
//! written in the same conditioned write as the change it records, so it never disagrees
//! with the status.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use super::schedule::to_microsecond;
use crate::crd::{Cause, ControlStatus, ExternalControl, StatusChangeRecord};
use crate::crd::{MAX_HISTORY, StatusChange};

/// How many changes each control keeps, and the name this replica signs them with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Changes kept per control; 0 keeps none (the audit log line and Event still tell).
    pub limit: usize,
    /// This replica's name (its pod name), recorded with each change it stores.
    pub replica: Option<String>,
}

impl HistoryPolicy {
    /// The record of `change`, stored at `at` (kept to the microsecond, as stored).
    pub fn record(&self, change: StatusChange, at: Timestamp) -> StatusChangeRecord {
        StatusChangeRecord {
            time: MicroTime(to_microsecond(at)),
            from: change.from,
            to: change.to,
            cause: change.cause,
            waiver: None,
            replica: self.replica.clone(),
        }
    }

    /// The record of a waiver's start or end (`cause`) on a control whose status is `status`.
    pub fn record_waiver(
        &self,
        cause: Cause,
        waiver: &str,
        status: ControlStatus,
        at: Timestamp,
    ) -> StatusChangeRecord {
        StatusChangeRecord {
            time: MicroTime(to_microsecond(at)),
            from: status,
            to: status,
            cause,
            waiver: Some(waiver.to_owned()),
            replica: self.replica.clone(),
        }
    }

    /// The policy for a control: one with `spec.notify` keeps at least its last change, which
    /// its notifications are sent from, whatever the limit.
    pub fn for_control(&self, control: &ExternalControl) -> Self {
        let limit = match control.spec.notify.is_empty() {
            true => self.limit,
            false => self.limit.max(1),
        };
        Self {
            limit,
            replica: self.replica.clone(),
        }
    }

    /// `history` with `record` appended, oldest dropped beyond the limit.
    pub fn appended(
        &self,
        history: &[StatusChangeRecord],
        record: &StatusChangeRecord,
    ) -> Vec<StatusChangeRecord> {
        let limit = self.limit.min(MAX_HISTORY);
        let kept = history.len().min(limit.saturating_sub(1));
        let mut appended = history[history.len() - kept..].to_vec();
        if limit > 0 {
            appended.push(record.clone());
        }
        appended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ControlStatus::{Fail, Pass, Pending};

    fn policy(limit: usize) -> HistoryPolicy {
        HistoryPolicy {
            limit,
            replica: Some("extctl-0".into()),
        }
    }

    fn change(n: i64) -> StatusChangeRecord {
        let change = StatusChange::between(Cause::Reported, Pending, Pass).unwrap();
        policy(1).record(change, Timestamp::from_second(n).unwrap())
    }

    #[test]
    fn a_record_says_what_when_why_and_who() {
        let change = StatusChange::between(Cause::PendingTimeout, Pending, Fail).unwrap();
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let record = policy(3).record(change, at);
        assert_eq!(
            (record.time.0, record.from, record.to, record.cause),
            (at, Pending, Fail, Cause::PendingTimeout)
        );
        assert_eq!(record.replica.as_deref(), Some("extctl-0"));
    }

    #[test]
    fn keeps_the_newest_up_to_the_limit() {
        let history: Vec<_> = (1..=5).map(change).collect();
        let appended = policy(3).appended(&history, &change(6));
        let times: Vec<_> = appended.iter().map(|r| r.time.0.as_second()).collect();
        assert_eq!(times, [4, 5, 6]);
        assert_eq!(policy(10).appended(&history, &change(6)).len(), 6);
        assert_eq!(policy(1).appended(&history, &change(6)), [change(6)]);
    }

    #[test]
    fn a_control_that_notifies_keeps_its_last_change() {
        let mut control = ExternalControl::new(
            "c",
            serde_json::from_value(serde_json::json!({
                "projectId": 1, "controlId": 1, "secretRef": {"name": "s"}
            }))
            .unwrap(),
        );
        assert_eq!(policy(0).for_control(&control).limit, 0);
        control.spec.notify = serde_json::from_value(serde_json::json!([
            {"name": "alerts", "url": "https://hooks.example/x", "secretRef": {"name": "h"}}
        ]))
        .unwrap();
        assert_eq!(policy(0).for_control(&control).limit, 1);
        assert_eq!(policy(5).for_control(&control), policy(5));
    }

    #[test]
    fn a_limit_of_zero_keeps_nothing_and_the_cap_holds() {
        let history: Vec<_> = (1..=5).map(change).collect();
        assert!(policy(0).appended(&history, &change(6)).is_empty());
        let long: Vec<_> = (0..150).map(change).collect();
        assert_eq!(
            policy(1000).appended(&long, &change(200)).len(),
            MAX_HISTORY
        );
    }
}

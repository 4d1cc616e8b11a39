//! Which status changes are still to be told to which `spec.notify` target.
//!
//! Notifications are sent from `status.history` (a control with targets keeps at least its
//! last change there), and each target's `status.notifications` entry holds a cursor, `since`:
//! the time of the last change told or given up on. A change is due when it is newer than the
//! cursor and its new status is one the target asked for. The cursor moves only once a
//! delivery has ended, in a write conditioned on its old value, so a restart or a new leader
//! sends what was not yet told (with the same `webhook-id`, for receivers to drop a duplicate)
//! and no two senders move it past each other.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use crate::crd::{NotificationStatus, NotifyTarget, StatusChangeRecord};

/// The entries `status.notifications` should hold: one per target, in the targets' order.
/// A target seen for the first time starts after the newest change already recorded: adding
/// a target does not replay the past.
pub fn entries(
    targets: &[NotifyTarget],
    current: &[NotificationStatus],
    history: &[StatusChangeRecord],
    now: Timestamp,
) -> Vec<NotificationStatus> {
    targets
        .iter()
        .map(|target| {
            current
                .iter()
                .find(|entry| entry.name == target.name)
                .cloned()
                .unwrap_or_else(|| NotificationStatus {
                    name: target.name.clone(),
                    since: history
                        .last()
                        .map_or(MicroTime(now), |newest| newest.time.clone()),
                    last_delivery: None,
                })
        })
        .collect()
}

/// The changes still to be told to `target`, oldest first.
pub fn due<'a>(
    target: &NotifyTarget,
    entry: &NotificationStatus,
    history: &'a [StatusChangeRecord],
) -> Vec<&'a StatusChangeRecord> {
    history
        .iter()
        .filter(|record| record.time.0 > entry.since.0 && record.is_status_change())
        .filter(|record| target.statuses.contains(&record.to))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Cause;
    use crate::crd::ControlStatus::{self, Fail, NotApplicable, Pass, Pending};

    fn at(second: i64) -> MicroTime {
        MicroTime(Timestamp::from_second(second).unwrap())
    }

    fn target(name: &str, statuses: &[ControlStatus]) -> NotifyTarget {
        let mut target: NotifyTarget = serde_json::from_value(serde_json::json!({
            "name": name, "url": "https://hooks.example/x", "secretRef": {"name": "h"}
        }))
        .unwrap();
        if !statuses.is_empty() {
            target.statuses = statuses.to_vec();
        }
        target
    }

    fn record(second: i64, from: ControlStatus, to: ControlStatus) -> StatusChangeRecord {
        StatusChangeRecord {
            time: at(second),
            from,
            to,
            cause: Cause::Reported,
            waiver: None,
            replica: None,
        }
    }

    fn entry(name: &str, since: i64) -> NotificationStatus {
        NotificationStatus {
            name: name.into(),
            since: at(since),
            last_delivery: None,
        }
    }

    #[test]
    fn a_new_target_starts_after_the_newest_recorded_change() {
        let history = [record(10, Pending, Pass), record(20, Pass, Fail)];
        let targets = [target("alerts", &[]), target("flux", &[])];
        let kept = [entry("flux", 15), entry("removed", 1)];
        let entries = entries(&targets, &kept, &history, at(99).0);
        assert_eq!(entries, [entry("alerts", 20), entry("flux", 15)]);
        // Without any change recorded: from now.
        assert_eq!(
            super::entries(&targets[..1], &[], &[], at(99).0),
            [entry("alerts", 99)]
        );
    }

    #[test]
    fn due_are_the_newer_changes_to_an_asked_for_status() {
        let history = [
            record(10, Pending, Pass),
            record(20, Pass, Pending),
            record(30, Pending, Fail),
            record(40, Fail, NotApplicable),
            // A waiver's start is on record, but is no change of status to tell.
            StatusChangeRecord {
                cause: Cause::WaiverApplied,
                waiver: Some("w".into()),
                ..record(50, NotApplicable, NotApplicable)
            },
        ];
        let times = |target: &NotifyTarget, since: i64| -> Vec<i64> {
            due(target, &entry(&target.name, since), &history)
                .iter()
                .map(|r| r.time.0.as_second())
                .collect()
        };
        // Default: every result, no reset.
        assert_eq!(times(&target("all", &[]), 0), [10, 30, 40]);
        assert_eq!(times(&target("all", &[]), 30), [40]);
        assert_eq!(times(&target("all", &[]), 40), Vec::<i64>::new());
        assert_eq!(times(&target("fail", &[Fail]), 0), [30]);
        assert_eq!(times(&target("resets", &[Pending]), 0), [20]);
    }
}

//! Whether a control's last result lets a deploy through: the `Compliant` condition, and the
//! `Stalled` / `Reconciling` conditions that make kstatus (sigs.k8s.io/cli-utils, used by Flux,
//! kubectl-based tools and Argo CD's generic checks) read a failing control as *Failed* and an
//! undecided one as *InProgress*, and a passing one as *Current*.
//!
//! A ping resets the status to `pending` every interval; a gate that followed the status would
//! flap with it. So `Compliant` keeps the last decided value (`pass`, `not_applicable`: True;
//! `fail`: False) through a `pending` until `maxStaleness` has passed since that result without
//! a new one, and only then turns `Unknown`.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::condition::Condition;
use crate::crd::ControlStatus;
use crate::crd::{AppliedWaiver, WaivedOutcome};

use crate::condition::words::{self, kept_message};
pub use crate::condition::words::{
    AWAITING_RESULT, CHECK_FAILED, CHECK_PASSED, COMPLIANT, NOT_APPLICABLE, PENDING_TIMEOUT,
    RECONCILING, RESULT_EXPIRED, STALLED, WAIVED,
};

/// What the gate says, and why (the reason is the condition's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compliance {
    /// A covered outcome held open by a waiver (reason `Waived`): `status.status` keeps what
    /// the checker said.
    Waived {
        outcome: WaivedOutcome,
        waiver: String,
        because: String,
        expires: Timestamp,
    },
    /// `pass` (reason `CheckPassed`) or `not_applicable` (reason `NotApplicable`).
    Compliant { reason: &'static str },
    /// `fail`: reported (`CheckFailed`) or a notified checker that never answered
    /// (`PendingTimeout`).
    NotCompliant { reason: &'static str },
    /// No result yet (`AwaitingResult`), or the last one is older than `maxStaleness`
    /// (`ResultExpired`).
    Unknown { reason: &'static str },
}

/// The facts the gate is judged from.
#[derive(Debug, Clone)]
pub struct GateFacts<'a> {
    pub status: ControlStatus,
    /// When the last `pass`, `fail` or `not_applicable` was stored.
    pub last_result_time: Option<Timestamp>,
    pub max_staleness: Duration,
    /// The conditions stored now (the previous `Compliant` among them).
    pub previous: &'a [Condition],
    /// Set when this very write stores `fail` because of the pending timeout.
    pub timed_out: bool,
    /// Set when this very write stores a checker's report (its result replaces any other).
    pub reported: bool,
    /// The waiver that covers the control now, if any.
    pub waiver: Option<&'a AppliedWaiver>,
    /// What the waiver recorded in the stored status held open (the outcome behind a stored
    /// `Waived`).
    pub waived_before: Option<WaivedOutcome>,
}

impl Compliance {
    /// The gate as of `now`, and when it will change by itself (a kept result expiring, a
    /// waiver's expiry).
    pub fn assess(facts: &GateFacts, now: Timestamp) -> (Self, Option<Timestamp>) {
        let (gate, changes) = Self::unwaived(facts, now);
        let outcome = match &gate {
            Self::NotCompliant {
                reason: PENDING_TIMEOUT,
            } => WaivedOutcome::PendingTimeout,
            Self::NotCompliant { .. } => WaivedOutcome::Fail,
            _ => return (gate, changes),
        };
        match facts.waiver {
            Some(waiver) if waiver.opens(outcome, now) => {
                let expires = waiver.expires.0;
                let waived = Self::Waived {
                    outcome,
                    waiver: waiver.name.clone(),
                    because: waiver.reason.clone(),
                    expires,
                };
                let changes = changes.map_or(expires, |at| at.min(expires));
                (waived, Some(changes))
            }
            _ => (gate, changes),
        }
    }

    /// The outcome a waiver holds open now, if it does.
    pub fn waiving(&self) -> Option<WaivedOutcome> {
        match self {
            Self::Waived { outcome, .. } => Some(*outcome),
            _ => None,
        }
    }

    /// The gate the result alone decides.
    fn unwaived(facts: &GateFacts, now: Timestamp) -> (Self, Option<Timestamp>) {
        let previous = facts.previous.iter().find(|c| c.type_ == COMPLIANT);
        match facts.status {
            ControlStatus::Pass => (Self::compliant(CHECK_PASSED), None),
            ControlStatus::NotApplicable => (Self::compliant(NOT_APPLICABLE), None),
            ControlStatus::Fail => {
                // A fail kept since the timeout keeps that reason until a report replaces it.
                let kept_timeout = previous
                    .and_then(|c| Self::decided_from(c, facts.waived_before))
                    == Some(Self::NotCompliant {
                        reason: PENDING_TIMEOUT,
                    });
                let timed_out = facts.timed_out || (kept_timeout && !facts.reported);
                let reason = if timed_out {
                    PENDING_TIMEOUT
                } else {
                    CHECK_FAILED
                };
                (Self::NotCompliant { reason }, None)
            }
            ControlStatus::Pending => Self::through_pending(facts, previous, now),
        }
    }

    fn compliant(reason: &'static str) -> Self {
        Self::Compliant { reason }
    }

    /// While `pending`: the last decided value, until it is `maxStaleness` old.
    fn through_pending(
        facts: &GateFacts,
        previous: Option<&Condition>,
        now: Timestamp,
    ) -> (Self, Option<Timestamp>) {
        let decided = previous.and_then(|c| Self::decided_from(c, facts.waived_before));
        let expires = facts
            .last_result_time
            .and_then(|at| at.checked_add(facts.max_staleness).ok());
        match (decided, expires) {
            (Some(kept), Some(expires)) if now < expires => (kept, Some(expires)),
            (Some(_), _) => (
                Self::Unknown {
                    reason: RESULT_EXPIRED,
                },
                None,
            ),
            // Never decided, or already expired (and stored so).
            (None, _) => match previous {
                Some(c) if c.reason == RESULT_EXPIRED => (
                    Self::Unknown {
                        reason: RESULT_EXPIRED,
                    },
                    None,
                ),
                _ => (
                    Self::Unknown {
                        reason: AWAITING_RESULT,
                    },
                    None,
                ),
            },
        }
    }

    /// A stored `Compliant` condition read back, when it holds a decided value (`waived`: the
    /// outcome behind a stored `Waived`).
    fn decided_from(condition: &Condition, waived: Option<WaivedOutcome>) -> Option<Self> {
        if condition.reason == WAIVED {
            let reason = match waived? {
                WaivedOutcome::Fail => CHECK_FAILED,
                WaivedOutcome::PendingTimeout => PENDING_TIMEOUT,
            };
            return Some(Self::NotCompliant { reason });
        }
        let reason = [CHECK_PASSED, NOT_APPLICABLE, CHECK_FAILED, PENDING_TIMEOUT]
            .into_iter()
            .find(|r| *r == condition.reason)?;
        match condition.status.as_str() {
            "True" => Some(Self::Compliant { reason }),
            "False" => Some(Self::NotCompliant { reason }),
            _ => None,
        }
    }

    fn status(&self) -> &'static str {
        match self {
            Self::Compliant { .. } | Self::Waived { .. } => "True",
            Self::NotCompliant { .. } => "False",
            Self::Unknown { .. } => "Unknown",
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Compliant { reason }
            | Self::NotCompliant { reason }
            | Self::Unknown { reason } => reason,
            Self::Waived { .. } => WAIVED,
        }
    }

    fn message(&self, kept: bool) -> String {
        let waived;
        let message = match self {
            Self::Waived {
                outcome,
                waiver,
                because,
                expires,
            } => {
                waived = format!(
                    "Waived by {waiver} until {expires} ({because}): {}",
                    outcome.describe()
                );
                &waived
            }
            _ => self.plain_message(),
        };
        if kept {
            kept_message(message)
        } else {
            message.to_owned()
        }
    }

    fn plain_message(&self) -> &'static str {
        match self.reason() {
            CHECK_PASSED => words::PASSED_MESSAGE,
            NOT_APPLICABLE => words::NOT_APPLICABLE_MESSAGE,
            CHECK_FAILED => words::FAILED_MESSAGE,
            PENDING_TIMEOUT => words::PENDING_TIMEOUT_MESSAGE,
            RESULT_EXPIRED => words::RESULT_EXPIRED_MESSAGE,
            _ => words::AWAITING_RESULT_MESSAGE,
        }
    }

    /// `conditions` with `Compliant`, `Stalled` and `Reconciling` as this gate says, every other
    /// condition as it was. A condition keeps its `lastTransitionTime` unless its status moved.
    pub fn conditions(
        &self,
        status: ControlStatus,
        conditions: &[Condition],
        generation: Option<i64>,
        now: Timestamp,
    ) -> Vec<Condition> {
        let kept = status == ControlStatus::Pending && !matches!(self, Self::Unknown { .. });
        let mut next: Vec<Condition> = conditions
            .iter()
            .filter(|c| ![COMPLIANT, STALLED, RECONCILING].contains(&c.type_.as_str()))
            .cloned()
            .collect();
        let condition = |type_: &'static str,
                         status: &'static str,
                         reason: &'static str,
                         message: String| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone()),
        };
        next.push(condition(
            COMPLIANT,
            self.status(),
            self.reason(),
            self.message(kept),
        ));
        match self {
            Self::NotCompliant { reason } => next.push(condition(
                STALLED,
                "True",
                reason,
                words::NOT_COMPLIANT_MESSAGE.to_owned(),
            )),
            Self::Unknown { reason } => next.push(condition(
                RECONCILING,
                "True",
                reason,
                words::WAITING_MESSAGE.to_owned(),
            )),
            Self::Compliant { .. } | Self::Waived { .. } => {}
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn facts(status: ControlStatus, previous: &[Condition]) -> GateFacts<'_> {
        GateFacts {
            status,
            last_result_time: Some(at(0)),
            max_staleness: Duration::from_secs(100),
            previous,
            timed_out: false,
            reported: false,
            waiver: None,
            waived_before: None,
        }
    }

    fn stored(status: ControlStatus, previous: &[Condition], now: Timestamp) -> Vec<Condition> {
        let (gate, _) = Compliance::assess(&facts(status, previous), now);
        gate.conditions(status, previous, Some(3), now)
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
        conditions.iter().find(|c| c.type_ == type_)
    }

    #[test]
    fn results_decide_the_gate_and_kstatus() {
        for (status, value, reason, stalled, reconciling) in [
            (ControlStatus::Pass, "True", CHECK_PASSED, false, false),
            (
                ControlStatus::NotApplicable,
                "True",
                NOT_APPLICABLE,
                false,
                false,
            ),
            (ControlStatus::Fail, "False", CHECK_FAILED, true, false),
            (
                ControlStatus::Pending,
                "Unknown",
                AWAITING_RESULT,
                false,
                true,
            ),
        ] {
            let conditions = stored(status, &[], at(1));
            let compliant = find(&conditions, COMPLIANT).unwrap();
            assert_eq!(
                (compliant.status.as_str(), compliant.reason.as_str()),
                (value, reason)
            );
            assert_eq!(compliant.observed_generation, Some(3));
            assert_eq!(find(&conditions, STALLED).is_some(), stalled, "{status:?}");
            assert_eq!(
                find(&conditions, RECONCILING).is_some(),
                reconciling,
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_pending_re_check_keeps_the_last_result_until_it_is_stale() {
        for (result, value) in [
            (ControlStatus::Pass, "True"),
            (ControlStatus::Fail, "False"),
        ] {
            let decided = stored(result, &[], at(0));
            let (gate, expires) =
                Compliance::assess(&facts(ControlStatus::Pending, &decided), at(99));
            assert_eq!(expires, Some(at(100)));
            let kept = gate.conditions(ControlStatus::Pending, &decided, Some(3), at(99));
            let compliant = find(&kept, COMPLIANT).unwrap();
            assert_eq!(compliant.status, value);
            assert!(
                compliant
                    .message
                    .ends_with("kept while a re-check is pending")
            );
            // Unmoved: the transition time is the result's.
            assert_eq!(compliant.last_transition_time, Time(at(0)));

            let (gate, expires) =
                Compliance::assess(&facts(ControlStatus::Pending, &kept), at(100));
            assert_eq!(
                (gate.clone(), expires),
                (
                    Compliance::Unknown {
                        reason: RESULT_EXPIRED
                    },
                    None
                )
            );
            let stale = gate.conditions(ControlStatus::Pending, &kept, Some(3), at(100));
            assert_eq!(find(&stale, COMPLIANT).unwrap().status, "Unknown");
            assert_eq!(
                find(&stale, COMPLIANT).unwrap().last_transition_time,
                Time(at(100))
            );
            assert!(find(&stale, RECONCILING).is_some() && find(&stale, STALLED).is_none());
            // Once stale, it stays so until a result comes.
            let (again, _) = Compliance::assess(&facts(ControlStatus::Pending, &stale), at(200));
            assert_eq!(
                again,
                Compliance::Unknown {
                    reason: RESULT_EXPIRED
                }
            );
        }
    }

    #[test]
    fn a_timeout_fail_keeps_its_reason_until_a_report() {
        let mut timed_out = facts(ControlStatus::Fail, &[]);
        timed_out.timed_out = true;
        let (gate, _) = Compliance::assess(&timed_out, at(1));
        let conditions = gate.conditions(ControlStatus::Fail, &[], None, at(1));
        assert_eq!(
            find(&conditions, COMPLIANT).unwrap().reason,
            PENDING_TIMEOUT
        );
        assert_eq!(find(&conditions, STALLED).unwrap().reason, PENDING_TIMEOUT);
        // A later reconcile of the same fail keeps it...
        let (later, _) = Compliance::assess(&facts(ControlStatus::Fail, &conditions), at(2));
        assert_eq!(
            later,
            Compliance::NotCompliant {
                reason: PENDING_TIMEOUT
            }
        );
        // ...a reported fail replaces its reason...
        let mut reported = facts(ControlStatus::Fail, &conditions);
        reported.reported = true;
        let (fresh, _) = Compliance::assess(&reported, at(2));
        assert_eq!(
            fresh,
            Compliance::NotCompliant {
                reason: CHECK_FAILED
            }
        );
        // ...a pass replaces it, and Stalled goes.
        let passed = stored(ControlStatus::Pass, &conditions, at(3));
        assert_eq!(find(&passed, COMPLIANT).unwrap().reason, CHECK_PASSED);
        assert!(find(&passed, STALLED).is_none());
    }

    #[test]
    fn other_conditions_are_kept_as_they_are() {
        let ready = Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Ready".into(),
            message: "m".into(),
            observed_generation: Some(1),
            last_transition_time: Time(at(-5)),
        };
        let conditions = stored(ControlStatus::Pass, std::slice::from_ref(&ready), at(1));
        assert_eq!(conditions[0], ready);
        assert_eq!(conditions.len(), 2);
    }

    #[test]
    fn the_default_staleness_is_an_interval_and_the_timeout() {
        let spec = |gate: serde_json::Value| -> crate::crd::ExternalControlSpec {
            let mut spec = serde_json::json!({
                "projectId": 1, "controlId": 1, "secretRef": {"name": "s"},
                "pingInterval": "12h", "pendingTimeout": "30m",
            });
            spec["gate"] = gate;
            serde_json::from_value(spec).unwrap()
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(
            spec(serde_json::Value::Null).max_staleness(),
            Some(12 * hour + hour / 2)
        );
        let given = spec(serde_json::json!({"maxStaleness": "2h"}));
        assert_eq!(given.max_staleness(), Some(2 * hour));
    }

    fn terms(outcomes: &[WaivedOutcome]) -> AppliedWaiver {
        AppliedWaiver {
            name: "accepted-risk".into(),
            reason: "no fix upstream yet".into(),
            expires: Time(at(50)),
            ticket: None,
            outcomes: outcomes.to_vec(),
            granted_by: "alice".into(),
            waiving: None,
            ended: None,
        }
    }

    #[test]
    fn a_waiver_opens_a_covered_fail_until_it_expires_keeping_the_status() {
        let waiver = terms(&[WaivedOutcome::Fail]);
        let mut failing = facts(ControlStatus::Fail, &[]);
        failing.waiver = Some(&waiver);
        let (gate, wake) = Compliance::assess(&failing, at(10));
        assert_eq!(gate.waiving(), Some(WaivedOutcome::Fail));
        assert_eq!(wake, Some(at(50)), "woken at the expiry");
        let conditions = gate.conditions(ControlStatus::Fail, &[], Some(1), at(10));
        let compliant = find(&conditions, COMPLIANT).unwrap();
        assert_eq!(
            (compliant.status.as_str(), compliant.reason.as_str()),
            ("True", WAIVED)
        );
        for part in [
            "accepted-risk",
            "no fix upstream yet",
            &at(50).to_string(),
            "reported fail",
        ] {
            assert!(
                compliant.message.contains(part),
                "{part}: {}",
                compliant.message
            );
        }
        // kstatus reads it as Current: neither Stalled nor Reconciling.
        assert!(find(&conditions, STALLED).is_none() && find(&conditions, RECONCILING).is_none());

        // At the expiry the fail shuts the gate again.
        let (gate, wake) = Compliance::assess(&failing, at(50));
        assert_eq!(
            gate,
            Compliance::NotCompliant {
                reason: CHECK_FAILED
            }
        );
        assert_eq!(wake, None);
    }

    #[test]
    fn a_waived_fail_is_kept_through_a_re_check_and_a_pass_is_a_pass() {
        let mut waiver = terms(&[WaivedOutcome::Fail]);
        let mut failing = facts(ControlStatus::Fail, &[]);
        failing.waiver = Some(&waiver);
        let (gate, _) = Compliance::assess(&failing, at(10));
        let waived = gate.conditions(ControlStatus::Fail, &[], None, at(10));
        waiver.waiving = gate.waiving();

        let mut pending = facts(ControlStatus::Pending, &waived);
        pending.waiver = Some(&waiver);
        pending.waived_before = waiver.waiving;
        let (kept, wake) = Compliance::assess(&pending, at(20));
        assert_eq!(kept.waiving(), Some(WaivedOutcome::Fail));
        assert_eq!(wake, Some(at(50)), "the expiry comes before the staleness");
        let conditions = kept.conditions(ControlStatus::Pending, &waived, None, at(20));
        let compliant = find(&conditions, COMPLIANT).unwrap();
        assert!(
            compliant
                .message
                .ends_with("kept while a re-check is pending")
        );
        assert_eq!(compliant.last_transition_time, Time(at(10)), "unmoved");
        // Without the waiver any more, the kept fail is a fail.
        pending.waiver = None;
        let (unwaived, _) = Compliance::assess(&pending, at(20));
        assert_eq!(
            unwaived,
            Compliance::NotCompliant {
                reason: CHECK_FAILED
            }
        );

        let mut passing = facts(ControlStatus::Pass, &waived);
        passing.waiver = Some(&waiver);
        passing.waived_before = waiver.waiving;
        let (gate, _) = Compliance::assess(&passing, at(30));
        assert_eq!(
            gate,
            Compliance::Compliant {
                reason: CHECK_PASSED
            }
        );
    }

    #[test]
    fn a_pending_timeout_is_waived_only_when_asked_and_keeps_its_reason() {
        let mut timed_out = facts(ControlStatus::Fail, &[]);
        timed_out.timed_out = true;
        let fail_only = terms(&[WaivedOutcome::Fail]);
        timed_out.waiver = Some(&fail_only);
        let (gate, _) = Compliance::assess(&timed_out, at(1));
        assert_eq!(
            gate,
            Compliance::NotCompliant {
                reason: PENDING_TIMEOUT
            }
        );

        let both = terms(&[WaivedOutcome::Fail, WaivedOutcome::PendingTimeout]);
        timed_out.waiver = Some(&both);
        let (gate, _) = Compliance::assess(&timed_out, at(1));
        assert_eq!(gate.waiving(), Some(WaivedOutcome::PendingTimeout));
        let waived = gate.conditions(ControlStatus::Fail, &[], None, at(1));
        // A later reconcile of the same fail: still the timeout's, still waived; once the
        // waiver goes, the timeout's reason is back.
        let mut later = facts(ControlStatus::Fail, &waived);
        later.waived_before = Some(WaivedOutcome::PendingTimeout);
        let (unwaived, _) = Compliance::assess(&later, at(2));
        assert_eq!(
            unwaived,
            Compliance::NotCompliant {
                reason: PENDING_TIMEOUT
            }
        );
        later.waiver = Some(&fail_only);
        let (still, _) = Compliance::assess(&later, at(2));
        assert_eq!(
            still,
            Compliance::NotCompliant {
                reason: PENDING_TIMEOUT
            }
        );
    }

    /// What extctl writes when its Secret is fine and no waiver covers it (the conditions
    /// nearly every control holds), read back from JSON: every string shared.
    #[test]
    fn every_condition_of_a_ready_unwaived_control_is_shared_when_read_back() {
        use crate::readiness::Readiness;

        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let statuses = [
            ControlStatus::Pending,
            ControlStatus::Pass,
            ControlStatus::Fail,
            ControlStatus::NotApplicable,
        ];
        let mut seen = 0;
        for before in statuses {
            for timed_out in [false, true] {
                // The conditions stored after `before`, then after each status from there.
                let facts = |status, previous: &'static [Condition], last_result| GateFacts {
                    status,
                    last_result_time: last_result,
                    max_staleness: Duration::from_secs(3600),
                    previous,
                    timed_out,
                    reported: !timed_out,
                    waiver: None,
                    waived_before: None,
                };
                let stored = |facts: &GateFacts, at: Timestamp| {
                    let (gate, _) = Compliance::assess(facts, at);
                    let mut conditions = gate.conditions(facts.status, facts.previous, Some(1), at);
                    conditions.push(Readiness::Ready.condition(Some(1), &[], at));
                    conditions
                };
                let first: &'static [Condition] =
                    stored(&facts(before, &[], Some(now)), now).leak();
                for after in statuses {
                    for last_result in [Some(now), None] {
                        let later = now + jiff::SignedDuration::from_secs(60);
                        for written in stored(&facts(after, first, last_result), later) {
                            let json = serde_json::to_string(&written).unwrap();
                            let read: Condition = serde_json::from_str(&json).unwrap();
                            for text in [&read.type_, &read.status, &read.reason, &read.message] {
                                assert!(text.is_shared(), "{text:?} of {json}");
                            }
                            seen += 1;
                        }
                    }
                }
            }
        }
        assert!(seen > 100, "{seen} conditions looked at");
    }
}

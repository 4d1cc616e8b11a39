//! Ping schedule arithmetic: when a pinged control is next reset to `pending`.
//!
//! Derived only from persisted state (spec, status, creation time), never from in-memory timers,
//! so a restart or another replica taking over neither skips nor repeats a reset. Each control
//! runs on its own schedule, which spreads resets over time by construction.
//!
//! Controls created (or re-enabled) together, thousands by one `kubectl apply`, would share
//! their due times for ever, so the first reset is spread: it falls one interval after
//! creation plus an offset fixed per control (from its uid) of less than one interval, and
//! never more than [`MAX_FIRST_SPREAD`]: controls created in a burst then fall due as evenly
//! as controls created over a whole interval. Later resets keep that grid.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::crd::ControlStatus;

/// The persisted facts a schedule is derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingFacts {
    pub enabled: bool,
    pub interval: Duration,
    pub created: Timestamp,
    /// Whether the control has been reconciled before (its status has an observedGeneration).
    pub seen_before: bool,
    pub status: ControlStatus,
    pub last_update: Option<Timestamp>,
    pub next_ping: Option<Timestamp>,
    /// The interval `next_ping` was computed with.
    pub scheduled_interval: Option<Duration>,
    /// Where in the spread window this control's first reset falls: any number, fixed per
    /// control (a hash of its uid); 0 puts it exactly one interval after creation.
    pub spread_seed: u64,
}

/// The first reset is spread over at most this long after its interval.
pub const MAX_FIRST_SPREAD: Duration = Duration::from_secs(300);

/// What the reconciler should do about ping now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingPlan {
    /// Ping is disabled: no next reset.
    Off,
    /// Not due yet: keep `next` and wake up then.
    Wait { next: Timestamp },
    /// Due: reset to `pending`; the next reset is counted from the due time, not from now.
    Reset { due: Timestamp, next: Timestamp },
    /// Due, but a checker's `pass`/`fail` arrived after the due time: it stands.
    KeepReport { due: Timestamp, next: Timestamp },
}

impl PingPlan {
    /// The next reset after this plan is carried out.
    pub fn next(&self) -> Option<Timestamp> {
        match *self {
            Self::Off => None,
            Self::Wait { next } | Self::Reset { next, .. } | Self::KeepReport { next, .. } => {
                Some(next)
            }
        }
    }
}

pub fn plan(facts: &PingFacts, now: Timestamp) -> PingPlan {
    let Some(next) = scheduled(facts, now).map(whole_microsecond) else {
        return PingPlan::Off;
    };
    if now < next {
        return PingPlan::Wait { next };
    }
    let due = next;
    let next = whole_microsecond(first_after(due, facts.interval, now));
    let reported_after_due = facts.status != ControlStatus::Pending
        && facts.last_update.is_some_and(|reported| reported >= due);
    if reported_after_due {
        PingPlan::KeepReport { due, next }
    } else {
        PingPlan::Reset { due, next }
    }
}

/// The due time of the next reset, before checking it against `now`.
fn scheduled(facts: &PingFacts, now: Timestamp) -> Option<Timestamp> {
    if !facts.enabled {
        return None;
    }
    let Some(next) = facts.next_ping else {
        // A new control counts from its creation; a re-enabled one from now.
        let from = if facts.seen_before {
            now
        } else {
            facts.created
        };
        let offset = first_offset(facts.interval, facts.spread_seed);
        return Some(add(add(from, facts.interval), offset));
    };
    match facts.scheduled_interval {
        // The interval changed: same anchor, new interval (and the new interval's spread).
        Some(old) if old != facts.interval => {
            let anchor = subtract(subtract(next, old), first_offset(old, facts.spread_seed));
            let offset = first_offset(facts.interval, facts.spread_seed);
            Some(add(add(anchor, facts.interval), offset))
        }
        _ => Some(next),
    }
}

/// How much later than one interval the first reset falls: less than one more interval (and
/// than [`MAX_FIRST_SPREAD`]), placed by `seed`.
pub fn first_offset(interval: Duration, seed: u64) -> Duration {
    const STEPS: u64 = 1 << 20;
    let window = interval.min(MAX_FIRST_SPREAD);
    window.mul_f64((seed % STEPS) as f64 / STEPS as f64)
}

/// The first `due + k * interval` (k ≥ 1) after `now`: after downtime, one reset, not a burst.
fn first_after(due: Timestamp, interval: Duration, now: Timestamp) -> Timestamp {
    let step = interval.as_nanos().max(1);
    let behind = u128::try_from(now.as_nanosecond() - due.as_nanosecond()).unwrap_or(0);
    let steps = behind / step + 1;
    let nanos = i128::try_from(steps.saturating_mul(step)).unwrap_or(i128::MAX);
    Timestamp::from_nanosecond(due.as_nanosecond().saturating_add(nanos)).unwrap_or(Timestamp::MAX)
}

/// `at` as a microsecond time field stores it (`MicroTime`): the nanoseconds dropped. The
/// reconciler works at this precision, so a ping's `time` is exactly the `lastPingTime` stored.
pub fn to_microsecond(at: Timestamp) -> Timestamp {
    Timestamp::from_microsecond(at.as_microsecond()).unwrap_or(at)
}

/// `nextPingTime` is stored with microseconds; scheduling on whole microseconds (rounding up, so
/// a reset is never early) keeps the in-memory wake-up identical to the persisted value.
fn whole_microsecond(at: Timestamp) -> Timestamp {
    let nanos = at.as_nanosecond();
    let rounded = nanos.div_euclid(1000) * 1000 + if nanos.rem_euclid(1000) > 0 { 1000 } else { 0 };
    Timestamp::from_nanosecond(rounded).unwrap_or(at)
}

fn add(at: Timestamp, interval: Duration) -> Timestamp {
    SignedDuration::try_from(interval)
        .ok()
        .and_then(|d| at.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

fn subtract(at: Timestamp, interval: Duration) -> Timestamp {
    SignedDuration::try_from(interval)
        .ok()
        .and_then(|d| at.checked_sub(d).ok())
        .unwrap_or(Timestamp::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn facts() -> PingFacts {
        PingFacts {
            enabled: true,
            interval: HOUR,
            created: t(0),
            seen_before: true,
            status: ControlStatus::Pass,
            last_update: Some(t(100)),
            next_ping: Some(t(3600)),
            scheduled_interval: Some(HOUR),
            spread_seed: 0,
        }
    }

    #[test]
    fn first_resets_are_spread_within_an_interval_and_five_minutes() {
        let new = |seed| PingFacts {
            seen_before: false,
            next_ping: None,
            scheduled_interval: None,
            spread_seed: seed,
            ..facts()
        };
        let mut offsets = Vec::new();
        for seed in [1_u64, 77, 123_456_789, u64::MAX, 0x5eed_0000_0000_0001] {
            let PingPlan::Wait { next } = plan(&new(seed), t(10)) else {
                panic!("a new control waits");
            };
            let offset = next.duration_since(t(3600));
            assert!(offset >= SignedDuration::ZERO, "never before one interval");
            assert!(offset < SignedDuration::from_secs(300), "{offset:?}");
            assert_eq!(
                plan(&new(seed), t(20)),
                PingPlan::Wait { next },
                "fixed per control"
            );
            offsets.push(offset);
        }
        offsets.dedup();
        assert!(offsets.len() > 3, "seeds spread: {offsets:?}");
        // An interval change keeps the anchor (creation) and takes the new interval's offset.
        let seed = 123_456_789;
        let first = add(t(3600), first_offset(HOUR, seed));
        let changed = PingFacts {
            interval: Duration::from_secs(60),
            next_ping: Some(first),
            spread_seed: seed,
            ..facts()
        };
        let expected = add(t(60), first_offset(Duration::from_secs(60), seed));
        assert_eq!(
            plan(&changed, t(10)).next(),
            Some(whole_microsecond(expected))
        );
        // Short intervals: less than one more interval.
        let seconds = Duration::from_secs(8);
        assert!(first_offset(seconds, u64::MAX) < seconds);
        assert_eq!(first_offset(seconds, 0), Duration::ZERO);
        assert!(first_offset(12 * HOUR, u64::MAX) < MAX_FIRST_SPREAD);
    }

    #[test]
    fn waits_until_the_persisted_due_time() {
        assert_eq!(plan(&facts(), t(3599)), PingPlan::Wait { next: t(3600) });
    }

    #[test]
    fn resets_when_due_and_counts_the_next_from_the_due_time() {
        let expected = PingPlan::Reset {
            due: t(3600),
            next: t(7200),
        };
        assert_eq!(plan(&facts(), t(3600)), expected);
        // Late by a second: the schedule does not drift by the lateness.
        let late = PingPlan::Reset {
            due: t(3600),
            next: t(7200),
        };
        assert_eq!(plan(&facts(), t(3601)), late);
    }

    #[test]
    fn after_downtime_one_reset_then_back_on_the_grid() {
        let plan = plan(&facts(), t(3600 * 5 + 10));
        assert_eq!(
            plan,
            PingPlan::Reset {
                due: t(3600),
                next: t(3600 * 6)
            }
        );
    }

    #[test]
    fn a_report_after_the_due_time_stands() {
        let reported_late = PingFacts {
            last_update: Some(t(3600)),
            ..facts()
        };
        let expected = PingPlan::KeepReport {
            due: t(3600),
            next: t(7200),
        };
        assert_eq!(plan(&reported_late, t(3601)), expected);
        let failed_late = PingFacts {
            status: ControlStatus::Fail,
            last_update: Some(t(3700)),
            ..facts()
        };
        assert!(matches!(
            plan(&failed_late, t(3701)),
            PingPlan::KeepReport { .. }
        ));
        // A pending status is reset (re-notified) even if it was written after the due time.
        let pending = PingFacts {
            status: ControlStatus::Pending,
            last_update: Some(t(3700)),
            ..facts()
        };
        assert!(matches!(plan(&pending, t(3701)), PingPlan::Reset { .. }));
    }

    #[test]
    fn times_are_kept_to_the_microsecond_as_stored() {
        let at = t(0)
            .checked_add(SignedDuration::from_nanos(123_456_789))
            .unwrap();
        let expected = t(0)
            .checked_add(SignedDuration::from_micros(123_456))
            .unwrap();
        assert_eq!(to_microsecond(at), expected);
        assert_eq!(to_microsecond(expected), expected);
    }

    #[test]
    fn schedules_on_whole_microseconds_as_they_are_stored() {
        let created = t(0)
            .checked_add(SignedDuration::from_nanos(300_000_001))
            .unwrap();
        let new = PingFacts {
            created,
            seen_before: false,
            next_ping: None,
            scheduled_interval: None,
            ..facts()
        };
        let next = t(3600)
            .checked_add(SignedDuration::from_micros(300_001))
            .unwrap();
        assert_eq!(plan(&new, t(10)), PingPlan::Wait { next });
    }

    #[test]
    fn a_new_control_counts_from_its_creation() {
        let new = PingFacts {
            seen_before: false,
            next_ping: None,
            scheduled_interval: None,
            ..facts()
        };
        assert_eq!(plan(&new, t(10)), PingPlan::Wait { next: t(3600) });
    }

    #[test]
    fn disabled_ping_never_resets_and_re_enabling_counts_from_then() {
        let off = PingFacts {
            enabled: false,
            ..facts()
        };
        assert_eq!(plan(&off, t(99_999)), PingPlan::Off);
        assert_eq!(PingPlan::Off.next(), None);
        let re_enabled = PingFacts {
            next_ping: None,
            ..facts()
        };
        assert_eq!(
            plan(&re_enabled, t(50_000)),
            PingPlan::Wait { next: t(53_600) }
        );
    }

    #[test]
    fn an_interval_change_reschedules_from_the_same_anchor() {
        let shorter = PingFacts {
            interval: Duration::from_secs(60),
            last_update: Some(t(30)),
            ..facts()
        };

        // Anchor t(0) (= 3600 - 1h); with 60 s the reset was due at t(60): due now.
        assert_eq!(
            plan(&shorter, t(200)),
            PingPlan::Reset {
                due: t(60),
                next: t(240)
            }
        );
        let longer = PingFacts {
            interval: 2 * HOUR,
            ..facts()
        };
        assert_eq!(plan(&longer, t(200)), PingPlan::Wait { next: t(7200) });
    }
}

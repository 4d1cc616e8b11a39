//! Properties of the pure core over generated inputs (proptest, in the normal test run):
//! no signature made without the right token verifies, a nonce is never accepted twice while
//! it is remembered (by the status every replica shares and by `extctl dev`'s set alike), concurrent accepted calls in any interleaving are all stored with the last
//! one's status, and the schedule never moves a reset backwards.

use std::time::Duration;

use extctl_core::crd::{ControlStatus, ExternalControlStatus};
use extctl_core::nonces::NonceSet;
use extctl_core::protocol::Rejection;
use extctl_core::report::{self, Report};
use extctl_core::schedule::{PingFacts, PingPlan, plan};
use extctl_core::signature::{sign, signed_string, status_path, verify};
use jiff::Timestamp;
use proptest::prelude::*;

/// A call's signed fields, as a checker would fill them.
fn call() -> impl Strategy<Value = (String, String, u32, u32, bool)> {
    (
        "[0-9]{1,12}",
        "[ -~]{32}",
        1_u32..100_000,
        1_u32..100_000,
        any::<bool>(),
    )
}

fn message(
    (timestamp, nonce, project, control, pass): &(String, String, u32, u32, bool),
) -> String {
    let path = status_path(&project.to_string(), &control.to_string());
    signed_string(timestamp, nonce, &path, if *pass { "pass" } else { "fail" })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn only_the_right_token_over_the_same_fields_verifies(
        token in proptest::collection::vec(any::<u8>(), 1..64),
        other in proptest::collection::vec(any::<u8>(), 1..64),
        signed in call(),
        sent in call(),
    ) {
        let signature = sign(&token, message(&signed).as_bytes());
        prop_assert!(verify(&token, message(&signed).as_bytes(), &signature));
        if other != token {
            prop_assert!(!verify(&other, message(&signed).as_bytes(), &signature));
        }
        if message(&sent) != message(&signed) {
            prop_assert!(!verify(&token, message(&sent).as_bytes(), &signature));
        }
    }

    #[test]
    fn any_string_as_a_signature_is_refused_unless_it_is_the_one(
        token in proptest::collection::vec(any::<u8>(), 1..64),
        signed in call(),
        forged in "\\PC{0,80}",
    ) {
        let right = sign(&token, message(&signed).as_bytes());
        prop_assume!(forged != right);
        prop_assert!(!verify(&token, message(&signed).as_bytes(), &forged));
    }

    #[test]
    fn a_nonce_is_refused_while_remembered_and_a_new_one_never_is(
        calls in proptest::collection::vec((0_u8..20, 0_i64..40), 1..200),
    ) {
        // (nonce, second): seconds sorted, as a clock moves; each nonce kept for 15 s.
        let mut calls = calls;
        calls.sort_by_key(|(_, second)| *second);
        let mut set = NonceSet::default();
        let mut accepted: Vec<(u8, i64)> = Vec::new();
        for (nonce, second) in calls {
            let now = at(second);
            let remembered = accepted
                .iter()
                .any(|(seen, when)| *seen == nonce && when + 15 > second);
            let answer = set.admit(&format!("{nonce:032}"), at(second + 15), now);
            if remembered {
                prop_assert_eq!(answer, Err(Rejection::InvalidNonce));
            } else {
                prop_assert_eq!(answer, Ok(()));
                accepted.push((nonce, second));
            }
        }
    }

    /// The same rule through both replay checks: the status's `recentNonces` that every replica
    /// shares (`report::apply`, what `extctl run` stores) and `extctl dev`'s set, with nonces of
    /// any length the protocol admits (32 bytes are kept as they are, others by their SHA-256).
    #[test]
    fn both_replay_checks_refuse_a_nonce_while_remembered_whatever_its_length(
        pool in proptest::collection::vec("[!-~]{16,64}", 1..20),
        calls in proptest::collection::vec((0_usize..20, 0_i64..40), 1..120),
    ) {
        let mut calls = calls;
        calls.sort_by_key(|(_, second)| *second);
        let mut set = NonceSet::default();
        let mut status: Option<ExternalControlStatus> = None;
        let mut accepted: Vec<(&str, i64)> = Vec::new();
        for (index, second) in calls {
            let nonce = pool[index % pool.len()].as_str();
            let remembered = accepted
                .iter()
                .any(|(seen, when)| *seen == nonce && when + 15 > second);
            let report = Report {
                status: if second % 2 == 0 { ControlStatus::Pass } else { ControlStatus::Fail },
                nonce: nonce.to_owned(),
                nonce_expires_at: at(second + 15),
                received_at: at(second),
            };
            let stored = report::apply(status.as_ref(), &report);
            let admitted = set.admit(nonce, at(second + 15), at(second));
            if remembered {
                prop_assert_eq!(stored.unwrap_err(), Rejection::InvalidNonce);
                prop_assert_eq!(admitted, Err(Rejection::InvalidNonce));
            } else {
                let update = stored.unwrap();
                prop_assert_eq!(admitted, Ok(()));
                let mut next = status.unwrap_or_default();
                update.apply_to(&mut next, Some(1));
                status = Some(next);
                accepted.push((nonce, second));
            }
        }
    }

    #[test]
    fn concurrent_calls_in_any_interleaving_are_all_stored_and_the_last_one_wins(
        statuses in proptest::collection::vec(any::<bool>(), 1..8),
        turns in proptest::collection::vec(0_usize..8, 0..64),
    ) {
        // Each call is a writer as the registry runs it: read the status and its version,
        // compute the update with `report::apply`, write it only if the version is unchanged
        // (the API server's precondition), else read again. `turns` interleaves the steps.
        let reports: Vec<Report> = statuses
            .iter()
            .enumerate()
            .map(|(i, pass)| Report {
                status: if *pass { ControlStatus::Pass } else { ControlStatus::Fail },
                nonce: format!("{i:032}"),
                nonce_expires_at: at(15),
                received_at: at(0),
            })
            .collect();
        let mut stored = (ExternalControlStatus::default(), 0_u64);
        let mut read: Vec<Option<(ExternalControlStatus, u64)>> = vec![None; reports.len()];
        let mut done = vec![false; reports.len()];
        let mut order = Vec::new();
        // Then round robin: each round, at least the first writer to find the version
        // unchanged succeeds, so every call is stored within 2n rounds.
        let n = reports.len();
        let schedule = turns.into_iter().chain((0..n).cycle().take(2 * n * n + 2 * n));
        for turn in schedule.map(|t| t % reports.len()) {
            if done[turn] {
                continue;
            }
            match read[turn].take() {
                None => read[turn] = Some(stored.clone()),
                Some((snapshot, version)) if version == stored.1 => {
                    let update = report::apply(Some(&snapshot), &reports[turn]);
                    prop_assert!(update.is_ok(), "an unreplayed nonce was refused");
                    let mut status = snapshot;
                    update.unwrap().apply_to(&mut status, Some(1));
                    stored = (status, version + 1);
                    done[turn] = true;
                    order.push(turn);
                }
                Some(_) => read[turn] = Some(stored.clone()),
            }
        }
        prop_assert!(done.iter().all(|d| *d), "every call is eventually stored");
        let last = *order.last().unwrap();
        prop_assert_eq!(stored.0.status, Some(reports[last].status));
        for call in &reports {
            prop_assert!(
                stored.0.recent_nonces.iter().any(|seen| seen.nonce == call.nonce),
                "the nonce of an accepted call was lost"
            );
            prop_assert_eq!(
                report::apply(Some(&stored.0), call).unwrap_err(),
                Rejection::InvalidNonce
            );
        }
    }

    #[test]
    fn the_schedule_never_moves_a_reset_backwards(
        interval in 1_u64..100_000,
        created in 0_i64..1_000_000,
        next in proptest::option::of(0_i64..2_000_000),
        scheduled in proptest::option::of(1_u64..100_000),
        last_update in proptest::option::of(0_i64..2_000_000),
        seen_before in any::<bool>(),
        pending in any::<bool>(),
        seed in any::<u64>(),
        now in 0_i64..3_000_000,
    ) {
        let facts = PingFacts {
            enabled: true,
            interval: Duration::from_secs(interval),
            created: at(created),
            seen_before,
            status: if pending { ControlStatus::Pending } else { ControlStatus::Pass },
            last_update: last_update.map(at),
            next_ping: next.map(at),
            scheduled_interval: scheduled.map(Duration::from_secs),
            spread_seed: seed,
        };
        let now = at(now);
        let decided = plan(&facts, now);
        // Whatever is decided, the next reset lies ahead of now...
        prop_assert!(decided.next().is_some_and(|next| next > now), "{decided:?}");
        // ...and one carried out (or skipped) was due, and is followed by a later one.
        if let PingPlan::Reset { due, next } | PingPlan::KeepReport { due, next } = decided {
            prop_assert!(due <= now && next > due, "{decided:?}");
        }
        let unchanged_interval = scheduled.is_none_or(|old| old == interval);
        if let (Some(stored), true) = (facts.next_ping, unchanged_interval) {
            // A stored due time is never brought forward...
            prop_assert!(decided.next().is_some_and(|next| next >= stored), "{decided:?}");
            if let PingPlan::Reset { due, next } | PingPlan::KeepReport { due, next } = decided {
                // ...the reset carried out is the stored one, and the next stays on its grid.
                prop_assert_eq!(due, stored);
                let step = i128::from(interval) * 1_000_000_000;
                prop_assert_eq!((next.as_nanosecond() - due.as_nanosecond()) % step, 0);
            }
        }
        // Once the plan's next due time is stored, planning again at the same instant waits
        // for it: a reset is never carried out twice.
        if let Some(next) = decided.next() {
            let stored = PingFacts {
                next_ping: Some(next),
                scheduled_interval: Some(facts.interval),
                seen_before: true,
                ..facts
            };
            prop_assert_eq!(plan(&stored, now), PingPlan::Wait { next });
        }
    }
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + second).unwrap()
}

//! Leader election arithmetic, after client-go's `leaderelection`: only one replica reconciles,
//! and a leader that cannot renew steps down before anyone else may take over.
//!
//! Expiry is judged by how long the Lease has been seen *unchanged* on this replica's own
//! clock (not by comparing `renewTime` with this clock), so clock skew between nodes cannot
//! make a live leader look expired.

use std::time::Duration;

/// The election's timing, derived from the lease duration as client-go's defaults are
/// (15s / 10s / 2s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease not renewed stays held.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops reconciling. Shorter than the lease
    /// duration, so it has stopped before another replica may take the Lease.
    pub renew_deadline: Duration,
    /// How often the Lease is renewed (by the leader) or tried (by the others).
    pub retry_period: Duration,
}

impl Timing {
    pub fn new(lease_duration: Duration) -> Self {
        Self {
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
        }
    }
}

/// Whether `identity` may write itself into a Lease held by `holder` (renewing or taking it
/// over), given how long the Lease has been seen unchanged and the duration it declares.
pub fn may_hold(
    holder: Option<&str>,
    identity: &str,
    unchanged_for: Duration,
    declared_duration: Duration,
) -> bool {
    match holder {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => unchanged_for >= declared_duration,
    }
}

/// Whether a leader whose last successful renewal was `since_renewal` ago still leads.
pub fn still_leading(since_renewal: Duration, timing: &Timing) -> bool {
    since_renewal < timing.renew_deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn timing_follows_client_go_defaults() {
        let timing = Timing::new(15 * S);
        assert_eq!(
            (timing.renew_deadline, timing.retry_period),
            (10 * S, 2 * S)
        );
    }

    #[test]
    fn a_free_or_own_lease_may_be_held_at_once() {
        assert!(may_hold(None, "a", Duration::ZERO, 15 * S));
        assert!(may_hold(Some(""), "a", Duration::ZERO, 15 * S));
        assert!(may_hold(Some("a"), "a", Duration::ZERO, 15 * S));
    }

    #[test]
    fn anothers_lease_only_once_it_stood_still_its_whole_duration() {
        assert!(!may_hold(Some("b"), "a", 14 * S, 15 * S));
        assert!(may_hold(Some("b"), "a", 15 * S, 15 * S));
    }

    #[test]
    fn a_leader_steps_down_before_anyone_may_take_over() {
        let timing = Timing::new(15 * S);
        assert!(still_leading(9 * S, &timing));
        assert!(!still_leading(10 * S, &timing));
        // The others wait the full duration from the last renewal they saw.
        assert!(timing.renew_deadline < timing.lease_duration);
    }
}

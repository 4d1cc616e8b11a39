//! The timestamp window: how old (or how far in the future) a signed call may be.
//!
//! GitLab accepts a timestamp 0 to 14 seconds old: 15 s or older is expired, 0 or any future
//! time is invalid. That is the default here; both bounds are configurable.

use std::time::Duration;

use jiff::Timestamp;

use super::protocol::Rejection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampWindow {
    /// A call this old or older is expired (GitLab: 15 s).
    pub max_age: Duration,
    /// How far ahead of this clock a timestamp may be (GitLab: none).
    pub max_future_skew: Duration,
}

impl Default for TimestampWindow {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(15),
            max_future_skew: Duration::ZERO,
        }
    }
}

impl TimestampWindow {
    /// Checks the `X-Gitlab-Timestamp` value against `now`; returns the signing time.
    pub fn check(&self, timestamp: &str, now: Timestamp) -> Result<Timestamp, Rejection> {
        let seconds = parse_unix_seconds(timestamp).ok_or(Rejection::InvalidTimestamp)?;
        let now = now.as_second();
        if seconds == 0 || seconds > now.saturating_add(secs(self.max_future_skew)) {
            return Err(Rejection::InvalidTimestamp);
        }
        if now.saturating_sub(seconds) >= secs(self.max_age) {
            return Err(Rejection::Expired);
        }
        Timestamp::from_second(seconds).map_err(|_| Rejection::InvalidTimestamp)
    }

    /// Until when a nonce signed at `signed_at` must be remembered: after that, the same call is
    /// refused as expired anyway.
    pub fn nonce_expiry(&self, signed_at: Timestamp) -> Timestamp {
        signed_at
            .checked_add(self.max_age)
            .unwrap_or(Timestamp::MAX)
    }
}

/// Decimal Unix seconds, digits only (no sign, no spaces, no fraction).
fn parse_unix_seconds(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_100;

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    fn check(window: TimestampWindow, seconds_ago: i64) -> Result<Timestamp, Rejection> {
        window.check(&(NOW - seconds_ago).to_string(), now())
    }

    #[test]
    fn gitlab_window_accepts_0_to_14_seconds_old() {
        for age in 0..=14 {
            assert!(check(TimestampWindow::default(), age).is_ok(), "age {age}");
        }
    }

    #[test]
    fn gitlab_window_expires_at_15_seconds() {
        for age in [15, 16, 3600] {
            assert_eq!(
                check(TimestampWindow::default(), age),
                Err(Rejection::Expired),
                "age {age}"
            );
        }
    }

    #[test]
    fn zero_future_and_malformed_timestamps_are_invalid() {
        let window = TimestampWindow::default();
        assert_eq!(check(window, -1), Err(Rejection::InvalidTimestamp));
        for bad in [
            "0",
            "",
            "-5",
            "+5",
            " 1700000100",
            "1700000100.5",
            "abc",
            "1e9",
        ] {
            assert_eq!(
                window.check(bad, now()),
                Err(Rejection::InvalidTimestamp),
                "{bad:?}"
            );
        }
        assert_eq!(
            window.check("99999999999999999999999", now()),
            Err(Rejection::InvalidTimestamp)
        );
    }

    #[test]
    fn window_is_configurable() {
        let window = TimestampWindow {
            max_age: Duration::from_secs(60),
            max_future_skew: Duration::from_secs(5),
        };
        assert!(check(window, 59).is_ok());
        assert_eq!(check(window, 60), Err(Rejection::Expired));
        assert!(check(window, -5).is_ok());
        assert_eq!(check(window, -6), Err(Rejection::InvalidTimestamp));
    }

    #[test]
    fn nonces_are_remembered_for_as_long_as_the_call_is_fresh() {
        let window = TimestampWindow::default();
        let signed_at = Timestamp::from_second(NOW).unwrap();
        assert_eq!(window.nonce_expiry(signed_at).as_second(), NOW + 15);
    }
}

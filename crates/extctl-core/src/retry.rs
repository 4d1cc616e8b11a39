//! When an outbound call (a ping, a notification) is tried again, and after how long.
//!
//! A network failure or a 5xx answer may pass: it is retried, with exponential backoff and
//! full jitter (a random delay up to the exponential bound, so that many controls reset in the
//! same instant do not retry in step). A 4xx answer will not change by itself (a wrong
//! signature, a missing route) and a refusal by the destination rules never will: neither is
//! retried. A redirect is an answer, never followed.

use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// The bound of the first retry's delay; each further retry doubles it.
    pub base: Duration,
    /// No delay exceeds this.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 3,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The destination answered with this HTTP status.
    Answered(u16),
    /// No answer: connection refused or reset, a timeout, a TLS failure.
    NetworkError,
    /// The destination rules refused every address (nothing was sent).
    Refused,
}

impl Attempt {
    /// Whether trying again could end differently.
    pub fn retryable(self) -> bool {
        match self {
            Self::Answered(code) => (500..600).contains(&code),
            Self::NetworkError => true,
            Self::Refused => false,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 for the first), or `None` when the attempts
    /// are used up. `unit` is a random number in `[0, 1)`: the delay is that fraction of
    /// `min(cap, base * 2^(retry-1))`.
    pub fn delay(&self, retry: u32, unit: f64) -> Option<Duration> {
        if retry == 0 || retry > self.retries {
            return None;
        }
        let exponent = (retry - 1).min(31);
        let bound = self
            .base
            .checked_mul(1 << exponent)
            .unwrap_or(self.cap)
            .min(self.cap);
        Some(bound.mul_f64(unit.clamp(0.0, 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_errors_and_5xx_are_retried() {
        assert!(Attempt::NetworkError.retryable());
        for code in [500, 502, 503, 504, 599] {
            assert!(Attempt::Answered(code).retryable(), "{code}");
        }
        for code in [200, 204, 301, 302, 400, 401, 404, 409, 429, 499] {
            assert!(!Attempt::Answered(code).retryable(), "{code}");
        }
        assert!(!Attempt::Refused.retryable());
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap_with_full_jitter() {
        let policy = RetryPolicy {
            retries: 8,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(4),
        };
        let upper: Vec<_> = (1..=8)
            .map(|retry| policy.delay(retry, 1.0).unwrap().as_millis())
            .collect();
        assert_eq!(upper, [500, 1000, 2000, 4000, 4000, 4000, 4000, 4000]);
        assert_eq!(policy.delay(3, 0.25), Some(Duration::from_millis(500)));
        assert_eq!(policy.delay(1, 0.0), Some(Duration::ZERO));
        assert_eq!(policy.delay(9, 0.5), None, "attempts used up");
        assert_eq!(policy.delay(0, 0.5), None, "retries count from 1");
    }

    #[test]
    fn no_retry_count_overflows() {
        let policy = RetryPolicy {
            retries: u32::MAX,
            base: Duration::from_secs(u64::MAX / 2),
            cap: Duration::from_secs(60),
        };
        assert_eq!(policy.delay(40, 1.0), Some(Duration::from_secs(60)));
        assert_eq!(
            RetryPolicy {
                retries: 0,
                ..policy
            }
            .delay(1, 1.0),
            None
        );
    }
}

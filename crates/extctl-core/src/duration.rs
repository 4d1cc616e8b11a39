//! Durations as written in `ExternalControl` manifests: `90s`, `30m`, `12h`, `1h30m`.
//!
//! The grammar is deliberately the subset of Go's `time.ParseDuration` that the CRD schema's
//! pattern admits ([`PATTERN`]), so what the API server accepts, the CEL rule `duration(self)`
//! evaluates and what extctl parses can never disagree.

use std::fmt;
use std::time::Duration;

/// The schema pattern for duration strings: one or more `<digits><unit>` with unit `h`, `m` or `s`.
pub const PATTERN: &str = "^([0-9]+(h|m|s))+$";

/// Longest duration string accepted by the schema (keeps CEL cost estimates bounded).
pub const MAX_LENGTH: u32 = 32;

/// The longest duration Go's `time.Duration` (what the API server's CEL `duration()` reads)
/// can hold, in whole seconds: 2562047h47m16s. Longer ones fail the CRD's rule there.
pub const MAX_SECONDS: u64 = (i64::MAX / 1_000_000_000) as u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration {0:?} is empty")]
    Empty(String),
    #[error("duration {0:?} must be numbers with units h, m or s, such as 90s, 30m, 12h or 1h30m")]
    Syntax(String),
    #[error("duration {0:?} is too large: at most 2562047h47m16s")]
    Overflow(String),
    #[error("duration {0:?} must be at least 1s")]
    Zero(String),
}

/// [`parse`], refusing zero: for timeouts, intervals and waits, which must pass.
pub fn parse_positive(text: &str) -> Result<Duration, DurationError> {
    match parse(text)? {
        zero if zero.is_zero() => Err(DurationError::Zero(text.to_owned())),
        duration => Ok(duration),
    }
}

/// Parses `12h`, `30m`, `90s`, `1h30m` into a [`Duration`]: the text must match [`PATTERN`]
/// (checked first, so a malformed text is a syntax error however large its numbers), and the
/// sum must fit Go's `time.Duration` ([`MAX_SECONDS`]), as on the API server.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty(text.to_owned()));
    }
    let syntax = || DurationError::Syntax(text.to_owned());
    let overflow = || DurationError::Overflow(text.to_owned());
    let mut parts = Vec::new();
    let mut start = 0;
    for (at, c) in text.char_indices() {
        let unit_seconds = match c {
            '0'..='9' => continue,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(syntax()),
        };
        if at == start {
            return Err(syntax());
        }
        parts.push((&text[start..at], unit_seconds));
        start = at + 1;
    }
    if start != text.len() {
        return Err(syntax());
    }
    let mut total: u64 = 0;
    for (digits, unit_seconds) in parts {
        let amount: u64 = digits.parse().map_err(|_| overflow())?;
        total = amount
            .checked_mul(unit_seconds)
            .and_then(|seconds| total.checked_add(seconds))
            .filter(|total| *total <= MAX_SECONDS)
            .ok_or_else(overflow)?;
    }
    Ok(Duration::from_secs(total))
}

/// Formats a whole-second duration the way a person would write it: `12h`, `1h30m`, `90s` -> `1m30s`.
pub fn format(duration: Duration) -> String {
    Formatted(duration).to_string()
}

struct Formatted(Duration);

impl fmt::Display for Formatted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.as_secs();
        if seconds == 0 {
            return f.write_str("0s");
        }
        let (hours, minutes, secs) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
        for (amount, unit) in [(hours, 'h'), (minutes, 'm'), (secs, 's')] {
            if amount > 0 {
                write!(f, "{amount}{unit}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_durations_refuse_zero() {
        assert_eq!(parse_positive("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(
            parse_positive("0s").unwrap_err().to_string(),
            "duration \"0s\" must be at least 1s"
        );
        assert_eq!(
            parse_positive("0h0m"),
            Err(DurationError::Zero("0h0m".into()))
        );
        assert_eq!(parse_positive("x"), Err(DurationError::Syntax("x".into())));
    }

    #[test]
    fn parses_single_units() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn parses_compound_and_repeated_units_like_go() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1h30m15s"), Ok(Duration::from_secs(5415)));
        // Go's ParseDuration also sums repeated units; the schema pattern admits them too.
        assert_eq!(parse("1m1m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for bad in [
            "", "12", "h", "1d", "1.5h", "-1h", " 1h", "1h ", "1H", "1hm", "10ms",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn reports_overflow_beyond_gos_range_instead_of_wrapping() {
        let overflow = |text: &str| Err(DurationError::Overflow(text.into()));
        assert_eq!(
            parse("99999999999999999999h"),
            overflow("99999999999999999999h")
        );
        assert_eq!(parse("5124095576030432h"), overflow("5124095576030432h"));
        // Go's time.Duration ends at 2562047h47m16.854775807s: one second more fails there.
        assert_eq!(
            parse("2562047h47m16s"),
            Ok(Duration::from_secs(MAX_SECONDS))
        );
        assert_eq!(parse("2562047h47m17s"), overflow("2562047h47m17s"));
        assert_eq!(parse("2562048h"), overflow("2562048h"));
        // Found by fuzzing: a malformed text is a syntax error, however large its numbers.
        assert!(matches!(
            parse("9999999999999999hx"),
            Err(DurationError::Syntax(_))
        ));
    }

    #[test]
    fn error_messages_name_the_value_and_the_grammar() {
        let message = parse("1d").unwrap_err().to_string();
        assert!(message.contains("\"1d\""), "{message}");
        assert!(message.contains("90s, 30m, 12h"), "{message}");
    }

    #[test]
    fn formats_round_trip() {
        for text in ["12h", "30m", "90s", "1h30m", "1h0m1s", "0s"] {
            let parsed = parse(text).unwrap();
            assert_eq!(parse(&format(parsed)).unwrap(), parsed, "{text}");
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(43_200)), "12h");
        assert_eq!(format(Duration::from_secs(3601)), "1h1s");
    }
}

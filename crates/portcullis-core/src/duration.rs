//! The one duration syntax of configuration files and commands: a positive
//! whole number (ASCII digits, no sign, no spaces) and one unit, `ms`, `s`,
//! `m`, `h`, `d` or `w` (`250ms`, `30s`, `15m`, `2h`, `7d`, `2w`), at most
//! 100 years.

use std::time::Duration;

/// Longest accepted duration: 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Why a text is not a duration; the message names the text.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number and a unit.
    #[error("`{0}` is not a duration; use a number and a unit: 250ms, 30s, 15m, 2h, 7d, 2w")]
    Syntax(String),
    /// Zero.
    #[error("`{0}` is zero; the least is 1ms")]
    Zero(String),
    /// Longer than [`MAX_DURATION`].
    #[error("`{0}` is too long; the most is 100 years")]
    TooLong(String),
}

/// Parses `250ms`, `30s`, `15m`, `2h`, `7d` or `2w` (see the module docs).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(text.to_owned());
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(syntax)?;
    let (number, unit) = text.split_at(split);
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(syntax()),
    };
    if number.is_empty() {
        return Err(syntax());
    }
    let too_long = || DurationError::TooLong(text.to_owned());
    let count: u64 = number.parse().map_err(|_| too_long())?;
    let millis = count.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    let duration = Duration::from_millis(millis);
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    if duration.is_zero() {
        return Err(DurationError::Zero(text.to_owned()));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_and_one_unit() {
        for (text, want) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("15m", Duration::from_secs(900)),
            ("2h", Duration::from_secs(7200)),
            ("7d", Duration::from_secs(604_800)),
            ("30d", Duration::from_secs(30 * 86_400)),
            ("2w", Duration::from_secs(1_209_600)),
            ("5200w", Duration::from_secs(5200 * 604_800)),
            ("007s", Duration::from_secs(7)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for bad in [
            "", "s", "ms", "d", "15", "10", "1.5h", "-1m", "+1m", "1 m", " 15m", "15m ", "1y",
            "10y", "1é", "5mss", "1S", "1M",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Syntax(_))),
                "{bad:?}"
            );
        }
        for zero in ["0s", "0ms", "0w"] {
            assert!(matches!(parse_duration(zero), Err(DurationError::Zero(_))));
        }
        for long in ["5300w", "99999999999999999999d", "18446744073709551615ms"] {
            assert!(
                matches!(parse_duration(long), Err(DurationError::TooLong(_))),
                "{long}"
            );
        }
        assert_eq!(
            parse_duration("1y").unwrap_err().to_string(),
            "`1y` is not a duration; use a number and a unit: 250ms, 30s, 15m, 2h, 7d, 2w"
        );
    }
}

//! The `timeouts` block: Go-style durations (`90s`, `5m`, `1h30m`), parsed with checked
//! arithmetic and bounded, so no attribute value can overflow a `Duration` or an
//! `Instant` deadline.

use std::time::Duration;

use crate::codec::Value;
use crate::diag::{Diagnostic, PathStep};

/// Default wait for an `ImageSync` to become ready or go away.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The shortest timeout accepted.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest timeout accepted (a day).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The timeouts of the block.
pub const NAMES: [&str; 2] = ["create", "delete"];

/// Why a duration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not `<number><unit>...` with units `ms`, `s`, `m`, `h`.
    #[error("{0:?} is not a duration; write a number and a unit (ms, s, m, h), e.g. \"90s\", \"10m\" or \"1h30m\"")]
    Invalid(String),
    /// Outside [`MIN_TIMEOUT`, `MAX_TIMEOUT`] (including values too large to compute).
    #[error("{0:?} is out of range; a timeout must be between 1s and 24h")]
    OutOfRange(String),
}

/// Parses a Go-style duration of whole units (`ms`, `s`, `m`, `h`) with the engine's
/// shared parser ([`imagesync_engine::duration`]). Values above [`MAX_TIMEOUT`], or too
/// large to compute, are [`DurationError::OutOfRange`]; nothing overflows.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    use imagesync_engine::duration::{self, DurationError as Shared};
    let text = input.trim();
    // This attribute takes whole numbers and ms, s, m, h only (the shared parser also
    // accepts fractions, `ns` and `us`).
    let whole_units = text.ends_with(|c: char| c.is_ascii_alphabetic())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || b"msh".contains(&b));
    if !whole_units {
        return Err(DurationError::Invalid(input.to_string()));
    }
    let d = duration::parse_checked(text).map_err(|e| match e {
        Shared::Malformed => DurationError::Invalid(input.to_string()),
        Shared::Overflow => DurationError::OutOfRange(input.to_string()),
    })?;
    if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&d) {
        return Err(DurationError::OutOfRange(input.to_string()));
    }
    Ok(d)
}

/// The timeout `which` of a `timeouts` block value: the default when absent or unknown,
/// an error diagnostic on `timeouts.<which>` when invalid or out of range.
pub fn timeout(block: &Value, which: &str) -> Result<Duration, Diagnostic> {
    match block.get(which) {
        Value::String(s) => parse_duration(s).map_err(|e| {
            Diagnostic::error(format!("Invalid timeouts.{which}"), e.to_string()).at_path(vec![
                PathStep::Attr(crate::resource::attr::TIMEOUTS.into()),
                PathStep::Attr(which.into()),
            ])
        }),
        _ => Ok(DEFAULT_TIMEOUT),
    }
}

/// Diagnostics for every invalid timeout of the block.
pub fn validate(block: &Value) -> Vec<Diagnostic> {
    NAMES
        .iter()
        .filter_map(|which| timeout(block, which).err())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(create: &str) -> Value {
        Value::Object([("create".to_string(), Value::String(create.into()))].into())
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("24h"), Ok(MAX_TIMEOUT));
        for bad in ["", "5", "5x", "m", "1.5h", "-1s", "1h 30m", "h1"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hostile_durations_are_refused_without_overflow() {
        // Each of these overflowed (a panic in debug builds, a wrapped value in release
        // builds) or was silently replaced by the default before.
        for huge in [
            "99999999999999999999h",
            "18446744073709551615ms",
            "5124095576030432h",
            "18446744073709551615h18446744073709551615h",
            "25h",
            "0s",
            "999ms",
        ] {
            assert!(
                matches!(parse_duration(huge), Err(DurationError::OutOfRange(_))),
                "{huge:?}: {:?}",
                parse_duration(huge)
            );
        }
    }

    /// Values whose arithmetic overflows even 128-bit nanoseconds (one part, or the sum
    /// of parts) are an error, never a wrapped or saturated timeout.
    #[test]
    fn an_overflowing_value_is_an_error() {
        let digits = "9".repeat(45);
        for huge in [
            format!("{digits}h"),
            format!("{digits}ms1s"),
            "18446744073709551615h".repeat(30),
        ] {
            assert_eq!(
                parse_duration(&huge),
                Err(DurationError::OutOfRange(huge.clone())),
                "{huge:?}"
            );
        }
    }

    #[test]
    fn the_block_gives_a_diagnostic_on_the_attribute() {
        assert_eq!(timeout(&Value::Null, "create"), Ok(DEFAULT_TIMEOUT));
        assert_eq!(
            timeout(&block("2m"), "create"),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(timeout(&block("2m"), "delete"), Ok(DEFAULT_TIMEOUT));
        let d = timeout(&block("99999999999999999999h"), "create").unwrap_err();
        assert!(d.error);
        assert_eq!(d.summary, "Invalid timeouts.create");
        assert!(d.detail.contains("between 1s and 24h"), "{}", d.detail);
        assert_eq!(
            d.path,
            vec![
                PathStep::Attr("timeouts".into()),
                PathStep::Attr("create".into())
            ]
        );
        assert_eq!(validate(&block("nope")).len(), 1);
        assert!(validate(&Value::Unknown).is_empty());
    }
}

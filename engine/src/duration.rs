//! Go-style durations (`90s`, `5m`, `1h30m`, `1.5h`) from hostile input, for every front
//! end: the controller's flags and `spec.resyncInterval`, the CLI's deadline flag and the
//! Terraform provider's `timeouts` block.
//!
//! Every step is checked arithmetic on nanoseconds; anything that does not fit a
//! [`Duration`] is an error, never a panic or a wrap-around. (kube's own `Duration`
//! parser panics on values such as `99999999999999999999h`.)

use std::time::Duration;

/// Longest duration string [`parse`] accepts (the CRD schema's `maxLength` says the same).
pub const MAX_LEN: usize = 32;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Why a string is not a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not `<number>[.<fraction>]<unit>...` with units `ns`, `us` (`µs`), `ms`, `s`, `m`,
    /// `h` (or `0`).
    #[error("not a duration such as 30s, 5m or 1h")]
    Malformed,
    /// Well formed, but too large for a [`Duration`].
    #[error("too large a duration")]
    Overflow,
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        _ => return None,
    })
}

fn digits(s: &str) -> (&str, &str) {
    s.split_at(s.bytes().take_while(u8::is_ascii_digit).count())
}

/// Parses one `<number>[.<fraction>]<unit>` at the start of `s`: (nanoseconds, rest).
fn component(s: &str) -> Result<(u128, &str), DurationError> {
    use DurationError::{Malformed, Overflow};
    let (int, rest) = digits(s);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(after_dot) => digits(after_dot),
        None => ("", rest),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(Malformed);
    }
    let unit_len = rest
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(unit_len);
    let per = unit_nanos(unit).ok_or(Malformed)?;
    let mut value: u128 = 0;
    for d in int.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(d - b'0')))
            .ok_or(Overflow)?;
    }
    let mut nanos = value.checked_mul(per).ok_or(Overflow)?;
    // Fractions finer than a nanosecond are dropped, as Go does.
    let mut scale = per;
    for d in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        nanos = nanos
            .checked_add(u128::from(d - b'0') * scale)
            .ok_or(Overflow)?;
    }
    Ok((nanos, rest))
}

/// Parses a Go-style duration of any length: malformed input (negative values included)
/// is [`DurationError::Malformed`], a value that does not fit a [`Duration`]
/// [`DurationError::Overflow`]. Never panics. The time taken is linear in the length.
pub fn parse_checked(s: &str) -> Result<Duration, DurationError> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(DurationError::Malformed);
    }
    let mut rest = s;
    let mut total: u128 = 0;
    // Malformed wins over overflow: the whole string is checked before saying "too large".
    let mut overflowed = false;
    while !rest.is_empty() {
        match component(rest) {
            Ok((nanos, after)) => {
                match total.checked_add(nanos) {
                    Some(t) => total = t,
                    None => overflowed = true,
                }
                rest = after;
            }
            Err(DurationError::Overflow) => {
                overflowed = true;
                rest = skip_component(rest);
            }
            Err(e) => return Err(e),
        }
    }
    if overflowed {
        return Err(DurationError::Overflow);
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| DurationError::Overflow)?;
    let sub = u32::try_from(total % NANOS_PER_SEC).map_err(|_| DurationError::Overflow)?;
    Ok(Duration::new(secs, sub))
}

/// The rest of `s` after one well-formed component whose value overflowed.
fn skip_component(s: &str) -> &str {
    let (_, rest) = digits(s);
    let rest = rest.strip_prefix('.').map_or(rest, |r| digits(r).1);
    let unit_len = rest
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(rest.len());
    &rest[unit_len..]
}

/// Parses a Go-style duration (`90s`, `1.5h`, `1h30m`, `0`); `None` for anything else,
/// including negative values, more than [`MAX_LEN`] characters and values that do not fit
/// a [`Duration`]. Never panics.
pub fn parse(s: &str) -> Option<Duration> {
    if s.len() > MAX_LEN {
        return None;
    }
    parse_checked(s).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("3µs"), Some(Duration::from_micros(3)));
        assert_eq!(parse("3us"), Some(Duration::from_micros(3)));
        assert_eq!(parse("1ns"), Some(Duration::from_nanos(1)));
        assert_eq!(parse(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("0s"), Some(Duration::ZERO));
    }

    #[test]
    fn malformed_durations_are_none() {
        for s in [
            "", "soon", "5", "5x", "-5s", "+5s", "s", ".s", "1h 30m", "1..5s", "5S", "1hh",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
            assert_eq!(parse_checked(s), Err(DurationError::Malformed), "{s:?}");
        }
    }

    /// The values that panicked kube's parser or `Instant + Duration`: parsed without a
    /// panic, to `None` when they do not fit.
    #[test]
    fn huge_durations_are_none_or_exact_without_panicking() {
        assert_eq!(parse("99999999999999999999h"), None);
        assert_eq!(parse("99999999999999999999999999999999"), None);
        assert_eq!(parse(&format!("{}h", "9".repeat(31))), None);
        assert_eq!(parse(&format!("{}h", "9".repeat(40))), None); // too long
        assert_eq!(
            parse("2562047h"),
            Some(Duration::from_secs(2_562_047 * 3600))
        );
        assert_eq!(
            parse("18446744073709551615s"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse("18446744073709551616s"), None);
        assert_eq!(parse("5124095576030432h"), None);
    }

    #[test]
    fn overflow_is_told_apart_from_malformed_input() {
        let long = format!("{}h", "9".repeat(60));
        assert_eq!(parse_checked(&long), Err(DurationError::Overflow));
        assert_eq!(
            parse_checked("18446744073709551616s"),
            Err(DurationError::Overflow)
        );
        // Each part fits, their sum does not.
        assert_eq!(
            parse_checked("18446744073709551615s18446744073709551615s"),
            Err(DurationError::Overflow)
        );
        // Malformed anywhere wins over overflow.
        assert_eq!(
            parse_checked(&format!("{long}5x")),
            Err(DurationError::Malformed)
        );
        assert_eq!(parse_checked("1h30m"), Ok(Duration::from_secs(5400)));
    }
}

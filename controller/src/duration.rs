//! Go-style durations (`90s`, `5m`, `1h30m`) from hostile input, and the bounds of
//! `spec.resyncInterval`.
//!
//! The parser is our own: kube's `Duration` parser panics on values such as
//! `99999999999999999999h`. Here every step is checked arithmetic on nanoseconds, the
//! input length is capped, and anything that does not fit is `None`.

use std::time::Duration;

/// Longest duration string accepted (the CRD schema's `maxLength` says the same).
pub const MAX_LEN: usize = 32;

/// Shortest `resyncInterval` the controller accepts by default (`--min-resync-interval`).
pub const MIN_RESYNC: Duration = Duration::from_secs(10);

/// Longest `resyncInterval` (and longest duration flag): 30 days.
pub const MAX_RESYNC: Duration = Duration::from_secs(30 * 24 * 3600);

/// The lowest `--min-resync-interval` an operator may set.
pub const MIN_RESYNC_FLOOR: Duration = Duration::from_secs(1);

const NANOS_PER_SEC: u128 = 1_000_000_000;

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
fn component(s: &str) -> Option<(u128, &str)> {
    let (int, rest) = digits(s);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(after_dot) => digits(after_dot),
        None => ("", rest),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let unit_len = rest
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(unit_len);
    let per = unit_nanos(unit)?;
    let mut value: u128 = 0;
    for d in int.bytes() {
        value = value.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
    }
    let mut nanos = value.checked_mul(per)?;
    // Fractions finer than a nanosecond are dropped, as Go does.
    let mut scale = per;
    for d in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        nanos = nanos.checked_add(u128::from(d - b'0').checked_mul(scale)?)?;
    }
    Some((nanos, rest))
}

/// Parses a Go-style duration (`90s`, `1.5h`, `1h30m`, `0`); `None` for anything else,
/// including negative values, more than [`MAX_LEN`] characters and values that do not fit
/// a [`Duration`]. Never panics.
pub fn parse(s: &str) -> Option<Duration> {
    if s.is_empty() || s.len() > MAX_LEN {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (nanos, after) = component(rest)?;
        total = total.checked_add(nanos)?;
        rest = after;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).ok()?;
    let sub = u32::try_from(total % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, sub))
}

/// Checks `spec.resyncInterval`: a duration from `min` to [`MAX_RESYNC`]; the error says
/// why not (for a `Ready=False` condition with reason `InvalidSpec`).
pub fn check_resync(value: &str, min: Duration) -> Result<Duration, String> {
    let Some(d) = parse(value) else {
        if value.len() <= MAX_LEN && looks_like_a_duration(value) {
            return Err(format!(
                "spec.resyncInterval {value} is out of range: it must be from {} to {} (720h)",
                human(min),
                human(MAX_RESYNC)
            ));
        }
        return Err(format!(
            "spec.resyncInterval {:?} is not a duration such as 30s, 5m or 1h",
            truncated(value)
        ));
    };
    if d < min || d > MAX_RESYNC {
        return Err(format!(
            "spec.resyncInterval {value} is out of range: it must be from {} to {} (720h)",
            human(min),
            human(MAX_RESYNC)
        ));
    }
    Ok(d)
}

/// Checks a duration flag: positive and at most [`MAX_RESYNC`] (30 days).
pub fn check_flag(value: &str) -> Result<Duration, String> {
    match parse(value) {
        Some(d) if !d.is_zero() && d <= MAX_RESYNC => Ok(d),
        Some(_) => Err(format!("{value:?} must be more than 0 and at most 720h")),
        None => Err(format!(
            "{:?} is not a positive duration such as 30s, 5m or 1h",
            truncated(value)
        )),
    }
}

/// Digits and unit letters only: a duration too large to represent, not gibberish.
fn looks_like_a_duration(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || "nsuµμmh.".contains(c))
}

fn truncated(s: &str) -> String {
    s.chars().take(MAX_LEN + 8).collect()
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
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

    /// The attack on the old code path: kube's parser, which `parse_duration` used to call,
    /// panics on this value (so a single object took the controller down).
    #[test]
    fn kube_duration_parser_panics_where_ours_returns_none() {
        let old =
            std::panic::catch_unwind(|| "99999999999999999999h".parse::<kube::core::Duration>());
        assert!(old.is_err(), "kube's parser no longer panics: {old:?}");
        assert_eq!(parse("99999999999999999999h"), None);
    }

    #[test]
    fn resync_interval_is_bounded() {
        assert_eq!(check_resync("5m", MIN_RESYNC), Ok(Duration::from_secs(300)));
        assert_eq!(check_resync("10s", MIN_RESYNC), Ok(MIN_RESYNC));
        assert_eq!(check_resync("720h", MIN_RESYNC), Ok(MAX_RESYNC));
        for bad in [
            "1ns",
            "0s",
            "0",
            "9s",
            "721h",
            "2562047h",
            "99999999999999999999h",
        ] {
            let e = check_resync(bad, MIN_RESYNC).unwrap_err();
            assert!(e.contains("spec.resyncInterval"), "{bad}: {e}");
        }
        assert!(check_resync("1ns", MIN_RESYNC)
            .unwrap_err()
            .contains("from 10s to 30d"));
        assert!(check_resync("junk", MIN_RESYNC)
            .unwrap_err()
            .contains("not a duration"));
        assert!(check_resync("99999999999999999999h", MIN_RESYNC)
            .unwrap_err()
            .contains("out of range"));
        // An operator may lower the floor (the e2e harness uses 1s).
        assert_eq!(
            check_resync("2s", Duration::from_secs(1)),
            Ok(Duration::from_secs(2))
        );
    }

    #[test]
    fn duration_flags_are_positive_and_at_most_30_days() {
        assert_eq!(check_flag("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(check_flag("720h"), Ok(MAX_RESYNC));
        for bad in ["0s", "721h", "2562047h", "99999999999999999999h", "x"] {
            assert!(check_flag(bad).is_err(), "{bad}");
        }
    }
}

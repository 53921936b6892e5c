//! The bounds of `spec.resyncInterval` and of the controller's duration flags. The
//! parser itself is the engine's ([`imagesync_engine::duration`]), shared by every front
//! end: checked arithmetic, capped length, `None` for anything that does not fit.

use std::time::Duration;

pub use imagesync_engine::duration::{parse, MAX_LEN};

/// Shortest `resyncInterval` the controller accepts by default (`--min-resync-interval`).
pub const MIN_RESYNC: Duration = Duration::from_secs(10);

/// Longest `resyncInterval` (and longest duration flag): 30 days.
pub const MAX_RESYNC: Duration = Duration::from_secs(30 * 24 * 3600);

/// The lowest `--min-resync-interval` an operator may set.
pub const MIN_RESYNC_FLOOR: Duration = Duration::from_secs(1);

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

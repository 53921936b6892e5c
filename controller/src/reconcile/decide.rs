//! The pure decisions of a reconcile (unit-tested): what a check found, how long to
//! back off, the `Ready` condition.

use std::time::Duration;

use imagesync_engine::Reference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{ImageSyncStatus, READY};

/// Transient failures: first retry after this long, doubling per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait between retries of a failing object.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Longest `Retry-After` honoured.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// A check that changes nothing else rewrites `status.lastCheckTime` only once the
/// recorded time is this old: re-checks of an in-sync object write no status (and cause
/// no watch event) in between.
pub const CHECK_TIME_REFRESH: Duration = Duration::from_secs(600);

/// Parses a Go-style duration (`90s`, `5m`, `1h30m`) without panicking; see
/// [`crate::duration::parse`].
pub fn parse_duration(s: &str) -> Option<Duration> {
    crate::duration::parse(s)
}

// === Decisions (pure, unit-tested) ===

/// Whether `old` (as recorded in status) names the same tag as `new`, however spelled
/// (`docker.io/library/x:1` and `x:1` are the same): then nothing must be deleted.
pub fn same_image_reference(old: &str, new: &Reference) -> bool {
    Reference::parse(old).is_ok_and(|o| {
        o.registry() == new.registry()
            && o.repository() == new.repository()
            && o.manifest_ref() == new.manifest_ref()
    })
}

/// Drift found by a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The source tag now points at another digest.
    SourceChanged {
        /// Digest recorded in status.
        from: String,
        /// Digest found now.
        to: String,
    },
    /// The destination tag we wrote is gone.
    DestinationMissing,
    /// The destination tag now points at a digest we did not write.
    DestinationOverwritten {
        /// What it points at now.
        found: String,
    },
}

/// What a check decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The destination holds the source digest: nothing to copy.
    UpToDate,
    /// Copy, reporting this drift.
    Copy(Vec<Drift>),
}

/// Compares what HEAD found with what status recorded. `wanted` is the digest the
/// destination must hold: `source_digest`, or with `spec.platforms` the selection's. A
/// source that moved while the selection stayed (a platform not selected was added) is
/// no `SourceChanged`.
pub fn decide(
    status: &ImageSyncStatus,
    destination: &str,
    source_digest: &str,
    wanted: &str,
    destination_digest: Option<&str>,
) -> Decision {
    if destination_digest == Some(wanted) {
        return Decision::UpToDate;
    }
    let mut drift = Vec::new();
    let same_selection = status.destination_digest.as_deref() == Some(wanted);
    if let Some(from) = status
        .source_digest
        .as_deref()
        .filter(|d| *d != source_digest && !same_selection)
    {
        drift.push(Drift::SourceChanged {
            from: from.to_string(),
            to: source_digest.to_string(),
        });
    }
    let same_destination = status.synced_destination.as_deref() == Some(destination);
    if let (true, Some(ours)) = (same_destination, status.destination_digest.as_deref()) {
        match destination_digest {
            None => drift.push(Drift::DestinationMissing),
            Some(found) if found != ours => drift.push(Drift::DestinationOverwritten {
                found: found.to_string(),
            }),
            Some(_) => {}
        }
    }
    Decision::Copy(drift)
}

/// How long to wait before retrying after `failures` consecutive failures.
pub fn backoff(
    failures: u32,
    permanent: bool,
    retry_after: Option<Duration>,
    interval: Duration,
) -> Duration {
    if let Some(ra) = retry_after {
        return ra.min(RETRY_AFTER_CAP).max(Duration::from_millis(100));
    }
    if permanent {
        // Needs a change elsewhere (spec changes trigger at once): retry slowly.
        return interval.min(BACKOFF_CAP).max(Duration::from_secs(1));
    }
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP)
}

/// Sets the `Ready` condition, keeping `lastTransitionTime` when the status is unchanged.
pub fn set_ready(
    status: &mut ImageSyncStatus,
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let value = if ready { "True" } else { "False" };
    let previous = status.conditions.iter().find(|c| c.type_ == READY);
    let last_transition_time = previous
        .filter(|c| c.status == value)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    let condition = Condition {
        type_: READY.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    };
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.push(condition);
}

/// The `lastCheckTime` to record for a check at `now`. `after` is the status the check
/// leaves, still carrying the recorded `lastCheckTime`; `before` is the stored status.
/// When the check changed nothing else and the recorded time is less than
/// [`CHECK_TIME_REFRESH`] old, the recorded time stays (no status write); otherwise
/// `now`. A recorded time in the future (a clock step, or someone else's edit) is
/// replaced.
pub fn check_time(before: Option<&ImageSyncStatus>, after: &ImageSyncStatus, now: Time) -> Time {
    let Some(recorded) = after.last_check_time.as_ref() else {
        return now;
    };
    if before != Some(after) {
        return now;
    }
    let age = now.0.duration_since(recorded.0);
    let refresh = k8s_openapi::jiff::SignedDuration::try_from(CHECK_TIME_REFRESH).ok();
    match refresh {
        Some(refresh) if !age.is_negative() && age < refresh => recorded.clone(),
        _ => now,
    }
}

pub(super) fn now() -> Time {
    Time(Timestamp::now())
}

pub(super) fn ready_label(status: &ImageSyncStatus) -> &'static str {
    match status.conditions.iter().find(|c| c.type_ == READY) {
        Some(c) if c.status == "True" => "true",
        Some(c) if c.status == "False" => "false",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::api::reasons;

    use super::*;

    const A: &str = "sha256:aaaa";
    const B: &str = "sha256:bbbb";
    const C: &str = "sha256:cccc";

    fn synced(dst: &str, digest: &str) -> ImageSyncStatus {
        ImageSyncStatus {
            source_digest: Some(digest.into()),
            destination_digest: Some(digest.into()),
            synced_destination: Some(dst.into()),
            ..ImageSyncStatus::default()
        }
    }

    #[test]
    fn destination_holding_the_source_digest_needs_no_copy() {
        assert_eq!(
            decide(&synced("d:1", A), "d:1", A, A, Some(A)),
            Decision::UpToDate
        );
        assert_eq!(
            decide(&ImageSyncStatus::default(), "d:1", A, A, Some(A)),
            Decision::UpToDate
        );
    }

    #[test]
    fn first_sync_copies_without_reporting_drift() {
        assert_eq!(
            decide(&ImageSyncStatus::default(), "d:1", A, A, None),
            Decision::Copy(vec![])
        );
    }

    #[test]
    fn deleted_destination_is_drift_and_copied_again() {
        assert_eq!(
            decide(&synced("d:1", A), "d:1", A, A, None),
            Decision::Copy(vec![Drift::DestinationMissing])
        );
    }

    #[test]
    fn moved_source_is_reported_with_old_and_new_digest() {
        assert_eq!(
            decide(&synced("d:1", A), "d:1", B, B, Some(A)),
            Decision::Copy(vec![Drift::SourceChanged {
                from: A.into(),
                to: B.into()
            }])
        );
    }

    #[test]
    fn a_source_that_moved_with_the_same_selection_is_no_source_change() {
        // Selected child A: the index moved from B to C (a platform was added).
        let st = ImageSyncStatus {
            source_digest: Some(B.into()),
            ..synced("d:1", A)
        };
        assert_eq!(decide(&st, "d:1", C, A, Some(A)), Decision::UpToDate);
        // The destination was deleted meanwhile: that is the only drift.
        assert_eq!(
            decide(&st, "d:1", C, A, None),
            Decision::Copy(vec![Drift::DestinationMissing])
        );
    }

    #[test]
    fn overwritten_destination_is_reported() {
        assert_eq!(
            decide(&synced("d:1", A), "d:1", A, A, Some(C)),
            Decision::Copy(vec![Drift::DestinationOverwritten { found: C.into() }])
        );
    }

    #[test]
    fn a_new_destination_is_not_drift() {
        assert_eq!(
            decide(&synced("d:1", A), "d:2", A, A, None),
            Decision::Copy(vec![])
        );
    }

    #[test]
    fn respelling_the_destination_is_not_a_move() {
        let new = Reference::parse("docker.io/library/busybox:1").unwrap();
        assert!(same_image_reference("busybox:1", &new));
        assert!(same_image_reference(
            "index.docker.io/library/busybox:1",
            &new
        ));
        assert!(!same_image_reference("busybox:2", &new));
        assert!(!same_image_reference(
            "127.0.0.1:5000/library/busybox:1",
            &new
        ));
    }

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let interval = Duration::from_secs(600);
        assert_eq!(backoff(1, false, None, interval), Duration::from_secs(1));
        assert_eq!(backoff(2, false, None, interval), Duration::from_secs(2));
        assert_eq!(backoff(4, false, None, interval), Duration::from_secs(8));
        assert_eq!(backoff(40, false, None, interval), BACKOFF_CAP);
        assert_eq!(backoff(1, true, None, interval), BACKOFF_CAP);
        assert_eq!(
            backoff(1, true, None, Duration::from_secs(20)),
            Duration::from_secs(20)
        );
        assert_eq!(
            backoff(3, false, Some(Duration::from_secs(42)), interval),
            Duration::from_secs(42)
        );
    }

    /// A hostile `Retry-After` (or interval) never yields a wait that overflows
    /// `Instant` arithmetic or the runtime's timer: every wait is capped.
    #[test]
    fn huge_retry_after_and_intervals_are_capped() {
        let now = Instant::now();
        for wait in [
            backoff(1, false, Some(Duration::MAX), Duration::MAX),
            backoff(u32::MAX, false, None, Duration::MAX),
            backoff(1, true, None, Duration::MAX),
        ] {
            assert!(wait <= RETRY_AFTER_CAP, "{wait:?}");
            assert!(now.checked_add(wait).is_some());
        }
        assert_eq!(
            backoff(1, false, Some(Duration::ZERO), Duration::MAX),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn ready_transition_time_is_kept_while_status_is_unchanged() {
        let mut s = ImageSyncStatus::default();
        set_ready(&mut s, true, reasons::SYNCED, "ok", Some(1));
        let first = s.conditions[0].last_transition_time.clone();
        std::thread::sleep(Duration::from_millis(5));
        set_ready(&mut s, true, reasons::SYNCED, "still ok", Some(2));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].last_transition_time, first);
        assert_eq!(s.conditions[0].observed_generation, Some(2));
        set_ready(&mut s, false, reasons::SOURCE_NOT_FOUND, "gone", Some(2));
        assert_ne!(s.conditions[0].last_transition_time, first);
        assert_eq!(s.conditions[0].reason, "SourceNotFound");
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + seconds).unwrap())
    }

    #[test]
    fn an_unchanged_check_keeps_a_recent_check_time() {
        let stored = ImageSyncStatus {
            last_check_time: Some(at(0)),
            ..synced("d:1", A)
        };
        let after = stored.clone();
        assert_eq!(check_time(Some(&stored), &after, at(30)), at(0));
        assert_eq!(check_time(Some(&stored), &after, at(599)), at(0));
        // Old enough: refreshed (one status write every CHECK_TIME_REFRESH).
        assert_eq!(check_time(Some(&stored), &after, at(600)), at(600));
        // A recorded time in the future is not trusted.
        assert_eq!(check_time(Some(&stored), &after, at(-5)), at(-5));
    }

    #[test]
    fn a_check_that_changes_anything_else_records_the_time() {
        let stored = ImageSyncStatus {
            last_check_time: Some(at(0)),
            ..synced("d:1", A)
        };
        let moved = ImageSyncStatus {
            source_digest: Some(B.into()),
            ..stored.clone()
        };
        assert_eq!(check_time(Some(&stored), &moved, at(30)), at(30));
        let mut ready = stored.clone();
        set_ready(&mut ready, true, reasons::SYNCED, "ok", Some(1));
        assert_eq!(check_time(Some(&stored), &ready, at(30)), at(30));
        // Never recorded, or no stored status: recorded now.
        let first = synced("d:1", A);
        assert_eq!(check_time(Some(&first), &first, at(30)), at(30));
        assert_eq!(check_time(None, &stored, at(30)), at(30));
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("soon"), None);
    }
}

//! The set's status: the counts, the `Ready` condition, and the write (skipped when
//! nothing changed, so our own writes do not loop).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;

use crate::api::set::set_reasons;
use crate::api::{ImageSyncSet, ImageSyncSetStatus, READY};
use crate::Result;

use super::plan::Counts;

/// What the `Ready` condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `True` or `False`.
    pub ready: bool,
    /// The reason.
    pub reason: String,
    /// The message.
    pub message: String,
}

impl Verdict {
    /// `Ready=False` with `reason` and `message`.
    pub fn not_ready(reason: &str, message: impl Into<String>) -> Verdict {
        Verdict {
            ready: false,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// The verdict of a check that kept the children in step: `Synced` when every matching
/// tag has a `Ready` child, else `ChildrenFailed` or `Syncing`.
pub fn children_verdict(matched: usize, counts: Counts) -> Verdict {
    if counts.failed > 0 {
        return Verdict::not_ready(
            set_reasons::CHILDREN_FAILED,
            format!(
                "{} of {matched} children failed (see their Ready conditions)",
                counts.failed
            ),
        );
    }
    if counts.ready < matched || counts.children != matched {
        return Verdict::not_ready(
            set_reasons::SYNCING,
            format!("{} of {matched} children are Ready", counts.ready),
        );
    }
    Verdict {
        ready: true,
        reason: set_reasons::SYNCED.to_string(),
        message: format!("{matched} tags match; every child is Ready"),
    }
}

/// Sets `Ready` in `status`, keeping `lastTransitionTime` while its status is unchanged.
pub fn set_condition(status: &mut ImageSyncSetStatus, verdict: &Verdict, generation: Option<i64>) {
    let value = if verdict.ready { "True" } else { "False" };
    let last_transition_time = status
        .conditions
        .iter()
        .find(|c| c.type_ == READY && c.status == value)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.push(Condition {
        type_: READY.to_string(),
        status: value.to_string(),
        reason: verdict.reason.clone(),
        message: verdict.message.clone(),
        observed_generation: generation,
        last_transition_time,
    });
}

/// Sets the counts in `status`.
pub fn set_counts(status: &mut ImageSyncSetStatus, matched: Option<usize>, counts: Counts) {
    let n = |v: usize| Some(i64::try_from(v).unwrap_or(i64::MAX));
    if let Some(m) = matched {
        status.matched = n(m);
    }
    status.children = n(counts.children);
    status.ready = n(counts.ready);
    status.failed = n(counts.failed);
}

/// Writes `status` when it differs from what `set` has (server-side apply of the status
/// subresource; a set deleted meanwhile is fine).
pub async fn write(
    api: &Api<ImageSyncSet>,
    set: &ImageSyncSet,
    status: &ImageSyncSetStatus,
) -> Result<()> {
    crate::reconcile::apply_status(
        api,
        set,
        set.status.as_ref(),
        status,
        "patch ImageSyncSet status",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(children: usize, ready: usize, failed: usize) -> Counts {
        Counts {
            children,
            ready,
            failed,
        }
    }

    #[test]
    fn the_verdict_follows_the_children() {
        assert!(children_verdict(2, counts(2, 2, 0)).ready);
        assert!(children_verdict(0, counts(0, 0, 0)).ready);
        assert_eq!(
            children_verdict(2, counts(2, 1, 0)).reason,
            set_reasons::SYNCING
        );
        assert_eq!(
            children_verdict(2, counts(1, 1, 0)).reason,
            set_reasons::SYNCING
        );
        let failed = children_verdict(3, counts(3, 1, 1));
        assert_eq!(failed.reason, set_reasons::CHILDREN_FAILED);
        assert!(
            failed.message.starts_with("1 of 3 children failed"),
            "{}",
            failed.message
        );
    }

    #[test]
    fn the_transition_time_stays_while_the_status_does() {
        let mut status = ImageSyncSetStatus::default();
        set_condition(&mut status, &Verdict::not_ready("Syncing", "a"), Some(1));
        let first = status.conditions[0].last_transition_time.clone();
        set_condition(
            &mut status,
            &Verdict::not_ready("ChildrenFailed", "b"),
            Some(2),
        );
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.conditions[0].last_transition_time, first);
        assert_eq!(status.conditions[0].reason, "ChildrenFailed");
        assert_eq!(status.conditions[0].observed_generation, Some(2));
    }
}

//! The Events a check publishes about what it found: an adopted destination, and drift
//! (the source moved, the destination deleted or overwritten outside the controller).

use imagesync_engine::Digest;
use tracing::info;

use crate::api::{ImageSync, ImageSyncStatus};
use crate::events::EventType;

use super::decide::Drift;
use super::Context;

/// A Normal Event: the destination already held the digest and is adopted (left in place
/// on deletion and destination moves).
pub(super) async fn report_adopted(
    obj: &ImageSync,
    ctx: &Context,
    status: &ImageSyncStatus,
    digest: &Digest,
) {
    let legacy = status.ownership.is_none() && status.synced_destination.is_some();
    let why = if legacy {
        "its status was recorded before ownership was tracked, so it is treated as adopted"
    } else {
        "it already held that digest, so this object did not write it"
    };
    let note = format!(
        "{} holds {digest}; {why}: deleting this object or changing its destination leaves the tag in place",
        obj.spec.destination
    );
    info!("{note}");
    ctx.events
        .publish(obj, EventType::Normal, "Adopted", "Sync", &note)
        .await;
}

/// An Event and a metric for drift found by a check: the source moved, or the destination
/// was deleted or overwritten outside the controller.
pub(super) async fn report_drift(obj: &ImageSync, ctx: &Context, drift: &Drift, destination: &str) {
    let (kind, type_, reason, note) = match drift {
        Drift::SourceChanged { from, to } => (
            "source_changed",
            EventType::Normal,
            "SourceChanged",
            format!(
                "source {} moved from {from} to {to}; re-syncing",
                obj.spec.source
            ),
        ),
        Drift::DestinationMissing => (
            "destination_missing",
            EventType::Warning,
            "DestinationMissing",
            format!("destination {destination} was deleted outside the controller; re-syncing"),
        ),
        Drift::DestinationOverwritten { found } => (
            "destination_overwritten",
            EventType::Warning,
            "DestinationOverwritten",
            format!(
                "destination {destination} was overwritten (now {found}, not {}); re-syncing",
                obj.status
                    .as_ref()
                    .and_then(|s| s.destination_digest.as_deref())
                    .unwrap_or("?")
            ),
        ),
    };
    info!(drift = kind, "{note}");
    ctx.metrics.drift(kind);
    ctx.events.publish(obj, type_, reason, "Check", &note).await;
}

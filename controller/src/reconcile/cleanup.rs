//! Cleanup under the finalizer (remove the destination tag this object wrote, only while
//! it still holds the recorded digest) and removal of an old destination after
//! `spec.destination` changed.

use std::sync::Arc;
use std::time::Duration;

use imagesync_engine::{DeleteOptions, Digest, Engine, ErrorKind, Reference};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::Api;
use tracing::{debug, info, warn};

use crate::api::{reasons, DeletionPolicy, ImageSync, ImageSyncStatus, Ownership};
use crate::events::EventType;
use crate::policy::Decision as PolicyDecision;
use crate::{Error, Result};

use super::decide::set_ready;
use super::{ownership, patch_status, Context, DELETE_GIVE_UP};

/// Removes the previous destination after `spec.destination` changed (only when the
/// policy allows the object that destination too: status could have been forged).
pub(super) async fn release_old_destination(
    obj: &ImageSync,
    ctx: &Context,
    status: &ImageSyncStatus,
    source: &Reference,
    old: &str,
    digest: &str,
) -> Result<()> {
    if status.ownership != Some(Ownership::Written) {
        ctx.events
            .publish(
                obj,
                EventType::Normal,
                "DestinationChanged",
                "Delete",
                &format!(
                    "destination changed; {old} left in place: {}",
                    not_written(status)
                ),
            )
            .await;
        return Ok(());
    }
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        ctx.events
            .publish(
                obj,
                EventType::Normal,
                "DestinationChanged",
                "Delete",
                &format!("destination changed; {old} left in place (deletionPolicy Orphan)"),
            )
            .await;
        return Ok(());
    }
    let engine = match Reference::parse(old) {
        Ok(old_ref) => match ctx.policy_decision(obj, source, &old_ref).await? {
            PolicyDecision::Allow { ambient, .. } => {
                match ctx.engine_for(obj, source, &old_ref, ambient).await {
                    Ok(e) => e,
                    Err(Error::Secret { .. } | Error::SecretTypeUnsupported { .. }) => {
                        ctx.engine_without_secrets(obj, source, &old_ref, ambient)
                    }
                    Err(e) => return Err(e),
                }
            }
            PolicyDecision::Deny { message } => {
                ctx.events
                    .publish(
                        obj,
                        EventType::Warning,
                        reasons::POLICY_DENIED,
                        "Delete",
                        &format!("destination changed; {old} left in place: {message}"),
                    )
                    .await;
                return Ok(());
            }
        },
        // Not a reference: delete_destination reports it without a registry call.
        Err(_) => ctx.engine.clone(),
    };
    match delete_destination(obj, ctx, &engine, old, digest, status).await {
        DeleteResult::Done(note) => {
            ctx.events
                .publish(
                    obj,
                    EventType::Normal,
                    "DestinationChanged",
                    "Delete",
                    &format!("destination changed; {note}"),
                )
                .await;
            Ok(())
        }
        DeleteResult::Refused(note) => {
            ctx.events
                .publish(
                    obj,
                    EventType::Warning,
                    reasons::DELETE_FAILED,
                    "Delete",
                    &note,
                )
                .await;
            Ok(())
        }
        DeleteResult::Retry(error) => Err(error),
    }
}

enum DeleteResult {
    /// Deleted (or nothing to delete); the note says what happened.
    Done(String),
    /// Not deleted, and retrying will not help (not ours, registry refuses deletes, ...).
    Refused(String),
    /// Transient failure: retry.
    Retry(Error),
}

/// Why a recorded destination is not this object's to delete.
fn not_written(status: &ImageSyncStatus) -> &'static str {
    match status.ownership {
        Some(Ownership::Adopted) => {
            "this object adopted it (it already held the digest); it did not write it"
        }
        _ => "its status was recorded before ownership was tracked, so it is treated as adopted",
    }
}

async fn delete_destination(
    obj: &ImageSync,
    ctx: &Context,
    engine: &Engine,
    target: &str,
    digest: &str,
    status: &ImageSyncStatus,
) -> DeleteResult {
    let Ok(reference) = Reference::parse(target) else {
        return DeleteResult::Done(format!(
            "{target} is not a valid reference; nothing to delete"
        ));
    };
    let Ok(expect) = digest.parse::<Digest>() else {
        return DeleteResult::Done(format!(
            "recorded digest {digest} is invalid; nothing deleted"
        ));
    };
    // Only blobs this object's copies uploaded may go; without a record, none.
    let only_blobs = status.uploaded_blobs.as_ref().map(|b| {
        b.iter()
            .filter_map(|d| d.parse::<Digest>().ok())
            .collect::<std::collections::BTreeSet<_>>()
    });
    let options = DeleteOptions {
        expect_digest: Some(expect),
        delete_layers: obj.spec.delete_layers && only_blobs.is_some(),
        only_blobs,
    };
    match engine.delete(&reference, &options).await {
        Ok(report) => {
            if !report.warnings.is_empty() {
                ctx.events
                    .publish(
                        obj,
                        EventType::Warning,
                        "LayerCleanupIncomplete",
                        "Delete",
                        &format!("{target}: {}", report.warnings.join("; ")),
                    )
                    .await;
            }
            if report.already_gone {
                DeleteResult::Done(format!("{target} was already gone"))
            } else {
                DeleteResult::Done(format!(
                    "deleted {target} ({digest}; {} other tags kept, {} blobs deleted, {} kept)",
                    report.kept_tags.len(),
                    report.blobs_deleted,
                    report.blobs_kept
                ))
            }
        }
        Err(e) => {
            match e.kind() {
                ErrorKind::Conflict => DeleteResult::Refused(format!("{target} not deleted: {e}")),
                ErrorKind::Unsupported => DeleteResult::Refused(format!(
                    "{target} not deleted: the registry does not allow deletes ({e}); the tag is left in place"
                )),
                ErrorKind::Unauthorized | ErrorKind::Denied | ErrorKind::InvalidInput => {
                    DeleteResult::Refused(format!("{target} not deleted: {e}"))
                }
                _ => DeleteResult::Retry(Error::Engine {
                    context: format!("delete {target}"),
                    source: e,
                }),
            }
        }
    }
}

/// Deletion; the objects waiting for this one's destination are woken when it is done.
pub(super) async fn cleanup(
    obj: Arc<ImageSync>,
    ctx: Arc<Context>,
    api: &Api<ImageSync>,
) -> Result<Action> {
    let waiting = match Reference::parse(&obj.spec.destination) {
        Ok(d) => live(ctx.rivals(&obj, &d).await?),
        Err(_) => Vec::new(),
    };
    let result = cleanup_inner(obj, ctx.clone(), api).await;
    if result.is_ok() {
        ctx.wake(&waiting);
    }
    result
}

/// The objects of `objects` not being deleted.
fn live(objects: Vec<ImageSync>) -> Vec<ImageSync> {
    objects
        .into_iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .collect()
}

/// What this object wrote: its recorded destination when its own copy wrote it, else a
/// copy that was started and may have written the tag before status said so.
fn written_by(status: &ImageSyncStatus) -> Option<(String, String)> {
    match (
        status.ownership,
        &status.synced_destination,
        &status.destination_digest,
        &status.write_intent,
    ) {
        (Some(Ownership::Written), Some(t), Some(d), _) => Some((t.clone(), d.clone())),
        (_, _, _, Some(w)) => Some((w.destination.clone(), w.digest.clone())),
        _ => None,
    }
}

async fn cleanup_inner(
    obj: Arc<ImageSync>,
    ctx: Arc<Context>,
    api: &Api<ImageSync>,
) -> Result<Action> {
    let status = obj.status.clone().unwrap_or_default();
    let done = |ctx: &Context| {
        ctx.forget(&obj);
        Action::await_change()
    };
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        ctx.events
            .publish(
                &obj,
                EventType::Normal,
                "Orphaned",
                "Delete",
                "deletionPolicy Orphan: the destination is left in place",
            )
            .await;
        return Ok(done(&ctx));
    }
    let Some((target, digest)) = written_by(&status) else {
        if let Some(target) = &status.synced_destination {
            let note = format!("{target} left in place: {}", not_written(&status));
            info!("{note}");
            ctx.events
                .publish(&obj, EventType::Normal, "LeftInPlace", "Delete", &note)
                .await;
        } else {
            debug!("nothing was written; nothing to delete");
        }
        return Ok(done(&ctx));
    };
    // Another object names the tag: it is left for that object (which takes it over, or
    // holds it already), and nothing is deleted.
    if let Ok(t) = Reference::parse(&target) {
        if let Some(next) = live(ctx.rivals(&obj, &t).await?).first() {
            let note = format!(
                "{target} left in place for ImageSync {}, which names the same destination",
                ownership::display(next)
            );
            info!("{note}");
            ctx.events
                .publish(&obj, EventType::Normal, "LeftInPlace", "Delete", &note)
                .await;
            return Ok(done(&ctx));
        }
    }
    // The policy in force now decides (for the destination actually deleted): a denied
    // object is released without any registry request, its destination left in place.
    let target_ref = Reference::parse(&target).ok();
    let source_ref = Reference::parse(&obj.spec.source).ok();
    let decision = match (&source_ref, &target_ref) {
        (Some(s), Some(t)) => ctx.policy_decision(&obj, s, t).await?,
        // Unparsable: delete_destination makes no registry call for a bad target, and a
        // bad source can only be judged without a policy.
        _ if ctx.policy.current().0.is_none() => PolicyDecision::ALLOW_ALL,
        _ => PolicyDecision::Deny {
            message: format!("spec.source {:?} is not a valid reference", obj.spec.source),
        },
    };
    let ambient = match decision {
        PolicyDecision::Allow { ambient, .. } => ambient,
        PolicyDecision::Deny { message } => {
            let note = format!("{target} left in place: {message}");
            info!("{note}; releasing the finalizer without a registry request");
            ctx.events
                .publish(
                    &obj,
                    EventType::Warning,
                    reasons::POLICY_DENIED,
                    "Delete",
                    &note,
                )
                .await;
            return Ok(done(&ctx));
        }
    };
    let engine = match (&source_ref, &target_ref) {
        (Some(s), Some(t)) => match ctx.engine_for(&obj, s, t, ambient).await {
            Ok(e) => e,
            // Without the Secret, try the credentials the policy allows.
            Err(Error::Secret { .. } | Error::SecretTypeUnsupported { .. }) => {
                ctx.engine_without_secrets(&obj, s, t, ambient)
            }
            Err(e) => return Err(e),
        },
        // No policy (see above): the standard credentials, as before.
        _ => ctx.engine.clone(),
    };
    match delete_destination(&obj, &ctx, &engine, &target, &digest, &status).await {
        DeleteResult::Done(note) => {
            info!("{note}");
            ctx.events
                .publish(&obj, EventType::Normal, "Deleted", "Delete", &note)
                .await;
            Ok(done(&ctx))
        }
        DeleteResult::Refused(note) => {
            warn!("{note}; releasing the finalizer");
            ctx.events
                .publish(
                    &obj,
                    EventType::Warning,
                    reasons::DELETE_FAILED,
                    "Delete",
                    &note,
                )
                .await;
            Ok(done(&ctx))
        }
        DeleteResult::Retry(error) => {
            let deleting_for = obj
                .metadata
                .deletion_timestamp
                .as_ref()
                .and_then(|t| Timestamp::now().duration_since(t.0).try_into().ok())
                .unwrap_or(Duration::ZERO);
            if deleting_for > DELETE_GIVE_UP {
                let note = format!(
                    "gave up deleting {target} after {}s: {error}; the tag is left in place",
                    deleting_for.as_secs()
                );
                warn!("{note}");
                ctx.events
                    .publish(
                        &obj,
                        EventType::Warning,
                        reasons::DELETE_FAILED,
                        "Delete",
                        &note,
                    )
                    .await;
                return Ok(done(&ctx));
            }
            let mut failing = status.clone();
            set_ready(
                &mut failing,
                false,
                reasons::DELETE_FAILED,
                &error.to_string(),
                obj.metadata.generation,
            );
            if let Err(e) = patch_status(api, &obj, &failing).await {
                warn!(error = %e, "could not write the failure to status");
            }
            Err(error)
        }
    }
}

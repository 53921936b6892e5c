//! Apply: check source and destination (HEAD), copy when they differ, record status;
//! wait while another object holds the destination.

use std::sync::Arc;
use std::time::{Duration, Instant};

use imagesync_engine::{Digest, Engine, Reference, SyncOptions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::Api;
use tracing::{info, warn, Span};

use crate::api::{reasons, ConflictRecord, ImageSync, ImageSyncStatus, Ownership};
use crate::events::EventType;
use crate::{Error, Result};

use super::cleanup::release_old_destination;
use super::decide::{
    check_time, decide, now, ready_label, same_image_reference, set_ready, Decision, Drift,
};
use super::gate::object_key;
use super::notices::{report_adopted, report_drift};
use super::ownership::destination_key;
use super::{ownership, patch_status, Context, CONFLICT_POLL};

pub(super) async fn apply(
    obj: Arc<ImageSync>,
    ctx: Arc<Context>,
    api: &Api<ImageSync>,
) -> Result<Action> {
    let interval = ctx.resync_interval(&obj);
    let generation = obj.metadata.generation;
    let mut status = obj.status.clone().unwrap_or_default();
    let result = apply_inner(&obj, &ctx, api, &mut status).await;
    match result {
        Ok(waiting) => {
            // Waiting for the holder of the destination: sooner while it is being deleted.
            let interval = ctx.on_tick(waiting.map_or(interval, |w| w.min(interval)));
            ctx.metrics
                .set_ready(&object_key(&obj), Some(ready_label(&status)));
            if obj.spec.suspend {
                // Nothing to check until the spec changes (which passes the gate).
                ctx.schedule(&obj, Duration::from_secs(86_400), false);
                return Ok(Action::await_change());
            }
            ctx.schedule(&obj, interval, false);
            Ok(Action::requeue(interval))
        }
        Err(error) => {
            let reason = error.reason();
            let message = error.to_string();
            let changed = obj
                .ready_condition()
                .is_none_or(|c| c.reason != reason || c.message != message || c.status != "False");
            status.observed_generation = generation;
            set_ready(&mut status, false, reason, &message, generation);
            ctx.metrics.set_ready(&object_key(&obj), Some("false"));
            if changed {
                ctx.events
                    .publish(&obj, EventType::Warning, reason, "Sync", &message)
                    .await;
            }
            if let Err(e) = patch_status(api, &obj, &status).await {
                warn!(error = %e, "could not write the failure to status");
            }
            Err(error)
        }
    }
}

/// `Ok(Some(wait))`: waiting for the object holding the destination; look again then.
async fn apply_inner(
    obj: &ImageSync,
    ctx: &Context,
    api: &Api<ImageSync>,
    status: &mut ImageSyncStatus,
) -> Result<Option<Duration>> {
    let spec = &obj.spec;
    let generation = obj.metadata.generation;
    if spec.suspend {
        status.observed_generation = generation;
        set_ready(
            status,
            false,
            reasons::SUSPENDED,
            "spec.suspend is true",
            generation,
        );
        return patch_status(api, obj, status).await.map(|()| None);
    }
    let (source, destination) = parse_spec(obj)?;
    // The tenant policy decides before any registry is touched.
    let ambient = ctx.policy_allows(obj, &source, &destination).await?;
    // An earlier object names the same tag: write and delete nothing until it is gone.
    let engine = ctx.engine_for(obj, &source, &destination, ambient).await?;
    let key = destination_key(&destination);
    let rivals = ctx.rivals(obj, &destination).await?;
    if let Some(holder) = rivals.iter().find(|r| ownership::order(r, obj).is_lt()) {
        // Reads only: the source digest it will copy (Terraform reports it at once).
        if let Ok(Some(d)) = ctx.head(&engine, &source, "source").await {
            status.source_digest = Some(d.to_string());
        }
        return wait_for_holder(obj, ctx, api, status, holder, &key).await;
    }
    let inherited = status.conflict.take();
    release_if_moved(obj, ctx, status, &source, &destination).await?;

    let platforms = imagesync_engine::platform::parse_platforms(&spec.platforms)
        .map_err(|e| Error::InvalidSpec(format!("spec.platforms: {e}")))?;
    // Two HEADs when nothing changed, with a selection too (see `known_selection`), and the
    // referrers probe of the digest the destination was left holding (what an unchanged
    // image still wants), all sent together: one round trip, and one wake-up of the
    // runtime for the answers. The probe's answer is used only if that digest is still
    // the one wanted.
    let early = early_probe(obj, status, &platforms);
    let probe = async {
        match &early {
            Some((digest, policy)) => Some(
                engine
                    .referrers_changed(&source, digest, status.referrers_probe.as_deref(), policy)
                    .await,
            ),
            None => None,
        }
    };
    let (selection, destination_digest, probed) = tokio::join!(
        select_platforms(&engine, &source, &platforms, known_selection(status, spec)),
        ctx.head(&engine, &destination, "destination"),
        probe,
    );
    let probed = early.zip(probed).map(|((digest, _), r)| (digest, r));
    let selection = selection?.ok_or_else(|| Error::SourceNotFound {
        reference: spec.source.clone(),
    })?;
    let source_digest = selection.source_digest.clone();
    let destination_digest = destination_digest?;
    Span::current().record("source_digest", source_digest.as_str());
    let mut check = Check {
        obj,
        ctx,
        key,
        wanted: selection.digest.clone(),
        source_digest,
        platforms,
        selection,
        inherited,
        checked: now(),
        probed,
    };

    match decide(
        status,
        &spec.destination,
        check.source_digest.as_str(),
        check.wanted.as_str(),
        destination_digest.as_ref().map(Digest::as_str),
    ) {
        Decision::UpToDate => {
            check.found_up_to_date(status).await;
            check
                .referrers(&engine, (&source, &destination), status)
                .await?
        }
        Decision::Copy(drift) => {
            check
                .copy(api, &engine, (&source, &destination), &drift, status)
                .await?
        }
    }

    let (source_digest, wanted) = (&check.source_digest, &check.wanted);
    status.write_intent = None;
    status.source_digest = Some(source_digest.to_string());
    status.destination_digest = Some(wanted.to_string());
    status.id = Some(destination.id(wanted));
    status.selection = (!spec.platforms.is_empty()).then(|| crate::api::SelectionRecord {
        platforms: spec.platforms.clone(),
        source_digest: source_digest.to_string(),
        digest: wanted.to_string(),
    });
    status.synced_destination = Some(spec.destination.clone());
    status.observed_generation = generation;
    set_ready(
        status,
        true,
        reasons::SYNCED,
        &format!("{} holds {}", spec.destination, wanted),
        generation,
    );
    // An unchanged check writes no status until lastCheckTime is CHECK_TIME_REFRESH old.
    status.last_check_time = Some(check_time(obj.status.as_ref(), status, check.checked));
    patch_status(api, obj, status).await.map(|()| None)
}

/// The referrers probe worth sending with a check's HEADs: of the digest this object left
/// at its destination (`spec.referrers` on, the same destination, a probe on record, and
/// not a new index of selected platforms, which the source has no tags for).
fn early_probe(
    obj: &ImageSync,
    status: &ImageSyncStatus,
    platforms: &[imagesync_engine::Platform],
) -> Option<(Digest, imagesync_engine::ReferrerPolicy)> {
    let policy = crate::referrers::policy(&obj.spec).ok()?;
    if !policy.enabled || status.referrers_probe.is_none() {
        return None;
    }
    if status.synced_destination.as_deref() != Some(obj.spec.destination.as_str()) {
        return None;
    }
    let digest: Digest = status.destination_digest.as_deref()?.parse().ok()?;
    let selected_index = status
        .selection
        .as_ref()
        .is_some_and(|s| s.digest != s.source_digest);
    if selected_index && platforms.len() > 1 {
        return None;
    }
    Some((digest, policy))
}

/// `spec.source` and `spec.destination` as references.
#[allow(clippy::result_large_err)] // the crate's one error type, as every async fn here returns
fn parse_spec(obj: &ImageSync) -> Result<(Reference, Reference)> {
    let source = Reference::parse(&obj.spec.source).map_err(|source| Error::InvalidReference {
        field: "source",
        source,
    })?;
    let destination =
        Reference::parse(&obj.spec.destination).map_err(|source| Error::InvalidReference {
            field: "destination",
            source,
        })?;
    Ok((source, destination))
}

/// The destination moved: clean up the old one (only if this object wrote it and it
/// still holds what was written), and forget it.
async fn release_if_moved(
    obj: &ImageSync,
    ctx: &Context,
    status: &mut ImageSyncStatus,
    source: &Reference,
    destination: &Reference,
) -> Result<()> {
    if let (Some(old), Some(digest)) = (
        status.synced_destination.clone(),
        status.destination_digest.clone(),
    ) {
        if !same_image_reference(&old, destination) {
            release_old_destination(obj, ctx, status, source, &old, &digest).await?;
            status.destination_digest = None;
            status.id = None;
            status.synced_destination = None;
            status.last_sync_time = None;
            status.ownership = None;
            status.uploaded_blobs = None;
        }
    }
    Ok(())
}

/// What a check of source and destination found, for the up-to-date and copy paths.
struct Check<'a> {
    obj: &'a ImageSync,
    ctx: &'a Context,
    /// The destination's canonical key.
    key: String,
    source_digest: Digest,
    /// What the destination must hold: the source digest, or the selection's.
    wanted: Digest,
    /// `spec.platforms`, parsed.
    platforms: Vec<imagesync_engine::Platform>,
    /// What the source resolved to under `platforms`.
    selection: imagesync_engine::Selection,
    /// What the previous holder of the destination handed over, if it was one.
    inherited: Option<ConflictRecord>,
    checked: Time,
    /// The referrers probe sent with the HEADs: of which digest, and whether it changed.
    probed: Option<(Digest, imagesync_engine::Result<bool>)>,
}

impl Check<'_> {
    /// The destination already holds the source digest: record who owns it.
    async fn found_up_to_date(&self, status: &mut ImageSyncStatus) {
        let (obj, ctx, inherited) = (self.obj, self.ctx, self.inherited.as_ref());
        let wanted = &self.wanted;
        ctx.metrics.check("up_to_date");
        let first = status.destination_digest.as_deref() != Some(wanted.as_str())
            || status.synced_destination.as_deref() != Some(obj.spec.destination.as_str());
        if first {
            status.last_sync_time = Some(self.checked.clone());
            if !obj.is_ready() {
                info!(digest = %wanted, "destination already up to date");
            }
        }
        let found = ownership::ownership_when_found(status, &self.key, wanted.as_str(), inherited);
        let handed = inherited.and_then(|c| c.uploaded_blobs.as_deref());
        if let (true, Some(h)) = (ownership::inherits(inherited, wanted.as_str()), handed) {
            // The previous holder's uploads come with its tag.
            status.uploaded_blobs = Some(ownership::merge_uploaded(
                status.uploaded_blobs.as_deref(),
                h,
            ));
        }
        if found == Ownership::Adopted && (first || status.ownership != Some(found)) {
            report_adopted(obj, ctx, status, wanted).await;
        }
        status.ownership = Some(found);
    }

    /// Copies `source` to `destination` (reporting `drift`), with `Syncing` and the write
    /// intent in status first.
    async fn copy(
        &self,
        api: &Api<ImageSync>,
        engine: &Engine,
        (source, destination): (&Reference, &Reference),
        drift: &[Drift],
        status: &mut ImageSyncStatus,
    ) -> Result<()> {
        let (obj, ctx, spec) = (self.obj, self.ctx, &self.obj.spec);
        let source_digest = &self.source_digest;
        let generation = obj.metadata.generation;
        ctx.metrics
            .check(if drift.is_empty() { "copy" } else { "drift" });
        for d in drift {
            report_drift(obj, ctx, d, &spec.destination).await;
        }
        let mut syncing = status.clone();
        syncing.observed_generation = generation;
        syncing.write_intent = Some(ownership::intent(&spec.destination, self.wanted.as_str()));
        set_ready(
            &mut syncing,
            false,
            reasons::SYNCING,
            &format!(
                "copying {} ({}) to {}",
                spec.source, source_digest, spec.destination
            ),
            generation,
        );
        patch_status(api, obj, &syncing).await?;
        *status = syncing;

        let started = Instant::now();
        let outcome = engine.sync(source, destination, &self.sync_options()).await;
        let outcome = match outcome {
            Ok(o) => {
                ctx.metrics
                    .sync_done("synced", o.bytes_uploaded, started.elapsed());
                o
            }
            Err(source) => {
                ctx.metrics.sync_done("failed", 0, started.elapsed());
                return Err(Error::Engine {
                    context: format!("copy {} to {}", spec.source, spec.destination),
                    source,
                });
            }
        };
        info!(
            digest = %outcome.destination_digest,
            bytes = outcome.bytes_uploaded,
            blobs_uploaded = outcome.blobs_uploaded,
            blobs_skipped = outcome.blobs_skipped,
            blobs_mounted = outcome.blobs_mounted,
            elapsed = ?started.elapsed(),
            "synced"
        );
        ctx.events
            .publish(
                obj,
                EventType::Normal,
                reasons::SYNCED,
                "Sync",
                &format!(
                    "copied {} to {} ({}, {} bytes uploaded)",
                    spec.source,
                    spec.destination,
                    outcome.destination_digest,
                    outcome.bytes_uploaded
                ),
            )
            .await;
        crate::referrers::record(status, &outcome, spec.referrers);
        status.last_sync_time = Some(self.checked.clone());
        status.ownership = Some(Ownership::Written);
        status.uploaded_blobs = Some(uploaded_record(
            status,
            self.inherited.as_ref(),
            &uploaded_by(&outcome),
        ));
        Ok(())
    }
}

/// What `source` resolves to under `platforms`: a HEAD, plus a GET of the source index
/// only when its digest is not the one `known` was made from.
async fn select_platforms(
    engine: &imagesync_engine::Engine,
    source: &Reference,
    platforms: &[imagesync_engine::Platform],
    known: Option<imagesync_engine::Selection>,
) -> Result<Option<imagesync_engine::Selection>> {
    engine
        .resolve(source, platforms, known.as_ref())
        .await
        .map_err(|e| Error::Engine {
            context: format!("check source {source}"),
            source: e,
        })
}

/// The selection recorded at the last sync, when `spec.platforms` is still the one it was
/// made with.
fn known_selection(
    status: &ImageSyncStatus,
    spec: &crate::api::ImageSyncSpec,
) -> Option<imagesync_engine::Selection> {
    let record = status.selection.as_ref()?;
    if spec.platforms.is_empty() || record.platforms != spec.platforms {
        return None;
    }
    Some(imagesync_engine::Selection {
        source_digest: record.source_digest.parse().ok()?,
        digest: record.digest.parse().ok()?,
    })
}

/// The blobs a copy uploaded (not skipped, not mounted).
fn uploaded_by(outcome: &imagesync_engine::Outcome) -> Vec<String> {
    outcome.uploaded.iter().map(ToString::to_string).collect()
}

/// This object's record of uploaded blobs after a copy that uploaded `uploaded`: what it
/// recorded before (same destination), what the previous holder handed over, and these.
fn uploaded_record(
    status: &ImageSyncStatus,
    inherited: Option<&ConflictRecord>,
    uploaded: &[String],
) -> Vec<String> {
    let handed = inherited
        .filter(|c| c.written_digest.is_some())
        .and_then(|c| c.uploaded_blobs.as_deref())
        .unwrap_or_default();
    let before = ownership::merge_uploaded(status.uploaded_blobs.as_deref(), handed);
    ownership::merge_uploaded(Some(&before), uploaded)
}

/// Ready=False `DestinationConflict` naming `holder`; nothing is written or deleted.
async fn wait_for_holder(
    obj: &ImageSync,
    ctx: &Context,
    api: &Api<ImageSync>,
    status: &mut ImageSyncStatus,
    holder: &ImageSync,
    key: &str,
) -> Result<Option<Duration>> {
    let generation = obj.metadata.generation;
    let who = ownership::display(holder);
    let message = format!(
        "destination {} is also named by ImageSync {who}, created earlier, which holds it; \
         this object writes and deletes nothing until {who} is gone",
        obj.spec.destination
    );
    let changed = obj.ready_condition().is_none_or(|c| {
        c.reason != reasons::DESTINATION_CONFLICT || c.message != message || c.status != "False"
    });
    status.conflict = Some(ownership::record_of(holder, key));
    status.observed_generation = generation;
    set_ready(
        status,
        false,
        reasons::DESTINATION_CONFLICT,
        &message,
        generation,
    );
    if changed {
        info!(holder = %who, "destination conflict; waiting");
        ctx.events
            .publish(
                obj,
                EventType::Warning,
                reasons::DESTINATION_CONFLICT,
                "Sync",
                &message,
            )
            .await;
    }
    patch_status(api, obj, status).await?;
    let deleting = holder.metadata.deletion_timestamp.is_some();
    Ok(Some(if deleting {
        CONFLICT_POLL
    } else {
        ctx.resync_interval(obj)
    }))
}

impl Check<'_> {
    /// The sync options: the source digest checked, the selection, the referrers.
    fn sync_options(&self) -> SyncOptions {
        crate::referrers::sync_options(
            self.obj,
            self.source_digest.clone(),
            self.platforms.clone(),
            Some(self.selection.clone()),
        )
    }

    /// An up-to-date image: the referrers probe (two HEADs, of the digest the destination
    /// holds); when it changed, the sync that
    /// copies the new referrers, an Event `ReferrersChanged`, and the status record.
    async fn referrers(
        &mut self,
        engine: &Engine,
        (source, destination): (&Reference, &Reference),
        status: &mut ImageSyncStatus,
    ) -> Result<()> {
        let (obj, ctx) = (self.obj, self.ctx);
        if self.wanted != self.source_digest && self.platforms.len() > 1 {
            // A new index of the selected platforms exists only at the destination: the
            // source has no referrer tags for it to probe (see the engine's probe).
            return Ok(());
        }
        let changed = match self.probed.take() {
            Some((digest, changed)) if digest == self.wanted => Some(changed),
            _ => None,
        };
        let found = crate::referrers::check(
            engine,
            source,
            destination,
            &self.wanted,
            self.sync_options(),
            changed,
        )
        .await
        .map_err(|source| Error::Engine {
            context: format!(
                "copy the referrers of {} to {}",
                obj.spec.source, obj.spec.destination
            ),
            source,
        })?;
        let Some(outcome) = found else {
            if !obj.spec.referrers {
                crate::referrers::clear(status);
            }
            return Ok(());
        };
        let before = status.referrer_count.unwrap_or(0);
        crate::referrers::record(status, &outcome, true);
        let written = outcome.referrers.iter().filter(|r| r.written).count();
        if written > 0 {
            ctx.events
            .publish(
                obj,
                EventType::Normal,
                "ReferrersChanged",
                "Sync",
                &format!(
                    "copied {written} new referrer(s) of {} to {} ({} at the destination, {before} before)",
                    obj.spec.source,
                    obj.spec.destination,
                    outcome.referrers.len()
                ),
            )
            .await;
        }
        Ok(())
    }
}

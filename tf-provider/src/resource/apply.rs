//! Apply: create, re-sync and destroy, and the private-state record they keep (what the
//! resource wrote, so that destroy removes only that).

use imagesync_engine::{Digest, ErrorKind, Reference};

use super::{attr, error_diagnostic, id_digest, Model, Ownership, Private};
use crate::backend::{Backend, BackendError, Bookkeeper, Synced, Target};
use crate::codec::Value;
use crate::diag::Diagnostic;

/// The result of applying.
#[derive(Debug, Default)]
pub struct Applied {
    /// New state (`None`: gone).
    pub state: Option<Model>,
    /// New private state.
    pub private: Private,
    /// Diagnostics.
    pub diags: Vec<Diagnostic>,
}

/// Applies a planned change.
pub async fn apply(
    backend: &dyn Backend,
    prior: Option<Model>,
    planned: Option<Model>,
    private: Private,
) -> Applied {
    match (prior, planned) {
        (None, None) => Applied::default(),
        (Some(prior), None) => destroy(backend, prior, private).await,
        // A create starts a new record, even when Terraform hands over the private state
        // of the instance it replaces.
        (None, Some(planned)) => sync(backend, None, planned, Private::default()).await,
        (Some(prior), Some(planned)) => {
            if needs_sync(&prior, &planned) {
                sync(backend, Some(prior), planned, private).await
            } else {
                // Same digest: nothing to copy (e.g. `source` retagged).
                Applied {
                    state: Some(planned),
                    private,
                    diags: Vec::new(),
                }
            }
        }
    }
}

/// An update copies when the image at the destination is to change: a new source digest
/// (the tag moved), drift (the refreshed `id` is not the planned one) or anything unknown.
fn needs_sync(prior: &Model, planned: &Model) -> bool {
    planned.copied_referrers.is_unknown()
        || planned.id.is_unknown()
        || planned.source_digest.is_unknown()
        || planned.source_digest != prior.source_digest
        || planned.id != prior.id
}

/// The target of a sync, with the Kubernetes-mode defaults filled in.
fn sync_target(backend: &dyn Backend, planned: &mut Model) -> Result<Target, Diagnostic> {
    super::fill_identity(
        backend,
        planned,
        |v| v.is_unknown() || v.is_null(),
        Value::Null,
    );
    planned
        .target()?
        .ok_or_else(|| Diagnostic::error("source and destination must be known at apply time", ""))
}

/// The private state after a sync. `private` is the record so far: empty for a create,
/// the prior instance's for an in-place re-sync (same destination).
fn record_sync(
    mut private: Private,
    creating: bool,
    synced: &Synced,
    diags: &mut Vec<Diagnostic>,
) -> Private {
    // The tag moved on from a digest this resource wrote (or was given by an import):
    // keep that manifest, untagged, for whatever is pinned to the old `id`.
    if let Some(old) = private.written.clone() {
        let ours = private.ownership != Some(Ownership::Adopted);
        if !creating
            && ours
            && old != synced.destination_digest
            && !synced.adopted
            && !private.record_previous(old.clone())
        {
            diags.push(Diagnostic::warning(
                "Earlier image not recorded",
                format!(
                    "This resource already keeps {} earlier images; {old} stays in the \
                     registry untagged and destroy will not delete it (use the registry's \
                     garbage collection).",
                    crate::private::MAX_PREVIOUS
                ),
            ));
        }
    }
    private.written = Some(synced.destination_digest.clone());
    private.ownership = if !synced.adopted {
        // Our own manifest PUT wrote the tag.
        Some(Ownership::Written)
    } else if creating {
        // It was there before us: someone else's image, never ours to delete.
        Some(Ownership::Adopted)
    } else {
        // Re-sync of the same destination that found it already in place: unchanged.
        private.ownership
    };
    if !synced.adopted {
        private.record_uploaded(synced.uploaded.iter().cloned());
    }
    private.selected_from = synced.selected_from.clone();
    private
}

/// The selection the prior state holds (its `source_digest`, made from the source digest
/// in private state), when `planned` selects the same platforms.
pub(crate) fn known_selection(
    prior: Option<&Model>,
    planned: &Model,
    private: &Private,
) -> Option<imagesync_engine::Selection> {
    let prior = prior?;
    if prior.platforms != planned.platforms || planned.platforms.is_null() {
        return None;
    }
    Some(imagesync_engine::Selection {
        source_digest: private.selected_from.clone()?,
        digest: prior.source_digest.as_str()?.parse().ok()?,
    })
}

async fn sync(
    backend: &dyn Backend,
    prior: Option<Model>,
    mut planned: Model,
    private: Private,
) -> Applied {
    // A failed apply keeps the prior state and its record.
    let failed = |prior: Option<Model>, private: Private, d: Diagnostic| Applied {
        state: prior,
        private,
        diags: vec![d],
    };
    let mut target = match sync_target(backend, &mut planned) {
        Ok(t) => t,
        Err(e) => return failed(prior, private, e),
    };
    // The plan saw the referrers change (or the options, or a new image): look in full.
    target.referrers_probe = if planned.copied_referrers.is_unknown() {
        Some(String::new())
    } else {
        private.referrers_probe.clone()
    };
    target.known = known_selection(prior.as_ref(), &planned, &private);
    let expect = planned
        .source_digest
        .as_str()
        .and_then(|d| d.parse::<Digest>().ok());
    let synced = match backend.sync(&target, expect.clone()).await {
        Ok(s) => s,
        Err(e) => {
            let what = if e.is_not_found() {
                "Source image not found"
            } else {
                "Cannot copy the image"
            };
            return failed(
                prior,
                private,
                error_diagnostic(what, &e, Some(attr::SOURCE)),
            );
        }
    };
    if synced.destination_digest != synced.source_digest
        || expect
            .as_ref()
            .is_some_and(|e| *e != synced.destination_digest)
    {
        let detail = format!(
            "Planned {}, source {}, destination now {}.",
            expect.map(|d| d.to_string()).unwrap_or_default(),
            synced.source_digest,
            synced.destination_digest
        );
        return failed(
            prior,
            private,
            Diagnostic::error("Copied image has an unexpected digest", detail),
        );
    }
    let mut diags = Vec::new();
    let mut private = record_sync(private, prior.is_none(), &synced, &mut diags);
    record_referrers(&mut planned, prior.as_ref(), &mut private, &synced, &target);
    planned.id = Value::String(synced.id);
    planned.source_digest = Value::String(synced.source_digest.to_string());
    if planned.delete_layers.is_unknown() || planned.delete_layers.is_null() {
        planned.delete_layers = Value::Bool(true);
    }
    if private.ownership == Some(Ownership::Adopted) && backend.bookkeeper() == Bookkeeper::Resource
    {
        diags.push(adopted_warning(&target.destination, "was adopted"));
    }
    Applied {
        state: Some(planned),
        private,
        diags,
    }
}

/// `copied_referrers` and the referrers record after a sync: the planned value when the
/// plan knew it; else the list the sync found when it looked in full (direct mode: the
/// engine's; Kubernetes mode: the object's `status.referrers`), else the prior one; the probe for the next plan; what it wrote.
fn record_referrers(
    planned: &mut Model,
    prior: Option<&Model>,
    private: &mut Private,
    synced: &Synced,
    target: &Target,
) {
    let r = &synced.referrers;
    planned.copied_referrers = if planned.copied_referrers.is_known() {
        // The plan promised this value; Terraform refuses an apply that changes it.
        planned.copied_referrers.clone()
    } else if r.checked || !target.referrers.enabled {
        super::referrers_value(&r.list)
    } else {
        match prior.map(|p| &p.copied_referrers) {
            Some(v @ Value::List(_)) => v.clone(),
            _ => Value::List(Vec::new()),
        }
    };
    if planned.referrers.is_unknown() || planned.referrers.is_null() {
        planned.referrers = Value::Bool(target.referrers.enabled);
    }
    private.referrers_probe = r.probe.clone();
    private.record_referrers(
        r.list
            .iter()
            .filter(|x| x.written)
            .map(|x| x.digest.clone()),
    );
}

fn adopted_warning(destination: &Reference, what: &str) -> Diagnostic {
    Diagnostic::warning(
        format!("Destination {what}: this resource did not write it"),
        format!(
            "{destination} already held this image when the resource was created, so imagesync \
             wrote nothing there and will not delete it: destroying (or moving) this resource \
             leaves the tag and its layers in place. To let Terraform delete it, remove the \
             resource from the state and `terraform import` it (the user then declares the tag \
             as this resource's)."
        ),
    )
}

/// What destroy may remove. When the resource keeps the record: the referrers and the
/// blobs it wrote; without a record (an earlier provider version, or an import) no blob
/// is a candidate. When the controller keeps it, the controller decides.
fn destroy_target(
    mut target: Target,
    private: &Private,
    bookkeeper: Bookkeeper,
) -> (Target, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    if bookkeeper == Bookkeeper::Controller {
        return (target, diags);
    }
    // The referrers this resource wrote go with the image (layers kept or not).
    target.owned_referrers = private.referrers.clone();
    if !target.delete_layers {
        return (target, diags);
    }
    let recorded = private.uploaded.clone().unwrap_or_default();
    if private.uploaded.is_none() {
        diags.push(Diagnostic::warning(
            format!("Layers of {} kept", target.destination),
            "This resource has no record of the blobs it uploaded (it was imported, or created \
             by a provider version that kept no such record), so destroy deletes the tag but no layers. \
             Delete unused layers with the registry's garbage collection.",
        ));
    } else if private.truncated {
        diags.push(Diagnostic::warning(
            format!("Some layers of {} kept", target.destination),
            format!(
                "This resource uploaded more than {} blobs and recorded only that many; the \
                 others are left in place.",
                crate::private::MAX_RECORDED_BLOBS
            ),
        ));
    }
    target.only_blobs = Some(recorded);
    (target, diags)
}

async fn destroy(backend: &dyn Backend, prior: Model, private: Private) -> Applied {
    let target = match prior.target() {
        Ok(Some(t)) => t,
        Ok(None) => return Applied::default(),
        Err(d) => {
            return Applied {
                state: Some(prior),
                private,
                diags: vec![d],
            }
        }
    };
    let bookkeeper = backend.bookkeeper();
    if bookkeeper == Bookkeeper::Resource && private.ownership == Some(Ownership::Adopted) {
        tracing::info!(destination = %target.destination, "adopted, not written by us: left in place");
        return Applied {
            state: None,
            private: Private::default(),
            diags: vec![adopted_warning(&target.destination, "left in place")],
        };
    }
    let (target, mut diags) = destroy_target(target, &private, bookkeeper);
    if let Err(e) = delete_previous(backend, &target, &private, &mut diags).await {
        return Applied {
            state: Some(prior),
            private,
            diags: vec![e],
        };
    }
    let ours = private
        .written
        .clone()
        .or_else(|| prior.source_digest.as_str().and_then(|d| d.parse().ok()))
        .or_else(|| prior.id.as_str().and_then(id_digest));
    let destination = target.destination.clone();
    match backend.delete(&target, ours).await {
        Ok(report) => {
            diags.extend(
                report
                    .warnings
                    .into_iter()
                    .map(|w| Diagnostic::warning(format!("While deleting {destination}"), w)),
            );
            Applied {
                state: None,
                private: Private::default(),
                diags,
            }
        }
        Err(e) => {
            // Keep the warnings so far (layers kept, earlier images left in place).
            let mut failed = delete_failed(prior, private, &destination, e);
            diags.append(&mut failed.diags);
            failed.diags = diags;
            failed
        }
    }
}

/// Deletes the earlier images this resource kept for pinned users (by digest: a manifest
/// some tag still names is kept by the engine), before the tag, so that their blobs are
/// candidates for the tag's layer sweep.
async fn delete_previous(
    backend: &dyn Backend,
    target: &Target,
    private: &Private,
    diags: &mut Vec<Diagnostic>,
) -> Result<(), Diagnostic> {
    for old in &private.previous {
        let mut earlier = target.clone();
        earlier.destination = target.destination.with_digest(old.clone());
        earlier.destination_text = earlier.destination.to_string();
        match backend.delete(&earlier, Some(old.clone())).await {
            Ok(report) => diags.extend(report.warnings.into_iter().map(|w| {
                Diagnostic::warning(format!("While deleting {}", earlier.destination), w)
            })),
            // Deletes disabled: the tag's delete reports it and leaves the state.
            Err(e @ BackendError::Engine(_)) if e.kind() == ErrorKind::Unsupported => {
                diags.push(Diagnostic::warning(
                    format!("Earlier image {} left in place", earlier.destination),
                    crate::diag::cause_chain(&e),
                ));
            }
            Err(e) => {
                return Err(error_diagnostic(
                    "Cannot delete an earlier image of the destination",
                    &e,
                    Some(attr::DESTINATION),
                ))
            }
        }
    }
    Ok(())
}

fn delete_failed(
    prior: Model,
    private: Private,
    destination: &Reference,
    e: BackendError,
) -> Applied {
    let gone = |d: Diagnostic| Applied {
        state: None,
        private: Private::default(),
        diags: vec![d],
    };
    match e {
        e if e.is_not_owned() => gone(Diagnostic::warning(
            "Destination left in place: it is not ours any more",
            format!("{e}\n\nSomething else now owns the tag, so destroy did not delete it."),
        )),
        // The registry refuses manifest DELETEs (e.g. distribution with
        // `storage.delete.enabled: false`): nothing was changed and nothing ever will be,
        // so keeping the resource would only make every destroy fail.
        e @ BackendError::Engine(_) if e.kind() == ErrorKind::Unsupported => {
            gone(Diagnostic::warning(
                "Registry does not allow deletes: image left in place",
                format!(
                    "{e}\n\nThe registry does not allow deleting images, so destroy removed \
                     {destination} from the Terraform state only; the image is still in the \
                     registry. Delete it there (or enable deletes) if it should go."
                ),
            ))
        }
        e => Applied {
            state: Some(prior),
            private,
            diags: vec![error_diagnostic(
                "Cannot delete the destination image",
                &e,
                Some(attr::DESTINATION),
            )],
        },
    }
}

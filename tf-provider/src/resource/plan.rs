//! Plan: the image part (what the source resolves to, replacement, drift) and the
//! referrers part (whether an apply copies them again).

use imagesync_engine::{Digest, ErrorKind, Reference};

use super::{apply, attr, error_diagnostic, fill_identity, make_id, parse_ref, Model, Private};
use crate::backend::{Backend, SourceAtPlan};
use crate::codec::Value;
use crate::diag::Diagnostic;

/// The result of planning.
#[derive(Debug, Default)]
pub struct Planned {
    /// Planned state (`None`: destroy).
    pub state: Option<Model>,
    /// Attributes whose change forces replacement.
    pub requires_replace: Vec<&'static str>,
    /// Diagnostics.
    pub diags: Vec<Diagnostic>,
}

/// What the backend told the plan about `source` (`None` while `source` is unknown).
/// `Err` for a malformed reference.
async fn source_at_plan(
    backend: &dyn Backend,
    source: &Value,
    platforms: &[imagesync_engine::Platform],
    known: Option<&imagesync_engine::Selection>,
) -> Result<Option<SourceAtPlan>, Diagnostic> {
    Ok(match parse_ref(source, attr::SOURCE)? {
        Some(reference) => Some(backend.plan_source(&reference, platforms, known).await),
        None => None,
    })
}

/// The source digest a plan uses (`None`: not found; `Value::Unknown` while the source
/// is unknown or followed). A create cannot do without the source, so an unreachable
/// registry is an error; an existing resource keeps the digest it has (destroy, and the
/// refresh before it, touch only the destination), with a warning.
fn resolved_digest(
    resolved: Option<SourceAtPlan>,
    existing: Option<&Value>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Value> {
    match resolved {
        None | Some(SourceAtPlan::Followed) => Some(Value::Unknown),
        Some(SourceAtPlan::Digest(d)) => Some(Value::String(d.to_string())),
        Some(SourceAtPlan::Missing) => None,
        // A selection the source cannot give (a platform it lacks) is the
        // configuration's fault, not the registry's: an error, existing resource or not.
        Some(SourceAtPlan::Failed(e))
            if existing.is_some() && e.kind() != ErrorKind::InvalidInput =>
        {
            let d = error_diagnostic("Cannot check the source image", &e, Some(attr::SOURCE));
            diags.push(
                Diagnostic::warning(
                    d.summary,
                    format!(
                        "{}\n\nThe copy at the destination and the state are kept as they are; \
                         the source is checked again on the next plan.",
                        d.detail
                    ),
                )
                .at(attr::SOURCE),
            );
            existing.cloned()
        }
        Some(SourceAtPlan::Failed(e)) => {
            diags.push(error_diagnostic(
                "Cannot resolve the source image",
                &e,
                Some(attr::SOURCE),
            ));
            None
        }
    }
}

/// The `id` a sync of `source_digest` to `destination` will report, when certain: a copy
/// is byte for byte, so the destination holds the source's digest.
fn planned_id(planned: &Model, destination: Option<&Reference>) -> Value {
    match (
        destination,
        planned.source_digest.as_str(),
        planned.destination.as_str(),
    ) {
        (Some(dst), Some(d), Some(text)) => match d.parse::<Digest>() {
            Ok(d) => Value::String(make_id(text, dst, &d)),
            Err(_) => Value::Unknown,
        },
        _ => Value::Unknown,
    }
}

/// Plans a change. `prior` is the refreshed state, `proposed` Terraform's proposal.
pub async fn plan(backend: &dyn Backend, prior: Option<Model>, proposed: Option<Model>) -> Planned {
    plan_with_private(backend, prior, proposed, &Private::default()).await
}

/// [`plan`] with the prior private state: its record of the last selection spares a plan
/// with `platforms` the read of the source index while the source is unchanged, and its
/// referrers probe (recorded by the last apply) tells whether the referrers changed.
pub async fn plan_with_private(
    backend: &dyn Backend,
    prior: Option<Model>,
    proposed: Option<Model>,
    private: &Private,
) -> Planned {
    let Some(mut planned) = proposed else {
        return Planned::default();
    };
    let prior_for_referrers = prior.clone();
    let mut out = plan_image(backend, prior, &mut planned, private).await;
    if out.state.is_some() {
        if let Err(d) =
            plan_referrers(backend, prior_for_referrers.as_ref(), &mut planned, private).await
        {
            out.diags.push(d);
        }
        out.state = Some(planned);
    }
    out
}

/// `copied_referrers`: unknown (an apply copies them) when the resource is new or
/// re-synced, the options changed, or (direct mode, image unchanged) the source's
/// referrers probe differs from the one recorded; else the prior list. A probe that
/// fails only warns.
async fn plan_referrers(
    backend: &dyn Backend,
    prior: Option<&Model>,
    planned: &mut Model,
    private: &Private,
) -> Result<(), Diagnostic> {
    if planned.referrers.is_null() {
        planned.referrers = Value::Bool(true);
    }
    let policy = planned.referrer_policy()?;
    let Some(prior) = prior else {
        planned.copied_referrers = Value::Unknown;
        return Ok(());
    };
    let same_options = prior.referrers.as_bool().unwrap_or(true) == policy.enabled
        && prior.referrer_types == planned.referrer_types;
    let same_image = planned.source_digest.is_known()
        && planned.source_digest == prior.source_digest
        && planned.id == prior.id;
    if !same_options || !same_image || !prior.copied_referrers.is_known() {
        planned.copied_referrers = Value::Unknown;
        return Ok(());
    }
    planned.copied_referrers = prior.copied_referrers.clone();
    let (Ok(Some(mut target)), Some(digest)) = (
        planned.target(),
        planned
            .source_digest
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok()),
    ) else {
        return Ok(());
    };
    if target.platforms.len() > 1 && private.selected_from.as_ref() != Some(&digest) {
        // A new index of the selected platforms exists only at the destination: the
        // source has no referrer tags for it to probe (see the engine's probe).
        return Ok(());
    }
    target.referrers_probe = private.referrers_probe.clone();
    match backend.referrers_changed(&target, &digest).await {
        Ok(true) => planned.copied_referrers = Value::Unknown,
        Ok(false) => {}
        Err(e) => {
            return Err(Diagnostic::warning(
                "Cannot check the source's referrers",
                format!(
                    "{}\n\nThe recorded referrers are kept.",
                    crate::diag::cause_chain(&e)
                ),
            )
            .at(attr::REFERRERS))
        }
    }
    Ok(())
}

/// The image part of [`plan`].
async fn plan_image(
    backend: &dyn Backend,
    prior: Option<Model>,
    planned: &mut Model,
    private: &Private,
) -> Planned {
    let mut out = Planned::default();
    if planned.delete_layers.is_null() {
        planned.delete_layers = Value::Bool(true);
    }
    let destination = match parse_ref(&planned.destination, attr::DESTINATION) {
        Ok(d) => d,
        Err(d) => {
            out.diags.push(d);
            return out;
        }
    };
    out.diags
        .extend(crate::timeouts::validate(&planned.timeouts));
    out.diags.extend(crate::spec_fields::validate(planned));
    if !fill_identity(backend, planned, Value::is_null, Value::Unknown) {
        out.diags
            .extend(crate::spec_fields::kube_only_in_direct_mode(planned));
        for a in [attr::NAMESPACE, attr::NAME] {
            let v = if a == attr::NAMESPACE {
                &planned.namespace
            } else {
                &planned.name
            };
            if !v.is_null() {
                out.diags.push(
                    Diagnostic::error(
                        format!("{a:?} is only used in Kubernetes mode"),
                        "Remove it, or configure the provider's `kubernetes` block.",
                    )
                    .at(a),
                );
            }
        }
    }
    let platforms = match crate::spec_fields::platforms(&planned.platforms) {
        Ok(p) => p,
        Err(d) => {
            out.diags.push(d);
            return out;
        }
    };
    let known = apply::known_selection(prior.as_ref(), planned, private);
    let at_plan = match source_at_plan(backend, &planned.source, &platforms, known.as_ref()).await {
        Ok(r) => r,
        Err(d) => {
            out.diags.push(d);
            return out;
        }
    };
    let followed = matches!(at_plan, Some(SourceAtPlan::Followed));
    let existing = prior.as_ref().map(|p| &p.source_digest);
    let resolved = resolved_digest(at_plan, existing, &mut out.diags);
    if crate::diag::has_errors(&out.diags) {
        return out;
    }
    let check_pinned = |digest: &Value, diags: &mut Vec<Diagnostic>| {
        if let (Some(dst), Some(d)) = (&destination, digest.as_str()) {
            if let Some(pinned) = dst.digest() {
                if pinned.as_str() != d {
                    diags.push(
                        Diagnostic::error(
                            "Destination digest does not match the source",
                            format!(
                                "The destination pins {pinned}, but the source resolves to {d}. A copy keeps \
                                 the digest, so it could never match; drop the digest from the destination."
                            ),
                        )
                        .at(attr::DESTINATION),
                    );
                }
            }
        }
    };

    match prior {
        None => {
            // Create. A source that does not exist yet (e.g. written by another resource
            // in the same apply) is resolved at apply time.
            planned.source_digest = resolved.unwrap_or(Value::Unknown);
            // Unknown while the source digest is (followed, or resolved at apply).
            planned.id = planned_id(planned, destination.as_ref());
            check_pinned(&planned.source_digest, &mut out.diags);
        }
        Some(prior) => {
            for (a, new, old) in [
                (attr::DESTINATION, &planned.destination, &prior.destination),
                (attr::NAMESPACE, &planned.namespace, &prior.namespace),
                (attr::NAME, &planned.name, &prior.name),
            ] {
                if new != old {
                    out.requires_replace.push(a);
                }
            }
            if !out.requires_replace.is_empty() {
                planned.source_digest = resolved.unwrap_or(Value::Unknown);
                planned.id = planned_id(planned, destination.as_ref());
            } else if followed {
                // Whoever syncs follows the source (Kubernetes mode: the controller): a
                // spec change is applied in place, and nothing else plans a sync.
                let spec_changed = planned.platforms != prior.platforms
                    || planned.resync_interval != prior.resync_interval
                    || planned.source_secret_ref != prior.source_secret_ref
                    || planned.destination_secret_ref != prior.destination_secret_ref;
                if planned.source != prior.source
                    || planned.delete_layers != prior.delete_layers
                    || spec_changed
                {
                    planned.id = Value::Unknown;
                    planned.source_digest = Value::Unknown;
                } else {
                    planned.id = prior.id.clone();
                    planned.source_digest = prior.source_digest.clone();
                }
            } else {
                let current = match resolved {
                    Some(v) => v,
                    None => {
                        out.diags.push(
                            Diagnostic::warning(
                                "Source image not found",
                                format!(
                                    "{} does not exist (any more). The copy at the destination is kept; \
                                     nothing is re-synced until the source exists again.",
                                    planned.source.as_str().unwrap_or_default()
                                ),
                            )
                            .at(attr::SOURCE),
                        );
                        prior.source_digest.clone()
                    }
                };
                // The tag moved: an in-place re-sync that copies the new image, then moves
                // the tag; the digest it replaces stays (untagged) until destroy. Drift
                // (the destination tag elsewhere) re-syncs in place too.
                planned.source_digest = current;
                planned.id = planned_id(planned, destination.as_ref());
            }
            check_pinned(&planned.source_digest, &mut out.diags);
        }
    }
    out.state = Some(planned.clone());
    out
}

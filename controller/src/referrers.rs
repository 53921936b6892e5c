//! Signatures, attestations and SBOMs of an `ImageSync` (`spec.referrers`): the policy
//! from the spec, the status record, and the check of an up-to-date image (the engine's
//! two-HEAD probe; a change runs a sync that copies what is new).

use imagesync_engine::{
    Digest, Engine, Outcome, Platform, Reference, ReferrerPolicy, Selection, SyncOptions,
};

use crate::api::{ImageSync, ImageSyncSpec, ImageSyncStatus, ReferrerStatus};

/// The most referrers listed in status (the count is still exact).
pub const MAX_STATUS_REFERRERS: usize = 256;

/// The engine policy `spec` asks for; `Err` (for `InvalidSpec`) on an invalid type list.
pub fn policy(spec: &ImageSyncSpec) -> Result<ReferrerPolicy, String> {
    ReferrerPolicy::checked(spec.referrers, &spec.referrer_types)
        .map_err(|e| format!("spec.referrerTypes: {e}"))
}

/// Sync options for `obj`: the source digest checked, its platform selection
/// (`platforms`, and `known`, what it resolved to), its referrer policy and the probe
/// recorded in status.
pub fn sync_options(
    obj: &ImageSync,
    expect: Digest,
    platforms: Vec<Platform>,
    known: Option<Selection>,
) -> SyncOptions {
    let status = obj.status.clone().unwrap_or_default();
    SyncOptions {
        expect_source_digest: Some(expect),
        platforms,
        known,
        referrers: policy(&obj.spec).unwrap_or_else(|_| ReferrerPolicy::off()),
        referrers_probe: status.referrers_probe,
        ..SyncOptions::default()
    }
}

/// Records what a sync found in `status`: the full list when the engine looked in full
/// (a referrer recorded as written stays so), the probe, the count. With referrers off,
/// the list is cleared.
pub fn record(status: &mut ImageSyncStatus, outcome: &Outcome, enabled: bool) {
    if !enabled {
        clear(status);
        return;
    }
    status.referrers_probe = outcome.referrers_probe.clone();
    if !outcome.referrers_checked {
        return;
    }
    let before = std::mem::take(&mut status.referrers);
    let mut list: Vec<ReferrerStatus> = outcome
        .referrers
        .iter()
        .map(|r| ReferrerStatus {
            digest: r.digest.to_string(),
            artifact_type: r.artifact_type.clone(),
            written: r.written
                || before
                    .iter()
                    .any(|b| b.written && b.digest == r.digest.as_str()),
        })
        .collect();
    list.dedup_by(|a, b| a.digest == b.digest);
    status.referrer_count = Some(list.len() as i64);
    list.truncate(MAX_STATUS_REFERRERS);
    status.referrers = list;
}

/// Referrers off: nothing listed (what was written stays recorded for deletion).
pub fn clear(status: &mut ImageSyncStatus) {
    status.referrers.retain(|r| r.written);
    status.referrer_count = None;
    status.referrers_probe = None;
}

/// The referrers this object wrote, for deletion.
pub fn owned(status: &ImageSyncStatus) -> Vec<Digest> {
    status
        .referrers
        .iter()
        .filter(|r| r.written)
        .filter_map(|r| r.digest.parse().ok())
        .collect()
}

/// The check of an up-to-date image: `Ok(None)` when the probe (two HEADs) is unchanged
/// or referrers are off; otherwise the outcome of a sync (with `options`, from
/// [`sync_options`]) that copied the referrers. `digest` is the digest the destination
/// holds (with a platform selection, the selection's, not the source index's): the
/// referrers followed are those of the manifests that were copied.
pub async fn check(
    engine: &Engine,
    source: &Reference,
    destination: &Reference,
    digest: &Digest,
    options: SyncOptions,
    probed: Option<imagesync_engine::Result<bool>>,
) -> imagesync_engine::Result<Option<Outcome>> {
    if !options.referrers.enabled {
        return Ok(None);
    }
    let changed = match probed {
        Some(changed) => changed?,
        None => {
            let recorded = options.referrers_probe.as_deref();
            engine
                .referrers_changed(source, digest, recorded, &options.referrers)
                .await?
        }
    };
    if !changed {
        return Ok(None);
    }
    tracing::info!(%source, %destination, "the source's referrers changed; copying");
    engine.sync(source, destination, &options).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagesync_engine::Referrer;

    fn d(n: u8) -> Digest {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
            .parse()
            .unwrap()
    }

    fn outcome(referrers: Vec<Referrer>, checked: bool) -> Outcome {
        Outcome {
            source_digest: d(1),
            destination_digest: d(1),
            id: String::new(),
            up_to_date: true,
            bytes_uploaded: 0,
            blobs_uploaded: 0,
            blobs_skipped: 0,
            blobs_mounted: 0,
            manifests_pushed: 0,
            uploaded: Vec::new(),
            referrers,
            referrers_probe: Some("p".into()),
            referrers_checked: checked,
        }
    }

    fn referrer(n: u8, written: bool) -> Referrer {
        Referrer {
            digest: d(n),
            artifact_type: "a/b".into(),
            subject: d(1),
            tag: None,
            written,
        }
    }

    #[test]
    fn status_keeps_what_this_object_wrote() {
        let mut status = ImageSyncStatus::default();
        record(&mut status, &outcome(vec![referrer(2, true)], true), true);
        assert_eq!(status.referrer_count, Some(1));
        // A later sync finds it already there: still ours.
        let later = outcome(vec![referrer(2, false), referrer(3, false)], true);
        record(&mut status, &later, true);
        assert_eq!(owned(&status), vec![d(2)]);
        assert_eq!(status.referrer_count, Some(2));
        // An unchanged probe keeps the list.
        record(&mut status, &outcome(Vec::new(), false), true);
        assert_eq!(status.referrers.len(), 2);
        record(&mut status, &outcome(Vec::new(), false), false);
        assert!(status.referrer_count.is_none());
        assert_eq!(owned(&status), vec![d(2)], "still ours to delete");
    }

    /// Hostile: a tenant's type list is checked (junk and floods refused).
    #[test]
    fn invalid_referrer_types_are_an_invalid_spec() {
        let mut spec = ImageSyncSpec {
            source: "a".into(),
            destination: "b".into(),
            resync_interval: None,
            deletion_policy: Default::default(),
            delete_layers: true,
            source_secret_ref: None,
            destination_secret_ref: None,
            suspend: false,
            referrers: true,
            referrer_types: vec!["not a type".into()],
            platforms: Vec::new(),
        };
        assert!(policy(&spec).is_err());
        spec.referrer_types = (0..40).map(|i| format!("a/t{i}")).collect();
        assert!(policy(&spec).is_err());
        spec.referrer_types = vec!["text/spdx+json".into()];
        assert!(policy(&spec).is_ok());
    }
}

//! Referrers follow the image: signatures, attestations and SBOMs of the copied
//! manifest (and of each child of an index) are found at the source and copied byte
//! for byte with the same rules as images: blobs first, then manifests by digest, and
//! last the tags and fallback-index entries that make them findable.
//!
//! Found at the source by [`crate::discover`]: the OCI 1.1 referrers API or the
//! `sha256-<hex>` fallback tag's index, and cosign's `sha256-<hex>.sig|.att|.sbom` tags.
//!
//! Made findable at the destination:
//! - a referrer with a `subject`: pushing it is enough where the registry answers the
//!   PUT with `OCI-Subject` (it has the referrers API); otherwise its entry is merged into
//!   the destination's fallback index ([`crate::fallback`]);
//! - a cosign tag is copied as a tag. A destination tag that holds signatures the source
//!   tag lacks (someone signed the mirror) is left alone, with a warning.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use parking_lot::Mutex;
use serde_json::Value;

use crate::client::Client;
use crate::copy::{collect_children, Emit, Node};
use crate::discover::{discover, in_order, is_new_index, probe, Found, EMPTY_PROBE};
use crate::error::{Error, ErrorKind, Result};
use crate::fallback;
use crate::manifest::{Descriptor, Manifest};
use crate::reference::{Digest, Reference};
use crate::transfer::transfer_blobs;
use crate::{Engine, Outcome, Referrer, SyncOptions};

/// Destination reads and writes of referrers in flight at once.
const PARALLEL: usize = 8;

/// The image whose referrers follow it.
pub(crate) struct Image {
    /// The digest the destination's tag holds (with a selection, not the source's).
    pub(crate) top: Digest,
    /// The source's digest.
    pub(crate) source_digest: Digest,
}

/// What [`Hook::look`] found.
#[derive(Default)]
pub(crate) struct Looked {
    /// The probe to record ([`Outcome::referrers_probe`]).
    probe: Option<String>,
    /// The source was looked at in full ([`Outcome::referrers_checked`]).
    checked: bool,
    /// The referrers to copy.
    found: Vec<Found>,
}

/// What the copy of an image hands to the referrer copy.
pub(crate) struct Hook<'a> {
    engine: &'a Engine,
    src: &'a Client,
    dst: &'a Client,
    emit: &'a Emit,
}

impl<'a> Hook<'a> {
    pub(crate) fn new(
        engine: &'a Engine,
        src: &'a Client,
        dst: &'a Client,
        emit: &'a Emit,
    ) -> Hook<'a> {
        Hook {
            engine,
            src,
            dst,
            emit,
        }
    }

    /// Copies the referrers of the image `outcome` describes (and of its `children`;
    /// `None`: the image was up to date, read them from the source unless the probe is
    /// unchanged) and records them in `outcome`: [`Hook::look`], then [`Hook::write`].
    pub(crate) async fn follow(
        &self,
        source: &Reference,
        destination: &Reference,
        children: Option<Vec<Digest>>,
        options: &SyncOptions,
        outcome: &mut Outcome,
    ) -> Result<()> {
        let image = Image {
            top: outcome.destination_digest.clone(),
            source_digest: outcome.source_digest.clone(),
        };
        let looked = self
            .look(source, destination, &image, children, options)
            .await?;
        self.write(source, destination, looked, outcome).await
    }

    /// Finds the referrers to copy, reading the source only (and, for an up-to-date new
    /// index of several platforms, the destination's copy of it). A cold copy runs this
    /// while its blobs are in flight; nothing is written until [`Hook::write`].
    pub(crate) async fn look(
        &self,
        source: &Reference,
        destination: &Reference,
        image: &Image,
        children: Option<Vec<Digest>>,
        options: &SyncOptions,
    ) -> Result<Looked> {
        let policy = &options.referrers;
        if !policy.enabled {
            return Ok(Looked::default());
        }
        // The manifest the destination's tag holds: with a platform selection, the
        // selected child or the new index of the selected entries, not the source index.
        // Referrers follow the manifests that were copied.
        let top = &image.top;
        // Taken before discovery: a referrer added meanwhile changes the next probe. A
        // new index (several platforms selected) is not at the source, so it has no
        // tags there: its probe is known without a request. Referrers added later to
        // its children are copied when the image changes or a full look is asked for
        // (a recorded probe that differs), not found by the probe.
        let probe = if is_new_index(top, &image.source_digest, options) {
            Some(EMPTY_PROBE.to_string())
        } else {
            probe(self.src, source, top, policy).await?
        };
        let recorded = options.referrers_probe.as_deref().unwrap_or(EMPTY_PROBE);
        if children.is_none() && probe.as_deref() == Some(recorded) {
            // The image is up to date and its probe unchanged since the recorded sync
            // (or, without a record, the source has neither tag): HEADs only.
            tracing::debug!(%source, "referrers probe unchanged; not looking further");
            return Ok(Looked {
                probe,
                ..Looked::default()
            });
        }
        let children = match children {
            Some(c) => c,
            None => self.copied_children(source, destination, image).await?,
        };
        // A new index (several platforms selected) exists only at the destination: it
        // has no referrers at the source, so only its children are looked up there.
        let mut subjects = Vec::new();
        if *top == image.source_digest || children.is_empty() {
            subjects.push(top.clone());
        }
        subjects.extend(children);
        let found = discover(self.src, source, subjects, policy).await?;
        Ok(Looked {
            probe,
            checked: true,
            found,
        })
    }

    /// Copies what [`Hook::look`] found (the image is complete at the destination by
    /// now) and records it in `outcome`.
    pub(crate) async fn write(
        &self,
        source: &Reference,
        destination: &Reference,
        looked: Looked,
        outcome: &mut Outcome,
    ) -> Result<()> {
        outcome.referrers_probe = looked.probe;
        outcome.referrers_checked = looked.checked;
        if looked.found.is_empty() {
            return Ok(());
        }
        let found = self.without_foreign_tags(destination, looked.found).await?;
        tracing::info!(%source, %destination, referrers = found.len(), "copying referrers");
        let present = self
            .copy_contents(source, destination, &found, outcome)
            .await?;
        let referrers = self.attach(destination, &found, &present).await?;
        outcome.referrers = referrers;
        Ok(())
    }

    /// The children of the up-to-date manifest `top`: read from the source when the
    /// destination holds the source's manifest (or its selected child), else (a new index
    /// of the selected platforms, which the source does not have) from the destination,
    /// where it was written after every child was verified.
    async fn copied_children(
        &self,
        source: &Reference,
        destination: &Reference,
        image: &Image,
    ) -> Result<Vec<Digest>> {
        let (client, at) = if image.top == image.source_digest {
            (self.src, source)
        } else {
            (self.dst, destination)
        };
        let data = client
            .get_manifest(&at.with_digest(image.top.clone()))
            .await?;
        let m = Manifest::parse(&at.to_string(), &data.media_type, &data.bytes)?;
        Ok(m.children().iter().map(|c| c.digest.clone()).collect())
    }

    /// Copies the blobs and manifests of every referrer the destination lacks (cosign
    /// tags' manifests are written by their tag, later). Returns, per referrer, whether
    /// its manifest was already there or the registry keeps referrers itself
    /// (`OCI-Subject`), and whether this call wrote it.
    async fn copy_contents(
        &self,
        source: &Reference,
        destination: &Reference,
        found: &[Found],
        outcome: &mut Outcome,
    ) -> Result<Vec<Pushed>> {
        let present: Vec<bool> = in_order(
            found
                .iter()
                .map(|f| async move {
                    match self
                        .dst
                        .resolve(&destination.with_digest(f.data.digest.clone()))
                        .await
                    {
                        Ok(_) => Ok(true),
                        Err(e) if e.is_not_found() => Ok(false),
                        Err(e) => Err(e),
                    }
                })
                .collect(),
            PARALLEL,
        )
        .await?;
        let missing: Vec<usize> = (0..found.len()).filter(|&i| !present[i]).collect();
        let mut children: Vec<Node> = Vec::new();
        for &i in &missing {
            collect_children(self.src, source, &found[i].manifest, &mut children, 0).await?;
        }
        let mut blobs = BTreeMap::new();
        for d in missing
            .iter()
            .flat_map(|&i| found[i].manifest.blobs())
            .chain(children.iter().flat_map(|c| c.manifest.blobs()))
        {
            blobs.entry(d.digest.clone()).or_insert(d);
        }
        let stats = transfer_blobs(
            self.engine,
            self.src,
            self.dst,
            source,
            destination,
            blobs,
            false,
            self.emit,
        )
        .await?;
        outcome.bytes_uploaded = outcome.bytes_uploaded.saturating_add(stats.bytes);
        outcome.blobs_uploaded += stats.count_uploaded;
        outcome.blobs_skipped += stats.count_skipped;
        outcome.blobs_mounted += stats.count_mounted;
        outcome.uploaded.extend(stats.uploaded);
        let pushed_children: Vec<Option<Digest>> = in_order(
            children
                .iter()
                .map(|c| async move {
                    let r = destination.with_digest(c.data.digest.clone());
                    if self.dst.resolve(&r).await.is_ok() {
                        return Ok(None);
                    }
                    self.dst
                        .put_manifest(&r, &c.data.media_type, c.data.bytes.clone())
                        .await?;
                    Ok::<_, Error>(Some(c.data.digest.clone()))
                })
                .collect(),
            PARALLEL,
        )
        .await?;
        outcome
            .uploaded
            .extend(pushed_children.into_iter().flatten());
        outcome.uploaded.sort();
        outcome.uploaded.dedup();
        let mut pushed = vec![Pushed::default(); found.len()];
        for i in missing {
            let f = &found[i];
            if f.tag.is_some() {
                pushed[i].by_tag = true;
                continue;
            }
            let r = destination.with_digest(f.data.digest.clone());
            let (_, api) = self
                .dst
                .put_manifest_answer(&r, &f.data.media_type, f.data.bytes.clone())
                .await?;
            outcome.manifests_pushed += 1;
            pushed[i] = Pushed {
                written: true,
                api,
                by_tag: false,
            };
        }
        Ok(pushed)
    }

    /// The last writes: cosign tags, then fallback-index entries for referrers the
    /// destination does not index itself.
    async fn attach(
        &self,
        destination: &Reference,
        found: &[Found],
        pushed: &[Pushed],
    ) -> Result<Vec<Referrer>> {
        let tagged: Vec<Option<Option<bool>>> = in_order(
            found
                .iter()
                .map(|f| async move {
                    match &f.tag {
                        Some(tag) => self.put_cosign_tag(destination, tag, f).await.map(Some),
                        None => Ok(None),
                    }
                })
                .collect(),
            PARALLEL,
        )
        .await?;
        let mut out = Vec::new();
        let mut by_subject: BTreeMap<Digest, Vec<usize>> = BTreeMap::new();
        for (i, f) in found.iter().enumerate() {
            let written = match tagged[i] {
                Some(Some(w)) => w,
                Some(None) => continue,
                None => {
                    if !pushed[i].api {
                        by_subject.entry(f.subject.clone()).or_default().push(i);
                    }
                    pushed[i].written
                }
            };
            out.push(referrer(f, written));
        }
        if let Some(first) = by_subject.keys().next() {
            if !self.indexes_referrers(destination, first).await? {
                // Each subject has its own fallback tag: the merges (each with its
                // re-check wait) run at once.
                let merges = by_subject
                    .iter()
                    .map(|(subject, list)| self.merge_fallback(destination, subject, list, found));
                for wrote in futures::future::try_join_all(merges).await? {
                    for r in out.iter_mut().filter(|r| wrote.contains(&r.digest)) {
                        r.written = true;
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether the destination has the referrers API (then it indexes referrers itself
    /// and no fallback index is written), asked with `subject`'s listing.
    async fn indexes_referrers(&self, destination: &Reference, subject: &Digest) -> Result<bool> {
        match self
            .dst
            .referrer_entries(destination.repository(), subject, None)
            .await
        {
            Ok(a) => Ok(a.is_some()),
            Err(e) if e.kind() == ErrorKind::Unsupported => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Merges the entries of `list` into `subject`'s fallback index at the destination.
    /// Returns the digests it added.
    async fn merge_fallback(
        &self,
        destination: &Reference,
        subject: &Digest,
        list: &[usize],
        found: &[Found],
    ) -> Result<BTreeSet<Digest>> {
        let ours: Vec<Value> = list.iter().map(|&i| found[i].entry.clone()).collect();
        let added: Mutex<BTreeSet<Digest>> = Mutex::new(BTreeSet::new());
        let edit = |entries: &mut Vec<Value>| {
            let before: HashSet<String> = entries
                .iter()
                .filter_map(|e| fallback::entry_digest(e).map(str::to_string))
                .collect();
            let changed = fallback::add_entries(entries, &ours);
            let mut a = added.lock();
            for e in &ours {
                if let Some(d) = fallback::entry_digest(e).filter(|d| !before.contains(*d)) {
                    if let Ok(d) = d.parse::<Digest>() {
                        a.insert(d);
                    }
                }
            }
            changed
        };
        fallback::update(self.dst, destination, subject, &edit).await?;
        Ok(added.into_inner())
    }

    /// Writes cosign tag `tag` at the destination. `Some(true)`: written; `Some(false)`:
    /// already there; `None`: the destination's tag holds signatures the source's lacks,
    /// left alone.
    async fn put_cosign_tag(
        &self,
        destination: &Reference,
        tag: &str,
        f: &Found,
    ) -> Result<Option<bool>> {
        match self.tag_state(destination, tag, f).await? {
            TagState::Same => return Ok(Some(false)),
            TagState::Theirs => return Ok(None),
            TagState::Free => {}
        }
        let r = destination.with_tag(tag)?;
        self.dst
            .put_manifest(&r, &f.data.media_type, f.data.bytes.clone())
            .await?;
        self.emit.send(crate::progress::ProgressEvent::Manifest {
            digest: f.data.digest.clone(),
        });
        Ok(Some(true))
    }

    /// What the destination's cosign tag `tag` holds compared with the source's `f`.
    async fn tag_state(&self, destination: &Reference, tag: &str, f: &Found) -> Result<TagState> {
        let r = destination.with_tag(tag)?;
        match self.dst.get_manifest(&r).await {
            Ok(current) if current.digest == f.data.digest => Ok(TagState::Same),
            Ok(current) => {
                let theirs = Manifest::parse(&r.to_string(), &current.media_type, &current.bytes)
                    .map(|m| layers(&m))
                    .unwrap_or_default();
                let ours: HashSet<Digest> =
                    layers(&f.manifest).into_iter().map(|b| b.digest).collect();
                if current_is_lost(&theirs, &ours) {
                    tracing::warn!(destination = %r, "the destination's cosign tag holds layers the source's lacks; left alone");
                    Ok(TagState::Theirs)
                } else {
                    Ok(TagState::Free)
                }
            }
            Err(e) if e.is_not_found() => Ok(TagState::Free),
            Err(e) => Err(e),
        }
    }

    /// `found` without the cosign-tag referrers whose destination tag is someone else's
    /// (nothing of theirs is copied, not even blobs).
    async fn without_foreign_tags(
        &self,
        destination: &Reference,
        found: Vec<Found>,
    ) -> Result<Vec<Found>> {
        let theirs: Vec<bool> = in_order(
            found
                .iter()
                .map(|f| async move {
                    match &f.tag {
                        Some(tag) => {
                            Ok(self.tag_state(destination, tag, f).await? == TagState::Theirs)
                        }
                        None => Ok(false),
                    }
                })
                .collect(),
            PARALLEL,
        )
        .await?;
        Ok(found
            .into_iter()
            .zip(theirs)
            .filter_map(|(f, theirs)| (!theirs).then_some(f))
            .collect())
    }
}

/// A destination cosign tag compared with the source's.
#[derive(PartialEq, Eq)]
enum TagState {
    /// It already holds the source's manifest.
    Same,
    /// Missing, or holding a subset of the source's layers: ours to write.
    Free,
    /// It holds layers the source lacks.
    Theirs,
}

/// The layers of an image manifest (not its config: cosign's config lists the layers'
/// digests, so it changes whenever a signature is added).
fn layers(m: &Manifest) -> Vec<Descriptor> {
    match m {
        Manifest::Image { layers, .. } => layers.clone(),
        Manifest::Index { .. } => Vec::new(),
    }
}

/// Whether replacing a tag whose manifest has layers `theirs` by one with blobs `ours`
/// would drop something (cosign appends a layer per signature, so a newer source tag
/// holds every layer of the older one).
fn current_is_lost(theirs: &[Descriptor], ours: &HashSet<Digest>) -> bool {
    theirs.is_empty() || theirs.iter().any(|b| !ours.contains(&b.digest))
}

/// How one referrer's manifest got to the destination.
#[derive(Clone, Default)]
struct Pushed {
    /// This call pushed it.
    written: bool,
    /// The registry answered the push with `OCI-Subject`.
    api: bool,
    /// Written later, under its cosign tag.
    by_tag: bool,
}

fn referrer(f: &Found, written: bool) -> Referrer {
    Referrer {
        digest: f.data.digest.clone(),
        artifact_type: f.artifact_type.clone(),
        subject: f.subject.clone(),
        tag: f.tag.clone(),
        written,
    }
}

/// Delete: removes the referrers the owner wrote (`owned`) of the manifests `subjects`
/// (the image's and the owned referrers themselves): their entries in fallback indexes
/// (other entries stay), then the manifests by digest, which also drops a cosign tag that
/// still points at one. A cosign tag someone re-pointed elsewhere is not ours and stays.
/// Returns warnings.
pub(crate) async fn detach_owned(
    client: &Client,
    destination: &Reference,
    subjects: &BTreeSet<Digest>,
    owned: &[Digest],
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    if owned.is_empty() {
        return Ok(warnings);
    }
    let all: BTreeSet<&Digest> = subjects.iter().chain(owned.iter()).collect();
    for subject in all {
        let edit = |entries: &mut Vec<Value>| fallback::remove_entries(entries, owned);
        match fallback::update(client, destination, subject, &edit).await {
            Ok(_) => {}
            Err(e @ Error::UnsupportedManifest { .. }) => warnings.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    for d in owned {
        match client
            .delete_manifest(&destination.with_digest(d.clone()))
            .await
        {
            Ok(_) => tracing::info!(%destination, referrer = %d, "referrer deleted"),
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                warnings.push(format!("referrer {d} not deleted: {e}"))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact_types::COSIGN_SIGNATURE;
    use crate::ReferrerPolicy;

    #[test]
    fn a_cosign_tag_is_replaced_only_by_a_superset_of_its_layers() {
        let d = |s: &[u8]| Descriptor {
            media_type: COSIGN_SIGNATURE.into(),
            digest: Digest::of(s),
            size: 1,
        };
        let ours: HashSet<Digest> = [Digest::of(b"a"), Digest::of(b"b")].into();
        assert!(!current_is_lost(&[d(b"a")], &ours));
        assert!(current_is_lost(&[d(b"a"), d(b"mirror's own")], &ours));
        assert!(current_is_lost(&[], &ours));
    }

    #[test]
    fn the_policy_filters_by_artifact_type() {
        let all = ReferrerPolicy::default();
        assert!(all.enabled && all.wants("anything"));
        assert!(!ReferrerPolicy::off().wants("anything"));
        let sigs = ReferrerPolicy {
            enabled: true,
            artifact_types: vec![COSIGN_SIGNATURE.into()],
        };
        assert!(sigs.wants(COSIGN_SIGNATURE));
        assert!(!sigs.wants("application/spdx+json"));
    }
}

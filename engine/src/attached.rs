//! Referrers follow the image: signatures, attestations and SBOMs of the copied
//! manifest (and of each child of an index) are found at the source and copied byte
//! for byte with the same rules as images: blobs first, then manifests by digest, and
//! last the tags and fallback-index entries that make them findable.
//!
//! Found through, at the source:
//! - the OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`), or where it is
//!   missing (404, distribution 2.8), the `sha256-<hex>` fallback tag's index;
//! - cosign's `sha256-<hex>.sig`, `.att` and `.sbom` tags (for the image and its
//!   children; referrers of referrers are found through the API or fallback tag).
//!
//! Made findable at the destination:
//! - a referrer with a `subject`: pushing it is enough where the registry answers the
//!   PUT with `OCI-Subject` (it has the referrers API); otherwise its entry is merged into
//!   the destination's fallback index ([`crate::fallback`]);
//! - a cosign tag is copied as a tag. A destination tag that holds signatures the source
//!   tag lacks (someone signed the mirror) is left alone, with a warning.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::Value;

use crate::artifact_types::COSIGN_SIGNATURE;
use crate::client::{Client, ManifestData};
use crate::copy::{collect_children, transfer_blobs, Emit, Node};
use crate::error::{Error, ErrorKind, Result};
use crate::fallback;
use crate::manifest::{check_tree_size, Descriptor, Manifest};
use crate::reference::{Digest, Reference};
use crate::{Engine, Outcome, Referrer, ReferrerPolicy, SyncOptions};

/// Subject, referrer, referrer of a referrer: how deep referrers are followed.
const MAX_DEPTH: usize = 3;
/// Referrers of one image followed at most.
const MAX_FOUND: usize = 512;
/// Cosign's tag suffixes.
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];
/// Config media types that say nothing about an artifact's type.
const GENERIC_CONFIGS: [&str; 3] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.empty.v1+json",
];

/// A referrer found at the source.
struct Found {
    subject: Digest,
    data: ManifestData,
    manifest: Manifest,
    artifact_type: String,
    /// Its descriptor as the source listed it (for the destination's fallback index).
    entry: Value,
    /// The cosign tag it is under.
    tag: Option<String>,
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
    /// unchanged) and records them in `outcome`.
    pub(crate) async fn follow(
        &self,
        source: &Reference,
        destination: &Reference,
        children: Option<Vec<Digest>>,
        options: &SyncOptions,
        outcome: &mut Outcome,
    ) -> Result<()> {
        let policy = &options.referrers;
        if !policy.enabled {
            return Ok(());
        }
        // The manifest the destination's tag holds: with a platform selection, the
        // selected child or the new index of the selected entries, not the source index.
        // Referrers follow the manifests that were copied.
        let top = outcome.destination_digest.clone();
        // Taken before discovery: a referrer added meanwhile changes the next probe. A
        // new index (several platforms selected) is not at the source, so it has no
        // tags there: its probe is known without a request. Referrers added later to
        // its children are copied when the image changes or a full look is asked for
        // (a recorded probe that differs), not found by the probe.
        outcome.referrers_probe = if is_new_index(&top, outcome, options) {
            Some(EMPTY_PROBE.to_string())
        } else {
            probe(self.src, source, &top, policy).await?
        };
        let recorded = options.referrers_probe.as_deref().unwrap_or(EMPTY_PROBE);
        if children.is_none() && outcome.referrers_probe.as_deref() == Some(recorded) {
            // The image is up to date and its probe unchanged since the recorded sync
            // (or, without a record, the source has neither tag): HEADs only.
            tracing::debug!(%source, "referrers probe unchanged; not looking further");
            return Ok(());
        }
        outcome.referrers_checked = true;
        let children = match children {
            Some(c) => c,
            None => {
                self.copied_children(source, destination, &top, outcome)
                    .await?
            }
        };
        // A new index (several platforms selected) exists only at the destination: it
        // has no referrers at the source, so only its children are looked up there.
        let mut subjects = Vec::new();
        if top == outcome.source_digest || children.is_empty() {
            subjects.push(top);
        }
        subjects.extend(children);
        let found = discover(self.src, source, subjects, policy).await?;
        if found.is_empty() {
            return Ok(());
        }
        let found = self.without_foreign_tags(destination, found).await?;
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
        top: &Digest,
        outcome: &Outcome,
    ) -> Result<Vec<Digest>> {
        let (client, at) = if *top == outcome.source_digest {
            (self.src, source)
        } else {
            (self.dst, destination)
        };
        let data = client.get_manifest(&at.with_digest(top.clone())).await?;
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
        let mut missing = Vec::new();
        for (i, f) in found.iter().enumerate() {
            match self
                .dst
                .resolve(&destination.with_digest(f.data.digest.clone()))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => missing.push(i),
                Err(e) => return Err(e),
            }
        }
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
            self.emit,
        )
        .await?;
        outcome.bytes_uploaded = outcome.bytes_uploaded.saturating_add(stats.bytes);
        outcome.blobs_uploaded += stats.count_uploaded;
        outcome.blobs_skipped += stats.count_skipped;
        outcome.blobs_mounted += stats.count_mounted;
        outcome.uploaded.extend(stats.uploaded);
        for c in &children {
            let r = destination.with_digest(c.data.digest.clone());
            if self.dst.resolve(&r).await.is_err() {
                self.dst
                    .put_manifest(&r, &c.data.media_type, c.data.bytes.clone())
                    .await?;
                outcome.uploaded.push(c.data.digest.clone());
            }
        }
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
        let mut out = Vec::new();
        let mut by_subject: BTreeMap<Digest, Vec<usize>> = BTreeMap::new();
        for (i, f) in found.iter().enumerate() {
            let written = match &f.tag {
                Some(tag) => match self.put_cosign_tag(destination, tag, f).await? {
                    Some(w) => w,
                    None => continue,
                },
                None => {
                    if !pushed[i].api {
                        by_subject.entry(f.subject.clone()).or_default().push(i);
                    }
                    pushed[i].written
                }
            };
            out.push(referrer(f, written));
        }
        let mut api_known: Option<bool> = None;
        for (subject, list) in by_subject {
            let wrote_entries = self
                .merge_fallback(destination, &subject, &list, found, &mut api_known)
                .await?;
            for r in out.iter_mut() {
                if wrote_entries.contains(&r.digest) {
                    r.written = true;
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Merges the entries of `list` into `subject`'s fallback index at the destination,
    /// unless the destination has the referrers API. Returns the digests it added.
    async fn merge_fallback(
        &self,
        destination: &Reference,
        subject: &Digest,
        list: &[usize],
        found: &[Found],
        api_known: &mut Option<bool>,
    ) -> Result<BTreeSet<Digest>> {
        if api_known.is_none() {
            let answer = self
                .dst
                .referrer_entries(destination.repository(), subject, None)
                .await;
            *api_known = Some(match answer {
                Ok(a) => a.is_some(),
                Err(e) if e.kind() == ErrorKind::Unsupported => false,
                Err(e) => return Err(e),
            });
        }
        if *api_known == Some(true) {
            return Ok(BTreeSet::new());
        }
        let ours: Vec<Value> = list.iter().map(|&i| found[i].entry.clone()).collect();
        let added: Mutex<BTreeSet<Digest>> = Mutex::new(BTreeSet::new());
        let edit = |entries: &mut Vec<Value>| {
            let before: HashSet<String> = entries
                .iter()
                .filter_map(|e| fallback::entry_digest(e).map(str::to_string))
                .collect();
            let changed = fallback::add_entries(entries, &ours);
            let mut a = added.lock().unwrap_or_else(|p| p.into_inner());
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
        Ok(added.into_inner().unwrap_or_else(|p| p.into_inner()))
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
        let mut out = Vec::with_capacity(found.len());
        for f in found {
            if let Some(tag) = &f.tag {
                if self.tag_state(destination, tag, &f).await? == TagState::Theirs {
                    continue;
                }
            }
            out.push(f);
        }
        Ok(out)
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

/// Every referrer of `subjects` at the source, to [`MAX_DEPTH`], that `policy` wants.
async fn discover(
    src: &Client,
    source: &Reference,
    subjects: Vec<Digest>,
    policy: &ReferrerPolicy,
) -> Result<Vec<Found>> {
    let mut found: Vec<Found> = Vec::new();
    let mut seen: HashSet<(Digest, Option<String>)> = HashSet::new();
    let mut asked: HashSet<Digest> = HashSet::new();
    let mut held = 0u64;
    let mut wave = subjects;
    for depth in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for subject in wave {
            if !asked.insert(subject.clone()) {
                continue;
            }
            for f in referrers_of(src, source, &subject, policy, depth == 0).await? {
                check_tree_size(&source.to_string(), held, f.data.bytes.len())?;
                held = held.saturating_add(f.data.bytes.len() as u64);
                if !seen.insert((f.data.digest.clone(), f.tag.clone())) {
                    continue;
                }
                if found.len() >= MAX_FOUND {
                    return Err(Error::Limit {
                        operation: "GET referrers",
                        reference: source.to_string(),
                        what: "referrers of one image".into(),
                        limit: MAX_FOUND as u64,
                    });
                }
                next.push(f.data.digest.clone());
                found.push(f);
            }
        }
        if next.is_empty() {
            break;
        }
        wave = next;
    }
    Ok(found)
}

/// The referrers of one subject: the API's (or the fallback index's) and, with
/// `cosign`, those under cosign tags.
async fn referrers_of(
    src: &Client,
    source: &Reference,
    subject: &Digest,
    policy: &ReferrerPolicy,
    cosign: bool,
) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    for entry in listed(src, source, subject, policy).await? {
        if let Some(f) = fetch_listed(src, source, subject, entry, policy).await? {
            out.push(f);
        }
    }
    if !cosign {
        return Ok(out);
    }
    for suffix in COSIGN_SUFFIXES {
        let tag = format!("{}.{suffix}", fallback::tag_of(subject));
        let r = source.with_tag(&tag)?;
        let data = match src.get_manifest(&r).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let manifest = Manifest::parse(&r.to_string(), &data.media_type, &data.bytes)?;
        let artifact_type = artifact_type(None, &data.bytes);
        if !policy.wants(&artifact_type) {
            continue;
        }
        let entry = serde_json::json!({
            "mediaType": data.media_type,
            "digest": data.digest.as_str(),
            "size": data.bytes.len(),
        });
        out.push(Found {
            subject: subject.clone(),
            data,
            manifest,
            artifact_type,
            entry,
            tag: Some(tag),
        });
    }
    Ok(out)
}

/// The descriptors the referrers API lists for `subject`, or where the source has no
/// API, its fallback index's entries. A fallback tag that is not an index is skipped.
async fn listed(
    src: &Client,
    source: &Reference,
    subject: &Digest,
    policy: &ReferrerPolicy,
) -> Result<Vec<Value>> {
    let filter = match policy.artifact_types.as_slice() {
        [one] => Some(one.as_str()),
        _ => None,
    };
    match src
        .referrer_entries(source.repository(), subject, filter)
        .await
    {
        Ok(Some(entries)) => return Ok(entries),
        Ok(None) => {}
        Err(e) if e.kind() == ErrorKind::Unsupported => {}
        Err(e) => return Err(e),
    }
    match fallback::read(src, source, subject).await {
        Ok(Some(index)) => Ok(index.entries),
        Ok(None) => Ok(Vec::new()),
        Err(e @ Error::UnsupportedManifest { .. }) => {
            tracing::warn!(%source, %subject, error = %e, "skipping the source's fallback tag");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Reads the manifest a listing names, verified against the listed digest and size.
/// `None` when the policy does not want it or it names another subject.
async fn fetch_listed(
    src: &Client,
    source: &Reference,
    subject: &Digest,
    entry: Value,
    policy: &ReferrerPolicy,
) -> Result<Option<Found>> {
    let desc: Descriptor =
        serde_json::from_value(entry.clone()).map_err(|e| Error::BadResponse {
            operation: "GET referrers",
            reference: format!("{source}@{subject}"),
            status: 200,
            reason: format!("a referrer entry is not a descriptor: {e}"),
            transient: false,
        })?;
    let declared = entry.get("artifactType").and_then(Value::as_str);
    if declared.is_some_and(|t| !policy.wants(t)) {
        return Ok(None);
    }
    let r = source.with_digest(desc.digest.clone());
    let data = src.get_manifest(&r).await?;
    if data.bytes.len() as u64 != desc.size {
        return Err(Error::DigestMismatch {
            reference: r.to_string(),
            expected: format!("{} bytes", desc.size),
            actual: format!("{} bytes", data.bytes.len()),
        });
    }
    let media_type = if data.media_type.is_empty() {
        desc.media_type.clone()
    } else {
        data.media_type.clone()
    };
    let manifest = Manifest::parse(&r.to_string(), &media_type, &data.bytes)?;
    if subject_of(&data.bytes).is_some_and(|s| s != *subject) {
        tracing::warn!(referrer = %r, %subject, "listed as a referrer of another manifest; skipped");
        return Ok(None);
    }
    let artifact_type = artifact_type(declared, &data.bytes);
    if !policy.wants(&artifact_type) {
        return Ok(None);
    }
    Ok(Some(Found {
        subject: subject.clone(),
        data: ManifestData { media_type, ..data },
        manifest,
        artifact_type,
        entry,
        tag: None,
    }))
}

#[derive(Deserialize, Default)]
struct Typed {
    #[serde(rename = "mediaType", default)]
    media_type: String,
}

#[derive(Deserialize, Default)]
struct ArtifactFields {
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Typed>,
    #[serde(default)]
    layers: Option<Vec<Typed>>,
    #[serde(default)]
    subject: Option<Descriptor>,
}

/// See [`Referrer::artifact_type`].
fn artifact_type(declared: Option<&str>, bytes: &[u8]) -> String {
    if let Some(t) = declared.filter(|t| !t.is_empty()) {
        return t.to_string();
    }
    let m: ArtifactFields = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(t) = m.artifact_type.filter(|t| !t.is_empty()) {
        return t;
    }
    if let Some(c) = m
        .config
        .filter(|c| !c.media_type.is_empty() && !GENERIC_CONFIGS.contains(&c.media_type.as_str()))
    {
        return c.media_type;
    }
    m.layers
        .and_then(|l| l.into_iter().next())
        .map(|l| l.media_type)
        .unwrap_or_default()
}

fn subject_of(bytes: &[u8]) -> Option<Digest> {
    serde_json::from_slice::<ArtifactFields>(bytes)
        .ok()
        .and_then(|m| m.subject)
        .map(|s| s.digest)
}

/// Whether `top`, the digest the destination got, is a new index of several selected
/// platforms (which only the destination has) rather than a source manifest.
pub(crate) fn is_new_index(top: &Digest, outcome: &Outcome, options: &SyncOptions) -> bool {
    *top != outcome.source_digest && options.platforms.len() > 1
}

/// The fingerprint of a source without a fallback tag or `.sig` tag.
pub(crate) const EMPTY_PROBE: &str = "fallback=-;sig=-";

/// [`Engine::referrers_probe`]: HEADs of `digest`'s `sha256-<hex>` fallback tag and (when
/// the policy wants signatures) its cosign `.sig` tag. `None` with the policy off.
pub(crate) async fn probe(
    client: &Client,
    source: &Reference,
    digest: &Digest,
    policy: &ReferrerPolicy,
) -> Result<Option<String>> {
    if !policy.enabled {
        return Ok(None);
    }
    let head = |tag: String| async move {
        match client.resolve(&source.with_tag(&tag)?).await {
            Ok(d) => Ok(d.to_string()),
            Err(e) if e.is_not_found() => Ok("-".to_string()),
            Err(e) => Err(e),
        }
    };
    let fallback = head(fallback::tag_of(digest)).await?;
    let sig = if policy.wants(COSIGN_SIGNATURE) {
        head(format!("{}.sig", fallback::tag_of(digest))).await?
    } else {
        "-".to_string()
    };
    Ok(Some(format!("fallback={fallback};sig={sig}")))
}

/// [`Engine::referrers_changed`].
pub(crate) async fn changed(
    client: &Client,
    source: &Reference,
    digest: &Digest,
    recorded: Option<&str>,
    policy: &ReferrerPolicy,
) -> Result<bool> {
    let Some(now) = probe(client, source, digest, policy).await? else {
        return Ok(false);
    };
    Ok(now != recorded.unwrap_or(EMPTY_PROBE))
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

    #[test]
    fn artifact_types_come_from_the_manifest_or_cosign_layers() {
        assert_eq!(artifact_type(Some("a/b"), b"{}"), "a/b");
        let oci11 = br#"{"artifactType":"application/spdx+json","config":{"mediaType":"application/vnd.oci.empty.v1+json"}}"#;
        assert_eq!(artifact_type(None, oci11), "application/spdx+json");
        let cosign = br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json"}]}"#;
        assert_eq!(artifact_type(None, cosign), COSIGN_SIGNATURE);
        let typed_config =
            br#"{"config":{"mediaType":"application/vnd.example.sbom"},"layers":[]}"#;
        assert_eq!(
            artifact_type(None, typed_config),
            "application/vnd.example.sbom"
        );
        assert_eq!(artifact_type(None, b"not json"), "");
    }

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

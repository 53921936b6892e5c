//! Finding an image's referrers at the source: for each subject (the copied manifest and
//! each child of an index), the OCI 1.1 referrers API, or where it is missing (404,
//! distribution 2.8) the `sha256-<hex>` fallback tag's index, and cosign's
//! `sha256-<hex>.sig|.att|.sbom` tags; then the referrers of those referrers, to
//! [`MAX_DEPTH`]. Also the drift probe ([`probe`]): two HEADs that say whether a full look
//! is needed.
//!
//! Round trips decide the time over a far link, so the lookups of one level run
//! concurrently ([`PARALLEL`] at a time): every subject of a level, and for each subject
//! its listing and its three cosign tags. Results keep the subjects' order, so what is
//! found (and the order it is written in) does not depend on timing. A registry that
//! answered 404 on the referrers API once is not asked again (see
//! [`Client::referrer_entries`]).

use std::collections::HashSet;
use std::future::Future;

use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::Value;

use crate::artifact_types::COSIGN_SIGNATURE;
use crate::client::{Client, ManifestData};
use crate::error::{Error, ErrorKind, Result};
use crate::fallback;
use crate::manifest::{check_tree_size, Descriptor, Manifest};
use crate::reference::{Digest, Reference};
use crate::{ReferrerPolicy, SyncOptions};

/// Subject, referrer, referrer of a referrer: how deep referrers are followed.
const MAX_DEPTH: usize = 3;
/// Referrers of one image followed at most (and entries of one listing read at most).
pub(crate) const MAX_FOUND: usize = 512;
/// Lookups in flight at once.
const PARALLEL: usize = 8;
/// Cosign's tag suffixes.
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];
/// Config media types that say nothing about an artifact's type.
const GENERIC_CONFIGS: [&str; 3] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.empty.v1+json",
];

/// A referrer found at the source.
pub(crate) struct Found {
    pub(crate) subject: Digest,
    pub(crate) data: ManifestData,
    pub(crate) manifest: Manifest,
    pub(crate) artifact_type: String,
    /// Its descriptor as the source listed it (for the destination's fallback index).
    pub(crate) entry: Value,
    /// The cosign tag it is under.
    pub(crate) tag: Option<String>,
}

/// Every referrer of `subjects` at the source, to [`MAX_DEPTH`], that `policy` wants.
pub(crate) async fn discover(
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
        wave.retain(|s| asked.insert(s.clone()));
        let per_subject: Vec<Vec<Found>> = in_order(
            wave.iter()
                .map(|s| referrers_of(src, source, s, policy, depth == 0))
                .collect(),
            PARALLEL,
        )
        .await?;
        let mut next = Vec::new();
        for f in per_subject.into_iter().flatten() {
            check_tree_size(&source.to_string(), held, f.data.bytes.len())?;
            held = held.saturating_add(f.data.bytes.len() as u64);
            if !seen.insert((f.data.digest.clone(), f.tag.clone())) {
                continue;
            }
            if found.len() >= MAX_FOUND {
                return Err(too_many(source));
            }
            next.push(f.data.digest.clone());
            found.push(f);
        }
        if next.is_empty() {
            break;
        }
        wave = next;
    }
    Ok(found)
}

/// Runs `futures`, at most `limit` at a time, and gives their results in their order; the
/// first error ends it. (The futures are collected before the first poll, so no closure
/// is held across an await: that keeps the caller's future `Send` for any lifetime.)
pub(crate) async fn in_order<T, F>(futures: Vec<F>, limit: usize) -> Result<Vec<T>>
where
    F: Future<Output = Result<T>>,
{
    futures::stream::iter(futures)
        .buffered(limit)
        .try_collect()
        .await
}

fn too_many(source: &Reference) -> Error {
    Error::Limit {
        operation: "GET referrers",
        reference: source.to_string(),
        what: "referrers of one image".into(),
        limit: MAX_FOUND as u64,
    }
}

/// The referrers of one subject: the API's (or the fallback index's) and, with
/// `cosign`, those under cosign tags; the listing and the tags are read concurrently.
async fn referrers_of(
    src: &Client,
    source: &Reference,
    subject: &Digest,
    policy: &ReferrerPolicy,
    cosign: bool,
) -> Result<Vec<Found>> {
    let from_listing = async {
        let entries = listed(src, source, subject, policy).await?;
        if entries.len() > MAX_FOUND {
            return Err(too_many(source));
        }
        in_order(
            entries
                .into_iter()
                .map(|e| fetch_listed(src, source, subject, e, policy))
                .collect(),
            PARALLEL,
        )
        .await
    };
    let from_tags = async {
        if !cosign {
            return Ok(Vec::new());
        }
        futures::future::try_join_all(
            COSIGN_SUFFIXES
                .iter()
                .map(|suffix| cosign_tag(src, source, subject, suffix, policy)),
        )
        .await
    };
    let (listed, tagged) = futures::try_join!(from_listing, from_tags)?;
    Ok(listed.into_iter().chain(tagged).flatten().collect())
}

/// The referrer under cosign's `sha256-<hex>.<suffix>` tag of `subject`, if there is one
/// and the policy wants its type.
async fn cosign_tag(
    src: &Client,
    source: &Reference,
    subject: &Digest,
    suffix: &str,
    policy: &ReferrerPolicy,
) -> Result<Option<Found>> {
    let tag = format!("{}.{suffix}", fallback::tag_of(subject));
    let r = source.with_tag(&tag)?;
    let data = match src.get_manifest(&r).await {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let manifest = Manifest::parse(&r.to_string(), &data.media_type, &data.bytes)?;
    let artifact_type = artifact_type(None, &data.bytes);
    if !policy.wants(&artifact_type) {
        return Ok(None);
    }
    let entry = serde_json::json!({
        "mediaType": data.media_type,
        "digest": data.digest.as_str(),
        "size": data.bytes.len(),
    });
    Ok(Some(Found {
        subject: subject.clone(),
        data,
        manifest,
        artifact_type,
        entry,
        tag: Some(tag),
    }))
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

/// Whether `top`, the digest the destination got, is a new index of several selected
/// platforms (which only the destination has) rather than a source manifest.
pub(crate) fn is_new_index(top: &Digest, source_digest: &Digest, options: &SyncOptions) -> bool {
    top != source_digest && options.platforms.len() > 1
}

/// The fingerprint of a source without a fallback tag or `.sig` tag.
pub(crate) const EMPTY_PROBE: &str = "fallback=-;sig=-";

/// [`Engine::referrers_probe`]: HEADs of `digest`'s `sha256-<hex>` fallback tag and (when
/// the policy wants signatures) its cosign `.sig` tag, sent together. `None` with the
/// policy off.
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
    let sig = async {
        if policy.wants(COSIGN_SIGNATURE) {
            head(format!("{}.sig", fallback::tag_of(digest))).await
        } else {
            Ok("-".to_string())
        }
    };
    // One round trip: both HEADs at once.
    let (fallback, sig) = futures::try_join!(head(fallback::tag_of(digest)), sig)?;
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

/// See [`crate::Referrer::artifact_type`].
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
    fn subjects_come_from_the_manifest() {
        let d = Digest::of(b"image");
        let with = format!(
            r#"{{"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":5}}}}"#
        );
        assert_eq!(subject_of(with.as_bytes()), Some(d));
        assert_eq!(subject_of(b"{}"), None);
        assert_eq!(subject_of(b"not json"), None);
    }
}

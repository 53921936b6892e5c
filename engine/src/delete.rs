//! Safe deletion: remove one tag without touching other tags on the same digest, then
//! (optionally) remove the blobs no remaining manifest in the repository references.
//!
//! Races: a push into the same repository while a delete runs can reference a blob we
//! decided to delete. Registries do not offer a transaction; the window is the time
//! between the repository scan and the blob DELETEs (documented in the README).

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use futures::StreamExt;

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::Manifest;
use crate::reference::{Digest, Reference};
use crate::{DeleteOptions, DeleteReport, Engine};

/// Concurrent reads while scanning a repository.
const SCAN_JOBS: usize = 16;

const EMPTY_CONFIG: &[u8] = b"{}";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// The manifests and blobs reachable from one manifest.
#[derive(Default, Debug)]
struct Tree {
    manifests: BTreeSet<Digest>,
    blobs: BTreeSet<Digest>,
}

async fn read_tree(
    client: &Client,
    base: &Reference,
    digest: &Digest,
    tree: &mut Tree,
) -> Result<()> {
    let mut stack = vec![digest.clone()];
    while let Some(d) = stack.pop() {
        if !tree.manifests.insert(d.clone()) {
            continue;
        }
        let r = base.with_digest(d);
        let data = match client.get_manifest(&r).await {
            Ok(data) => data,
            // A child an index lists but the repository lacks: nothing to collect.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let m = Manifest::parse(&r.to_string(), &data.media_type, &data.bytes)?;
        tree.blobs.extend(m.blobs().into_iter().map(|b| b.digest));
        stack.extend(m.children().iter().map(|c| c.digest.clone()));
    }
    Ok(())
}

pub(crate) async fn delete(
    engine: &Engine,
    dst: &Reference,
    opts: &DeleteOptions,
) -> Result<DeleteReport> {
    let client = engine.client(dst);
    let mut report = DeleteReport::default();
    let Some(digest) = resolve_owned(&client, dst, opts).await? else {
        tracing::info!(%dst, "already gone");
        report.already_gone = true;
        report.tag_removed = true;
        return Ok(report);
    };
    report.digest = Some(digest.clone());
    // What the image references, read before anything is removed.
    let mut ours = Tree::default();
    read_tree(&client, dst, &digest, &mut ours).await?;
    if !opts.referrers.is_empty() {
        // The referrers this owner wrote go with the image (their blobs become
        // candidates like the image's own); what others attached stays.
        let subjects = ours.manifests.clone();
        for r in &opts.referrers {
            read_tree(&client, dst, r, &mut ours).await?;
        }
        let warnings =
            crate::attached::detach_owned(&client, dst, &subjects, &opts.referrers).await?;
        report.warnings.extend(warnings);
    }

    let this_tag = dst
        .tag()
        .filter(|_| dst.digest().is_none())
        .map(str::to_string);
    if this_tag.is_some() {
        report.tag_removed = delete_by_tag(&client, dst).await?;
    }
    let scan = scan_repository(&client, dst, &digest, this_tag.as_deref(), &ours).await?;
    report.kept_tags = scan.kept_tags.clone();
    for u in &scan.unreadable {
        report.warnings.push(format!(
            "could not read {u}; kept everything it might reference"
        ));
    }
    remove_manifest_or_tag(
        &client,
        dst,
        &digest,
        &scan,
        this_tag.is_some(),
        &mut report,
    )
    .await?;

    if opts.delete_layers && report.manifest_deleted {
        if scan.complete() {
            delete_unreferenced(
                engine,
                &client,
                dst,
                &digest,
                &ours,
                &scan,
                opts,
                &mut report,
            )
            .await;
        } else {
            report.blobs_kept = ours.blobs.len();
        }
    }
    for w in &report.warnings {
        tracing::warn!(%dst, "{w}");
    }
    Ok(report)
}

/// The digest `dst` points at (`None`: already gone), refused with `NotOwned` when it
/// is not the digest the caller wrote.
async fn resolve_owned(
    client: &Client,
    dst: &Reference,
    opts: &DeleteOptions,
) -> Result<Option<Digest>> {
    let digest = match client.resolve(dst).await {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    if let Some(expected) = &opts.expect_digest {
        if *expected != digest {
            return Err(Error::NotOwned {
                reference: dst.to_string(),
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
    }
    Ok(Some(digest))
}

/// The OCI way: DELETE by tag removes only the tag. `Ok(false)` when the registry does
/// not support it (distribution answers 400/405) or the tag still resolves.
async fn delete_by_tag(client: &Client, dst: &Reference) -> Result<bool> {
    match client.delete_manifest(dst).await {
        Ok(_) => match client.resolve(dst).await {
            Err(e) if e.is_not_found() => {
                tracing::info!(%dst, "tag deleted");
                Ok(true)
            }
            Ok(_) => {
                tracing::debug!(%dst, "tag still resolves after DELETE by tag");
                Ok(false)
            }
            Err(e) => Err(e),
        },
        Err(e) if matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::InvalidInput) => {
            tracing::debug!(%dst, error = %e, "DELETE by tag not supported; scanning the repository");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// What the rest of the repository holds, as far as the registry lets us enumerate it.
struct Scan {
    /// Other tags on the digest being deleted (kept).
    kept_tags: Vec<String>,
    /// Everything reachable from the other tags (fallback `sha256-<hex>` and cosign
    /// `.sig|.att|.sbom` tags included, since they are tags) and from the referrers API.
    remaining: Tree,
    /// What could not be read; a scan with any of these deletes no blob.
    unreadable: Vec<String>,
}

impl Scan {
    fn complete(&self) -> bool {
        self.unreadable.is_empty()
    }
}

/// Lists the repository's other tags, reads what they point at (concurrently), and adds
/// the manifests the referrers API names for anything seen, so blobs of signatures,
/// attestations and SBOMs attached to any image are kept too.
async fn scan_repository(
    client: &Client,
    dst: &Reference,
    digest: &Digest,
    this_tag: Option<&str>,
    ours: &Tree,
) -> Result<Scan> {
    let tags = client.list_tags(dst.repository()).await?;
    let others: Vec<String> = tags
        .into_iter()
        .filter(|t| Some(t.as_str()) != this_tag)
        .collect();
    let heads: Vec<(String, Result<Digest>)> = futures::stream::iter(others.into_iter().map(|t| {
        let r = dst.with_tag(&t);
        async move {
            match r {
                Ok(r) => {
                    let d = client.resolve(&r).await;
                    (t, d)
                }
                Err(e) => (t, Err(e)),
            }
        }
    }))
    .buffer_unordered(SCAN_JOBS)
    .collect()
    .await;
    let mut tag_digests: HashMap<String, Digest> = HashMap::new();
    let mut unreadable = Vec::new();
    for (t, d) in heads {
        match d {
            Ok(d) => {
                tag_digests.insert(t, d);
            }
            Err(e) if e.is_not_found() => {} // deleted meanwhile
            Err(e) => unreadable.push(format!("{t}: {e}")),
        }
    }
    let mut kept_tags: Vec<String> = tag_digests
        .iter()
        .filter(|(_, d)| *d == digest)
        .map(|(t, _)| t.clone())
        .collect();
    kept_tags.sort();
    let distinct: BTreeSet<Digest> = tag_digests.into_values().filter(|d| d != digest).collect();
    let mut remaining = Tree::default();
    read_trees(client, dst, distinct, &mut remaining, &mut unreadable).await;
    add_referrers(client, dst, ours, &mut remaining, &mut unreadable).await;
    Ok(Scan {
        kept_tags,
        remaining,
        unreadable,
    })
}

/// Reads the trees of `roots` into `into`; failures are recorded in `unreadable`.
async fn read_trees(
    client: &Client,
    dst: &Reference,
    roots: BTreeSet<Digest>,
    into: &mut Tree,
    unreadable: &mut Vec<String>,
) {
    let trees: Vec<Result<Tree>> = futures::stream::iter(roots.into_iter().map(|d| async move {
        let mut t = Tree::default();
        read_tree(client, dst, &d, &mut t).await.map(|_| t)
    }))
    .buffer_unordered(SCAN_JOBS)
    .collect()
    .await;
    for t in trees {
        match t {
            Ok(t) => {
                into.manifests.extend(t.manifests);
                into.blobs.extend(t.blobs);
            }
            Err(e) => unreadable.push(e.to_string()),
        }
    }
}

/// Referrers of referrers are followed this deep (a signature on an attestation).
const REFERRER_DEPTH: usize = 3;
/// Manifests asked for their referrers at most in one delete.
const MAX_REFERRER_QUERIES: usize = 2_000;

/// Adds to `remaining` every manifest the referrers API names for a manifest of the
/// repository we know of (ours and the remaining ones), to a small fixed depth. Stops at
/// the first 404: the registry has no referrers API (its referrers are fallback tags,
/// already scanned).
async fn add_referrers(
    client: &Client,
    dst: &Reference,
    ours: &Tree,
    remaining: &mut Tree,
    unreadable: &mut Vec<String>,
) {
    let mut asked: BTreeSet<Digest> = BTreeSet::new();
    let mut wave: BTreeSet<Digest> = ours
        .manifests
        .union(&remaining.manifests)
        .cloned()
        .collect();
    for _ in 0..REFERRER_DEPTH {
        let mut found = BTreeSet::new();
        for subject in wave
            .iter()
            .filter(|d| !asked.contains(*d))
            .cloned()
            .collect::<Vec<_>>()
        {
            if asked.len() >= MAX_REFERRER_QUERIES {
                unreadable.push(format!(
                    "referrers of more than {MAX_REFERRER_QUERIES} manifests"
                ));
                return;
            }
            asked.insert(subject.clone());
            match client.referrers(dst.repository(), &subject).await {
                Ok(None) => return,
                Ok(Some(list)) => found.extend(
                    list.into_iter()
                        .map(|d| d.digest)
                        .filter(|d| !remaining.manifests.contains(d)),
                ),
                Err(e) => {
                    unreadable.push(format!("referrers of {subject}: {e}"));
                    return;
                }
            }
        }
        if found.is_empty() {
            return;
        }
        let before: BTreeSet<Digest> = remaining.manifests.clone();
        read_trees(client, dst, found, remaining, unreadable).await;
        wave = remaining.manifests.difference(&before).cloned().collect();
    }
}

/// Deletes the manifest by digest when nothing else uses it (this also drops our tag);
/// otherwise detaches only our tag, keeping the digest for its other users.
async fn remove_manifest_or_tag(
    client: &Client,
    dst: &Reference,
    digest: &Digest,
    scan: &Scan,
    tagged: bool,
    report: &mut DeleteReport,
) -> Result<()> {
    let referenced = !scan.kept_tags.is_empty() || scan.remaining.manifests.contains(digest);
    if !referenced && scan.complete() {
        match client
            .delete_manifest(&dst.with_digest(digest.clone()))
            .await
        {
            Ok(_) => {
                report.manifest_deleted = true;
                report.tag_removed = true;
                tracing::info!(%dst, %digest, "manifest deleted");
            }
            Err(e) if e.kind() == ErrorKind::Unsupported => return Err(deletes_disabled(dst, e)),
            Err(e) => return Err(e),
        }
    } else if !report.tag_removed {
        if tagged {
            match detach_tag(client, dst, digest).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Unsupported => {
                    return Err(deletes_disabled(dst, e));
                }
                Err(e) => return Err(e),
            }
            report.tag_removed = true;
            tracing::info!(%dst, kept = ?report.kept_tags, "tag detached; digest kept for other tags");
        } else {
            report.warnings.push(format!(
                "{digest} is still referenced by tags {:?} or an index; not deleted",
                report.kept_tags
            ));
        }
    }
    Ok(())
}

/// Deletes the blobs and child manifests of our image that nothing remaining references
/// (and, with [`DeleteOptions::only_blobs`], that the owner wrote). Failures are warnings.
#[allow(clippy::too_many_arguments)] // one step of `delete`, called once, with its state
async fn delete_unreferenced(
    engine: &Engine,
    client: &Client,
    dst: &Reference,
    digest: &Digest,
    ours: &Tree,
    scan: &Scan,
    opts: &DeleteOptions,
    report: &mut DeleteReport,
) {
    let written = |d: &Digest| opts.only_blobs.as_ref().is_none_or(|set| set.contains(d));
    for child in ours
        .manifests
        .iter()
        .filter(|m| *m != digest && !scan.remaining.manifests.contains(m) && written(m))
    {
        if let Err(e) = client
            .delete_manifest(&dst.with_digest(child.clone()))
            .await
        {
            report
                .warnings
                .push(format!("child manifest {child} not deleted: {e}"));
        }
    }
    let doomed: Vec<Digest> = ours
        .blobs
        .difference(&scan.remaining.blobs)
        .filter(|b| written(b))
        .cloned()
        .collect();
    report.blobs_kept = ours.blobs.len() - doomed.len();
    let repo = dst.repository();
    let results: Vec<(Digest, Result<bool>)> =
        futures::stream::iter(doomed.into_iter().map(|b| async move {
            let r = client.delete_blob(repo, &b).await;
            (b, r)
        }))
        .buffer_unordered(engine.jobs())
        .collect()
        .await;
    let mut unsupported = false;
    for (b, r) in results {
        match r {
            Ok(_) => report.blobs_deleted += 1,
            Err(e) if e.kind() == ErrorKind::Unsupported => unsupported = true,
            Err(e) => report.warnings.push(format!("blob {b} not deleted: {e}")),
        }
    }
    if unsupported {
        report.warnings.push(format!(
            "{} does not support blob deletion (405/UNSUPPORTED); layers were left for the registry's garbage collection",
            dst.registry()
        ));
    }
}

/// The registry refuses manifest deletion (405 / `UNSUPPORTED`, e.g. distribution with
/// `storage.delete.enabled: false`): nothing was changed; say so clearly (kind stays
/// `Unsupported`, so front ends can show it as a warning rather than retry).
fn deletes_disabled(dst: &Reference, error: Error) -> Error {
    Error::Registry {
        kind: ErrorKind::Unsupported,
        operation: "DELETE manifest",
        reference: dst.to_string(),
        status: error.status().unwrap_or(405),
        code: error.code().map(str::to_string),
        message: format!(
            "the registry does not allow deleting manifests (deletes disabled?); {dst} was left in place"
        ),
        retry_after: None,
    }
}

/// Points `dst`'s tag at a unique throw-away manifest and deletes that by digest, so
/// the tag disappears while the original digest (and its other tags) stay. If the
/// throw-away cannot be deleted, the tag is pointed back at `original`.
async fn detach_tag(client: &Client, dst: &Reference, original: &Digest) -> Result<()> {
    let repo = dst.repository();
    // Kept to restore the tag if the registry refuses to delete the throw-away.
    let original = client
        .get_manifest(&dst.with_digest(original.clone()))
        .await?;
    let config = Digest::of(EMPTY_CONFIG);
    if !client.blob_exists(repo, &config).await? {
        let (_, location) = client.start_upload(repo, &config, None).await?;
        let body = futures::stream::once(async {
            Ok::<_, std::io::Error>(Bytes::from_static(EMPTY_CONFIG))
        });
        client
            .put_blob(
                repo,
                &location.unwrap_or_default(),
                &config,
                EMPTY_CONFIG.len() as u64,
                body,
            )
            .await?;
    }
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::manifest::OCI_MANIFEST,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": config.as_str(), "size": EMPTY_CONFIG.len()},
        "layers": [],
        "annotations": {"dev.imagesync.detached-tag": format!("{}:{}", dst.tag().unwrap_or(""), nonce)}
    });
    let bytes =
        Bytes::from(serde_json::to_vec(&manifest).map_err(|e| Error::Config(e.to_string()))?);
    let throwaway = client
        .put_manifest(dst, crate::manifest::OCI_MANIFEST, bytes)
        .await?;
    if let Err(e) = client.delete_manifest(&dst.with_digest(throwaway)).await {
        client
            .put_manifest(dst, &original.media_type, original.bytes.clone())
            .await?;
        return Err(e);
    }
    Ok(())
}

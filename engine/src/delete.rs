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
    let repo = dst.repository();
    let mut report = DeleteReport::default();

    let digest = match client.resolve(dst).await {
        Ok(d) => d,
        Err(e) if e.is_not_found() => {
            tracing::info!(%dst, "already gone");
            report.already_gone = true;
            report.tag_removed = true;
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.digest = Some(digest.clone());
    if let Some(expected) = &opts.expect_digest {
        if *expected != digest {
            return Err(Error::NotOwned {
                reference: dst.to_string(),
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
    }
    // What the image references, read before anything is removed.
    let mut ours = Tree::default();
    read_tree(&client, dst, &digest, &mut ours).await?;

    let this_tag = dst
        .tag()
        .filter(|_| dst.digest().is_none())
        .map(str::to_string);

    // 1. The OCI way: DELETE by tag removes only the tag.
    if let Some(tag) = &this_tag {
        match client.delete_manifest(dst).await {
            Ok(_) => match client.resolve(dst).await {
                Err(e) if e.is_not_found() => {
                    tracing::info!(%dst, "tag deleted");
                    report.tag_removed = true;
                }
                Ok(_) => tracing::debug!(%dst, "tag still resolves after DELETE by tag"),
                Err(e) => return Err(e),
            },
            Err(e) if matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::InvalidInput) => {
                tracing::debug!(%dst, tag, error = %e, "DELETE by tag not supported; scanning the repository");
            }
            Err(e) => return Err(e),
        }
    }

    // 2. Scan the repository: other tags on the digest, indexes referencing it, and
    //    everything the remaining manifests reference.
    let tags = client.list_tags(repo).await?;
    let others: Vec<String> = tags
        .into_iter()
        .filter(|t| Some(t) != this_tag.as_ref())
        .collect();
    let heads: Vec<(String, Result<Digest>)> = futures::stream::iter(others.into_iter().map(|t| {
        let client = client.clone();
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
    report.kept_tags = tag_digests
        .iter()
        .filter(|(_, d)| **d == digest)
        .map(|(t, _)| t.clone())
        .collect();
    report.kept_tags.sort();

    let distinct: BTreeSet<Digest> = tag_digests
        .values()
        .filter(|d| **d != digest)
        .cloned()
        .collect();
    let trees: Vec<Result<Tree>> = futures::stream::iter(distinct.into_iter().map(|d| {
        let client = client.clone();
        async move {
            let mut t = Tree::default();
            read_tree(&client, dst, &d, &mut t).await.map(|_| t)
        }
    }))
    .buffer_unordered(SCAN_JOBS)
    .collect()
    .await;
    let mut remaining = Tree::default();
    for t in trees {
        match t {
            Ok(t) => {
                remaining.manifests.extend(t.manifests);
                remaining.blobs.extend(t.blobs);
            }
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    let referenced = !report.kept_tags.is_empty() || remaining.manifests.contains(&digest);
    let complete_scan = unreadable.is_empty();
    for u in &unreadable {
        report.warnings.push(format!(
            "could not read {u}; kept everything it might reference"
        ));
    }

    if !referenced && complete_scan {
        // Nothing else uses the manifest: delete it by digest (this also drops our tag).
        match client
            .delete_manifest(&dst.with_digest(digest.clone()))
            .await
        {
            Ok(_) => {
                report.manifest_deleted = true;
                report.tag_removed = true;
                tracing::info!(%dst, %digest, "manifest deleted");
            }
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                return Err(deletes_disabled(dst, e));
            }
            Err(e) => return Err(e),
        }
    } else if !report.tag_removed {
        if this_tag.is_some() {
            match detach_tag(&client, dst, &digest).await {
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

    // 3. Blobs (and child manifests of a deleted index) nothing else references.
    if opts.delete_layers && report.manifest_deleted && complete_scan {
        for child in ours
            .manifests
            .iter()
            .filter(|m| **m != digest && !remaining.manifests.contains(m))
        {
            match client
                .delete_manifest(&dst.with_digest(child.clone()))
                .await
            {
                Ok(_) => {}
                Err(e) => report
                    .warnings
                    .push(format!("child manifest {child} not deleted: {e}")),
            }
        }
        let doomed: Vec<Digest> = ours.blobs.difference(&remaining.blobs).cloned().collect();
        report.blobs_kept = ours.blobs.len() - doomed.len();
        let results: Vec<(Digest, Result<bool>)> =
            futures::stream::iter(doomed.into_iter().map(|b| {
                let client = client.clone();
                async move {
                    let r = client.delete_blob(repo, &b).await;
                    (b, r)
                }
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
    } else if opts.delete_layers && report.manifest_deleted {
        report.blobs_kept = ours.blobs.len();
    }
    for w in &report.warnings {
        tracing::warn!(%dst, "{w}");
    }
    Ok(report)
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

//! The copy: walk the source (index, children, blobs), transfer blobs with bounded
//! concurrency and digest verification, then push manifests bottom up, the tag last.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use sha2::Digest as _;

use crate::blobs::BlobLocations;
use crate::client::{Client, ManifestData, Upload};
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest};
use crate::platform::{self, Pick, Platform};
use crate::progress::{BlobAction, Progress, ProgressEvent};
use crate::reference::{Digest, Reference};
use crate::{Engine, Outcome, Selection, SyncOptions};

pub(crate) struct Emit(pub(crate) Option<Arc<dyn Progress>>);

impl Emit {
    pub(crate) fn send(&self, e: ProgressEvent) {
        if let Some(p) = &self.0 {
            p.event(e);
        }
    }
}

/// A manifest of the source tree, children before parents.
pub(crate) struct Node {
    pub(crate) data: ManifestData,
    pub(crate) manifest: Manifest,
}

pub(crate) async fn sync(
    engine: &Engine,
    source: &Reference,
    destination: &Reference,
    options: &SyncOptions,
) -> Result<Outcome> {
    let started = Instant::now();
    let emit = Emit(options.progress.clone());
    let src_client = engine.client(source);
    let dst_client = engine.client(destination);

    let source = match &options.expect_source_digest {
        Some(d) => source.with_digest(d.clone()),
        None => source.clone(),
    };
    // The source's side (its digest, the selection) and the destination's HEAD do not
    // depend on each other: both go out at once, so a no-op costs one round trip.
    let source_side = async {
        let source_digest = source_digest(&src_client, &source).await?;
        let (target, pick) = selection_digest(
            &src_client,
            &source,
            &source_digest,
            &options.platforms,
            options.known.as_ref(),
        )
        .await?;
        Ok::<_, Error>((source_digest, target, pick))
    };
    let (source_side, current) =
        tokio::join!(source_side, destination_digest(&dst_client, destination));
    let (source_digest, target, pick) = source_side?;
    check_destination_pin(destination, &target)?;
    let id = destination.id(&target);
    if destination_up_to_date(destination, current?.as_ref(), &target) {
        tracing::info!(%source, %destination, digest = %target, "destination up to date");
        let mut outcome = Outcome {
            source_digest,
            destination_digest: target,
            id,
            up_to_date: true,
            bytes_uploaded: 0,
            blobs_uploaded: 0,
            blobs_skipped: 0,
            blobs_mounted: 0,
            manifests_pushed: 0,
            uploaded: Vec::new(),
            referrers: Vec::new(),
            referrers_probe: None,
            referrers_checked: false,
        };
        // Referrers added at the source since the image was copied still follow it.
        let hook = crate::attached::Hook::new(engine, &src_client, &dst_client, &emit);
        hook.follow(&source, destination, None, options, &mut outcome)
            .await?;
        return Ok(outcome);
    }

    let top = read_top(&src_client, &source, &source_digest, &target, pick, options).await?;
    let tree = read_source(&src_client, &dst_client, &source, destination, top).await?;
    let blobs = tree.blobs();
    let total_bytes = blobs
        .values()
        .fold(0u64, |total, d| total.saturating_add(d.size));
    let manifests = tree.missing_children.len() + 1;
    emit.send(ProgressEvent::Planned {
        blobs: blobs.len(),
        bytes: total_bytes,
        manifests,
    });
    tracing::info!(%source, %destination, blobs = blobs.len(), bytes = total_bytes, manifests, "copying");

    let stats = transfer_blobs(
        engine,
        &src_client,
        &dst_client,
        &source,
        destination,
        blobs,
        &emit,
    )
    .await?;
    let (written, mut uploaded) =
        push_manifests(&dst_client, destination, &tree, &target, &emit).await?;
    uploaded.extend(stats.uploaded);
    uploaded.sort();
    tracing::info!(
        %source, %destination, digest = %written, bytes_uploaded = stats.bytes, blobs_uploaded = stats.count_uploaded,
        blobs_skipped = stats.count_skipped, blobs_mounted = stats.count_mounted,
        elapsed_ms = started.elapsed().as_millis() as u64, "synced"
    );
    let mut outcome = Outcome {
        source_digest,
        destination_digest: written,
        id,
        up_to_date: false,
        bytes_uploaded: stats.bytes,
        blobs_uploaded: stats.count_uploaded,
        blobs_skipped: stats.count_skipped,
        blobs_mounted: stats.count_mounted,
        manifests_pushed: manifests,
        uploaded,
        referrers: Vec::new(),
        referrers_probe: None,
        referrers_checked: false,
    };
    // Signatures, attestations and SBOMs follow, after the image is complete.
    let hook = crate::attached::Hook::new(engine, &src_client, &dst_client, &emit);
    let children = tree.child_digests();
    hook.follow(&source, destination, Some(children), options, &mut outcome)
        .await?;
    Ok(outcome)
}

/// The source's digest: pinned, or resolved by HEAD.
async fn source_digest(src_client: &Client, source: &Reference) -> Result<Digest> {
    match source.digest() {
        Some(d) => Ok(d.clone()),
        None => src_client.resolve(source).await,
    }
}

/// The digest the destination is to have, with the selection when it had to be made.
/// Without a selection: the source digest, no request. With one: `known`'s digest when it
/// was made from this source digest (what a selection gives is fixed by the digest), no
/// request; otherwise the selection made from the source manifest, one GET (plus the
/// config of a single-platform source).
pub(crate) async fn selection_digest(
    src_client: &Client,
    source: &Reference,
    source_digest: &Digest,
    platforms: &[Platform],
    known: Option<&Selection>,
) -> Result<(Digest, Option<Pick>)> {
    if platforms.is_empty() {
        return Ok((source_digest.clone(), None));
    }
    if let Some(k) = known.filter(|k| k.source_digest == *source_digest) {
        return Ok((k.digest.clone(), None));
    }
    let pinned = source.with_digest(source_digest.clone());
    let pick = platform::pick(src_client, &pinned, platforms).await?;
    Ok((pick.digest().clone(), Some(pick)))
}

/// A destination written by digest must be given exactly that digest.
fn check_destination_pin(destination: &Reference, target: &Digest) -> Result<()> {
    match destination.digest() {
        Some(want) if want != target => Err(Error::DigestMismatch {
            reference: destination.to_string(),
            expected: want.to_string(),
            actual: target.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The manifest the destination's tag gets: the source manifest, its selected child or
/// the index of the selected children. A selection taken from `known` is made again from
/// the source here and must give the digest `known` said.
async fn read_top(
    src_client: &Client,
    source: &Reference,
    source_digest: &Digest,
    target: &Digest,
    pick: Option<Pick>,
    options: &SyncOptions,
) -> Result<ManifestData> {
    let pinned = source.with_digest(source_digest.clone());
    let pick = match pick {
        Some(p) => p,
        None => platform::pick(src_client, &pinned, &options.platforms).await?,
    };
    if pick.digest() != target {
        return Err(Error::DigestMismatch {
            reference: format!("{pinned} (platforms selected)"),
            expected: target.to_string(),
            actual: pick.digest().to_string(),
        });
    }
    pick.manifest(src_client, source).await
}

/// What the destination resolves to now, by HEAD; `None` when it is missing.
async fn destination_digest(
    dst_client: &Client,
    destination: &Reference,
) -> Result<Option<Digest>> {
    match dst_client.resolve(destination).await {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the destination's `current` digest is the wanted one.
fn destination_up_to_date(
    destination: &Reference,
    current: Option<&Digest>,
    digest: &Digest,
) -> bool {
    match current {
        Some(d) if d == digest => true,
        Some(d) => {
            tracing::info!(%destination, current = %d, wanted = %digest, "destination differs");
            false
        }
        None => {
            tracing::debug!(%destination, "destination missing");
            false
        }
    }
}

/// The source tree to write: the top manifest and the child manifests the destination
/// lacks (children before parents), all verified against their digests.
struct SourceTree {
    top: ManifestData,
    top_manifest: Manifest,
    missing_children: Vec<Node>,
}

impl SourceTree {
    /// The child manifests of the image: the top index's entries and any nested child
    /// read from the source.
    fn child_digests(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = self
            .top_manifest
            .children()
            .iter()
            .map(|c| c.digest.clone())
            .collect();
        for c in &self.missing_children {
            if !out.contains(&c.data.digest) {
                out.push(c.data.digest.clone());
            }
        }
        out
    }

    /// Every blob the top manifest and the missing children reference, once each.
    fn blobs(&self) -> BTreeMap<Digest, Descriptor> {
        let mut blobs = BTreeMap::new();
        for d in self.top_manifest.blobs().into_iter().chain(
            self.missing_children
                .iter()
                .flat_map(|c| c.manifest.blobs()),
        ) {
            blobs.entry(d.digest.clone()).or_insert(d);
        }
        blobs
    }
}

async fn read_source(
    src_client: &Client,
    dst_client: &Client,
    source: &Reference,
    destination: &Reference,
    top: ManifestData,
) -> Result<SourceTree> {
    let pinned = source.with_digest(top.digest.clone());
    let top_manifest = Manifest::parse(&pinned.to_string(), &top.media_type, &top.bytes)?;
    let mut children: Vec<Node> = Vec::new();
    collect_children(src_client, source, &top_manifest, &mut children, 0).await?;
    // Children already at the destination have all their blobs there.
    let mut missing_children = Vec::new();
    for child in children {
        let r = destination.with_digest(child.data.digest.clone());
        match dst_client.resolve(&r).await {
            Ok(_) => {
                tracing::debug!(digest = %child.data.digest, "child manifest already at destination")
            }
            Err(e) if e.is_not_found() => missing_children.push(child),
            Err(e) => return Err(e),
        }
    }
    Ok(SourceTree {
        top,
        top_manifest,
        missing_children,
    })
}

/// What the blob transfers did.
#[derive(Default)]
pub(crate) struct BlobStats {
    pub(crate) bytes: u64,
    pub(crate) count_uploaded: usize,
    pub(crate) count_skipped: usize,
    pub(crate) count_mounted: usize,
    pub(crate) uploaded: Vec<Digest>,
}

/// Copies every blob, `engine.jobs()` at a time; the first failure fails the copy.
pub(crate) async fn transfer_blobs(
    engine: &Engine,
    src_client: &Client,
    dst_client: &Client,
    source: &Reference,
    destination: &Reference,
    blobs: BTreeMap<Digest, Descriptor>,
    emit: &Emit,
) -> Result<BlobStats> {
    let (src_repo, dst_repo) = (source.repository(), destination.repository());
    let same_registry = source.api_host() == destination.api_host() && src_repo != dst_repo;
    // Cleared for the rest of this copy once the registry refuses a mount.
    let mounts = AtomicBool::new(true);
    let stats = Mutex::new(BlobStats::default());
    let job = BlobJob {
        src: src_client,
        dst: dst_client,
        src_host: source.api_host(),
        dst_host: destination.api_host(),
        src_repo,
        dst_repo,
        same_registry,
        mounts: &mounts,
        known: engine.blobs(),
        emit,
    };
    futures::stream::iter(blobs.into_values().map(|desc| {
        let (job, stats) = (&job, &stats);
        async move {
            let (action, bytes) = copy_blob(job, &desc).await?;
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.bytes = s.bytes.saturating_add(bytes);
            match action {
                BlobAction::Uploaded => {
                    s.count_uploaded += 1;
                    s.uploaded.push(desc.digest.clone());
                }
                BlobAction::Skipped => s.count_skipped += 1,
                BlobAction::Mounted => s.count_mounted += 1,
            }
            drop(s);
            job.emit.send(ProgressEvent::Blob {
                digest: desc.digest.clone(),
                size: desc.size,
                action,
            });
            Ok::<(), Error>(())
        }
    }))
    .buffer_unordered(engine.jobs())
    .try_collect::<Vec<()>>()
    .await?;
    Ok(stats.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Pushes the missing child manifests by digest, deepest first (collect_children puts
/// children before parents), then the tagged manifest last, so the tag never points at
/// an incomplete image. Returns the digest written and the child manifests pushed.
async fn push_manifests(
    dst_client: &Client,
    destination: &Reference,
    tree: &SourceTree,
    target: &Digest,
    emit: &Emit,
) -> Result<(Digest, Vec<Digest>)> {
    let mut pushed = Vec::new();
    for child in &tree.missing_children {
        let r = destination.with_digest(child.data.digest.clone());
        dst_client
            .put_manifest(&r, &child.data.media_type, child.data.bytes.clone())
            .await?;
        emit.send(ProgressEvent::Manifest {
            digest: child.data.digest.clone(),
        });
        pushed.push(child.data.digest.clone());
    }
    let written = dst_client
        .put_manifest(destination, &tree.top.media_type, tree.top.bytes.clone())
        .await?;
    if written != *target {
        return Err(Error::DigestMismatch {
            reference: destination.to_string(),
            expected: target.to_string(),
            actual: written.to_string(),
        });
    }
    emit.send(ProgressEvent::Manifest {
        digest: written.clone(),
    });
    Ok((written, pushed))
}

/// Reads every child manifest of `manifest` (recursively), children before parents.
pub(crate) fn collect_children<'a>(
    client: &'a Client,
    source: &'a Reference,
    manifest: &'a Manifest,
    out: &'a mut Vec<Node>,
    depth: usize,
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if depth > 4 {
            return Err(Error::UnsupportedManifest {
                reference: source.to_string(),
                media_type: "index".into(),
                reason: "indexes nested more than 4 levels deep".into(),
            });
        }
        let mut seen: HashSet<Digest> = out.iter().map(|n| n.data.digest.clone()).collect();
        for child in manifest.children() {
            if !seen.insert(child.digest.clone()) {
                continue;
            }
            let r = source.with_digest(child.digest.clone());
            let data = client.get_manifest(&r).await?;
            let held: u64 = out.iter().map(|n| n.data.bytes.len() as u64).sum();
            crate::manifest::check_tree_size(&r.to_string(), held, data.bytes.len())?;
            let data = checked_child(&r, child, data)?;
            let parsed = Manifest::parse(&r.to_string(), &data.media_type, &data.bytes)?;
            collect_children(client, source, &parsed, out, depth + 1).await?;
            out.push(Node {
                data,
                manifest: parsed,
            });
        }
        Ok(())
    })
}

/// A child manifest `r` as read, checked against its descriptor `child`: the size must
/// match (the digest was checked by the read), and an answer without a media type takes
/// the descriptor's.
pub(crate) fn checked_child(
    r: &Reference,
    child: &Descriptor,
    data: ManifestData,
) -> Result<ManifestData> {
    if data.bytes.len() as u64 != child.size {
        return Err(Error::DigestMismatch {
            reference: r.to_string(),
            expected: format!("{} bytes", child.size),
            actual: format!("{} bytes", data.bytes.len()),
        });
    }
    let media_type = if data.media_type.is_empty() {
        child.media_type.clone()
    } else {
        data.media_type
    };
    Ok(ManifestData { media_type, ..data })
}

/// What one blob transfer works with.
struct BlobJob<'a> {
    src: &'a Client,
    dst: &'a Client,
    src_host: &'a str,
    dst_host: &'a str,
    src_repo: &'a str,
    dst_repo: &'a str,
    /// Source and destination are repositories of one registry.
    same_registry: bool,
    /// Cleared once the registry refuses a mount: upload for the rest of the copy.
    mounts: &'a AtomicBool,
    known: &'a BlobLocations,
    emit: &'a Emit,
}

/// Copies one blob, retrying the whole transfer (fresh GET, fresh upload session) on
/// transient failures. While mounts are allowed it first tries a cross-repository
/// mount: from the source repository on the same registry, or from a repository of the
/// destination registry the engine saw holding the blob. A mount the registry refuses
/// for lack of access (tokens that never grant pull on another repository) turns mounts
/// off and the blob is uploaded instead. Returns how it got there and the bytes uploaded.
async fn copy_blob(job: &BlobJob<'_>, desc: &Descriptor) -> Result<(BlobAction, u64)> {
    let BlobJob {
        src,
        dst,
        src_repo,
        dst_repo,
        emit,
        ..
    } = *job;
    let digest = &desc.digest;
    if dst.blob_exists(dst_repo, digest).await? {
        job.known.remember(job.dst_host, dst_repo, digest);
        return Ok((BlobAction::Skipped, 0));
    }
    let mut candidate = if job.same_registry {
        Some(src_repo.to_string())
    } else {
        job.known.lookup(job.dst_host, digest, dst_repo)
    };
    if candidate.is_some() && !job.same_registry && job.mounts.load(Ordering::Relaxed) {
        // Mount from elsewhere only what this copy's own source holds: a manifest naming
        // someone else's blob must not pull it out of a repository its source never had.
        if !src.blob_exists(src_repo, digest).await? {
            candidate = None;
        }
    }
    let what = format!("{dst_repo}@{digest}");
    let started = Instant::now();
    let mut attempt = 0;
    let mut try_mount = job.mounts.load(Ordering::Relaxed) && candidate.is_some();
    loop {
        attempt += 1;
        let mount_from = if try_mount {
            candidate.as_deref()
        } else {
            None
        };
        let result = async {
            // Without a mount to try, the source GET opens while the upload session
            // starts: one round trip per blob less on a far link. Its body waits (flow
            // control) until the upload streams it.
            let (started, source) = if mount_from.is_none() {
                let (started, source) = tokio::join!(
                    dst.start_upload(dst_repo, digest, None),
                    crate::ranged::open(src, src_repo, desc)
                );
                match (started, source) {
                    (Ok(started), Ok(source)) => (started, Some(source)),
                    (Ok((_, Some(location))), Err(e)) => {
                        // No session left open at the destination for a failed read.
                        dst.cancel_upload(dst_repo, &location, digest).await;
                        return Err(e);
                    }
                    (Err(e), _) | (_, Err(e)) => return Err(e),
                }
            } else {
                (dst.start_upload(dst_repo, digest, mount_from).await?, None)
            };
            let (how, location) = started;
            if how == Upload::Mounted {
                job.known.remember(job.dst_host, dst_repo, digest);
                return Ok((BlobAction::Mounted, 0));
            }
            if let Some(from) = mount_from {
                tracing::debug!(%digest, from, "mount not possible (202); uploading");
                if !job.same_registry {
                    job.known.forget(job.dst_host, from, digest);
                }
            }
            let location = location.unwrap_or_default();
            let source = match source {
                Some(source) => source,
                None => crate::ranged::open(src, src_repo, desc).await?,
            };
            let mismatch = Arc::new(AtomicBool::new(false));
            let body = verified_stream(source, desc.clone(), mismatch.clone(), emit.0.clone());
            let put = dst
                .put_blob(dst_repo, &location, &desc.digest, desc.size, body)
                .await;
            if mismatch.load(Ordering::Relaxed) {
                return Err(Error::DigestMismatch {
                    reference: format!("{src_repo}@{}", desc.digest),
                    expected: format!("{} ({} bytes)", desc.digest, desc.size),
                    actual: "different content from the source registry".into(),
                });
            }
            if let Err(e) = put {
                return Err(damaged_in_transit(e));
            }
            job.known.remember(job.dst_host, dst_repo, digest);
            job.known.remember(job.src_host, src_repo, digest);
            Ok((BlobAction::Uploaded, desc.size))
        }
        .await;
        match result {
            Ok(r) => return Ok(r),
            Err(e) if mount_from.is_some() && mount_refused(&e) => {
                tracing::info!(%digest, from = mount_from, error = %e, "cross-repository mount refused; uploading instead");
                job.mounts.store(false, Ordering::Relaxed);
                try_mount = false;
                // Not a failed attempt: the upload is the normal path.
                attempt -= 1;
            }
            Err(e) => {
                try_mount = false;
                // Reported only once the retry layer decided there is another attempt.
                let error = e.to_string();
                dst.backoff("copy blob", &what, attempt, started, e).await?;
                emit.send(ProgressEvent::Retry {
                    what: what.clone(),
                    error,
                    attempt,
                });
            }
        }
    }
}

/// A mount request refused for lack of access to the repository mounted from.
fn mount_refused(e: &Error) -> bool {
    matches!(
        e,
        Error::Registry {
            operation: "POST upload",
            kind: crate::error::ErrorKind::Unauthorized | crate::error::ErrorKind::Denied,
            ..
        }
    )
}

/// Our bytes matched the digest on their way out (`verified_stream` fails the upload
/// otherwise), so a registry that computed another digest or size got them damaged in
/// transit: worth another try, within the retry budget.
fn damaged_in_transit(e: Error) -> Error {
    match e {
        Error::Registry {
            operation,
            reference,
            status,
            code: Some(code),
            message,
            retry_after,
            ..
        } if code == "DIGEST_INVALID" || code == "SIZE_INVALID" => Error::Registry {
            kind: crate::error::ErrorKind::Transient,
            operation,
            reference,
            status,
            code: Some(code),
            message: format!("{message} (the bytes sent were verified; damaged in transit)"),
            retry_after,
        },
        e => e,
    }
}

/// The blob body, hashed on the way through: the last chunk is replaced by an error if
/// the bytes do not match the descriptor, so the upload fails instead of completing.
fn verified_stream(
    source: crate::ranged::BlobStream,
    desc: Descriptor,
    mismatch: Arc<AtomicBool>,
    progress: Option<Arc<dyn Progress>>,
) -> impl futures::Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>> + Send + 'static
{
    struct State {
        inner: crate::ranged::BlobStream,
        hasher: sha2::Sha256,
        seen: u64,
        desc: Descriptor,
        mismatch: Arc<AtomicBool>,
        progress: Option<Arc<dyn Progress>>,
        done: bool,
        verified: bool,
    }
    let state = State {
        inner: source,
        hasher: sha2::Sha256::new(),
        seen: 0,
        desc,
        mismatch,
        progress,
        done: false,
        verified: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        match st.inner.next().await {
            Some(Ok(chunk)) => {
                st.hasher.update(&chunk);
                st.seen += chunk.len() as u64;
                if st.seen > st.desc.size {
                    st.mismatch.store(true, Ordering::Relaxed);
                    st.done = true;
                    return Some((
                        Err(std::io::Error::other("blob larger than its descriptor")),
                        st,
                    ));
                }
                if st.seen == st.desc.size {
                    // Verify before the last byte goes out: with a Content-Length upload the
                    // registry commits (or rejects) as soon as it has every byte, so a
                    // check at end-of-stream would come too late to flag the mismatch.
                    let hasher = std::mem::replace(&mut st.hasher, sha2::Sha256::new());
                    if Digest::from_hasher(hasher) != st.desc.digest {
                        st.mismatch.store(true, Ordering::Relaxed);
                        st.done = true;
                        return Some((Err(std::io::Error::other("blob digest mismatch")), st));
                    }
                    st.verified = true;
                }
                if let Some(p) = &st.progress {
                    p.event(ProgressEvent::Bytes(chunk.len() as u64));
                }
                Some((Ok(chunk), st))
            }
            Some(Err(e)) => {
                st.done = true;
                Some((Err(std::io::Error::other(e)), st))
            }
            None => {
                st.done = true;
                if st.verified {
                    return None;
                }
                let hasher = std::mem::replace(&mut st.hasher, sha2::Sha256::new());
                let got = Digest::from_hasher(hasher);
                if st.seen < st.desc.size {
                    // Truncated: a network problem, retried by the caller.
                    return Some((Err(std::io::Error::other("blob body ended early")), st));
                }
                if got != st.desc.digest {
                    st.mismatch.store(true, Ordering::Relaxed);
                    return Some((Err(std::io::Error::other("blob digest mismatch")), st));
                }
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn registry_error(status: u16, code: &str) -> Error {
        Error::Registry {
            kind: crate::error::classify(status, Some(code)),
            operation: "PUT blob",
            reference: "r@sha256:x".into(),
            status,
            code: Some(code.into()),
            message: "provided digest did not match uploaded content".into(),
            retry_after: None,
        }
    }

    #[test]
    fn only_a_refused_mount_request_falls_back_to_uploading() {
        let mut e = registry_error(401, "UNAUTHORIZED");
        if let Error::Registry { operation, .. } = &mut e {
            *operation = "POST upload";
        }
        assert!(mount_refused(&e));
        let mut denied = registry_error(403, "DENIED");
        if let Error::Registry { operation, .. } = &mut denied {
            *operation = "POST upload";
        }
        assert!(mount_refused(&denied));
        // The same answer to the blob PUT (no push access at all) is an error.
        assert!(!mount_refused(&registry_error(401, "UNAUTHORIZED")));
        let mut transient = registry_error(503, "UNAVAILABLE");
        if let Error::Registry { operation, .. } = &mut transient {
            *operation = "POST upload";
        }
        assert!(!mount_refused(&transient));
    }

    #[test]
    fn a_registry_digest_complaint_about_verified_bytes_is_retried() {
        let before = registry_error(400, "DIGEST_INVALID");
        assert!(!before.is_retryable());
        let after = damaged_in_transit(before);
        assert_eq!(after.kind(), ErrorKind::Transient);
        assert!(after.is_retryable());
        assert_eq!(after.code(), Some("DIGEST_INVALID"));
        assert!(after.to_string().contains("damaged in transit"), "{after}");
        // Anything else is left alone.
        let denied = damaged_in_transit(registry_error(403, "DENIED"));
        assert_eq!(denied.kind(), ErrorKind::Denied);
        assert!(!denied.is_retryable());
    }
}

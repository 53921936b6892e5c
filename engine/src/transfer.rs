//! Blob transfer: every blob of a copy, `Engine::jobs()` at a time, each by the cheapest
//! way the destination allows (already there, a cross-repository mount, or an upload
//! streamed from the source with its digest verified on the way), retried as a whole on
//! transient failures. Large blobs come in ranged parts ([`crate::ranged`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use sha2::Digest as _;

use crate::blobs::BlobLocations;
use crate::client::{Client, Upload};
use crate::copy::Emit;
use crate::error::{Error, Result};
use crate::manifest::Descriptor;
use crate::progress::{BlobAction, Progress, ProgressEvent};
use crate::reference::{Digest, Reference};
use crate::Engine;

/// Blobs up to this size run beside the `jobs` large ones (see [`transfer_blobs`]).
const SMALL_BLOB: u64 = 1024 * 1024;

/// What the blob transfers did.
#[derive(Default)]
pub(crate) struct BlobStats {
    pub(crate) bytes: u64,
    pub(crate) count_uploaded: usize,
    pub(crate) count_skipped: usize,
    pub(crate) count_mounted: usize,
    pub(crate) uploaded: Vec<Digest>,
}

/// Copies every blob, `engine.jobs()` large ones at a time and as many small ones beside
/// them; the first failure fails the copy. `cold`: the destination tag was missing (see
/// [`BlobJob::cold`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn transfer_blobs(
    engine: &Engine,
    src_client: &Client,
    dst_client: &Client,
    source: &Reference,
    destination: &Reference,
    blobs: BTreeMap<Digest, Descriptor>,
    cold: bool,
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
        cold,
        mounts: &mounts,
        known: engine.blobs(),
        emit,
    };
    // Uploads before mounts, largest first: the longest transfer starts on the connection
    // already open (a new one costs a handshake), and the rest fill the jobs around it.
    let mut order: Vec<(bool, Descriptor)> = blobs
        .into_values()
        .map(|d| {
            let mount = same_registry
                || engine
                    .blobs()
                    .lookup(destination.api_host(), &d.digest, dst_repo)
                    .is_some();
            (mount, d)
        })
        .collect();
    order.sort_by(|(ma, a), (mb, b)| {
        (ma, std::cmp::Reverse(a.size), &a.digest).cmp(&(mb, std::cmp::Reverse(b.size), &b.digest))
    });
    // Small blobs (configs, tiny layers) take no job slot: their time is round trips,
    // not bytes, so they run beside the large ones (at most `jobs` of them at a time too)
    // instead of waiting behind them at the end of the copy.
    let (small, large): (Vec<Descriptor>, Vec<Descriptor>) = order
        .into_iter()
        .map(|(_, d)| d)
        .partition(|d| d.size <= SMALL_BLOB);
    let one = |desc: Descriptor| {
        let (job, stats) = (&job, &stats);
        async move {
            let (action, bytes) = copy_blob(job, &desc).await?;
            let mut s = stats.lock();
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
    };
    let run = |blobs: Vec<Descriptor>| {
        futures::stream::iter(blobs.into_iter().map(one))
            .buffer_unordered(engine.jobs())
            .try_collect::<Vec<()>>()
    };
    futures::try_join!(run(large), run(small))?;
    Ok(stats.into_inner())
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
    /// The destination tag was missing, so its repository most likely holds none of the
    /// blobs: a blob the engine never saw at the destination registry has its upload
    /// session and source GET sent with its HEAD.
    cold: bool,
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
    let mut candidate = if job.same_registry {
        Some(src_repo.to_string())
    } else {
        job.known.lookup(job.dst_host, digest, dst_repo)
    };
    // Mount from elsewhere only what this copy's own source holds: a manifest naming
    // someone else's blob must not pull it out of a repository its source never had. That
    // HEAD at the source goes out with the one at the destination (one round trip).
    let ask_source =
        candidate.is_some() && !job.same_registry && job.mounts.load(Ordering::Relaxed);
    // A cold copy's blob that nothing says is at the destination: the upload session and
    // the source GET go out with the HEAD, one round trip less on a far link. If the HEAD
    // finds the blob after all, the session is cancelled and the GET dropped unread. Not
    // for a blob read in ranged parts: its first read is a whole part, and one round trip
    // is nothing beside its transfer.
    let speculate = job.cold
        && candidate.is_none()
        && desc.size < crate::ranged::MIN_RANGED_SIZE
        && !job.known.holds(job.dst_host, digest);
    let mut opened = None;
    let (at_destination, at_source) = if ask_source {
        let (d, s) = tokio::join!(
            dst.blob_exists(dst_repo, digest),
            src.blob_exists(src_repo, digest)
        );
        (d?, Some(s))
    } else if speculate {
        let (d, started, source) = tokio::join!(
            dst.blob_exists(dst_repo, digest),
            dst.start_upload(dst_repo, digest, None),
            crate::ranged::open(src, src_repo, desc)
        );
        match d {
            Ok(false) => {
                opened = Some((started, source));
                (false, None)
            }
            present => {
                if let Ok((_, Some(location))) = &started {
                    dst.cancel_upload(dst_repo, location, digest).await;
                }
                (present?, None)
            }
        }
    } else {
        (dst.blob_exists(dst_repo, digest).await?, None)
    };
    if at_destination {
        job.known.remember(job.dst_host, dst_repo, digest);
        return Ok((BlobAction::Skipped, 0));
    }
    if let Some(at_source) = at_source {
        if !at_source? {
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
        let first = opened.take();
        let result = async {
            // Without a mount to try, the source GET opens while the upload session
            // starts (or started with the HEAD): one round trip per blob less on a far
            // link. Its body waits (flow control) until the upload streams it.
            let (started, source) = if let Some((started, source)) = first {
                settle(dst, dst_repo, digest, started, source).await?
            } else if mount_from.is_none() {
                let (started, source) = tokio::join!(
                    dst.start_upload(dst_repo, digest, None),
                    crate::ranged::open(src, src_repo, desc)
                );
                settle(dst, dst_repo, digest, started, source).await?
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

/// The upload session and the source read of one attempt, both or neither: a session
/// whose read failed is cancelled, so none is left open at the destination.
async fn settle(
    dst: &Client,
    dst_repo: &str,
    digest: &Digest,
    started: Result<(Upload, Option<String>)>,
    source: Result<crate::ranged::BlobStream>,
) -> Result<((Upload, Option<String>), Option<crate::ranged::BlobStream>)> {
    match (started, source) {
        (Ok(started), Ok(source)) => Ok((started, Some(source))),
        (Ok((_, Some(location))), Err(e)) => {
            dst.cancel_upload(dst_repo, &location, digest).await;
            Err(e)
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
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
                if st.seen == st.desc.size && !st.verified {
                    // Verify before the last byte goes out: with a Content-Length upload the
                    // registry commits (or rejects) as soon as it has every byte, so a
                    // check at end-of-stream would come too late to flag the mismatch.
                    // Once only: a source may end with an empty chunk (an HTTP/2 server's
                    // last DATA frame often carries only END_STREAM), which leaves `seen`
                    // at the size, and the hasher has been consumed by then.
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

    /// Runs `chunks` (a fake source, not a registry) through `verified_stream` for a blob
    /// of `data`: what came out, and whether a mismatch was flagged.
    async fn through_verifier(data: &[u8], chunks: Vec<&'static [u8]>) -> (Vec<u8>, bool, bool) {
        let desc = Descriptor {
            media_type: "application/octet-stream".into(),
            digest: Digest::of(data),
            size: data.len() as u64,
        };
        let source =
            futures::stream::iter(chunks.into_iter().map(|c| Ok(bytes::Bytes::from_static(c))))
                .boxed();
        let mismatch = Arc::new(AtomicBool::new(false));
        let out: Vec<_> = verified_stream(source, desc, mismatch.clone(), None)
            .collect()
            .await;
        let failed = out.iter().any(|r| r.is_err());
        let bytes = out.into_iter().flatten().flatten().collect();
        (bytes, failed, mismatch.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn an_empty_chunk_after_the_last_byte_is_not_a_mismatch() {
        // The source's last chunk is empty, as an HTTP/2 server's closing DATA frame is:
        // with an upload that reads its body to the end (HTTP/2, or chunked), this was
        // checked against the spent hasher and failed every such copy.
        let (bytes, failed, mismatch) =
            through_verifier(b"hello world", vec![b"hello ", b"world", b""]).await;
        assert_eq!(bytes, b"hello world");
        assert!(!failed && !mismatch);
        // Empty chunks anywhere else are harmless too.
        let (bytes, failed, mismatch) = through_verifier(
            b"hello world",
            vec![b"", b"hello ", b"", b"world", b"", b""],
        )
        .await;
        assert_eq!(bytes, b"hello world");
        assert!(!failed && !mismatch);
    }

    #[tokio::test]
    async fn wrong_or_extra_bytes_are_still_a_mismatch() {
        // Same length, other bytes.
        let (_, failed, mismatch) = through_verifier(b"hello world", vec![b"hello there"]).await;
        assert!(failed && mismatch);
        // Every byte right, then more after the verified end.
        let (_, failed, mismatch) =
            through_verifier(b"hello world", vec![b"hello world", b"", b"!"]).await;
        assert!(failed && mismatch);
        // Short: an error (retried by the caller), not a mismatch.
        let (_, failed, mismatch) = through_verifier(b"hello world", vec![b"hello"]).await;
        assert!(failed && !mismatch);
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

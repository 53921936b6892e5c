//! Blobs: HEAD, GET (redirects followed by hand, without credentials), uploads
//! (monolithic PUT, chunked PATCH) and DELETE.
//!
//! The transfer requests (`start_upload`, `get_blob`, `put_blob`) make one attempt
//! each: the caller retries the whole transfer (fresh session, fresh GET) as one
//! operation, so their budgets never multiply.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Response, StatusCode};

use super::challenge::Scope;
use super::{responses, Client, Operation};
use crate::error::{Error, ErrorKind, Result};
use crate::reference::Digest;

/// What a blob upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Mounted from another repository.
    Mounted,
    /// The registry opened an upload session at this location.
    Session,
}

/// Chunk size used when a registry refuses monolithic uploads (ECR needs >= 5 MiB).
const CHUNK_SIZE: usize = 8 * 1024 * 1024;

fn with_digest_query(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// Why a transfer's watchdog fired.
enum Watchdog {
    Stalled,
    TooSlow(Duration),
}

impl Client {
    /// The answer's `Location`, resolved against the registry; a missing one is a bad
    /// (transient) answer, `reason` saying which.
    fn location(&self, op: Operation, what: &str, resp: &Response, reason: &str) -> Result<String> {
        resp.headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| self.resolve_location(l))
            .ok_or_else(|| Error::BadResponse {
                operation: op.label(),
                reference: what.to_string(),
                status: resp.status().as_u16(),
                reason: reason.into(),
                transient: true,
            })
    }

    /// The longest one transfer of `size` bytes may take: the stall timeout plus the
    /// size at the minimum rate (`None`: no minimum rate).
    fn transfer_allowance(&self, size: u64) -> Option<Duration> {
        let rate = self.inner.network.limits.min_blob_rate;
        if rate == 0 {
            return None;
        }
        let secs = (size / rate).saturating_add(1);
        Some(
            self.inner
                .retry
                .stall_timeout
                .saturating_add(Duration::from_secs(secs)),
        )
    }

    fn too_slow(&self, op: Operation, what: &str, size: u64, allowed: Duration) -> Error {
        self.observe(op, None);
        Error::TooSlow {
            operation: op.label(),
            reference: what.to_string(),
            size,
            min_rate: self.inner.network.limits.min_blob_rate,
            allowed,
        }
    }

    /// Whether `repository` has the blob.
    pub async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let what = self.blob_what(repository, digest);
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let scopes = [Scope::pull(repository)];
        responses::present(
            self.request(Operation::HeadBlob, &what, &scopes, &|h| h.head(&url))
                .await,
        )
    }

    /// Opens a streaming GET of a blob, following one redirect without credentials.
    /// One attempt (see the module docs).
    pub async fn get_blob(&self, repository: &str, digest: &Digest) -> Result<Response> {
        self.get_blob_range(repository, digest, None).await
    }

    /// Like [`get_blob`](Self::get_blob), asking for the bytes `range`: `(first, None)`
    /// is everything from `first` on, `(first, Some(last))` the bytes `first..=last`.
    /// The range goes to the storage a registry redirects to as well. The answer may be
    /// `206 Partial Content`, or `200` with the whole blob from a registry that ignores
    /// ranges: the caller checks which (see `ranged`).
    pub async fn get_blob_range(
        &self,
        repository: &str,
        digest: &Digest,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Response> {
        let op = Operation::GetBlob;
        let what = self.blob_what(repository, digest);
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let scopes = [Scope::pull(repository)];
        let range = range.map(|(first, last)| match last {
            Some(last) => format!("bytes={first}-{last}"),
            None => format!("bytes={first}-"),
        });
        let with_range = |req: reqwest::RequestBuilder| match &range {
            Some(r) => req.header(RANGE, r.as_str()),
            None => req,
        };
        let reauthed = AtomicBool::new(false);
        let resp = self
            .attempt(op, &what, &scopes, &reauthed, &|h| with_range(h.get(&url)))
            .await?;
        if !resp.status().is_redirection() {
            return Ok(resp);
        }
        let target = self.location(op, &what, &resp, "redirect without a Location")?;
        // Storage gets no credentials (another origin), and is checked like any target.
        let resp = self
            .send_authorized(op, &what, &[], &|h| with_range(h.get(&target)))
            .await?;
        responses::success(op, &what, resp).await
    }

    /// Reads a small blob (an image config) whole: at most `cap` bytes, checked against
    /// its digest, retried like any operation.
    pub async fn get_blob_bytes(
        &self,
        repository: &str,
        digest: &Digest,
        cap: u64,
    ) -> Result<bytes::Bytes> {
        let op = Operation::GetBlob;
        let what = self.blob_what(repository, digest);
        self.retrying(op, &what, |_| async {
            let resp = self.get_blob(repository, digest).await?;
            let body = self.read_capped(op, &what, resp, cap, "blob body").await?;
            if Digest::of(&body) != *digest {
                return Err(Error::DigestMismatch {
                    reference: what.clone(),
                    expected: digest.to_string(),
                    actual: Digest::of(&body).to_string(),
                });
            }
            Ok(body)
        })
        .await
    }

    /// Starts an upload in `repository`, mounting from `mount_from` when given.
    /// Returns `(Upload::Mounted, None)` or `(Upload::Session, Some(location))`.
    /// One attempt (see the module docs).
    pub async fn start_upload(
        &self,
        repository: &str,
        digest: &Digest,
        mount_from: Option<&str>,
    ) -> Result<(Upload, Option<String>)> {
        let op = Operation::StartUpload;
        let what = self.blob_what(repository, digest);
        let mut path = format!("/v2/{repository}/blobs/uploads/");
        let mut scopes = vec![Scope::push(repository)];
        if let Some(from) = mount_from {
            path.push_str(&format!("?mount={digest}&from={from}"));
            scopes.push(Scope::pull(from));
        }
        let url = self.url(&path);
        let reauthed = AtomicBool::new(false);
        let resp = self
            .attempt(op, &what, &scopes, &reauthed, &|h| {
                h.post(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED if mount_from.is_some() => Ok((Upload::Mounted, None)),
            StatusCode::ACCEPTED | StatusCode::CREATED => {
                let loc = self.location(op, &what, &resp, "upload started without a Location")?;
                Ok((Upload::Session, Some(loc)))
            }
            other => Err(Error::BadResponse {
                operation: op.label(),
                reference: what,
                status: other.as_u16(),
                reason: "unexpected answer to an upload start".into(),
                transient: true,
            }),
        }
    }

    /// Finishes an upload session with a single PUT streaming `body` (`size` bytes).
    /// Falls back to chunked PATCH once a registry refuses monolithic uploads; the
    /// caller then has to retry with a fresh session and stream. A failed upload's
    /// session is cancelled, so what was sent does not stay at the registry.
    pub async fn put_blob<S>(
        &self,
        repository: &str,
        location: &str,
        digest: &Digest,
        size: u64,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let result = if self.inner.chunked_only.load(Ordering::Relaxed) {
            self.put_blob_chunked(repository, location, digest, size, body)
                .await
        } else {
            self.put_blob_monolithic(repository, location, digest, size, body)
                .await
        };
        if result.is_err() {
            self.cancel_upload(repository, location, digest).await;
        }
        result
    }

    /// Best effort: DELETE the upload session (distribution then drops what it stored).
    pub(crate) async fn cancel_upload(&self, repository: &str, location: &str, digest: &Digest) {
        let op = Operation::CancelUpload;
        let what = self.blob_what(repository, digest);
        let scopes = [Scope::push(repository)];
        let result = self
            .send_authorized(op, &what, &scopes, &|h| h.delete(location))
            .await;
        if let Err(e) = result {
            tracing::debug!(registry = %self.inner.registry, error = %e, "cancelling an upload session failed");
        }
    }

    async fn put_blob_monolithic<S>(
        &self,
        repository: &str,
        location: &str,
        digest: &Digest,
        size: u64,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let op = Operation::PutBlob;
        let what = self.blob_what(repository, digest);
        let url = with_digest_query(location, digest);
        // The upload may take long; it has stalled only when no byte moved (from the
        // source into the request) for the stall timeout.
        let started = Instant::now();
        let last_progress = Arc::new(AtomicU64::new(0));
        let progress = last_progress.clone();
        let body = body.inspect(move |_| {
            progress.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        });
        let body = std::sync::Mutex::new(Some(reqwest::Body::wrap_stream(body)));
        let scopes = [Scope::push(repository)];
        let build = |h: &reqwest::Client| {
            let mut req = h
                .put(&url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size);
            if let Some(b) = body.lock().ok().and_then(|mut g| g.take()) {
                req = req.body(b);
            }
            req
        };
        let req = self.prepare(op, &what, &scopes, &build).await?;
        let watchdog = self.watchdog(started, &last_progress, self.transfer_allowance(size));
        let resp = tokio::select! {
            result = self.execute(op, &what, req) => result?,
            fired = watchdog => return Err(match fired {
                Watchdog::Stalled => self.stalled(op, &what),
                Watchdog::TooSlow(allowed) => self.too_slow(op, &what, size, allowed),
            }),
        };
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status().as_u16();
        let err = responses::error_from_response(op, &what, resp).await;
        if status == 401 {
            // A token that expired mid-upload: forget it, the caller's retry gets a new one.
            self.forget_tokens().await;
            return Err(Error::Registry {
                kind: ErrorKind::Transient,
                operation: op.label(),
                reference: what,
                status,
                code: err.code().map(str::to_string),
                message: "token rejected during upload; retrying with a new token".into(),
                retry_after: None,
            });
        }
        if matches!(status, 400 | 405 | 411 | 413 | 416)
            && err.kind() != ErrorKind::Integrity
            && err.code() != Some("DIGEST_INVALID")
        {
            tracing::info!(registry = %self.inner.registry, %status, "monolithic upload refused; switching to chunked uploads");
            self.inner.chunked_only.store(true, Ordering::Relaxed);
            return Err(Error::Registry {
                kind: ErrorKind::Transient,
                operation: op.label(),
                reference: what,
                status,
                code: err.code().map(str::to_string),
                message: "monolithic upload refused; retrying in chunks".into(),
                retry_after: None,
            });
        }
        Err(err)
    }

    /// Resolves when no byte moved for the stall timeout, or the transfer took longer
    /// than `allowance`.
    async fn watchdog(
        &self,
        started: Instant,
        last_progress: &AtomicU64,
        allowance: Option<Duration>,
    ) -> Watchdog {
        let stall = self.inner.retry.stall_timeout;
        loop {
            let elapsed = started.elapsed();
            let idle = elapsed
                .saturating_sub(Duration::from_millis(last_progress.load(Ordering::Relaxed)));
            if idle >= stall {
                return Watchdog::Stalled;
            }
            let mut wait = stall - idle;
            if let Some(allowed) = allowance {
                if elapsed >= allowed {
                    return Watchdog::TooSlow(allowed);
                }
                wait = wait.min(allowed.saturating_sub(elapsed));
            }
            tokio::time::sleep(wait).await;
        }
    }

    async fn put_blob_chunked<S>(
        &self,
        repository: &str,
        location: &str,
        digest: &Digest,
        size: u64,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let what = self.blob_what(repository, digest);
        let scopes = [Scope::push(repository)];
        let mut location = location.to_string();
        let mut offset: u64 = 0;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_SIZE);
        let mut body = Box::pin(body);
        let mut done = false;
        let stall = self.inner.retry.stall_timeout;
        let started = Instant::now();
        let allowance = self.transfer_allowance(size);
        while !done {
            let wait = match allowance {
                Some(a) if started.elapsed() >= a => {
                    return Err(self.too_slow(Operation::PutBlob, &what, size, a))
                }
                Some(a) => stall.min(a.saturating_sub(started.elapsed())),
                None => stall,
            };
            let next = match tokio::time::timeout(wait, body.next()).await {
                Ok(next) => next,
                Err(_) if wait < stall => {
                    let a = allowance.unwrap_or(wait);
                    return Err(self.too_slow(Operation::GetBlob, &what, size, a));
                }
                Err(_) => return Err(self.stalled(Operation::GetBlob, &what)),
            };
            match next {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(Error::Io {
                        context: format!("reading {what}"),
                        source: e,
                    })
                }
                None => done = true,
            }
            if buf.len() >= CHUNK_SIZE || (done && !buf.is_empty()) {
                let chunk = Bytes::from(std::mem::take(&mut buf));
                let end = offset + chunk.len() as u64 - 1;
                let loc = location.clone();
                let reauthed = AtomicBool::new(false);
                let resp = self
                    .attempt(Operation::PatchBlob, &what, &scopes, &reauthed, &|h| {
                        h.patch(&loc)
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header("Content-Range", format!("{offset}-{end}"))
                            .header(CONTENT_LENGTH, chunk.len())
                            .body(chunk.clone())
                    })
                    .await?;
                if let Some(l) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
                    location = self.resolve_location(l);
                }
                offset = end + 1;
            }
        }
        let url = with_digest_query(&location, digest);
        let reauthed = AtomicBool::new(false);
        self.attempt(Operation::PutBlob, &what, &scopes, &reauthed, &|h| {
            h.put(&url).header(CONTENT_LENGTH, 0)
        })
        .await?;
        Ok(())
    }

    /// DELETE a blob. `Ok(false)` when it was already gone.
    pub async fn delete_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let what = self.blob_what(repository, digest);
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let scopes = [Scope::delete(repository)];
        responses::present(
            self.request(Operation::DeleteBlob, &what, &scopes, &|h| h.delete(&url))
                .await,
        )
    }
}

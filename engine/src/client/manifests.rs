//! Manifests: HEAD (resolve), GET (capped, verified against a pinned digest), PUT and
//! DELETE.

use bytes::Bytes;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};

use super::challenge::Scope;
use super::{responses, Client, Operation, MAX_MANIFEST_BYTES};
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::ACCEPT as MANIFEST_ACCEPT;
use crate::reference::{Digest, Reference};

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct ManifestData {
    /// Exact bytes.
    pub bytes: Bytes,
    /// `Content-Type` as served.
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// `PUT manifest` answers that mean "the registry's storage is catching up" when
/// everything the manifest references is in place; retried a few times.
const SETTLING_ATTEMPTS: u32 = 4;

fn digest_header(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<Digest>().ok())
}

/// `Content-Type` without parameters (empty when absent).
fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
        .unwrap_or_default()
}

fn check_pinned(reference: &Reference, actual: &Digest) -> Result<()> {
    match reference.digest() {
        Some(pinned) if pinned != actual => Err(Error::DigestMismatch {
            reference: reference.to_string(),
            expected: pinned.to_string(),
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

impl Client {
    fn manifest_url(&self, reference: &Reference) -> String {
        self.url(&format!(
            "/v2/{}/manifests/{}",
            reference.repository(),
            reference.manifest_ref()
        ))
    }

    /// HEAD the manifest; returns its digest (GET if the header is missing).
    pub async fn resolve(&self, reference: &Reference) -> Result<Digest> {
        Ok(self.resolve_typed(reference).await?.0)
    }

    /// [`Client::resolve`], with the media type the registry gave (`Content-Type`
    /// without parameters; empty when it sent none).
    pub async fn resolve_typed(&self, reference: &Reference) -> Result<(Digest, String)> {
        let what = reference.to_string();
        let url = self.manifest_url(reference);
        let scopes = [Scope::pull(reference.repository())];
        let resp = self
            .request(Operation::HeadManifest, &what, &scopes, &|h| {
                h.head(&url).header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        match digest_header(resp.headers()) {
            Some(d) => {
                check_pinned(reference, &d)?;
                Ok((d, content_type(resp.headers())))
            }
            None => {
                let m = self.get_manifest(reference).await?;
                Ok((m.digest, m.media_type))
            }
        }
    }

    /// GET the manifest bytes (at most [`MAX_MANIFEST_BYTES`]). Verified against the
    /// reference's digest when pinned.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<ManifestData> {
        let what = reference.to_string();
        let url = self.manifest_url(reference);
        let scopes = [Scope::pull(reference.repository())];
        let answer = self
            .request_body(
                Operation::GetManifest,
                &what,
                &scopes,
                MAX_MANIFEST_BYTES,
                "manifest body",
                &|h| h.get(&url).header(ACCEPT, MANIFEST_ACCEPT),
            )
            .await?;
        let bytes = answer.body;
        let media_type = content_type(&answer.headers);
        let digest = Digest::of(&bytes);
        check_pinned(reference, &digest)?;
        Ok(ManifestData {
            bytes,
            media_type,
            digest,
        })
    }

    /// PUT manifest bytes under `reference` (tag or digest); returns the digest the
    /// registry reports, checked against the bytes.
    pub async fn put_manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest> {
        Ok(self
            .put_manifest_answer(reference, media_type, bytes)
            .await?
            .0)
    }

    /// [`Client::put_manifest`], also telling whether the registry answered with an
    /// `OCI-Subject` header: it keeps the referrers of the manifest's `subject` itself
    /// (OCI 1.1 referrers API), so no fallback tag is needed.
    pub async fn put_manifest_answer(
        &self,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(Digest, bool)> {
        let op = Operation::PutManifest;
        let what = reference.to_string();
        let url = self.manifest_url(reference);
        let scopes = [Scope::push(reference.repository())];
        let expected = Digest::of(&bytes);
        let build = |h: &reqwest::Client| {
            h.put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(bytes.clone())
        };
        let reauthed = std::sync::atomic::AtomicBool::new(false);
        let (w, s, r, b) = (&what, &scopes, &reauthed, &build);
        let resp = self
            .retrying(op, &what, |n| async move {
                match self.attempt(op, w, s, r, b).await {
                    Err(e) if settling(&e) && n < SETTLING_ATTEMPTS => Err(as_transient(e)),
                    other => other,
                }
            })
            .await?;
        if let Some(got) = digest_header(resp.headers()) {
            if got != expected {
                return Err(Error::DigestMismatch {
                    reference: what,
                    expected: expected.to_string(),
                    actual: got.to_string(),
                });
            }
        }
        let subject = resp.headers().contains_key("oci-subject");
        Ok((expected, subject))
    }

    /// DELETE a manifest by tag or digest. `Ok(false)` when it was already gone.
    pub async fn delete_manifest(&self, reference: &Reference) -> Result<bool> {
        let what = reference.to_string();
        let url = self.manifest_url(reference);
        let scopes = [Scope::delete(reference.repository())];
        responses::present(
            self.request(Operation::DeleteManifest, &what, &scopes, &|h| {
                h.delete(&url)
            })
            .await,
        )
    }
}

/// Everything the manifest references is in place and its bytes hash to its digest, so
/// "blob unknown" or "digest invalid" is the registry's storage catching up (eventually
/// consistent back ends; distribution's filesystem driver rewriting a manifest another
/// client pushes at the same moment).
fn settling(e: &Error) -> bool {
    matches!(
        e.code(),
        Some("MANIFEST_BLOB_UNKNOWN" | "BLOB_UNKNOWN" | "DIGEST_INVALID")
    )
}

/// The same registry error, classified transient (its real status and code kept).
fn as_transient(e: Error) -> Error {
    match e {
        Error::Registry {
            operation,
            reference,
            status,
            code,
            message,
            retry_after,
            ..
        } => Error::Registry {
            kind: ErrorKind::Transient,
            operation,
            reference,
            status,
            code,
            message,
            retry_after,
        },
        other => other,
    }
}

//! The OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`): the manifests whose
//! `subject` is a given manifest (signatures, attestations, SBOMs pushed the OCI 1.1 way).
//!
//! Registries without the API (distribution 2.8) answer 404; their referrers live under
//! the `sha256-<hex>` fallback tag and cosign's `sha256-<hex>.sig|.att|.sbom` tags, which
//! a tag listing already finds.

use std::collections::HashSet;

use reqwest::header::ACCEPT;

use crate::client::{next_link, Client, Operation, Scope, MAX_MANIFEST_BYTES};
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::{Descriptor, OCI_INDEX};
use crate::reference::Digest;

/// Pages of one referrers listing followed at most (a registry that keeps sending a
/// `Link` is cut off with an error rather than followed forever).
const MAX_PAGES: usize = 64;
/// Referrers of one manifest kept at most.
const MAX_REFERRERS: usize = 10_000;

impl Client {
    /// The manifests that refer to `digest` in `repository`, through the referrers API.
    /// `Ok(None)` when the registry has no referrers API (404 on the endpoint). Pages are
    /// followed through `Link` (same registry only, each URL once) up to a fixed bound.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>> {
        let what = format!("{repository}@{digest}");
        let Some(entries) = self.referrer_entries(repository, digest, None).await? else {
            return Ok(None);
        };
        entries
            .into_iter()
            .map(|e| {
                serde_json::from_value::<Descriptor>(e)
                    .map_err(|e| not_an_index(&what, 200, &e.to_string()))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The referrers API's descriptors for `digest` as served (every field kept, e.g.
    /// `artifactType` and `annotations`), optionally asking the registry to filter by
    /// `artifact_type` (a registry may ignore the filter; callers filter again).
    /// `Ok(None)` when the registry has no referrers API (404 on the endpoint); after
    /// such an answer this client does not ask the registry again.
    pub async fn referrer_entries(
        &self,
        repository: &str,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<serde_json::Value>>> {
        if self.lacks_referrers_api() {
            return Ok(None);
        }
        let what = format!("{repository}@{digest}");
        let scopes = [Scope::pull(repository)];
        let mut url = self.url(&format!("/v2/{repository}/referrers/{digest}"));
        if let Some(t) = artifact_type {
            url = format!("{url}?artifactType={}", encode_query(t));
        }
        let mut seen = HashSet::new();
        let mut out: Vec<serde_json::Value> = Vec::new();
        for _ in 0..MAX_PAGES {
            seen.insert(url.clone());
            let u = url.clone();
            let page = self
                .request_body(
                    Operation::GetReferrers,
                    &what,
                    &scopes,
                    MAX_MANIFEST_BYTES,
                    "referrers page",
                    &|h| h.get(&u).header(ACCEPT, OCI_INDEX),
                )
                .await;
            let answer = match page {
                Ok(a) => a,
                Err(e) if e.status() == Some(404) && out.is_empty() => {
                    self.set_lacks_referrers_api();
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let status = answer.status;
            let next = next_link(&answer.headers).map(|l| self.resolve_location(&l));
            let body = answer.body;
            out.extend(parse_page(&what, status, &body)?);
            if out.len() > MAX_REFERRERS {
                return Err(too_many(&what, status, "more than 10000 referrers"));
            }
            match next {
                Some(n) if !seen.contains(&n) => url = n,
                Some(_) => return Err(too_many(&what, status, "the referrers pages loop")),
                None => return Ok(Some(out)),
            }
        }
        Err(too_many(&what, 200, "more than 64 pages of referrers"))
    }
}

/// Percent-encodes a query value (media types hold `/`, `+` and `.`).
fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The descriptors of an image index page (each kept as served).
fn parse_page(what: &str, status: u16, body: &[u8]) -> Result<Vec<serde_json::Value>> {
    #[derive(serde::Deserialize)]
    struct Page {
        #[serde(default)]
        manifests: Vec<serde_json::Value>,
    }
    let page = serde_json::from_slice::<Page>(body)
        .map_err(|e| not_an_index(what, status, &e.to_string()))?;
    for m in &page.manifests {
        // Every entry must at least be a descriptor.
        serde_json::from_value::<Descriptor>(m.clone())
            .map_err(|e| not_an_index(what, status, &e.to_string()))?;
    }
    Ok(page.manifests)
}

fn not_an_index(what: &str, status: u16, e: &str) -> Error {
    Error::Registry {
        kind: ErrorKind::InvalidInput,
        operation: "GET referrers",
        reference: what.to_string(),
        status,
        code: None,
        message: format!("the referrers answer is not an image index: {e}"),
        retry_after: None,
    }
}

fn too_many(what: &str, status: u16, message: &str) -> Error {
    Error::Registry {
        kind: ErrorKind::InvalidInput,
        operation: "GET referrers",
        reference: what.to_string(),
        status,
        code: None,
        message: message.to_string(),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_referrers_page_is_an_index_of_descriptors() {
        let d = Digest::of(b"sig");
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":7,"artifactType":"application/vnd.dev.cosign.artifact.sig.v1+json"}}]}}"#
        );
        let page = parse_page("r@x", 200, body.as_bytes()).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0]["digest"], d.as_str());
        assert_eq!(
            page[0]["artifactType"],
            "application/vnd.dev.cosign.artifact.sig.v1+json"
        );
        let not_descriptor = r#"{"manifests":[{"digest":"nope"}]}"#;
        assert!(parse_page("r@x", 200, not_descriptor.as_bytes()).is_err());
        assert!(parse_page("r@x", 200, b"{}").unwrap().is_empty());
        let err = parse_page("r@x", 200, b"<html>").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn artifact_type_filters_are_percent_encoded() {
        assert_eq!(
            encode_query("application/vnd.dev.cosign+json"),
            "application%2Fvnd.dev.cosign%2Bjson"
        );
    }
}

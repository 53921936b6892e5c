//! Read-only looks at a registry for front ends that copy nothing: a repository's tags
//! ([`Engine::list_tags`]) and what a reference points at ([`Engine::inspect`]).

use crate::error::Result;
use crate::manifest::{Manifest, DOCKER_MANIFEST, OCI_MANIFEST};
use crate::platform::{self, Platform};
use crate::reference::{Digest, Reference};
use crate::tagset::CompiledFilter;
use crate::Engine;

/// What a reference points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// The manifest's digest (an index's own digest for a multi-platform image).
    pub digest: Digest,
    /// `<normalised repository>@<digest>`, as every front end writes ids.
    pub id: String,
    /// The media type the registry gave (empty when it sent none).
    pub media_type: String,
    /// For an index: its platforms with their child digests, in the index's order
    /// (attestation manifests and entries without a platform left out). Empty for a
    /// single image.
    pub platforms: Vec<PlatformDigest>,
}

/// One platform of an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformDigest {
    /// `os/architecture[/variant]` as the index writes it, e.g. `linux/arm64/v8`.
    pub platform: Platform,
    /// The child manifest's digest.
    pub digest: Digest,
}

fn is_single_image(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

impl Engine {
    /// Every tag of `repository`'s repository (its tag or digest is ignored), following
    /// pagination, with the caps of [`crate::Client::list_tags`]. A repository that does
    /// not exist has none.
    pub async fn list_tags(&self, repository: &Reference) -> Result<Vec<String>> {
        self.client(repository)
            .list_tags(repository.repository())
            .await
    }

    /// The tags of `repository` that `filter` selects ([`CompiledFilter::select`]).
    pub async fn select_tags(
        &self,
        repository: &Reference,
        filter: &CompiledFilter,
    ) -> Result<Vec<String>> {
        Ok(filter.select(&self.list_tags(repository).await?))
    }

    /// What `reference` points at: its digest by HEAD and, when that is an index, one
    /// GET of the index (pinned to that digest, capped like every manifest) for its
    /// platforms. A single image costs the HEAD only; a registry that names no known
    /// media type on HEAD costs the GET too. `Ok(None)` only when the registry says the
    /// manifest is not there.
    pub async fn inspect(&self, reference: &Reference) -> Result<Option<Inspection>> {
        let client = self.client(reference);
        let (digest, media_type) = match client.resolve_typed(reference).await {
            Ok(answer) => answer,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let id = reference.id(&digest);
        if is_single_image(&media_type) {
            return Ok(Some(Inspection {
                digest,
                id,
                media_type,
                platforms: Vec::new(),
            }));
        }
        let pinned = reference.with_digest(digest.clone());
        let manifest = client.get_manifest(&pinned).await?;
        let what = pinned.to_string();
        let platforms = if let Manifest::Index { .. } =
            Manifest::parse(&what, &manifest.media_type, &manifest.bytes)?
        {
            platform::listed(&what, &manifest)?
                .into_iter()
                .map(|(platform, digest)| PlatformDigest { platform, digest })
                .collect()
        } else {
            Vec::new()
        };
        let media_type = if media_type.is_empty() {
            manifest.media_type
        } else {
            media_type
        };
        Ok(Some(Inspection {
            digest,
            id,
            media_type,
            platforms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ManifestData;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    /// The platform list of an index: children's digests in order, attestations,
    /// platform-less entries and junk labels left out.
    #[test]
    fn index_platforms_with_child_digests() {
        let entry = |n: u8, platform: &str, annotations: &str| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10{platform}{annotations}}}"#,
                digest(n)
            )
        };
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{},{},{},{},{}]}}"#,
            entry(
                1,
                r#","platform":{"os":"linux","architecture":"amd64"}"#,
                ""
            ),
            entry(
                2,
                r#","platform":{"os":"linux","architecture":"arm64","variant":"v8"}"#,
                ""
            ),
            entry(
                3,
                r#","platform":{"os":"unknown","architecture":"unknown"}"#,
                r#","annotations":{"vnd.docker.reference.type":"attestation-manifest"}"#
            ),
            entry(4, "", ""),
            entry(
                5,
                r#","platform":{"os":"Linux\n","architecture":"amd64"}"#,
                ""
            ),
        );
        let index = ManifestData {
            digest: Digest::of(body.as_bytes()),
            media_type: crate::manifest::OCI_INDEX.into(),
            bytes: body.into_bytes().into(),
        };
        let got: Vec<(String, Digest)> = platform::listed("r/x", &index)
            .unwrap()
            .into_iter()
            .map(|(p, d)| (p.to_string(), d))
            .collect();
        assert_eq!(
            got,
            vec![
                ("linux/amd64".to_string(), digest(1)),
                ("linux/arm64/v8".to_string(), digest(2)),
            ]
        );
    }
}

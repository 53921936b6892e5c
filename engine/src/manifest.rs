//! Manifest media types and the little parsing the copy needs: descriptors of children,
//! config and layers. The bytes themselves are never re-serialised.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::Digest;

/// Docker image manifest v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 1 (rejected).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker schema 1 (rejected).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: every type we can copy.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The most child manifests an index may list (real multi-arch indexes list a few
/// dozen, with attestations).
pub const MAX_INDEX_ENTRIES: usize = 10_000;
/// The most blobs (config included) an image manifest may reference (Docker's limit is
/// 127 layers; OCI artifacts may hold one blob per file).
pub const MAX_LAYERS: usize = 10_000;

/// The most manifest bytes one sync reads (every child of an index, recursively): an
/// index may name 10,000 children of up to 4 MiB each, which must not all be held.
pub const MAX_TREE_BYTES: u64 = 64 * 1024 * 1024;

/// Fails when the manifest bytes held so far plus `next` pass [`MAX_TREE_BYTES`].
pub(crate) fn check_tree_size(reference: &str, held: u64, next: usize) -> Result<()> {
    if held.saturating_add(next as u64) > MAX_TREE_BYTES {
        return Err(Error::Limit {
            operation: "GET manifest",
            reference: reference.to_string(),
            what: "manifest bytes of one image's index tree".to_string(),
            limit: MAX_TREE_BYTES,
        });
    }
    Ok(())
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    // The short-lived OCI artifact manifest used `blobs`.
    #[serde(default)]
    blobs: Option<Vec<Descriptor>>,
}

/// What a manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single image or artifact: config and layers are blobs.
    Image {
        /// Config blob (absent only for old artifact manifests).
        config: Option<Descriptor>,
        /// Layer blobs.
        layers: Vec<Descriptor>,
    },
    /// An index or manifest list: children are manifests.
    Index {
        /// Child manifests.
        manifests: Vec<Descriptor>,
    },
}

impl Manifest {
    /// Parses manifest `bytes` served with `content_type`. Schema 1 and unknown shapes
    /// are rejected with a clear error naming `reference`.
    pub fn parse(reference: &str, content_type: &str, bytes: &[u8]) -> Result<Manifest> {
        let unsupported = |media_type: &str, reason: &str| Error::UnsupportedManifest {
            reference: reference.to_string(),
            media_type: media_type.to_string(),
            reason: reason.to_string(),
        };
        let raw: Raw = serde_json::from_slice(bytes)
            .map_err(|e| unsupported(content_type, &format!("not valid manifest JSON: {e}")))?;
        let media_type = raw
            .media_type
            .clone()
            .unwrap_or_else(|| content_type.to_string());
        if media_type == DOCKER_SCHEMA1
            || media_type == DOCKER_SCHEMA1_SIGNED
            || raw.schema_version == Some(1)
        {
            return Err(unsupported(
                &media_type,
                "Docker schema 1 manifests are deprecated and cannot be copied byte for byte; rebuild or re-push the image with a current client",
            ));
        }
        let limit = |what: &str, cap: usize| Error::Limit {
            operation: "parse manifest",
            reference: reference.to_string(),
            what: what.to_string(),
            limit: cap as u64,
        };
        if let Some(manifests) = raw.manifests {
            if manifests.len() > MAX_INDEX_ENTRIES {
                return Err(limit("index entries", MAX_INDEX_ENTRIES));
            }
            return Ok(Manifest::Index { manifests });
        }
        if raw.config.is_some() || raw.layers.is_some() || raw.blobs.is_some() {
            let mut layers = raw.layers.unwrap_or_default();
            layers.extend(raw.blobs.unwrap_or_default());
            if layers.len() > MAX_LAYERS {
                return Err(limit("layers", MAX_LAYERS));
            }
            return Ok(Manifest::Image {
                config: raw.config,
                layers,
            });
        }
        Err(unsupported(
            &media_type,
            "neither an image manifest nor an index",
        ))
    }

    /// Blobs referenced directly (config first).
    pub fn blobs(&self) -> Vec<Descriptor> {
        match self {
            Manifest::Image { config, layers } => {
                config.iter().chain(layers.iter()).cloned().collect()
            }
            Manifest::Index { .. } => Vec::new(),
        }
    }

    /// Child manifests (empty for images).
    pub fn children(&self) -> &[Descriptor] {
        match self {
            Manifest::Index { manifests } => manifests,
            Manifest::Image { .. } => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema1_is_rejected_clearly() {
        let err = Manifest::parse(
            "r",
            DOCKER_SCHEMA1_SIGNED,
            br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("schema 1"), "{err}");
    }

    #[test]
    fn index_and_image_are_told_apart() {
        let d = format!("sha256:{}", "a".repeat(64));
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":7}}]}}"#
        );
        assert_eq!(
            Manifest::parse("r", OCI_INDEX, idx.as_bytes())
                .unwrap()
                .children()
                .len(),
            1
        );
        let img = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{d}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":3}},"artifactType":"a/b"}}"#
        );
        assert_eq!(
            Manifest::parse("r", OCI_MANIFEST, img.as_bytes())
                .unwrap()
                .blobs()
                .len(),
            1
        );
    }
}

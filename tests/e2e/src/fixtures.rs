//! Test images generated deterministically from a seed and pushed with raw HTTP
//! (distribution API, no engine code involved): single-platform images in Docker or OCI
//! media types, 2-platform indexes / manifest lists, and artifacts with a `subject`.
//!
//! Layers are pseudo-random bytes (registries never look inside them).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI empty descriptor's media type.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// Docker or OCI media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// `application/vnd.docker.*`.
    Docker,
    /// `application/vnd.oci.*`.
    Oci,
}

/// What image to generate.
#[derive(Debug, Clone)]
pub struct FixtureSpec {
    /// Everything is derived from this: same seed, same digests.
    pub seed: u64,
    /// Number of layers.
    pub layers: usize,
    /// Bytes per layer.
    pub layer_size: usize,
    /// The first `shared_layers` layers do not depend on `seed`: images with different
    /// seeds share them (for layer-sharing tests).
    pub shared_layers: usize,
    /// Media types.
    pub media: MediaKind,
    /// `(os, architecture)` written into the config.
    pub platform: (String, String),
}

impl Default for FixtureSpec {
    fn default() -> Self {
        FixtureSpec {
            seed: 1,
            layers: 3,
            layer_size: 64 * 1024,
            shared_layers: 0,
            media: MediaKind::Oci,
            platform: ("linux".into(), "amd64".into()),
        }
    }
}

impl FixtureSpec {
    /// The default spec with another seed.
    pub fn seeded(seed: u64) -> FixtureSpec {
        FixtureSpec {
            seed,
            ..FixtureSpec::default()
        }
    }
}

/// What was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Digest of the tagged manifest (`sha256:...`).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its exact bytes.
    pub manifest: Vec<u8>,
    /// Child manifest digests (indexes only).
    pub children: Vec<String>,
    /// Every blob digest (configs and layers, of the children too), without duplicates.
    pub blobs: Vec<String>,
    /// Layer digests only (of the children too).
    pub layers: Vec<String>,
    /// Total blob bytes.
    pub blob_bytes: u64,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes (splitmix64), `len` bytes for `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_random(seed, 0, &mut out);
    out
}

/// Fills `buf` with the bytes at `offset..offset+buf.len()` of the stream for `seed`
/// (`offset` must be a multiple of 8).
pub fn fill_random(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    state = state.wrapping_add((offset / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for chunk in buf.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let b = z.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A registry endpoint to push to: base URL, client, optional Basic credentials.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://127.0.0.1:PORT` or `https://...`.
    pub base: String,
    /// The client (trusting the registry's CA for TLS).
    pub client: reqwest::Client,
    /// Basic credentials (htpasswd registries).
    pub basic: Option<(String, String)>,
}

impl Target {
    /// A plain-HTTP registry at `addr` (`127.0.0.1:PORT`), anonymous.
    pub fn plain(addr: &str) -> Target {
        Target {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            basic: None,
        }
    }

    fn req(&self, method: reqwest::Method, path_or_url: &str) -> reqwest::RequestBuilder {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let r = self.client.request(method, url);
        match &self.basic {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// Uploads a blob (POST + monolithic PUT) unless the repository has it.
    pub async fn push_blob(&self, repo: &str, data: Bytes) -> Result<String> {
        let digest = sha256(&data);
        self.push_blob_stream(repo, &digest, data.len() as u64, reqwest::Body::from(data))
            .await?;
        Ok(digest)
    }

    /// Uploads `size` bytes of `body` as blob `digest` unless the repository has it.
    pub async fn push_blob_stream(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        let head = self
            .req(reqwest::Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"))
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(());
        }
        let start = self
            .req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .header(reqwest::header::CONTENT_LENGTH, 0)
            .send()
            .await?;
        if start.status().as_u16() != 202 {
            bail!(
                "POST upload in {repo}: HTTP {}: {}",
                start.status(),
                start.text().await.unwrap_or_default()
            );
        }
        let location = start
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("upload without Location")?
            .to_string();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.base)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .req(
                reqwest::Method::PUT,
                &format!("{location}{sep}digest={digest}"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await?;
        if put.status().as_u16() != 201 {
            bail!(
                "PUT blob {digest} in {repo}: HTTP {}: {}",
                put.status(),
                put.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// PUTs manifest bytes under `reference` (tag or digest); returns their digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String> {
        let resp = self
            .req(
                reqwest::Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
            )
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        if resp.status().as_u16() != 201 {
            bail!(
                "PUT manifest {repo}:{reference}: HTTP {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(sha256(bytes))
    }

    /// Pushes a single-platform image under `tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, spec: &FixtureSpec) -> Result<Pushed> {
        self.push_image_at(repo, Some(tag), spec).await
    }

    /// Pushes a single-platform image under `tag`, or by digest only when `tag` is None.
    pub async fn push_image_at(
        &self,
        repo: &str,
        tag: Option<&str>,
        spec: &FixtureSpec,
    ) -> Result<Pushed> {
        let (config_type, layer_type, manifest_type) = match spec.media {
            MediaKind::Docker => (
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                DOCKER_MANIFEST,
            ),
            MediaKind::Oci => (
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
                OCI_MANIFEST,
            ),
        };
        let mut layers = Vec::new();
        let mut blob_bytes = 0u64;
        for i in 0..spec.layers {
            let layer_seed = if i < spec.shared_layers {
                0xABCD_0000 + i as u64
            } else {
                spec.seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1)
            };
            let data = Bytes::from(random_bytes(layer_seed, spec.layer_size));
            let digest = self.push_blob(repo, data).await?;
            blob_bytes += spec.layer_size as u64;
            layers
                .push(json!({"mediaType": layer_type, "digest": digest, "size": spec.layer_size}));
        }
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| l["digest"].as_str().unwrap_or_default().to_string())
            .collect();
        let config = serde_json::to_vec(&json!({
            "architecture": spec.platform.1,
            "os": spec.platform.0,
            "config": {"Labels": {"dev.imagesync.e2e.seed": spec.seed.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))?;
        let config_digest = self.push_blob(repo, Bytes::from(config.clone())).await?;
        blob_bytes += config.len() as u64;
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": layers,
        }))?;
        let reference = tag.map(str::to_string).unwrap_or_else(|| sha256(&manifest));
        let digest = self
            .put_manifest(repo, &reference, manifest_type, &manifest)
            .await?;
        let mut blobs = vec![config_digest];
        blobs.extend(diff_ids.iter().cloned());
        Ok(Pushed {
            digest,
            media_type: manifest_type.into(),
            manifest,
            children: Vec::new(),
            blobs,
            layers: diff_ids,
            blob_bytes,
        })
    }

    /// Pushes a 2-platform (linux/amd64, linux/arm64) index or manifest list: children by
    /// digest first, then the index under `tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, spec: &FixtureSpec) -> Result<Pushed> {
        let platforms = [("linux", "amd64"), ("linux", "arm64")];
        let mut children = Vec::new();
        let mut entries = Vec::new();
        let mut blobs: Vec<String> = Vec::new();
        let mut layers: Vec<String> = Vec::new();
        let mut blob_bytes = 0;
        for (i, (os, arch)) in platforms.iter().enumerate() {
            let child_spec = FixtureSpec {
                seed: spec.seed.wrapping_mul(31).wrapping_add(i as u64 + 1),
                platform: (os.to_string(), arch.to_string()),
                ..spec.clone()
            };
            let child = self.push_image_at(repo, None, &child_spec).await?;
            entries.push(json!({
                "mediaType": child.media_type,
                "digest": child.digest,
                "size": child.manifest.len(),
                "platform": {"os": os, "architecture": arch},
            }));
            children.push(child.digest.clone());
            for b in child.blobs {
                if !blobs.contains(&b) {
                    blobs.push(b);
                }
            }
            for l in child.layers {
                if !layers.contains(&l) {
                    layers.push(l);
                }
            }
            blob_bytes += child.blob_bytes;
        }
        let media_type = match spec.media {
            MediaKind::Docker => DOCKER_LIST,
            MediaKind::Oci => OCI_INDEX,
        };
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": entries,
        }))?;
        let digest = self.put_manifest(repo, tag, media_type, &manifest).await?;
        Ok(Pushed {
            digest,
            media_type: media_type.into(),
            manifest,
            children,
            blobs,
            layers,
            blob_bytes,
        })
    }

    /// Pushes an OCI artifact manifest (`artifactType`, empty config, one blob layer)
    /// whose `subject` is `subject`, under `tag`.
    pub async fn push_artifact(
        &self,
        repo: &str,
        tag: &str,
        subject: &Pushed,
        seed: u64,
    ) -> Result<Pushed> {
        let empty = Bytes::from_static(b"{}");
        let empty_digest = self.push_blob(repo, empty).await?;
        let data = Bytes::from(random_bytes(seed ^ 0x5151, 1024));
        let layer = self.push_blob(repo, data).await?;
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.imagesync.test.signature",
            "config": {"mediaType": OCI_EMPTY, "digest": empty_digest, "size": 2},
            "layers": [{"mediaType": "application/vnd.imagesync.test.blob", "digest": layer, "size": 1024}],
            "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.manifest.len()},
            "annotations": {"dev.imagesync.e2e.seed": seed.to_string()},
        }))?;
        let digest = self
            .put_manifest(repo, tag, OCI_MANIFEST, &manifest)
            .await?;
        Ok(Pushed {
            digest,
            media_type: OCI_MANIFEST.into(),
            manifest,
            children: Vec::new(),
            blobs: vec![empty_digest, layer.clone()],
            layers: vec![layer],
            blob_bytes: 1026,
        })
    }
}

/// Pushes a single-platform image to the plain-HTTP registry at `addr`. Panics on failure.
pub async fn push_image(addr: &str, repo: &str, tag: &str, spec: FixtureSpec) -> Pushed {
    match Target::plain(addr).push_image(repo, tag, &spec).await {
        Ok(p) => p,
        Err(e) => panic!("pushing fixture {addr}/{repo}:{tag}: {e:#}"),
    }
}

/// Pushes a 2-platform OCI index (default spec, `seed`) to `addr`. Panics on failure.
pub async fn push_index(addr: &str, repo: &str, tag: &str, seed: u64) -> Pushed {
    push_index_with(addr, repo, tag, FixtureSpec::seeded(seed)).await
}

/// Pushes a 2-platform index (OCI) or manifest list (Docker) per `spec`. Panics on failure.
pub async fn push_index_with(addr: &str, repo: &str, tag: &str, spec: FixtureSpec) -> Pushed {
    match Target::plain(addr).push_index(repo, tag, &spec).await {
        Ok(p) => p,
        Err(e) => panic!("pushing index fixture {addr}/{repo}:{tag}: {e:#}"),
    }
}

/// Pushes an artifact referring to `subject`. Panics on failure.
pub async fn push_artifact(
    addr: &str,
    repo: &str,
    tag: &str,
    subject: &Pushed,
    seed: u64,
) -> Pushed {
    match Target::plain(addr)
        .push_artifact(repo, tag, subject, seed)
        .await
    {
        Ok(p) => p,
        Err(e) => panic!("pushing artifact fixture {addr}/{repo}:{tag}: {e:#}"),
    }
}

/// GETs the manifest at `addr/repo:reference` (plain HTTP); `None` on 404.
pub async fn get_manifest(addr: &str, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
        .header(
            reqwest::header::ACCEPT,
            [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", "),
        )
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Some((ct, resp.bytes().await.ok()?.to_vec()))
}

/// Status of `HEAD /v2/<repo>/blobs/<digest>` on the plain registry at `addr`.
pub async fn blob_status(addr: &str, repo: &str, digest: &str) -> u16 {
    match reqwest::Client::new()
        .head(format!("http://{addr}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("HEAD blob {digest}: {e}"),
    }
}

/// Status of `HEAD /v2/<repo>/manifests/<reference>` on the plain registry at `addr`.
pub async fn manifest_status(addr: &str, repo: &str, reference: &str) -> u16 {
    match reqwest::Client::new()
        .head(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
        .header(
            reqwest::header::ACCEPT,
            [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", "),
        )
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("HEAD manifest {repo}:{reference}: {e}"),
    }
}

/// Asserts the plain-HTTP registry at `addr` holds exactly `pushed` under `repo:tag`: the
/// same manifest bytes and media type, every child manifest and every blob. Panics
/// otherwise.
pub async fn assert_identical(addr: &str, repo: &str, tag: &str, pushed: &Pushed) {
    let Some((ct, bytes)) = get_manifest(addr, repo, tag).await else {
        panic!("{addr}/{repo}:{tag} is missing");
    };
    assert_eq!(
        sha256(&bytes),
        pushed.digest,
        "digest differs at {addr}/{repo}:{tag}"
    );
    assert_eq!(
        bytes, pushed.manifest,
        "manifest bytes differ at {addr}/{repo}:{tag}"
    );
    assert_eq!(
        ct, pushed.media_type,
        "media type differs at {addr}/{repo}:{tag}"
    );
    for child in &pushed.children {
        assert_eq!(
            manifest_status(addr, repo, child).await,
            200,
            "child {child} missing"
        );
    }
    for blob in &pushed.blobs {
        assert_eq!(
            blob_status(addr, repo, blob).await,
            200,
            "blob {blob} missing"
        );
    }
}

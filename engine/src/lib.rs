//! The imagesync engine: byte-exact copies of container images between OCI registries,
//! HEAD-only digest checks, and safe deletion.
//!
//! Every front end (the `imagesync` CLI, the Kubernetes controller and the Terraform
//! provider) goes through [`Engine`]; none of them talks to registries itself.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imagesync_engine::Error> {
//! use imagesync_engine::{Engine, EngineConfig, Reference, SyncOptions};
//! let engine = Engine::new(EngineConfig::default())?;
//! let src = Reference::parse("registry.hub.docker.com/library/busybox:1.32")?;
//! let dst = Reference::parse("127.0.0.1:5000/mirror/busybox:1.32")?;
//! let outcome = engine.sync(&src, &dst, &SyncOptions::default()).await?;
//! println!("{}", outcome.id);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod attached;
pub mod auth;
mod blobs;
pub mod client;
pub mod config;
mod copy;
mod delete;
mod discover;
pub mod duration;
pub mod error;
mod fallback;
mod inspect;
pub mod manifest;
mod observer;
pub mod platform;
pub mod progress;
mod ranged;
pub mod reference;
mod referrers;
pub mod tagset;
mod transfer;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

pub use auth::{Credential, CredentialProvider};
pub use client::Client;
pub use config::{
    AddressPolicy, EngineConfig, EngineConfigBuilder, InternalAddresses, Limits, RetryPolicy,
    DEFAULT_DEADLINE,
};
pub use error::{Error, ErrorKind, Result};
pub use inspect::{Inspection, PlatformDigest};
pub use observer::RequestObserver;
pub use platform::Platform;
pub use progress::{Progress, ProgressEvent};
pub use reference::{Digest, Reference};

/// Referrer types as cosign writes them (the `artifact_type` of its tag-based manifests).
pub mod artifact_types {
    /// A cosign signature (`.sig` tag).
    pub const COSIGN_SIGNATURE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
    /// A cosign attestation (`.att` tag): a DSSE envelope.
    pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
}

/// Per-call options of [`Engine::sync`].
#[derive(Clone, Default)]
pub struct SyncOptions {
    /// Receives progress events (never printed by the engine).
    pub progress: Option<Arc<dyn Progress>>,
    /// When set, the source must resolve to this digest or the copy fails (copy what was
    /// planned, not whatever the tag points at now).
    pub expect_source_digest: Option<Digest>,
    /// The platforms to copy ([`platform`] has the rules). Empty: the whole image, byte
    /// for byte, so the destination's digest is the source's.
    pub platforms: Vec<Platform>,
    /// What this caller's last sync or [`Engine::resolve`] of the same source and
    /// platforms gave. While the source still resolves to its `source_digest`, the
    /// selection is taken from it instead of reading the source manifest again, so a
    /// sync with nothing to do stays two HEADs with a selection too.
    pub known: Option<Selection>,
    /// Which signatures, attestations and SBOMs follow the image (default: all).
    pub referrers: ReferrerPolicy,
    /// The [`Outcome::referrers_probe`] the owner recorded after its last sync. When the
    /// image is already up to date and the probe still gives this (without a record: the
    /// source has no fallback or `.sig` tag), the referrers are not looked at further, so
    /// a no-op sync costs HEADs only; otherwise they are discovered in full.
    pub referrers_probe: Option<String>,
}

/// What a source resolves to under a platform selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The digest the source reference resolves to (an index's own digest).
    pub source_digest: Digest,
    /// The digest the destination gets: the source digest without a selection, the
    /// selected child's digest for one platform, the digest of the index of the selected
    /// entries for several. Platforms not selected do not enter it: a source that gains
    /// one keeps this digest.
    pub digest: Digest,
}

/// Which referrers (signatures, attestations, SBOMs: the OCI 1.1 referrers API, the
/// `sha256-<hex>` fallback tag and cosign's `sha256-<hex>.sig|.att|.sbom` tags) a sync
/// copies with the image. The default copies all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferrerPolicy {
    /// Copy referrers at all.
    pub enabled: bool,
    /// Only these artifact types (empty: every type). See [`Referrer::artifact_type`].
    pub artifact_types: Vec<String>,
}

impl Default for ReferrerPolicy {
    fn default() -> Self {
        ReferrerPolicy {
            enabled: true,
            artifact_types: Vec::new(),
        }
    }
}

impl ReferrerPolicy {
    /// No referrers.
    pub fn off() -> ReferrerPolicy {
        ReferrerPolicy {
            enabled: false,
            artifact_types: Vec::new(),
        }
    }

    /// The policy a front end's options ask for: `enabled`, and only `artifact_types`
    /// (none: every type). Each must be a media type (`type/subtype`, RFC 6838
    /// characters, at most 255 bytes), at most [`MAX_REFERRER_TYPES`] of them: the list
    /// comes from tenants' objects and Terraform attributes.
    pub fn checked(enabled: bool, artifact_types: &[String]) -> Result<ReferrerPolicy> {
        if artifact_types.len() > MAX_REFERRER_TYPES {
            return Err(Error::Config(format!(
                "at most {MAX_REFERRER_TYPES} referrer artifact types, not {}",
                artifact_types.len()
            )));
        }
        for t in artifact_types {
            if !is_media_type(t) {
                return Err(Error::Config(format!(
                    "referrer artifact type {:?} is not a media type (type/subtype)",
                    t.chars().take(80).collect::<String>()
                )));
            }
        }
        let mut types = artifact_types.to_vec();
        types.sort();
        types.dedup();
        Ok(ReferrerPolicy {
            enabled,
            artifact_types: types,
        })
    }

    /// Whether a referrer of `artifact_type` is copied.
    pub fn wants(&self, artifact_type: &str) -> bool {
        self.enabled
            && (self.artifact_types.is_empty()
                || self.artifact_types.iter().any(|t| t == artifact_type))
    }
}

/// The most artifact types a [`ReferrerPolicy`] may list.
pub const MAX_REFERRER_TYPES: usize = 32;

fn is_media_type(t: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 127
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    t.len() <= 255 && t.split_once('/').is_some_and(|(a, b)| part(a) && part(b))
}

/// A referrer that followed the image to the destination.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Referrer {
    /// Digest of the referrer's manifest (the same at source and destination).
    pub digest: Digest,
    /// Its artifact type: the manifest's `artifactType`, else its config media type,
    /// else (cosign's tag-based manifests, whose config is a plain image config) the
    /// media type of its first layer, e.g. `application/vnd.dev.cosign.simplesigning.v1+json`.
    pub artifact_type: String,
    /// The manifest it refers to (the image, one of its children, or another referrer).
    pub subject: Digest,
    /// The cosign tag it is published under (`sha256-<hex>.sig|.att|.sbom`); `None` for a
    /// referrer attached through its `subject` (referrers API or fallback index).
    pub tag: Option<String>,
    /// This sync wrote it (its manifest, its cosign tag or its fallback-index entry); false
    /// when the destination already had it. An owner records what it wrote and passes
    /// it to [`DeleteOptions::referrers`].
    pub written: bool,
}

/// The referrers to record after a sync: `now`, with `written` kept true for those an
/// earlier sync recorded as written (a later sync finds its own earlier writes present).
pub fn merge_owned_referrers(prior_written: &[Digest], now: Vec<Referrer>) -> Vec<Referrer> {
    now.into_iter()
        .map(|mut r| {
            r.written |= prior_written.contains(&r.digest);
            r
        })
        .collect()
}

/// What a sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Digest of the source manifest (an index's own digest for multi-arch images).
    pub source_digest: Digest,
    /// Digest of the manifest now at the destination: `source_digest` without a platform
    /// selection, [`Selection::digest`] with one.
    pub destination_digest: Digest,
    /// `<normalised destination repository>@<digest>`.
    pub id: String,
    /// True when the destination already had the image and nothing was written.
    pub up_to_date: bool,
    /// Blob bytes uploaded.
    pub bytes_uploaded: u64,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Blobs the destination already had.
    pub blobs_skipped: usize,
    /// Blobs mounted from another repository of the destination registry (the source
    /// repository, or one the engine saw holding the blob earlier).
    pub blobs_mounted: usize,
    /// Manifests written (children and the tagged one).
    pub manifests_pushed: usize,
    /// What this call wrote besides the tagged manifest, sorted: the blobs it uploaded
    /// (not those the destination already had, not mounted ones) and the child manifests
    /// it pushed. An owner that records them can later delete exactly what it wrote
    /// ([`DeleteOptions::only_blobs`]).
    pub uploaded: Vec<Digest>,
    /// The referrers that followed the image (found at the source and now at the
    /// destination), sorted. Empty with [`ReferrerPolicy::off`].
    pub referrers: Vec<Referrer>,
    /// The referrers drift probe taken at the source before the referrers were copied
    /// (see [`Engine::referrers_probe`]); record it and pass it to
    /// [`Engine::referrers_changed`]. `None` with referrers off.
    pub referrers_probe: Option<String>,
    /// The referrers were discovered (and copied) in full, so [`Outcome::referrers`] is the
    /// complete list. False with referrers off, or when a sync of an up-to-date image
    /// found the probe unchanged: keep the list recorded before.
    pub referrers_checked: bool,
}

/// Per-call options of [`Engine::delete`].
#[derive(Clone, Debug)]
pub struct DeleteOptions {
    /// Delete only if the tag still points at this digest (the digest we wrote).
    pub expect_digest: Option<Digest>,
    /// Also delete blobs no remaining manifest in the repository references.
    pub delete_layers: bool,
    /// When set, only these blobs and child manifests may be deleted: the ones the
    /// owner's copies wrote ([`Outcome::uploaded`]), and still only if no manifest the
    /// registry can enumerate references them. `None` (the CLI, which keeps no record):
    /// any blob or child manifest of the image that no enumerable manifest references.
    pub only_blobs: Option<BTreeSet<Digest>>,
    /// Referrer manifests the owner's syncs wrote ([`Referrer::written`]): removed with
    /// the image (their fallback-index entries, their cosign tags while those still point
    /// at them, the manifests). Referrers written by others stay, and so do their
    /// entries in the fallback index.
    pub referrers: Vec<Digest>,
}

impl Default for DeleteOptions {
    fn default() -> Self {
        DeleteOptions {
            expect_digest: None,
            delete_layers: true,
            only_blobs: None,
            referrers: Vec::new(),
        }
    }
}

/// What a delete did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// The tag (or digest) was already gone: nothing to do, counted as success.
    pub already_gone: bool,
    /// The digest the tag pointed at.
    pub digest: Option<Digest>,
    /// The tag no longer resolves.
    pub tag_removed: bool,
    /// The manifest itself was deleted (no other tag or index referenced it).
    pub manifest_deleted: bool,
    /// Other tags still pointing at the digest, which were kept.
    pub kept_tags: Vec<String>,
    /// Blobs deleted.
    pub blobs_deleted: usize,
    /// Blobs kept because another manifest uses them.
    pub blobs_kept: usize,
    /// Things that did not work but did not fail the delete (e.g. blob DELETE unsupported).
    pub warnings: Vec<String>,
}

/// The sync engine. Cheap to clone; clones share HTTP connections and token caches.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    config: EngineConfig,
    http: reqwest::Client,
    /// The HTTP client's certificate verifier, to start loading the CA roots early.
    tls: Arc<client::LazyVerifier>,
    clients: Mutex<HashMap<String, Client>>,
    /// This engine's own table (engines derived with [`Engine::with_credentials`] get a
    /// fresh one, so one credential set never learns where another's blobs are); a blob
    /// is only ever mounted after the copy's own source showed it has it.
    blobs: Arc<blobs::BlobLocations>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field(
                "insecure_registries",
                &self.inner.config.insecure_registries,
            )
            .field("jobs", &self.inner.config.jobs)
            .finish()
    }
}

impl Engine {
    /// Builds an engine. Fails on an unreadable or invalid CA file.
    pub fn new(config: EngineConfig) -> Result<Engine> {
        let (http, tls) = client::build_http(&config)?;
        let blobs = Arc::new(blobs::BlobLocations::new(config.blob_cache.clone()));
        Ok(Engine {
            inner: Arc::new(EngineInner {
                config,
                http,
                tls,
                clients: Mutex::new(HashMap::new()),
                blobs,
            }),
        })
    }

    /// The same engine (connections shared) with other credentials, e.g. a controller's
    /// per-object Secrets chained before the defaults. Token caches and the blob-location
    /// table are not shared: a blob seen with one credential set is never mounted for
    /// another, so a tenant who knows a digest cannot have another tenant's layer linked
    /// into its repository. Callers keep one derived engine per tenant and credential set.
    pub fn with_credentials(&self, credentials: Arc<dyn CredentialProvider>) -> Engine {
        let mut config = self.inner.config.clone();
        config.credentials = credentials;
        config.blob_cache = None;
        Engine {
            inner: Arc::new(EngineInner {
                config,
                http: self.inner.http.clone(),
                tls: self.inner.tls.clone(),
                clients: Mutex::new(HashMap::new()),
                blobs: Arc::new(blobs::BlobLocations::new(None)),
            }),
        }
    }

    /// The registry client for the registry of `reference`.
    pub fn client(&self, reference: &Reference) -> Client {
        let host = reference.api_host().to_string();
        let mut clients = self.inner.clients.lock();
        clients
            .entry(host.clone())
            .or_insert_with(|| {
                let config = &self.inner.config;
                let insecure = config.insecure_registries.iter().any(|r| {
                    let r = reference::canonical_registry(r).unwrap_or_else(|_| r.clone());
                    r == reference.registry() || r == host
                });
                if !insecure {
                    // HTTPS: the CA roots load while the first connection opens.
                    self.inner.tls.prefetch();
                }
                // A registry the caller named may be on an internal address (unless
                // the policy only allows listed hosts).
                config.addresses.learn_registry(&host);
                let network = client::Network {
                    insecure: config.insecure_registries.clone(),
                    addresses: config
                        .addresses
                        .clone()
                        .with_insecure(&config.insecure_registries),
                    limits: config.limits.clone(),
                };
                Client::new(
                    self.inner.http.clone(),
                    reference.registry().to_string(),
                    host,
                    insecure,
                    config.credentials.clone(),
                    config.retry.clone(),
                    config.observer.clone(),
                    network,
                )
            })
            .clone()
    }

    /// The digest `reference` resolves to, by HEAD (GET only if the registry omits
    /// `Docker-Content-Digest`). `Ok(None)` only when the registry says "not found".
    pub async fn digest(&self, reference: &Reference) -> Result<Option<Digest>> {
        match self.client(reference).resolve(reference).await {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What `source` resolves to under `platforms`, for drift checks; nothing is asked of
    /// the destination. Costs one HEAD of the source when there is no selection, or when
    /// `known` has the digest the source still resolves to; otherwise one GET of the
    /// source manifest more (and, for a single-platform source, of its config).
    /// `Ok(None)` only when the registry says the source is not there.
    pub async fn resolve(
        &self,
        source: &Reference,
        platforms: &[Platform],
        known: Option<&Selection>,
    ) -> Result<Option<Selection>> {
        let Some(source_digest) = self.digest(source).await? else {
            return Ok(None);
        };
        let digest = copy::selection_digest(
            &self.client(source),
            source,
            &source_digest,
            platforms,
            known,
        )
        .await?
        .0;
        Ok(Some(Selection {
            source_digest,
            digest,
        }))
    }

    /// Copies `source` to `destination` byte for byte (index, children and blobs), the
    /// tag last, or the platforms [`SyncOptions::platforms`] selects. Does nothing when the
    /// destination already has that digest.
    pub async fn sync(
        &self,
        source: &Reference,
        destination: &Reference,
        options: &SyncOptions,
    ) -> Result<Outcome> {
        // Nothing is tagged until every blob and child is in place, so a sync cut off
        // by its deadline leaves the destination tag as it was.
        let deadline = self.inner.config.limits.sync_deadline;
        let result =
            match tokio::time::timeout(deadline, copy::sync(self, source, destination, options))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(Error::Deadline {
                    reference: destination.to_string(),
                    after: deadline,
                }),
            };
        self.inner.blobs.save();
        result
    }

    /// The drift probe of `digest`'s referrers at the source, two HEADs: the
    /// `sha256-<hex>` fallback tag and the cosign `sha256-<hex>.sig` tag. The answer is a
    /// fingerprint to record ([`Outcome::referrers_probe`] is the one taken by a sync) and
    /// compare later ([`Engine::referrers_changed`]). `None` with the policy off.
    pub async fn referrers_probe(
        &self,
        source: &Reference,
        digest: &Digest,
        policy: &ReferrerPolicy,
    ) -> Result<Option<String>> {
        discover::probe(&self.client(source), source, digest, policy).await
    }

    /// Whether the probe ([`Engine::referrers_probe`]) now differs from `recorded` (the
    /// fingerprint a sync returned; `None`: no record, compared with a source without
    /// those tags). A cheap drift check, HEAD only: a sync finds everything (the referrers
    /// API, `.att` and `.sbom` tags, child manifests' referrers), the probe only notices
    /// changes to those two tags. Always false with the policy off. Errors other than
    /// "not found" are returned, never taken for "no referrers".
    pub async fn referrers_changed(
        &self,
        source: &Reference,
        digest: &Digest,
        recorded: Option<&str>,
        policy: &ReferrerPolicy,
    ) -> Result<bool> {
        discover::changed(&self.client(source), source, digest, recorded, policy).await
    }

    /// Removes `destination`'s tag safely, then (optionally) its unshared blobs.
    pub async fn delete(
        &self,
        destination: &Reference,
        options: &DeleteOptions,
    ) -> Result<DeleteReport> {
        delete::delete(self, destination, options).await
    }

    pub(crate) fn blobs(&self) -> &blobs::BlobLocations {
        &self.inner.blobs
    }

    pub(crate) fn jobs(&self) -> usize {
        self.inner.config.jobs.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile: referrer type lists come from tenants; junk and floods are refused.
    #[test]
    fn referrer_types_must_be_a_short_list_of_media_types() {
        let ok = ReferrerPolicy::checked(true, &["text/spdx+json".into(), "text/spdx+json".into()])
            .unwrap();
        assert_eq!(ok.artifact_types, vec!["text/spdx+json".to_string()]);
        for bad in [
            "",
            "spdx",
            "a/b/c",
            "a/b c",
            "a/b\n",
            &format!("a/{}", "b".repeat(300)),
        ] {
            assert!(
                ReferrerPolicy::checked(true, &[bad.to_string()]).is_err(),
                "{bad:?}"
            );
        }
        let flood: Vec<String> = (0..33).map(|i| format!("a/t{i}")).collect();
        assert!(ReferrerPolicy::checked(true, &flood).is_err());
        assert!(ReferrerPolicy::checked(false, &[]).is_ok_and(|p| !p.enabled));
    }

    /// Issue 12, item 5: a blob location learnt under one credential set (one tenant)
    /// is never offered to an engine with other credentials, so a tenant who only knows
    /// a digest cannot have another tenant's layer mounted into its own repository.
    #[test]
    fn engines_with_other_credentials_do_not_share_blob_locations() {
        let base = Engine::new(EngineConfig::default()).unwrap();
        let a = base.with_credentials(Arc::new(auth::Anonymous));
        let b = base.with_credentials(Arc::new(auth::Anonymous));
        let d = Digest::of(b"tenant a's private layer");
        a.blobs().remember("r:5000", "team-a/app", &d);
        assert_eq!(
            a.blobs().lookup("r:5000", &d, "team-b/x").as_deref(),
            Some("team-a/app")
        );
        assert_eq!(b.blobs().lookup("r:5000", &d, "team-b/x"), None);
        assert_eq!(base.blobs().lookup("r:5000", &d, "team-b/x"), None);
        // Clones of one engine (one credential set) do share what they learnt.
        assert!(a.clone().blobs().lookup("r:5000", &d, "team-a/y").is_some());
    }
}

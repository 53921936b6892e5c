//! Where the resource's work happens. The plan/apply/read logic in [`crate::resource`]
//! is written once against [`Backend`]; [`Direct`] copies in-process with the engine,
//! [`crate::kube::Kube`] through the controller. What differs between them is asked of
//! the backend: what a plan learns of the source ([`Backend::plan_source`]), who keeps
//! the record of what was written ([`Backend::bookkeeper`]) and which object holds the
//! resource ([`Backend::identity`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imagesync_engine::auth::{ChainProvider, Credential, StaticProvider};
use imagesync_engine::{
    DeleteOptions, Digest, Engine, EngineConfig, ErrorKind, Platform, Reference, Referrer,
    ReferrerPolicy, Selection, SyncOptions,
};
use secrecy::{ExposeSecret as _, SecretString};

/// Errors of a backend operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine failed; the kind says whether it was "not found", auth, network, ...
    #[error(transparent)]
    Engine(#[from] imagesync_engine::Error),
    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[source] Box<kube::Error>),
    /// The `ImageSync` object did not become ready (or go away) in time.
    #[error("{0}")]
    Timeout(String),
}

impl From<kube::Error> for BackendError {
    fn from(e: kube::Error) -> BackendError {
        BackendError::Kube(Box::new(e))
    }
}

impl BackendError {
    /// The engine's error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Engine(e) => e.kind(),
            BackendError::Kube(e) => match e.as_ref() {
                kube::Error::Api(s) if s.code == 404 => ErrorKind::NotFound,
                kube::Error::Api(s) if s.code == 401 => ErrorKind::Unauthorized,
                kube::Error::Api(s) if s.code == 403 => ErrorKind::Denied,
                kube::Error::Api(s) if s.code == 409 => ErrorKind::Conflict,
                kube::Error::Api(s) if s.code == 422 || s.code == 400 => ErrorKind::InvalidInput,
                _ => ErrorKind::Transient,
            },
            BackendError::Timeout(_) => ErrorKind::Transient,
        }
    }

    /// True when the registry said "not found" (the only meaning of "gone").
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// True when a delete was refused because the tag is no longer ours.
    pub fn is_not_owned(&self) -> bool {
        matches!(
            self,
            BackendError::Engine(imagesync_engine::Error::NotOwned { .. })
        )
    }
}

/// What one resource instance refers to.
#[derive(Clone, Debug)]
pub struct Target {
    /// Parsed `source`.
    pub source: Reference,
    /// Parsed `destination`.
    pub destination: Reference,
    /// `destination` as written (the `id` when it pins a digest).
    pub destination_text: String,
    /// `delete_layers`.
    pub delete_layers: bool,
    /// Kubernetes mode: the object's namespace.
    pub namespace: Option<String>,
    /// Kubernetes mode: the object's name.
    pub name: Option<String>,
    /// How long to wait for a sync (Kubernetes mode).
    pub create_timeout: Duration,
    /// How long to wait for a delete (Kubernetes mode).
    pub delete_timeout: Duration,
    /// Destroy in direct mode: the only blobs that may be deleted (those this resource
    /// uploaded); `None` leaves the choice to the engine's own rule.
    pub only_blobs: Option<BTreeSet<Digest>>,
    /// `referrers` and `referrer_types`.
    pub referrers: ReferrerPolicy,
    /// The referrers probe recorded in private state (see [`Synced::referrers`]).
    pub referrers_probe: Option<String>,
    /// Destroy: the referrers this resource wrote.
    pub owned_referrers: Vec<Digest>,
    /// `platforms` (empty: every platform).
    pub platforms: Vec<Platform>,
    /// The selection the last sync made, while `platforms` is unchanged (direct mode:
    /// a source still at its source digest needs no read of its index).
    pub known: Option<Selection>,
    /// The Kubernetes-mode spec fields.
    pub kube: crate::spec_fields::KubeSpec,
}

/// The referrers a sync looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncedReferrers {
    /// `list` is complete; false when the image was up to date and the probe unchanged
    /// (keep what the state lists), or in Kubernetes mode.
    pub checked: bool,
    /// The referrers now at the destination.
    pub list: Vec<Referrer>,
    /// The probe to record for the next plan.
    pub probe: Option<String>,
}

/// What a sync left at the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synced {
    /// The digest the source resolved to; with `platforms`, the selection's digest.
    pub source_digest: Digest,
    /// The digest now at the destination.
    pub destination_digest: Digest,
    /// The `id`.
    pub id: String,
    /// The destination already held the digest: nothing was written (direct mode).
    pub adopted: bool,
    /// Blobs and child manifests this sync wrote (not blobs already there or mounted).
    pub uploaded: Vec<Digest>,
    /// The image's signatures, attestations and SBOMs.
    pub referrers: SyncedReferrers,
    /// With `platforms` (direct mode): the source digest the selection was made from.
    pub selected_from: Option<Digest>,
}

/// What a refresh found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The `id` of what is at the destination now.
    pub id: String,
    /// The source digest, when the backend knows it (Kubernetes status).
    pub source_digest: Option<Digest>,
}

/// The result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The tag was already gone.
    pub already_gone: bool,
    /// Non-fatal problems (e.g. the registry does not allow blob deletion).
    pub warnings: Vec<String>,
}

/// The default namespace and name of a resource's Kubernetes object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The provider's namespace.
    pub namespace: String,
    /// Derived from the destination (`None` while it is unknown).
    pub name: Option<String>,
}

/// What a plan learns of the image a source gives.
#[derive(Debug)]
pub enum SourceAtPlan {
    /// The digest it resolves to (with `platforms`, the selection's digest): the plan
    /// knows the digest and `id` an apply will write, and a moved tag plans a re-sync.
    Digest(Digest),
    /// The registry said "not found".
    Missing,
    /// The registry could not answer.
    Failed(Box<BackendError>),
    /// Plans do not look: whoever syncs follows the source (Kubernetes mode: the
    /// controller). The digest and `id` are known after apply; only a change of what is
    /// to be synced (the spec) plans one.
    Followed,
}

/// Who keeps the record of what a sync wrote at the destination, which decides whether a
/// destination can be adopted and what destroy removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bookkeeper {
    /// The resource, in its private state ([`crate::private`]; direct mode): a
    /// destination that already held the image is adopted (a warning; destroy leaves
    /// it), and destroy deletes only the blobs and referrers recorded.
    Resource,
    /// The controller, in the object it syncs (Kubernetes mode): destroy deletes the
    /// object and the controller removes what it wrote.
    Controller,
}

/// What the resource needs from wherever images are copied.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Who keeps the record of what a sync wrote.
    fn bookkeeper(&self) -> Bookkeeper;

    /// What a plan learns of `source` under `platforms` (see [`SourceAtPlan`]). This
    /// default looks it up: a reference pinning a digest (without `platforms`) needs no
    /// lookup, else [`Backend::digest`], or with `platforms` [`Backend::resolve`].
    async fn plan_source(
        &self,
        source: &Reference,
        platforms: &[Platform],
        known: Option<&Selection>,
    ) -> SourceAtPlan {
        let found = if !platforms.is_empty() {
            self.resolve(source, platforms, known)
                .await
                .map(|s| s.map(|s| s.digest))
        } else if let Some(d) = source.digest() {
            Ok(Some(d.clone()))
        } else {
            self.digest(source).await
        };
        match found {
            Ok(Some(d)) => SourceAtPlan::Digest(d),
            Ok(None) => SourceAtPlan::Missing,
            Err(e) => SourceAtPlan::Failed(Box::new(e)),
        }
    }

    /// The Kubernetes object a resource writing `destination` is kept in (`None`: direct
    /// mode, which has no object). Its name is `None` while the destination is unknown.
    fn identity(&self, destination: Option<&str>) -> Option<Identity> {
        let _ = destination;
        None
    }

    /// The digest `reference` resolves to (HEAD); `None` only when it does not exist.
    async fn digest(&self, reference: &Reference) -> Result<Option<Digest>, BackendError>;

    /// What `reference` gives under `platforms` ([`Engine::resolve`]): one HEAD while it
    /// still resolves to `known`'s source digest, else a GET of its index too. `None` only
    /// when it does not exist. Backends that do not look at registries at plan time
    /// answer `None`.
    async fn resolve(
        &self,
        _reference: &Reference,
        _platforms: &[Platform],
        _known: Option<&Selection>,
    ) -> Result<Option<Selection>, BackendError> {
        Ok(None)
    }

    /// What is at the destination now; `None` only when it is gone.
    async fn observe(&self, target: &Target) -> Result<Option<Observed>, BackendError>;

    /// Copies `source` (pinned to `expect_source_digest` when given) to `destination`.
    async fn sync(
        &self,
        target: &Target,
        expect_source_digest: Option<Digest>,
    ) -> Result<Synced, BackendError>;

    /// Whether `digest`'s referrers at the source changed since the probe recorded in
    /// `target` (direct mode: two HEADs). Kubernetes mode: the controller checks.
    async fn referrers_changed(
        &self,
        _target: &Target,
        _digest: &Digest,
    ) -> Result<bool, BackendError> {
        Ok(false)
    }

    /// Removes the destination, only if it still points at `expect_digest`.
    async fn delete(
        &self,
        target: &Target,
        expect_digest: Option<Digest>,
    ) -> Result<Deleted, BackendError>;
}

/// The `id` for `destination` holding `digest`: the destination as written when it pins
/// a digest, else `<normalised repository>@<digest>`.
pub fn make_id(destination_text: &str, destination: &Reference, digest: &Digest) -> String {
    if destination.digest().is_some() {
        destination_text.to_string()
    } else {
        destination.id(digest)
    }
}

/// Settings of the direct backend (from the provider block).
#[derive(Clone, Debug, Default)]
pub struct DirectConfig {
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra CA bundle.
    pub ca_file: Option<PathBuf>,
    /// Docker config path.
    pub docker_config: Option<PathBuf>,
    /// `registry_auth` blocks.
    pub registry_auth: Vec<RegistryAuth>,
}

/// One `registry_auth` block. `Debug` shows the password as `[REDACTED]`.
#[derive(Clone, Debug)]
pub struct RegistryAuth {
    /// Registry host.
    pub address: String,
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: SecretString,
}

/// Direct mode: the engine, in-process.
#[derive(Debug, Clone)]
pub struct Direct {
    engine: Engine,
}

impl Direct {
    /// Builds the engine. Fails on an unreadable CA file.
    pub fn new(config: DirectConfig) -> Result<Direct, BackendError> {
        let mut explicit = StaticProvider::new();
        for auth in config.registry_auth {
            explicit = explicit.with(
                &auth.address,
                Credential::basic(auth.username, auth.password.expose_secret()),
            );
        }
        let engine = Engine::new(
            EngineConfig::builder()
                .insecure_registries(config.insecure_registries)
                .ca_file(config.ca_file)
                .credentials(Arc::new(ChainProvider::standard(
                    explicit,
                    config.docker_config,
                )))
                .user_agent(format!(
                    "terraform-provider-imagesync/{}",
                    env!("CARGO_PKG_VERSION")
                ))
                .build(),
        )?;
        Ok(Direct { engine })
    }

    /// The engine (data sources read registries with it, in either mode).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Direct {
    /// A sync with `platforms` copies what was planned: `planned` is the selection's
    /// digest (not a source digest), so the source is resolved first (a HEAD, and a GET of
    /// its index unless `known` still holds), the selection must give `planned`, and the
    /// copy is then pinned to that source digest.
    async fn selection_options(
        &self,
        target: &Target,
        planned: Option<Digest>,
    ) -> Result<SyncOptions, BackendError> {
        let source = &target.source;
        let selection = self
            .engine
            .resolve(source, &target.platforms, target.known.as_ref())
            .await?
            .ok_or_else(|| imagesync_engine::Error::Registry {
                kind: ErrorKind::NotFound,
                operation: "HEAD manifest",
                reference: source.to_string(),
                status: 404,
                code: Some("MANIFEST_UNKNOWN".into()),
                message: "the source image does not exist".into(),
                retry_after: None,
            })?;
        if let Some(want) = planned.filter(|p| *p != selection.digest) {
            return Err(imagesync_engine::Error::DigestMismatch {
                reference: format!(
                    "{source} (platforms selected; the source changed since the plan, plan again)"
                ),
                expected: want.to_string(),
                actual: selection.digest.to_string(),
            }
            .into());
        }
        Ok(SyncOptions {
            expect_source_digest: Some(selection.source_digest.clone()),
            platforms: target.platforms.clone(),
            known: Some(selection),
            ..SyncOptions::default()
        })
    }
}

#[async_trait]
impl Backend for Direct {
    fn bookkeeper(&self) -> Bookkeeper {
        Bookkeeper::Resource
    }

    async fn digest(&self, reference: &Reference) -> Result<Option<Digest>, BackendError> {
        Ok(self.engine.digest(reference).await?)
    }

    async fn resolve(
        &self,
        reference: &Reference,
        platforms: &[Platform],
        known: Option<&Selection>,
    ) -> Result<Option<Selection>, BackendError> {
        Ok(self.engine.resolve(reference, platforms, known).await?)
    }

    async fn observe(&self, target: &Target) -> Result<Option<Observed>, BackendError> {
        Ok(self
            .engine
            .digest(&target.destination)
            .await?
            .map(|d| Observed {
                id: make_id(&target.destination_text, &target.destination, &d),
                source_digest: None,
            }))
    }

    async fn sync(
        &self,
        target: &Target,
        expect_source_digest: Option<Digest>,
    ) -> Result<Synced, BackendError> {
        let (source, destination) = (&target.source, &target.destination);
        let mut options = SyncOptions {
            progress: None,
            expect_source_digest,
            ..SyncOptions::default()
        };
        if !target.platforms.is_empty() {
            options = self
                .selection_options(target, options.expect_source_digest)
                .await?;
        }
        options.referrers = target.referrers.clone();
        options.referrers_probe = target.referrers_probe.clone();
        let outcome = self.engine.sync(source, destination, &options).await?;
        tracing::info!(
            %source, %destination, digest = %outcome.destination_digest,
            up_to_date = outcome.up_to_date, bytes = outcome.bytes_uploaded,
            blobs_uploaded = outcome.blobs_uploaded, blobs_mounted = outcome.blobs_mounted,
            "synced"
        );
        Ok(Synced {
            id: make_id(
                &target.destination_text,
                destination,
                &outcome.destination_digest,
            ),
            source_digest: if target.platforms.is_empty() {
                outcome.source_digest.clone()
            } else {
                outcome.destination_digest.clone()
            },
            selected_from: (!target.platforms.is_empty()).then_some(outcome.source_digest),
            destination_digest: outcome.destination_digest,
            adopted: outcome.up_to_date,
            uploaded: outcome.uploaded,
            referrers: SyncedReferrers {
                checked: outcome.referrers_checked,
                list: outcome.referrers,
                probe: outcome.referrers_probe,
            },
        })
    }

    async fn referrers_changed(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<bool, BackendError> {
        Ok(self
            .engine
            .referrers_changed(
                &target.source,
                digest,
                target.referrers_probe.as_deref(),
                &target.referrers,
            )
            .await?)
    }

    async fn delete(
        &self,
        target: &Target,
        expect_digest: Option<Digest>,
    ) -> Result<Deleted, BackendError> {
        let destination = &target.destination;
        let report = self
            .engine
            .delete(
                destination,
                &DeleteOptions {
                    expect_digest,
                    delete_layers: target.delete_layers,
                    only_blobs: target.only_blobs.clone(),
                    referrers: target.owned_referrers.clone(),
                },
            )
            .await?;
        tracing::info!(%destination, ?report, "deleted");
        Ok(Deleted {
            already_gone: report.already_gone,
            warnings: report.warnings,
        })
    }
}

//! Where the resource's work happens. The plan/apply/read logic in [`crate::resource`]
//! is written once against [`Backend`]; [`Direct`] copies in-process with the engine.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use imagesync_engine::auth::{ChainProvider, Credential, StaticProvider};
use imagesync_engine::{
    DeleteOptions, Digest, Engine, EngineConfig, ErrorKind, Reference, SyncOptions,
};

/// Errors of a backend operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine failed; the kind says whether it was "not found", auth, network, ...
    #[error(transparent)]
    Engine(#[from] imagesync_engine::Error),
}

impl BackendError {
    /// The engine's error kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Engine(e) => e.kind(),
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

/// The result of a sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synced {
    /// The digest the source resolved to.
    pub source_digest: Digest,
    /// The digest now at the destination.
    pub destination_digest: Digest,
    /// True when something was written.
    pub copied: bool,
}

/// The result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The tag was already gone.
    pub already_gone: bool,
    /// Non-fatal problems (e.g. the registry does not allow blob deletion).
    pub warnings: Vec<String>,
}

/// What the resource needs from wherever images are copied.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The digest `reference` resolves to (HEAD); `None` only when it does not exist.
    async fn digest(&self, reference: &Reference) -> Result<Option<Digest>, BackendError>;

    /// Copies `source` (pinned to `expect_source_digest` when given) to `destination`.
    async fn sync(
        &self,
        source: &Reference,
        destination: &Reference,
        expect_source_digest: Option<Digest>,
    ) -> Result<Synced, BackendError>;

    /// Removes `destination`'s tag, only if it still points at `expect_digest`.
    async fn delete(
        &self,
        destination: &Reference,
        expect_digest: Option<Digest>,
        delete_layers: bool,
    ) -> Result<Deleted, BackendError>;
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
    /// `registry_auth` blocks: (address, username, password).
    pub registry_auth: Vec<(String, String, String)>,
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
        for (address, username, password) in config.registry_auth {
            explicit = explicit.with(&address, Credential::basic(username, password));
        }
        let engine = Engine::new(EngineConfig {
            insecure_registries: config.insecure_registries,
            ca_file: config.ca_file,
            credentials: Arc::new(ChainProvider::standard(explicit, config.docker_config)),
            user_agent: format!("terraform-provider-imagesync/{}", env!("CARGO_PKG_VERSION")),
            ..EngineConfig::default()
        })?;
        Ok(Direct { engine })
    }
}

#[async_trait]
impl Backend for Direct {
    async fn digest(&self, reference: &Reference) -> Result<Option<Digest>, BackendError> {
        Ok(self.engine.digest(reference).await?)
    }

    async fn sync(
        &self,
        source: &Reference,
        destination: &Reference,
        expect_source_digest: Option<Digest>,
    ) -> Result<Synced, BackendError> {
        let outcome = self
            .engine
            .sync(
                source,
                destination,
                &SyncOptions {
                    progress: None,
                    expect_source_digest,
                },
            )
            .await?;
        tracing::info!(
            %source, %destination, digest = %outcome.destination_digest,
            up_to_date = outcome.up_to_date, bytes = outcome.bytes_uploaded,
            blobs_uploaded = outcome.blobs_uploaded, blobs_mounted = outcome.blobs_mounted,
            "synced"
        );
        Ok(Synced {
            source_digest: outcome.source_digest,
            destination_digest: outcome.destination_digest,
            copied: !outcome.up_to_date,
        })
    }

    async fn delete(
        &self,
        destination: &Reference,
        expect_digest: Option<Digest>,
        delete_layers: bool,
    ) -> Result<Deleted, BackendError> {
        let report = self
            .engine
            .delete(
                destination,
                &DeleteOptions {
                    expect_digest,
                    delete_layers,
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

//! Kubernetes controller for `ImageSync` objects.
//!
//! Users `kubectl apply` an [`api::ImageSync`]; the controller copies the image with the
//! imagesync engine, records digests in status, re-checks source and destination with
//! HEAD requests every `resyncInterval`, heals drift, and removes the destination tag
//! (safely) when the object is deleted.
//!
//! Layout: [`api`] (the CRD types), [`reconcile`] (reconcile and cleanup under the
//! finalizer), [`set`] (`ImageSyncSet`: one child `ImageSync` per matching tag), [`credentials`] (the Secret-backed credential provider), [`events`],
//! [`leader`] (Lease-based leader election), [`metrics`], [`policy`] (the tenant
//! policy: who may copy what, with whose credentials), [`server`] (`/metrics`,
//! `/healthz`, `/readyz`), [`telemetry`], [`args`] (flags)
//! and [`app`] (the process: wiring, leader election, shutdown).
#![warn(missing_docs)]

pub use imagesync_api as api;
pub mod app;
pub mod args;
pub mod credentials;
pub mod duration;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod reconcile;
pub mod referrers;
pub mod server;
pub mod set;
pub mod telemetry;

use imagesync_engine::ErrorKind;

/// Errors of the controller library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {context}: {source}")]
    Kube {
        /// What we were doing.
        context: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },

    /// A registry operation failed.
    #[error("{context}: {source}")]
    Engine {
        /// What we were doing (e.g. "copy src to dst").
        context: String,
        /// The engine error.
        #[source]
        source: imagesync_engine::Error,
    },

    /// `spec.source` or `spec.destination` is not a valid image reference.
    #[error("invalid reference in spec.{field}: {source}")]
    InvalidReference {
        /// `source` or `destination`.
        field: &'static str,
        /// The parse error.
        #[source]
        source: imagesync_engine::Error,
    },

    /// The source does not exist.
    #[error("source {reference} not found")]
    SourceNotFound {
        /// The source reference.
        reference: String,
    },

    /// A referenced Secret is missing or unusable.
    #[error("secret {namespace}/{name}: {reason}")]
    Secret {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What is wrong (never the secret's content).
        reason: String,
    },

    /// A referenced Secret has a type other than `kubernetes.io/dockerconfigjson` or
    /// `kubernetes.io/dockercfg`.
    #[error("secret {namespace}/{name} has type {type_}; only kubernetes.io/dockerconfigjson and kubernetes.io/dockercfg Secrets are used")]
    SecretTypeUnsupported {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// Its type.
        type_: String,
    },

    /// A spec field is out of range or malformed beyond what the CRD schema checks
    /// (for example `spec.resyncInterval` outside 10s..720h).
    #[error("{0}")]
    InvalidSpec(String),

    /// The tenant policy does not allow this object (nothing is copied or deleted).
    #[error("{message}")]
    PolicyDenied {
        /// Names the rule that denied it, or says that no rule allows it.
        message: String,
    },

    /// The object has no namespace or name (never happens for objects from the API).
    #[error("object without {0}")]
    MissingMetadata(&'static str),

    /// Leader election lost or impossible.
    #[error("leader election: {0}")]
    Lease(String),

    /// The finalizer helper failed (boxed: it wraps this type).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The engine error inside, if any (also through the finalizer wrapper).
    pub fn engine_error(&self) -> Option<&imagesync_engine::Error> {
        match self {
            Error::Engine { source, .. } => Some(source),
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.engine_error(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The inner reconcile error when wrapped by the finalizer helper.
    pub fn innermost(&self) -> &Error {
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.innermost(),
                _ => self,
            },
            _ => self,
        }
    }

    /// The `Ready` condition reason this error is reported with.
    pub fn reason(&self) -> &'static str {
        use api::reasons;
        match self.innermost() {
            Error::InvalidReference { .. } => reasons::INVALID_REFERENCE,
            Error::InvalidSpec(_) => reasons::INVALID_SPEC,
            Error::SourceNotFound { .. } => reasons::SOURCE_NOT_FOUND,
            Error::Secret { .. } => reasons::INVALID_SECRET,
            Error::SecretTypeUnsupported { .. } => reasons::SECRET_TYPE_UNSUPPORTED,
            Error::PolicyDenied { .. } => reasons::POLICY_DENIED,
            Error::Engine { source, .. } => match source.kind() {
                ErrorKind::NotFound => reasons::SOURCE_NOT_FOUND,
                ErrorKind::Unauthorized => reasons::UNAUTHORIZED,
                ErrorKind::Denied => reasons::DENIED,
                ErrorKind::RateLimited => reasons::RATE_LIMITED,
                ErrorKind::InvalidInput => match source {
                    imagesync_engine::Error::InvalidReference { .. } => reasons::INVALID_REFERENCE,
                    imagesync_engine::Error::PlatformNotFound { .. } => reasons::PLATFORM_NOT_FOUND,
                    imagesync_engine::Error::InvalidPlatform { .. } => reasons::INVALID_SPEC,
                    _ => reasons::SYNC_FAILED,
                },
                ErrorKind::Unsupported | ErrorKind::Integrity | ErrorKind::Conflict => {
                    reasons::SYNC_FAILED
                }
                ErrorKind::Transient => reasons::REGISTRY_ERROR,
            },
            Error::Kube { .. }
            | Error::MissingMetadata(_)
            | Error::Finalizer(_)
            | Error::Lease(_) => reasons::REGISTRY_ERROR,
        }
    }

    /// Permanent errors need a change (spec, Secret, registry permissions) to go away:
    /// they are retried slowly instead of with fast exponential backoff.
    pub fn is_permanent(&self) -> bool {
        match self.innermost() {
            Error::InvalidReference { .. }
            | Error::InvalidSpec(_)
            | Error::SourceNotFound { .. }
            | Error::Secret { .. }
            | Error::SecretTypeUnsupported { .. }
            | Error::PolicyDenied { .. }
            | Error::MissingMetadata(_) => true,
            Error::Lease(_) => false,
            Error::Engine { source, .. } => matches!(
                source.kind(),
                ErrorKind::NotFound
                    | ErrorKind::Unauthorized
                    | ErrorKind::Denied
                    | ErrorKind::InvalidInput
                    | ErrorKind::Unsupported
            ),
            Error::Kube { .. } | Error::Finalizer(_) => false,
        }
    }

    /// A short label for the `error` dimension of metrics.
    pub fn metric_label(&self) -> &'static str {
        match self.innermost() {
            Error::Kube { .. } => "kube",
            Error::Engine { source, .. } => source.metric_label(),
            Error::InvalidReference { .. } => "invalid_reference",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::SourceNotFound { .. } => "source_not_found",
            Error::Secret { .. } => "secret",
            Error::SecretTypeUnsupported { .. } => "secret_type_unsupported",
            Error::PolicyDenied { .. } => "policy_denied",
            Error::MissingMetadata(_) => "missing_metadata",
            Error::Finalizer(_) => "finalizer",
            Error::Lease(_) => "lease",
        }
    }
}

//! The `imagesync` resource: validate, plan, apply, read, import and state upgrade,
//! written once against [`Backend`] and shared by protocols 5 and 6.
//!
//! Semantics (see the README and `docs/resources/imagesync.md`):
//! - Plan resolves the source tag by HEAD. A different digest than `source_digest` in
//!   state plans an in-place re-sync: copy the new image, move the tag, keep the previous
//!   digest (untagged) until destroy. `id` is planned as `<repo>@<source_digest>` whenever
//!   that digest is known (a copy keeps it). A `source` change that resolves to the same
//!   digest is an in-place update that copies nothing. An unknown `source` does not fail
//!   the plan; an unreachable source fails a create but only warns for an existing
//!   resource (destroy never needs the source).
//! - Read refreshes `id` from the destination (HEAD). Not found (and only that) removes
//!   the resource from state; a destination pointing at another digest than
//!   `source_digest` shows as drift and plans an in-place re-sync.
//! - Create and re-sync copy `source@<planned digest>`, never the tag again.
//! - Delete removes only what the resource wrote ([`apply`], [`crate::private`]): not a
//!   destination that already held the image at create (adopted), only while the tag
//!   still points at the digest written, and only blobs this resource uploaded.
//! - Kubernetes mode ([`crate::kube`]): plans do not look at registries (the controller
//!   follows the source); apply writes the `ImageSync` object and waits for `Ready`; read
//!   takes `id` and `source_digest` from its status; a gone object leaves the state.
//!
//! Modules: `model` (attributes and their parsing), `validate`, `plan`, `apply` (create,
//! re-sync, destroy and the private record), `read` and `import` (with the state
//! upgrade). Where the modes differ the backend is asked, never its mode: what a
//! plan learns of the source ([`Backend::plan_source`]), who keeps the record of what
//! was written ([`Backend::bookkeeper`]) and which object holds the resource
//! ([`Backend::identity`]).

use imagesync_engine::{Digest, ErrorKind};

#[cfg(doc)]
use crate::backend::Backend;
use crate::backend::BackendError;
use crate::diag::Diagnostic;
pub use crate::private::{Ownership, Private};
pub use crate::timeouts::{parse_duration, DEFAULT_TIMEOUT};

/// Attribute names.
pub mod attr {
    /// `id`.
    pub const ID: &str = "id";
    /// `source`.
    pub const SOURCE: &str = "source";
    /// `destination`.
    pub const DESTINATION: &str = "destination";
    /// `source_digest`.
    pub const SOURCE_DIGEST: &str = "source_digest";
    /// `delete_layers`.
    pub const DELETE_LAYERS: &str = "delete_layers";
    /// `namespace` (Kubernetes mode).
    pub const NAMESPACE: &str = "namespace";
    /// `name` (Kubernetes mode).
    pub const NAME: &str = "name";
    /// The `timeouts` block (Kubernetes mode).
    pub const TIMEOUTS: &str = "timeouts";
    /// `referrers`.
    pub const REFERRERS: &str = "referrers";
    /// `referrer_types`.
    pub const REFERRER_TYPES: &str = "referrer_types";
    /// `copied_referrers`.
    pub const COPIED_REFERRERS: &str = "copied_referrers";
    /// `platforms`.
    pub const PLATFORMS: &str = "platforms";
    /// `resync_interval` (Kubernetes mode).
    pub const RESYNC_INTERVAL: &str = "resync_interval";
    /// `source_secret_ref` (Kubernetes mode).
    pub const SOURCE_SECRET_REF: &str = "source_secret_ref";
    /// `destination_secret_ref` (Kubernetes mode).
    pub const DESTINATION_SECRET_REF: &str = "destination_secret_ref";
}

mod apply;
mod import;
mod model;
mod plan;
mod read;
mod validate;

pub use apply::{apply, Applied};
pub use import::{import, upgrade};
pub(crate) use model::referrers_value;
pub use model::Model;
use model::{fill_identity, parse_ref};
pub use plan::{plan, plan_with_private, Planned};
pub use read::read;
pub(crate) use validate::is_dns_name;
pub use validate::validate;

pub use crate::backend::make_id;

/// The digest part of an `id`.
pub fn id_digest(id: &str) -> Option<Digest> {
    id.rsplit_once('@').and_then(|(_, d)| d.parse().ok())
}

/// Turns a backend error into a diagnostic with advice for its kind.
pub fn error_diagnostic(what: &str, err: &BackendError, attribute: Option<&str>) -> Diagnostic {
    let hint = match (err, err.kind()) {
        (BackendError::Kube(_), _) => {
            "Check the `kubernetes` provider block (kubeconfig, context, namespace), that the \
             ImageSync CRD is installed and that the credentials may manage imagesyncs."
        }
        (BackendError::Timeout(_), _) => {
            "Check that the imagesync controller is running, and the object's Ready condition \
             and Events (`kubectl describe imagesync NAME`)."
        }
        (_, kind) => match kind {
        ErrorKind::NotFound => "The image does not exist (the registry answered \"not found\").",
        ErrorKind::Unauthorized => {
            "The registry rejected the credentials. Configure a `registry_auth` block for it, \
             or log in so the Docker config (`docker_config`) has credentials."
        }
        ErrorKind::Denied => "The credentials are valid but not allowed to do this (check the repository permissions).",
        ErrorKind::RateLimited => "The registry is rate-limiting requests; try again later or authenticate.",
        ErrorKind::Transient => {
            "The registry could not be reached or failed. Check the address, the network, \
             `insecure_registries` for plain-HTTP registries and `ca_file` for private CAs."
        }
        ErrorKind::Unsupported => "The registry does not support this operation.",
        ErrorKind::InvalidInput => "Check the references and the provider configuration.",
        ErrorKind::Integrity => "Content did not match its digest; nothing was tagged.",
        ErrorKind::Conflict => "The destination changed meanwhile.",
        },
    };
    let d = Diagnostic::error(
        format!("{what}: {}", crate::diag::kind_summary(err.kind())),
        format!("{}\n\n{hint}", crate::diag::cause_chain(err)),
    );
    match attribute {
        Some(a) => d.at(a),
        None => d,
    }
}

#[cfg(test)]
mod tests;

//! Tenant policy: which namespaces may copy what, and with whose credentials.
//!
//! In a shared cluster anyone who may create an `ImageSync` could otherwise make the
//! controller push anywhere with the controller's own credentials (its Docker config,
//! Google Workload Identity): a confused deputy. The policy file (`--policy-file`) closes
//! that hole. Without a policy file everything is allowed, as before.
//!
//! ```yaml
//! rules:
//!   - name: team-a
//!     namespaces: ["team-a", "team-a-*"]          # names and globs, or:
//!     # namespaceSelector: {matchLabels: {team: a}}
//!     sources: ["docker.io/library/*", "gcr.io/team-a/**"]
//!     destinations: ["registry.example.com/team-a/**"]
//!     ambientCredentials: {source: true, destination: false}
//!   - name: nobody-else
//!     action: Deny
//!     namespaces: ["*"]
//!     sources: ["**"]
//!     destinations: ["**"]
//! ```
//!
//! Semantics (see `controller/README.md`):
//! - rules are tried in order; the first rule whose namespace match, source patterns and
//!   destination patterns all match decides (`action: Allow`, the default, or `Deny`);
//! - when no rule matches, the object is denied;
//! - patterns are globs on the normalised reference (`docker.io/library/busybox:latest`,
//!   `host:port/repo@sha256:...`). A pattern matches when it matches the repository
//!   (`registry/repo`) or the repository with its tag or digest. `*` and `?` do not
//!   cross `/`; `**` does;
//! - `ambientCredentials` (both default `false`) says whether the controller's own
//!   credentials may be used for the source / destination registry; otherwise only the
//!   object's own Secrets are offered (anonymous when it has none).
//!
//! Layout: `rules` (the file format, the compiled [`Policy`] and its [`Decision`]s, with
//! the unit tests) and `store` (the [`PolicyStore`] in force and the [`Reloader`] that
//! re-reads the file).

use std::path::PathBuf;

mod rules;
mod store;

pub use rules::{Action, Ambient, Decision, Policy};
pub use store::{load_file, PolicyStore, Reloader, POLICY_INVALID, POLICY_RELOADED};

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("reading policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML for the policy schema (unknown keys included).
    #[error("policy is not valid: {0}")]
    Syntax(String),
    /// Valid YAML, but a rule is wrong.
    #[error("policy rule {rule}: {reason}")]
    Rule {
        /// The rule's name (or its position when it has none).
        rule: String,
        /// What is wrong.
        reason: String,
    },
}

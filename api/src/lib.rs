//! The `ImageSync` custom resource (`imagesync.dev/v1alpha1`), and the `ImageSyncSet`
//! that keeps one `ImageSync` per matching tag of a repository ([`set`]).
//!
//! The CRD YAML in `crds/` is generated from these types by the `crdgen` binary
//! ([`crd_yaml`]); a test fails when the committed file (or the chart's copy) differs.
//! Validation is OpenAPI schema only (no CEL), so the CRD works on Kubernetes 1.20.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod crd;
mod key;
pub mod set;
pub use crd::{all_crds, crd_yaml, set_crd_yaml};
pub use key::destination_key;
pub use set::{ImageSyncSet, ImageSyncSetSpec, ImageSyncSetStatus, ImageSyncTemplate};

/// The finalizer that makes deletion remove the destination tag first.
pub const FINALIZER: &str = "imagesync.dev/cleanup";

/// The condition type the controller maintains.
pub const READY: &str = "Ready";

/// `reason` values of the `Ready` condition.
pub mod reasons {
    /// The destination holds the source digest.
    pub const SYNCED: &str = "Synced";
    /// A copy is in progress.
    pub const SYNCING: &str = "Syncing";
    /// `spec.suspend` is true: nothing is checked or copied.
    pub const SUSPENDED: &str = "Suspended";
    /// The source tag or digest does not exist.
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    /// The registry rejected the credentials (401), or none were given.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// The registry refused the operation for these credentials (403).
    pub const DENIED: &str = "Denied";
    /// `spec.platforms` names a platform the source does not have (the message names
    /// those it has).
    pub const PLATFORM_NOT_FOUND: &str = "PlatformNotFound";
    /// The registry answered 429; the next attempt honours `Retry-After`.
    pub const RATE_LIMITED: &str = "RateLimited";
    /// `spec.source` or `spec.destination` is not a valid image reference.
    pub const INVALID_REFERENCE: &str = "InvalidReference";
    /// A spec field the CRD schema cannot fully check is out of range (for example
    /// `spec.resyncInterval` below 10s or above 720h); nothing is checked or copied.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced Secret is missing, in another namespace, or holds no usable docker config.
    pub const INVALID_SECRET: &str = "InvalidSecret";
    /// A referenced Secret is not a `kubernetes.io/dockerconfigjson` or
    /// `kubernetes.io/dockercfg` Secret.
    pub const SECRET_TYPE_UNSUPPORTED: &str = "SecretTypeUnsupported";
    /// The tenant policy (`--policy-file`) does not allow this object.
    pub const POLICY_DENIED: &str = "PolicyDenied";
    /// The image cannot be copied (unsupported manifest, digest mismatch, ...).
    pub const SYNC_FAILED: &str = "SyncFailed";
    /// Removing the previous destination failed.
    pub const DELETE_FAILED: &str = "DeleteFailed";
    /// A temporary failure (network, 5xx); retried with backoff.
    pub const REGISTRY_ERROR: &str = "RegistryError";
    /// Another `ImageSync` (created earlier) names the same destination tag: this one
    /// writes and deletes nothing until the other is gone.
    pub const DESTINATION_CONFLICT: &str = "DestinationConflict";
}

/// Most blobs recorded in `status.uploadedBlobs`; blobs uploaded beyond it are not
/// recorded, so they are kept on deletion (status never grows without limit).
pub const MAX_UPLOADED_BLOBS: usize = 256;

/// Desired state: keep `destination` an exact copy of `source`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "imagesync.dev",
    version = "v1alpha1",
    kind = "ImageSync",
    plural = "imagesyncs",
    shortname = "isync",
    namespaced,
    status = "ImageSyncStatus",
    doc = "Mirrors one container image (or index) from a source to a destination registry, byte for byte, and keeps it there.",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source"}"#,
    printcolumn = r#"{"name":"Destination","type":"string","jsonPath":".spec.destination"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.destinationDigest"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Referrers","type":"integer","jsonPath":".status.referrerCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageSyncSpec {
    /// Source image reference (`registry/repo:tag` or `registry/repo@sha256:...`).
    #[schemars(length(min = 1))]
    pub source: String,
    /// Destination image reference (`registry/repo:tag`).
    #[schemars(length(min = 1))]
    pub destination: String,
    /// How often the source and destination are re-checked (HEAD only), as a Go
    /// duration such as `30s`, `5m` or `1h`. Defaults to the controller's
    /// `--default-resync-interval` (5m). From 10s (the controller's
    /// `--min-resync-interval`) to 720h; outside that the object is `Ready=False` with
    /// reason `InvalidSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]{1,16}(\.[0-9]{1,9})?(ns|us|µs|ms|s|m|h)){1,4}$")
    )]
    pub resync_interval: Option<String>,
    /// What happens to the destination tag when this object is deleted or its
    /// destination changes.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// On deletion, also delete blobs no other manifest in the repository uses.
    #[serde(default = "default_true")]
    pub delete_layers: bool,
    /// A `kubernetes.io/dockerconfigjson` Secret in this namespace with credentials for
    /// the source registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_secret_ref: Option<SecretRef>,
    /// A `kubernetes.io/dockerconfigjson` Secret in this namespace with credentials for
    /// the destination registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_secret_ref: Option<SecretRef>,
    /// Stop checking and copying (deletion still cleans up).
    #[serde(default)]
    pub suspend: bool,
    /// Also copy the image's signatures, attestations and SBOMs (cosign's
    /// `sha256-<hex>.sig|.att|.sbom` tags, the OCI referrers API and its `sha256-<hex>`
    /// fallback tag), so verifiers that look at the mirror find them. Default `true`;
    /// each check of an up-to-date image then adds two HEAD requests.
    #[serde(default = "default_true")]
    pub referrers: bool,
    /// Only referrers of these artifact types (media types, e.g.
    /// `application/vnd.dev.cosign.simplesigning.v1+json`). Empty: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub referrer_types: Vec<String>,
    /// The platforms to copy, as `os/architecture[/variant]` (e.g. `linux/amd64`,
    /// `linux/arm64/v8`; lower-case letters, digits and `_`), at most 64, each once.
    /// Empty: every platform, byte for byte (the source's digest). One platform of an
    /// index: that child manifest, byte for byte (the source child's digest). Several: a
    /// new index of just those entries, with the source index's other fields, written
    /// canonically, so the same selection always gives the same digest. A source that
    /// gains a platform not selected is not drift. A platform the source lacks makes the
    /// object `Ready=False` with reason `PlatformNotFound`, naming those it has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[a-z0-9_]{1,32}/[a-z0-9_]{1,32}(/[a-z0-9_]{1,32})?$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub platforms: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// What to do with the destination tag when it is no longer wanted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove the tag (only while it still points at `status.destinationDigest`).
    #[default]
    Delete,
    /// Leave everything in the registry.
    Orphan,
}

/// A Secret in the object's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Observed state.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSyncStatus {
    /// Digest the source resolved to at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
    /// Digest the controller wrote to (or found at) the destination: the source digest,
    /// or with `spec.platforms` the digest of the selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_digest: Option<String>,
    /// The platform selection of the last sync (absent without `spec.platforms`): while
    /// the source still resolves to its `sourceDigest` and `spec.platforms` is the same, a
    /// re-check takes the selection's digest from here instead of reading the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionRecord>,
    /// `<normalised destination repository>@<digest>`, as the engine and the Terraform
    /// provider print it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The destination reference `destinationDigest` belongs to (used to clean up the
    /// old destination when `spec.destination` changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_destination: Option<String>,
    /// `metadata.generation` of the spec last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the destination was last written (or found already up to date after a change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// When source and destination were last checked. A check that changes nothing else
    /// in status refreshes it only once it is 10 minutes old (no status write per
    /// re-check): it is less than 10 minutes behind the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    /// Whether this object's own copy wrote the tag at `syncedDestination`
    /// (`Written`: deletion and destination moves remove it) or found it already holding
    /// the digest (`Adopted`: it is left in place). Objects synced before this field
    /// existed are treated as `Adopted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<Ownership>,
    /// Blobs (and child manifests) this object's copies to `syncedDestination` uploaded
    /// (not those already there, not mounted ones): the only ones its deletion may remove
    /// (at most 256 are recorded; the rest are kept). Absent (objects synced before this
    /// field existed): no layer is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_blobs: Option<Vec<String>>,
    /// A copy of `digest` to `destination` was started: if the destination holds that
    /// digest at the next check, this object wrote it (a copy interrupted after its tag
    /// write, or a status write lost to another replica, is not mistaken for adoption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_intent: Option<WriteIntent>,
    /// Set while `Ready` is `False` with reason `DestinationConflict`: the object that
    /// holds the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictRecord>,
    /// `Ready`: `True` with reason `Synced`; `False` with `Syncing`, `Suspended`,
    /// `SourceNotFound`, `Unauthorized`, `Denied`, `RateLimited`, `InvalidReference`,
    /// `InvalidSpec`, `InvalidSecret`, `SecretTypeUnsupported`, `PolicyDenied`, `PlatformNotFound`,
    /// `DestinationConflict`, `SyncFailed`, `DeleteFailed` or `RegistryError`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The signatures, attestations and SBOMs that followed the image (at most 256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referrers: Vec<ReferrerStatus>,
    /// How many referrers followed the image (the `Referrers` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_count: Option<i64>,
    /// The referrers drift probe recorded at the last full look at the referrers (the
    /// source's `sha256-<hex>` and `.sig` tag digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrers_probe: Option<String>,
}

/// One referrer at the destination.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerStatus {
    /// Digest of its manifest.
    pub digest: String,
    /// Its artifact type, e.g. `application/vnd.dev.cosign.simplesigning.v1+json`.
    pub artifact_type: String,
    /// This object wrote it (deletion removes it); absent: it was already there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub written: bool,
}

/// What a platform selection gave (see `status.selection`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelectionRecord {
    /// `spec.platforms` when the selection was made.
    pub platforms: Vec<String>,
    /// The source digest (the index's) it was made from.
    pub source_digest: String,
    /// The digest it gives: the selected child's, or the index of the selected entries'.
    pub digest: String,
}

/// Who wrote the destination tag.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Ownership {
    /// This object's own manifest PUT wrote the tag: deletion removes it.
    Written,
    /// The tag already held the digest: deletion leaves it in place.
    Adopted,
}

/// A copy that was started (see `status.writeIntent`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct WriteIntent {
    /// The destination reference being written.
    pub destination: String,
    /// The digest being written.
    pub digest: String,
}

/// The `ImageSync` that holds a destination this object also names.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConflictRecord {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The digest it wrote at the destination (its `ownership` is `Written`). When it is
    /// deleted it leaves the tag for this object, which then owns the tag if it still
    /// holds this digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_digest: Option<String>,
    /// Its `uploadedBlobs`, inherited with the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_blobs: Option<Vec<String>>,
}

impl ImageSync {
    /// The `Ready` condition, if any.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
    }

    /// True when `Ready` is `True`.
    pub fn is_ready(&self) -> bool {
        self.ready_condition().is_some_and(|c| c.status == "True")
    }
}

//! The `ImageSyncSet` custom resource: one child `ImageSync` per tag of a source
//! repository that matches a filter, the way a ReplicaSet keeps Pods.
//!
//! The schema rejects what it can express (repository shapes, lengths, `latest` range,
//! the interval's shape); what it cannot (regular-expression and semver syntax, the
//! interval's range) makes the set `Ready=False` with reason `InvalidSpec` and the
//! filter's error, and no child is created or deleted.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{DeletionPolicy, SecretRef};

/// Most children a set keeps: a filter matching more makes the set `Ready=False` with
/// reason `TooManyTags` and nothing is created or deleted until it is narrowed.
pub const MAX_CHILDREN: usize = 1000;

/// The label every child carries: the set's uid (a set's name may be longer than a label
/// value can be). Children are found by it and then checked by `ownerReferences` uid:
/// a label alone proves nothing (anyone who may create an `ImageSync` can forge it).
pub const SET_UID_LABEL: &str = "imagesync.dev/set-uid";
/// The label with the set's name (when the name fits a label value, 63 characters).
pub const SET_NAME_LABEL: &str = "imagesync.dev/set";
/// The annotation with the child's source tag (tags may be longer than a label value).
pub const TAG_ANNOTATION: &str = "imagesync.dev/tag";

/// `reason` values of an `ImageSyncSet`'s `Ready` condition (besides those shared with
/// `ImageSync`: `InvalidSpec`, `InvalidReference`, `PolicyDenied`, `Unauthorized`,
/// `Denied`, `RateLimited`, `RegistryError`, `Suspended`).
pub mod set_reasons {
    /// Every matching tag has its child and every child is `Ready`.
    pub const SYNCED: &str = "Synced";
    /// Some children are not `Ready` yet (none failed).
    pub const SYNCING: &str = "Syncing";
    /// Some children are `Ready=False` with a failure reason.
    pub const CHILDREN_FAILED: &str = "ChildrenFailed";
    /// More tags match than a set may keep children for ([`super::MAX_CHILDREN`]).
    pub const TOO_MANY_TAGS: &str = "TooManyTags";
    /// An `ImageSync` not owned by this set already has a child's name: it is left alone
    /// and that tag has no child.
    pub const NAME_CONFLICT: &str = "NameConflict";
}

/// Desired state: one `ImageSync` per tag of `source` that the filters select.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "imagesync.dev",
    version = "v1alpha1",
    kind = "ImageSyncSet",
    plural = "imagesyncsets",
    shortname = "isyncset",
    namespaced,
    status = "ImageSyncSetStatus",
    doc = "Keeps one ImageSync per tag of a source repository that matches a filter, mirroring each to the same tag of a destination repository.",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source"}"#,
    printcolumn = r#"{"name":"Destination","type":"string","jsonPath":".spec.destination"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.matched"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageSyncSetSpec {
    /// Source repository, without tag or digest (`registry/repo`): its tags are listed.
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^([^/@\s]+/)*[^/:@\s]+$")
    )]
    pub source: String,
    /// Destination repository, without tag or digest: each child copies
    /// `<source>:<tag>` to `<destination>:<tag>`.
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^([^/@\s]+/)*[^/:@\s]+$")
    )]
    pub destination: String,
    /// Keep only tags this regular expression matches as a whole (Rust `regex` syntax,
    /// anchored: `1\.2.*` does not match `v1.2.0`), as in the data source `imagesync_tags`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub include: Option<String>,
    /// Drop tags this regular expression matches as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub exclude: Option<String>,
    /// Keep only tags that are versions (`1.25.3`, `v1.25.3`, `1.25`) within this
    /// constraint, e.g. `>=1.25, <2` (Cargo's semver rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub semver: Option<String>,
    /// Keep only the highest N semantic versions (after the other filters), 1 to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub latest: Option<u32>,
    /// What happens at the destination when a tag stops matching (or the set is
    /// deleted): `Orphan` (default) leaves the mirrored image in the registry; `Delete`
    /// removes the destination tag the child wrote. Children are created with this
    /// policy, and it is written to a child before the child is deleted.
    #[serde(default = "orphan")]
    pub deletion_policy: DeletionPolicy,
    /// How often the source's tags are listed again, as a Go duration (`5m`, `1h`).
    /// Defaults to the controller's `--default-resync-interval` (5m); from 10s (the
    /// controller's `--min-resync-interval`) to 720h, else `Ready=False` with reason
    /// `InvalidSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]{1,16}(\.[0-9]{1,9})?(ns|us|µs|ms|s|m|h)){1,4}$")
    )]
    pub resync_interval: Option<String>,
    /// Stop listing tags and changing children (the children keep running).
    #[serde(default)]
    pub suspend: bool,
    /// The options every child `ImageSync` gets.
    #[serde(default)]
    pub template: ImageSyncTemplate,
}

fn orphan() -> DeletionPolicy {
    DeletionPolicy::Orphan
}

fn default_true() -> bool {
    true
}

/// The `ImageSync` options of the children (see `ImageSync`'s fields of the same names).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSyncTemplate {
    /// The children's `resyncInterval` (their HEAD re-checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^([0-9]{1,16}(\.[0-9]{1,9})?(ns|us|µs|ms|s|m|h)){1,4}$")
    )]
    pub resync_interval: Option<String>,
    /// On a child's deletion (policy `Delete`), also delete blobs no other manifest uses.
    #[serde(default = "default_true")]
    pub delete_layers: bool,
    /// Source registry credentials (a Secret in this namespace); also used to list tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_secret_ref: Option<SecretRef>,
    /// Destination registry credentials (a Secret in this namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_secret_ref: Option<SecretRef>,
    /// Copy signatures, attestations and SBOMs with each image (default `true`).
    #[serde(default = "default_true")]
    pub referrers: bool,
    /// Only referrers of these artifact types. Empty: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub referrer_types: Vec<String>,
    /// The platforms to copy (`os/architecture[/variant]`), at most 64. Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[a-z0-9_]{1,32}/[a-z0-9_]{1,32}(/[a-z0-9_]{1,32})?$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub platforms: Vec<String>,
    /// Children are created suspended (nothing copied).
    #[serde(default)]
    pub suspend: bool,
}

impl Default for ImageSyncTemplate {
    fn default() -> Self {
        ImageSyncTemplate {
            resync_interval: None,
            delete_layers: true,
            source_secret_ref: None,
            destination_secret_ref: None,
            referrers: true,
            referrer_types: Vec::new(),
            platforms: Vec::new(),
            suspend: false,
        }
    }
}

/// Observed state.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSyncSetStatus {
    /// Tags of the source that the filters selected at the last successful list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<i64>,
    /// Children owned by this set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<i64>,
    /// Children that are `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<i64>,
    /// Children that are `Ready=False` with a failure reason (not `Syncing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<i64>,
    /// `metadata.generation` of the spec last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the source's tags were last listed successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_list_time: Option<Time>,
    /// `Ready`: `True` with reason `Synced`; `False` with `Syncing`, `ChildrenFailed`,
    /// `TooManyTags`, `NameConflict`, `InvalidSpec`, `InvalidReference`, `PolicyDenied`,
    /// `Suspended`, or the reason of a failed tag list (`Unauthorized`, `Denied`,
    /// `RateLimited`, `RegistryError`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ImageSyncSet {
    /// The `Ready` condition, if any.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == crate::READY))
    }
}

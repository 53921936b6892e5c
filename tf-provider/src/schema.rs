//! The provider and resource schemas.

use crate::proto::tfplugin6::{schema, Schema, StringKind};

/// The resource type name (the same as the provider's, as in the original project).
pub const RESOURCE_TYPE: &str = "imagesync";

/// Version of the resource schema. Version 1 matches the original Go provider's state,
/// so its states upgrade without a migration.
pub const RESOURCE_SCHEMA_VERSION: i64 = 1;

pub(crate) const STRING: &[u8] = br#""string""#;
const BOOL: &[u8] = br#""bool""#;
pub(crate) const LIST_OF_STRING: &[u8] = br#"["list","string"]"#;
const LIST_OF_REFERRERS: &[u8] =
    br#"["list",["object",{"artifact_type":"string","digest":"string"}]]"#;
/// A Secret reference, as the CRD's `sourceSecretRef`: `{ name = "..." }`.
const SECRET_REF: &[u8] = br#"["object",{"name":"string"}]"#;

/// Whether an attribute is set by the user, the provider, or either.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    Required,
    Optional,
    Computed,
    OptionalComputed,
}

pub(crate) fn attr(
    name: &str,
    ty: &[u8],
    mode: Mode,
    sensitive: bool,
    description: &str,
) -> schema::Attribute {
    schema::Attribute {
        name: name.to_string(),
        r#type: ty.to_vec(),
        description: description.to_string(),
        required: matches!(mode, Mode::Required),
        optional: matches!(mode, Mode::Optional | Mode::OptionalComputed),
        computed: matches!(mode, Mode::Computed | Mode::OptionalComputed),
        sensitive,
        description_kind: StringKind::Markdown as i32,
        deprecated: false,
    }
}

pub(crate) fn block(
    attributes: Vec<schema::Attribute>,
    block_types: Vec<schema::NestedBlock>,
    description: &str,
) -> schema::Block {
    schema::Block {
        version: 0,
        attributes,
        block_types,
        description: description.to_string(),
        description_kind: StringKind::Markdown as i32,
        deprecated: false,
    }
}

fn single_block(name: &str, inner: schema::Block) -> schema::NestedBlock {
    schema::NestedBlock {
        type_name: name.to_string(),
        block: Some(inner),
        nesting: schema::nested_block::NestingMode::Single as i32,
        min_items: 0,
        max_items: 0,
    }
}

fn list_block(name: &str, inner: schema::Block, max_items: i64) -> schema::NestedBlock {
    schema::NestedBlock {
        type_name: name.to_string(),
        block: Some(inner),
        nesting: schema::nested_block::NestingMode::List as i32,
        min_items: 0,
        max_items,
    }
}

/// The provider configuration schema.
pub fn provider() -> Schema {
    use Mode::*;
    let registry_auth = block(
        vec![
            attr(
                "address",
                STRING,
                Required,
                false,
                "Registry host (`host[:port]`, e.g. `ghcr.io`).",
            ),
            attr("username", STRING, Required, false, "User name."),
            attr(
                "password",
                STRING,
                Required,
                true,
                "Password or access token.",
            ),
        ],
        vec![],
        "Credentials for one registry. Takes precedence over the Docker config.",
    );
    let kubernetes = block(
        vec![
            attr(
                "config_path",
                STRING,
                Optional,
                false,
                "Path of a kubeconfig file.",
            ),
            attr(
                "config_context",
                STRING,
                Optional,
                false,
                "Context of the kubeconfig to use.",
            ),
            attr(
                "namespace",
                STRING,
                Optional,
                false,
                "Default namespace of the `ImageSync` objects.",
            ),
        ],
        vec![],
        "Kubernetes mode: the resource manages `ImageSync` objects (imagesync.dev/v1alpha1) and \
         the imagesync controller copies and heals. Without `config_path`, `KUBECONFIG`, \
         `~/.kube/config` or the in-cluster service account are used.",
    );
    Schema {
        version: 0,
        block: Some(block(
            vec![
                attr(
                    "insecure_registries",
                    LIST_OF_STRING,
                    Optional,
                    false,
                    "Registries (`host:port`) reached over plain HTTP instead of HTTPS.",
                ),
                attr("ca_file", STRING, Optional, false, "PEM bundle of extra CA certificates to trust."),
                attr(
                    "docker_config",
                    STRING,
                    Optional,
                    false,
                    "Path of a Docker `config.json` (default: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).",
                ),
            ],
            vec![list_block("registry_auth", registry_auth, 0), list_block("kubernetes", kubernetes, 1)],
            "Copies container images between OCI registries byte for byte and tracks them by digest.",
        )),
    }
}

/// The `imagesync` resource schema.
pub fn resource() -> Schema {
    use Mode::*;
    Schema {
        version: RESOURCE_SCHEMA_VERSION,
        block: Some(block(
            vec![
                attr(
                    "id",
                    STRING,
                    Computed,
                    false,
                    "`<normalised destination repository>@sha256:<digest>` of the image at the destination \
                     (or `destination` itself when it already pins a digest).",
                ),
                attr("source", STRING, Required, false, "Reference of the image to copy, e.g. `docker.io/library/busybox:1.36`."),
                attr(
                    "destination",
                    STRING,
                    Required,
                    false,
                    "Reference to copy the image to, e.g. `registry.example.com/mirror/busybox:1.36`. Changing it forces a new resource.",
                ),
                attr(
                    "source_digest",
                    STRING,
                    Computed,
                    false,
                    "Digest the source resolved to when it was last synced. A different digest at plan time plans a re-sync.",
                ),
                attr(
                    "delete_layers",
                    BOOL,
                    OptionalComputed,
                    false,
                    "On destroy, also delete the image's blobs that no other manifest in the repository uses (default `true`).",
                ),
                attr(
                    "referrers",
                    BOOL,
                    OptionalComputed,
                    false,
                    "Also copy the image's signatures, attestations and SBOMs (cosign `.sig`/`.att`/`.sbom` tags, the OCI referrers API and its `sha256-<hex>` fallback tag) (default `true`). A plan then sends 2 more HEADs per resource.",
                ),
                attr(
                    "referrer_types",
                    LIST_OF_STRING,
                    Optional,
                    false,
                    "Copy only referrers of these artifact types (media types, at most 32), e.g. `application/vnd.dev.cosign.simplesigning.v1+json`. Unset: every type.",
                ),
                attr(
                    "copied_referrers",
                    LIST_OF_REFERRERS,
                    Computed,
                    false,
                    "The referrers that followed the image: `digest` and `artifact_type` of each.",
                ),
                attr(
                    "namespace",
                    STRING,
                    OptionalComputed,
                    false,
                    "Kubernetes mode: namespace of the `ImageSync` object (default: the provider's). Changing it forces a new resource.",
                ),
                attr(
                    "name",
                    STRING,
                    OptionalComputed,
                    false,
                    "Kubernetes mode: name of the `ImageSync` object (default: derived from `destination`). Changing it forces a new resource.",
                ),
                attr(
                    "platforms",
                    LIST_OF_STRING,
                    Optional,
                    false,
                    "Platforms to copy (`os/architecture[/variant]`, e.g. `linux/amd64`, `linux/arm64/v8`); default: every platform. \
                     One platform copies that child manifest byte for byte; several write a deterministic index of just those entries. \
                     `source_digest` and `id` then carry the selection's digest.",
                ),
                attr(
                    "resync_interval",
                    STRING,
                    Optional,
                    false,
                    "Kubernetes mode: `spec.resyncInterval`, how often the controller re-checks (Go duration, e.g. `5m`).",
                ),
                attr(
                    "source_secret_ref",
                    SECRET_REF,
                    Optional,
                    false,
                    "Kubernetes mode: `spec.sourceSecretRef`, `{ name = \"...\" }` of a docker-config Secret in the object's namespace for the source registry.",
                ),
                attr(
                    "destination_secret_ref",
                    SECRET_REF,
                    Optional,
                    false,
                    "Kubernetes mode: `spec.destinationSecretRef`, the same for the destination registry.",
                ),
            ],
            vec![single_block(
                "timeouts",
                block(
                    vec![
                        attr("create", STRING, Optional, false, "How long to wait for `Ready` (default `5m`), e.g. `90s`, `10m`."),
                        attr("delete", STRING, Optional, false, "How long to wait for the object to be gone (default `5m`)."),
                    ],
                    vec![],
                    "Kubernetes mode: how long to wait for the controller.",
                ),
            )],
            "Mirrors one image (all platforms of a multi-arch image, or the `platforms` selected) from `source` to `destination`.",
        )),
    }
}

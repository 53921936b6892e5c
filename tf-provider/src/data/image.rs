//! `data "imagesync_image"`: what a reference points at, without copying anything. A
//! HEAD for the digest; for an index, one GET of it for the platforms.

use std::collections::BTreeMap;

use imagesync_engine::Engine;

use super::{reference, required, Diags};
use crate::backend::BackendError;
use crate::codec::Value;
use crate::diag::Diagnostic;
use crate::proto::tfplugin6::Schema;
use crate::schema::{attr, block, Mode, STRING};

/// The data source's type name.
pub const TYPE: &str = "imagesync_image";

const REFERENCE: &str = "reference";
const EXAMPLE: &str = "registry.example.com/team/app:1.2";
const PLATFORMS: &[u8] = br#"["list",["object",{"digest":"string","platform":"string"}]]"#;

/// The schema.
pub fn schema() -> Schema {
    use Mode::*;
    Schema {
        version: 0,
        block: Some(block(
            vec![
                attr(
                    REFERENCE,
                    STRING,
                    Required,
                    false,
                    "Reference of the image, e.g. `docker.io/library/busybox:1.36` (a tag, or a digest).",
                ),
                attr(
                    "digest",
                    STRING,
                    Computed,
                    false,
                    "Digest the reference resolves to (by HEAD): an index's own digest for a multi-platform image.",
                ),
                attr(
                    "id",
                    STRING,
                    Computed,
                    false,
                    "`<normalised repository>@sha256:<digest>`, the image pinned by digest (the form the `imagesync` resource's `id` has).",
                ),
                attr(
                    "platforms",
                    PLATFORMS,
                    Computed,
                    false,
                    "For an index: each platform (`os/architecture[/variant]`, e.g. `linux/arm64/v8`) with its child manifest's `digest`, in the index's order, without attestation manifests. Empty for a single image.",
                ),
            ],
            vec![],
            "Reads the digest of an image (and, for a multi-platform image, its platforms) without copying anything.",
        )),
    }
}

/// Checks a literal `reference`.
pub fn validate(config: &Value) -> Diags {
    reference(config, REFERENCE, EXAMPLE)
        .err()
        .into_iter()
        .collect()
}

/// The computed attributes.
pub async fn read(engine: &Engine, config: &Value) -> Result<BTreeMap<String, Value>, Diagnostic> {
    let r = required(reference(config, REFERENCE, EXAMPLE)?, REFERENCE)?;
    let inspection = engine.inspect(&r).await.map_err(|e| {
        crate::resource::error_diagnostic(
            "Cannot read the image",
            &BackendError::Engine(e),
            Some(REFERENCE),
        )
    })?;
    let Some(inspection) = inspection else {
        return Err(Diagnostic::error(
            "Image not found",
            format!(
                "{r} does not exist: the registry answered \"not found\" for its manifest.\n\n\
                 Check the repository and the tag (or digest)."
            ),
        )
        .at(REFERENCE));
    };
    tracing::debug!(reference = %r, digest = %inspection.digest, platforms = inspection.platforms.len(), "image inspected");
    let platforms = inspection
        .platforms
        .iter()
        .map(|p| {
            Value::Object(BTreeMap::from([
                (
                    "platform".to_string(),
                    Value::String(p.platform.to_string()),
                ),
                ("digest".to_string(), Value::String(p.digest.to_string())),
            ]))
        })
        .collect();
    Ok(BTreeMap::from([
        (
            "digest".to_string(),
            Value::String(inspection.digest.to_string()),
        ),
        ("id".to_string(), Value::String(inspection.id)),
        ("platforms".to_string(), Value::List(platforms)),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::PathStep;

    #[test]
    fn a_bad_literal_reference_is_reported_at_reference() {
        let config = |v: Value| Value::Object(BTreeMap::from([(REFERENCE.to_string(), v)]));
        let d = validate(&config(Value::String("Not A/Reference".into())));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].path, vec![PathStep::Attr(REFERENCE.into())]);
        assert!(validate(&config(Value::String("127.0.0.1:5000/a/b:1".into()))).is_empty());
        assert!(validate(&config(Value::Unknown)).is_empty());
    }
}

//! `imagesync delete`.

use anyhow::Context as _;
use imagesync_engine::{DeleteOptions, Digest, Engine, ErrorKind, Reference};

use crate::exit::{self, Warned};
use crate::output;

/// Removes `dst`'s tag safely, then (unless `keep_layers`) its unshared layers.
pub(super) async fn run(
    engine: &Engine,
    dst: &Reference,
    expect_digest: Option<Digest>,
    keep_layers: bool,
) -> anyhow::Result<()> {
    let deleted = engine
        .delete(
            dst,
            &DeleteOptions {
                expect_digest,
                delete_layers: !keep_layers,
                only_blobs: None,
            },
        )
        .await;
    let report = match deleted {
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            output::warn(&format!(
                "{dst}: the registry does not allow deletes; the image was left in place ({e})"
            ));
            return Err(Warned(exit::DELETE_UNSUPPORTED).into());
        }
        other => other.with_context(|| format!("deleting {dst}"))?,
    };
    for w in &report.warnings {
        output::warn(w);
    }
    if report.already_gone {
        output::info(&format!("{dst}: already gone"));
        return Ok(());
    }
    output::info(&format!(
        "{dst}: tag removed; manifest {}; {} blob(s) deleted, {} kept{}",
        if report.manifest_deleted {
            "deleted"
        } else {
            "kept (still referenced)"
        },
        report.blobs_deleted,
        report.blobs_kept,
        if report.kept_tags.is_empty() {
            String::new()
        } else {
            format!("; other tags kept: {}", report.kept_tags.join(", "))
        }
    ));
    Ok(())
}

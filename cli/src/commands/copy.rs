//! `imagesync copy`.

use std::time::Instant;

use anyhow::Context as _;
use imagesync_engine::{Engine, Platform, Reference, SyncOptions};

use crate::{output, progress};

/// Copies `src` to `dst`; the summary on stderr, the id `repo@sha256:...` on stdout.
pub(super) async fn run(
    engine: &Engine,
    src: &Reference,
    dst: &Reference,
    platforms: &[Platform],
    no_progress: bool,
    referrers: imagesync_engine::ReferrerPolicy,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let display = progress::Display::new(no_progress);
    let options = SyncOptions {
        progress: Some(display.callback()),
        referrers,
        platforms: platforms.to_vec(),
        ..SyncOptions::default()
    };
    let result = engine.sync(src, dst, &options).await;
    display.finish();
    let outcome = result.with_context(|| format!("copying {src} to {dst}"))?;
    if outcome.up_to_date {
        output::info(&format!(
            "{dst} already up to date ({})",
            outcome.destination_digest
        ));
    } else {
        output::info(&format!(
            "copied in {:.1}s: {} bytes uploaded, {} blob(s) uploaded, {} mounted, {} already present, {} manifest(s)",
            started.elapsed().as_secs_f64(),
            outcome.bytes_uploaded,
            outcome.blobs_uploaded,
            outcome.blobs_mounted,
            outcome.blobs_skipped,
            outcome.manifests_pushed
        ));
    }
    if !outcome.referrers.is_empty() {
        let written = outcome.referrers.iter().filter(|r| r.written).count();
        output::info(&format!(
            "referrers: {} at the destination ({written} written now)",
            outcome.referrers.len()
        ));
    }
    println!("{}", outcome.id);
    Ok(())
}

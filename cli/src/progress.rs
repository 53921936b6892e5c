//! What `copy` shows while it runs: a progress bar on a terminal, else one line per
//! planned copy, blob and retry.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use imagesync_engine::progress::{BlobAction, ProgressEvent};
use imagesync_engine::Progress;

use crate::output;

/// The progress display of one copy.
pub(crate) struct Display {
    bar: Option<indicatif::ProgressBar>,
}

impl Display {
    /// A bar when stderr is a terminal and `no_progress` is false, else lines.
    pub(crate) fn new(no_progress: bool) -> Display {
        let tty = std::io::stderr().is_terminal() && !no_progress;
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Display { bar }
    }

    /// The engine's progress callback.
    pub(crate) fn callback(&self) -> Arc<dyn Progress> {
        let bar = self.bar.clone();
        let blobs_total = AtomicUsize::new(0);
        let blobs_done = AtomicUsize::new(0);
        Arc::new(move |event: ProgressEvent| match &bar {
            Some(bar) => on_bar(bar, &blobs_total, &blobs_done, event),
            None => as_line(event),
        })
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn on_bar(
    bar: &indicatif::ProgressBar,
    total: &AtomicUsize,
    done: &AtomicUsize,
    event: ProgressEvent,
) {
    match event {
        ProgressEvent::Planned { blobs, bytes, .. } => {
            total.store(blobs, Relaxed);
            bar.set_length(bytes);
            bar.set_message(format!("0/{blobs} blobs"));
        }
        ProgressEvent::Bytes(n) => bar.inc(n),
        ProgressEvent::Blob { size, action, .. } => {
            if action != BlobAction::Uploaded {
                bar.inc(size);
            }
            let done = done.fetch_add(1, Relaxed) + 1;
            bar.set_message(format!("{done}/{} blobs", total.load(Relaxed)));
        }
        ProgressEvent::Retry {
            what,
            error,
            attempt,
        } => {
            bar.println(format!(
                "retrying {what} (attempt {attempt} failed: {error})"
            ));
        }
        _ => {}
    }
}

fn as_line(event: ProgressEvent) {
    match event {
        ProgressEvent::Planned {
            blobs,
            bytes,
            manifests,
        } => output::info(&format!(
            "copying {blobs} blob(s), {bytes} bytes, {manifests} manifest(s)"
        )),
        ProgressEvent::Blob {
            digest,
            size,
            action,
        } => output::info(&format!("blob {digest} ({size} bytes): {action:?}")),
        ProgressEvent::Retry {
            what,
            error,
            attempt,
        } => output::warn(&format!(
            "retrying {what} (attempt {attempt} failed: {error})"
        )),
        _ => {}
    }
}

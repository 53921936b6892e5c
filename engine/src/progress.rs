//! Progress events. The engine never prints; front ends render these.

use crate::reference::Digest;

/// How a blob reached the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobAction {
    /// The destination already had it.
    Skipped,
    /// Mounted from another repository on the same registry.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// One step of a sync.
#[derive(Debug, Clone)]
pub enum ProgressEvent {
    /// The source was read: what has to be looked at.
    Planned {
        /// Distinct blobs in the image.
        blobs: usize,
        /// Their total size.
        bytes: u64,
        /// Manifests (children and the top one).
        manifests: usize,
    },
    /// Bytes of a blob were uploaded.
    Bytes(u64),
    /// A blob is in place.
    Blob {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// How it got there.
        action: BlobAction,
    },
    /// A manifest was written.
    Manifest {
        /// The manifest digest.
        digest: Digest,
    },
    /// A transient failure; the operation will be retried.
    Retry {
        /// What is retried.
        what: String,
        /// Why.
        error: String,
        /// Attempt number that failed.
        attempt: u32,
    },
}

/// Receives [`ProgressEvent`]s. Implemented for closures.
pub trait Progress: Send + Sync {
    /// Called for each event, from any task.
    fn event(&self, event: ProgressEvent);
}

impl<F: Fn(ProgressEvent) + Send + Sync> Progress for F {
    fn event(&self, event: ProgressEvent) {
        self(event)
    }
}

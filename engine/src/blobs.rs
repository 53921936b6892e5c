//! Where blobs were last seen: per registry, a repository known to hold each blob.
//!
//! A registry already holding a blob in one repository can link it into another with a
//! cross-repository mount instead of an upload, but the registry API has no "which
//! repository has this blob" query. The engine remembers what it saw (blobs found,
//! uploaded or mounted at a destination, blobs read from a source) and mounts from there.
//! A stale entry only costs one mount request that the registry answers with an upload
//! session. Optionally persisted to a JSON file so that separate runs (one CLI call per
//! image) share what they learned; the file holds registry hosts, repository names and
//! digests, never credentials.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};

use crate::reference::Digest;

/// Entries kept per registry; beyond that the table is cleared (it is only a cache).
const MAX_PER_REGISTRY: usize = 20_000;

#[derive(Default, Serialize, Deserialize)]
struct Table {
    /// `api host` -> digest -> repository.
    #[serde(default)]
    registries: HashMap<String, HashMap<String, String>>,
    /// Changed since it was loaded or last saved (a call that learned nothing new, such
    /// as a no-op re-copy, writes no file: serialising a full table costs milliseconds).
    #[serde(skip)]
    changed: bool,
}

/// The engine's blob-location table.
pub(crate) struct BlobLocations {
    /// Read from `file` on first use: a call that never copies a blob (a no-op re-copy, a
    /// digest) does not read it at all.
    table: OnceLock<Mutex<Table>>,
    file: Option<PathBuf>,
}

impl BlobLocations {
    /// A table kept in `file` when given: read when first used, where a missing or
    /// damaged file starts empty (it is a cache, never a reason to fail).
    pub(crate) fn new(file: Option<PathBuf>) -> BlobLocations {
        BlobLocations {
            table: OnceLock::new(),
            file,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table
            .get_or_init(|| Mutex::new(self.file.as_deref().map(load).unwrap_or_default()))
            .lock()
    }

    /// A repository of `registry` known to hold `digest`, other than `except`.
    pub(crate) fn lookup(&self, registry: &str, digest: &Digest, except: &str) -> Option<String> {
        let table = self.table();
        table
            .registries
            .get(registry)?
            .get(digest.as_str())
            .filter(|r| r.as_str() != except)
            .cloned()
    }

    /// Whether any repository of `registry` is known to hold `digest`.
    pub(crate) fn holds(&self, registry: &str, digest: &Digest) -> bool {
        self.table()
            .registries
            .get(registry)
            .is_some_and(|blobs| blobs.contains_key(digest.as_str()))
    }

    /// Records that `repository` of `registry` holds `digest`.
    pub(crate) fn remember(&self, registry: &str, repository: &str, digest: &Digest) {
        let mut table = self.table();
        let blobs = table.registries.entry(registry.to_string()).or_default();
        if blobs.get(digest.as_str()).is_some_and(|r| r == repository) {
            return;
        }
        if blobs.len() >= MAX_PER_REGISTRY && !blobs.contains_key(digest.as_str()) {
            blobs.clear();
        }
        blobs.insert(digest.to_string(), repository.to_string());
        table.changed = true;
    }

    /// Forgets an entry that turned out wrong (the mount was answered with an upload).
    pub(crate) fn forget(&self, registry: &str, repository: &str, digest: &Digest) {
        let mut table = self.table();
        if let Some(blobs) = table.registries.get_mut(registry) {
            if blobs.get(digest.as_str()).is_some_and(|r| r == repository) {
                blobs.remove(digest.as_str());
                table.changed = true;
            }
        }
    }

    /// Writes the table to its file (if any) when it changed: a temporary file renamed
    /// into place, so a concurrent reader never sees half a file. Failures are logged, not
    /// returned.
    pub(crate) fn save(&self) {
        let Some(path) = &self.file else { return };
        // Never used: nothing learned, nothing to write.
        let Some(table) = self.table.get() else {
            return;
        };
        let json = {
            let mut table = table.lock();
            if !table.changed {
                return;
            }
            match serde_json::to_vec(&*table) {
                Ok(j) => {
                    table.changed = false;
                    j
                }
                Err(e) => {
                    tracing::warn!(error = %e, "blob cache not saved");
                    return;
                }
            }
        };
        if let Err(e) = write_atomically(path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "blob cache not saved");
            // Still to be written: the next save tries again.
            table.lock().changed = true;
        }
    }
}

fn load(path: &Path) -> Table {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "blob cache unreadable; starting empty");
            Table::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "blob cache unreadable; starting empty");
            Table::default()
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn remembers_forgets_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/blobs.json");
        let cache = BlobLocations::new(Some(file.clone()));
        cache.remember("r:5000", "a/app", &digest(1));
        assert_eq!(
            cache.lookup("r:5000", &digest(1), "b/app").as_deref(),
            Some("a/app")
        );
        // Never the repository being written, never another registry.
        assert_eq!(cache.lookup("r:5000", &digest(1), "a/app"), None);
        assert_eq!(cache.lookup("other:5000", &digest(1), "b/app"), None);
        cache.save();
        let again = BlobLocations::new(Some(file.clone()));
        assert_eq!(
            again.lookup("r:5000", &digest(1), "b/app").as_deref(),
            Some("a/app")
        );
        // Forgetting only removes the entry that named that repository.
        again.forget("r:5000", "c/app", &digest(1));
        assert!(again.lookup("r:5000", &digest(1), "b/app").is_some());
        again.forget("r:5000", "a/app", &digest(1));
        assert_eq!(again.lookup("r:5000", &digest(1), "b/app"), None);
    }

    #[test]
    fn a_table_that_learned_nothing_new_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blobs.json");
        let cache = BlobLocations::new(Some(file.clone()));
        cache.save();
        assert!(!file.exists(), "an empty, unchanged table wrote a file");
        cache.remember("r:5000", "a/app", &digest(1));
        cache.save();
        assert!(file.exists());
        // What it already knew (a no-op re-copy, a blob found where it was seen) and
        // forgetting what it does not hold change nothing: no write.
        std::fs::remove_file(&file).unwrap();
        cache.remember("r:5000", "a/app", &digest(1));
        cache.forget("r:5000", "b/app", &digest(1));
        cache.save();
        assert!(!file.exists(), "an unchanged table was written again");
        let loaded = BlobLocations::new(Some(file.clone()));
        loaded.save();
        assert!(!file.exists(), "a table just loaded was written back");
        // A new location, and a forgotten one, are written.
        cache.remember("r:5000", "b/app", &digest(1));
        cache.save();
        assert!(file.exists());
        std::fs::remove_file(&file).unwrap();
        cache.forget("r:5000", "b/app", &digest(1));
        cache.save();
        assert!(file.exists());
        assert_eq!(
            BlobLocations::new(Some(file)).lookup("r:5000", &digest(1), "x"),
            None
        );
    }

    #[test]
    fn a_save_that_failed_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        // The file's folder is a plain file at first: the write fails.
        let blocker = dir.path().join("sub");
        std::fs::write(&blocker, b"").unwrap();
        let file = blocker.join("blobs.json");
        let cache = BlobLocations::new(Some(file.clone()));
        cache.remember("r:5000", "a/app", &digest(1));
        cache.save();
        assert!(!file.exists());
        std::fs::remove_file(&blocker).unwrap();
        cache.save();
        assert!(
            file.exists(),
            "what a failed save held back was never written"
        );
    }

    #[test]
    fn the_file_is_read_when_the_table_is_first_used() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blobs.json");
        let cache = BlobLocations::new(Some(file.clone()));
        // Written by another process after this engine was made, before its first copy.
        let other = BlobLocations::new(Some(file.clone()));
        other.remember("r:5000", "a/app", &digest(1));
        other.save();
        assert_eq!(
            cache.lookup("r:5000", &digest(1), "b/app").as_deref(),
            Some("a/app")
        );
    }

    #[test]
    fn a_damaged_file_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blobs.json");
        std::fs::write(&file, b"{not json").unwrap();
        let cache = BlobLocations::new(Some(file));
        assert_eq!(cache.lookup("r:5000", &digest(1), "x"), None);
        cache.remember("r:5000", "a", &digest(1));
        cache.save();
    }
}

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

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::reference::Digest;

/// Entries kept per registry; beyond that the table is cleared (it is only a cache).
const MAX_PER_REGISTRY: usize = 20_000;

#[derive(Default, Serialize, Deserialize)]
struct Table {
    /// `api host` -> digest -> repository.
    #[serde(default)]
    registries: HashMap<String, HashMap<String, String>>,
}

/// The engine's blob-location table.
pub(crate) struct BlobLocations {
    table: Mutex<Table>,
    file: Option<PathBuf>,
}

impl BlobLocations {
    /// An empty table, loaded from `file` when it exists and is readable; a missing or
    /// damaged file starts empty (it is a cache, never a reason to fail).
    pub(crate) fn new(file: Option<PathBuf>) -> BlobLocations {
        let table = file.as_deref().map(load).unwrap_or_default();
        BlobLocations {
            table: Mutex::new(table),
            file,
        }
    }

    /// A repository of `registry` known to hold `digest`, other than `except`.
    pub(crate) fn lookup(&self, registry: &str, digest: &Digest, except: &str) -> Option<String> {
        let table = self.table.lock();
        table
            .registries
            .get(registry)?
            .get(digest.as_str())
            .filter(|r| r.as_str() != except)
            .cloned()
    }

    /// Records that `repository` of `registry` holds `digest`.
    pub(crate) fn remember(&self, registry: &str, repository: &str, digest: &Digest) {
        let mut table = self.table.lock();
        let blobs = table.registries.entry(registry.to_string()).or_default();
        if blobs.len() >= MAX_PER_REGISTRY && !blobs.contains_key(digest.as_str()) {
            blobs.clear();
        }
        blobs.insert(digest.to_string(), repository.to_string());
    }

    /// Forgets an entry that turned out wrong (the mount was answered with an upload).
    pub(crate) fn forget(&self, registry: &str, repository: &str, digest: &Digest) {
        let mut table = self.table.lock();
        if let Some(blobs) = table.registries.get_mut(registry) {
            if blobs.get(digest.as_str()).is_some_and(|r| r == repository) {
                blobs.remove(digest.as_str());
            }
        }
    }

    /// Writes the table to its file (if any): a temporary file renamed into place, so a
    /// concurrent reader never sees half a file. Failures are logged, not returned.
    pub(crate) fn save(&self) {
        let Some(path) = &self.file else { return };
        let json = match serde_json::to_vec(&*self.table.lock()) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "blob cache not saved");
                return;
            }
        };
        if let Err(e) = write_atomically(path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "blob cache not saved");
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

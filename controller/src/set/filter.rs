//! The set's tag filter: the engine's [`imagesync_engine::tagset`], shared with the
//! Terraform data source `imagesync_tags`, so a filter means the same in both.

use crate::api::ImageSyncSet;

/// The set's filter, compiled; the error names the field (for `InvalidSpec`).
pub fn compile(set: &ImageSyncSet) -> Result<Compiled, String> {
    // TEMPORARY until tags-tf's engine::tagset lands: every tag.
    let _ = set;
    Ok(Compiled)
}

/// A compiled filter.
pub struct Compiled;

impl Compiled {
    /// The tags of `tags` the filter selects.
    pub fn select(&self, tags: &[String]) -> Vec<String> {
        tags.to_vec()
    }
}

//! Which tag a destination names, however it is spelled.

use imagesync_engine::Reference;

/// The canonical name of the tag (or digest) a reference writes: every spelling of one
/// tag gives the same key (`x:1` and `docker.io/library/x:1` are one tag). Two
/// `ImageSync` objects conflict when their destinations have the same key.
pub fn destination_key(reference: &Reference) -> String {
    format!(
        "{}/{}@{}",
        reference.registry(),
        reference.repository(),
        reference.manifest_ref()
    )
}

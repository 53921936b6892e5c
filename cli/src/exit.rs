//! Exit codes (the table at the end of `--help` and in the README) and the mapping of
//! engine errors onto them.

use imagesync_engine::ErrorKind;

/// Any other failure: bad input, network, TLS, integrity.
pub(crate) const FAILURE: u8 = 1;
/// A bad command line (clap's own code for usage errors).
pub(crate) const USAGE: u8 = 2;
/// Not found (404, `MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, `BLOB_UNKNOWN`).
pub(crate) const NOT_FOUND: u8 = 3;
/// Unauthorized or denied (401/403).
pub(crate) const AUTH: u8 = 4;
/// Refused to avoid data loss (`--expect-digest` does not match the tag).
pub(crate) const REFUSED: u8 = 5;
/// `delete` on a registry that does not allow deletes: a warning, nothing changed.
pub(crate) const DELETE_UNSUPPORTED: u8 = 6;

/// A command that ended with a warning (already printed) and a non-zero exit code.
#[derive(Debug)]
pub(crate) struct Warned(pub(crate) u8);

impl std::fmt::Display for Warned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "finished with a warning (exit code {})", self.0)
    }
}

impl std::error::Error for Warned {}

/// The exit code of a failed command: the engine error's kind, if the chain has one.
pub(crate) fn code(err: &anyhow::Error) -> u8 {
    if let Some(Warned(code)) = err.downcast_ref::<Warned>() {
        return *code;
    }
    let Some(e) = err
        .chain()
        .find_map(|c| c.downcast_ref::<imagesync_engine::Error>())
    else {
        return FAILURE;
    };
    match e.kind() {
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::Unauthorized | ErrorKind::Denied => AUTH,
        ErrorKind::Conflict => REFUSED,
        _ => FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_keep_their_code_and_other_errors_are_failures() {
        assert_eq!(code(&Warned(DELETE_UNSUPPORTED).into()), DELETE_UNSUPPORTED);
        assert_eq!(code(&anyhow::anyhow!("no engine error")), FAILURE);
    }
}

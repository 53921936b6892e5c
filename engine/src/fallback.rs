//! The referrers tag schema (OCI 1.1 distribution spec, for registries without the
//! referrers API): the `sha256-<hex>` tag of a subject points at an image index whose
//! entries are the subject's referrers.
//!
//! The index is shared: other tools add entries too. It is only ever edited, never
//! replaced: read, merge (or remove only our own entries), write, and read again.
//! Registries offer no compare-and-swap, so a race between two writers is closed by
//! timing instead. Every writer sends its write within [`WINDOW`] of its read (or reads
//! again), and re-reads [`RECHECK`] (longer than `WINDOW`) after its write. A writer B
//! that read before A's write has written by the time A looks again; if B dropped A's
//! entries, A sees that and adds them back (reading B's entries first). Edits are
//! idempotent, so a writer stops once a fresh read already holds what it wants.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::{MAX_INDEX_ENTRIES, OCI_INDEX};
use crate::reference::{Digest, Reference};

/// A write goes out within this long of the read it is based on, or is re-read.
const WINDOW: Duration = Duration::from_secs(2);
/// How long after its write a writer reads the index again.
const RECHECK: Duration = Duration::from_millis(2500);
/// Read-modify-write rounds before giving up (each one follows a lost race).
const ROUNDS: usize = 6;

/// The fallback tag of `subject`: `sha256-<hex>`.
pub(crate) fn tag_of(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// A fallback index as read: its digest, the document (every field kept) and entries.
pub(crate) struct Index {
    pub(crate) digest: Digest,
    doc: Map<String, Value>,
    pub(crate) entries: Vec<Value>,
}

/// The digest an index entry names, if any.
pub(crate) fn entry_digest(entry: &Value) -> Option<&str> {
    entry.get("digest").and_then(Value::as_str)
}

/// The fallback index of `subject` in `base`'s repository; `None` when there is no tag.
/// A tag that holds something other than an image index is refused, not overwritten.
pub(crate) async fn read(
    client: &Client,
    base: &Reference,
    subject: &Digest,
) -> Result<Option<Index>> {
    let r = base.with_tag(&tag_of(subject))?;
    let data = match client.get_manifest(&r).await {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    parse(&r.to_string(), &data.bytes).map(|(doc, entries)| {
        Some(Index {
            digest: data.digest,
            doc,
            entries,
        })
    })
}

fn parse(what: &str, bytes: &[u8]) -> Result<(Map<String, Value>, Vec<Value>)> {
    let refuse = |why: &str| Error::UnsupportedManifest {
        reference: what.to_string(),
        media_type: OCI_INDEX.to_string(),
        reason: format!("the referrers fallback tag {why}; left alone"),
    };
    let doc: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|_| refuse("is not JSON"))?;
    match doc.get("mediaType").and_then(Value::as_str) {
        Some(OCI_INDEX) | None => {}
        Some(_) => return Err(refuse("points at something other than an image index")),
    }
    let entries = match doc.get("manifests") {
        Some(Value::Array(a)) => a.clone(),
        None => Vec::new(),
        Some(_) => return Err(refuse("has a `manifests` field that is not a list")),
    };
    if entries.len() > MAX_INDEX_ENTRIES {
        return Err(Error::Limit {
            operation: "GET manifest",
            reference: what.to_string(),
            what: "entries of a referrers fallback index".into(),
            limit: MAX_INDEX_ENTRIES as u64,
        });
    }
    if entries.iter().any(|e| entry_digest(e).is_none()) {
        return Err(refuse("has an entry without a digest"));
    }
    Ok((doc, entries))
}

/// Adds the entries of `ours` the index lacks (by digest); returns whether it changed.
pub(crate) fn add_entries(entries: &mut Vec<Value>, ours: &[Value]) -> bool {
    let mut changed = false;
    for e in ours {
        let d = entry_digest(e);
        if !entries.iter().any(|x| entry_digest(x) == d) {
            entries.push(e.clone());
            changed = true;
        }
    }
    changed
}

/// Removes the entries naming one of `owned`; returns whether it changed.
pub(crate) fn remove_entries(entries: &mut Vec<Value>, owned: &[Digest]) -> bool {
    let before = entries.len();
    entries.retain(|e| !owned.iter().any(|d| entry_digest(e) == Some(d.as_str())));
    entries.len() != before
}

/// Applies `edit` to `subject`'s fallback index until a fresh read needs no change
/// (see the module docs). An index left empty is deleted. Returns whether it wrote.
pub(crate) async fn update(
    client: &Client,
    base: &Reference,
    subject: &Digest,
    edit: &(dyn Fn(&mut Vec<Value>) -> bool + Send + Sync),
) -> Result<bool> {
    let tag = base.with_tag(&tag_of(subject))?;
    let mut wrote = false;
    for _ in 0..ROUNDS {
        let read_at = Instant::now();
        let current = read(client, base, subject).await?;
        let (old, mut doc, mut entries) = match current {
            Some(i) => (Some(i.digest), i.doc, i.entries),
            None => (None, new_index(), Vec::new()),
        };
        if !edit(&mut entries) {
            return Ok(wrote);
        }
        if read_at.elapsed() > WINDOW {
            tracing::debug!(%tag, "fallback index read too long ago; reading again");
            continue;
        }
        write(client, base, &tag, old, &mut doc, entries).await?;
        if read_at.elapsed() > WINDOW {
            tracing::warn!(%tag, "fallback index write took longer than the race window");
        }
        wrote = true;
        tokio::time::sleep(RECHECK).await;
    }
    Err(Error::Registry {
        kind: ErrorKind::Conflict,
        operation: "PUT manifest",
        reference: tag.to_string(),
        status: 0,
        code: None,
        message: format!(
            "the referrers fallback index kept changing under us ({ROUNDS} rounds); try again"
        ),
        retry_after: None,
    })
}

async fn write(
    client: &Client,
    base: &Reference,
    tag: &Reference,
    old: Option<Digest>,
    doc: &mut Map<String, Value>,
    entries: Vec<Value>,
) -> Result<()> {
    if entries.is_empty() {
        if let Some(old) = old {
            match client.delete_manifest(&base.with_digest(old)).await {
                Ok(_) => return Ok(()),
                // Deletes disabled: an empty index says the same.
                Err(e) if e.kind() == ErrorKind::Unsupported => {}
                Err(e) => return Err(e),
            }
        }
    }
    doc.insert("manifests".into(), Value::Array(entries));
    let bytes = serde_json::to_vec(&doc).map_err(|e| Error::Config(e.to_string()))?;
    client
        .put_manifest(tag, OCI_INDEX, Bytes::from(bytes))
        .await?;
    Ok(())
}

fn new_index() -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert("schemaVersion".into(), Value::from(2));
    doc.insert("mediaType".into(), Value::from(OCI_INDEX));
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seed: &[u8]) -> Value {
        serde_json::json!({"mediaType": crate::manifest::OCI_MANIFEST, "digest": Digest::of(seed).as_str(), "size": 3, "artifactType": "x/y"})
    }

    #[test]
    fn merging_keeps_entries_of_others_and_adds_ours_once() {
        let theirs = entry(b"theirs");
        let mut entries = vec![theirs.clone()];
        assert!(add_entries(&mut entries, &[entry(b"ours")]));
        assert!(!add_entries(&mut entries, &[entry(b"ours")]));
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], theirs);
        assert!(remove_entries(&mut entries, &[Digest::of(b"ours")]));
        assert_eq!(entries, vec![theirs]);
        assert!(!remove_entries(&mut entries, &[Digest::of(b"ours")]));
    }

    /// Hostile: a fallback tag that points at an image (or garbage) is not taken for an
    /// empty index and overwritten.
    #[test]
    fn a_fallback_tag_holding_something_else_is_refused() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}"#;
        assert!(parse("r", image).is_err());
        assert!(parse("r", b"<html>").is_err());
        assert!(parse("r", br#"{"manifests":{"a":1}}"#).is_err());
        assert!(parse("r", br#"{"manifests":[{"size":1}]}"#).is_err());
        let extra = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","annotations":{{"k":"v"}},"manifests":[{}]}}"#,
            entry(b"a")
        );
        let (doc, entries) = parse("r", extra.as_bytes()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(doc["annotations"]["k"], "v");
    }

    #[test]
    fn the_fallback_tag_is_the_subject_digest_with_a_dash() {
        let d = Digest::of(b"x");
        assert_eq!(tag_of(&d), format!("sha256-{}", d.hex()));
        // A valid tag (at most 128 characters).
        assert!(tag_of(&d).len() <= 128);
    }
}

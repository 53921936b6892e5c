//! Ownership of destination tags and conflicts between objects (pure, unit-tested).
//!
//! - An object owns (`Written`) a tag only when its own copy wrote it; a tag that already
//!   held the digest is `Adopted` and never deleted by the object.
//! - Of several objects naming one destination tag (compared canonically), the earliest
//!   (`creationTimestamp`, then namespace, then name) holds it; the others get
//!   `DestinationConflict` and write and delete nothing until it is gone. A holder that is
//!   deleted while another object waits for its tag leaves the tag to that object, which
//!   then owns it (see [`inherits`]).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;

use imagesync_engine::Reference;
use kube::ResourceExt;

use crate::api::{
    ConflictRecord, ImageSync, ImageSyncStatus, Ownership, WriteIntent, MAX_UPLOADED_BLOBS,
};

pub use imagesync_api::destination_key;

/// The last repository path component of a reference as written (`app` for
/// `host:5000/team/app:1`): equal for every spelling of one tag, so it filters the
/// objects worth parsing.
pub(super) fn repo_tail(raw: &str) -> &str {
    let last = raw.rsplit('/').next().unwrap_or(raw);
    last.split(['@', ':']).next().unwrap_or(last)
}

/// The canonical destination key of `obj`, if its destination parses.
fn key_of(obj: &ImageSync) -> Option<String> {
    Reference::parse(&obj.spec.destination)
        .ok()
        .map(|r| destination_key(&r))
}

/// Whether `a` holds a destination before `b`: earlier `creationTimestamp` (seconds, as
/// the API stores it), then namespace, then name. Deterministic for every replica.
pub fn order(a: &ImageSync, b: &ImageSync) -> Ordering {
    let created = |o: &ImageSync| o.metadata.creation_timestamp.as_ref().map(|t| t.0);
    created(a)
        .cmp(&created(b))
        .then_with(|| a.namespace().cmp(&b.namespace()))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// The other objects in `all` naming the same destination tag as `obj` (which names
/// `destination`), earliest first.
pub fn competitors<'a, T: Borrow<ImageSync>>(
    obj: &ImageSync,
    destination: &Reference,
    all: &'a [T],
) -> Vec<&'a ImageSync> {
    let key = destination_key(destination);
    let tail = repo_tail(&obj.spec.destination);
    let mut found: Vec<&ImageSync> = all
        .iter()
        .map(Borrow::borrow)
        .filter(|o| !same_object(o, obj))
        .filter(|o| repo_tail(&o.spec.destination) == tail)
        .filter(|o| key_of(o).as_deref() == Some(key.as_str()))
        .collect();
    found.sort_by(|a, b| order(a, b));
    found
}

fn same_object(a: &ImageSync, b: &ImageSync) -> bool {
    match (&a.metadata.uid, &b.metadata.uid) {
        (Some(x), Some(y)) => x == y,
        _ => a.namespace() == b.namespace() && a.name_any() == b.name_any(),
    }
}

/// `namespace/name` of an object.
pub fn display(obj: &ImageSync) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// What a waiting object records about the holder of its destination (`key`): the
/// digest the holder wrote there, if it did, so the tag can be handed over.
pub fn record_of(holder: &ImageSync, key: &str) -> ConflictRecord {
    let status = holder.status.as_ref();
    let written = status.filter(|s| {
        s.ownership == Some(Ownership::Written)
            && s.synced_destination
                .as_deref()
                .and_then(|d| Reference::parse(d).ok())
                .is_some_and(|r| destination_key(&r) == key)
    });
    ConflictRecord {
        namespace: holder.namespace().unwrap_or_default(),
        name: holder.name_any(),
        uid: holder.metadata.uid.clone(),
        written_digest: written.and_then(|s| s.destination_digest.clone()),
        uploaded_blobs: written.and_then(|s| s.uploaded_blobs.clone()),
    }
}

/// Whether `status` records this object as the writer of `digest` at `destination`
/// (`key` is its canonical form), or a copy of it that was started here.
fn wrote(status: &ImageSyncStatus, key: &str, digest: &str) -> bool {
    let same = |d: &str| Reference::parse(d).is_ok_and(|r| destination_key(&r) == key);
    let recorded = status.ownership == Some(Ownership::Written)
        && status.destination_digest.as_deref() == Some(digest)
        && status.synced_destination.as_deref().is_some_and(same);
    let intended = status
        .write_intent
        .as_ref()
        .is_some_and(|w| w.digest == digest && same(&w.destination));
    recorded || intended
}

/// Whether the tag handed over by the previous holder (`inherited`) is the one found.
pub fn inherits(inherited: Option<&ConflictRecord>, digest: &str) -> bool {
    inherited.is_some_and(|c| c.written_digest.as_deref() == Some(digest))
}

/// The ownership of a destination (`key`) found holding `digest` without a copy: ours
/// only if we wrote it (status, a started copy, or a handover), else adopted.
pub fn ownership_when_found(
    status: &ImageSyncStatus,
    key: &str,
    digest: &str,
    inherited: Option<&ConflictRecord>,
) -> Ownership {
    if wrote(status, key, digest) || inherits(inherited, digest) {
        Ownership::Written
    } else {
        Ownership::Adopted
    }
}

/// `previous` plus `uploaded`, without duplicates, at most [`MAX_UPLOADED_BLOBS`] (blobs
/// beyond are not recorded, so never deleted).
pub fn merge_uploaded(previous: Option<&[String]>, uploaded: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    previous
        .unwrap_or_default()
        .iter()
        .chain(uploaded)
        .filter(|d| seen.insert(d.as_str()))
        .take(MAX_UPLOADED_BLOBS)
        .cloned()
        .collect()
}

/// The intent recorded before a copy of `digest` to `destination` starts.
pub fn intent(destination: &str, digest: &str) -> WriteIntent {
    WriteIntent {
        destination: destination.to_string(),
        digest: digest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageSyncSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn object(ns: &str, name: &str, dst: &str, created: i64) -> ImageSync {
        let mut o = ImageSync::new(
            name,
            ImageSyncSpec {
                source: "127.0.0.1:5000/src:1".into(),
                destination: dst.into(),
                resync_interval: None,
                deletion_policy: Default::default(),
                delete_layers: true,
                source_secret_ref: None,
                destination_secret_ref: None,
                suspend: false,
                referrers: true,
                referrer_types: Vec::new(),
                platforms: Vec::new(),
            },
        );
        o.metadata.namespace = Some(ns.into());
        o.metadata.uid = Some(format!("{ns}-{name}"));
        o.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        o
    }

    #[test]
    fn spellings_of_one_tag_conflict_and_other_tags_do_not() {
        let me = object("b", "me", "docker.io/library/busybox:1", 20);
        let all = vec![
            object("a", "short", "busybox:1", 10),
            object("a", "hub", "index.docker.io/library/busybox:1", 30),
            object("a", "other-tag", "busybox:2", 5),
            object("a", "other-repo", "docker.io/team/busybox:1", 5),
            object("a", "latest", "busybox", 5),
            me.clone(),
        ];
        let dst = Reference::parse(&me.spec.destination).unwrap();
        let names: Vec<String> = competitors(&me, &dst, &all)
            .into_iter()
            .map(display)
            .collect();
        assert_eq!(names, ["a/short", "a/hub"]);
        assert_eq!(repo_tail("127.0.0.1:5000/team/app@sha256:ab"), "app");
        assert_eq!(repo_tail("busybox:1"), "busybox");
    }

    #[test]
    fn earlier_creation_then_namespace_then_name_holds() {
        let a = object("z", "a", "r.example/x:1", 10);
        let b = object("a", "b", "r.example/x:1", 11);
        assert_eq!(order(&a, &b), Ordering::Less);
        let c = object("a", "c", "r.example/x:1", 10);
        assert_eq!(
            order(&c, &a),
            Ordering::Less,
            "same second: namespace decides"
        );
        let d = object("a", "b", "r.example/x:1", 10);
        assert_eq!(order(&d, &c), Ordering::Less, "then the name");
    }

    #[test]
    fn found_tags_are_adopted_unless_we_wrote_them() {
        let key = "r.example/x@1";
        let none = ImageSyncStatus::default();
        assert_eq!(
            ownership_when_found(&none, key, "sha256:a", None),
            Ownership::Adopted
        );
        // Status from before ownership was recorded: adopted.
        let legacy = ImageSyncStatus {
            destination_digest: Some("sha256:a".into()),
            synced_destination: Some("r.example/x:1".into()),
            ..ImageSyncStatus::default()
        };
        assert_eq!(
            ownership_when_found(&legacy, key, "sha256:a", None),
            Ownership::Adopted
        );
        let written = ImageSyncStatus {
            ownership: Some(Ownership::Written),
            ..legacy.clone()
        };
        assert_eq!(
            ownership_when_found(&written, key, "sha256:a", None),
            Ownership::Written
        );
        // Written another digest: the one found now is someone else's.
        assert_eq!(
            ownership_when_found(&written, key, "sha256:b", None),
            Ownership::Adopted
        );
        let started = ImageSyncStatus {
            write_intent: Some(intent("r.example/x:1", "sha256:b")),
            ..ImageSyncStatus::default()
        };
        assert_eq!(
            ownership_when_found(&started, key, "sha256:b", None),
            Ownership::Written
        );
        let handed = ConflictRecord {
            namespace: "a".into(),
            name: "old".into(),
            uid: None,
            written_digest: Some("sha256:c".into()),
            uploaded_blobs: None,
        };
        assert_eq!(
            ownership_when_found(&none, key, "sha256:c", Some(&handed)),
            Ownership::Written
        );
        assert_eq!(
            ownership_when_found(&none, key, "sha256:d", Some(&handed)),
            Ownership::Adopted
        );
    }

    #[test]
    fn holder_records_name_the_written_digest_only() {
        let mut holder = object("a", "old", "r.example/x:1", 1);
        let key = destination_key(&Reference::parse("r.example/x:1").unwrap());
        holder.status = Some(ImageSyncStatus {
            ownership: Some(Ownership::Adopted),
            destination_digest: Some("sha256:a".into()),
            synced_destination: Some("r.example/x:1".into()),
            ..ImageSyncStatus::default()
        });
        assert_eq!(record_of(&holder, &key).written_digest, None);
        if let Some(s) = holder.status.as_mut() {
            s.ownership = Some(Ownership::Written);
            s.uploaded_blobs = Some(vec!["sha256:l".into()]);
        }
        let r = record_of(&holder, &key);
        assert_eq!(r.written_digest.as_deref(), Some("sha256:a"));
        assert_eq!(r.uploaded_blobs, Some(vec!["sha256:l".to_string()]));
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("a", "old"));
    }

    #[test]
    fn uploaded_blob_records_are_deduplicated_and_capped() {
        let prev = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            merge_uploaded(Some(&prev), &["b".into(), "c".into()]),
            ["a", "b", "c"]
        );
        let many: Vec<String> = (0..1000).map(|i| format!("sha256:{i}")).collect();
        let merged = merge_uploaded(None, &many);
        assert_eq!(merged.len(), MAX_UPLOADED_BLOBS);
        assert_eq!(merged[0], "sha256:0");
    }
}

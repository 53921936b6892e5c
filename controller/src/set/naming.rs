//! What a set's child for a tag is: its name (deterministic, a valid DNS-1123 label),
//! its labels, owner reference and spec.

use std::collections::BTreeMap;

use imagesync_engine::Digest;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::set::{SET_NAME_LABEL, SET_UID_LABEL, TAG_ANNOTATION};
use crate::api::{ImageSync, ImageSyncSet, ImageSyncSpec};

/// The longest child name: a DNS-1123 label (63), so the name also fits label values.
pub const MAX_NAME: usize = 63;
/// Hex digits of the hash that ends every child name.
const HASH_LEN: usize = 10;

/// The child's name for `tag`: `<set>-<tag, sanitised>-<hash>`, at most 63 characters
/// of `[a-z0-9-]`, starting and ending with an alphanumeric. The hash (SHA-256 of the
/// set's name and the exact tag) keeps tags that sanitise alike apart (`V1` and `v1`,
/// `1_0` and `1.0`); the readable parts are shortened to fit.
pub fn child_name(set: &str, tag: &str) -> String {
    let hash = Digest::of(format!("{set}\n{tag}").as_bytes());
    let hash = &hash.hex()[..HASH_LEN];
    let room = MAX_NAME - HASH_LEN - 1;
    let set_part = sanitise(set);
    let tag_part = sanitise(tag);
    // The tag is what tells children apart: give it at least half of the room.
    let set_room = room.saturating_sub(tag_part.len().min(room / 2) + 1);
    let set_part = trim(&set_part, set_room);
    let tag_room = room.saturating_sub(set_part.len() + usize::from(!set_part.is_empty()));
    let tag_part = trim(&tag_part, tag_room);
    [set_part, tag_part, hash]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Lower case, every run of other characters one `-`, no `-` at either end.
fn sanitise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// At most `max` bytes (ASCII), no `-` at the end.
fn trim(s: &str, max: usize) -> &str {
    s.get(..max.min(s.len()))
        .unwrap_or("")
        .trim_end_matches('-')
}

/// The labels of `set`'s children.
pub fn child_labels(set: &ImageSyncSet) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(SET_UID_LABEL.to_string(), set.uid().unwrap_or_default());
    let name = set.name_any();
    if name.len() <= MAX_NAME {
        labels.insert(SET_NAME_LABEL.to_string(), name);
    }
    labels
}

/// The owner reference that makes `set` the child's controller (`controller: true`,
/// `blockOwnerDeletion: true`), as a ReplicaSet owns its Pods.
pub fn owner_reference(set: &ImageSyncSet) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..set.controller_owner_ref(&())?
    })
}

/// True when `child` is controlled by the set with `uid` (its `ownerReferences`, not its
/// labels: anyone who may create an `ImageSync` can copy a label).
pub fn is_owned_by(child: &ImageSync, uid: &str) -> bool {
    child.metadata.owner_references.iter().flatten().any(|o| {
        o.uid == uid
            && o.controller == Some(true)
            && o.kind == ImageSyncSet::kind(&())
            && o.api_version == ImageSyncSet::api_version(&())
    })
}

/// The spec of `set`'s child for `tag`: `<source>:<tag>` to `<destination>:<tag>`,
/// the set's deletion policy and the template's options.
pub fn child_spec(set: &ImageSyncSet, tag: &str) -> ImageSyncSpec {
    let s = &set.spec;
    let t = &s.template;
    ImageSyncSpec {
        source: format!("{}:{tag}", s.source),
        destination: format!("{}:{tag}", s.destination),
        resync_interval: t.resync_interval.clone(),
        deletion_policy: s.deletion_policy,
        delete_layers: t.delete_layers,
        source_secret_ref: t.source_secret_ref.clone(),
        destination_secret_ref: t.destination_secret_ref.clone(),
        suspend: t.suspend,
        referrers: t.referrers,
        referrer_types: t.referrer_types.clone(),
        platforms: t.platforms.clone(),
    }
}

/// The child object for `tag` (to create), or `None` when the set has no uid yet.
pub fn child(set: &ImageSyncSet, tag: &str) -> Option<ImageSync> {
    let owner = owner_reference(set)?;
    let mut annotations = BTreeMap::new();
    annotations.insert(TAG_ANNOTATION.to_string(), tag.to_string());
    let mut obj = ImageSync::new(&child_name(&set.name_any(), tag), child_spec(set, tag));
    obj.metadata = ObjectMeta {
        name: obj.metadata.name,
        namespace: set.namespace(),
        labels: Some(child_labels(set)),
        annotations: Some(annotations),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_label(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    }

    #[test]
    fn child_names_are_dns_labels_for_hostile_tags() {
        let long_tag = format!("_{}", "A.b_".repeat(32)); // 129 chars: beyond a tag, still handled
        let long_set = "s".repeat(253);
        for (set, tag) in [
            ("web", "1.25.3"),
            ("web", "V1_0.Beta"),
            ("web", "___"),
            ("web", "_"),
            ("web", "latest"),
            ("web", long_tag.as_str()),
            (long_set.as_str(), "1.0"),
            (long_set.as_str(), long_tag.as_str()),
            ("a.b.c", "x"),
        ] {
            let name = child_name(set, tag);
            assert!(valid_label(&name), "{set:?} {tag:?} -> {name:?}");
        }
        assert!(child_name("web", "1.25.3").starts_with("web-1-25-3-"));
        assert!(child_name(&long_set, "1.25.3").contains("-1-25-3-"));
    }

    #[test]
    fn tags_that_sanitise_alike_get_different_names() {
        let names: std::collections::HashSet<String> = ["v1", "V1", "v_1", "v.1", "v-1", "v1_"]
            .iter()
            .map(|t| child_name("web", t))
            .collect();
        assert_eq!(names.len(), 6, "{names:?}");
        // Deterministic: the same set and tag always give the same name.
        assert_eq!(child_name("web", "V1"), child_name("web", "V1"));
        assert_ne!(child_name("web", "1"), child_name("web2", "1"));
    }

    fn set() -> ImageSyncSet {
        let mut set = ImageSyncSet::new(
            "web",
            serde_json::from_value(serde_json::json!({
                "source": "127.0.0.1:5000/src/web",
                "destination": "127.0.0.1:5001/mirror/web",
                "template": {"resyncInterval": "1m", "platforms": ["linux/amd64"]},
            }))
            .unwrap(),
        );
        set.metadata.namespace = Some("team-a".into());
        set.metadata.uid = Some("uid-1".into());
        set
    }

    #[test]
    fn a_child_is_owned_through_its_owner_reference_not_its_labels() {
        let set = set();
        let child = child(&set, "1.0").unwrap();
        assert!(is_owned_by(&child, "uid-1"));
        assert!(!is_owned_by(&child, "uid-2"));
        assert_eq!(child.labels().get(SET_UID_LABEL).unwrap(), "uid-1");
        assert_eq!(child.annotations().get(TAG_ANNOTATION).unwrap(), "1.0");
        let owner = &child.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.block_owner_deletion, Some(true));
        // A forged child: the labels are copied, the owner reference is not the set's.
        let mut forged = child.clone();
        forged.metadata.owner_references = None;
        assert!(!is_owned_by(&forged, "uid-1"));
        let mut not_controller = child;
        not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        assert!(!is_owned_by(&not_controller, "uid-1"));
    }

    #[test]
    fn child_spec_follows_the_template_and_the_set_policy() {
        let set = set();
        let spec = child_spec(&set, "1.0");
        assert_eq!(spec.source, "127.0.0.1:5000/src/web:1.0");
        assert_eq!(spec.destination, "127.0.0.1:5001/mirror/web:1.0");
        assert_eq!(spec.deletion_policy, crate::api::DeletionPolicy::Orphan);
        assert_eq!(spec.resync_interval.as_deref(), Some("1m"));
        assert_eq!(spec.platforms, vec!["linux/amd64".to_string()]);
        assert!(spec.referrers && spec.delete_layers && !spec.suspend);
    }
}

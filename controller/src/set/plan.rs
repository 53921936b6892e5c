//! The pure decision of a set's check: which children to create, update and retire,
//! given the matching tags and the children the set owns.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::set::MAX_CHILDREN;
use crate::api::{ImageSync, ImageSyncSet};

use super::naming::{child_name, child_spec, is_owned_by};

/// What a check does to the children.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Tags that have no child yet.
    pub create: Vec<String>,
    /// Owned children whose spec differs from the template: (name, tag).
    pub update: Vec<(String, String)>,
    /// Owned children whose tag no longer matches (names).
    pub retire: Vec<String>,
    /// Owned children being deleted whose tag matches again: recreated once gone.
    pub waiting: Vec<String>,
}

/// Why a set's children are left as they are.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold {
    /// More tags match than [`MAX_CHILDREN`].
    TooMany(usize),
}

/// The plan for `set` with the tags its filter `matched` and the `children` found in its
/// namespace (only those it owns, by uid, are considered: a forged child is never
/// updated or deleted). Matching more than [`MAX_CHILDREN`] tags changes nothing.
pub fn plan(set: &ImageSyncSet, matched: &[String], children: &[ImageSync]) -> Result<Plan, Hold> {
    if matched.len() > MAX_CHILDREN {
        return Err(Hold::TooMany(matched.len()));
    }
    let uid = set.uid().unwrap_or_default();
    let set_name = set.name_any();
    let wanted: BTreeMap<String, &String> = matched
        .iter()
        .map(|t| (child_name(&set_name, t), t))
        .collect();
    let owned: BTreeMap<String, &ImageSync> = children
        .iter()
        .filter(|c| !uid.is_empty() && is_owned_by(c, &uid))
        .map(|c| (c.name_any(), c))
        .collect();
    let mut out = Plan::default();
    for (name, tag) in &wanted {
        match owned.get(name) {
            None => out.create.push((*tag).clone()),
            Some(c) if c.metadata.deletion_timestamp.is_some() => out.waiting.push(name.clone()),
            Some(c) if c.spec != child_spec(set, tag) => {
                out.update.push((name.clone(), (*tag).clone()))
            }
            Some(_) => {}
        }
    }
    for (name, c) in &owned {
        if !wanted.contains_key(name) && c.metadata.deletion_timestamp.is_none() {
            out.retire.push(name.clone());
        }
    }
    Ok(out)
}

/// How many children `set` owns (not being deleted), how many of them are `Ready`, and
/// how many have failed (`Ready=False` with a reason other than `Syncing`).
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct Counts {
    /// Owned children.
    pub children: usize,
    /// Ready ones.
    pub ready: usize,
    /// Failed ones.
    pub failed: usize,
}

/// The counts of the children of `set` (by uid) among `children`.
pub fn counts(set: &ImageSyncSet, children: &[ImageSync]) -> Counts {
    let uid = set.uid().unwrap_or_default();
    let mut out = Counts::default();
    for c in children.iter().filter(|c| {
        !uid.is_empty() && is_owned_by(c, &uid) && c.metadata.deletion_timestamp.is_none()
    }) {
        out.children += 1;
        match c.ready_condition() {
            Some(r) if r.status == "True" => out.ready += 1,
            Some(r) if r.status == "False" && r.reason != crate::api::reasons::SYNCING => {
                out.failed += 1
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::set::SET_UID_LABEL;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn set(uid: &str) -> ImageSyncSet {
        let mut set = ImageSyncSet::new(
            "web",
            serde_json::from_value(serde_json::json!({
                "source": "127.0.0.1:5000/src/web",
                "destination": "127.0.0.1:5001/mirror/web",
            }))
            .unwrap(),
        );
        set.metadata.namespace = Some("ns".into());
        set.metadata.uid = Some(uid.into());
        set
    }

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn ready(mut c: ImageSync, status: &str, reason: &str) -> ImageSync {
        let mut st = crate::api::ImageSyncStatus::default();
        st.conditions.push(Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        });
        c.status = Some(st);
        c
    }

    #[test]
    fn new_tags_are_created_and_tags_that_stop_matching_are_retired() {
        let s = set("u1");
        let have = vec![
            super::super::naming::child(&s, "1.0").unwrap(),
            super::super::naming::child(&s, "0.9").unwrap(),
        ];
        let p = plan(&s, &tags(&["1.0", "1.1"]), &have).unwrap();
        assert_eq!(p.create, tags(&["1.1"]));
        assert_eq!(p.retire, vec![child_name("web", "0.9")]);
        assert!(p.update.is_empty() && p.waiting.is_empty());
    }

    #[test]
    fn a_forged_child_is_never_updated_or_retired() {
        let s = set("u1");
        // Same name, same labels, but owned by another uid (or by nothing).
        let mut forged = super::super::naming::child(&s, "0.9").unwrap();
        forged.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        assert_eq!(forged.labels().get(SET_UID_LABEL).unwrap(), "u1");
        let mut unowned = super::super::naming::child(&s, "1.0").unwrap();
        unowned.metadata.owner_references = None;
        unowned.spec.destination = "elsewhere/x:1.0".into();
        let p = plan(&s, &tags(&["1.0"]), &[forged, unowned]).unwrap();
        assert!(p.retire.is_empty(), "{p:?}");
        assert!(p.update.is_empty(), "{p:?}");
        // The tag's child does not exist as far as the set knows: it tries to create it
        // (and the API's AlreadyExists makes that a NameConflict).
        assert_eq!(p.create, tags(&["1.0"]));
    }

    #[test]
    fn an_edited_child_is_put_back_and_a_deleting_one_is_waited_for() {
        let s = set("u1");
        let mut edited = super::super::naming::child(&s, "1.0").unwrap();
        edited.spec.deletion_policy = crate::api::DeletionPolicy::Delete;
        let mut deleting = super::super::naming::child(&s, "1.1").unwrap();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let p = plan(&s, &tags(&["1.0", "1.1"]), &[edited, deleting]).unwrap();
        assert_eq!(
            p.update,
            vec![(child_name("web", "1.0"), "1.0".to_string())]
        );
        assert_eq!(p.waiting, vec![child_name("web", "1.1")]);
        assert!(p.create.is_empty() && p.retire.is_empty());
    }

    #[test]
    fn too_many_tags_change_nothing() {
        let s = set("u1");
        let many: Vec<String> = (0..=MAX_CHILDREN).map(|i| format!("t{i}")).collect();
        assert_eq!(plan(&s, &many, &[]), Err(Hold::TooMany(MAX_CHILDREN + 1)));
        assert!(plan(&s, &many[..MAX_CHILDREN], &[]).is_ok());
    }

    #[test]
    fn counts_only_owned_children() {
        let s = set("u1");
        let a = ready(
            super::super::naming::child(&s, "1").unwrap(),
            "True",
            "Synced",
        );
        let b = ready(
            super::super::naming::child(&s, "2").unwrap(),
            "False",
            "SourceNotFound",
        );
        let c = ready(
            super::super::naming::child(&s, "3").unwrap(),
            "False",
            "Syncing",
        );
        let mut forged = ready(super::super::naming::child(&s, "4").unwrap(), "False", "X");
        forged.metadata.owner_references = None;
        assert_eq!(
            counts(&s, &[a, b, c, forged]),
            Counts {
                children: 3,
                ready: 1,
                failed: 1
            }
        );
    }
}

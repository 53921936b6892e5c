//! The watched objects indexed by the last path component of their destination, kept
//! in step with the controller's reflector store: finding the objects that compete for
//! a destination looks at a handful of candidates instead of every object (which made a
//! re-check cycle quadratic in the number of objects).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

use crate::api::ImageSync;

use super::ownership::repo_tail;

/// The index (see the module docs); fed every watch event the store sees.
#[derive(Default)]
pub(super) struct Destinations {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    live: Index,
    /// Being rebuilt by a (re)list: replaces `live` when the list is complete, as the
    /// store does.
    listing: Option<Index>,
}

#[derive(Default)]
struct Index {
    by_tail: HashMap<String, HashSet<ObjectRef<ImageSync>>>,
    tail_of: HashMap<ObjectRef<ImageSync>, String>,
}

impl Index {
    fn insert(&mut self, obj: &ImageSync) {
        let key = ObjectRef::from_obj(obj);
        let tail = repo_tail(&obj.spec.destination).to_string();
        self.remove_ref(&key);
        self.by_tail
            .entry(tail.clone())
            .or_default()
            .insert(key.clone());
        self.tail_of.insert(key, tail);
    }

    fn remove_ref(&mut self, key: &ObjectRef<ImageSync>) {
        if let Some(old) = self.tail_of.remove(key) {
            if let Some(set) = self.by_tail.get_mut(&old) {
                set.remove(key);
                if set.is_empty() {
                    self.by_tail.remove(&old);
                }
            }
        }
    }
}

impl Destinations {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Applies a watch event (the same events, in the same order, as the store).
    pub(super) fn observe(&self, event: &Event<ImageSync>) {
        let mut state = self.state();
        match event {
            Event::Apply(obj) => state.live.insert(obj),
            Event::Delete(obj) => state.live.remove_ref(&ObjectRef::from_obj(obj)),
            Event::Init => state.listing = Some(Index::default()),
            Event::InitApply(obj) => state.listing.get_or_insert_with(Index::default).insert(obj),
            Event::InitDone => {
                if let Some(listed) = state.listing.take() {
                    state.live = listed;
                }
            }
        }
    }

    /// The objects whose destination ends in the path component `tail`.
    pub(super) fn named(&self, tail: &str) -> Vec<ObjectRef<ImageSync>> {
        self.state()
            .live
            .by_tail
            .get(tail)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeletionPolicy, ImageSyncSpec};

    fn obj(name: &str, destination: &str) -> ImageSync {
        let mut o = ImageSync::new(
            name,
            ImageSyncSpec {
                source: "r.example/src:1".into(),
                destination: destination.into(),
                resync_interval: None,
                deletion_policy: DeletionPolicy::Delete,
                delete_layers: true,
                source_secret_ref: None,
                destination_secret_ref: None,
                suspend: false,
                platforms: Vec::new(),
                referrers: true,
                referrer_types: Vec::new(),
            },
        );
        o.metadata.namespace = Some("ns".into());
        o
    }

    fn names(d: &Destinations, tail: &str) -> Vec<String> {
        let mut n: Vec<String> = d.named(tail).into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    #[test]
    fn follows_applies_moves_deletes_and_relists() {
        let d = Destinations::default();
        d.observe(&Event::Apply(obj("a", "r.example/team/app:1")));
        d.observe(&Event::Apply(obj("b", "docker.io/library/app@sha256:00")));
        d.observe(&Event::Apply(obj("c", "r.example/other:1")));
        assert_eq!(names(&d, "app"), ["a", "b"]);
        // A destination change moves the object.
        d.observe(&Event::Apply(obj("a", "r.example/other:2")));
        assert_eq!(names(&d, "app"), ["b"]);
        assert_eq!(names(&d, "other"), ["a", "c"]);
        d.observe(&Event::Delete(obj("c", "r.example/other:1")));
        assert_eq!(names(&d, "other"), ["a"]);
        // A relist replaces everything once complete; until then the old view stays.
        d.observe(&Event::Init);
        d.observe(&Event::InitApply(obj("z", "r.example/app:9")));
        assert_eq!(names(&d, "app"), ["b"]);
        d.observe(&Event::InitDone);
        assert_eq!(names(&d, "app"), ["z"]);
        assert!(names(&d, "other").is_empty());
    }
}

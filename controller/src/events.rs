//! Kubernetes Events on `events.k8s.io/v1` (available since 1.19), written by
//! kube-runtime's [`Recorder`].
//!
//! A repeat of the same event (same object, type, reason, action and note) within six
//! minutes (the `Recorder`'s window) updates the first one's `series` instead of creating
//! a new object. The `Recorder` alone would also fold an event with a *different* note
//! into that series, keeping the first note (a second copy's `Synced` event would show
//! the first digest), so each distinct note gets its own `Recorder`. Publishing never
//! fails a reconcile: errors are logged.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Client, Resource};
use tracing::warn;

use crate::api::ImageSync;

pub use kube::runtime::events::EventType;

/// How long a note's `Recorder` is kept: the `Recorder`'s own series window (after it, a
/// repeat is a new Event anyway).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// `note` is limited to 1 kB by the API.
const MAX_NOTE: usize = 1000;

/// What makes two events "the same" (a series): the `Recorder` adds the action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    regarding: String,
    type_: EventType,
    reason: String,
    note: String,
}

/// Publishes events about `ImageSync` objects (and the controller's own objects).
pub struct Events {
    client: Client,
    reporter: Reporter,
    recorders: Mutex<HashMap<Key, (Recorder, Timestamp)>>,
}

impl Events {
    /// A publisher reporting as `controller` / `instance` (the pod or host name).
    pub fn new(client: Client, controller: &str, instance: &str) -> Events {
        Events {
            client,
            reporter: Reporter {
                controller: controller.to_string(),
                instance: Some(instance.to_string()),
            },
            recorders: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an event about `obj`. `action` is what the controller did (e.g. `Sync`).
    pub async fn publish(
        &self,
        obj: &ImageSync,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        self.publish_about(obj.object_ref(&()), type_, reason, action, note)
            .await
    }

    /// Publishes an event about any namespaced object (the controller's own Deployment
    /// or Lease, for policy reloads). The Event is created in the object's namespace.
    pub async fn publish_about(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let Some(namespace) = regarding.namespace.as_deref() else {
            return;
        };
        let note = truncated(note, MAX_NOTE);
        let key = Key {
            regarding: regarding.uid.clone().unwrap_or_else(|| {
                format!(
                    "{}/{namespace}/{}",
                    regarding.kind.as_deref().unwrap_or_default(),
                    regarding.name.as_deref().unwrap_or_default()
                )
            }),
            type_,
            reason: reason.to_string(),
            note: note.to_string(),
        };
        let recorder = self.recorder(key);
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.to_string()),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &regarding).await {
            warn!(%error, reason, "could not publish event");
        }
    }

    /// The `Recorder` of events with `key` (a new one when none was used recently).
    fn recorder(&self, key: Key) -> Recorder {
        let now = Timestamp::now();
        let mut recorders = match self.recorders.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        recorders.retain(|_, (_, at)| *at + SERIES_WINDOW > now);
        let (recorder, at) = recorders.entry(key).or_insert_with(|| {
            (
                Recorder::new(self.client.clone(), self.reporter.clone()),
                now,
            )
        });
        *at = now;
        recorder.clone()
    }
}

/// `note` cut to at most `max` bytes, on a character boundary.
fn truncated(note: &str, max: usize) -> &str {
    if note.len() <= max {
        return note;
    }
    let mut cut = max;
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    &note[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("short", MAX_NOTE), "short");
        let long = "é".repeat(MAX_NOTE);
        let cut = truncated(&long, MAX_NOTE);
        assert_eq!(cut.len(), MAX_NOTE);
        let odd = format!("a{long}");
        assert_eq!(truncated(&odd, MAX_NOTE).len(), MAX_NOTE - 1);
    }

    /// Against a fake API server (tower-test mock): a repeat with the same note patches
    /// the first Event's series; another note is a new Event, never folded into the first.
    #[tokio::test]
    async fn repeats_are_a_series_and_new_notes_new_events() {
        use http::{Method, Request, Response};
        use kube::client::Body;

        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                log.lock().unwrap().push((method, body["note"].clone()));
                send.send_response(Response::builder().body(Body::from(bytes)).unwrap());
            }
        });
        let events = Events::new(Client::new(service, "default"), "imagesync.dev/test", "t");
        let regarding = ObjectReference {
            namespace: Some("team-a".into()),
            name: Some("app".into()),
            uid: Some("uid-1".into()),
            ..ObjectReference::default()
        };
        for note in ["copied A", "copied A", "copied B"] {
            events
                .publish_about(regarding.clone(), EventType::Normal, "Synced", "Sync", note)
                .await;
        }
        let seen = seen.lock().unwrap();
        let methods: Vec<&Method> = seen.iter().map(|(m, _)| m).collect();
        assert_eq!(methods, [&Method::POST, &Method::PATCH, &Method::POST]);
        assert_eq!(seen[2].1, "copied B");
    }
}

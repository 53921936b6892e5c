//! Kubernetes Events on `events.k8s.io/v1` (available since 1.19).
//!
//! A repeat of the same event (same object, type, reason and note) within ten minutes
//! updates the first one's `series` instead of creating a new object. Publishing never
//! fails a reconcile: errors are logged.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use tracing::warn;

use crate::api::ImageSync;

/// How long a published event is remembered for series updates.
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(10);
/// `note` is limited to 1 kB by the API.
const MAX_NOTE: usize = 1000;

/// Event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something needs attention.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    type_: EventType,
    reason: String,
    note: String,
}

struct Published {
    name: String,
    namespace: String,
    count: i32,
    at: Timestamp,
}

/// Publishes events about `ImageSync` objects.
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<HashMap<Key, Published>>,
}

impl Events {
    /// A publisher reporting as `controller` / `instance` (the pod or host name).
    pub fn new(client: Client, controller: &str, instance: &str) -> Events {
        Events {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            recent: Mutex::new(HashMap::new()),
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
        let mut note = note.to_string();
        if note.len() > MAX_NOTE {
            let mut cut = MAX_NOTE;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let Some(namespace) = regarding.namespace.clone() else {
            return;
        };
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_else(|| {
                format!(
                    "{}/{namespace}/{}",
                    regarding.kind.as_deref().unwrap_or_default(),
                    regarding.name.as_deref().unwrap_or_default()
                )
            }),
            type_,
            reason: reason.to_string(),
            note: note.clone(),
        };
        let now = Timestamp::now();
        let repeat = {
            let mut recent = match self.recent.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            recent.retain(|_, p| p.at + SERIES_WINDOW > now);
            recent.get_mut(&key).map(|p| {
                p.count += 1;
                p.at = now;
                (p.name.clone(), p.namespace.clone(), p.count)
            })
        };
        let result = match repeat {
            Some((name, ns, count)) => {
                let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
                let patch = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: MicroTime(now) }
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
            None => {
                let name = format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("imagesync"),
                    now.as_nanosecond()
                );
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    event_time: Some(MicroTime(now)),
                    action: Some(action.to_string()),
                    reason: Some(reason.to_string()),
                    note: Some(note.clone()),
                    type_: Some(type_.as_str().to_string()),
                    regarding: Some(regarding),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    ..Event::default()
                };
                let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
                let created = api.create(&PostParams::default(), &event).await;
                if created.is_ok() {
                    let mut recent = match self.recent.lock() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    recent.insert(
                        key,
                        Published {
                            name,
                            namespace,
                            count: 1,
                            at: now,
                        },
                    );
                }
                created.map(|_| ())
            }
        };
        if let Err(error) = result {
            warn!(%error, reason, "could not publish event");
        }
    }
}

//! The API writes of a set's check: create a child, put an edited child back, retire a
//! child whose tag stopped matching. Each acts only on children the set owns (by uid):
//! an object with a child's name that the set does not own is reported, never touched.

use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::api::{DeletionPolicy, ImageSync, ImageSyncSet};
use crate::events::EventType;
use crate::{Error, Result};

use super::naming::{child, child_spec, is_owned_by};
use super::SetContext;

/// What creating a child found.
pub(super) enum Created {
    /// Created (or it already existed, owned by this set).
    Ok,
    /// An object the set does not own has the name: left alone.
    Conflict(String),
}

impl SetContext {
    /// Creates the child for `tag`.
    pub(super) async fn create_child(
        &self,
        set: &ImageSyncSet,
        api: &Api<ImageSync>,
        tag: &str,
    ) -> Result<Created> {
        let Some(obj) = child(set, tag) else {
            return Err(Error::MissingMetadata("uid"));
        };
        let name = obj.name_any();
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {
                info!(child = %name, %tag, "created child ImageSync");
                self.rc.metrics.set_child("created");
                let note = format!("created ImageSync {name} for tag {tag}");
                self.publish(set, EventType::Normal, "ChildCreated", "Create", &note)
                    .await;
                Ok(Created::Ok)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours (the cache had not seen it yet), or someone else's.
                let uid = set.uid().unwrap_or_default();
                match api.get_opt(&name).await {
                    Ok(Some(existing)) if is_owned_by(&existing, &uid) => Ok(Created::Ok),
                    Ok(_) => Ok(Created::Conflict(name)),
                    Err(source) => Err(kube_error(format!("get ImageSync {name}"), source)),
                }
            }
            Err(source) => Err(kube_error(format!("create ImageSync {name}"), source)),
        }
    }

    /// Puts the template's spec back on an owned child (optimistic: a child changed
    /// since the cache saw it is left for the next check, and `false` returned).
    pub(super) async fn update_child(
        &self,
        set: &ImageSyncSet,
        api: &Api<ImageSync>,
        existing: &ImageSync,
        tag: &str,
    ) -> Result<bool> {
        let mut obj = existing.clone();
        obj.spec = child_spec(set, tag);
        obj.status = None;
        let name = existing.name_any();
        match api.replace(&name, &PostParams::default(), &obj).await {
            Ok(_) => {
                info!(child = %name, "updated child ImageSync to the set's template");
                self.rc.metrics.set_child("updated");
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
            Err(source) => Err(kube_error(format!("update ImageSync {name}"), source)),
        }
    }

    /// Deletes an owned child whose tag no longer matches, after writing the set's
    /// deletion policy to it: with `Orphan` its cleanup leaves the destination tag, with
    /// `Delete` it removes the tag (only what it wrote). The delete is conditional on the
    /// child's uid and on the resourceVersion that write gave, so a child changed in
    /// between (its policy flipped back) is not deleted with the wrong policy; the next
    /// check tries again (`false`).
    pub(super) async fn retire_child(
        &self,
        set: &ImageSyncSet,
        api: &Api<ImageSync>,
        existing: &ImageSync,
    ) -> Result<bool> {
        let name = existing.name_any();
        let policy = set.spec.deletion_policy;
        let mut obj = existing.clone();
        obj.spec.deletion_policy = policy;
        obj.status = None;
        let written = match api.replace(&name, &PostParams::default(), &obj).await {
            Ok(o) => o,
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return Ok(false),
            Err(source) => return Err(kube_error(format!("update ImageSync {name}"), source)),
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: written.uid(),
                resource_version: written.resource_version(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return Ok(false),
            Err(source) => return Err(kube_error(format!("delete ImageSync {name}"), source)),
        }
        let tag = existing
            .annotations()
            .get(crate::api::set::TAG_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        let what = match policy {
            DeletionPolicy::Orphan => "the mirrored image stays in the registry (Orphan)",
            DeletionPolicy::Delete => "its destination tag is deleted (Delete)",
        };
        info!(child = %name, %tag, ?policy, "deleted child ImageSync: its tag no longer matches");
        self.rc.metrics.set_child("deleted");
        let note = format!("tag {tag} no longer matches: deleted ImageSync {name}; {what}");
        self.publish(set, EventType::Normal, "ChildDeleted", "Delete", &note)
            .await;
        Ok(true)
    }

    /// Publishes an Event about `set`.
    pub(super) async fn publish(
        &self,
        set: &ImageSyncSet,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        use kube::Resource;
        self.rc
            .events
            .publish_about(set.object_ref(&()), type_, reason, action, note)
            .await;
    }
}

fn kube_error(context: String, source: kube::Error) -> Error {
    warn!(%context, error = %source, "kubernetes API call failed");
    Error::Kube { context, source }
}

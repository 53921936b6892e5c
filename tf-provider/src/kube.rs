//! Kubernetes mode: the resource manages an `ImageSync` object (imagesync.dev/v1alpha1)
//! and the imagesync controller does the copying, healing drift between Terraform runs.

use std::path::PathBuf;
use std::time::Instant;

use async_trait::async_trait;
use imagesync_api::{destination_key, reasons, ImageSync, ImageSyncSpec, SecretRef, FINALIZER};
use imagesync_engine::{Digest, Reference, Referrer};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, ResourceExt};
use sha2::Digest as _;

use crate::backend::{
    Backend, BackendError, Bookkeeper, Deleted, Identity, Observed, SourceAtPlan, Synced,
    SyncedReferrers, Target,
};

/// Field manager of the server-side applies.
const MANAGER: &str = "terraform-provider-imagesync";

/// The `kubernetes {}` provider block.
#[derive(Clone, Debug, Default)]
pub struct KubeConfig {
    /// Kubeconfig path (default: `KUBECONFIG`, `~/.kube/config`, or in-cluster).
    pub config_path: Option<PathBuf>,
    /// Context to use.
    pub config_context: Option<String>,
    /// Default namespace of the objects.
    pub namespace: Option<String>,
}

/// Kubernetes mode.
#[derive(Clone)]
pub struct Kube {
    client: Client,
    namespace: String,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Kube {
    /// Connects (lazily) with the given settings.
    pub async fn new(config: KubeConfig) -> anyhow::Result<Kube> {
        use anyhow::Context as _;
        let options = KubeConfigOptions {
            context: config.config_context.clone(),
            ..KubeConfigOptions::default()
        };
        let kcfg = match (&config.config_path, &config.config_context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .context("loading the kubeconfig")?
            }
            (None, Some(_)) => kube::Config::from_kubeconfig(&options)
                .await
                .context("loading the kubeconfig")?,
            (None, None) => kube::Config::infer()
                .await
                .context("no kubeconfig and not running in a cluster")?,
        };
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| kcfg.default_namespace.clone());
        let client = Client::try_from(kcfg).context("building the Kubernetes client")?;
        Ok(Kube { client, namespace })
    }

    fn api(&self, target: &Target) -> (Api<ImageSync>, String) {
        let ns = target
            .namespace
            .clone()
            .unwrap_or_else(|| self.namespace.clone());
        let name = target
            .name
            .clone()
            .unwrap_or_else(|| derive_name(&target.destination_text));
        (Api::namespaced(self.client.clone(), &ns), name)
    }
}

/// An object name derived from the destination: readable part plus a hash, DNS-1123.
pub fn derive_name(destination: &str) -> String {
    let readable: String = destination
        .rsplit('/')
        .next()
        .unwrap_or(destination)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let readable: String = readable.trim_matches('-').chars().take(40).collect();
    let hash = hex::encode(&sha2::Sha256::digest(destination.as_bytes())[..4]);
    if readable.is_empty() {
        format!("imagesync-{hash}")
    } else {
        format!("{}-{hash}", readable.trim_end_matches('-'))
    }
}

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

impl Kube {
    /// A replacement (`create_before_destroy`, or a new name or namespace) creates the new
    /// object while the old one still holds the destination tag: the controller answers
    /// `DestinationConflict` and the new object takes the tag over once Terraform destroys
    /// the old one. When the holder is another Terraform-managed object naming the same
    /// destination, that is the expected state: the create completes with the digest the
    /// new object's source resolved to (the tag holds it after the old object's destroy).
    async fn handover(
        &self,
        obj: &ImageSync,
        target: &Target,
    ) -> Result<Option<Synced>, BackendError> {
        let Some(status) = obj.status.as_ref() else {
            return Ok(None);
        };
        // With platforms the digest to report is the selection's, which only a sync records.
        let digest = if target.kube.platforms.is_empty() {
            status.source_digest.as_ref()
        } else {
            status.selection.as_ref().map(|s| &s.digest)
        };
        let (Some(holder), Some(digest)) = (&status.conflict, digest) else {
            return Ok(None);
        };
        let waiting = obj
            .ready_condition()
            .is_some_and(|c| c.reason == reasons::DESTINATION_CONFLICT);
        let Ok(digest) = digest.parse::<Digest>() else {
            return Ok(None);
        };
        if !waiting {
            return Ok(None);
        }
        let api: Api<ImageSync> = Api::namespaced(self.client.clone(), &holder.namespace);
        let Some(old) = api.get_opt(&holder.name).await? else {
            // Gone already: the new object proceeds at its next check.
            return Ok(None);
        };
        let by_terraform = old.labels().get(MANAGED_BY).map(String::as_str) == Some("terraform");
        let same = Reference::parse(&old.spec.destination)
            .is_ok_and(|d| destination_key(&d) == destination_key(&target.destination));
        if !(by_terraform && same) {
            return Ok(None);
        }
        tracing::warn!(
            holder = %format!("{}/{}", holder.namespace, holder.name),
            "the destination is held by another Terraform-managed ImageSync (the object this one replaces); \
             the new object takes the tag over when that one is destroyed"
        );
        Ok(Some(Synced {
            source_digest: digest.clone(),
            destination_digest: digest.clone(),
            id: target.destination.id(&digest),
            // The controller decides ownership in Kubernetes mode.
            adopted: false,
            uploaded: Vec::new(),
            referrers: Default::default(),
            selected_from: None,
        }))
    }
}

/// `(id, source_digest, destination digest)` from the status. With `spec.platforms`,
/// `source_digest` is the selection's digest, as in direct mode (the source index's
/// digest is the controller's business: a platform added there is not drift).
fn status_of(obj: &ImageSync) -> Option<(String, Option<Digest>, Digest)> {
    let st = obj.status.as_ref()?;
    let id = st.id.clone()?;
    let dst: Digest = st.destination_digest.as_deref()?.parse().ok()?;
    let src = if obj.spec.platforms.is_empty() {
        st.source_digest.as_deref().and_then(|d| d.parse().ok())
    } else {
        Some(dst.clone())
    };
    Some((id, src, dst))
}

/// `copied_referrers` from the object's `status.referrers`: what the controller found at
/// the destination when it became Ready. None is marked written: in Kubernetes mode the
/// controller owns them and deletes them with the object, so destroy never deletes one
/// itself. An entry whose digest does not parse is skipped.
fn referrers_of(obj: &ImageSync, image: &Digest) -> SyncedReferrers {
    let Some(st) = obj.status.as_ref() else {
        return SyncedReferrers::default();
    };
    if !obj.spec.referrers {
        return SyncedReferrers::default();
    }
    let list = st
        .referrers
        .iter()
        .filter_map(|r| {
            Some(Referrer {
                digest: r.digest.parse().ok()?,
                artifact_type: r.artifact_type.clone(),
                subject: image.clone(),
                tag: None,
                written: false,
            })
        })
        .collect();
    SyncedReferrers {
        checked: true,
        list,
        probe: None,
    }
}

/// The object's spec for `target`.
fn spec_of(target: &Target) -> ImageSyncSpec {
    let secret = |name: &Option<String>| name.clone().map(|name| SecretRef { name });
    ImageSyncSpec {
        source: target.source.to_string(),
        destination: target.destination_text.clone(),
        resync_interval: target.kube.resync_interval.clone(),
        deletion_policy: Default::default(),
        delete_layers: target.delete_layers,
        source_secret_ref: secret(&target.kube.source_secret),
        destination_secret_ref: secret(&target.kube.destination_secret),
        suspend: false,
        platforms: target.kube.platforms.clone(),
        referrers: target.referrers.enabled,
        referrer_types: target.referrers.artifact_types.clone(),
    }
}

#[async_trait]
impl Backend for Kube {
    fn bookkeeper(&self) -> Bookkeeper {
        Bookkeeper::Controller
    }

    async fn plan_source(
        &self,
        _source: &Reference,
        _platforms: &[imagesync_engine::Platform],
        _known: Option<&imagesync_engine::Selection>,
    ) -> SourceAtPlan {
        // The controller holds the registry credentials and follows the source.
        SourceAtPlan::Followed
    }

    fn identity(&self, destination: Option<&str>) -> Option<Identity> {
        Some(Identity {
            namespace: self.namespace.clone(),
            name: destination.map(derive_name),
        })
    }

    async fn digest(&self, _reference: &Reference) -> Result<Option<Digest>, BackendError> {
        // Not asked: plans do not look (see `plan_source`).
        Ok(None)
    }

    async fn observe(&self, target: &Target) -> Result<Option<Observed>, BackendError> {
        let (api, name) = self.api(target);
        let Some(obj) = api.get_opt(&name).await? else {
            return Ok(None);
        };
        if obj.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        Ok(Some(match status_of(&obj) {
            Some((id, source_digest, _)) => Observed { id, source_digest },
            // Not synced yet: nothing new to report.
            None => Observed {
                id: String::new(),
                source_digest: None,
            },
        }))
    }

    async fn sync(&self, target: &Target, _expect: Option<Digest>) -> Result<Synced, BackendError> {
        let (api, name) = self.api(target);
        let mut obj = ImageSync::new(&name, spec_of(target));
        obj.metadata.labels = Some([(MANAGED_BY.to_string(), "terraform".to_string())].into());
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await?;
        let generation = applied.metadata.generation.unwrap_or(0);
        tracing::info!(%name, generation, "ImageSync applied; waiting for Ready");
        let deadline = Instant::now() + target.create_timeout;
        let mut last = String::from("no status yet");
        // Each version of the object the controller has seen the spec of is looked at
        // once: Ready with a status ends the wait, a conflict with the object this one
        // replaces ends it too (see `handover`); anything else waits for the next change.
        let mut looked_at: Option<String> = None;
        loop {
            let seen = looked_at.clone();
            let changed = move |o: Option<&ImageSync>| {
                o.is_some_and(|o| {
                    o.resource_version() != seen
                        && o.status
                            .as_ref()
                            .and_then(|s| s.observed_generation)
                            .unwrap_or(-1)
                            >= generation
                })
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let obj =
                match tokio::time::timeout(remaining, await_condition(api.clone(), &name, changed))
                    .await
                {
                    Ok(Ok(Some(obj))) => obj,
                    Ok(Ok(None)) => continue,
                    Ok(Err(e)) => return Err(wait_error(e)),
                    Err(_) => {
                        return Err(BackendError::Timeout(format!(
                            "ImageSync {}/{name} was not Ready within {:?}: {last}",
                            api.resource_url(),
                            target.create_timeout
                        )))
                    }
                };
            looked_at = obj.resource_version();
            if let Some(c) = obj.ready_condition() {
                last = format!(
                    "Ready={} reason={} message={}",
                    c.status, c.reason, c.message
                );
            }
            if obj.is_ready() {
                if let Some((id, src, dst)) = status_of(&obj) {
                    let referrers = referrers_of(&obj, &dst);
                    return Ok(Synced {
                        source_digest: src.unwrap_or_else(|| dst.clone()),
                        destination_digest: dst,
                        id,
                        adopted: false,
                        uploaded: Vec::new(),
                        selected_from: None,
                        referrers,
                    });
                }
            }
            if let Some(synced) = self.handover(&obj, target).await? {
                return Ok(synced);
            }
        }
    }

    async fn delete(
        &self,
        target: &Target,
        _expect: Option<Digest>,
    ) -> Result<Deleted, BackendError> {
        let (api, name) = self.api(target);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Ok(Deleted {
                    already_gone: true,
                    warnings: Vec::new(),
                })
            }
            Err(e) => return Err(e.into()),
        }
        // The controller removes the destination tag, then its finalizer.
        let Some(obj) = api.get_opt(&name).await? else {
            return Ok(Deleted::default());
        };
        // Gone, or replaced by a new object of the same name.
        let uid = obj.uid();
        let gone_cond =
            move |o: Option<&ImageSync>| o.is_none_or(|o| uid.is_some() && o.uid() != uid);
        let gone = await_condition(api.clone(), &name, gone_cond);
        match tokio::time::timeout(target.delete_timeout, gone).await {
            Ok(Ok(_)) => Ok(Deleted::default()),
            Ok(Err(e)) => Err(wait_error(e)),
            Err(_) => {
                let obj = api.get_opt(&name).await?;
                let waiting = obj
                    .as_ref()
                    .is_some_and(|o| o.finalizers().iter().any(|f| f == FINALIZER));
                let cond = obj
                    .as_ref()
                    .and_then(|o| o.ready_condition())
                    .map(|c| format!("{}: {}", c.reason, c.message))
                    .unwrap_or_default();
                Err(BackendError::Timeout(format!(
                    "ImageSync {name} still exists after {:?} (finalizer pending: {waiting}) {cond}",
                    target.delete_timeout
                )))
            }
        }
    }
}

/// A failed watch while waiting: the API error when there is one.
fn wait_error(e: kube::runtime::wait::Error) -> BackendError {
    match e {
        kube::runtime::wait::Error::ProbeFailed(
            kube::runtime::watcher::Error::InitialListFailed(e),
        )
        | kube::runtime::wait::Error::ProbeFailed(
            kube::runtime::watcher::Error::WatchStartFailed(e),
        )
        | kube::runtime::wait::Error::ProbeFailed(kube::runtime::watcher::Error::WatchFailed(e)) => {
            e.into()
        }
        other => BackendError::Timeout(format!("watching the ImageSync failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_are_dns_labels_and_distinct() {
        let a = derive_name("127.0.0.1:5000/dst/app:v1");
        let b = derive_name("127.0.0.1:5000/other/app:v1");
        assert!(a.starts_with("app-v1-"), "{a}");
        assert_ne!(a, b);
        for n in [a, b, derive_name("x/UPPER_case:TAG"), derive_name("///")] {
            assert!(n.len() <= 63);
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
            assert!(!n.starts_with('-') && !n.ends_with('-'), "{n}");
        }
    }
}

//! Reconcile and cleanup of `ImageSync` objects.
//!
//! - Apply: resolve the source digest (HEAD), resolve the destination digest (HEAD),
//!   copy when the destination is missing or differs, then write status. Re-checks run
//!   every `resyncInterval` and use HEAD only.
//! - Cleanup (finalizer `imagesync.dev/cleanup`): remove the destination tag with the
//!   engine's safe delete, only while it still points at `status.destinationDigest`.
//!
//! A re-check that finds nothing new writes no status (`lastCheckTime` is refreshed
//! every 10 minutes, `decide::CHECK_TIME_REFRESH`). Watch events that change no
//! generation, deletion or finalizer (status writes) are dropped before they reach the
//! `Controller`; a per-object gate skips the rest that need nothing (relists, requeues
//! that are not due: no registry request, no API call) until the next check is due or
//! the object really changed or the tenant policy changed.
//!
//! The tenant policy ([`crate::policy`]) is consulted before anything touches a
//! registry: on apply (source and destination), before removing a previous destination
//! and on deletion. A denied object gets `Ready=False` with reason `PolicyDenied` and is
//! never copied or deleted; deleting it releases the finalizer without a registry call.
//!
//! Layout: this file (the [`Context`], the entry points [`reconcile`], [`error_policy`]
//! and [`run`], the status write), `apply` (check and copy), `cleanup` (deletion and
//! removal of an old destination), `decide` (the pure decisions, unit-tested), `notices`
//! (the Events a check publishes), `gate` (the per-object gate), `engines` (the
//! per-credential engine cache), `admit` (what the tenant policy allows; the objects
//! competing for a destination) and `ownership` (who owns a destination tag).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use imagesync_engine::{CredentialProvider, Engine};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::Store;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use crate::api::{reasons, ImageSync, ImageSyncStatus, FINALIZER};
use crate::events::{EventType, Events};
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::{Error, Result};

mod admit;
mod apply;
mod cleanup;
mod decide;
mod destinations;
mod engines;
mod gate;
#[cfg(test)]
mod mock_api_tests;
mod notices;
mod ownership;

pub use decide::{
    backoff, decide, parse_duration, same_image_reference, set_ready, Decision, Drift,
};
pub use ownership::destination_key;

use apply::apply;
use cleanup::cleanup;
use gate::{object_key, Gate};

/// The field manager of our status writes.
pub const FIELD_MANAGER: &str = "imagesync-controller";
/// Deletion retries transient failures for this long after `deletionTimestamp`, then
/// releases the finalizer with a Warning event (never a stuck object).
pub const DELETE_GIVE_UP: Duration = Duration::from_secs(600);
/// An object waiting for a holder that is being deleted looks again this often.
const CONFLICT_POLL: Duration = Duration::from_secs(2);

/// Everything reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The engine with the standard credential chain.
    pub engine: Engine,
    /// The standard credential chain (Secrets are chained before it).
    pub base_credentials: Arc<dyn CredentialProvider>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event publisher.
    pub events: Events,
    /// `resyncInterval` for objects that do not set one.
    pub default_resync: Duration,
    /// The tenant policy (allow-all without a policy file).
    pub policy: Arc<PolicyStore>,
    /// Shortest `spec.resyncInterval` accepted (`--min-resync-interval`).
    pub min_resync: Duration,
    gates: Mutex<HashMap<String, Gate>>,
    /// Where the controller's check ticks are counted from, and their length
    /// ([`gate::CHECK_TICK`]).
    epoch: std::time::Instant,
    check_tick: Duration,
    engines: Mutex<HashMap<String, Engine>>,
    /// Every `ImageSync` the controller watches (set by [`run`]): destination conflicts
    /// are found here, without API calls.
    store: OnceLock<Store<ImageSync>>,
    /// The same objects by destination (kept in step with `store` by [`run`]).
    destinations: destinations::Destinations,
    /// Reconciles an object at once (an object waiting for the holder of its destination).
    wake: OnceLock<tokio::sync::mpsc::UnboundedSender<()>>,
}

impl Context {
    /// A context; `engine` must have been built with `base_credentials`.
    pub fn new(
        client: Client,
        engine: Engine,
        base_credentials: Arc<dyn CredentialProvider>,
        metrics: Arc<Metrics>,
        events: Events,
        default_resync: Duration,
    ) -> Context {
        Context {
            client,
            engine,
            base_credentials,
            metrics,
            events,
            default_resync,
            policy: Arc::new(PolicyStore::allow_all()),
            min_resync: crate::duration::MIN_RESYNC,
            gates: Mutex::new(HashMap::new()),
            epoch: std::time::Instant::now(),
            check_tick: gate::CHECK_TICK,
            engines: Mutex::new(HashMap::new()),
            store: OnceLock::new(),
            destinations: destinations::Destinations::default(),
            wake: OnceLock::new(),
        }
    }

    /// Enforces `policy` (the default allows everything).
    pub fn with_policy(mut self, policy: Arc<PolicyStore>) -> Context {
        self.policy = policy;
        self
    }

    /// Accepts `spec.resyncInterval` values down to `min` (at least 1s) instead of 10s.
    pub fn with_min_resync(mut self, min: Duration) -> Context {
        self.min_resync = min.max(crate::duration::MIN_RESYNC_FLOOR);
        self
    }

    /// The resync interval of `obj`: `spec.resyncInterval` when valid, else the default
    /// (an invalid value is reported by [`Context::checked_resync_interval`]).
    pub fn resync_interval(&self, obj: &ImageSync) -> Duration {
        self.checked_resync_interval(obj)
            .unwrap_or(self.default_resync)
    }

    /// `spec.resyncInterval` checked against its bounds (`min_resync` to 720h), or the
    /// default when unset; why not when out of range or malformed (reported as
    /// [`Error::InvalidSpec`]).
    pub fn checked_resync_interval(&self, obj: &ImageSync) -> Result<Duration, String> {
        match obj.spec.resync_interval.as_deref() {
            None => Ok(self.default_resync),
            Some(value) => crate::duration::check_resync(value, self.min_resync),
        }
    }
}

// === Reconcile ===

/// Reconciles one object (called by the kube-runtime `Controller`).
#[instrument(skip(obj, ctx), fields(namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(), generation = ?obj.metadata.generation, source_digest = tracing::field::Empty))]
pub async fn reconcile(obj: Arc<ImageSync>, ctx: Arc<Context>) -> Result<Action> {
    if let Some(wait) = ctx.not_due(&obj) {
        // Our own status write, or a relist: nothing changed and no check is due.
        return Ok(Action::requeue(wait));
    }
    ctx.metrics.reconciles.inc();
    if let Some(store) = ctx.store.get() {
        // Conflicts need every object: wait for the first complete list.
        let _ = store.wait_until_ready().await;
    }
    let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<ImageSync> = Api::namespaced(ctx.client.clone(), &namespace);
    if obj.metadata.deletion_timestamp.is_none() {
        let checked = ctx
            .checked_resync_interval(&obj)
            .and_then(|_| crate::referrers::policy(&obj.spec).map(|_| ()));
        if let Err(message) = checked {
            // Checked before the finalizer: an object stored under an older, looser CRD
            // schema cannot even take a finalizer now, and nothing has been written for it.
            let error = Error::InvalidSpec(message);
            return Err(report_invalid_spec(&obj, &ctx, &api, error).await);
        }
    }
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => apply(obj, ctx.clone(), &api).await,
            Finalizer::Cleanup(obj) => cleanup(obj, ctx.clone(), &api).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// `Ready=False` reason `InvalidSpec` (and a Warning Event when that is news); nothing is
/// checked or copied. Returns `error` for the requeue policy.
async fn report_invalid_spec(
    obj: &ImageSync,
    ctx: &Context,
    api: &Api<ImageSync>,
    error: Error,
) -> Error {
    let message = error.to_string();
    let generation = obj.metadata.generation;
    let news = obj
        .ready_condition()
        .is_none_or(|c| c.reason != reasons::INVALID_SPEC || c.message != message);
    let mut status = obj.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    set_ready(
        &mut status,
        false,
        reasons::INVALID_SPEC,
        &message,
        generation,
    );
    ctx.metrics.set_ready(&object_key(obj), Some("false"));
    if news {
        ctx.events
            .publish(
                obj,
                EventType::Warning,
                reasons::INVALID_SPEC,
                "Validate",
                &message,
            )
            .await;
    }
    if let Err(e) = patch_status(api, obj, &status).await {
        warn!(error = %e, "could not write InvalidSpec to status");
    }
    error
}

/// Requeue policy after a failed reconcile: exponential capped backoff for transient
/// errors, slow retries for permanent ones, `Retry-After` for 429.
pub fn error_policy(obj: Arc<ImageSync>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.metric_label());
    let failures = ctx.failures(&obj).saturating_add(1);
    let retry_after = error.engine_error().and_then(|e| e.retry_after());
    let wait = backoff(
        failures,
        error.is_permanent(),
        retry_after,
        ctx.resync_interval(&obj),
    );
    ctx.schedule(&obj, wait, true);
    warn!(
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        %error,
        retry_in = ?wait,
        "reconcile failed"
    );
    Action::requeue(wait)
}

async fn patch_status(
    api: &Api<ImageSync>,
    obj: &ImageSync,
    status: &ImageSyncStatus,
) -> Result<()> {
    apply_status(api, obj, obj.status.as_ref(), status, "patch status").await
}

/// Writes `status` on `obj` by server-side apply of the status subresource, unless it is
/// what `obj` already has (`current`), so our own writes do not loop; an object deleted
/// meanwhile is fine.
pub(crate) async fn apply_status<K, S>(
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    status: &S,
    context: &str,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    match api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            context: context.into(),
            source,
        }),
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    api: Api<ImageSync>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    // A new policy re-evaluates every object at once (the gate sees the new generation).
    let policy_changes = futures::stream::unfold(ctx.policy.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    // Destination conflicts are judged on the controller's own cache of every object,
    // and on an index of it by destination fed the same watch events.
    let writer = reflector::store::Writer::default();
    let store = writer.as_reader();
    let _ = ctx.store.set(store.clone());
    let unready = stopped_unready(shutdown.clone(), store.clone(), "ImageSync");
    let index = ctx.clone();
    // The store sees every event; reconciles only objects whose spec or lifecycle
    // changed (status writes are skipped here, before the gate).
    let objects = reflector(writer, watcher(api, watcher::Config::default()))
        .inspect_ok(move |event| index.destinations.observe(event))
        .applied_objects()
        .predicate_filter(gate::lifecycle_hash, Default::default());
    let controller = Controller::for_stream(objects, store);
    // Waking objects: their gates are opened, then every object is offered (the others'
    // gates skip them without a registry request).
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = ctx.wake.set(tx);
    let wakes = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await?;
        Some(((), rx))
    });
    let run = controller
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .reconcile_all_on(futures::stream::select(policy_changes, wakes))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                Err(error) => debug!(%error, "controller event"),
            }
        });
    tokio::select! {
        () = run => {}
        () = unready => {}
    }
}

/// Completes when `shutdown` does while `store` has not had its first list (its watch
/// failing: the CRD not installed, or no permission to list). A kube-runtime `Controller`
/// starts no reconcile before that list, and its graceful shutdown would wait for it
/// forever; with nothing in flight, it can stop at once. Otherwise never completes.
pub(crate) async fn stopped_unready<K>(
    shutdown: impl std::future::Future<Output = ()>,
    store: Store<K>,
    kind: &str,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt as _;
    shutdown.await;
    if store.wait_until_ready().now_or_never().is_some() {
        return futures::future::pending().await;
    }
    info!(
        kind,
        "stopping: never listed these objects (their watch kept failing)"
    );
}

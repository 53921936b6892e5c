//! Reconcile and cleanup of `ImageSync` objects.
//!
//! - Apply: resolve the source digest (HEAD), resolve the destination digest (HEAD),
//!   copy when the destination is missing or differs, then write status. Re-checks run
//!   every `resyncInterval` and use HEAD only.
//! - Cleanup (finalizer `imagesync.dev/cleanup`): remove the destination tag with the
//!   engine's safe delete, only while it still points at `status.destinationDigest`.
//!
//! Our own status writes trigger watch events; a per-object gate skips those (no
//! registry request, no API call) until the next check is due or the object really
//! changed (generation, deletion, finalizers) or the tenant policy changed.
//!
//! The tenant policy ([`crate::policy`]) is consulted before anything touches a
//! registry: on apply (source and destination), before removing a previous destination
//! and on deletion. A denied object gets `Ready=False` with reason `PolicyDenied` and is
//! never copied or deleted; deleting it releases the finalizer without a registry call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use imagesync_engine::{
    CredentialProvider, DeleteOptions, Digest, Engine, ErrorKind, Reference, SyncOptions,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn, Span};

use crate::api::{
    reasons, ConflictRecord, DeletionPolicy, ImageSync, ImageSyncStatus, Ownership, SecretRef,
    FINALIZER, READY,
};
use crate::credentials::{AmbientFor, SecretCredentials};
use crate::events::{EventType, Events};
use crate::metrics::Metrics;
use crate::policy::{Ambient, Decision as PolicyDecision, PolicyStore};
use crate::{Error, Result};

mod ownership;
pub use ownership::destination_key;

/// The field manager of our status writes.
pub const FIELD_MANAGER: &str = "imagesync-controller";

/// Transient failures: first retry after this long, doubling per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait between retries of a failing object.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Longest `Retry-After` honoured.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// Deletion retries transient failures for this long after `deletionTimestamp`, then
/// releases the finalizer with a Warning event (never a stuck object).
pub const DELETE_GIVE_UP: Duration = Duration::from_secs(600);
/// Engines kept (one per namespace and credential set); beyond, the cache starts over.
const MAX_ENGINES: usize = 1024;
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
    engines: Mutex<HashMap<String, Engine>>,
    /// Every `ImageSync` the controller watches (set by [`run`]): destination conflicts
    /// are found here, without API calls.
    store: OnceLock<Store<ImageSync>>,
    /// Reconciles an object at once (an object waiting for the holder of its destination).
    wake: OnceLock<tokio::sync::mpsc::UnboundedSender<()>>,
}

/// What identifies "the object changed" for the gate: our own status writes change none
/// of these.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GateKey {
    uid: Option<String>,
    generation: Option<i64>,
    deleting: bool,
    finalized: bool,
    policy_generation: u64,
}

impl GateKey {
    fn of(obj: &ImageSync, policy_generation: u64) -> GateKey {
        GateKey {
            uid: obj.metadata.uid.clone(),
            generation: obj.metadata.generation,
            deleting: obj.metadata.deletion_timestamp.is_some(),
            finalized: obj.finalizers().iter().any(|f| f == FINALIZER),
            policy_generation,
        }
    }
}

#[derive(Clone, Debug)]
struct Gate {
    key: GateKey,
    due: Instant,
    failures: u32,
}

fn object_key(obj: &ImageSync) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
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
            engines: Mutex::new(HashMap::new()),
            store: OnceLock::new(),
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

    fn gate_key(&self, obj: &ImageSync) -> GateKey {
        GateKey::of(obj, self.policy.generation())
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, HashMap<String, Gate>> {
        match self.gates.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `Some(wait)` when nothing changed since the last reconcile and the next check is
    /// not due yet.
    fn not_due(&self, obj: &ImageSync) -> Option<Duration> {
        let gates = self.gates();
        let gate = gates.get(&object_key(obj))?;
        if gate.key != self.gate_key(obj) {
            return None;
        }
        let now = Instant::now();
        (gate.due > now).then(|| gate.due - now)
    }

    fn schedule(&self, obj: &ImageSync, wait: Duration, failed: bool) -> u32 {
        let key = self.gate_key(obj);
        let mut gates = self.gates();
        let entry = gates.entry(object_key(obj)).or_insert(Gate {
            key: key.clone(),
            due: Instant::now(),
            failures: 0,
        });
        if entry.key != key {
            entry.failures = 0;
        }
        entry.key = key;
        entry.failures = if failed {
            entry.failures.saturating_add(1)
        } else {
            0
        };
        // Waits are bounded (at most 30 days), but never let an Instant overflow.
        let now = Instant::now();
        entry.due = now.checked_add(wait).unwrap_or(now);
        entry.failures
    }

    fn failures(&self, obj: &ImageSync) -> u32 {
        let gates = self.gates();
        gates
            .get(&object_key(obj))
            .filter(|g| g.key == self.gate_key(obj))
            .map_or(0, |g| g.failures)
    }

    fn forget(&self, obj: &ImageSync) {
        self.gates().remove(&object_key(obj));
        self.metrics.set_ready(&object_key(obj), None);
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

    /// What the tenant policy says about `obj` copying `source` to `destination` (the
    /// Namespace's labels are read only when a rule selects namespaces by label).
    pub async fn policy_decision(
        &self,
        obj: &ImageSync,
        source: &Reference,
        destination: &Reference,
    ) -> Result<PolicyDecision> {
        let (Some(policy), _) = self.policy.current() else {
            return Ok(PolicyDecision::ALLOW_ALL);
        };
        let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        let labels = if policy.needs_namespace_labels() {
            let api: Api<Namespace> = Api::all(self.client.clone());
            match api.get_opt(&namespace).await {
                Ok(ns) => ns.and_then(|n| n.metadata.labels).unwrap_or_default(),
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    return Ok(PolicyDecision::Deny {
                        message: format!(
                            "the policy selects namespaces by label but the controller may not read namespace {namespace}: {}",
                            s.message
                        ),
                    })
                }
                Err(source) => {
                    return Err(Error::Kube {
                        context: format!("get namespace {namespace} (policy namespaceSelector)"),
                        source,
                    })
                }
            }
        } else {
            BTreeMap::new()
        };
        Ok(policy.evaluate(&namespace, &labels, source, destination))
    }

    /// Like [`Context::policy_decision`], with a denial as [`Error::PolicyDenied`].
    async fn policy_allows(
        &self,
        obj: &ImageSync,
        source: &Reference,
        destination: &Reference,
    ) -> Result<Ambient> {
        match self.policy_decision(obj, source, destination).await? {
            PolicyDecision::Allow { rule, ambient } => {
                if let Some(rule) = rule {
                    debug!(rule = %rule, ?ambient, "allowed by policy");
                }
                Ok(ambient)
            }
            PolicyDecision::Deny { message } => Err(Error::PolicyDenied { message }),
        }
    }

    /// The other objects naming the tag `destination` names (canonically compared),
    /// earliest first, among those the policy allows to write it: an object that may
    /// never write a tag does not hold it.
    async fn rivals(&self, obj: &ImageSync, destination: &Reference) -> Result<Vec<ImageSync>> {
        let Some(store) = self.store.get() else {
            return Ok(Vec::new());
        };
        let all = store.state();
        let mut allowed = Vec::new();
        for other in ownership::competitors(obj, destination, &all) {
            let Ok(source) = Reference::parse(&other.spec.source) else {
                continue;
            };
            if let PolicyDecision::Allow { .. } =
                self.policy_decision(other, &source, destination).await?
            {
                allowed.push(other.clone());
            }
        }
        Ok(allowed)
    }

    /// Reconciles `objects` now, past their gates.
    fn wake(&self, objects: &[ImageSync]) {
        let Some(tx) = self.wake.get() else {
            return;
        };
        if objects.is_empty() {
            return;
        }
        for o in objects {
            self.gates().remove(&object_key(o));
        }
        let _ = tx.send(());
    }

    /// The engine for `obj` copying between the registries of `source` and
    /// `destination`: one per namespace and credential set (the object's Secrets, read
    /// now, chained before the standard credentials, which the policy may withhold per
    /// registry). Engines are never shared across namespaces, so neither are their blob
    /// locations: a tenant cannot have another tenant's layer mounted into its repository.
    async fn engine_for(
        &self,
        obj: &ImageSync,
        source: &Reference,
        destination: &Reference,
        ambient: Ambient,
    ) -> Result<Engine> {
        let refs: Vec<&SecretRef> = [
            &obj.spec.destination_secret_ref,
            &obj.spec.source_secret_ref,
        ]
        .into_iter()
        .flatten()
        .collect();
        let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        let (creds, secrets_key) = if refs.is_empty() {
            (SecretCredentials::default(), String::new())
        } else {
            SecretCredentials::load(&self.client, &namespace, &refs).await?
        };
        let registries = ambient.registries(source.registry(), destination.registry());
        Ok(
            self.namespace_engine(&namespace, &secrets_key, registries, |ambient| {
                if refs.is_empty() {
                    ambient
                } else {
                    creds.chained_before(ambient)
                }
            }),
        )
    }

    /// The engine without the object's Secrets (they are unusable), ambient credentials
    /// as the policy allows.
    fn engine_without_secrets(
        &self,
        obj: &ImageSync,
        source: &Reference,
        destination: &Reference,
        ambient: Ambient,
    ) -> Engine {
        let namespace = obj.namespace().unwrap_or_default();
        let registries = ambient.registries(source.registry(), destination.registry());
        self.namespace_engine(&namespace, "", registries, |ambient| ambient)
    }

    /// The cached engine of `namespace` with the credential set named `secrets_key`,
    /// ambient credentials limited to `registries` (all when `None`).
    fn namespace_engine(
        &self,
        namespace: &str,
        secrets_key: &str,
        registries: Option<std::collections::BTreeSet<String>>,
        credentials: impl FnOnce(Arc<dyn CredentialProvider>) -> Arc<dyn CredentialProvider>,
    ) -> Engine {
        let mut key = format!("ns:{namespace}|{secrets_key}");
        if let Some(r) = &registries {
            key.push_str("|ambient:");
            key.push_str(&r.iter().cloned().collect::<Vec<_>>().join(","));
        }
        self.cached_engine(key, || {
            let ambient: Arc<dyn CredentialProvider> = match registries {
                None => self.base_credentials.clone(),
                Some(r) => Arc::new(AmbientFor::new(Some(r), self.base_credentials.clone())),
            };
            credentials(ambient)
        })
    }

    fn cached_engine(
        &self,
        key: String,
        credentials: impl FnOnce() -> Arc<dyn CredentialProvider>,
    ) -> Engine {
        let mut engines = match self.engines.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(e) = engines.get(&key) {
            return e.clone();
        }
        if engines.len() > MAX_ENGINES {
            engines.clear();
        }
        let engine = self.engine.with_credentials(credentials());
        engines.insert(key, engine.clone());
        engine
    }

    async fn head(
        &self,
        engine: &Engine,
        reference: &Reference,
        what: &str,
    ) -> Result<Option<Digest>> {
        engine
            .digest(reference)
            .await
            .map_err(|source| Error::Engine {
                context: format!("check {what} {reference}"),
                source,
            })
    }
}

/// Parses a Go-style duration (`90s`, `5m`, `1h30m`) without panicking; see
/// [`crate::duration::parse`].
pub fn parse_duration(s: &str) -> Option<Duration> {
    crate::duration::parse(s)
}

// === Decisions (pure, unit-tested) ===

/// Whether `old` (as recorded in status) names the same tag as `new`, however spelled
/// (`docker.io/library/x:1` and `x:1` are the same): then nothing must be deleted.
pub fn same_image_reference(old: &str, new: &Reference) -> bool {
    Reference::parse(old).is_ok_and(|o| {
        o.registry() == new.registry()
            && o.repository() == new.repository()
            && o.manifest_ref() == new.manifest_ref()
    })
}

/// Drift found by a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The source tag now points at another digest.
    SourceChanged {
        /// Digest recorded in status.
        from: String,
        /// Digest found now.
        to: String,
    },
    /// The destination tag we wrote is gone.
    DestinationMissing,
    /// The destination tag now points at a digest we did not write.
    DestinationOverwritten {
        /// What it points at now.
        found: String,
    },
}

/// What a check decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The destination holds the source digest: nothing to copy.
    UpToDate,
    /// Copy, reporting this drift.
    Copy(Vec<Drift>),
}

/// Compares what HEAD found with what status recorded. `wanted` is the digest the
/// destination must hold: `source_digest`, or with `spec.platforms` the selection's. A
/// source that moved while the selection stayed (a platform not selected was added) is
/// no `SourceChanged`.
pub fn decide(
    status: &ImageSyncStatus,
    destination: &str,
    source_digest: &str,
    wanted: &str,
    destination_digest: Option<&str>,
) -> Decision {
    if destination_digest == Some(wanted) {
        return Decision::UpToDate;
    }
    let mut drift = Vec::new();
    let same_selection = status.destination_digest.as_deref() == Some(wanted);
    if let Some(from) = status
        .source_digest
        .as_deref()
        .filter(|d| *d != source_digest && !same_selection)
    {
        drift.push(Drift::SourceChanged {
            from: from.to_string(),
            to: source_digest.to_string(),
        });
    }
    let same_destination = status.synced_destination.as_deref() == Some(destination);
    if let (true, Some(ours)) = (same_destination, status.destination_digest.as_deref()) {
        match destination_digest {
            None => drift.push(Drift::DestinationMissing),
            Some(found) if found != ours => drift.push(Drift::DestinationOverwritten {
                found: found.to_string(),
            }),
            Some(_) => {}
        }
    }
    Decision::Copy(drift)
}

/// How long to wait before retrying after `failures` consecutive failures.
pub fn backoff(
    failures: u32,
    permanent: bool,
    retry_after: Option<Duration>,
    interval: Duration,
) -> Duration {
    if let Some(ra) = retry_after {
        return ra.min(RETRY_AFTER_CAP).max(Duration::from_millis(100));
    }
    if permanent {
        // Needs a change elsewhere (spec changes trigger at once): retry slowly.
        return interval.min(BACKOFF_CAP).max(Duration::from_secs(1));
    }
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP)
}

/// Sets the `Ready` condition, keeping `lastTransitionTime` when the status is unchanged.
pub fn set_ready(
    status: &mut ImageSyncStatus,
    ready: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let value = if ready { "True" } else { "False" };
    let previous = status.conditions.iter().find(|c| c.type_ == READY);
    let last_transition_time = previous
        .filter(|c| c.status == value)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    let condition = Condition {
        type_: READY.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    };
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.push(condition);
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn ready_label(status: &ImageSyncStatus) -> &'static str {
    match status.conditions.iter().find(|c| c.type_ == READY) {
        Some(c) if c.status == "True" => "true",
        Some(c) if c.status == "False" => "false",
        _ => "unknown",
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
        if let Err(message) = ctx.checked_resync_interval(&obj) {
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
    if obj.status.as_ref() == Some(status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": ImageSync::api_version(&()),
        "kind": ImageSync::kind(&()),
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
            context: "patch status".into(),
            source,
        }),
    }
}

async fn apply(obj: Arc<ImageSync>, ctx: Arc<Context>, api: &Api<ImageSync>) -> Result<Action> {
    let interval = ctx.resync_interval(&obj);
    let generation = obj.metadata.generation;
    let mut status = obj.status.clone().unwrap_or_default();
    let result = apply_inner(&obj, &ctx, api, &mut status).await;
    match result {
        Ok(waiting) => {
            // Waiting for the holder of the destination: sooner while it is being deleted.
            let interval = waiting.map_or(interval, |w| w.min(interval));
            ctx.metrics
                .set_ready(&object_key(&obj), Some(ready_label(&status)));
            if obj.spec.suspend {
                // Nothing to check until the spec changes (which passes the gate).
                ctx.schedule(&obj, Duration::from_secs(86_400), false);
                return Ok(Action::await_change());
            }
            ctx.schedule(&obj, interval, false);
            Ok(Action::requeue(interval))
        }
        Err(error) => {
            let reason = error.reason();
            let message = error.to_string();
            let changed = obj
                .ready_condition()
                .is_none_or(|c| c.reason != reason || c.message != message || c.status != "False");
            status.observed_generation = generation;
            set_ready(&mut status, false, reason, &message, generation);
            ctx.metrics.set_ready(&object_key(&obj), Some("false"));
            if changed {
                ctx.events
                    .publish(&obj, EventType::Warning, reason, "Sync", &message)
                    .await;
            }
            if let Err(e) = patch_status(api, &obj, &status).await {
                warn!(error = %e, "could not write the failure to status");
            }
            Err(error)
        }
    }
}

/// `Ok(Some(wait))`: waiting for the object holding the destination; look again then.
async fn apply_inner(
    obj: &ImageSync,
    ctx: &Context,
    api: &Api<ImageSync>,
    status: &mut ImageSyncStatus,
) -> Result<Option<Duration>> {
    let spec = &obj.spec;
    let generation = obj.metadata.generation;
    if spec.suspend {
        status.observed_generation = generation;
        set_ready(
            status,
            false,
            reasons::SUSPENDED,
            "spec.suspend is true",
            generation,
        );
        return patch_status(api, obj, status).await.map(|()| None);
    }
    let source = Reference::parse(&spec.source).map_err(|source| Error::InvalidReference {
        field: "source",
        source,
    })?;
    let destination =
        Reference::parse(&spec.destination).map_err(|source| Error::InvalidReference {
            field: "destination",
            source,
        })?;
    // The tenant policy decides before any registry is touched.
    let ambient = ctx.policy_allows(obj, &source, &destination).await?;
    // An earlier object names the same tag: write and delete nothing until it is gone.
    let engine = ctx.engine_for(obj, &source, &destination, ambient).await?;
    let key = destination_key(&destination);
    let rivals = ctx.rivals(obj, &destination).await?;
    if let Some(holder) = rivals.iter().find(|r| ownership::order(r, obj).is_lt()) {
        // Reads only: the source digest it will copy (Terraform reports it at once).
        if let Ok(Some(d)) = ctx.head(&engine, &source, "source").await {
            status.source_digest = Some(d.to_string());
        }
        return wait_for_holder(obj, ctx, api, status, holder, &key).await;
    }
    let inherited = status.conflict.take();

    // The destination moved: clean up the old one (only if this object wrote it and it
    // still holds what was written).
    if let (Some(old), Some(digest)) = (
        status.synced_destination.clone(),
        status.destination_digest.clone(),
    ) {
        if !same_image_reference(&old, &destination) {
            release_old_destination(obj, ctx, status, &source, &old, &digest).await?;
            status.destination_digest = None;
            status.id = None;
            status.synced_destination = None;
            status.last_sync_time = None;
            status.ownership = None;
            status.uploaded_blobs = None;
        }
    }

    let platforms = imagesync_engine::platform::parse_platforms(&spec.platforms)
        .map_err(|e| Error::InvalidSpec(format!("spec.platforms: {e}")))?;
    // Two HEADs when nothing changed, with a selection too (see `known_selection`).
    let selection = select_platforms(&engine, &source, &platforms, known_selection(status, spec))
        .await?
        .ok_or_else(|| Error::SourceNotFound {
            reference: spec.source.clone(),
        })?;
    let source_digest = selection.source_digest.clone();
    // What the destination must hold: the source digest, or the selection's.
    let wanted = selection.digest.clone();
    let destination_digest = ctx.head(&engine, &destination, "destination").await?;
    Span::current().record("source_digest", source_digest.as_str());
    let checked = now();

    match decide(
        status,
        &spec.destination,
        source_digest.as_str(),
        wanted.as_str(),
        destination_digest.as_ref().map(Digest::as_str),
    ) {
        Decision::UpToDate => {
            ctx.metrics.check("up_to_date");
            let first = status.destination_digest.as_deref() != Some(wanted.as_str())
                || status.synced_destination.as_deref() != Some(spec.destination.as_str());
            if first {
                status.last_sync_time = Some(checked.clone());
                if !obj.is_ready() {
                    info!(digest = %wanted, "destination already up to date");
                }
            }
            let found =
                ownership::ownership_when_found(status, &key, wanted.as_str(), inherited.as_ref());
            let handed = inherited.as_ref().and_then(|c| c.uploaded_blobs.as_deref());
            if let (true, Some(h)) = (
                ownership::inherits(inherited.as_ref(), wanted.as_str()),
                handed,
            ) {
                // The previous holder's uploads come with its tag.
                status.uploaded_blobs = Some(ownership::merge_uploaded(
                    status.uploaded_blobs.as_deref(),
                    h,
                ));
            }
            if found == Ownership::Adopted && (first || status.ownership != Some(found)) {
                report_adopted(obj, ctx, status, &wanted).await;
            }
            status.ownership = Some(found);
        }
        Decision::Copy(drift) => {
            ctx.metrics
                .check(if drift.is_empty() { "copy" } else { "drift" });
            for d in &drift {
                report_drift(obj, ctx, d, &spec.destination).await;
            }
            let mut syncing = status.clone();
            syncing.observed_generation = generation;
            syncing.write_intent = Some(ownership::intent(&spec.destination, wanted.as_str()));
            set_ready(
                &mut syncing,
                false,
                reasons::SYNCING,
                &format!(
                    "copying {} ({}) to {}",
                    spec.source, source_digest, spec.destination
                ),
                generation,
            );
            patch_status(api, obj, &syncing).await?;
            *status = syncing;

            let started = Instant::now();
            let outcome = engine
                .sync(
                    &source,
                    &destination,
                    &SyncOptions {
                        progress: None,
                        expect_source_digest: Some(source_digest.clone()),
                        platforms,
                        known: Some(selection.clone()),
                        ..SyncOptions::default()
                    },
                )
                .await;
            let outcome = match outcome {
                Ok(o) => {
                    ctx.metrics
                        .sync_done("synced", o.bytes_uploaded, started.elapsed());
                    o
                }
                Err(source) => {
                    ctx.metrics.sync_done("failed", 0, started.elapsed());
                    return Err(Error::Engine {
                        context: format!("copy {} to {}", spec.source, spec.destination),
                        source,
                    });
                }
            };
            info!(
                digest = %outcome.destination_digest,
                bytes = outcome.bytes_uploaded,
                blobs_uploaded = outcome.blobs_uploaded,
                blobs_skipped = outcome.blobs_skipped,
                blobs_mounted = outcome.blobs_mounted,
                elapsed = ?started.elapsed(),
                "synced"
            );
            ctx.events
                .publish(
                    obj,
                    EventType::Normal,
                    reasons::SYNCED,
                    "Sync",
                    &format!(
                        "copied {} to {} ({}, {} bytes uploaded)",
                        spec.source,
                        spec.destination,
                        outcome.destination_digest,
                        outcome.bytes_uploaded
                    ),
                )
                .await;
            status.last_sync_time = Some(checked.clone());
            status.ownership = Some(Ownership::Written);
            status.uploaded_blobs = Some(uploaded_record(
                status,
                inherited.as_ref(),
                &uploaded_by(&outcome),
            ));
        }
    }

    status.write_intent = None;
    status.source_digest = Some(source_digest.to_string());
    status.destination_digest = Some(wanted.to_string());
    status.id = Some(destination.id(&wanted));
    status.selection = (!spec.platforms.is_empty()).then(|| crate::api::SelectionRecord {
        platforms: spec.platforms.clone(),
        source_digest: source_digest.to_string(),
        digest: wanted.to_string(),
    });
    status.synced_destination = Some(spec.destination.clone());
    status.observed_generation = generation;
    status.last_check_time = Some(checked);
    set_ready(
        status,
        true,
        reasons::SYNCED,
        &format!("{} holds {}", spec.destination, wanted),
        generation,
    );
    patch_status(api, obj, status).await.map(|()| None)
}

/// What `source` resolves to under `platforms`: a HEAD, plus a GET of the source index
/// only when its digest is not the one `known` was made from.
async fn select_platforms(
    engine: &imagesync_engine::Engine,
    source: &Reference,
    platforms: &[imagesync_engine::Platform],
    known: Option<imagesync_engine::Selection>,
) -> Result<Option<imagesync_engine::Selection>> {
    engine
        .resolve(source, platforms, known.as_ref())
        .await
        .map_err(|e| Error::Engine {
            context: format!("check source {source}"),
            source: e,
        })
}

/// The selection recorded at the last sync, when `spec.platforms` is still the one it was
/// made with.
fn known_selection(
    status: &ImageSyncStatus,
    spec: &crate::api::ImageSyncSpec,
) -> Option<imagesync_engine::Selection> {
    let record = status.selection.as_ref()?;
    if spec.platforms.is_empty() || record.platforms != spec.platforms {
        return None;
    }
    Some(imagesync_engine::Selection {
        source_digest: record.source_digest.parse().ok()?,
        digest: record.digest.parse().ok()?,
    })
}

/// The blobs a copy uploaded (not skipped, not mounted).
fn uploaded_by(outcome: &imagesync_engine::Outcome) -> Vec<String> {
    outcome.uploaded.iter().map(ToString::to_string).collect()
}

/// This object's record of uploaded blobs after a copy that uploaded `uploaded`: what it
/// recorded before (same destination), what the previous holder handed over, and these.
fn uploaded_record(
    status: &ImageSyncStatus,
    inherited: Option<&ConflictRecord>,
    uploaded: &[String],
) -> Vec<String> {
    let handed = inherited
        .filter(|c| c.written_digest.is_some())
        .and_then(|c| c.uploaded_blobs.as_deref())
        .unwrap_or_default();
    let before = ownership::merge_uploaded(status.uploaded_blobs.as_deref(), handed);
    ownership::merge_uploaded(Some(&before), uploaded)
}

/// Ready=False `DestinationConflict` naming `holder`; nothing is written or deleted.
async fn wait_for_holder(
    obj: &ImageSync,
    ctx: &Context,
    api: &Api<ImageSync>,
    status: &mut ImageSyncStatus,
    holder: &ImageSync,
    key: &str,
) -> Result<Option<Duration>> {
    let generation = obj.metadata.generation;
    let who = ownership::display(holder);
    let message = format!(
        "destination {} is also named by ImageSync {who}, created earlier, which holds it; \
         this object writes and deletes nothing until {who} is gone",
        obj.spec.destination
    );
    let changed = obj.ready_condition().is_none_or(|c| {
        c.reason != reasons::DESTINATION_CONFLICT || c.message != message || c.status != "False"
    });
    status.conflict = Some(ownership::record_of(holder, key));
    status.observed_generation = generation;
    set_ready(
        status,
        false,
        reasons::DESTINATION_CONFLICT,
        &message,
        generation,
    );
    if changed {
        info!(holder = %who, "destination conflict; waiting");
        ctx.events
            .publish(
                obj,
                EventType::Warning,
                reasons::DESTINATION_CONFLICT,
                "Sync",
                &message,
            )
            .await;
    }
    patch_status(api, obj, status).await?;
    let deleting = holder.metadata.deletion_timestamp.is_some();
    Ok(Some(if deleting {
        CONFLICT_POLL
    } else {
        ctx.resync_interval(obj)
    }))
}

/// A Normal Event: the destination already held the digest and is adopted (left in place
/// on deletion and destination moves).
async fn report_adopted(obj: &ImageSync, ctx: &Context, status: &ImageSyncStatus, digest: &Digest) {
    let legacy = status.ownership.is_none() && status.synced_destination.is_some();
    let why = if legacy {
        "its status was recorded before ownership was tracked, so it is treated as adopted"
    } else {
        "it already held that digest, so this object did not write it"
    };
    let note = format!(
        "{} holds {digest}; {why}: deleting this object or changing its destination leaves the tag in place",
        obj.spec.destination
    );
    info!("{note}");
    ctx.events
        .publish(obj, EventType::Normal, "Adopted", "Sync", &note)
        .await;
}

async fn report_drift(obj: &ImageSync, ctx: &Context, drift: &Drift, destination: &str) {
    let (kind, type_, reason, note) = match drift {
        Drift::SourceChanged { from, to } => (
            "source_changed",
            EventType::Normal,
            "SourceChanged",
            format!(
                "source {} moved from {from} to {to}; re-syncing",
                obj.spec.source
            ),
        ),
        Drift::DestinationMissing => (
            "destination_missing",
            EventType::Warning,
            "DestinationMissing",
            format!("destination {destination} was deleted outside the controller; re-syncing"),
        ),
        Drift::DestinationOverwritten { found } => (
            "destination_overwritten",
            EventType::Warning,
            "DestinationOverwritten",
            format!(
                "destination {destination} was overwritten (now {found}, not {}); re-syncing",
                obj.status
                    .as_ref()
                    .and_then(|s| s.destination_digest.as_deref())
                    .unwrap_or("?")
            ),
        ),
    };
    info!(drift = kind, "{note}");
    ctx.metrics.drift(kind);
    ctx.events.publish(obj, type_, reason, "Check", &note).await;
}

/// Removes the previous destination after `spec.destination` changed (only when the
/// policy allows the object that destination too: status could have been forged).
async fn release_old_destination(
    obj: &ImageSync,
    ctx: &Context,
    status: &ImageSyncStatus,
    source: &Reference,
    old: &str,
    digest: &str,
) -> Result<()> {
    if status.ownership != Some(Ownership::Written) {
        ctx.events
            .publish(
                obj,
                EventType::Normal,
                "DestinationChanged",
                "Delete",
                &format!(
                    "destination changed; {old} left in place: {}",
                    not_written(status)
                ),
            )
            .await;
        return Ok(());
    }
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        ctx.events
            .publish(
                obj,
                EventType::Normal,
                "DestinationChanged",
                "Delete",
                &format!("destination changed; {old} left in place (deletionPolicy Orphan)"),
            )
            .await;
        return Ok(());
    }
    let engine = match Reference::parse(old) {
        Ok(old_ref) => match ctx.policy_decision(obj, source, &old_ref).await? {
            PolicyDecision::Allow { ambient, .. } => {
                match ctx.engine_for(obj, source, &old_ref, ambient).await {
                    Ok(e) => e,
                    Err(Error::Secret { .. } | Error::SecretTypeUnsupported { .. }) => {
                        ctx.engine_without_secrets(obj, source, &old_ref, ambient)
                    }
                    Err(e) => return Err(e),
                }
            }
            PolicyDecision::Deny { message } => {
                ctx.events
                    .publish(
                        obj,
                        EventType::Warning,
                        reasons::POLICY_DENIED,
                        "Delete",
                        &format!("destination changed; {old} left in place: {message}"),
                    )
                    .await;
                return Ok(());
            }
        },
        // Not a reference: delete_destination reports it without a registry call.
        Err(_) => ctx.engine.clone(),
    };
    match delete_destination(obj, ctx, &engine, old, digest, status).await {
        DeleteResult::Done(note) => {
            ctx.events
                .publish(
                    obj,
                    EventType::Normal,
                    "DestinationChanged",
                    "Delete",
                    &format!("destination changed; {note}"),
                )
                .await;
            Ok(())
        }
        DeleteResult::Refused(note) => {
            ctx.events
                .publish(
                    obj,
                    EventType::Warning,
                    reasons::DELETE_FAILED,
                    "Delete",
                    &note,
                )
                .await;
            Ok(())
        }
        DeleteResult::Retry(error) => Err(error),
    }
}

enum DeleteResult {
    /// Deleted (or nothing to delete); the note says what happened.
    Done(String),
    /// Not deleted, and retrying will not help (not ours, registry refuses deletes, ...).
    Refused(String),
    /// Transient failure: retry.
    Retry(Error),
}

/// Why a recorded destination is not this object's to delete.
fn not_written(status: &ImageSyncStatus) -> &'static str {
    match status.ownership {
        Some(Ownership::Adopted) => {
            "this object adopted it (it already held the digest); it did not write it"
        }
        _ => "its status was recorded before ownership was tracked, so it is treated as adopted",
    }
}

async fn delete_destination(
    obj: &ImageSync,
    ctx: &Context,
    engine: &Engine,
    target: &str,
    digest: &str,
    status: &ImageSyncStatus,
) -> DeleteResult {
    let Ok(reference) = Reference::parse(target) else {
        return DeleteResult::Done(format!(
            "{target} is not a valid reference; nothing to delete"
        ));
    };
    let Ok(expect) = digest.parse::<Digest>() else {
        return DeleteResult::Done(format!(
            "recorded digest {digest} is invalid; nothing deleted"
        ));
    };
    // Only blobs this object's copies uploaded may go; without a record, none.
    let only_blobs = status.uploaded_blobs.as_ref().map(|b| {
        b.iter()
            .filter_map(|d| d.parse::<Digest>().ok())
            .collect::<std::collections::BTreeSet<_>>()
    });
    let options = DeleteOptions {
        expect_digest: Some(expect),
        delete_layers: obj.spec.delete_layers && only_blobs.is_some(),
        only_blobs,
    };
    match engine.delete(&reference, &options).await {
        Ok(report) => {
            if !report.warnings.is_empty() {
                ctx.events
                    .publish(
                        obj,
                        EventType::Warning,
                        "LayerCleanupIncomplete",
                        "Delete",
                        &format!("{target}: {}", report.warnings.join("; ")),
                    )
                    .await;
            }
            if report.already_gone {
                DeleteResult::Done(format!("{target} was already gone"))
            } else {
                DeleteResult::Done(format!(
                    "deleted {target} ({digest}; {} other tags kept, {} blobs deleted, {} kept)",
                    report.kept_tags.len(),
                    report.blobs_deleted,
                    report.blobs_kept
                ))
            }
        }
        Err(e) => {
            match e.kind() {
                ErrorKind::Conflict => DeleteResult::Refused(format!("{target} not deleted: {e}")),
                ErrorKind::Unsupported => DeleteResult::Refused(format!(
                    "{target} not deleted: the registry does not allow deletes ({e}); the tag is left in place"
                )),
                ErrorKind::Unauthorized | ErrorKind::Denied | ErrorKind::InvalidInput => {
                    DeleteResult::Refused(format!("{target} not deleted: {e}"))
                }
                _ => DeleteResult::Retry(Error::Engine {
                    context: format!("delete {target}"),
                    source: e,
                }),
            }
        }
    }
}

/// Deletion; the objects waiting for this one's destination are woken when it is done.
async fn cleanup(obj: Arc<ImageSync>, ctx: Arc<Context>, api: &Api<ImageSync>) -> Result<Action> {
    let waiting = match Reference::parse(&obj.spec.destination) {
        Ok(d) => live(ctx.rivals(&obj, &d).await?),
        Err(_) => Vec::new(),
    };
    let result = cleanup_inner(obj, ctx.clone(), api).await;
    if result.is_ok() {
        ctx.wake(&waiting);
    }
    result
}

/// The objects of `objects` not being deleted.
fn live(objects: Vec<ImageSync>) -> Vec<ImageSync> {
    objects
        .into_iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .collect()
}

/// What this object wrote: its recorded destination when its own copy wrote it, else a
/// copy that was started and may have written the tag before status said so.
fn written_by(status: &ImageSyncStatus) -> Option<(String, String)> {
    match (
        status.ownership,
        &status.synced_destination,
        &status.destination_digest,
        &status.write_intent,
    ) {
        (Some(Ownership::Written), Some(t), Some(d), _) => Some((t.clone(), d.clone())),
        (_, _, _, Some(w)) => Some((w.destination.clone(), w.digest.clone())),
        _ => None,
    }
}

async fn cleanup_inner(
    obj: Arc<ImageSync>,
    ctx: Arc<Context>,
    api: &Api<ImageSync>,
) -> Result<Action> {
    let status = obj.status.clone().unwrap_or_default();
    let done = |ctx: &Context| {
        ctx.forget(&obj);
        Action::await_change()
    };
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        ctx.events
            .publish(
                &obj,
                EventType::Normal,
                "Orphaned",
                "Delete",
                "deletionPolicy Orphan: the destination is left in place",
            )
            .await;
        return Ok(done(&ctx));
    }
    let Some((target, digest)) = written_by(&status) else {
        if let Some(target) = &status.synced_destination {
            let note = format!("{target} left in place: {}", not_written(&status));
            info!("{note}");
            ctx.events
                .publish(&obj, EventType::Normal, "LeftInPlace", "Delete", &note)
                .await;
        } else {
            debug!("nothing was written; nothing to delete");
        }
        return Ok(done(&ctx));
    };
    // Another object names the tag: it is left for that object (which takes it over, or
    // holds it already), and nothing is deleted.
    if let Ok(t) = Reference::parse(&target) {
        if let Some(next) = live(ctx.rivals(&obj, &t).await?).first() {
            let note = format!(
                "{target} left in place for ImageSync {}, which names the same destination",
                ownership::display(next)
            );
            info!("{note}");
            ctx.events
                .publish(&obj, EventType::Normal, "LeftInPlace", "Delete", &note)
                .await;
            return Ok(done(&ctx));
        }
    }
    // The policy in force now decides (for the destination actually deleted): a denied
    // object is released without any registry request, its destination left in place.
    let target_ref = Reference::parse(&target).ok();
    let source_ref = Reference::parse(&obj.spec.source).ok();
    let decision = match (&source_ref, &target_ref) {
        (Some(s), Some(t)) => ctx.policy_decision(&obj, s, t).await?,
        // Unparsable: delete_destination makes no registry call for a bad target, and a
        // bad source can only be judged without a policy.
        _ if ctx.policy.current().0.is_none() => PolicyDecision::ALLOW_ALL,
        _ => PolicyDecision::Deny {
            message: format!("spec.source {:?} is not a valid reference", obj.spec.source),
        },
    };
    let ambient = match decision {
        PolicyDecision::Allow { ambient, .. } => ambient,
        PolicyDecision::Deny { message } => {
            let note = format!("{target} left in place: {message}");
            info!("{note}; releasing the finalizer without a registry request");
            ctx.events
                .publish(
                    &obj,
                    EventType::Warning,
                    reasons::POLICY_DENIED,
                    "Delete",
                    &note,
                )
                .await;
            return Ok(done(&ctx));
        }
    };
    let engine = match (&source_ref, &target_ref) {
        (Some(s), Some(t)) => match ctx.engine_for(&obj, s, t, ambient).await {
            Ok(e) => e,
            // Without the Secret, try the credentials the policy allows.
            Err(Error::Secret { .. } | Error::SecretTypeUnsupported { .. }) => {
                ctx.engine_without_secrets(&obj, s, t, ambient)
            }
            Err(e) => return Err(e),
        },
        // No policy (see above): the standard credentials, as before.
        _ => ctx.engine.clone(),
    };
    match delete_destination(&obj, &ctx, &engine, &target, &digest, &status).await {
        DeleteResult::Done(note) => {
            info!("{note}");
            ctx.events
                .publish(&obj, EventType::Normal, "Deleted", "Delete", &note)
                .await;
            Ok(done(&ctx))
        }
        DeleteResult::Refused(note) => {
            warn!("{note}; releasing the finalizer");
            ctx.events
                .publish(
                    &obj,
                    EventType::Warning,
                    reasons::DELETE_FAILED,
                    "Delete",
                    &note,
                )
                .await;
            Ok(done(&ctx))
        }
        DeleteResult::Retry(error) => {
            let deleting_for = obj
                .metadata
                .deletion_timestamp
                .as_ref()
                .and_then(|t| Timestamp::now().duration_since(t.0).try_into().ok())
                .unwrap_or(Duration::ZERO);
            if deleting_for > DELETE_GIVE_UP {
                let note = format!(
                    "gave up deleting {target} after {}s: {error}; the tag is left in place",
                    deleting_for.as_secs()
                );
                warn!("{note}");
                ctx.events
                    .publish(
                        &obj,
                        EventType::Warning,
                        reasons::DELETE_FAILED,
                        "Delete",
                        &note,
                    )
                    .await;
                return Ok(done(&ctx));
            }
            let mut failing = status.clone();
            set_ready(
                &mut failing,
                false,
                reasons::DELETE_FAILED,
                &error.to_string(),
                obj.metadata.generation,
            );
            if let Err(e) = patch_status(api, &obj, &failing).await {
                warn!(error = %e, "could not write the failure to status");
            }
            Err(error)
        }
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    api: Api<ImageSync>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // A new policy re-evaluates every object at once (the gate sees the new generation).
    let policy_changes = futures::stream::unfold(ctx.policy.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let controller = Controller::new(api, watcher::Config::default());
    // Destination conflicts are judged on the controller's own cache of every object.
    let _ = ctx.store.set(controller.store());
    // Waking objects: their gates are opened, then every object is offered (the others'
    // gates skip them without a registry request).
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = ctx.wake.set(tx);
    let wakes = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await?;
        Some(((), rx))
    });
    controller
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .reconcile_all_on(futures::stream::select(policy_changes, wakes))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                Err(error) => debug!(%error, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaa";
    const B: &str = "sha256:bbbb";
    const C: &str = "sha256:cccc";

    fn synced(dst: &str, digest: &str) -> ImageSyncStatus {
        ImageSyncStatus {
            source_digest: Some(digest.into()),
            destination_digest: Some(digest.into()),
            synced_destination: Some(dst.into()),
            ..ImageSyncStatus::default()
        }
    }

    #[test]
    fn destination_holding_the_source_digest_needs_no_copy() {
        assert_eq!(
            decide(&synced("d:1", A), "d:1", A, A, Some(A)),
            Decision::UpToDate
        );
        assert_eq!(
            decide(&ImageSyncStatus::default(), "d:1", A, A, Some(A)),
            Decision::UpToDate
        );
    }

    #[test]
    fn first_sync_copies_without_reporting_drift() {
        assert_eq!(
            decide(&ImageSyncStatus::default(), "d:1", A, A, None),
            Decision::Copy(vec![])
        );
    }

    #[test]
    fn deleted_destination_is_drift_and_copied_again() {
        assert_eq!(
            decide(&synced("d:1", A), "d:1", A, A, None),
            Decision::Copy(vec![Drift::DestinationMissing])
        );
    }

    #[test]
    fn moved_source_is_reported_with_old_and_new_digest() {
        assert_eq!(
            decide(&synced("d:1", A), "d:1", B, B, Some(A)),
            Decision::Copy(vec![Drift::SourceChanged {
                from: A.into(),
                to: B.into()
            }])
        );
    }

    #[test]
    fn a_source_that_moved_with_the_same_selection_is_no_source_change() {
        // Selected child A: the index moved from B to C (a platform was added).
        let st = ImageSyncStatus {
            source_digest: Some(B.into()),
            ..synced("d:1", A)
        };
        assert_eq!(decide(&st, "d:1", C, A, Some(A)), Decision::UpToDate);
        // The destination was deleted meanwhile: that is the only drift.
        assert_eq!(
            decide(&st, "d:1", C, A, None),
            Decision::Copy(vec![Drift::DestinationMissing])
        );
    }

    #[test]
    fn overwritten_destination_is_reported() {
        assert_eq!(
            decide(&synced("d:1", A), "d:1", A, A, Some(C)),
            Decision::Copy(vec![Drift::DestinationOverwritten { found: C.into() }])
        );
    }

    #[test]
    fn a_new_destination_is_not_drift() {
        assert_eq!(
            decide(&synced("d:1", A), "d:2", A, A, None),
            Decision::Copy(vec![])
        );
    }

    #[test]
    fn respelling_the_destination_is_not_a_move() {
        let new = Reference::parse("docker.io/library/busybox:1").unwrap();
        assert!(same_image_reference("busybox:1", &new));
        assert!(same_image_reference(
            "index.docker.io/library/busybox:1",
            &new
        ));
        assert!(!same_image_reference("busybox:2", &new));
        assert!(!same_image_reference(
            "127.0.0.1:5000/library/busybox:1",
            &new
        ));
    }

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let interval = Duration::from_secs(600);
        assert_eq!(backoff(1, false, None, interval), Duration::from_secs(1));
        assert_eq!(backoff(2, false, None, interval), Duration::from_secs(2));
        assert_eq!(backoff(4, false, None, interval), Duration::from_secs(8));
        assert_eq!(backoff(40, false, None, interval), BACKOFF_CAP);
        assert_eq!(backoff(1, true, None, interval), BACKOFF_CAP);
        assert_eq!(
            backoff(1, true, None, Duration::from_secs(20)),
            Duration::from_secs(20)
        );
        assert_eq!(
            backoff(3, false, Some(Duration::from_secs(42)), interval),
            Duration::from_secs(42)
        );
    }

    /// A hostile `Retry-After` (or interval) never yields a wait that overflows
    /// `Instant` arithmetic or the runtime's timer: every wait is capped.
    #[test]
    fn huge_retry_after_and_intervals_are_capped() {
        let now = Instant::now();
        for wait in [
            backoff(1, false, Some(Duration::MAX), Duration::MAX),
            backoff(u32::MAX, false, None, Duration::MAX),
            backoff(1, true, None, Duration::MAX),
        ] {
            assert!(wait <= RETRY_AFTER_CAP, "{wait:?}");
            assert!(now.checked_add(wait).is_some());
        }
        assert_eq!(
            backoff(1, false, Some(Duration::ZERO), Duration::MAX),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn ready_transition_time_is_kept_while_status_is_unchanged() {
        let mut s = ImageSyncStatus::default();
        set_ready(&mut s, true, reasons::SYNCED, "ok", Some(1));
        let first = s.conditions[0].last_transition_time.clone();
        std::thread::sleep(Duration::from_millis(5));
        set_ready(&mut s, true, reasons::SYNCED, "still ok", Some(2));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].last_transition_time, first);
        assert_eq!(s.conditions[0].observed_generation, Some(2));
        set_ready(&mut s, false, reasons::SOURCE_NOT_FOUND, "gone", Some(2));
        assert_ne!(s.conditions[0].last_transition_time, first);
        assert_eq!(s.conditions[0].reason, "SourceNotFound");
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("soon"), None);
    }
}

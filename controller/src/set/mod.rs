//! Reconcile of `ImageSyncSet` objects: one child `ImageSync` per matching tag.
//!
//! A check:
//! 1. validates what the CRD schema cannot (the filter's regular expressions and semver
//!    constraint, the intervals' range, the referrer types): `Ready=False` reason
//!    `InvalidSpec`, nothing listed, no child created or deleted;
//! 2. asks the tenant policy whether the namespace may copy the source repository to
//!    the destination repository ([`crate::policy::Policy::evaluate_repositories`]):
//!    denied, `PolicyDenied`, nothing listed, no child created or deleted. Every child
//!    is an ordinary `ImageSync`, decided by the policy on its own tags when reconciled;
//! 3. lists the source repository's tags (the engine's paginated, capped tag list,
//!    with the template's `sourceSecretRef` and the ambient credentials the policy
//!    allows) at most once per `spec.resyncInterval`: other triggers (a child's status
//!    change, our own status write) reuse the last list. A failed list changes no child
//!    (an auth or network error is never "no tags") and is retried with backoff; a
//!    source that lists no tags at all keeps the children it has;
//! 4. applies the filter and keeps exactly one child per matching tag, named by
//!    [`naming::child_name`] and owned through `ownerReferences` (controller,
//!    blockOwnerDeletion). Only children whose owner reference carries the set's uid are
//!    updated or deleted; an object with a child's name that the set does not own is
//!    left alone (`NameConflict`). More than [`MAX_CHILDREN`] matching tags change
//!    nothing (`TooManyTags`);
//! 5. writes the counts (matched, children, ready, failed) and `Ready`.
//!
//! A child whose tag stops matching is deleted after the set's `deletionPolicy` is
//! written to it (conditional on the resourceVersion of that write): with `Orphan` its
//! cleanup leaves the mirrored image in the registry, with `Delete` its cleanup removes
//! the destination tag, only if the child's own copy wrote it.
//!
//! Layout: this file (the [`SetContext`], [`reconcile`], [`error_policy`], [`run`]),
//! `naming` (child names, labels, spec), `plan` (the pure diff and counts), `children`
//! (the API writes), `status` and `filter` (the engine's tag filter).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use imagesync_engine::Reference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use tracing::{debug, info, instrument, warn};

use crate::api::set::{set_reasons, MAX_CHILDREN, SET_UID_LABEL};
use crate::api::{reasons, ImageSync, ImageSyncSet, ImageSyncSetStatus};
use crate::events::EventType;
use crate::policy::{Ambient, Decision as PolicyDecision};
use crate::reconcile::{backoff, Context};
use crate::{Error, Result};

mod children;
mod filter;
pub mod naming;
pub mod plan;
mod status;

use status::Verdict;

/// A check with children still changing (a child being deleted, a write that lost a
/// race) looks again this soon.
const PENDING_POLL: Duration = Duration::from_secs(2);

/// Everything a set's reconcile needs: the `ImageSync` controller's [`Context`]
/// (client, engine cache, policy, events, metrics) and the set's own state.
pub struct SetContext {
    /// The shared controller context.
    pub rc: Arc<Context>,
    /// Every child (objects with the set-uid label), set by [`run`].
    children: OnceLock<Store<ImageSync>>,
    /// The last tag list of each set, by uid.
    lists: Mutex<HashMap<String, Listed>>,
    /// Every set (set by [`run`]): the lists of sets that are gone are dropped.
    sets: OnceLock<Store<ImageSyncSet>>,
}

/// A set's last tag list (or failure), and when the next is due.
#[derive(Clone, Debug)]
struct Listed {
    key: ListKey,
    tags: Option<Vec<String>>,
    due: Instant,
    failures: u32,
}

/// A new generation or tenant policy lists again at once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ListKey {
    generation: Option<i64>,
    policy: u64,
}

/// What the tag list step gave.
enum Listing {
    /// Listed now.
    Fresh(Vec<String>),
    /// The last list, still current.
    Cached(Vec<String>),
    /// The last list failed; the next attempt is in this long.
    Backoff(Duration),
}

/// The spec, checked.
struct Checked {
    filter: imagesync_engine::tagset::CompiledFilter,
    interval: Duration,
    source: Reference,
    destination: Reference,
}

impl SetContext {
    /// A set context over the `ImageSync` controller's.
    pub fn new(rc: Arc<Context>) -> SetContext {
        SetContext {
            rc,
            children: OnceLock::new(),
            lists: Mutex::new(HashMap::new()),
            sets: OnceLock::new(),
        }
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listed>> {
        match self.lists.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn list_key(&self, set: &ImageSyncSet) -> ListKey {
        ListKey {
            generation: set.metadata.generation,
            policy: self.rc.policy.generation(),
        }
    }

    /// `spec.resyncInterval` checked (the default when unset).
    fn interval(&self, set: &ImageSyncSet) -> Result<Duration, String> {
        match set.spec.resync_interval.as_deref() {
            None => Ok(self.rc.default_resync),
            Some(v) => crate::duration::check_resync(v, self.rc.min_resync),
        }
    }

    /// The objects in `set`'s namespace that name it as their controller.
    fn children_of(&self, set: &ImageSyncSet) -> Vec<ImageSync> {
        let Some(store) = self.children.get() else {
            return Vec::new();
        };
        let uid = set.uid().unwrap_or_default();
        let ns = set.namespace();
        store
            .state()
            .iter()
            .filter(|c| c.namespace() == ns && naming::is_owned_by(c, &uid))
            .map(|c| c.as_ref().clone())
            .collect()
    }

    /// What the CRD schema cannot check.
    #[allow(clippy::result_large_err)] // the crate's one error type, as every async fn here returns
    fn check_spec(&self, set: &ImageSyncSet) -> Result<Checked> {
        let interval = self.interval(set).map_err(Error::InvalidSpec)?;
        let t = &set.spec.template;
        if let Some(v) = t.resync_interval.as_deref() {
            crate::duration::check_resync(v, self.rc.min_resync).map_err(|e| {
                Error::InvalidSpec(e.replace("spec.resyncInterval", "spec.template.resyncInterval"))
            })?;
        }
        imagesync_engine::ReferrerPolicy::checked(t.referrers, &t.referrer_types)
            .map_err(|e| Error::InvalidSpec(format!("spec.template.referrerTypes: {e}")))?;
        let source = repository(&set.spec.source, "source")?;
        let destination = repository(&set.spec.destination, "destination")?;
        let filter = filter::compile(set).map_err(Error::InvalidSpec)?;
        Ok(Checked {
            filter,
            interval,
            source,
            destination,
        })
    }

    /// The ambient credentials the policy allows the set, or why it is denied.
    async fn admit(&self, set: &ImageSyncSet, checked: &Checked) -> Result<Ambient> {
        let ns = set.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        let decision = self
            .rc
            .namespace_decision(&ns, |policy, labels| {
                policy.evaluate_repositories(&ns, labels, &checked.source, &checked.destination)
            })
            .await?;
        match decision {
            PolicyDecision::Allow { ambient, .. } => Ok(ambient),
            PolicyDecision::Deny { message } => Err(Error::PolicyDenied { message }),
        }
    }

    /// The source's tags: the last list while it is current, else a new one.
    async fn tags(
        &self,
        set: &ImageSyncSet,
        checked: &Checked,
        ambient: Ambient,
    ) -> Result<Listing> {
        let uid = set.uid().unwrap_or_default();
        let key = self.list_key(set);
        let now = Instant::now();
        if let Some(l) = self
            .lists()
            .get(&uid)
            .filter(|l| l.key == key && l.due > now)
        {
            return Ok(match &l.tags {
                Some(t) => Listing::Cached(t.clone()),
                None => Listing::Backoff(l.due - now),
            });
        }
        let probe = ImageSync {
            metadata: ObjectMeta {
                name: Some(set.name_any()),
                namespace: set.namespace(),
                ..ObjectMeta::default()
            },
            spec: naming::child_spec(set, "latest"),
            status: None,
        };
        let engine = self
            .rc
            .engine_for(&probe, &checked.source, &checked.destination, ambient)
            .await?;
        let listed = engine.list_tags(&checked.source).await;
        let tags = match listed {
            Ok(t) => t,
            Err(source) => {
                self.rc.metrics.set_tag_list("error");
                return Err(Error::Engine {
                    context: format!("list the tags of {}", checked.source.repo_name()),
                    source,
                });
            }
        };
        self.rc.metrics.set_tag_list("ok");
        debug!(tags = tags.len(), "listed the source's tags");
        let due = now.checked_add(checked.interval).unwrap_or(now);
        self.forget_gone_sets();
        self.lists().insert(
            uid,
            Listed {
                key,
                tags: Some(tags.clone()),
                due,
                failures: 0,
            },
        );
        Ok(Listing::Fresh(tags))
    }

    /// Drops the lists of sets no longer in the cache (deleted without our seeing it).
    fn forget_gone_sets(&self) {
        let Some(store) = self.sets.get() else {
            return;
        };
        let live: std::collections::HashSet<String> =
            store.state().iter().filter_map(|s| s.uid()).collect();
        self.lists().retain(|uid, _| live.contains(uid));
    }

    /// The wait after a failure of `set` (its failures counted; its next list due then).
    fn failed(&self, set: &ImageSyncSet, error: &Error) -> Duration {
        let uid = set.uid().unwrap_or_default();
        let key = self.list_key(set);
        let interval = self.interval(set).unwrap_or(self.rc.default_resync);
        let now = Instant::now();
        let mut lists = self.lists();
        let entry = lists.entry(uid).or_insert(Listed {
            key: key.clone(),
            tags: None,
            due: now,
            failures: 0,
        });
        if entry.key != key {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        let retry_after = error.engine_error().and_then(|e| e.retry_after());
        let wait = backoff(entry.failures, error.is_permanent(), retry_after, interval);
        entry.key = key;
        entry.tags = None;
        entry.due = now.checked_add(wait).unwrap_or(now);
        wait
    }

    /// Time until `set`'s next list.
    fn until_due(&self, set: &ImageSyncSet) -> Duration {
        let uid = set.uid().unwrap_or_default();
        let now = Instant::now();
        self.lists()
            .get(&uid)
            .map_or(self.rc.default_resync, |l| {
                l.due.saturating_duration_since(now)
            })
            .max(Duration::from_millis(100))
    }

    /// Reports `error` (`Ready=False` with its reason; a Warning Event when that is
    /// news) and returns it for [`error_policy`].
    async fn report(
        &self,
        set: &ImageSyncSet,
        api: &Api<ImageSyncSet>,
        mut st: ImageSyncSetStatus,
        error: Error,
    ) -> Error {
        let verdict = Verdict::not_ready(error.reason(), error.to_string());
        let news = set
            .ready_condition()
            .is_none_or(|c| c.reason != verdict.reason || c.message != verdict.message);
        status::set_condition(&mut st, &verdict, set.metadata.generation);
        if news {
            self.publish(
                set,
                EventType::Warning,
                &verdict.reason,
                "Check",
                &verdict.message,
            )
            .await;
        }
        if let Err(e) = status::write(api, set, &st).await {
            warn!(error = %e, "could not write the set's status");
        }
        error
    }

    /// Creates, updates and retires children as `plan` says; the names held by objects
    /// the set does not own, and whether anything is still pending.
    async fn apply(
        &self,
        set: &ImageSyncSet,
        api: &Api<ImageSync>,
        plan: &plan::Plan,
        children: &[ImageSync],
    ) -> Result<(Vec<String>, bool)> {
        let mut conflicts = Vec::new();
        let mut pending = !plan.waiting.is_empty();
        for tag in &plan.create {
            if let children::Created::Conflict(name) = self.create_child(set, api, tag).await? {
                warn!(child = %name, %tag, "an ImageSync the set does not own has the child's name: left alone");
                conflicts.push(name);
            }
        }
        let by_name = |name: &str| children.iter().find(|c| c.name_any() == name);
        for (name, tag) in &plan.update {
            if let Some(c) = by_name(name) {
                pending |= !self.update_child(set, api, c, tag).await?;
            }
        }
        for name in &plan.retire {
            if let Some(c) = by_name(name) {
                pending |= !self.retire_child(set, api, c).await?;
            }
        }
        Ok((conflicts, pending))
    }
}

/// `value` as a repository (no tag, no digest); the schema checks the shape too.
#[allow(clippy::result_large_err)] // the crate's one error type
fn repository(value: &str, field: &'static str) -> Result<Reference> {
    let last = value.rsplit('/').next().unwrap_or_default();
    if value.contains('@') || last.contains(':') {
        return Err(Error::InvalidSpec(format!(
            "spec.{field} {value:?} must name a repository, without tag or digest"
        )));
    }
    Reference::parse(value).map_err(|source| Error::InvalidReference { field, source })
}

/// Reconciles one set (called by the kube-runtime `Controller`).
#[instrument(skip(set, ctx), fields(namespace = %set.namespace().unwrap_or_default(), set = %set.name_any(), generation = ?set.metadata.generation))]
pub async fn reconcile(set: Arc<ImageSyncSet>, ctx: Arc<SetContext>) -> Result<Action> {
    if set.metadata.deletion_timestamp.is_some() {
        // The children go with the set (Kubernetes' garbage collector, through their
        // owner references), each cleaning up as its deletion policy says.
        ctx.lists().remove(&set.uid().unwrap_or_default());
        return Ok(Action::await_change());
    }
    if let Some(store) = ctx.children.get() {
        // Never judge the children on a partial cache.
        let _ = store.wait_until_ready().await;
    }
    let ns = set.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<ImageSyncSet> = Api::namespaced(ctx.rc.client.clone(), &ns);
    let children_api: Api<ImageSync> = Api::namespaced(ctx.rc.client.clone(), &ns);
    let children = ctx.children_of(&set);
    let mut st = set.status.clone().unwrap_or_default();
    st.observed_generation = set.metadata.generation;
    status::set_counts(&mut st, None, plan::counts(&set, &children));

    let checked = match ctx.check_spec(&set) {
        Ok(c) => c,
        Err(e) => return Err(ctx.report(&set, &api, st, e).await),
    };
    if set.spec.suspend {
        let verdict = Verdict::not_ready(
            reasons::SUSPENDED,
            "spec.suspend is true: tags are not listed and children are left as they are",
        );
        status::set_condition(&mut st, &verdict, set.metadata.generation);
        status::write(&api, &set, &st).await?;
        return Ok(Action::await_change());
    }
    let ambient = match ctx.admit(&set, &checked).await {
        Ok(a) => a,
        Err(e) => return Err(ctx.report(&set, &api, st, e).await),
    };
    let tags = match ctx.tags(&set, &checked, ambient).await {
        Ok(Listing::Fresh(t)) => {
            st.last_list_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            t
        }
        Ok(Listing::Cached(t)) => t,
        Ok(Listing::Backoff(wait)) => {
            // The last list failed: its condition stays, only the counts move.
            status::write(&api, &set, &st).await?;
            return Ok(Action::requeue(wait));
        }
        Err(e) => return Err(ctx.report(&set, &api, st, e).await),
    };
    let verdict = match check_children(
        &ctx,
        &set,
        &children_api,
        &checked,
        &tags,
        &children,
        &mut st,
    )
    .await
    {
        Ok(v) => v,
        Err(e) => return Err(ctx.report(&set, &api, st, e).await),
    };
    status::set_condition(&mut st, &verdict.0, set.metadata.generation);
    status::write(&api, &set, &st).await?;
    Ok(Action::requeue(if verdict.1 {
        PENDING_POLL
    } else {
        ctx.until_due(&set)
    }))
}

/// Step 4: the children kept in step with the matching tags; the verdict, and whether
/// something is still pending.
async fn check_children(
    ctx: &SetContext,
    set: &ImageSyncSet,
    api: &Api<ImageSync>,
    checked: &Checked,
    tags: &[String],
    children: &[ImageSync],
    st: &mut ImageSyncSetStatus,
) -> Result<(Verdict, bool)> {
    let counts = plan::counts(set, children);
    if tags.is_empty() && counts.children > 0 {
        let message = format!(
            "{} lists no tags: its {} children are kept (a repository that vanished is not a reason to delete)",
            checked.source.repo_name(),
            counts.children
        );
        return Ok((
            Verdict::not_ready(reasons::SOURCE_NOT_FOUND, message),
            false,
        ));
    }
    let matched = checked.filter.select(tags);
    st.matched = i64::try_from(matched.len()).ok();
    let plan = match plan::plan(set, &matched, children) {
        Ok(p) => p,
        Err(plan::Hold::TooMany(n)) => {
            let message = format!("{n} tags match, more than the {MAX_CHILDREN} children a set may keep: nothing is created or deleted until the filter is narrowed (for example with latest)");
            return Ok((
                Verdict::not_ready(set_reasons::TOO_MANY_TAGS, message),
                false,
            ));
        }
    };
    if plan != plan::Plan::default() {
        info!(
            create = plan.create.len(),
            update = plan.update.len(),
            retire = plan.retire.len(),
            "changing children"
        );
    }
    let (conflicts, pending) = ctx.apply(set, api, &plan, children).await?;
    if !conflicts.is_empty() {
        let mut names = conflicts
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if conflicts.len() > 10 {
            names.push_str(&format!(" and {} more", conflicts.len() - 10));
        }
        let message = format!(
            "ImageSync objects this set does not own have its children's names, and are left alone: {names}"
        );
        return Ok((
            Verdict::not_ready(set_reasons::NAME_CONFLICT, message),
            pending,
        ));
    }
    Ok((status::children_verdict(matched.len(), counts), pending))
}

/// Requeue after a failed check: backoff (slow for permanent errors, `Retry-After` for
/// 429), and no tag list before then whatever triggers the set.
pub fn error_policy(set: Arc<ImageSyncSet>, error: &Error, ctx: Arc<SetContext>) -> Action {
    ctx.rc.metrics.failure(error.metric_label());
    let wait = ctx.failed(&set, error);
    warn!(
        namespace = %set.namespace().unwrap_or_default(),
        set = %set.name_any(),
        %error,
        retry_in = ?wait,
        "ImageSyncSet check failed"
    );
    Action::requeue(wait)
}

/// Runs the set controller until `shutdown` completes. `children` must cover the same
/// namespaces as `sets`.
pub async fn run(
    ctx: Arc<SetContext>,
    sets: Api<ImageSyncSet>,
    children: Api<ImageSync>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let writer = reflector::store::Writer::default();
    let _ = ctx.children.set(writer.as_reader());
    let child_events = reflector(
        writer,
        watcher(children, watcher::Config::default().labels(SET_UID_LABEL)).default_backoff(),
    )
    .applied_objects();
    let policy_changes = futures::stream::unfold(ctx.rc.policy.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    let controller = Controller::new(sets, watcher::Config::default());
    let _ = ctx.sets.set(controller.store());
    let unready =
        crate::reconcile::stopped_unready(shutdown.clone(), controller.store(), "ImageSyncSet");
    let run = controller
        .owns_stream(child_events)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .reconcile_all_on(policy_changes)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(object = %obj, "reconciled ImageSyncSet"),
                Err(error) => debug!(%error, "ImageSyncSet controller event"),
            }
        });
    tokio::select! {
        () = run => {}
        () = unready => {}
    }
}

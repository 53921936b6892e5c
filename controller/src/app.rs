//! The controller process: logging, the tenant policy, the Kubernetes client, the
//! metrics and health endpoints, the engine, leader election, and the reconcile loop
//! watched until shutdown. The flags are in [`crate::args`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use imagesync_engine::auth::StaticProvider;
use imagesync_engine::{
    AddressPolicy, CredentialProvider, Engine, InternalAddresses, RequestObserver, RetryPolicy,
};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::ListParams;
use kube::{Api, Client};
use tracing::{error, info, warn};

use crate::api::{ImageSync, ImageSyncSet};
use crate::args::Args;
use crate::events::Events;
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::policy::{self, PolicyStore, Reloader};
use crate::reconcile::{self, Context};
use crate::server::{self, ServerState};
use crate::telemetry;

fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "imagesync-controller".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}_{}_{nanos:08x}", std::process::id())
}

/// The object controller-level Events are recorded on: the Deployment when named, else
/// the Lease when leader election is on, else none.
pub fn controller_object(
    deployment: Option<&str>,
    lease: Option<&str>,
    namespace: &str,
) -> Option<ObjectReference> {
    let (api_version, kind, name) = match (deployment.filter(|d| !d.is_empty()), lease) {
        (Some(d), _) => ("apps/v1", "Deployment", d),
        (None, Some(l)) => ("coordination.k8s.io/v1", "Lease", l),
        (None, None) => return None,
    };
    Some(ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..ObjectReference::default()
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("shutting down");
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    telemetry::init(args.log.log_format);
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    // An invalid policy at startup is fatal: never run with less protection than asked.
    let policy = load_policy(args.policy_file.as_deref())?;

    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    let state = ServerState::new(metrics.clone());
    let ready = state.ready.clone();
    let healthy = state.healthy.clone();
    start_servers(args.metrics_addr, args.health_addr, state).await?;

    let base_credentials = args.registry.credentials(StaticProvider::new());
    let engine = engine(&args, base_credentials.clone(), metrics.clone())?;

    let api: Api<ImageSync> = if args.namespace.is_empty() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &args.namespace)
    };
    let identity = identity();
    let events = Events::new(client.clone(), EVENTS_CONTROLLER, &identity);
    let controller_namespace = controller_namespace(&args.leader_election_namespace, &client);
    let policy_store = policy_store(
        policy,
        &args,
        PolicyWiring {
            client: &client,
            metrics: &metrics,
            identity: &identity,
            namespace: &controller_namespace,
        },
    );
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            engine,
            base_credentials,
            metrics.clone(),
            events,
            args.default_resync_interval.0,
        )
        .with_policy(policy_store)
        .with_min_resync(args.min_resync_interval.0),
    );
    spawn_readiness(api.clone(), ready);

    info!(
        namespace = if args.namespace.is_empty() { "<all>" } else { args.namespace.as_str() },
        concurrency = args.concurrency,
        leader_elect = args.leader_elect,
        identity = %identity,
        "starting imagesync-controller"
    );

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut elector = None;
    if args.leader_elect {
        let mut e = LeaderElector::new(
            client.clone(),
            LeaseConfig {
                namespace: controller_namespace,
                name: args.lease_name.clone(),
                identity,
                lease_duration: args.lease_duration.0,
            },
        );
        tokio::select! {
            r = e.acquire() => r.context("leader election")?,
            _ = &mut shutdown => return Ok(()),
        }
        elector = Some(e);
    }
    metrics.leader.set(1);
    let sets = namespaced_or_all(&client, &args.namespace);
    let watched = Watched {
        ctx,
        api,
        sets,
        concurrency: args.concurrency,
        metrics,
        healthy,
    };
    supervise(watched, elector, shutdown).await
}

/// What [`supervise`] runs and reports to.
struct Watched {
    ctx: Arc<Context>,
    api: Api<ImageSync>,
    sets: Api<ImageSyncSet>,
    concurrency: u16,
    metrics: Arc<Metrics>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

/// Runs the reconcile loop and watches it, the Lease and the shutdown signal.
async fn supervise(
    w: Watched,
    mut elector: Option<LeaderElector>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);

    // The reconcile loop runs in its own task, watched here: if it ends for any reason
    // but our shutdown (a panic included), /healthz fails, the Lease is released and
    // the process exits non-zero, so a restart or another replica takes over.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut task = tokio::spawn(reconcile_loop(w.ctx, w.api, w.sets, w.concurrency, stop_rx));
    let stopped = tokio::select! {
        r = &mut task => Stopped::LoopEnded(loop_end_message(r)),
        lost = hold(elector.as_mut()) => Stopped::LeaseLost(lost),
        _ = &mut shutdown => Stopped::Shutdown,
    };
    w.metrics.leader.set(0);
    match stopped {
        Stopped::LeaseLost(lost) => {
            // Another replica may already be acting: stop at once (client-go does the same).
            error!(error = %lost, "lost leadership; exiting");
            std::process::exit(1);
        }
        Stopped::LoopEnded(why) => {
            w.healthy.store(false, Ordering::SeqCst);
            error!("{why}; releasing the Lease and exiting");
            if let Some(e) = &elector {
                // Bounded: exiting matters more than a clean release (the Lease then
                // expires on its own).
                if tokio::time::timeout(Duration::from_secs(5), e.release())
                    .await
                    .is_err()
                {
                    warn!("releasing the Lease timed out");
                }
            }
            bail!("{why}: exiting so that a restart or another replica takes over")
        }
        Stopped::Shutdown => {
            let _ = stop_tx.send(());
            // Reconciles in flight (a copy) may finish; the kubelet's SIGKILL comes after
            // the pod's grace period (30s by default), so stop waiting before it.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "controller task ended abnormally"),
                Err(_) => {
                    warn!(
                        grace = ?SHUTDOWN_GRACE,
                        "reconciles still running after the shutdown grace; exiting without them"
                    );
                    task.abort();
                }
            }
            if let Some(e) = &elector {
                e.release().await;
            }
            Ok(())
        }
    }
}

/// How long a shutdown waits for the reconciles in flight (below the kubelet's default
/// 30s grace period, so the Lease is still released).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// The reporting controller of the controller's Events.
const EVENTS_CONTROLLER: &str = "imagesync.dev/imagesync-controller";

/// The policy file, loaded and checked (with its bytes, for the reloader).
fn load_policy(
    policy_file: Option<&std::path::Path>,
) -> anyhow::Result<Option<(policy::Policy, Vec<u8>)>> {
    let Some(path) = policy_file else {
        return Ok(None);
    };
    let (policy, bytes) =
        policy::load_file(path).with_context(|| format!("--policy-file {}", path.display()))?;
    if policy.is_empty() {
        warn!("the policy has no rules: every ImageSync is denied");
    }
    Ok(Some((policy, bytes)))
}

/// The engine: the shared registry flags, plus what is the controller's own.
fn engine(
    args: &Args,
    credentials: Arc<dyn CredentialProvider>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Engine> {
    let config = args
        .registry
        .engine_config(StaticProvider::new())
        .credentials(credentials)
        .addresses(internal_addresses(&args.allow_internal_registries))
        // The controller requeues failed objects itself: fail fast and let long
        // Retry-After waits surface as RateLimited instead of sleeping in a worker.
        .retry(RetryPolicy {
            max_attempts: 3,
            max_retry_after: Duration::from_secs(10),
            ..RetryPolicy::default()
        })
        // Long-lived: the engine's in-memory blob locations are enough.
        .blob_cache(None)
        .user_agent(format!(
            "imagesync-controller/{}",
            env!("CARGO_PKG_VERSION")
        ))
        .observer(RequestObserver::new(move |_registry, operation, status| {
            let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
            metrics.request(operation, &status);
        }))
        .build();
    Engine::new(config).context("configuring the registry client")
}

/// The controller's namespace: the flag, else the pod's, else the kubeconfig's.
fn controller_namespace(flag: &str, client: &Client) -> String {
    if !flag.is_empty() {
        return flag.to_string();
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_string())
}

/// What the policy reloader reports to.
struct PolicyWiring<'a> {
    client: &'a Client,
    metrics: &'a Arc<Metrics>,
    identity: &'a str,
    namespace: &'a str,
}

/// The policy store, with its reloader started when a policy file was given.
fn policy_store(
    policy: Option<(policy::Policy, Vec<u8>)>,
    args: &Args,
    wiring: PolicyWiring<'_>,
) -> Arc<PolicyStore> {
    let (Some((policy, bytes)), Some(path)) = (policy, args.policy_file.clone()) else {
        warn!("no --policy-file: every namespace may sync anything with the controller's own credentials (fine for a single team; see the README on tenant safety)");
        return Arc::new(PolicyStore::allow_all());
    };
    let hash = policy.hash().to_string();
    info!(rules = policy.len(), sha256 = %hash, file = %path.display(), "tenant policy loaded");
    let store = Arc::new(PolicyStore::with_policy(policy));
    wiring.metrics.policy_loaded(store.generation(), &hash);
    let report_to = controller_object(
        args.deployment_name.as_deref(),
        args.leader_elect.then_some(args.lease_name.as_str()),
        wiring.namespace,
    );
    let reloader = Reloader {
        path,
        interval: args.policy_reload_interval.0,
        store: store.clone(),
        metrics: wiring.metrics.clone(),
        events: Events::new(wiring.client.clone(), EVENTS_CONTROLLER, wiring.identity),
        report_to,
    };
    tokio::spawn(reloader.run(bytes));
    store
}

/// Ready once the ImageSync API answers with our permissions.
fn spawn_readiness(api: Api<ImageSync>, ready: Arc<std::sync::atomic::AtomicBool>) {
    tokio::spawn(async move {
        let mut logged = false;
        loop {
            match api.list_metadata(&ListParams::default().limit(1)).await {
                Ok(_) => {
                    ready.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) if !logged => {
                    warn!(error = %e, "cannot list ImageSync objects yet (CRD installed? RBAC?)");
                    logged = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// Why [`run`] stopped waiting.
enum Stopped {
    /// SIGTERM/SIGINT.
    Shutdown,
    /// The reconcile task ended on its own (panic, or the stream ended).
    LoopEnded(String),
    /// Leadership lost.
    LeaseLost(crate::Error),
}

/// Renews the Lease until it is lost; without leader election, never completes.
async fn hold(elector: Option<&mut LeaderElector>) -> crate::Error {
    match elector {
        Some(e) => e.hold().await,
        None => std::future::pending().await,
    }
}

/// Binds the endpoints now (a bad address fails the start) and serves them in the
/// background: everything on `metrics_addr`, or `/healthz` and `/readyz` on `health_addr`.
async fn start_servers(
    metrics_addr: SocketAddr,
    health_addr: Option<SocketAddr>,
    state: ServerState,
) -> anyhow::Result<()> {
    let metrics = server::bind(metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {metrics_addr}"))?;
    let (metrics_router, health) = match health_addr {
        None => (server::router(state), None),
        Some(addr) => {
            let listener = server::bind(addr)
                .await
                .with_context(|| format!("binding --health-addr {addr}"))?;
            let metrics_only = server::router(state.clone());
            (metrics_only, Some((listener, server::health_router(state))))
        }
    };
    info!(addr = %metrics_addr, "serving /metrics{}", if health.is_none() { ", /healthz and /readyz" } else { "" });
    tokio::spawn(async move {
        if let Err(e) = server::serve(metrics, metrics_router).await {
            error!(error = %e, "metrics server stopped");
        }
    });
    if let Some((listener, router)) = health {
        info!(addr = ?health_addr, "serving /healthz and /readyz");
        tokio::spawn(async move {
            if let Err(e) = server::serve(listener, router).await {
                error!(error = %e, "health server stopped");
            }
        });
    }
    Ok(())
}

/// The reconcile loops (`ImageSync`, and `ImageSyncSet` over the same context) until
/// `stop` fires.
async fn reconcile_loop(
    ctx: Arc<Context>,
    api: Api<ImageSync>,
    sets: Api<ImageSyncSet>,
    concurrency: u16,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    use futures::FutureExt as _;
    let stop = async move {
        let _ = stop.await;
    }
    .shared();
    let set_ctx = Arc::new(crate::set::SetContext::new(ctx.clone()));
    let run_sets = crate::set::run(set_ctx, sets, api.clone(), concurrency, stop.clone());
    let run = async move {
        tokio::join!(reconcile::run(ctx, api, concurrency, stop), run_sets);
    };
    #[cfg(debug_assertions)]
    if let Some(after) = test_hooks::panic_after() {
        test_hooks::panic_after_delay(run, after).await;
        return;
    }
    run.await;
}

fn namespaced_or_all<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    if namespace.is_empty() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), namespace)
    }
}

/// The controller's internal-address rule: specs come from tenants, so even the
/// registry an object names may not be internal unless the operator listed it
/// (`ListedOnly`); `*` in the list turns the check off.
fn internal_addresses(allowed: &[String]) -> AddressPolicy {
    if allowed.iter().any(|h| h.trim() == "*") {
        return AddressPolicy::new(InternalAddresses::Allowed);
    }
    allowed
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .fold(AddressPolicy::new(InternalAddresses::ListedOnly), |p, h| {
            p.allow(h)
        })
}

/// What ended the reconcile task, for the log and the exit error.
fn loop_end_message(r: Result<(), tokio::task::JoinError>) -> String {
    match r {
        Ok(()) => "the reconcile loop ended".into(),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic".into());
            format!("the reconcile loop panicked: {text}")
        }
        Err(e) => format!("the reconcile loop was cancelled: {e}"),
    }
}

/// Test-only hook, compiled into debug builds only (release images never have it): with
/// `IMAGESYNC_TEST_PANIC_RECONCILE_LOOP_AFTER=<duration>` the reconcile task panics after
/// that long, so the e2e tests can show what a panic in the loop does (health, Lease,
/// exit code). Unset, it does nothing.
#[cfg(debug_assertions)]
mod test_hooks {
    use std::time::Duration;

    /// The environment variable.
    pub const PANIC_AFTER: &str = "IMAGESYNC_TEST_PANIC_RECONCILE_LOOP_AFTER";

    pub fn panic_after() -> Option<Duration> {
        let value = std::env::var(PANIC_AFTER).ok()?;
        crate::duration::parse(&value)
    }

    #[allow(clippy::panic)]
    pub async fn panic_after_delay(run: impl std::future::Future<Output = ()>, after: Duration) {
        tokio::select! {
            _ = run => {}
            _ = tokio::time::sleep(after) => {
                tracing::warn!("{PANIC_AFTER} is set: panicking in the reconcile task (test only)");
                panic!("test-only panic ({PANIC_AFTER})");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_events_go_to_the_deployment_else_the_lease_else_nowhere() {
        let d = controller_object(Some("isync-imagesync"), Some("lease"), "ns").unwrap();
        assert_eq!(
            (
                d.api_version.as_deref(),
                d.kind.as_deref(),
                d.name.as_deref()
            ),
            (Some("apps/v1"), Some("Deployment"), Some("isync-imagesync"))
        );
        assert_eq!(d.namespace.as_deref(), Some("ns"));
        let l = controller_object(Some(""), Some("lease"), "ns").unwrap();
        assert_eq!(
            (
                l.api_version.as_deref(),
                l.kind.as_deref(),
                l.name.as_deref()
            ),
            (Some("coordination.k8s.io/v1"), Some("Lease"), Some("lease"))
        );
        assert!(controller_object(None, None, "ns").is_none());
    }

    #[tokio::test]
    async fn a_panicking_reconcile_task_is_reported_with_its_message() {
        let panicked = tokio::spawn(async { panic!("boom") }).await;
        assert_eq!(
            loop_end_message(panicked),
            "the reconcile loop panicked: boom"
        );
        assert_eq!(
            loop_end_message(tokio::spawn(async {}).await),
            "the reconcile loop ended"
        );
    }
}

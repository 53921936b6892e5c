//! Command-line flags and process wiring.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use imagesync_engine::auth::{ChainProvider, StaticProvider};
use imagesync_engine::{
    AddressPolicy, CredentialProvider, Engine, EngineConfig, InternalAddresses, RequestObserver,
    RetryPolicy,
};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::ListParams;
use kube::{Api, Client};
use tracing::{error, info, warn};

use crate::api::ImageSync;
use crate::duration;
use crate::events::Events;
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::policy::{self, PolicyStore, Reloader};
use crate::reconcile::{self, Context};
use crate::server::{self, ServerState};
use crate::telemetry::{self, LogFormat};

/// A Go-style duration flag (`30s`, `5m`, `1h`): more than 0 and at most 720h.
#[derive(Clone, Copy, Debug)]
pub struct DurationArg(pub Duration);

impl std::str::FromStr for DurationArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        duration::check_flag(s).map(DurationArg)
    }
}

/// `imagesync-controller`: keeps `ImageSync` destinations in sync with their sources.
///
/// Connects with the in-cluster configuration or `KUBECONFIG`.
#[derive(Parser, Debug)]
#[command(name = "imagesync-controller", version, about)]
pub struct Args {
    /// Watch only this namespace (empty: all namespaces).
    #[arg(long, env = "IMAGESYNC_NAMESPACE", default_value = "")]
    namespace: String,

    /// Objects reconciled at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u16,

    /// Registry reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,

    /// PEM bundle of extra CA certificates trusted for registries.
    #[arg(long, value_name = "PATH")]
    ca_file: Option<PathBuf>,

    /// A registry host that may be on an internal address (repeatable, or
    /// comma-separated in the variable; a port is ignored). Every other loopback,
    /// link-local (cloud metadata), private or unique-local address is refused, checked
    /// after DNS resolution, whatever an ImageSync, a redirect, an upload `Location` or a
    /// token realm names; insecure registries are allowed too. `*` turns the check off.
    #[arg(
        long = "allow-internal-registry",
        value_name = "HOST",
        env = "IMAGESYNC_ALLOW_INTERNAL_REGISTRIES",
        value_delimiter = ','
    )]
    allow_internal_registries: Vec<String>,

    /// Address serving /metrics, /healthz and /readyz (for example 127.0.0.1:8080 to
    /// serve metrics on localhost only).
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

    /// Serve /healthz and /readyz on this address instead (for example when
    /// --metrics-addr is a loopback address and the kubelet must still probe the Pod).
    #[arg(long, value_name = "ADDR")]
    health_addr: Option<SocketAddr>,

    /// Run only while holding a coordination.k8s.io/v1 Lease (for several replicas).
    #[arg(long)]
    leader_elect: bool,

    /// Namespace of the Lease (default: the pod's namespace, else the kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    leader_election_namespace: String,

    /// Name of the Lease.
    #[arg(long, default_value = "imagesync-controller")]
    lease_name: String,

    /// How long a Lease stays valid without renewal.
    #[arg(long, default_value = "15s")]
    lease_duration: DurationArg,

    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,

    /// resyncInterval of objects that do not set one.
    #[arg(long, default_value = "5m")]
    default_resync_interval: DurationArg,

    /// Shortest spec.resyncInterval accepted (at least 1s); shorter values, like values
    /// over 720h, make the object Ready=False with reason InvalidSpec.
    #[arg(long, env = "IMAGESYNC_MIN_RESYNC_INTERVAL", default_value = "10s")]
    min_resync_interval: DurationArg,

    /// Tenant policy (YAML): which namespaces may copy what, with whose credentials.
    /// Without it every object is allowed and may use the controller's own credentials.
    #[arg(long, env = "IMAGESYNC_POLICY_FILE", value_name = "PATH")]
    policy_file: Option<PathBuf>,

    /// How often the policy file is re-read (a changed, valid file replaces the policy).
    #[arg(long, default_value = "10s")]
    policy_reload_interval: DurationArg,

    /// The controller's own Deployment (in the pod's namespace): controller-level Events,
    /// such as policy reload failures, are recorded on it (else on the Lease, if any).
    #[arg(long, env = "IMAGESYNC_DEPLOYMENT_NAME", value_name = "NAME")]
    deployment_name: Option<String>,
}

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

impl Args {
    /// Parses the command line and runs the controller until SIGTERM/SIGINT.
    pub async fn parse_and_run() -> anyhow::Result<()> {
        Args::parse().run().await
    }

    /// Runs the controller.
    pub async fn run(self) -> anyhow::Result<()> {
        let Args {
            namespace,
            concurrency,
            insecure_registries,
            ca_file,
            allow_internal_registries,
            metrics_addr,
            health_addr,
            leader_elect,
            leader_election_namespace,
            lease_name,
            lease_duration,
            log_format,
            default_resync_interval,
            min_resync_interval,
            policy_file,
            policy_reload_interval,
            deployment_name,
        } = self;
        telemetry::init(log_format);
        if concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        // An invalid policy at startup is fatal: never run with less protection than asked.
        let policy = match &policy_file {
            Some(path) => {
                let (policy, bytes) = policy::load_file(path)
                    .with_context(|| format!("--policy-file {}", path.display()))?;
                if policy.is_empty() {
                    warn!("the policy has no rules: every ImageSync is denied");
                }
                Some((policy, bytes))
            }
            None => None,
        };

        let client = Client::try_default()
            .await
            .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
        let metrics = Arc::new(Metrics::new());
        let state = ServerState::new(metrics.clone());
        let ready = state.ready.clone();
        let healthy = state.healthy.clone();
        start_servers(metrics_addr, health_addr, state).await?;

        let base_credentials: Arc<dyn CredentialProvider> =
            Arc::new(ChainProvider::standard(StaticProvider::new(), None));
        let engine = Engine::new(EngineConfig {
            insecure_registries,
            ca_file,
            addresses: internal_addresses(&allow_internal_registries),
            jobs: 4,
            credentials: base_credentials.clone(),
            // The controller requeues failed objects itself: fail fast and let long
            // Retry-After waits surface as RateLimited instead of sleeping in a worker.
            retry: RetryPolicy {
                max_attempts: 3,
                max_retry_after: Duration::from_secs(10),
                ..RetryPolicy::default()
            },
            // Long-lived: the engine's in-memory blob locations are enough.
            blob_cache: None,
            user_agent: format!("imagesync-controller/{}", env!("CARGO_PKG_VERSION")),
            observer: Some(RequestObserver::new({
                let metrics = metrics.clone();
                move |_registry, operation, status| {
                    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
                    metrics.request(operation, &status);
                }
            })),
            ..EngineConfig::default()
        })
        .context("configuring the registry client")?;

        let api: Api<ImageSync> = if namespace.is_empty() {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), &namespace)
        };
        let identity = identity();
        let events = Events::new(
            client.clone(),
            "imagesync.dev/imagesync-controller",
            &identity,
        );
        let controller_namespace = if !leader_election_namespace.is_empty() {
            leader_election_namespace
        } else {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| client.default_namespace().to_string())
        };
        let policy_store: Arc<PolicyStore> = match policy {
            Some((policy, bytes)) => {
                let hash = policy.hash().to_string();
                info!(rules = policy.len(), sha256 = %hash, file = %policy_file.as_deref().unwrap_or(std::path::Path::new("")).display(), "tenant policy loaded");
                let store = Arc::new(PolicyStore::with_policy(policy));
                metrics.policy_loaded(store.generation(), &hash);
                if let Some(path) = policy_file.clone() {
                    let report_to = controller_object(
                        deployment_name.as_deref(),
                        leader_elect.then_some(lease_name.as_str()),
                        &controller_namespace,
                    );
                    let reloader = Reloader {
                        path,
                        interval: policy_reload_interval.0,
                        store: store.clone(),
                        metrics: metrics.clone(),
                        events: Events::new(
                            client.clone(),
                            "imagesync.dev/imagesync-controller",
                            &identity,
                        ),
                        report_to,
                    };
                    tokio::spawn(reloader.run(bytes));
                }
                store
            }
            None => {
                warn!("no --policy-file: every namespace may sync anything with the controller's own credentials (fine for a single team; see the README on tenant safety)");
                Arc::new(PolicyStore::allow_all())
            }
        };
        let ctx = Arc::new(
            Context::new(
                client.clone(),
                engine,
                base_credentials,
                metrics.clone(),
                events,
                default_resync_interval.0,
            )
            .with_policy(policy_store)
            .with_min_resync(min_resync_interval.0),
        );

        // Ready once the ImageSync API answers with our permissions.
        {
            let api = api.clone();
            let ready = ready.clone();
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

        info!(
            namespace = if namespace.is_empty() { "<all>" } else { namespace.as_str() },
            concurrency,
            leader_elect,
            identity = %identity,
            "starting imagesync-controller"
        );

        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let mut elector = None;
        if leader_elect {
            let mut e = LeaderElector::new(
                client.clone(),
                LeaseConfig {
                    namespace: controller_namespace,
                    name: lease_name,
                    identity,
                    lease_duration: lease_duration.0,
                },
            );
            tokio::select! {
                r = e.acquire() => r.context("leader election")?,
                _ = &mut shutdown => return Ok(()),
            }
            elector = Some(e);
        }
        metrics.leader.set(1);

        // The reconcile loop runs in its own task, watched here: if it ends for any reason
        // but our shutdown (a panic included), /healthz fails, the Lease is released and
        // the process exits non-zero, so a restart or another replica takes over.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut task = tokio::spawn(reconcile_loop(ctx, api, concurrency, stop_rx));
        let stopped = tokio::select! {
            r = &mut task => Stopped::LoopEnded(loop_end_message(r)),
            lost = hold(elector.as_mut()) => Stopped::LeaseLost(lost),
            _ = &mut shutdown => Stopped::Shutdown,
        };
        metrics.leader.set(0);
        match stopped {
            Stopped::LeaseLost(lost) => {
                // Another replica may already be acting: stop at once (client-go does the same).
                error!(error = %lost, "lost leadership; exiting");
                std::process::exit(1);
            }
            Stopped::LoopEnded(why) => {
                healthy.store(false, Ordering::SeqCst);
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
                if let Err(e) = task.await {
                    warn!(error = %e, "controller task ended abnormally");
                }
                if let Some(e) = &elector {
                    e.release().await;
                }
                Ok(())
            }
        }
    }
}

/// Why [`Args::run`] stopped waiting.
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

/// The reconcile loop until `stop` fires.
async fn reconcile_loop(
    ctx: Arc<Context>,
    api: Api<ImageSync>,
    concurrency: u16,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let run = reconcile::run(ctx, api, concurrency, async move {
        let _ = stop.await;
    });
    #[cfg(debug_assertions)]
    if let Some(after) = test_hooks::panic_after() {
        test_hooks::panic_after_delay(run, after).await;
        return;
    }
    run.await;
}

/// What ended the reconcile task, for the log and the exit error.
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

    #[test]
    fn policy_flags_parse() {
        let args = Args::try_parse_from([
            "imagesync-controller",
            "--policy-file",
            "/etc/imagesync/policy/policy.yaml",
            "--policy-reload-interval",
            "1s",
            "--deployment-name",
            "isync",
        ])
        .unwrap();
        assert_eq!(
            args.policy_file.as_deref(),
            Some(std::path::Path::new("/etc/imagesync/policy/policy.yaml"))
        );
        assert_eq!(args.policy_reload_interval.0, Duration::from_secs(1));
        assert_eq!(args.deployment_name.as_deref(), Some("isync"));
        assert!(Args::try_parse_from(["x", "--policy-reload-interval", "0s"]).is_err());
    }

    /// Huge durations in flags (which used to overflow `Instant` arithmetic later) are
    /// refused when parsing, with no panic.
    #[test]
    fn duration_flags_are_bounded() {
        for flag in [
            "--lease-duration",
            "--default-resync-interval",
            "--min-resync-interval",
            "--policy-reload-interval",
        ] {
            for bad in ["99999999999999999999h", "2562047h", "721h", "0s", "1x"] {
                assert!(
                    Args::try_parse_from(["x", flag, bad]).is_err(),
                    "{flag} {bad}"
                );
            }
            assert!(Args::try_parse_from(["x", flag, "720h"]).is_ok(), "{flag}");
        }
        let args = Args::try_parse_from(["x"]).unwrap();
        assert_eq!(args.min_resync_interval.0, duration::MIN_RESYNC);
        assert!(args.health_addr.is_none());
        let args = Args::try_parse_from([
            "x",
            "--metrics-addr",
            "127.0.0.1:9090",
            "--health-addr",
            "0.0.0.0:8081",
        ])
        .unwrap();
        assert!(args.metrics_addr.ip().is_loopback());
        assert_eq!(args.health_addr.map(|a| a.port()), Some(8081));
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

//! Command-line flags and process wiring.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use imagesync_engine::auth::{ChainProvider, StaticProvider};
use imagesync_engine::{CredentialProvider, Engine, EngineConfig, RequestObserver, RetryPolicy};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::ListParams;
use kube::{Api, Client};
use tracing::{error, info, warn};

use crate::api::ImageSync;
use crate::controller::{self, parse_duration, Context};
use crate::events::Events;
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::policy::{self, PolicyStore, Reloader};
use crate::server::{self, ServerState};
use crate::telemetry::{self, LogFormat};

/// A Go-style duration flag (`30s`, `5m`, `1h`).
#[derive(Clone, Copy, Debug)]
pub struct DurationArg(pub Duration);

impl std::str::FromStr for DurationArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s)
            .filter(|d| !d.is_zero())
            .map(DurationArg)
            .ok_or_else(|| format!("{s:?} is not a positive duration such as 30s, 5m or 1h"))
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

    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

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
            metrics_addr,
            leader_elect,
            leader_election_namespace,
            lease_name,
            lease_duration,
            log_format,
            default_resync_interval,
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
        let ready = Arc::new(AtomicBool::new(false));
        let state = ServerState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        };
        let listener_check = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("binding --metrics-addr {metrics_addr}"))?;
        drop(listener_check);
        tokio::spawn(async move {
            if let Err(e) = server::serve(metrics_addr, state).await {
                error!(error = %e, "metrics server stopped");
            }
        });

        let base_credentials: Arc<dyn CredentialProvider> =
            Arc::new(ChainProvider::standard(StaticProvider::new(), None));
        let engine = Engine::new(EngineConfig {
            insecure_registries,
            ca_file,
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
            .with_policy(policy_store),
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

        if !leader_elect {
            metrics.leader.set(1);
            controller::run(ctx, api, concurrency, shutdown_signal()).await;
            return Ok(());
        }

        let lease_namespace = controller_namespace;
        let mut elector = LeaderElector::new(
            client.clone(),
            LeaseConfig {
                namespace: lease_namespace,
                name: lease_name,
                identity,
                lease_duration: lease_duration.0,
            },
        );
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        tokio::select! {
            r = elector.acquire() => r.context("leader election")?,
            _ = &mut shutdown => return Ok(()),
        }
        metrics.leader.set(1);

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let controller = tokio::spawn(controller::run(ctx, api, concurrency, async move {
            let _ = stop_rx.await;
        }));
        let lost = tokio::select! {
            lost = elector.hold() => Some(lost),
            _ = &mut shutdown => None,
        };
        metrics.leader.set(0);
        if let Some(lost) = lost {
            // Another replica may already be acting: stop at once (client-go does the same).
            error!(error = %lost, "lost leadership; exiting");
            std::process::exit(1);
        }
        let _ = stop_tx.send(());
        if let Err(e) = controller.await {
            warn!(error = %e, "controller task ended abnormally");
        }
        elector.release().await;
        Ok(())
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
}

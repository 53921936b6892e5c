//! The policy in force, and reloading it from the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use tracing::{error, info, warn};

use crate::events::{EventType, Events};
use crate::metrics::Metrics;

use super::{Policy, PolicyError};

/// The Event reason of a policy file that could not be loaded.
pub const POLICY_INVALID: &str = "PolicyInvalid";
/// The Event reason of a policy file loaded after a change.
pub const POLICY_RELOADED: &str = "PolicyReloaded";

/// The policy in force (none: everything allowed) and its generation, shared by the
/// reconcilers and the reloader.
pub struct PolicyStore {
    current: RwLock<(Option<Arc<Policy>>, u64)>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (policy, generation) = self.current();
        f.debug_struct("PolicyStore")
            .field("rules", &policy.map(|p| p.len()))
            .field("generation", &generation)
            .finish()
    }
}

impl Default for PolicyStore {
    fn default() -> Self {
        PolicyStore::allow_all()
    }
}

impl PolicyStore {
    /// No policy: everything is allowed with ambient credentials (generation 0).
    pub fn allow_all() -> PolicyStore {
        PolicyStore {
            current: RwLock::new((None, 0)),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// A store holding `policy` (generation 1).
    pub fn with_policy(policy: Policy) -> PolicyStore {
        PolicyStore {
            current: RwLock::new((Some(Arc::new(policy)), 1)),
            changed: tokio::sync::watch::channel(1).0,
        }
    }

    /// The policy in force and its generation (bumped by every successful reload).
    pub fn current(&self) -> (Option<Arc<Policy>>, u64) {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The generation alone.
    pub fn generation(&self) -> u64 {
        self.current().1
    }

    /// Replaces the policy; returns the new generation.
    pub fn replace(&self, policy: Policy) -> u64 {
        let generation = {
            let mut g = match self.current.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            g.1 += 1;
            g.0 = Some(Arc::new(policy));
            g.1
        };
        self.changed.send_replace(generation);
        generation
    }

    /// A receiver that sees every generation change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Reads and parses a policy file.
pub fn load_file(path: &Path) -> Result<(Policy, Vec<u8>), PolicyError> {
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes.clone())
        .map_err(|_| PolicyError::Syntax("the file is not UTF-8".into()))?;
    Ok((Policy::parse(&text)?, bytes))
}

/// Re-reads the policy file every `interval` and swaps in a changed, valid policy. An
/// invalid new file keeps the last good policy and is reported once (error log, the
/// `policy_reload_errors` metric and a Warning Event on `report_to`).
pub struct Reloader {
    /// The file (a ConfigMap volume's `..data` symlink swap is seen on the next read).
    pub path: PathBuf,
    /// How often it is read.
    pub interval: Duration,
    /// Where the policy lives.
    pub store: Arc<PolicyStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Events publisher.
    pub events: Events,
    /// The controller's own object (Deployment or Lease) Events are recorded on.
    pub report_to: Option<ObjectReference>,
}

impl Reloader {
    /// Runs forever; `last` is the content loaded at startup.
    pub async fn run(self, mut last: Vec<u8>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let bytes = match std::fs::read(&self.path) {
                Ok(b) => b,
                Err(e) => {
                    // A ConfigMap volume never lacks the file; report once per outage.
                    if !last.is_empty() {
                        let err = PolicyError::Read {
                            path: self.path.clone(),
                            source: e,
                        };
                        self.report_error(&err).await;
                        last.clear();
                    }
                    continue;
                }
            };
            if bytes == last {
                continue;
            }
            last = bytes.clone();
            let parsed = String::from_utf8(bytes)
                .map_err(|_| PolicyError::Syntax("the file is not UTF-8".into()))
                .and_then(|t| Policy::parse(&t));
            match parsed {
                Ok(policy) => {
                    let (old, _) = self.store.current();
                    if old.as_ref().is_some_and(|o| o.hash() == policy.hash()) {
                        // Back to the content in force (after a bad edit): nothing changes.
                        info!("policy file is back to the policy in force");
                        continue;
                    }
                    let hash = policy.hash().to_string();
                    let rules = policy.len();
                    let generation = self.store.replace(policy);
                    self.metrics.policy_loaded(generation, &hash);
                    info!(generation, rules, sha256 = %hash, "policy reloaded; re-evaluating every object");
                    if let Some(target) = &self.report_to {
                        self.events
                            .publish_about(
                                target.clone(),
                                EventType::Normal,
                                POLICY_RELOADED,
                                "ReloadPolicy",
                                &format!(
                                    "loaded policy generation {generation} ({rules} rules, sha256 {hash}) from {}",
                                    self.path.display()
                                ),
                            )
                            .await;
                    }
                }
                Err(e) => self.report_error(&e).await,
            }
        }
    }

    async fn report_error(&self, e: &PolicyError) {
        let generation = self.store.generation();
        error!(error = %e, generation, "policy reload failed; keeping the policy in force");
        self.metrics.policy_reload_errors.inc();
        match &self.report_to {
            Some(target) => {
                self.events
                    .publish_about(
                        target.clone(),
                        EventType::Warning,
                        POLICY_INVALID,
                        "ReloadPolicy",
                        &format!("{e}; keeping policy generation {generation}"),
                    )
                    .await;
            }
            None => warn!(
                "no Deployment or Lease to record the policy error on (see --deployment-name)"
            ),
        }
    }
}

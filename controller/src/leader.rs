//! Leader election with a `coordination.k8s.io/v1` Lease (kube-runtime has none).
//!
//! The algorithm follows client-go's `leaderelection` package:
//! - a candidate takes the Lease when it is free (no holder), already its own, or when
//!   its record (holder, renew time) has not changed for `lease_duration` as observed on
//!   the candidate's own clock (no cross-machine clock comparison);
//! - every write is an update with the `resourceVersion` read before it, so two
//!   candidates can never both succeed;
//! - the leader renews every `renew_interval` and gives up leadership when it has not
//!   renewed for `renew_deadline` (< `lease_duration`), so the old leader always stops
//!   before another replica can take over;
//! - a leader shutting down cleanly releases the Lease so a standby takes over at once.
//!
//! Needs `get`, `create` and `update` on `leases` in the Lease's namespace.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::{Error, Result};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (unique per process).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
}

impl LeaseConfig {
    /// How often the leader renews (and candidates retry).
    pub fn renew_interval(&self) -> Duration {
        (self.lease_duration / 5).max(Duration::from_millis(100))
    }
    /// The leader steps down when it could not renew for this long.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration.saturating_mul(2) / 3
    }
}

/// One replica's view of the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The holder/renew-time record last seen, and when it was first seen.
    observed: Option<(String, Instant)>,
}

fn kube_err(context: &str, source: kube::Error) -> Error {
    Error::Kube {
        context: context.to_string(),
        source,
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// An elector for `config`.
    pub fn new(client: Client, config: LeaseConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) -> Result<()> {
        let mut last_error_logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "acquired leadership");
                    return Ok(());
                }
                Ok(false) => last_error_logged = false,
                Err(error) => {
                    if !last_error_logged {
                        warn!(%error, "leader election: cannot read or write the Lease; retrying");
                        last_error_logged = true;
                    }
                }
            }
            tokio::time::sleep(self.config.renew_interval()).await;
        }
    }

    /// Renews the Lease until leadership is lost; returns why.
    pub async fn hold(&mut self) -> Error {
        let mut last_renew = Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_interval()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renew = Instant::now(),
                Ok(false) => {
                    return Error::Lease(format!(
                        "lease {}/{} was taken by another replica",
                        self.config.namespace, self.config.name
                    ))
                }
                Err(error) => {
                    warn!(%error, "could not renew the leader lease");
                }
            }
            if last_renew.elapsed() > self.config.renew_deadline() {
                return Error::Lease(format!(
                    "could not renew lease {}/{} for {:?}",
                    self.config.namespace,
                    self.config.name,
                    self.config.renew_deadline()
                ));
            }
        }
    }

    /// Gives the Lease up (on clean shutdown) so another replica takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.config.name, "released leadership"),
            Err(error) => warn!(%error, "could not release the leader lease"),
        }
    }

    /// One round: `Ok(true)` when this replica holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let duration_secs =
            i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let me = self.config.identity.clone();
        let existing = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| kube_err("get lease", e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(kube_err("create lease", e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = format!(
            "{:?}|{:?}|{:?}",
            holder,
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_duration_seconds
        );
        let now_instant = Instant::now();
        let observed_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.observed = Some((record, now_instant));
                now_instant
            }
        };
        let held_duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s.max(0)).unwrap_or(0)))
            .unwrap_or(self.config.lease_duration);
        let mine = holder.as_deref() == Some(me.as_str());
        let expired = now_instant.duration_since(observed_at) > held_duration;
        if !mine && holder.is_some() && !expired {
            debug!(holder = ?holder, "lease held by another replica");
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(me);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(duration_secs);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observed = None;
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(kube_err("update lease", e)),
        }
    }
}

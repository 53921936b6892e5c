//! Prometheus metrics (served on `/metrics` in the OpenMetrics text format).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `synced`, `up_to_date`, `failed`, ...
    pub result: String,
}

/// `error` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::metric_label`].
    pub error: String,
}

/// `kind` label of drift.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// `source_changed`, `destination_missing`, `destination_overwritten`.
    pub kind: String,
}

/// `ready` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    /// `true`, `false`, `unknown`.
    pub ready: String,
}

/// Registry operations by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The engine's operation: `HEAD manifest`, `GET blob`, `PUT manifest`, ...
    pub operation: String,
    /// HTTP status of the answer (`200`, `404`, `401`, ...) or `error` for transport errors.
    pub status: String,
}

/// `sha256` label of the policy in force.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// SHA-256 (hex) of the policy file's content.
    pub sha256: String,
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started (after the not-due gate).
    pub reconciles: Counter,
    /// Reconcile failures by error label.
    pub failures: Family<ErrorLabels, Counter>,
    /// Copies attempted, by result (`synced`, `failed`).
    pub syncs: Family<ResultLabels, Counter>,
    /// Re-checks, by result (`up_to_date`, `drift`, `failed`).
    pub checks: Family<ResultLabels, Counter>,
    /// Blob bytes uploaded to destinations.
    pub bytes_copied: Counter,
    /// Duration of copies.
    pub sync_duration: Histogram,
    /// Drift detected, by kind.
    pub drift: Family<DriftLabels, Counter>,
    /// Objects by `Ready` state.
    pub objects: Family<ReadyLabels, Gauge>,
    /// Registry HTTP requests by operation and status (retries included).
    pub registry_requests: Family<RequestLabels, Counter>,
    /// 1 while this process holds the leader lease (or runs without leader election).
    pub leader: Gauge,
    /// Policy files that could not be loaded (the previous policy stays in force).
    pub policy_reload_errors: Counter,
    /// Generation of the policy in force (0: no policy file, everything allowed).
    pub policy_generation: Gauge,
    /// 1 for the hash of the policy in force.
    pub policy_info: Family<PolicyLabels, Gauge>,
    /// ImageSyncSet tag lists by result (`ok`, `error`).
    pub set_tag_lists: Family<ResultLabels, Counter>,
    /// Children created, updated and deleted by ImageSyncSets (`result`: what was done).
    pub set_children: Family<ResultLabels, Counter>,
    ready_by_object: Mutex<HashMap<String, &'static str>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `imagesync` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("imagesync");
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            syncs: Family::default(),
            checks: Family::default(),
            bytes_copied: Counter::default(),
            sync_duration: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            drift: Family::default(),
            objects: Family::default(),
            registry_requests: Family::default(),
            leader: Gauge::default(),
            policy_reload_errors: Counter::default(),
            policy_generation: Gauge::default(),
            policy_info: Family::default(),
            set_tag_lists: Family::default(),
            set_children: Family::default(),
            ready_by_object: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles run", m.reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconcile failures by error",
            m.failures.clone(),
        );
        registry.register("syncs", "Image copies by result", m.syncs.clone());
        registry.register("checks", "HEAD-only re-checks by result", m.checks.clone());
        registry.register(
            "bytes_copied",
            "Blob bytes uploaded to destinations",
            m.bytes_copied.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Duration of image copies",
            m.sync_duration.clone(),
        );
        registry.register("drift_detected", "Drift detected, by kind", m.drift.clone());
        registry.register(
            "objects",
            "ImageSync objects by Ready state",
            m.objects.clone(),
        );
        registry.register(
            "registry_requests",
            "Registry HTTP requests by operation and status",
            m.registry_requests.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            m.leader.clone(),
        );
        registry.register(
            "policy_reload_errors",
            "Policy files that could not be loaded (the previous policy stays in force)",
            m.policy_reload_errors.clone(),
        );
        registry.register(
            "policy_generation",
            "Generation of the tenant policy in force (0: no policy, everything allowed)",
            m.policy_generation.clone(),
        );
        registry.register(
            "policy_info",
            "1 for the SHA-256 of the tenant policy in force",
            m.policy_info.clone(),
        );
        registry.register(
            "set_tag_lists",
            "ImageSyncSet tag lists of the source repository, by result",
            m.set_tag_lists.clone(),
        );
        registry.register(
            "set_children",
            "Child ImageSyncs created, updated and deleted by ImageSyncSets",
            m.set_children.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts an ImageSyncSet tag list (`ok` or `error`).
    pub fn set_tag_list(&self, result: &str) {
        self.set_tag_lists
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a child an ImageSyncSet `created`, `updated` or `deleted`.
    pub fn set_child(&self, what: &str) {
        self.set_children
            .get_or_create(&ResultLabels {
                result: what.to_string(),
            })
            .inc();
    }

    /// Records the policy now in force.
    pub fn policy_loaded(&self, generation: u64, sha256: &str) {
        self.policy_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.policy_info.clear();
        self.policy_info
            .get_or_create(&PolicyLabels {
                sha256: sha256.into(),
            })
            .set(1);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a copy and its size and duration.
    pub fn sync_done(&self, result: &str, bytes: u64, elapsed: Duration) {
        self.syncs
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.bytes_copied.inc_by(bytes);
        self.sync_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one re-check.
    pub fn check(&self, result: &str) {
        self.checks
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Counts drift.
    pub fn drift(&self, kind: &str) {
        self.drift
            .get_or_create(&DriftLabels { kind: kind.into() })
            .inc();
    }

    /// Counts a failure.
    pub fn failure(&self, label: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: label.into(),
            })
            .inc();
    }

    /// Counts a registry HTTP request answered with `status`.
    pub fn request(&self, operation: &str, status: &str) {
        self.registry_requests
            .get_or_create(&RequestLabels {
                operation: operation.into(),
                status: status.into(),
            })
            .inc();
    }

    /// Records the `Ready` state of an object (`None` removes it).
    pub fn set_ready(&self, object: &str, ready: Option<&'static str>) {
        let mut map = self.ready_by_object.lock();
        let old = match ready {
            Some(r) => map.insert(object.to_string(), r),
            None => map.remove(object),
        };
        if old == ready {
            return;
        }
        if let Some(o) = old {
            self.objects
                .get_or_create(&ReadyLabels { ready: o.into() })
                .dec();
        }
        if let Some(r) = ready {
            self.objects
                .get_or_create(&ReadyLabels { ready: r.into() })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_gauge_follows_ready_changes() {
        let m = Metrics::new();
        m.set_ready("ns/a", Some("false"));
        m.set_ready("ns/a", Some("true"));
        m.set_ready("ns/b", Some("true"));
        m.set_ready("ns/b", None);
        let text = m.encode();
        assert!(
            text.contains("imagesync_objects{ready=\"true\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("imagesync_objects{ready=\"false\"} 0"),
            "{text}"
        );
    }
}

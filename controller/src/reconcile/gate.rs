//! The per-object gate: our own status writes (and relists) trigger watch events; the
//! gate skips them, without a registry request or an API call, until the next check is
//! due or the object really changed (generation, deletion, finalizers) or the tenant
//! policy changed. The watch stream drops such events before they reach the
//! `Controller` ([`lifecycle_hash`]); the gate still judges requeues and relists.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::api::{ImageSync, FINALIZER};

use super::Context;

/// What identifies "the object changed" for the gate: our own status writes change none
/// of these.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct GateKey {
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

/// The watch predicate: a hash of what the gate compares except the policy (which wakes
/// every object by itself). A watch event whose hash is unchanged (a status write, ours
/// or anyone's, a label or annotation edit) triggers no reconcile.
pub(super) fn lifecycle_hash(obj: &ImageSync) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    GateKey::of(obj, 0).hash(&mut hasher);
    Some(hasher.finish())
}

/// Checks due within a tick of each other run together: a check's next due time is moved
/// to the nearest tick of the controller's clock (by at most half a tick, either way).
/// Then the runtime wakes once a tick for every check due in it, instead of once per check:
/// with checks spread over the interval (steady state), each wake-up and its system calls
/// serve many. Rounding to the nearest tick, not up, keeps the period `resyncInterval`: a
/// check starts just after its tick, and rounding up would add almost a tick every time.
pub(super) const CHECK_TICK: Duration = Duration::from_secs(1);

/// `wait` from `now`, changed by at most half a `tick` so that it ends on the nearest tick
/// counted from `epoch`; unchanged if that tick is already past, or if the arithmetic would
/// overflow.
pub(super) fn on_tick(epoch: Instant, now: Instant, wait: Duration, tick: Duration) -> Duration {
    let since = now.saturating_duration_since(epoch).as_nanos();
    let due = since.saturating_add(wait.as_nanos());
    let tick_ns = tick.as_nanos();
    if tick_ns == 0 {
        return wait;
    }
    let Some(nearest) = due.checked_add(tick_ns / 2).map(|d| d / tick_ns * tick_ns) else {
        return wait;
    };
    match nearest.checked_sub(since).map(u64::try_from) {
        Some(Ok(ns)) if nearest > since => Duration::from_nanos(ns),
        _ => wait,
    }
}

#[derive(Clone, Debug)]
pub(super) struct Gate {
    key: GateKey,
    due: Instant,
    failures: u32,
}

pub(super) fn object_key(obj: &ImageSync) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

impl Context {
    pub(super) fn gate_key(&self, obj: &ImageSync) -> GateKey {
        GateKey::of(obj, self.policy.generation())
    }

    pub(super) fn gates(&self) -> std::sync::MutexGuard<'_, HashMap<String, Gate>> {
        match self.gates.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `Some(wait)` when nothing changed since the last reconcile and the next check is
    /// not due yet.
    pub(super) fn not_due(&self, obj: &ImageSync) -> Option<Duration> {
        let gates = self.gates();
        let gate = gates.get(&object_key(obj))?;
        if gate.key != self.gate_key(obj) {
            return None;
        }
        let now = Instant::now();
        (gate.due > now).then(|| gate.due - now)
    }

    pub(super) fn schedule(&self, obj: &ImageSync, wait: Duration, failed: bool) -> u32 {
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

    /// The wait before a check due in `wait`, moved onto the next tick.
    pub(super) fn on_tick(&self, wait: Duration) -> Duration {
        on_tick(self.epoch, Instant::now(), wait, self.check_tick)
    }

    pub(super) fn failures(&self, obj: &ImageSync) -> u32 {
        let gates = self.gates();
        gates
            .get(&object_key(obj))
            .filter(|g| g.key == self.gate_key(obj))
            .map_or(0, |g| g.failures)
    }

    pub(super) fn forget(&self, obj: &ImageSync) {
        self.gates().remove(&object_key(obj));
        self.metrics.set_ready(&object_key(obj), None);
    }

    /// Reconciles `objects` now, past their gates.
    pub(super) fn wake(&self, objects: &[ImageSync]) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_end_on_the_nearest_tick() {
        let epoch = Instant::now();
        let tick = Duration::from_secs(1);
        let at = |ms| epoch + Duration::from_millis(ms);
        // 300 ms after the epoch, a 60 s wait would end at 60.3 s: moved to 60 s.
        assert_eq!(
            on_tick(epoch, at(300), Duration::from_secs(60), tick),
            Duration::from_millis(59_700)
        );
        // 700 ms after: 60.7 s, moved to 61 s.
        assert_eq!(
            on_tick(epoch, at(700), Duration::from_secs(60), tick),
            Duration::from_millis(60_300)
        );
        // Already on a tick: unchanged.
        assert_eq!(
            on_tick(epoch, at(2_000), Duration::from_secs(30), tick),
            Duration::from_secs(30)
        );
        // Checks due anywhere within one tick's window end at the same instant.
        let ends: Vec<Instant> = [1_001, 1_200, 1_499]
            .into_iter()
            .map(|ms| at(ms) + on_tick(epoch, at(ms), Duration::from_secs(60), tick))
            .collect();
        assert!(ends.iter().all(|e| *e == at(61_000)), "{ends:?}");
        // A check that starts just after its tick keeps its period: 3 s, not 4 s.
        let mut start = at(10_000);
        for _ in 0..5 {
            let next = start + on_tick(epoch, start, Duration::from_secs(3), tick);
            assert_eq!(next.duration_since(start).as_secs_f64().round(), 3.0);
            start = next + Duration::from_millis(20);
        }
        // A tick already past (a wait under half a tick) leaves the wait alone; no
        // overflow at the largest wait; a zero tick changes nothing.
        assert_eq!(
            on_tick(epoch, at(1_000), Duration::from_millis(100), tick),
            Duration::from_millis(100)
        );
        assert_eq!(on_tick(epoch, at(1), Duration::MAX, tick), Duration::MAX);
        assert_eq!(
            on_tick(epoch, at(5), Duration::ZERO, Duration::ZERO),
            Duration::ZERO
        );
    }
}

//! Per-installation health: call counts, the last failure, and a circuit breaker that stops
//! calling a plugin that keeps failing until it cools down or the provider resets it.
//!
//! Health lives in the memory of each node: a breaker trips on the node that saw the
//! failures, and a reset applies to the node that served it.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use streamflow_runtime::FailureKind;
use uuid::Uuid;

use crate::store::now_micros;

/// Consecutive failures that open the breaker.
pub const TRIP_AFTER: u32 = 5;
/// How long an open breaker refuses calls before letting one through to test the plugin.
pub const COOL_DOWN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LastFailure {
    /// `timeout`, `memory_limit`, `stack_overflow`, `panic`, `trap`, `output_too_large`,
    /// `failed`, `invalid_input`, `not_supported`, `load`.
    #[schema(value_type = String)]
    pub kind: FailureKind,
    pub message: String,
    pub hook: String,
    /// Microseconds since the Unix epoch.
    pub at: i64,
}

/// What the provider sees of an installation's health on this node.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct HealthView {
    pub calls: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    /// `closed` (calls go through), `open` (calls are refused) or `half_open` (the next
    /// call tests the plugin).
    pub breaker: &'static str,
    pub last_failure: Option<LastFailure>,
}

#[derive(Default)]
struct Health {
    calls: u64,
    failures: u64,
    consecutive: u32,
    open_until: Option<Instant>,
    last_failure: Option<LastFailure>,
}

/// Each installation's health on this node. Calls of different installations do not
/// contend: the map is read-locked to find an entry (written only to add one), and each
/// entry has a lock of its own.
#[derive(Default)]
pub struct HealthBook {
    entries: RwLock<HashMap<Uuid, HashMap<String, Mutex<Health>>>>,
}

impl HealthBook {
    /// Runs `f` on the installation's entry, made if it is new.
    fn with<R>(&self, tenant: Uuid, plugin: &str, f: impl FnOnce(&mut Health) -> R) -> R {
        {
            let entries = self.entries.read().expect("not poisoned");
            if let Some(h) = entries.get(&tenant).and_then(|m| m.get(plugin)) {
                return f(&mut h.lock().expect("not poisoned"));
            }
        }
        let mut entries = self.entries.write().expect("not poisoned");
        let h = entries
            .entry(tenant)
            .or_default()
            .entry(plugin.to_string())
            .or_default();
        f(h.get_mut().expect("not poisoned"))
    }

    /// Runs `f` on the installation's entry if it has one.
    fn existing<R>(
        &self,
        tenant: Uuid,
        plugin: &str,
        f: impl FnOnce(&mut Health) -> R,
    ) -> Option<R> {
        let entries = self.entries.read().expect("not poisoned");
        let h = entries.get(&tenant).and_then(|m| m.get(plugin))?;
        Some(f(&mut h.lock().expect("not poisoned")))
    }

    /// Whether a call may go ahead now.
    pub fn admit(&self, tenant: Uuid, plugin: &str) -> bool {
        self.existing(tenant, plugin, |h| h.open_until)
            .flatten()
            .is_none_or(|until| Instant::now() >= until)
    }

    pub fn success(&self, tenant: Uuid, plugin: &str) {
        self.with(tenant, plugin, |h| {
            h.calls += 1;
            h.consecutive = 0;
            h.open_until = None;
        })
    }

    /// Records a failure; returns true when it opened the breaker.
    pub fn failure(
        &self,
        tenant: Uuid,
        plugin: &str,
        hook: &str,
        kind: FailureKind,
        message: &str,
    ) -> bool {
        self.with(tenant, plugin, |h| {
            h.calls += 1;
            h.failures += 1;
            h.consecutive += 1;
            h.last_failure = Some(LastFailure {
                kind,
                message: message.to_string(),
                hook: hook.to_string(),
                at: now_micros(),
            });
            if h.consecutive >= TRIP_AFTER {
                // Half-open and failing again, or tripping now: (re)open for a full cool-down.
                h.open_until = Some(Instant::now() + COOL_DOWN);
                return h.consecutive == TRIP_AFTER;
            }
            false
        })
    }

    /// Closes the breaker (the provider's reset); the counts stay.
    pub fn reset(&self, tenant: Uuid, plugin: &str) {
        self.existing(tenant, plugin, |h| {
            h.consecutive = 0;
            h.open_until = None;
        });
    }

    pub fn view(&self, tenant: Uuid, plugin: &str) -> HealthView {
        let view = self.existing(tenant, plugin, |h| {
            let breaker = match h.open_until {
                None => "closed",
                Some(until) if Instant::now() < until => "open",
                Some(_) => "half_open",
            };
            HealthView {
                calls: h.calls,
                failures: h.failures,
                consecutive_failures: h.consecutive,
                breaker,
                last_failure: h.last_failure.clone(),
            }
        });
        view.unwrap_or(HealthView {
            breaker: "closed",
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_consecutive_failures_and_resets() {
        let book = HealthBook::default();
        let t = Uuid::now_v7();
        for i in 1..TRIP_AFTER {
            assert!(
                !book.failure(t, "p", "score-lead", FailureKind::Panic, "boom"),
                "{i}"
            );
            assert!(book.admit(t, "p"));
        }
        book.success(t, "p");
        for _ in 1..TRIP_AFTER {
            book.failure(t, "p", "score-lead", FailureKind::Panic, "boom");
        }
        assert!(
            book.admit(t, "p"),
            "a success in between restarts the count"
        );
        assert!(book.failure(t, "p", "score-lead", FailureKind::Timeout, "slow"));
        assert!(!book.admit(t, "p"));
        assert!(
            book.admit(Uuid::now_v7(), "p"),
            "other tenants are unaffected"
        );
        let view = book.view(t, "p");
        assert_eq!(view.breaker, "open");
        assert_eq!(view.last_failure.unwrap().kind, FailureKind::Timeout);
        book.reset(t, "p");
        assert!(book.admit(t, "p"));
        assert_eq!(book.view(t, "p").breaker, "closed");
    }
}

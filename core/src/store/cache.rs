//! A short-lived cache of credential checks, so an authenticated request does not cost a
//! database round trip before it does any work.
//!
//! Every change that can revoke access on this node (suspending a tenant, changing or
//! disabling a user, revoking an API key) empties it at once. Another node sharing the
//! PostgreSQL database sees such a change within [`CREDENTIAL_CACHE_TTL`].

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a credential check is trusted before it is read again.
pub const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(2);
/// Entries kept before the cache is emptied (bounds memory under a flood of bad keys).
const MAX_ENTRIES: usize = 50_000;

/// A map whose entries expire after a time to live ([`CREDENTIAL_CACHE_TTL`] unless made
/// with [`ExpiringMap::with_ttl`]).
///
/// A generation counter closes the race between a slow read and a revocation: a value read
/// before [`ExpiringMap::clear`] carries the old generation and is not stored.
pub struct ExpiringMap<K, V> {
    entries: RwLock<HashMap<K, (Instant, V)>>,
    generation: AtomicU64,
    ttl: Duration,
}

impl<K: Hash + Eq, V: Clone> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        Self::with_ttl(CREDENTIAL_CACHE_TTL)
    }
}

impl<K: Hash + Eq, V: Clone> ExpiringMap<K, V> {
    /// A map whose entries are served for `ttl` after they are stored.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            ttl,
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.read().expect("not poisoned");
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// Take this before reading the value to be cached.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores `value` unless the map was cleared since `generation` was taken.
    pub fn insert(&self, key: K, value: V, generation: u64) {
        let mut entries = self.entries.write().expect("not poisoned");
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }

    pub fn clear(&self) {
        let mut entries = self.entries.write().expect("not poisoned");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_clear() {
        let map = ExpiringMap::<u32, &str>::default();
        map.insert(1, "a", map.generation());
        assert_eq!(map.get(&1), Some("a"));
        let before = map.generation();
        map.clear();
        assert_eq!(map.get(&1), None);
        map.insert(1, "stale", before);
        assert_eq!(
            map.get(&1),
            None,
            "a value read before a clear is not stored"
        );
        map.entries
            .write()
            .unwrap()
            .insert(2, (Instant::now() - CREDENTIAL_CACHE_TTL, "old"));
        assert_eq!(map.get(&2), None, "expired entries are not served");
    }
}

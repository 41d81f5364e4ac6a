//! A pool of slots shared by tenants fairly: at most `total` holders at once, and at most
//! `share` of them for any one tenant, so one tenant saturating its share leaves the rest
//! to the others. Used for plugin instances (`plugins::PluginHost`) and schema validation
//! (`records::SchemaCache`).
//!
//! A tenant's entry exists only while it holds or waits for a slot, so the map is as large
//! as the number of tenants active at this moment, never the number that ever were.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

#[derive(Clone)]
pub struct FairPool {
    inner: Arc<Inner>,
}

struct Inner {
    total: Arc<Semaphore>,
    share: usize,
    tenants: Mutex<HashMap<Uuid, Entry>>,
}

struct Entry {
    slots: Arc<Semaphore>,
    /// Holders and waiters; the entry goes when this reaches zero.
    users: usize,
}

/// A slot, given back when dropped.
pub struct FairPermit {
    // Fields drop in order: the slots first, then the tenant's registration.
    _total: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
    _registration: Registration,
}

/// One holder or waiter of a tenant's entry.
struct Registration {
    inner: Arc<Inner>,
    tenant: Uuid,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut tenants = self.inner.tenants.lock().expect("not poisoned");
        if let Some(entry) = tenants.get_mut(&self.tenant) {
            entry.users -= 1;
            if entry.users == 0 {
                tenants.remove(&self.tenant);
            }
        }
    }
}

impl FairPool {
    /// `total` slots (at least 1), at most `share` (at least 1, at most `total`) per tenant.
    pub fn new(total: usize, share: usize) -> Self {
        let total = total.max(1);
        FairPool {
            inner: Arc::new(Inner {
                total: Arc::new(Semaphore::new(total)),
                share: share.clamp(1, total),
                tenants: Mutex::default(),
            }),
        }
    }

    /// The per-tenant share.
    pub fn share(&self) -> usize {
        self.inner.share
    }

    /// Tenants holding or waiting for a slot now.
    pub fn active_tenants(&self) -> usize {
        self.inner.tenants.lock().expect("not poisoned").len()
    }

    fn register(&self, tenant: Uuid) -> (Registration, Arc<Semaphore>) {
        let mut tenants = self.inner.tenants.lock().expect("not poisoned");
        let entry = tenants.entry(tenant).or_insert_with(|| Entry {
            slots: Arc::new(Semaphore::new(self.inner.share)),
            users: 0,
        });
        entry.users += 1;
        let slots = entry.slots.clone();
        drop(tenants);
        (
            Registration {
                inner: self.inner.clone(),
                tenant,
            },
            slots,
        )
    }

    /// Waits for a slot within the tenant's share. Cancelling the wait gives everything
    /// back.
    pub async fn acquire(&self, tenant: Uuid) -> FairPermit {
        let (registration, slots) = self.register(tenant);
        // The semaphores are never closed, so acquiring only waits.
        let tenant_slot = slots
            .acquire_owned()
            .await
            .expect("fair pool semaphores are never closed");
        let total = self
            .inner
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("fair pool semaphores are never closed");
        FairPermit {
            _total: total,
            _tenant: tenant_slot,
            _registration: registration,
        }
    }

    /// A slot now, or `None` when the tenant's share or the whole pool is in use.
    pub fn try_acquire(&self, tenant: Uuid) -> Option<FairPermit> {
        let (registration, slots) = self.register(tenant);
        let tenant_slot = slots.try_acquire_owned().ok()?;
        let total = self.inner.total.clone().try_acquire_owned().ok()?;
        Some(FairPermit {
            _total: total,
            _tenant: tenant_slot,
            _registration: registration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tenant_cannot_take_the_whole_pool() {
        let pool = FairPool::new(4, 2);
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let a1 = pool.try_acquire(a).expect("first slot");
        let _a2 = pool.try_acquire(a).expect("second slot");
        assert!(pool.try_acquire(a).is_none(), "past the share");
        let _b1 = pool
            .try_acquire(b)
            .expect("another tenant still gets a slot");
        let _b2 = pool.try_acquire(b).expect("and its whole share");
        // The pool is full: nobody gets more, not even a tenant with nothing.
        assert!(pool.try_acquire(c).is_none(), "past the total");
        drop(a1);
        assert!(pool.try_acquire(b).is_none(), "b is still at its share");
        let _c1 = pool
            .try_acquire(c)
            .expect("a freed slot goes to whoever has room");
    }

    #[test]
    fn idle_tenants_leave_no_entry() {
        let pool = FairPool::new(8, 2);
        let permits: Vec<_> = (0..4)
            .map(|_| pool.try_acquire(Uuid::now_v7()).unwrap())
            .collect();
        assert_eq!(pool.active_tenants(), 4);
        drop(permits);
        assert_eq!(pool.active_tenants(), 0);
        // Refusals leave nothing behind either.
        let t = Uuid::now_v7();
        let _held = (pool.try_acquire(t).unwrap(), pool.try_acquire(t).unwrap());
        assert!(pool.try_acquire(t).is_none());
        assert_eq!(pool.active_tenants(), 1);
    }

    #[test]
    fn shares_are_clamped() {
        assert_eq!(FairPool::new(4, 0).share(), 1);
        assert_eq!(FairPool::new(4, 9).share(), 4);
        assert_eq!(FairPool::new(0, 1).share(), 1);
    }

    #[tokio::test]
    async fn a_waiter_past_its_share_waits_for_its_own_slot() {
        let pool = FairPool::new(3, 1);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let held = pool.acquire(a).await;
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let _p = pool.acquire(a).await;
            })
        };
        tokio::task::yield_now().await;
        // While a's second call waits, b is served at once.
        let b1 = pool.try_acquire(b).expect("b is not held up by a's queue");
        drop(b1);
        assert!(!waiting.is_finished());
        drop(held);
        waiting.await.unwrap();
        assert_eq!(pool.active_tenants(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_wait_gives_its_place_back() {
        let pool = FairPool::new(2, 1);
        let a = Uuid::now_v7();
        let held = pool.acquire(a).await;
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let _p = pool.acquire(a).await;
            })
        };
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        assert_eq!(pool.active_tenants(), 0);
        let _again = pool.try_acquire(a).expect("the share is whole again");
    }
}

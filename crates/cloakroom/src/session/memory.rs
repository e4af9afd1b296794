//! In-memory [`Store`](super::Store) for the single-process demo and unit tests.
//!
//! Same semantics as the Redis store: TTLs, indexes, refresh locks,
//! remember-once. One instance only: nothing is shared across processes.

use super::{Index, LockState, RecordRef, RefreshWrite, StoreError, StoredRecord};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Record {
    data: Vec<u8>,
    seen: i64,
    generation: u64,
    expires: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lock {
    Owner(String),
    /// A cool-off, until this unix ms on the lifecycle clock.
    CoolOff(i64),
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Record>,
    indexes: HashMap<(bool, String), (HashSet<String>, Instant)>,
    /// Refresh locks: owner (or a cool-off marker) and expiry.
    locks: HashMap<String, (Lock, Instant)>,
    seen_once: HashMap<String, Instant>,
    /// Shared values (`Store::put_shared`) and their expiry.
    shared: HashMap<String, (Vec<u8>, Instant)>,
    /// The reaper's schedule: handle → expiry (unix s).
    expiry: HashMap<String, i64>,
}

impl Inner {
    fn live_session(&mut self, handle: &str, now: Instant) -> Option<&mut Record> {
        if self.sessions.get(handle).is_some_and(|r| r.expires <= now) {
            self.sessions.remove(handle);
        }
        self.sessions.get_mut(handle)
    }
}

/// The memory store. Clones share the data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

fn key(index: Index, hash: &str) -> (bool, String) {
    (index == Index::Sub, hash.to_string())
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update of plain maps; the
        // maps are still structurally valid, so keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) async fn put_session(
        &self,
        r: &RecordRef,
        blob: Vec<u8>,
        seen: i64,
        generation: u64,
        ttl: Duration,
        index_ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        let mut add = |k: (bool, String)| {
            let e = g
                .indexes
                .entry(k)
                .or_insert_with(|| (HashSet::new(), now + index_ttl));
            e.0.insert(r.handle.clone());
            // Only ever extended, as in Redis (`index_add`).
            e.1 = e.1.max(now + index_ttl);
        };
        for (i, n) in r.entries() {
            add(key(i, n));
        }
        g.sessions.insert(
            r.handle.clone(),
            Record {
                data: blob,
                seen,
                generation,
                expires: now + ttl,
            },
        );
        Ok(())
    }

    pub(super) async fn get_session(
        &self,
        handle: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let mut g = self.lock();
        Ok(g.live_session(handle, Instant::now())
            .map(|r| StoredRecord {
                blob: r.data.clone(),
                seen: r.seen,
                generation: r.generation,
            }))
    }

    pub(super) async fn touch_session(
        &self,
        handle: &str,
        seen: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        Ok(g.live_session(handle, now).is_some_and(|r| {
            r.seen = seen;
            r.expires = now + ttl;
            true
        }))
    }

    pub(super) async fn write_refresh(
        &self,
        handle: &str,
        blob: Vec<u8>,
        generation: u64,
        owner: &str,
    ) -> Result<RefreshWrite, StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        let foreign = g
            .locks
            .get(handle)
            .is_some_and(|(l, exp)| *exp > now && *l != Lock::Owner(owner.to_string()));
        let Some(r) = g.live_session(handle, now) else {
            return Ok(RefreshWrite::Gone);
        };
        if r.generation != generation || foreign {
            return Ok(RefreshWrite::Fenced);
        }
        r.data = blob;
        r.generation += 1;
        Ok(RefreshWrite::Written)
    }

    pub(super) async fn take_session(
        &self,
        r: &RecordRef,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let rec = {
            let now = Instant::now();
            let mut g = self.lock();
            let taken = g.live_session(&r.handle, now).is_some();
            g.sessions.remove(&r.handle).filter(|_| taken)
        };
        self.unindex(r).await?;
        Ok(rec.map(|rec| StoredRecord {
            blob: rec.data,
            seen: rec.seen,
            generation: rec.generation,
        }))
    }

    pub(super) async fn unindex(&self, r: &RecordRef) -> Result<(), StoreError> {
        let mut g = self.lock();
        for k in r.entries().map(|(i, n)| key(i, n)) {
            if let Some(e) = g.indexes.get_mut(&k) {
                e.0.remove(&r.handle);
                if e.0.is_empty() {
                    g.indexes.remove(&k);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn index_sample(
        &self,
        index: Index,
        hash: &str,
        n: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut all = self.index_members(index, hash).await?;
        all.truncate(n);
        Ok(all)
    }

    pub(super) async fn index_members(
        &self,
        index: Index,
        hash: &str,
    ) -> Result<Vec<String>, StoreError> {
        let g = self.lock();
        Ok(match g.indexes.get(&key(index, hash)) {
            Some((set, exp)) if *exp > Instant::now() => set.iter().cloned().collect(),
            _ => Vec::new(),
        })
    }

    pub(super) async fn index_remove(
        &self,
        index: Index,
        hash: &str,
        handles: &[String],
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        let k = key(index, hash);
        if let Some(e) = g.indexes.get_mut(&k) {
            for h in handles {
                e.0.remove(h);
            }
            if e.0.is_empty() {
                g.indexes.remove(&k);
            }
        }
        Ok(())
    }

    pub(super) async fn try_lock(
        &self,
        handle: &str,
        owner: &str,
        lease: Duration,
        now_ms: i64,
    ) -> Result<LockState, StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        g.locks.retain(|_, (_, exp)| *exp > now);
        match g.locks.get(handle) {
            Some((Lock::CoolOff(until), _)) if *until > now_ms => Ok(LockState::CoolingOff(
                Duration::from_millis(u64::try_from(until - now_ms).unwrap_or(1)),
            )),
            Some((Lock::Owner(_), _)) => Ok(LockState::Held),
            _ => {
                g.locks.insert(
                    handle.to_string(),
                    (Lock::Owner(owner.to_string()), now + lease),
                );
                Ok(LockState::Acquired)
            }
        }
    }

    pub(super) async fn cool_off(
        &self,
        handle: &str,
        owner: &str,
        d: Duration,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        if let Some(l) = g.locks.get_mut(handle) {
            if l.0 == Lock::Owner(owner.to_string()) {
                let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                *l = (
                    Lock::CoolOff(now_ms.saturating_add(ms)),
                    Instant::now() + d * 2,
                );
            }
        }
        Ok(())
    }

    pub(super) async fn unlock(&self, handle: &str, owner: &str) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.locks
            .get(handle)
            .is_some_and(|(l, _)| *l == Lock::Owner(owner.to_string()))
        {
            g.locks.remove(handle);
        }
        Ok(())
    }

    #[allow(clippy::unused_async)]
    pub(super) async fn wait_replicas(
        &self,
        _replicas: u32,
        _timeout: Duration,
    ) -> Result<u32, StoreError> {
        Ok(0)
    }

    pub(super) async fn remembered(&self, hash: &str) -> Result<bool, StoreError> {
        let g = self.lock();
        Ok(g.seen_once
            .get(hash)
            .is_some_and(|exp| *exp > Instant::now()))
    }

    pub(super) async fn remember_once(
        &self,
        hash: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        g.seen_once.retain(|_, exp| *exp > now);
        if g.seen_once.contains_key(hash) {
            return Ok(false);
        }
        g.seen_once.insert(hash.to_string(), now + ttl);
        Ok(true)
    }

    pub(super) async fn put_shared(
        &self,
        hash: &str,
        blob: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        g.shared.retain(|_, (_, exp)| *exp > now);
        g.shared.insert(hash.to_string(), (blob, now + ttl));
        Ok(())
    }

    pub(super) async fn get_shared(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = Instant::now();
        let g = self.lock();
        Ok(g.shared
            .get(hash)
            .filter(|(_, exp)| *exp > now)
            .map(|(b, _)| b.clone()))
    }

    pub(super) async fn schedule(&self, handle: &str, at: i64) -> Result<(), StoreError> {
        self.lock().expiry.insert(handle.to_string(), at);
        Ok(())
    }

    pub(super) async fn unschedule(&self, handle: &str) -> Result<(), StoreError> {
        self.lock().expiry.remove(handle);
        Ok(())
    }

    pub(super) async fn due(&self, now: i64, n: usize) -> Result<Vec<String>, StoreError> {
        let g = self.lock();
        let mut due: Vec<(i64, String)> = g
            .expiry
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(h, at)| (*at, h.clone()))
            .collect();
        due.sort();
        Ok(due.into_iter().take(n).map(|(_, h)| h).collect())
    }

    pub(super) async fn delete_shared(&self, hash: &str) -> Result<(), StoreError> {
        self.lock().shared.remove(hash);
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

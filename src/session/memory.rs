//! In-memory [`Store`](super::Store) for the single-process demo and unit tests.
//!
//! Same semantics as the Redis store: TTLs, once-only pending logins, indexes, refresh locks,
//! remember-once. One instance only: nothing is shared across processes.

use super::{Index, RecordRef, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Record {
    data: Vec<u8>,
    seen: i64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Record>,
    pending: HashMap<String, (Vec<u8>, Instant)>,
    indexes: HashMap<(bool, String), (HashSet<String>, Instant)>,
    locks: HashMap<String, (String, Instant)>,
    seen_once: HashMap<String, Instant>,
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
        ttl: Duration,
        index_ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        g.sessions.insert(
            r.handle.clone(),
            Record {
                data: blob,
                seen,
                expires: now + ttl,
            },
        );
        let mut add = |k: (bool, String)| {
            let e = g
                .indexes
                .entry(k)
                .or_insert_with(|| (HashSet::new(), now + index_ttl));
            e.0.insert(r.handle.clone());
            e.1 = now + index_ttl;
        };
        add(key(Index::Sub, &r.sub_hash));
        if let Some(sid) = &r.sid_hash {
            add(key(Index::Sid, sid));
        }
        Ok(())
    }

    pub(super) async fn get_session(
        &self,
        handle: &str,
    ) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let mut g = self.lock();
        Ok(g.live_session(handle, Instant::now())
            .map(|r| (r.data.clone(), r.seen)))
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

    pub(super) async fn replace_data(
        &self,
        handle: &str,
        blob: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        Ok(g.live_session(handle, Instant::now()).is_some_and(|r| {
            r.data = blob;
            true
        }))
    }

    pub(super) async fn delete_session(&self, r: &RecordRef) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        let existed = g.live_session(&r.handle, now).is_some();
        g.sessions.remove(&r.handle);
        for k in std::iter::once(key(Index::Sub, &r.sub_hash))
            .chain(r.sid_hash.as_deref().map(|s| key(Index::Sid, s)))
        {
            if let Some(e) = g.indexes.get_mut(&k) {
                e.0.remove(&r.handle);
                if e.0.is_empty() {
                    g.indexes.remove(&k);
                }
            }
        }
        Ok(existed)
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

    pub(super) async fn put_pending(
        &self,
        state_hash: &str,
        blob: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        let now = Instant::now();
        g.pending.retain(|_, (_, exp)| *exp > now);
        g.pending.insert(state_hash.to_string(), (blob, now + ttl));
        Ok(())
    }

    pub(super) async fn take_pending(
        &self,
        state_hash: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut g = self.lock();
        Ok(g.pending
            .remove(state_hash)
            .and_then(|(b, exp)| (exp > Instant::now()).then_some(b)))
    }

    pub(super) async fn try_lock(
        &self,
        handle: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        g.locks.retain(|_, (_, exp)| *exp > now);
        if g.locks.contains_key(handle) {
            return Ok(false);
        }
        g.locks
            .insert(handle.to_string(), (token.to_string(), now + lease));
        Ok(true)
    }

    pub(super) async fn unlock(&self, handle: &str, token: &str) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.locks.get(handle).is_some_and(|(t, _)| t == token) {
            g.locks.remove(handle);
        }
        Ok(())
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

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

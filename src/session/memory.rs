//! In-memory [`Store`](super::Store) for the single-process demo and unit tests.
//!
//! Same semantics as the Redis store: TTLs, once-only pending logins, indexes. One instance only:
//! nothing is shared across processes.

use super::{Index, RecordRef, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, (Vec<u8>, Instant)>,
    pending: HashMap<String, (Vec<u8>, Instant)>,
    indexes: HashMap<(bool, String), (HashSet<String>, Instant)>,
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
        ttl: Duration,
        index_ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut g = self.lock();
        g.sessions.insert(r.handle.clone(), (blob, now + ttl));
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

    pub(super) async fn get_session(&self, handle: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut g = self.lock();
        match g.sessions.get(handle) {
            Some((b, exp)) if *exp > Instant::now() => Ok(Some(b.clone())),
            Some(_) => {
                g.sessions.remove(handle);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    pub(super) async fn delete_session(&self, r: &RecordRef) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let existed = g
            .sessions
            .remove(&r.handle)
            .is_some_and(|(_, exp)| exp > Instant::now());
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

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

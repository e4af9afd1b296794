//! The in-process session cache: opened sessions kept for a few seconds so that a busy session
//! costs no store round trip per request, while a logout anywhere still takes effect at once.
//!
//! Correctness rests on three rules:
//! 1. **Invalidation.** Every store write that ends or changes a session (delete, refresh)
//!    publishes the session's handle in the same atomic step (`session/redis.rs`); every
//!    instance's subscriber drops that entry. The writing instance drops its own at once.
//! 2. **Proof of liveness.** Every [`PING_EVERY`] the subscriber pings Redis on its own
//!    connection and, once the answer is in, applies every message that came before it. A PING
//!    sent at `t` is answered after every invalidation published before `t`, so after that the
//!    cache is exact as of `t`. Entries are served only while the last such proof is at most
//!    [`MAX_STALENESS`] old: a subscriber that is cut off, slow or dead turns the cache off
//!    within that time, and every request reads the store again. So a logout through another
//!    instance takes effect here within [`MAX_STALENESS`] in the worst case, and in practice as
//!    soon as its message arrives.
//! 3. **No stale fills.** A load that started before an invalidation was applied does not fill
//!    the cache ([`SessionCache::epoch`]), so a read racing a logout cannot bring the session
//!    back.
//!
//! Entries also expire after [`MAX_AGE`] (bounding anything done to Redis by hand, without a
//! publish), and the cache holds at most [`CAPACITY`] sessions (memory is bounded whatever the
//! number of sessions in the store).

use super::Session;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often the subscriber proves it is current.
pub const PING_EVERY: Duration = Duration::from_millis(200);
/// The oldest proof of liveness under which entries are still served.
pub const MAX_STALENESS: Duration = Duration::from_millis(1000);
/// The longest an entry is served without reading the store again.
pub const MAX_AGE: Duration = Duration::from_secs(10);
/// Sessions held at most.
pub const CAPACITY: usize = 8192;
const SHARDS: usize = 16;

struct Entry {
    session: Arc<Session>,
    filled: Instant,
}

/// See the module documentation.
pub struct SessionCache {
    shards: Box<[Mutex<HashMap<String, Entry>>]>,
    /// Bumped by every invalidation applied (and every clear).
    epoch: AtomicU64,
    /// When (ms after `base`, plus one; 0 = never) the last PING whose answer arrived was sent.
    verified: AtomicU64,
    base: Instant,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("fresh", &self.fresh())
            .finish_non_exhaustive()
    }
}

impl Default for SessionCache {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionCache {
    /// An empty cache, serving nothing until the subscriber first proves itself.
    #[must_use]
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn shard(&self, handle: &str) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Handles are base64 of a SHA-256: their first character is uniformly distributed.
        let i = handle.as_bytes().first().map_or(0, |b| usize::from(*b)) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the subscriber proved itself current recently enough to serve entries.
    #[must_use]
    pub fn fresh(&self) -> bool {
        let v = self.verified.load(Ordering::Acquire);
        v != 0 && self.now_ms().saturating_sub(v - 1) <= millis(MAX_STALENESS)
    }

    /// The subscriber sent a PING at `sent`, got its answer and applied everything before it.
    pub fn verified(&self, sent: Instant) {
        let ms = u64::try_from(sent.saturating_duration_since(self.base).as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        self.verified.fetch_max(ms, Ordering::AcqRel);
    }

    /// The subscriber lost its connection: serve nothing until it proves itself again.
    pub fn unverified(&self) {
        self.verified.store(0, Ordering::Release);
        self.clear();
    }

    /// The current invalidation epoch; read it before a store load, pass it to [`Self::fill`].
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A cached session, if the cache is fresh and the entry young enough.
    #[must_use]
    pub fn get(&self, handle: &str) -> Option<Arc<Session>> {
        if !self.fresh() {
            return None;
        }
        let mut shard = self.shard(handle);
        let entry = shard.get(handle)?;
        if entry.filled.elapsed() > MAX_AGE {
            shard.remove(handle);
            return None;
        }
        Some(entry.session.clone())
    }

    /// Caches a session loaded from the store, unless anything was invalidated since `epoch`.
    pub fn fill(&self, handle: &str, session: Arc<Session>, epoch: u64) {
        if !self.fresh() {
            return;
        }
        let mut shard = self.shard(handle);
        // Checked under the shard lock: an invalidation of this handle takes the same lock.
        if self.epoch() != epoch {
            return;
        }
        if shard.len() >= CAPACITY / SHARDS && !shard.contains_key(handle) {
            let now = Instant::now();
            shard.retain(|_, e| now.duration_since(e.filled) <= MAX_AGE);
            if shard.len() >= CAPACITY / SHARDS {
                if let Some(k) = shard.keys().next().cloned() {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(
            handle.to_string(),
            Entry {
                session,
                filled: Instant::now(),
            },
        );
    }

    /// Replaces a cached session's last-seen time (after this instance slid it).
    pub fn touched(&self, handle: &str, last_seen: i64) {
        let mut shard = self.shard(handle);
        if let Some(e) = shard.get_mut(handle) {
            let mut s = Session::clone(&e.session);
            s.last_seen = last_seen;
            e.session = Arc::new(s);
        }
    }

    /// Drops a session (it was deleted or changed).
    pub fn invalidate(&self, handle: &str) {
        let mut shard = self.shard(handle);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        shard.remove(handle);
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for s in &*self.shards {
            s.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// Sessions held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no session is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::session::Tokens;

    fn session() -> Arc<Session> {
        Arc::new(Session {
            v: 1,
            sub: "s".into(),
            sid: None,
            claims: serde_json::Map::new(),
            tokens: Tokens {
                access_token: Secret::new("a"),
                access_expires_at: None,
                refresh_token: None,
                id_token: Secret::new("i"),
            },
            created_at: 0,
            last_seen: 0,
            absolute_expires_at: i64::MAX,
            user_agent: None,
            ip: None,
        })
    }

    #[test]
    fn serves_nothing_until_verified_and_after_losing_the_subscriber() {
        let c = SessionCache::new();
        c.fill("h", session(), c.epoch());
        assert!(c.get("h").is_none(), "never verified: no fill, no hit");
        c.verified(Instant::now());
        c.fill("h", session(), c.epoch());
        assert!(c.get("h").is_some());
        c.unverified();
        assert!(c.get("h").is_none());
        c.verified(Instant::now());
        assert!(c.get("h").is_none(), "a reconnect starts empty");
    }

    #[test]
    fn a_stale_proof_turns_the_cache_off() {
        let c = SessionCache::new();
        c.verified(Instant::now());
        c.fill("h", session(), c.epoch());
        // A proof older than MAX_STALENESS.
        c.verified.store(1, Ordering::Release);
        std::thread::sleep(MAX_STALENESS + Duration::from_millis(20));
        assert!(c.get("h").is_none());
    }

    #[test]
    fn an_invalidation_during_a_load_prevents_the_fill() {
        let c = SessionCache::new();
        c.verified(Instant::now());
        let e = c.epoch();
        c.invalidate("other");
        c.fill("h", session(), e);
        assert!(c.get("h").is_none());
        c.fill("h", session(), c.epoch());
        assert!(c.get("h").is_some());
        c.invalidate("h");
        assert!(c.get("h").is_none());
    }

    #[test]
    fn capacity_is_bounded() {
        let c = SessionCache::new();
        c.verified(Instant::now());
        for i in 0..CAPACITY * 2 {
            c.fill(&format!("handle-{i}"), session(), c.epoch());
        }
        assert!(c.len() <= CAPACITY);
        c.touched("handle-0", 5);
    }
}

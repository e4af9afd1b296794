//! The in-process session cache: opened sessions kept for a few seconds so that a busy session
//! costs no store round trip per request, while a logout anywhere still takes effect at once.
//!
//! Correctness rests on three rules:
//! 1. **Invalidation.** Every store write that ends or changes a session (delete, refresh)
//!    publishes the session's handle in the same atomic step (`session/redis.rs`); every
//!    instance's subscriber drops that entry. The writing instance drops its own at once.
//! 2. **Proof of liveness.** Every [`PING_EVERY`] the instance publishes a marker of its own
//!    on each server that publishes invalidations (the one server, the Sentinel master, every
//!    Cluster master), on a connection of its own, and when its subscription to that server
//!    receives the marker, everything the server published before it has been applied: the
//!    cache is exact as of the moment the oldest of those markers was sent
//!    (`session/redis/invalidation.rs`). (A PING on the subscriber's own connection would only
//!    prove that connection alive, not that publishes reach it.)
//!    Entries are served only while the last such proof is at most [`MAX_STALENESS`] old: a
//!    subscriber that is cut off, slow or deaf turns the cache off within that time, and every
//!    request reads the store again. So a logout through another instance takes effect here
//!    within [`MAX_STALENESS`] in the worst case, and in practice as soon as its message
//!    arrives.
//! 3. **No stale fills.** A load that started before an invalidation was applied does not fill
//!    the cache ([`SessionCache::epoch`], one epoch per shard so an invalidation voids only the
//!    fills of its own shard), so a read racing a logout cannot bring the session back. Going
//!    from unverified to verified (a reconnect, when messages may have been missed) clears the
//!    cache and bumps every epoch: a load that began while nobody was subscribed never fills.
//!
//! Entries also expire after [`MAX_AGE`] (bounding anything done to Redis by hand, without a
//! publish), and the cache holds at most [`CAPACITY`] sessions (memory is bounded whatever the
//! number of sessions in the store).

use super::Session;
use std::collections::HashMap;

/// The shards' maps: the keys are store handles (SHA-256 output, base64), hashed by foldhash
/// rather than SipHash (measured on the request path).
type Map = HashMap<String, Entry, foldhash::fast::RandomState>;
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
    shards: Box<[Mutex<Map>]>,
    /// Per shard: bumped by every invalidation applied to it (and every clear).
    epochs: Box<[AtomicU64]>,
    /// When (ms after `base`, plus one; 0 = never) the last PING whose answer arrived was sent.
    verified: AtomicU64,
    base: Instant,
    /// Told of every session that ended anywhere (see [`super::EndedHooks`]).
    hooks: Arc<super::EndedHooks>,
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
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            epochs: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            verified: AtomicU64::new(0),
            base: Instant::now(),
            hooks: Arc::default(),
        }
    }

    /// A cache that tells `hooks` of the sessions other instances end.
    #[must_use]
    pub fn with_hooks(hooks: Arc<super::EndedHooks>) -> Self {
        Self {
            hooks,
            ..Self::new()
        }
    }

    /// Another instance ended this session (its record is gone): run the ended hooks.
    pub fn ended(&self, handle: &str) {
        self.hooks.run(handle);
    }

    fn shard_of(handle: &str) -> usize {
        // Handles are base64 of a SHA-256: their first character is uniformly distributed.
        handle.as_bytes().first().map_or(0, |b| usize::from(*b)) % SHARDS
    }

    fn shard(&self, handle: &str) -> std::sync::MutexGuard<'_, Map> {
        self.shards[Self::shard_of(handle)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the subscriber proved itself current recently enough to serve entries.
    #[must_use]
    pub fn fresh(&self) -> bool {
        self.fresh_at(Instant::now())
    }

    /// [`Self::fresh`] at `now` (one clock read serves a lookup's two checks).
    fn fresh_at(&self, now: Instant) -> bool {
        let v = self.verified.load(Ordering::Acquire);
        let now_ms =
            u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        v != 0 && now_ms.saturating_sub(v - 1) <= millis(MAX_STALENESS)
    }

    /// The subscriber's marker sent at `sent` came back: everything published before it has
    /// been applied. The first proof after [`Self::unverified`] (or ever) clears the cache and
    /// bumps every epoch, so no load that began unverified can fill it.
    pub fn verified(&self, sent: Instant) {
        let ms = u64::try_from(sent.saturating_duration_since(self.base).as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        if self.verified.load(Ordering::Acquire) == 0 {
            self.clear();
        }
        self.verified.fetch_max(ms, Ordering::AcqRel);
    }

    /// The subscriber lost its connection: serve nothing until it proves itself again.
    pub fn unverified(&self) {
        self.verified.store(0, Ordering::Release);
        self.clear();
    }

    /// The current invalidation epoch of `handle`'s shard; read it before a store load, pass
    /// it to [`Self::fill`].
    #[must_use]
    pub fn epoch(&self, handle: &str) -> u64 {
        self.epochs[Self::shard_of(handle)].load(Ordering::Acquire)
    }

    /// A cached session, if the cache is fresh and the entry young enough.
    #[must_use]
    pub fn get(&self, handle: &str) -> Option<Arc<Session>> {
        let now = Instant::now();
        if !self.fresh_at(now) {
            return None;
        }
        let mut shard = self.shard(handle);
        let entry = shard.get(handle)?;
        if now.saturating_duration_since(entry.filled) > MAX_AGE {
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
        if self.epoch(handle) != epoch {
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
        self.epochs[Self::shard_of(handle)].fetch_add(1, Ordering::AcqRel);
        shard.remove(handle);
    }

    /// Drops everything.
    pub fn clear(&self) {
        for (s, e) in self.shards.iter().zip(&*self.epochs) {
            let mut g = s.lock().unwrap_or_else(PoisonError::into_inner);
            e.fetch_add(1, Ordering::AcqRel);
            g.clear();
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
                access_lifetime: None,
                refresh_token: None,
                id_token: Secret::new("i"),
                dpop: None,
                derived: Default::default(),
                resources: None,
                bearer_header: Default::default(),
            },
            created_at: 0,
            last_seen: 0,
            absolute_expires_at: i64::MAX,
            user_agent: None,
            ip: None,
            remembered: false,
            idle_timeout: None,
            reconstituted: false,
            provider: None,
            issuer: None,
            client_id: None,
            generation: 0,
        })
    }

    #[test]
    fn serves_nothing_until_verified_and_after_losing_the_subscriber() {
        let c = SessionCache::new();
        c.fill("h", session(), c.epoch("h"));
        assert!(c.get("h").is_none(), "never verified: no fill, no hit");
        c.verified(Instant::now());
        c.fill("h", session(), c.epoch("h"));
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
        c.fill("h", session(), c.epoch("h"));
        // A proof older than MAX_STALENESS.
        c.verified.store(1, Ordering::Release);
        std::thread::sleep(MAX_STALENESS + Duration::from_millis(20));
        assert!(c.get("h").is_none());
    }

    #[test]
    fn an_invalidation_during_a_load_prevents_the_fill() {
        let c = SessionCache::new();
        c.verified(Instant::now());
        let e = c.epoch("h");
        c.invalidate("h2"); // same shard as "h" (same first byte)
        c.fill("h", session(), e);
        assert!(c.get("h").is_none());
        // An invalidation in another shard does not void the fill.
        let e = c.epoch("h");
        c.invalidate("a"); // another shard
        c.fill("h", session(), e);
        assert!(c.get("h").is_some());
        c.invalidate("h");
        c.fill("h", session(), c.epoch("h"));
        assert!(c.get("h").is_some());
        c.invalidate("h");
        assert!(c.get("h").is_none());
    }

    #[test]
    fn a_load_begun_unverified_never_fills_after_the_reconnect() {
        let c = SessionCache::new();
        c.verified(Instant::now());
        c.unverified();
        // A load starts while nobody is subscribed (a logout published now is lost)...
        let e = c.epoch("h");
        // ...the subscriber reconnects and proves itself...
        c.verified(Instant::now());
        // ...and the load's result must not be cached.
        c.fill("h", session(), e);
        assert!(c.get("h").is_none());
    }

    #[test]
    fn capacity_is_bounded() {
        let c = SessionCache::new();
        c.verified(Instant::now());
        for i in 0..CAPACITY * 2 {
            let h = format!("handle-{i}");
            c.fill(&h, session(), c.epoch(&h));
        }
        assert!(c.len() <= CAPACITY);
        c.touched("handle-0", 5);
    }
}

//! Sessions: the stored [`Session`] format, [`PendingLogin`], and [`Sessions`], which seals
//! records with the key ring before they reach a [`Store`].
//!
//! Owns: session ids and handles, expiry arithmetic (idle / absolute), sealing at rest.
//! Never knows store key names (those live in `session/redis.rs` and `session/memory.rs`).

pub mod cache;
pub mod memory;
pub mod redis;

use crate::crypto::{self, KeyRing};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Current stored-record format version.
pub const FORMAT_VERSION: u8 = 1;

/// Seconds since the Unix epoch.
#[must_use]
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The tokens of one session. Never leaves the server.
#[derive(Clone, Serialize, Deserialize)]
pub struct Tokens {
    /// The access token sent upstream as `Authorization: Bearer`.
    pub access_token: Secret,
    /// When the access token expires (unix seconds), if the IdP said.
    pub access_expires_at: Option<i64>,
    /// The refresh token, if one was issued.
    pub refresh_token: Option<Secret>,
    /// The raw ID token, kept for `id_token_hint` at logout.
    pub id_token: Secret,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &true)
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// A logged-in session as stored (sealed) in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// Format version.
    pub v: u8,
    /// Subject.
    pub sub: String,
    /// The IdP session id (`sid` claim), for back-channel logout.
    pub sid: Option<String>,
    /// ID-token claims minus `nonce`, `at_hash`, `c_hash`.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Tokens.
    pub tokens: Tokens,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Last activity that slid the idle timeout (unix seconds). Stored beside the sealed data
    /// so that sliding never rewrites the tokens.
    pub last_seen: i64,
    /// Hard end of the session (unix seconds).
    pub absolute_expires_at: i64,
    /// Browser's User-Agent at login (for the admin listing).
    pub user_agent: Option<String>,
    /// Client IP at login (for the admin listing).
    pub ip: Option<String>,
}

impl Session {
    /// When the idle timeout ends this session.
    #[must_use]
    pub fn idle_expires_at(&self, idle: Duration) -> i64 {
        self.last_seen.saturating_add(secs(idle))
    }

    /// When this session ends, whichever comes first.
    #[must_use]
    pub fn expires_at(&self, idle: Duration) -> i64 {
        self.idle_expires_at(idle).min(self.absolute_expires_at)
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A login in progress, stored once-only for [`PENDING_TTL`].
#[derive(Serialize, Deserialize)]
pub struct PendingLogin {
    /// The nonce sent in the authorization request.
    pub nonce: Secret,
    /// The PKCE verifier.
    pub pkce_verifier: Secret,
    /// Where to send the browser afterwards (validated).
    pub return_to: String,
    /// The browser binding tag that must be in the login cookie.
    pub binding: String,
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin")
            .field("return_to", &self.return_to)
            .finish_non_exhaustive()
    }
}

/// How long a pending login lives.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// A store failure (connection, timeout, protocol). Never carries values.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        crate::error::Error::StoreUnavailable(Box::new(e))
    }
}

/// Which index a lookup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// Sessions by subject.
    Sub,
    /// Sessions by IdP session id.
    Sid,
}

/// Where a session's record and index entries live; all values are hashes.
#[derive(Debug, Clone)]
pub struct RecordRef {
    /// Public handle: SHA-256 of the session id.
    pub handle: String,
    /// Hash of `sub`.
    pub sub_hash: String,
    /// Hash of `sid`, if any.
    pub sid_hash: Option<String>,
}

/// The session store: Redis or memory, same semantics (one conformance suite).
#[derive(Debug, Clone)]
pub enum Store {
    /// Redis.
    Redis(redis::RedisStore),
    /// In-process memory.
    Memory(memory::MemoryStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Redis($s) => $e,
            Store::Memory($s) => $e,
        }
    };
}

impl Store {
    /// Writes a session record (sealed data + last-seen time) and adds it to its indexes.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn put_session(
        &self,
        r: &RecordRef,
        blob: Vec<u8>,
        seen: i64,
        ttl: Duration,
        index_ttl: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_session(r, blob, seen, ttl, index_ttl).await)
    }
    /// Reads a session record: sealed data and last-seen time.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn get_session(&self, handle: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        dispatch!(self, s => s.get_session(handle).await)
    }
    /// Moves last-seen and the TTL of an existing record (never recreates a deleted one).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn touch_session(
        &self,
        handle: &str,
        seen: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.touch_session(handle, seen, ttl).await)
    }
    /// Replaces the sealed data of an existing record, keeping its TTL and last-seen time
    /// (never recreates a deleted one: a logout during a refresh stays a logout).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn replace_data(&self, handle: &str, blob: Vec<u8>) -> Result<bool, StoreError> {
        dispatch!(self, s => s.replace_data(handle, blob).await)
    }
    /// Takes the refresh lock of a session for `lease` if nobody holds it.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn try_lock(
        &self,
        handle: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.try_lock(handle, token, lease).await)
    }
    /// Releases the refresh lock if `token` still holds it.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn unlock(&self, handle: &str, token: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.unlock(handle, token).await)
    }
    /// Records `hash` (e.g. of a logout token's `jti`) for `ttl`; false if it was already there.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn remember_once(&self, hash: &str, ttl: Duration) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remember_once(hash, ttl).await)
    }
    /// Deletes a session record and its index entries; true if it existed.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn delete_session(&self, r: &RecordRef) -> Result<bool, StoreError> {
        dispatch!(self, s => s.delete_session(r).await)
    }
    /// Handles in an index (may include handles of expired sessions).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn index_members(&self, index: Index, hash: &str) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.index_members(index, hash).await)
    }
    /// Removes stale handles from an index.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn index_remove(
        &self,
        index: Index,
        hash: &str,
        handles: &[String],
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.index_remove(index, hash, handles).await)
    }
    /// Stores a pending login under the hash of its `state`.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn put_pending(
        &self,
        state_hash: &str,
        blob: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_pending(state_hash, blob, ttl).await)
    }
    /// Takes a pending login: the first caller gets it, every later one gets `None`.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn take_pending(&self, state_hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, s => s.take_pending(state_hash).await)
    }
    /// Checks the store answers.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }
}

/// Sessions over a [`Store`]: sealing, ids, expiry.
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Store,
    keys: Arc<KeyRing>,
    idle: Duration,
    absolute: Duration,
    /// Opened sessions of the request path (see `session/cache.rs`); Redis on one server only.
    cache: Option<Arc<cache::SessionCache>>,
}

/// A session id as it is in the cookie (256 random bits).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(Secret);

impl SessionId {
    /// A new random id.
    #[must_use]
    pub fn generate() -> Self {
        Self(Secret::new(crypto::random_token()))
    }
    /// From the opened cookie plaintext.
    #[must_use]
    pub fn from_cookie_plaintext(s: String) -> Self {
        Self(Secret::new(s))
    }
    /// # Security Warning
    /// The raw id: only for sealing into the cookie.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
    /// The public handle: a hash, safe for logs, store keys and the admin API.
    #[must_use]
    pub fn handle(&self) -> String {
        crypto::hash(self.0.expose())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

fn record_aad(handle: &str) -> Vec<u8> {
    format!("session:{handle}").into_bytes()
}

fn pending_aad(state_hash: &str) -> Vec<u8> {
    format!("pending:{state_hash}").into_bytes()
}

impl Sessions {
    /// Wraps a store.
    #[must_use]
    pub fn new(store: Store, keys: Arc<KeyRing>, idle: Duration, absolute: Duration) -> Self {
        Self {
            store,
            keys,
            idle,
            absolute,
            cache: None,
        }
    }

    /// Turns on the in-process session cache for [`Sessions::load_shared`] where the store can
    /// keep it exact (Redis on one server: see `session/cache.rs`); a no-op elsewhere. Spawns
    /// the invalidation subscriber, so it must run inside the Tokio runtime.
    #[must_use]
    pub fn with_local_cache(mut self) -> Self {
        if let Store::Redis(r) = &self.store {
            let cache = Arc::new(cache::SessionCache::new());
            if r.watch_invalidations(Arc::downgrade(&cache)) {
                self.cache = Some(cache);
            }
        }
        self
    }

    /// The session cache, when there is one.
    #[must_use]
    pub fn cache(&self) -> Option<&cache::SessionCache> {
        self.cache.as_deref()
    }

    /// As [`Sessions::load`], through the session cache when there is one: a busy session costs
    /// no store round trip, and a logout anywhere still ends it (`session/cache.rs`). For the
    /// request path; anything that is about to change a session reads with [`Sessions::load`].
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn load_shared(&self, handle: &str) -> Result<Option<Arc<Session>>, StoreError> {
        let Some(cache) = &self.cache else {
            return Ok(self.load(handle).await?.map(Arc::new));
        };
        if let Some(s) = cache.get(handle) {
            if s.expires_at(self.idle) > now_unix() {
                return Ok(Some(s));
            }
            // Expired as far as this copy knows: another instance may have slid it; ask.
        }
        let epoch = cache.epoch();
        let Some(s) = self.load(handle).await? else {
            return Ok(None);
        };
        let s = Arc::new(s);
        cache.fill(handle, s.clone(), epoch);
        Ok(Some(s))
    }

    /// The store underneath.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The idle timeout.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// The absolute lifetime.
    #[must_use]
    pub fn absolute_timeout(&self) -> Duration {
        self.absolute
    }

    /// The record reference (handle and index hashes) of a session.
    #[must_use]
    pub fn record_ref(handle: &str, s: &Session) -> RecordRef {
        RecordRef {
            handle: handle.to_string(),
            sub_hash: crypto::hash(&s.sub),
            sid_hash: s.sid.as_deref().map(crypto::hash),
        }
    }

    fn ttl(&self, s: &Session) -> Option<Duration> {
        let ttl = s.expires_at(self.idle) - now_unix();
        (ttl > 0).then(|| Duration::from_secs(u64::try_from(ttl).unwrap_or(1)))
    }

    fn seal(&self, handle: &str, s: &Session) -> Result<Vec<u8>, StoreError> {
        let json = serde_json::to_vec(s).map_err(|e| StoreError(format!("encode: {e}")))?;
        Ok(self.keys.seal(&record_aad(handle), &json))
    }

    /// Writes (seals) a whole session with a TTL from its idle and absolute expiry.
    /// Returns false (and writes nothing) when the session has already expired.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn save(&self, handle: &str, s: &Session) -> Result<bool, StoreError> {
        let Some(ttl) = self.ttl(s) else {
            return Ok(false);
        };
        let blob = self.seal(handle, s)?;
        self.store
            .put_session(
                &Self::record_ref(handle, s),
                blob,
                s.last_seen,
                ttl,
                self.absolute,
            )
            .await?;
        Ok(true)
    }

    /// Slides the idle timeout: writes only last-seen and the TTL, never the tokens, so it cannot
    /// undo a concurrent refresh. False if the session is gone.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn touch(&self, handle: &str, s: &Session) -> Result<bool, StoreError> {
        let Some(ttl) = self.ttl(s) else {
            return Ok(false);
        };
        let live = self.store.touch_session(handle, s.last_seen, ttl).await?;
        if let Some(c) = &self.cache {
            if live {
                c.touched(handle, s.last_seen);
            } else {
                c.invalidate(handle);
            }
        }
        Ok(live)
    }

    /// Replaces the sealed data (new tokens after a refresh) of a session that still exists.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn update(&self, handle: &str, s: &Session) -> Result<bool, StoreError> {
        let blob = self.seal(handle, s)?;
        let r = self.store.replace_data(handle, blob).await;
        if let Some(c) = &self.cache {
            c.invalidate(handle);
        }
        r
    }

    /// Reads a session by handle. `None` if missing, expired or unreadable (e.g. its key was
    /// removed from the ring).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn load(&self, handle: &str) -> Result<Option<Session>, StoreError> {
        let Some((blob, seen)) = self.store.get_session(handle).await? else {
            return Ok(None);
        };
        let Some(json) = self.keys.open(&record_aad(handle), &blob) else {
            tracing::warn!(session = %short(handle), "session record does not open with any key");
            return Ok(None);
        };
        let Ok(mut s) = serde_json::from_slice::<Session>(&json) else {
            tracing::warn!(session = %short(handle), "session record has an unknown format");
            return Ok(None);
        };
        s.last_seen = s.last_seen.max(seen);
        if s.v != FORMAT_VERSION || s.expires_at(self.idle) <= now_unix() {
            return Ok(None);
        }
        Ok(Some(s))
    }

    /// Deletes a session and its index entries.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn delete(&self, handle: &str, s: &Session) -> Result<bool, StoreError> {
        let r = self
            .store
            .delete_session(&Self::record_ref(handle, s))
            .await;
        if let Some(c) = &self.cache {
            c.invalidate(handle);
        }
        r
    }

    /// Live sessions in an index (`sub` or `sid`), pruning stale entries as it goes.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn find(
        &self,
        index: Index,
        value: &str,
    ) -> Result<Vec<(String, Session)>, StoreError> {
        let hash = crypto::hash(value);
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for h in self.store.index_members(index, &hash).await? {
            match self.load(&h).await? {
                Some(s) => live.push((h, s)),
                None => stale.push(h),
            }
        }
        if !stale.is_empty() {
            self.store.index_remove(index, &hash, &stale).await?;
        }
        Ok(live)
    }

    /// Stores a pending login under `state`, sealed.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn put_pending(&self, state: &str, p: &PendingLogin) -> Result<(), StoreError> {
        let h = crypto::hash(state);
        let json = serde_json::to_vec(p).map_err(|e| StoreError(format!("encode: {e}")))?;
        let blob = self.keys.seal(&pending_aad(&h), &json);
        self.store.put_pending(&h, blob, PENDING_TTL).await
    }

    /// Takes the pending login for `state` (once).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn take_pending(&self, state: &str) -> Result<Option<PendingLogin>, StoreError> {
        let h = crypto::hash(state);
        let Some(blob) = self.store.take_pending(&h).await? else {
            return Ok(None);
        };
        Ok(self
            .keys
            .open(&pending_aad(&h), &blob)
            .and_then(|j| serde_json::from_slice(&j).ok()))
    }
}

/// The first 8 characters of a handle: enough to correlate log lines, useless as a key.
#[must_use]
pub fn short(handle: &str) -> &str {
    handle.get(..8).unwrap_or(handle)
}

/// The store conformance suite, run against the memory store (unit tests) and real Redis
/// (integration tests). Public so `tests/` can call it; not part of the API.
#[doc(hidden)]
pub mod conformance;

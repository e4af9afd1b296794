//! Sessions: the stored [`Session`] format, [`PendingLogin`], and [`Sessions`], which seals
//! records with the key ring before they reach a [`Store`].
//!
//! Owns: session ids and handles, expiry arithmetic (idle / absolute), sealing at rest.
//! Never knows store key names (those live in `session/redis.rs` and `session/memory.rs`).

pub mod cache;
pub mod memory;
pub mod redis;

use crate::clock::Clock;
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
    /// The access token's issued lifetime in seconds (`expires_in`, else the JWT's
    /// `exp − iat`), recorded when it was obtained: the refresh window is at most half of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_lifetime: Option<i64>,
    /// The refresh token, if one was issued.
    pub refresh_token: Option<Secret>,
    /// The raw ID token, kept for `id_token_hint` at logout.
    pub id_token: Secret,
    /// The session's DPoP key (RFC 9449) when the access token is bound to it: the token goes
    /// upstream as `Authorization: DPoP` with a proof, and every token request carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<crate::oidc::DpopKey>,
    /// The tokens particular routes need besides the login's, by [`crate::config::ResourceSpec`]
    /// or [`crate::config::ExchangeSpec`] key: per-resource tokens (RFC 8707) and exchanged
    /// ones (RFC 8693). Revoked with the session.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub derived: std::collections::BTreeMap<String, DerivedToken>,
    /// The resources (RFC 8707) the login asked for, recorded at login. A per-resource token
    /// is asked for only with one of these: an IdP may use the refresh token up before it
    /// refuses a resource the grant does not hold (oidc-provider does), which would end the
    /// session at the next refresh. `None` in sessions from before it was recorded: not
    /// checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
    /// `Authorization: Bearer <access_token>`, built on first use (never stored).
    #[serde(skip)]
    pub bearer_header: BearerHeader,
}

/// A route's own access token, kept in the session beside the login's.
#[derive(Clone, Serialize, Deserialize)]
pub struct DerivedToken {
    /// The access token.
    pub access_token: Secret,
    /// When it expires (unix seconds), if the IdP said.
    pub expires_at: Option<i64>,
    /// Its issued lifetime in seconds, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<i64>,
    /// Bound to the session's DPoP key (`token_type` `DPoP`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dpop_bound: bool,
    /// `Authorization: Bearer <access_token>`, built on first use (never stored).
    #[serde(skip)]
    pub bearer_header: BearerHeader,
}

impl fmt::Debug for DerivedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedToken")
            .field("expires_at", &self.expires_at)
            .field("dpop_bound", &self.dpop_bound)
            .finish_non_exhaustive()
    }
}

impl DerivedToken {
    /// Due for renewal by the same rule as the login's token ([`Tokens::refresh_due`]).
    #[must_use]
    pub fn due(&self, now: i64, skew: Duration) -> bool {
        due(self.expires_at, self.lifetime, now, skew)
    }

    /// What the proxy sends: this token, with the session's DPoP key when bound to it.
    #[must_use]
    pub fn credential<'a>(&'a self, key: Option<&'a crate::oidc::DpopKey>) -> Credential<'a> {
        Credential {
            token: &self.access_token,
            header: &self.bearer_header,
            dpop: key.filter(|_| self.dpop_bound),
        }
    }
}

/// An access token as the proxy attaches it: the token, its cached `Bearer` header, and the
/// DPoP key it is bound to, if any.
#[derive(Debug, Clone, Copy)]
pub struct Credential<'a> {
    /// The access token.
    pub token: &'a Secret,
    /// Its `Authorization: Bearer` value, built once.
    pub header: &'a BearerHeader,
    /// The key a DPoP-bound token needs a proof from.
    pub dpop: Option<&'a crate::oidc::DpopKey>,
}

/// SPEC §3: due when less than `min(skew, ½ × issued lifetime)` is left; never without an
/// expiry.
fn due(exp: Option<i64>, lifetime: Option<i64>, now: i64, skew: Duration) -> bool {
    let Some(exp) = exp else {
        return false;
    };
    let skew = secs(skew);
    let window = match lifetime {
        Some(l) if l > 0 => skew.min(l / 2),
        _ => skew,
    };
    exp - now < window
}

/// The `Authorization` header value for an access token, built once per token (a cached
/// session serves many requests) instead of once per request, and marked sensitive (HTTP/2's
/// HPACK never indexes it).
#[derive(Clone, Default)]
pub struct BearerHeader(std::sync::OnceLock<Option<http::HeaderValue>>);

impl fmt::Debug for BearerHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerHeader([redacted])")
    }
}

impl BearerHeader {
    /// `Bearer <token>`; `None` if the token cannot be a header value. A value built for
    /// another token (a copy whose token was replaced) is never returned.
    #[must_use]
    pub fn get(&self, token: &Secret) -> Option<http::HeaderValue> {
        let build = || {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
            v.set_sensitive(true);
            Some(v)
        };
        match self.0.get_or_init(build) {
            Some(v) if v.as_bytes().get(7..) == Some(token.expose().as_bytes()) => Some(v.clone()),
            Some(_) => build(),
            None => None,
        }
    }
}

impl Tokens {
    /// SPEC §3: due for a refresh when less than `min(skew, ½ × issued lifetime)` is left, so a
    /// token is never refreshed on every request however short the IdP makes it. A token
    /// without an expiry is never due.
    #[must_use]
    pub fn refresh_due(&self, now: i64, skew: Duration) -> bool {
        due(self.access_expires_at, self.access_lifetime, now, skew)
    }

    /// The login's access token as the proxy sends it.
    #[must_use]
    pub fn credential(&self) -> Credential<'_> {
        Credential {
            token: &self.access_token,
            header: &self.bearer_header,
            dpop: self.dpop.as_ref(),
        }
    }

    /// Whether the access token can still be forwarded (not expired, or no known expiry).
    #[must_use]
    pub fn access_valid(&self, now: i64) -> bool {
        self.access_expires_at.is_none_or(|exp| exp > now)
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &true)
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_token", &self.refresh_token.is_some())
            .field("dpop", &self.dpop.is_some())
            .field("derived", &self.derived.len())
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
    /// "Remember me": a persistent cookie, and this session's own idle timeout
    /// ([`Session::idle_timeout`]) and absolute lifetime (`session.remember`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remembered: bool,
    /// This session's own idle timeout in seconds, instead of `session.idle_timeout`
    /// (a remembered session's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<i64>,
    /// It took over the state of an earlier session of the same user that had timed out idle
    /// (`session.reconstitute`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconstituted: bool,
    /// The identity provider the session logged in with (`[[oidc.providers]] name`); `None`:
    /// `[oidc]`. Its refresh, revocation, end-session and back-channel logout go there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's issuer at login: a reload that re-points `provider` at another issuer
    /// ends the session instead of sending its tokens there ([`crate::oidc::Providers::bound`]).
    /// `None` in records written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The `client_id` at login (as `issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The record's refresh generation as read from the store, and the one [`Sessions::save`]
    /// writes (not sealed: it lives beside the sealed data). A refresh writes only if the generation is still the one it read, so a
    /// holder whose lock lease ran out cannot overwrite a newer refresh (`session/redis.rs`).
    #[serde(skip)]
    pub generation: u64,
}

impl Session {
    /// Which provider, issuer and `client_id` the session belongs to.
    #[must_use]
    pub fn binding(&self) -> crate::oidc::Binding<'_> {
        crate::oidc::Binding {
            provider: self.provider.as_deref(),
            issuer: self.issuer.as_deref(),
            client_id: self.client_id.as_deref(),
        }
    }

    /// When the idle timeout ends this session.
    #[must_use]
    pub fn idle_expires_at(&self, idle: Duration) -> i64 {
        self.last_seen
            .saturating_add(self.idle_timeout.unwrap_or_else(|| secs(idle)))
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

/// A login in progress. It travels sealed in a login cookie of its own (`cookies::set_pending`),
/// never in the store: `/auth/login` writes nothing (SPEC §1 v2).
#[derive(Serialize, Deserialize)]
pub struct PendingLogin {
    /// The nonce sent in the authorization request.
    pub nonce: Secret,
    /// The PKCE verifier.
    pub pkce_verifier: Secret,
    /// Where to send the browser afterwards (validated).
    pub return_to: String,
    /// When `/auth/login` made it (unix seconds): refused after [`PENDING_TTL`].
    pub created_at: i64,
    /// The handle of the session this browser had when the login started (its Strict cookie
    /// is sent on `/auth/login`, a same-site navigation, but never on the cross-site callback):
    /// the callback ends it once the new session exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The DPoP key made for this login (`oidc.dpop`), whose thumbprint was sent as
    /// `dpop_jkt`: the code exchange proves it, and the session keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<crate::oidc::DpopKey>,
    /// A step-up login (`/auth/login?acr_values=…&max_age=…`): what the new ID token must
    /// show, and the callback then upgrades the browser's session in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<StepUpRequest>,
    /// "Remember me" was asked for (`/auth/login?remember=true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remember: bool,
    /// The provider the login went to (`/auth/login?provider=`); `None`: `[oidc]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// That provider's issuer when the login started (see [`Session::issuer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Its `client_id` when the login started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl PendingLogin {
    /// Which provider, issuer and `client_id` the login went to.
    #[must_use]
    pub fn binding(&self) -> crate::oidc::Binding<'_> {
        crate::oidc::Binding {
            provider: self.provider.as_deref(),
            issuer: self.issuer.as_deref(),
            client_id: self.client_id.as_deref(),
        }
    }
}

/// What a step-up login asks the IdP for (RFC 9470 §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepUpRequest {
    /// Space-separated `acr` values; the new ID token's `acr` must be one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr_values: Option<String>,
    /// The new ID token's `auth_time` must be at most this many seconds old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
}

impl StepUpRequest {
    /// Whether an ID token's claims satisfy it at `now` (wall-clock unix seconds: `auth_time`
    /// is the IdP's clock), with `skew` of tolerance.
    #[must_use]
    pub fn satisfied_by(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: i64,
        skew: Duration,
    ) -> bool {
        auth_satisfies(
            claims,
            self.acr_values.as_deref().map(|a| a.split(' ').collect()),
            self.max_age,
            now,
            secs(skew),
        )
    }
}

/// Whether a session's (or an ID token's) `acr` is one of `acr_values` (when given) and its
/// `auth_time` at most `max_age` seconds before `now`, plus `skew` (when given). A claim that
/// is missing satisfies nothing.
#[must_use]
pub fn auth_satisfies(
    claims: &serde_json::Map<String, serde_json::Value>,
    acr_values: Option<Vec<&str>>,
    max_age: Option<u64>,
    now: i64,
    skew: i64,
) -> bool {
    let acr_ok = acr_values.is_none_or(|want| {
        claims
            .get("acr")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|a| want.contains(&a))
    });
    let age_ok = max_age.is_none_or(|m| {
        claims
            .get("auth_time")
            .and_then(serde_json::Value::as_i64)
            .is_some_and(|t| {
                now.saturating_sub(t) <= i64::try_from(m).unwrap_or(i64::MAX).saturating_add(skew)
            })
    });
    acr_ok && age_ok
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin")
            .field("return_to", &self.return_to)
            .finish_non_exhaustive()
    }
}

/// How long a pending login lives (its cookie's `Max-Age`; the callback checks it too).
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
    /// The index names of its `sub`, one per key of the ring (see [`KeyRing::index_names`]):
    /// an instance that has only some of the keys (mid-rotation) still finds it.
    pub subs: Vec<String>,
    /// The same for its `sid`, if any.
    pub sids: Vec<String>,
}

impl RecordRef {
    /// Every index entry: which index, under which name.
    pub fn entries(&self) -> impl Iterator<Item = (Index, &str)> {
        self.subs
            .iter()
            .map(|n| (Index::Sub, n.as_str()))
            .chain(self.sids.iter().map(|n| (Index::Sid, n.as_str())))
    }
}

/// A session record as the store holds it: sealed data, last-seen time, refresh generation.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// The sealed session.
    pub blob: Vec<u8>,
    /// Last activity (unix seconds), written by sliding.
    pub seen: i64,
    /// Bumped by every refresh write.
    pub generation: u64,
}

/// The answer to taking a session's refresh lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// This owner holds it now.
    Acquired,
    /// Another owner is refreshing.
    Held,
    /// A refresh failed transiently moments ago: nobody calls the IdP for this long.
    CoolingOff(Duration),
}

/// The result of writing refreshed tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshWrite {
    /// Written; the generation moved on by one.
    Written,
    /// The record is gone (logged out meanwhile): nothing written.
    Gone,
    /// Refused: another refresh wrote first, or another owner holds the lock now.
    Fenced,
}

/// The store: Redis or memory, same semantics (one conformance suite).
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
    /// Adds a session to its indexes, then writes its record (sealed data, last-seen time,
    /// refresh generation — 0 for a new session): a failure in between leaves at worst an index entry without a record,
    /// which [`Sessions::find`] prunes, never a live session missing from its indexes. Each
    /// index's TTL becomes `index_ttl` unless it already lasts longer (never shortened).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn put_session(
        &self,
        r: &RecordRef,
        blob: Vec<u8>,
        seen: i64,
        generation: u64,
        ttl: Duration,
        index_ttl: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_session(r, blob, seen, generation, ttl, index_ttl).await)
    }
    /// Reads a session record.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn get_session(&self, handle: &str) -> Result<Option<StoredRecord>, StoreError> {
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
    /// Writes refreshed sealed data, keeping TTL and last-seen, in one atomic step that checks
    /// the record still exists (a logout during a refresh stays a logout), its generation is
    /// still `generation` and no other owner holds the refresh lock (the fence).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn write_refresh(
        &self,
        handle: &str,
        blob: Vec<u8>,
        generation: u64,
        owner: &str,
    ) -> Result<RefreshWrite, StoreError> {
        dispatch!(self, s => s.write_refresh(handle, blob, generation, owner).await)
    }
    /// Takes the refresh lock of a session for `lease` if nobody holds it (or a cool-off
    /// marker has ended by `now_ms`, unix milliseconds on the lifecycle clock).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn try_lock(
        &self,
        handle: &str,
        owner: &str,
        lease: Duration,
        now_ms: i64,
    ) -> Result<LockState, StoreError> {
        dispatch!(self, s => s.try_lock(handle, owner, lease, now_ms).await)
    }
    /// Turns the lock `owner` holds into a cool-off marker for `d` from `now_ms` (unix
    /// milliseconds on the lifecycle clock): every instance answers without calling the IdP
    /// until it ends.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn cool_off(
        &self,
        handle: &str,
        owner: &str,
        d: Duration,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.cool_off(handle, owner, d, now_ms).await)
    }
    /// Releases the refresh lock if `owner` still holds it.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn unlock(&self, handle: &str, owner: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.unlock(handle, owner).await)
    }
    /// Waits until the last writes on this connection reached `replicas` replicas (Redis
    /// `WAIT`), at most `timeout`; returns how many acknowledged. The memory store has none.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn wait_replicas(&self, replicas: u32, timeout: Duration) -> Result<u32, StoreError> {
        dispatch!(self, s => s.wait_replicas(replicas, timeout).await)
    }
    /// Records `hash` (e.g. of a logout token's `jti`) for `ttl`; false if it was already there.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn remember_once(&self, hash: &str, ttl: Duration) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remember_once(hash, ttl).await)
    }
    /// Writes a sealed value every instance shares (not a session: e.g. a client-credentials
    /// token), replacing any, for `ttl`.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn put_shared(
        &self,
        hash: &str,
        blob: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_shared(hash, blob, ttl).await)
    }
    /// Reads a value written by [`Store::put_shared`], if it has not expired.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn get_shared(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, s => s.get_shared(hash).await)
    }
    /// Puts `handle` on the reaper's schedule at `at` (unix s), replacing its time.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn schedule(&self, handle: &str, at: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.schedule(handle, at).await)
    }
    /// Takes `handle` off the reaper's schedule.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn unschedule(&self, handle: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.unschedule(handle).await)
    }
    /// Up to `n` handles whose scheduled time is `now` or earlier, earliest first.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn due(&self, now: i64, n: usize) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.due(now, n).await)
    }
    /// Deletes a value written by [`Store::put_shared`] (gone already is fine).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn delete_shared(&self, hash: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete_shared(hash).await)
    }
    /// Whether `hash` was recorded by [`Store::remember_once`] and has not expired.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn remembered(&self, hash: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.remembered(hash).await)
    }
    /// Reads and deletes a session record in one atomic step (returning what was deleted, so
    /// its tokens can be revoked), then removes it from the indexes named in `r`.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer (a failure after the record is gone
    /// leaves only stale index entries, which [`Sessions::find`] prunes).
    pub async fn take_session(&self, r: &RecordRef) -> Result<Option<StoredRecord>, StoreError> {
        dispatch!(self, s => s.take_session(r).await)
    }
    /// Removes a handle from the indexes named in `r` (after [`Store::take_session`] of a
    /// record whose index hashes were only known once it was opened).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn unindex(&self, r: &RecordRef) -> Result<(), StoreError> {
        dispatch!(self, s => s.unindex(r).await)
    }
    /// Up to `n` handles of an index, chosen at random (for bounded pruning).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn index_sample(
        &self,
        index: Index,
        hash: &str,
        n: usize,
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.index_sample(index, hash, n).await)
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
    /// Checks the store answers.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }
}

/// A key ring a reload can swap, shared by everything that seals with it.
pub type SharedKeys = Arc<arc_swap::ArcSwap<KeyRing>>;

/// Sessions over a [`Store`]: sealing, ids, expiry.
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Store,
    /// The key ring; a reload swaps it ([`Sessions::set_keys`]) for every clone at once.
    keys: SharedKeys,
    idle: Duration,
    absolute: Duration,
    clock: Clock,
    /// Opened sessions of the request path (see `session/cache.rs`); Redis only.
    cache: Option<Arc<cache::SessionCache>>,
    /// Told of every session that ends.
    ended: Arc<EndedHooks>,
    /// With the reaper (`session.reconstitute`): how long a record stays past its expiry, so
    /// the reaper can still read it (revoke its tokens, keep what a re-login takes over).
    /// Records are then on the store's expiry schedule.
    linger: Option<Duration>,
}

/// What is left of a session that timed out idle (`session.reconstitute`), sealed, for a
/// re-login of the same user in the same browser to take over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leftover {
    /// The user it belonged to.
    pub sub: String,
    /// When the session that timed out was made.
    pub created_at: i64,
    /// The SPA's state of that session, if it had saved one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Its identity provider (as [`Session::provider`]): the same `sub` at another IdP is
    /// another user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Its provider's issuer and `client_id` (as [`Session::issuer`]; `None` in leftovers
    /// written before they were recorded, which match by `provider` alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// See `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Callbacks run when a session ends — here (`Sessions::take`) or, through the invalidation
/// channel, on another instance — e.g. to close the WebSocket tunnels opened for it.
#[derive(Default)]
pub struct EndedHooks(std::sync::RwLock<Vec<EndedHook>>);

/// One [`EndedHooks`] callback.
type EndedHook = Box<dyn Fn(&str) + Send + Sync>;

impl fmt::Debug for EndedHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndedHooks")
    }
}

impl EndedHooks {
    /// Adds a callback (it must be quick: it runs on the ending path).
    pub fn add(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(f));
    }

    fn run(&self, handle: &str) {
        for f in self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            f(handle);
        }
    }
}

/// What an index lookup found.
#[derive(Debug, Default)]
pub struct Found {
    /// Live sessions this instance can open.
    pub live: Vec<(String, Session)>,
    /// Records that exist but do not open here (sealed with a key this instance does not
    /// have, e.g. mid-rotation), found through the index of one of the issuers looked up:
    /// kept in the index, and still ended by "log out everywhere" and back-channel logout.
    pub unreadable: Vec<String>,
    /// Records that do not open here found only through the unscoped index of a release
    /// before the per-issuer index (keyed by the value alone): they can be any provider's, so
    /// a lookup for one provider must not end them (see [`Found::unreadable_of`]).
    pub unscoped: Vec<String>,
}

impl Found {
    /// The unreadable records a lookup for one provider may end: those of its own index, and
    /// those of the unscoped (pre-upgrade) index only when `only_provider` (a single provider
    /// is configured, so the old index cannot mix users of several IdPs).
    #[must_use]
    pub fn unreadable_of(&mut self, only_provider: bool) -> Vec<String> {
        let mut v = std::mem::take(&mut self.unreadable);
        if only_provider {
            v.append(&mut self.unscoped);
        }
        v
    }
}

/// What reading a record gave.
#[derive(Debug)]
pub enum Loaded {
    /// No record (never was, deleted, or expired).
    Missing,
    /// A record that does not open with this key ring, or of an unknown format.
    Unreadable,
    /// A live session.
    Live(Box<Session>),
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

impl Sessions {
    /// Wraps a store, reading time from the system clock.
    #[must_use]
    pub fn new(store: Store, keys: Arc<KeyRing>, idle: Duration, absolute: Duration) -> Self {
        Self {
            store,
            keys: Arc::new(arc_swap::ArcSwap::new(keys)),
            idle,
            absolute,
            clock: Clock::system(),
            cache: None,
            ended: Arc::default(),
            linger: None,
        }
    }

    /// A reloaded key ring, for every clone of these sessions: its first key seals from now on,
    /// and a record only a removed key opens stops opening. The local cache is emptied, so no
    /// session opened with a removed key is served from it.
    pub fn set_keys(&self, keys: Arc<KeyRing>) {
        if self.keys.load().fingerprint() == keys.fingerprint() {
            return;
        }
        self.keys.store(keys);
        if let Some(c) = &self.cache {
            c.clear();
        }
    }

    /// The key ring, as [`Sessions::set_keys`] swaps it (for others that seal with it).
    #[must_use]
    pub fn shared_keys(&self) -> SharedKeys {
        self.keys.clone()
    }

    /// Keeps records `linger` past their expiry, on the store's expiry schedule, for the
    /// reaper (`crate::reaper`).
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = Some(linger);
        self
    }

    /// The callbacks run when a session ends, here or on another instance.
    #[must_use]
    pub fn ended_hooks(&self) -> &Arc<EndedHooks> {
        &self.ended
    }

    /// Reads time from `clock` (tests advance it).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock expiry is measured with.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Turns on the in-process session cache for [`Sessions::load_shared`] where the store can
    /// keep it exact (Redis, in every topology: see `session/cache.rs`); a no-op elsewhere.
    /// Spawns the invalidation subscriber, so it must run inside the Tokio runtime.
    #[must_use]
    pub fn with_local_cache(mut self) -> Self {
        if let Store::Redis(r) = &self.store {
            let cache = Arc::new(cache::SessionCache::with_hooks(self.ended.clone()));
            r.watch_invalidations(Arc::downgrade(&cache));
            self.cache = Some(cache);
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
            crate::trace::cache("off");
            return Ok(self.load(handle).await?.map(Arc::new));
        };
        if let Some(s) = cache.get(handle) {
            if s.expires_at(self.idle) > self.clock.unix() {
                crate::trace::cache("hit");
                return Ok(Some(s));
            }
            // Expired as far as this copy knows: another instance may have slid it; ask.
        }
        crate::trace::cache("miss");
        let epoch = cache.epoch(handle);
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
    pub fn record_ref(&self, handle: &str, s: &Session) -> RecordRef {
        RecordRef {
            handle: handle.to_string(),
            subs: self.index_names(Index::Sub, s.issuer.as_deref(), &s.sub),
            sids: s
                .sid
                .as_deref()
                .map(|sid| self.index_names(Index::Sid, s.issuer.as_deref(), sid))
                .unwrap_or_default(),
        }
    }

    /// The index names of `value` at `issuer`, one per key of the ring, the first key's
    /// first (see [`KeyRing::scoped_index_names`]): each IdP's users have their own index, as
    /// two IdPs may issue the same `sub` (or `sid`) to different people. Entries are written
    /// under all of them and read from all of them. `None` (a record written before sessions
    /// recorded their issuer) gives the unscoped names of earlier releases
    /// ([`KeyRing::index_names`]).
    #[must_use]
    pub fn index_names(&self, index: Index, issuer: Option<&str>, value: &str) -> Vec<String> {
        let kind = match index {
            Index::Sub => "sub",
            Index::Sid => "sid",
        };
        let keys = self.keys.load();
        match issuer {
            Some(iss) => keys.scoped_index_names(kind, iss, value),
            None => keys.index_names(kind, value),
        }
    }

    fn ttl(&self, s: &Session) -> Option<Duration> {
        let ttl = s.expires_at(self.idle) - self.clock.unix();
        let linger = self.linger.map_or(0, secs);
        (ttl > 0).then(|| Duration::from_secs(u64::try_from(ttl + linger).unwrap_or(1)))
    }

    /// How long the index entries of `s` must last: as long as its record can (its absolute
    /// expiry plus the linger), never less than `ttl`. Sliding and refreshing never move the
    /// absolute expiry, so they need not renew the indexes; and the store only ever extends an
    /// index's TTL, so the set outlives its longest-lived member (a remembered session's 30
    /// days, not `session.absolute_timeout`).
    fn index_ttl(&self, s: &Session, ttl: Duration) -> Duration {
        let linger = self.linger.map_or(0, secs);
        let left = s
            .absolute_expires_at
            .saturating_sub(self.clock.unix())
            .saturating_add(linger);
        ttl.max(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }

    async fn schedule(&self, handle: &str, s: &Session) -> Result<(), StoreError> {
        if self.linger.is_some() {
            self.store.schedule(handle, s.expires_at(self.idle)).await?;
        }
        Ok(())
    }

    fn seal(&self, handle: &str, s: &Session) -> Result<Vec<u8>, StoreError> {
        let json = serde_json::to_vec(s).map_err(|e| StoreError(format!("encode: {e}")))?;
        Ok(self.keys.load().seal(&record_aad(handle), &json))
    }

    /// Writes (seals) a whole session with a TTL from its idle and absolute expiry, at refresh
    /// generation `s.generation` (0 for a new session; a record that replaces another under
    /// the same handle must write a later one than the old record's, so that a refresh that
    /// read the old record is fenced off the new one).
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
                &self.record_ref(handle, s),
                blob,
                s.last_seen,
                s.generation,
                ttl,
                self.index_ttl(s, ttl),
            )
            .await?;
        self.schedule(handle, s).await?;
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
        if live {
            self.schedule(handle, s).await?;
        }
        if let Some(c) = &self.cache {
            if live {
                c.touched(handle, s.last_seen);
            } else {
                c.invalidate(handle);
            }
        }
        Ok(live)
    }

    /// Writes refreshed tokens (the sealed data of `s`) if the record still exists, is still at
    /// `s.generation`, and no other owner holds the refresh lock (see [`Store::write_refresh`]).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn write_refresh(
        &self,
        handle: &str,
        s: &Session,
        owner: &str,
    ) -> Result<RefreshWrite, StoreError> {
        let blob = self.seal(handle, s)?;
        let r = self
            .store
            .write_refresh(handle, blob, s.generation, owner)
            .await;
        if let Some(c) = &self.cache {
            c.invalidate(handle);
        }
        r
    }

    fn open(&self, handle: &str, rec: &StoredRecord) -> Option<Session> {
        let Some(json) = self.keys.load().open(&record_aad(handle), &rec.blob) else {
            tracing::warn!(session = %short(handle), "session record does not open with any key");
            return None;
        };
        let Ok(mut s) = serde_json::from_slice::<Session>(&json) else {
            tracing::warn!(session = %short(handle), "session record has an unknown format");
            return None;
        };
        // The plain last-seen field can only move the idle expiry within the sealed record's
        // own bounds: never before the sealed value, never past now, and `expires_at` caps it
        // at the sealed absolute expiry. Whoever can write Redis cannot make a session live
        // longer than its absolute lifetime.
        s.last_seen = s.last_seen.max(rec.seen.min(self.clock.unix()));
        s.generation = rec.generation;
        (s.v == FORMAT_VERSION).then_some(s)
    }

    /// Reads a record and says what it is: missing, there but unreadable here, or live.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn load_record(&self, handle: &str) -> Result<Loaded, StoreError> {
        let Some(rec) = self.store.get_session(handle).await? else {
            return Ok(Loaded::Missing);
        };
        Ok(match self.open(handle, &rec) {
            None => Loaded::Unreadable,
            Some(s) if s.expires_at(self.idle) <= self.clock.unix() => Loaded::Missing,
            Some(s) => Loaded::Live(Box::new(s)),
        })
    }

    /// Reads a session by handle. `None` if missing, expired or unreadable (e.g. its key was
    /// removed from the ring).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn load(&self, handle: &str) -> Result<Option<Session>, StoreError> {
        Ok(match self.load_record(handle).await? {
            Loaded::Live(s) => Some(*s),
            Loaded::Missing | Loaded::Unreadable => None,
        })
    }

    /// Ends a session in the store: reads and deletes its record atomically, then removes it
    /// from its indexes. Returns `None` when there was no record, else the session that was
    /// deleted as it was at that moment (so a refresh that landed after `copy` was read is
    /// revoked too) — `Some(None)` when the deleted record does not open here.
    ///
    /// `copy` (what the caller read earlier, if anything) only names the index entries when
    /// the deleted record cannot be opened.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn take(
        &self,
        handle: &str,
        copy: Option<&Session>,
    ) -> Result<Option<Option<Session>>, StoreError> {
        Ok(self.take_record(handle, copy).await?.map(|(s, _)| s))
    }

    /// As [`Sessions::take`], with the deleted record's refresh generation (known even when
    /// the record does not open here).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn take_record(
        &self,
        handle: &str,
        copy: Option<&Session>,
    ) -> Result<Option<(Option<Session>, u64)>, StoreError> {
        let r = copy.map_or_else(
            || RecordRef {
                handle: handle.to_string(),
                subs: Vec::new(),
                sids: Vec::new(),
            },
            |s| self.record_ref(handle, s),
        );
        let taken = self.store.take_session(&r).await;
        if let Some(c) = &self.cache {
            c.invalidate(handle);
        }
        let Some(rec) = taken? else {
            return Ok(None);
        };
        self.ended.run(handle);
        if self.linger.is_some() {
            self.store.unschedule(handle).await?;
        }
        // The SPA's state goes with its session.
        if let Err(e) = self.store.delete_shared(&Self::state_key(handle)).await {
            tracing::warn!(session = %short(handle), error = %e, "the ended session's state was not deleted; it lapses with the session's lifetime");
        }
        let deleted = self.open(handle, &rec);
        if let Some(d) = &deleted {
            // The copy may be older than the record (or absent): unindex by what was deleted.
            let actual = self.record_ref(handle, d);
            if copy.is_none_or(|c| c.sub != d.sub || c.sid != d.sid) {
                self.store.unindex(&actual).await?;
            }
        }
        Ok(Some((deleted, rec.generation)))
    }

    /// The store key of the SPA's state of session `handle`.
    fn state_key(handle: &str) -> String {
        crate::crypto::hash(&format!("state:{handle}"))
    }

    fn state_aad(handle: &str) -> Vec<u8> {
        [b"cloakroom-state\0".as_slice(), handle.as_bytes()].concat()
    }

    /// Keeps `json` (the SPA's state) with session `s`, sealed, for as long as the session can
    /// live (its absolute expiry).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn save_state(
        &self,
        handle: &str,
        s: &Session,
        json: &[u8],
    ) -> Result<(), StoreError> {
        let left = s.absolute_expires_at - self.clock.unix();
        let Ok(ttl) = u64::try_from(left) else {
            return Ok(());
        };
        let blob = self.keys.load().seal(&Self::state_aad(handle), json);
        self.store
            .put_shared(
                &Self::state_key(handle),
                blob,
                Duration::from_secs(ttl.max(1)),
            )
            .await
    }

    /// The SPA's state of session `handle`, if any (and if it opens here).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn load_state(&self, handle: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .store
            .get_shared(&Self::state_key(handle))
            .await?
            .and_then(|b| self.keys.load().open(&Self::state_aad(handle), &b)))
    }

    /// A record as it is, expired or not: what the reaper looks at.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn peek(&self, handle: &str) -> Result<Option<Option<Session>>, StoreError> {
        Ok(self
            .store
            .get_session(handle)
            .await?
            .map(|rec| self.open(handle, &rec)))
    }

    fn leftover_key(handle: &str) -> String {
        crate::crypto::hash(&format!("leftover:{handle}"))
    }

    fn leftover_aad(handle: &str) -> Vec<u8> {
        [b"cloakroom-leftover\0".as_slice(), handle.as_bytes()].concat()
    }

    /// Keeps what is left of session `handle` for `window`.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn save_leftover(
        &self,
        handle: &str,
        left: &Leftover,
        window: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(left).map_err(|e| StoreError(format!("encode: {e}")))?;
        let blob = self.keys.load().seal(&Self::leftover_aad(handle), &json);
        self.store
            .put_shared(&Self::leftover_key(handle), blob, window)
            .await
    }

    /// Takes (reads and deletes) what is left of session `handle`, if anything.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn take_leftover(&self, handle: &str) -> Result<Option<Leftover>, StoreError> {
        let key = Self::leftover_key(handle);
        let Some(blob) = self.store.get_shared(&key).await? else {
            return Ok(None);
        };
        self.store.delete_shared(&key).await?;
        Ok(self
            .keys
            .load()
            .open(&Self::leftover_aad(handle), &blob)
            .and_then(|j| serde_json::from_slice(&j).ok()))
    }

    /// The idle timeout's reaping: how long records linger past expiry, if they do.
    #[must_use]
    pub fn linger(&self) -> Option<Duration> {
        self.linger
    }

    /// Deletes a session and its index entries; true if it existed.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn delete(&self, handle: &str, s: &Session) -> Result<bool, StoreError> {
        Ok(self.take(handle, Some(s)).await?.is_some())
    }

    /// Removes handles whose records are gone from the index of `value`, looking at no more
    /// than `n` random handles per index name: bounded work (a login calls it), whatever the
    /// number of sessions the user has; repeated calls prune everything stale eventually.
    /// Returns how many were removed.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn prune_sample(
        &self,
        index: Index,
        issuer: &str,
        value: &str,
        n: usize,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        let mut names = self.index_names(index, Some(issuer), value);
        names.extend(self.index_names(index, None, value));
        for name in names {
            let mut stale = Vec::new();
            for h in self.store.index_sample(index, &name, n).await? {
                if self.store.get_session(&h).await?.is_none() {
                    stale.push(h);
                }
            }
            if !stale.is_empty() {
                removed += stale.len();
                self.store.index_remove(index, &name, &stale).await?;
            }
        }
        Ok(removed)
    }

    /// Sessions in the indexes (`sub` or `sid`) of `value` at each of `issuers`, and in the
    /// unscoped index of earlier releases (sessions stored before the upgrade are there until
    /// they end; its unreadable records go to [`Found::unscoped`]). Live sessions are any
    /// provider's the indexes hold: callers still check the provider. A handle is pruned from
    /// an index only when its record no longer exists — never because this instance cannot
    /// open it (a key rotation in progress), so every instance keeps finding every session.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn find(
        &self,
        index: Index,
        issuers: &[&str],
        value: &str,
    ) -> Result<Found, StoreError> {
        let mut found = Found::default();
        let mut seen = std::collections::HashSet::new();
        // Every key's index name: an entry written by an instance whose ring has other keys
        // (mid-rotation) is found under a key both rings share.
        let mut names: Vec<(String, bool)> = issuers
            .iter()
            .flat_map(|iss| self.index_names(index, Some(iss), value))
            .map(|n| (n, true))
            .collect();
        names.extend(
            self.index_names(index, None, value)
                .into_iter()
                .map(|n| (n, false)),
        );
        for (name, scoped) in names {
            let mut stale = Vec::new();
            for h in self.store.index_members(index, &name).await? {
                if !seen.insert(h.clone()) {
                    continue;
                }
                match self.load_record(&h).await? {
                    Loaded::Live(s) => found.live.push((h, *s)),
                    Loaded::Unreadable if scoped => found.unreadable.push(h),
                    Loaded::Unreadable => found.unscoped.push(h),
                    Loaded::Missing => stale.push(h),
                }
            }
            if !stale.is_empty() {
                self.store.index_remove(index, &name, &stale).await?;
            }
        }
        Ok(found)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_header_is_built_once_per_token_and_never_for_another() {
        let h = BearerHeader::default();
        let a = Secret::new("token-a");
        let first = h.get(&a).unwrap();
        assert_eq!(first, "Bearer token-a");
        assert!(first.is_sensitive());
        // The same bytes, shared: built once.
        assert_eq!(
            h.get(&a).unwrap().as_bytes().as_ptr(),
            first.as_bytes().as_ptr()
        );
        // A copy whose token was replaced never sends the old one.
        let copy = h.clone();
        assert_eq!(copy.get(&Secret::new("token-b")).unwrap(), "Bearer token-b");
        assert!(BearerHeader::default()
            .get(&Secret::new("bad\ntoken"))
            .is_none());
        assert_eq!(format!("{h:?}"), "BearerHeader([redacted])");
    }
}

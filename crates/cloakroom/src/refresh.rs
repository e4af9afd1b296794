//! Keeping the access token fresh before it is forwarded (SPEC §3): one refresh at the IdP per
//! due token, across all instances, and no refresh token the IdP has rotated ever lost.
//!
//! **Due.** A token is due when less than `min(refresh_skew, ½ × its issued lifetime)` is left
//! ([`crate::session::Tokens::refresh_due`]): a token is never refreshed on every request, whatever the IdP's
//! lifetimes.
//!
//! **One flight per session.** The first request that finds its token due starts a *flight*: a
//! task detached from every browser request, so a client abort (an HTTP/2 `RST_STREAM`, a closed
//! tab) cannot drop it between the IdP's answer and the store write. Requests of the same
//! session on this instance join the flight instead of starting another. A request whose token
//! is still valid is forwarded at once with it; only a request whose token has expired waits for
//! the flight's result, at most `session.refresh_wait`.
//!
//! **The flight**, in order:
//! 1. re-read the record from the store (another instance may have refreshed already);
//! 2. take the Redis lock (`SET NX PX lease`, Lua). Held by another instance: poll the record
//!    until its token is no longer due or the lock frees. A cool-off marker: answer at once.
//!    With `store.lock_replicas` > 0, `WAIT` until that many replicas have the lock, so a
//!    failover does not hand it out twice;
//! 3. re-read once more under the lock, then the refresh grant — the one call bounded, by
//!    twice `oidc.timeout` (a refresh abandoned while the IdP still works on it may rotate the
//!    refresh token behind our back, so it gets longer than other IdP calls; it is detached,
//!    so only requests with an expired token wait, and only `session.refresh_wait`) — then
//!    ID-token checks (which may wait on a JWKS re-fetch, outside that bound);
//! 4. write the new tokens with [`Sessions::write_refresh`]: one Lua step that refuses when the
//!    record is gone (logged out meanwhile: the new tokens are revoked), when its refresh
//!    generation moved (another holder wrote: the *fence*), or when another owner holds the
//!    lock. A store failure is retried until the lease is nearly over;
//! 5. release the lock (`LockGuard`, on every path).
//!
//! **Failure classes.** `invalid_grant` ends the session (deleted, its tokens revoked; 401).
//! `invalid_client`/`unauthorized_client` (a client-secret rollover), 5xx, timeouts,
//! unreachable: the session is kept, an error (or warning) is logged and counted, and the
//! failure is remembered for `session.refresh_cooloff` — in this process, and across instances
//! by turning the Redis lock into a cool-off marker — so an IdP outage costs one IdP call per
//! session per cool-off. Meanwhile a valid token is forwarded, an expired one gets 503
//! `token_refresh_unavailable` with `Retry-After`.
//!
//! **What a Redis failover can still do.** The lock and the rotated refresh token live on an
//! asynchronously replicated master. Without `store.lock_replicas`, a failover within the
//! replication lag (typically milliseconds) of a lock or a refresh write can lose it: a second
//! instance may then refresh with the same refresh token (with reuse detection the IdP ends
//! that grant: one user logged out), or the new master may hold the previous refresh token
//! (same outcome at the next refresh). With `store.lock_replicas = N`, both the lock and the
//! write are `WAIT`ed for N replicas; only a failover to a replica that had not acknowledged
//! (N = 0, or more replicas lost at once than N) remains.
//!
//! Owns: when and how tokens are refreshed. Never builds a response (it returns [`Error`]s for
//! `routes` to map) and never reads a cookie.

use crate::client_tokens::ClientTokens;
use crate::clock::Clock;
use crate::config::{ExchangeSpec, ResourceSpec};
use crate::end::Ender;
use crate::error::Error;
use crate::oidc::grants::GrantError;
use crate::oidc::{OidcClient, RefreshError};
use crate::session::{short, DerivedToken, LockState, RefreshWrite, Session, Sessions, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How the refresher behaves (from `[session]`, `[oidc]` and `[store]`).
#[derive(Debug, Clone)]
pub struct RefreshConfig {
    /// `session.refresh_skew`: the longest refresh window.
    pub skew: Duration,
    /// `session.refresh_cooloff`: how long a transient failure is remembered per session.
    pub cooloff: Duration,
    /// `session.refresh_wait`: how long a request with an expired token waits for a flight.
    pub wait: Duration,
    /// How long the Redis lock is held at most: longer than the IdP call and the write retries.
    pub lease: Duration,
    /// `store.timeout`: one store operation.
    pub store_timeout: Duration,
    /// `store.lock_replicas`: replicas that must hold the lock (and the write) before going on.
    pub lock_replicas: u32,
    /// `session.without_refresh_token = "silent_login"`: the `login_url` to name.
    pub silent_login: Option<String>,
}

impl RefreshConfig {
    /// From the validated configuration.
    #[must_use]
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            skew: c.session.refresh_skew,
            cooloff: c.session.refresh_cooloff,
            wait: c.session.refresh_wait,
            lease: lease(c.oidc.timeout, c.store.timeout),
            store_timeout: c.store.timeout,
            lock_replicas: c.store.lock_replicas,
            silent_login: (c.session.without_refresh_token
                == crate::config::WithoutRefreshToken::SilentLogin)
                .then(|| format!("{}/login?prompt=none", c.server.auth_prefix)),
        }
    }
}

/// The lock lease: the refresh call (bounded by twice `oidc.timeout`), ID-token checks (one
/// JWKS fetch, bounded by `oidc.timeout`) and the store round trips and write retries, with
/// room to spare.
#[must_use]
pub fn lease(oidc_timeout: Duration, store_timeout: Duration) -> Duration {
    crate::oidc::refresh_timeout(oidc_timeout)
        + oidc_timeout
        + store_timeout * 4
        + Duration::from_secs(2)
}

/// Which of a session's tokens a flight renews.
#[derive(Debug, Clone)]
pub enum Target {
    /// The login's access token (refresh grant).
    Login,
    /// A per-resource token (the refresh grant with `resource`, RFC 8707): it uses, and may
    /// rotate, the session's refresh token, so it is serialized with the login's refreshes.
    Resource(Arc<ResourceSpec>),
    /// An exchanged token (RFC 8693), the login's access token as the subject.
    Exchange(Arc<ExchangeSpec>),
}

impl Target {
    /// Where the session keeps this token (`Tokens::derived`); `None` for the login's.
    fn key(&self) -> Option<&str> {
        match self {
            Target::Login => None,
            Target::Resource(r) => Some(&r.key),
            Target::Exchange(x) => Some(&x.key),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Target::Login => "login",
            Target::Resource(_) => "resource",
            Target::Exchange(_) => "exchange",
        }
    }

    fn derived<'s>(&self, s: &'s Session) -> Option<&'s DerivedToken> {
        self.key().and_then(|k| s.tokens.derived.get(k))
    }

    /// Whether this token of `s` needs renewing now.
    fn due(&self, s: &Session, now: i64, skew: Duration) -> bool {
        match self.key() {
            None => s.tokens.refresh_due(now, skew),
            Some(_) => self.derived(s).is_none_or(|d| d.due(now, skew)),
        }
    }

    /// Whether this token of `s` can still be sent.
    fn valid(&self, s: &Session, now: i64) -> bool {
        match self.key() {
            None => s.tokens.access_valid(now),
            Some(_) => self
                .derived(s)
                .is_some_and(|d| d.expires_at.is_none_or(|e| e > now)),
        }
    }

    /// The in-process flight (and cool-off) key of this token of session `handle`.
    fn flight(&self, handle: &str) -> String {
        match self.key() {
            None => handle.to_string(),
            Some(k) => format!("{handle}\u{0}{k}"),
        }
    }

    /// The error for "cannot be had now".
    pub(crate) fn unavailable(&self, why: String, retry_after: Duration) -> Error {
        match self {
            Target::Exchange(_) => Error::TokenExchangeUnavailable { why, retry_after },
            _ => Error::RefreshUnavailable { why, retry_after },
        }
    }

    /// The error for a renewal that finished without this token (its write was fenced by
    /// another): the next request has it.
    #[must_use]
    pub fn unavailable_now(&self) -> Error {
        self.unavailable(
            "the token was renewed by another request; try again".into(),
            Duration::from_secs(1),
        )
    }

    /// The error for "the IdP refuses it".
    fn denied(&self, why: String) -> Error {
        match self {
            Target::Exchange(_) => Error::TokenExchangeDenied(why),
            _ => Error::ResourceTokenDenied(why),
        }
    }
}

/// What a flight ended with; every waiter of that flight gets the same.
#[derive(Debug, Clone)]
enum Outcome {
    /// The session with a token that is not due (refreshed now, or by someone else).
    Fresh(Arc<Session>),
    /// The session is over (grant dead, logged out meanwhile).
    Ended,
    /// No new token now; the session is kept.
    Unavailable {
        why: Arc<str>,
        retry_after: Duration,
    },
    /// The IdP refuses this route's token (`invalid_target`, …); the session is kept.
    Denied(Arc<str>),
}

struct Flight {
    id: u64,
    result: watch::Receiver<Option<Outcome>>,
}

#[derive(Default)]
struct State {
    flights: HashMap<String, Flight>,
    /// Flights whose last attempt failed, until when, why, and whether the IdP refused
    /// (rather than failed): this process's view.
    cooling: HashMap<String, (Instant, Arc<str>, bool)>,
    next_id: u64,
}

/// The refresher: store, IdP client, locks, clock. See the module documentation.
pub struct Refresher {
    sessions: Sessions,
    /// Ends sessions, and knows each session's IdP ([`Ender::providers`]).
    ender: Ender,
    clock: Clock,
    cfg: RefreshConfig,
    state: Mutex<State>,
    /// Cloakroom's own tokens, for an exchange's `actor_token`.
    clients: Option<Arc<ClientTokens>>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

const POLL: Duration = Duration::from_millis(25);

/// Cool-off entries kept at most (one per session whose refresh failed recently).
const MAX_COOLING: usize = 100_000;

impl Refresher {
    /// A refresher over these parts.
    #[must_use]
    pub fn new(sessions: Sessions, ender: Ender, clock: Clock, cfg: RefreshConfig) -> Self {
        Self {
            sessions,
            ender,
            clock,
            cfg,
            state: Mutex::new(State::default()),
            clients: None,
        }
    }

    /// Takes exchanges' `actor_token`s from `clients`.
    #[must_use]
    pub fn with_client_tokens(mut self, clients: Arc<ClientTokens>) -> Self {
        self.clients = Some(clients);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Flights in progress in this process (for tests and metrics).
    #[must_use]
    pub fn flights(&self) -> usize {
        self.state().flights.len()
    }

    /// Returns the session with a usable access token: itself when not due or still valid
    /// (a refresh then runs in the background), else the result of the refresh.
    ///
    /// # Errors
    /// [`Error::Unauthenticated`] when the session ended (grant dead, deleted meanwhile, expired
    /// with nothing to refresh it); [`Error::RefreshUnavailable`] when the token has expired and
    /// no new one can be had now; [`Error::StoreUnavailable`].
    pub async fn ensure_fresh(
        self: &Arc<Self>,
        handle: &str,
        session: Arc<Session>,
    ) -> Result<Arc<Session>, Error> {
        self.ensure(handle, session, &Target::Login).await
    }

    /// As [`Refresher::ensure_fresh`] for one of the session's tokens: the session returned
    /// holds `target`'s token, not due or still valid. For an exchange, the login's token must
    /// be fresh first ([`Refresher::ensure_fresh`]): it is the subject token.
    ///
    /// # Errors
    /// As [`Refresher::ensure_fresh`]; and [`Error::ResourceTokenDenied`],
    /// [`Error::TokenExchangeDenied`] when the IdP refuses the token,
    /// [`Error::TokenExchangeUnavailable`] when it cannot be had now.
    pub async fn ensure(
        self: &Arc<Self>,
        handle: &str,
        session: Arc<Session>,
        target: &Target,
    ) -> Result<Arc<Session>, Error> {
        let now = self.clock.unix();
        if !target.due(&session, now, self.cfg.skew) {
            return Ok(session);
        }
        let valid = target.valid(&session, now);
        if let (Target::Resource(r), Some(asked)) = (target, &session.tokens.resources) {
            if !asked.contains(&r.resource) {
                return Err(target.denied(format!(
                    "the login did not ask for {} (a route added after this session signed in); a new login will",
                    r.resource
                )));
            }
        }
        if session.tokens.refresh_token.is_none() {
            match target {
                Target::Exchange(_) => {}
                Target::Resource(_) if valid => return Ok(session),
                Target::Resource(_) => {
                    return Err(target.denied(
                        "the session has no refresh token to ask for a per-resource token with"
                            .into(),
                    ))
                }
                // Nothing to refresh with: use the token while it lasts, then the session is over.
                Target::Login if valid => return Ok(session),
                Target::Login => {
                    self.ender
                        .end(handle, Some(&session), "expired_without_refresh_token")
                        .await?;
                    return Err(match &self.cfg.silent_login {
                        Some(url) => Error::SilentLoginPossible {
                            login_url: url.clone(),
                        },
                        None => Error::Unauthenticated,
                    });
                }
            }
        }
        let flight = target.flight(handle);
        if let Some((remaining, why, refused)) = self.cooling(&flight) {
            return fallback(session, valid, &why, refused, remaining, target);
        }
        let span = crate::trace::span!(
            "refresh",
            single_flight = tracing::field::Empty,
            blocking = !valid
        );
        let mut result = span.in_scope(|| self.join_or_start(handle, &flight, target));
        if valid {
            // Forwarded at once; the flight goes on without us.
            return Ok(session);
        }
        let waiting = tokio::time::timeout(self.cfg.wait, result.wait_for(Option::is_some));
        let waited = tracing::Instrument::instrument(waiting, span).await;
        let outcome = match waited {
            Ok(Ok(o)) => o.clone(),
            _ => None,
        };
        match outcome {
            Some(Outcome::Fresh(s)) => Ok(s),
            Some(Outcome::Ended) => Err(Error::Unauthenticated),
            Some(Outcome::Unavailable { why, retry_after }) => {
                Err(target.unavailable(why.to_string(), retry_after))
            }
            Some(Outcome::Denied(why)) => Err(target.denied(why.to_string())),
            None => Err(target.unavailable(
                "the refresh is taking longer than session.refresh_wait".into(),
                Duration::from_secs(1),
            )),
        }
    }

    fn cooling(&self, flight: &str) -> Option<(Duration, Arc<str>, bool)> {
        let now = self.clock.now();
        let mut st = self.state();
        match st.cooling.get(flight) {
            Some((until, why, refused)) if *until > now => {
                Some((*until - now, why.clone(), *refused))
            }
            Some(_) => {
                st.cooling.remove(flight);
                None
            }
            None => None,
        }
    }

    fn remember_cooloff(&self, flight: &str, d: Duration, why: &Arc<str>, refused: bool) {
        let now = self.clock.now();
        let mut st = self.state();
        if st.cooling.len() >= MAX_COOLING {
            st.cooling.retain(|_, (until, _, _)| *until > now);
        }
        if st.cooling.len() < MAX_COOLING {
            st.cooling
                .insert(flight.to_string(), (now + d, why.clone(), refused));
        }
    }

    /// The result of this session's flight, starting one if none is running.
    fn join_or_start(
        self: &Arc<Self>,
        handle: &str,
        flight: &str,
        target: &Target,
    ) -> watch::Receiver<Option<Outcome>> {
        let mut st = self.state();
        if let Some(f) = st.flights.get(flight) {
            crate::trace::single_flight("waited");
            return f.result.clone();
        }
        crate::trace::single_flight("leader");
        let (tx, rx) = watch::channel(None);
        st.next_id += 1;
        let id = st.next_id;
        st.flights.insert(
            flight.to_string(),
            Flight {
                id,
                result: rx.clone(),
            },
        );
        drop(st);
        let this = self.clone();
        let (handle, flight, target) = (handle.to_string(), flight.to_string(), target.clone());
        tokio::spawn(crate::logline::inherit(
            tracing::Instrument::in_current_span(async move {
                let outcome = this.fly(&handle, &flight, &target).await;
                let _ = tx.send(Some(outcome));
                let mut st = this.state();
                if st.flights.get(&flight).is_some_and(|f| f.id == id) {
                    st.flights.remove(&flight);
                }
            }),
        ));
        rx
    }

    /// One flight (see the module documentation). Never panics, never returns early without
    /// releasing the lock it took.
    async fn fly(&self, handle: &str, flight: &str, target: &Target) -> Outcome {
        match self.fly_inner(handle, flight, target).await {
            Ok(o) => o,
            Err(e) => Outcome::Unavailable {
                why: format!("session store: {e}").into(),
                retry_after: Duration::from_secs(1),
            },
        }
    }

    async fn fly_inner(
        &self,
        handle: &str,
        flight: &str,
        target: &Target,
    ) -> Result<Outcome, StoreError> {
        let owner = crate::crypto::random_token();
        let deadline = Instant::now() + self.cfg.lease + Duration::from_secs(1);
        loop {
            let Some(s) = self.sessions.load(handle).await? else {
                return Ok(Outcome::Ended);
            };
            if !target.due(&s, self.clock.unix(), self.cfg.skew) {
                return Ok(Outcome::Fresh(Arc::new(s)));
            }
            match self
                .sessions
                .store()
                .try_lock(handle, &owner, self.cfg.lease, self.clock.unix_ms())
                .await?
            {
                LockState::Acquired => {
                    let guard = LockGuard::new(&self.sessions, handle, &owner);
                    let outcome = self.refresh_locked(handle, flight, target, &guard).await;
                    guard.release().await;
                    return Ok(outcome);
                }
                LockState::CoolingOff(remaining) => {
                    // Another instance's refresh failed moments ago: remember it here too.
                    let why: Arc<str> = "a refresh of this session failed moments ago".into();
                    self.remember_cooloff(flight, remaining, &why, false);
                    return Ok(Outcome::Unavailable {
                        why,
                        retry_after: remaining,
                    });
                }
                LockState::Held => {
                    // Another instance is refreshing: wait for its result (the loop re-reads).
                    if Instant::now() > deadline {
                        return Ok(Outcome::Unavailable {
                            why: "timed out waiting for another instance's refresh".into(),
                            retry_after: Duration::from_secs(1),
                        });
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    async fn refresh_locked(
        &self,
        handle: &str,
        flight: &str,
        target: &Target,
        lock: &LockGuard,
    ) -> Outcome {
        if self.cfg.lock_replicas > 0 {
            self.wait_replicas("lock").await;
        }
        // Re-read under the lock: a holder that finished just before we took it wrote already.
        let s = match self.sessions.load(handle).await {
            Ok(Some(s)) => s,
            Ok(None) => return Outcome::Ended,
            Err(e) => {
                return Outcome::Unavailable {
                    why: format!("session store: {e}").into(),
                    retry_after: Duration::from_secs(1),
                }
            }
        };
        if !target.due(&s, self.clock.unix(), self.cfg.skew) {
            return Outcome::Fresh(Arc::new(s));
        }
        // The session's own IdP: where it logged in, and the only one its tokens mean anything to.
        // Bound to it by issuer and client_id too: a reload that re-pointed the name at
        // another IdP or registration ends the session, and nothing of it is sent there.
        let Some(oidc) = self.ender.providers().bound(s.binding()) else {
            tracing::warn!(
                event = "refresh_failed",
                session = %short(handle),
                provider = s.provider.as_deref().unwrap_or("-"),
                "the session's identity provider is no longer configured as it logged in (gone, or another issuer or client_id): the session ends"
            );
            crate::metrics::refresh("provider_removed");
            if let Err(e) = self.ender.end(handle, Some(&s), "provider_removed").await {
                tracing::warn!(session = %short(handle), error = %e, "ending the session failed");
            }
            return Outcome::Ended;
        };
        let new = match target {
            Target::Exchange(spec) => match self.exchange(&oidc, &s, spec).await {
                Ok(d) => {
                    let mut new = s.clone();
                    new.tokens.derived.insert(spec.key.clone(), d);
                    new
                }
                Err(e) => return self.exchange_failed(handle, flight, e, lock).await,
            },
            Target::Login | Target::Resource(_) => {
                let resource = match target {
                    Target::Resource(r) => Some(&**r),
                    _ => None,
                };
                let resp = match oidc.refresh_grant_for(&s.tokens, resource).await {
                    Ok(r) => r,
                    Err(e) => return self.failed(handle, flight, &s, e, lock).await,
                };
                // The IdP has answered: from here on its new refresh token is the only valid
                // one, and nothing below may lose it.
                let tokens = match oidc.finish_refresh(&resp, &s.tokens, &s.sub).await {
                    Ok(t) => t,
                    Err(e) => {
                        self.ender
                            .revoke_later(s.binding(), oidc.unchecked_tokens(&resp, &s.tokens));
                        return self.failed(handle, flight, &s, e, lock).await;
                    }
                };
                let mut new = s.clone();
                match resource {
                    None => {
                        new.tokens = tokens;
                        new.tokens.derived = s.tokens.derived.clone();
                        new.tokens.resources = s.tokens.resources.clone();
                    }
                    Some(spec) => {
                        // The login's access token stays; the refresh token (rotated or not)
                        // and any new ID token are the session's from now on.
                        new.tokens.refresh_token = tokens.refresh_token;
                        new.tokens.id_token = tokens.id_token;
                        new.tokens.derived.insert(
                            spec.key.clone(),
                            DerivedToken {
                                dpop_bound: tokens.dpop.is_some(),
                                access_token: tokens.access_token,
                                expires_at: tokens.access_expires_at,
                                lifetime: tokens.access_lifetime,
                                bearer_header: crate::session::BearerHeader::default(),
                            },
                        );
                    }
                }
                new
            }
        };
        self.write(handle, target, lock, new).await
    }

    /// The exchanged token for `spec`, the login's access token as the subject.
    async fn exchange(
        &self,
        oidc: &Arc<OidcClient>,
        s: &Session,
        spec: &ExchangeSpec,
    ) -> Result<DerivedToken, GrantError> {
        // The actor token is the session's own provider's client's: that IdP is the one the
        // exchange goes to, and no other provider's token is ever sent to it.
        let actor = match (&spec.actor, &self.clients) {
            (Some(a), Some(clients)) => Some(
                clients
                    .get_at(oidc, a)
                    .await
                    .map_err(|e| GrantError::Transient(format!("actor token: {e}")))?,
            ),
            (Some(_), None) => {
                return Err(GrantError::Transient(
                    "no client-token cache for the actor token".into(),
                ))
            }
            _ => None,
        };
        let g = oidc
            .exchange_token(
                &s.tokens.access_token,
                spec,
                actor.as_ref().map(|a| &a.access_token),
            )
            .await?;
        let now = self.clock.unix();
        Ok(DerivedToken {
            access_token: g.access_token,
            expires_at: g.lifetime.map(|l| now.saturating_add(l)),
            lifetime: g.lifetime,
            dpop_bound: false,
            bearer_header: crate::session::BearerHeader::default(),
        })
    }

    async fn exchange_failed(
        &self,
        handle: &str,
        flight: &str,
        e: GrantError,
        lock: &LockGuard,
    ) -> Outcome {
        match e {
            GrantError::Denied(why) => {
                crate::metrics::route_token("exchange", "refused");
                tracing::warn!(event = "token_exchange_refused", session = %short(handle), reason = %why, "the IdP refused the token exchange");
                self.denied(flight, why)
            }
            GrantError::ClientRejected(why) | GrantError::Transient(why) => {
                crate::metrics::route_token("exchange", "failed");
                tracing::error!(event = "token_exchange_unavailable", session = %short(handle), reason = %why, "token exchange failed; retried after the cool-off");
                self.cool_off(handle, flight, lock, why, false).await
            }
        }
    }

    /// Remembers a refusal for the cool-off, in this process only (other tokens of the
    /// session, and other instances, are not held back by it).
    fn denied(&self, flight: &str, why: String) -> Outcome {
        let why: Arc<str> = why.into();
        let d = self.cfg.cooloff;
        if !d.is_zero() {
            self.remember_cooloff(flight, d, &why, true);
        }
        Outcome::Denied(why)
    }

    /// Writes the renewed session (see the module documentation, step 4).
    async fn write(
        &self,
        handle: &str,
        target: &Target,
        lock: &LockGuard,
        mut new: Session,
    ) -> Outcome {
        let write_deadline = lock.acquired + self.cfg.lease - self.cfg.store_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.sessions.write_refresh(handle, &new, &lock.owner).await {
                Ok(RefreshWrite::Written) => {
                    if self.cfg.lock_replicas > 0 {
                        self.wait_replicas("refresh write").await;
                    }
                    if let Target::Login = target {
                        crate::metrics::refresh("ok");
                    } else {
                        crate::metrics::route_token(target.kind(), "ok");
                    }
                    tracing::info!(event = "refresh", token = target.kind(), session = %short(handle), sub = %new.sub, "tokens refreshed");
                    new.generation += 1;
                    return Outcome::Fresh(Arc::new(new));
                }
                Ok(RefreshWrite::Gone) => {
                    // Logged out while we refreshed: the new tokens must not outlive it.
                    crate::metrics::refresh("ended_meanwhile");
                    self.ender.revoke_session_later(new);
                    return Outcome::Ended;
                }
                Ok(RefreshWrite::Fenced) => {
                    crate::metrics::refresh("fenced");
                    tracing::error!(
                        event = "refresh_fenced",
                        session = %short(handle),
                        "refresh write refused: another holder refreshed this session meanwhile (lock lease ran out?)"
                    );
                    return match self.sessions.load(handle).await {
                        Ok(Some(cur)) => Outcome::Fresh(Arc::new(cur)),
                        Ok(None) => Outcome::Ended,
                        Err(e) => Outcome::Unavailable {
                            why: format!("session store: {e}").into(),
                            retry_after: Duration::from_secs(1),
                        },
                    };
                }
                Err(e) if Instant::now() + backoff < write_deadline => {
                    tracing::warn!(session = %short(handle), error = %e, "refresh write failed; retrying within the lease");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    crate::metrics::refresh("lost");
                    tracing::error!(
                        event = "refresh_write_failed",
                        session = %short(handle),
                        error = %e,
                        "the store refused the refreshed tokens for the whole lease; the session will need a new login if the IdP rotated its refresh token"
                    );
                    return Outcome::Unavailable {
                        why: format!("session store: {e}").into(),
                        retry_after: Duration::from_secs(1),
                    };
                }
            }
        }
    }

    async fn wait_replicas(&self, what: &str) {
        let n = self.cfg.lock_replicas;
        match self
            .sessions
            .store()
            .wait_replicas(n, self.cfg.store_timeout)
            .await
        {
            Ok(acked) if acked >= n => {}
            Ok(acked) => tracing::warn!(
                wanted = n,
                acked,
                what,
                "fewer replicas than store.lock_replicas acknowledged; a failover now could lose it"
            ),
            Err(e) => tracing::warn!(error = %e, what, "WAIT for replicas failed"),
        }
    }

    async fn failed(
        &self,
        handle: &str,
        flight: &str,
        s: &Session,
        e: RefreshError,
        lock: &LockGuard,
    ) -> Outcome {
        match e {
            RefreshError::Denied(why) => {
                crate::metrics::route_token("resource", "refused");
                tracing::warn!(event = "resource_token_refused", session = %short(handle), reason = %why, "the IdP refused a per-resource token");
                self.denied(flight, why)
            }
            RefreshError::Fatal(why) => {
                crate::metrics::refresh("fatal");
                tracing::info!(event = "refresh_refused", session = %short(handle), sub = %s.sub, reason = %why, "refresh refused; session ended");
                if let Err(e) = self.ender.end(handle, Some(s), "refresh_refused").await {
                    tracing::warn!(session = %short(handle), error = %e, "could not delete a session whose grant is dead");
                }
                Outcome::Ended
            }
            RefreshError::ClientRejected(why) => {
                crate::metrics::refresh("client_rejected");
                tracing::error!(
                    event = "refresh_client_rejected",
                    session = %short(handle),
                    reason = %why,
                    "the IdP refused this client's credentials on a refresh (client secret rotated? client disabled?); sessions are kept"
                );
                self.cool_off(handle, flight, lock, why, true).await
            }
            RefreshError::Transient(why) => {
                crate::metrics::refresh("transient");
                tracing::error!(event = "refresh_unavailable", session = %short(handle), reason = %why, "refresh failed (IdP unreachable, slow or failing); the session is kept, retried after the cool-off");
                self.cool_off(handle, flight, lock, why, true).await
            }
        }
    }

    /// Remembers a transient failure for the cool-off, here and (through the lock) for every
    /// instance.
    /// With `shared`, every instance's flights of this session hold back (the IdP is down for
    /// all of them); without, only this flight here.
    async fn cool_off(
        &self,
        handle: &str,
        flight: &str,
        lock: &LockGuard,
        why: String,
        shared: bool,
    ) -> Outcome {
        let d = self.cfg.cooloff;
        let why: Arc<str> = why.into();
        if !d.is_zero() {
            self.remember_cooloff(flight, d, &why, false);
            if !shared {
                return Outcome::Unavailable {
                    why,
                    retry_after: d.max(Duration::from_secs(1)),
                };
            }
            if let Err(e) = self
                .sessions
                .store()
                .cool_off(handle, &lock.owner, d, self.clock.unix_ms())
                .await
            {
                tracing::warn!(error = %e, "cool-off not recorded in the store");
            }
        }
        Outcome::Unavailable {
            why,
            retry_after: d.max(Duration::from_secs(1)),
        }
    }
}

fn fallback(
    session: Arc<Session>,
    valid: bool,
    why: &str,
    refused: bool,
    retry_after: Duration,
    target: &Target,
) -> Result<Arc<Session>, Error> {
    if valid {
        Ok(session)
    } else if refused {
        Err(target.denied(why.to_string()))
    } else {
        Err(target.unavailable(why.to_string(), retry_after))
    }
}

/// The Redis refresh lock this flight holds. [`LockGuard::release`] frees it; a guard dropped
/// without that (a panic) frees it from a spawned task, so the lock never outlives the flight
/// by more than one store round trip.
struct LockGuard {
    sessions: Sessions,
    handle: String,
    owner: String,
    acquired: Instant,
    released: bool,
}

impl LockGuard {
    fn new(sessions: &Sessions, handle: &str, owner: &str) -> Self {
        Self {
            sessions: sessions.clone(),
            handle: handle.to_string(),
            owner: owner.to_string(),
            acquired: Instant::now(),
            released: false,
        }
    }

    async fn release(mut self) {
        self.released = true;
        if let Err(e) = self
            .sessions
            .store()
            .unlock(&self.handle, &self.owner)
            .await
        {
            tracing::warn!(session = %short(&self.handle), error = %e, "refresh lock not released; its lease will end it");
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (sessions, handle, owner) = (
            self.sessions.clone(),
            std::mem::take(&mut self.handle),
            std::mem::take(&mut self.owner),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = sessions.store().unlock(&handle, &owner).await;
            });
        }
    }
}

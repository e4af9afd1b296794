//! Cloakroom's own tokens (`token = "client"` / `"user_or_client"` routes, and the
//! `actor_token` of a token exchange): the client credentials grant, one token per IdP client
//! (provider, issuer, client id) and [`ClientSpec`] (scope + resource), shared by every
//! instance.
//!
//! **Where it lives.** In this process (the hot path: no store round trip), and sealed in the
//! store ([`Store::put_shared`]) until it is due, so a new or restarted instance takes the one
//! its peers already have instead of asking the IdP again.
//!
//! **One grant per due token.** In this process, callers of one spec queue behind one async
//! mutex: the first asks, the others find its answer. Across instances, the same Redis lock
//! as a session refresh ([`Store::try_lock`]) under a handle of the spec's own: the holder
//! asks the IdP, the others poll the store until the new token is there or the lock frees.
//!
//! **Due** by the session tokens' rule ([`crate::session::DerivedToken::due`]): less than
//! `min(refresh_skew, ½ × lifetime)` left. A still-valid token is served while its renewal runs
//! (renewal happens on the request that found it due; a client token is cheap to ask for and
//! rotates nothing, so there is no detached flight as for a refresh).
//!
//! **Failures.** A refused request (`invalid_scope`, `invalid_target`, `unauthorized_client`)
//! answers 502 `client_token_refused` and is remembered for `session.refresh_cooloff`, as is an
//! unreachable IdP (503 `client_token_unavailable`): one IdP call per spec per cool-off.

use crate::clock::Clock;
use crate::config::ClientSpec;
use crate::error::Error;
use crate::oidc::grants::GrantError;
use crate::oidc::{OidcClient, Providers};
use crate::secret::Secret;
use crate::session::SharedKeys;
use crate::session::{BearerHeader, Credential, LockState, Store};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A client-credentials token.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientToken {
    /// The access token.
    pub access_token: Secret,
    /// When it expires (unix seconds on the lifecycle clock), if the IdP said.
    pub expires_at: Option<i64>,
    /// Its issued lifetime in seconds, if known.
    pub lifetime: Option<i64>,
    /// `Authorization: Bearer …`, built once.
    #[serde(skip)]
    header: BearerHeader,
}

impl std::fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl ClientToken {
    fn as_derived(&self) -> crate::session::DerivedToken {
        crate::session::DerivedToken {
            access_token: self.access_token.clone(),
            expires_at: self.expires_at,
            lifetime: self.lifetime,
            dpop_bound: false,
            bearer_header: BearerHeader::default(),
        }
    }

    fn due(&self, now: i64, skew: Duration) -> bool {
        self.as_derived().due(now, skew)
    }

    fn valid(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }

    /// What the proxy sends (always `Bearer`).
    #[must_use]
    pub fn credential(&self) -> Credential<'_> {
        Credential {
            token: &self.access_token,
            header: &self.header,
            dpop: None,
        }
    }
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<ClientToken>>,
    /// A failure remembered until then: (until, refused?, why).
    failed: Option<(Instant, bool, Arc<str>)>,
}

/// The client-token cache. See the module documentation.
pub struct ClientTokens {
    /// `[oidc]` (`Providers::primary`) is whose client the routes' own tokens are; an
    /// exchange's actor token is its session's provider's ([`ClientTokens::get_at`]).
    providers: Providers,
    store: Store,
    /// The sessions' key ring, swapped with theirs by a reload.
    keys: SharedKeys,
    clock: Clock,
    skew: Duration,
    cooloff: Duration,
    lease: Duration,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl std::fmt::Debug for ClientTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTokens").finish_non_exhaustive()
    }
}

const POLL: Duration = Duration::from_millis(25);

impl ClientTokens {
    /// Over this IdP and store; `skew`, `cooloff` and `lease` as for session refreshes.
    #[must_use]
    pub fn new(
        providers: Providers,
        store: Store,
        keys: SharedKeys,
        clock: Clock,
        skew: Duration,
        cooloff: Duration,
        lease: Duration,
    ) -> Self {
        Self {
            providers,
            store,
            keys,
            clock,
            skew,
            cooloff,
            lease,
            slots: Mutex::default(),
        }
    }

    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// Whose token for which spec: the provider, its issuer and Cloakroom's client id there,
    /// and the spec (scope + resource). A token of one provider's client is never handed out
    /// as another's, and a reload that points `[oidc]` at another IdP or client never finds the
    /// old one's token, here or in the store (nor does an instance with the other
    /// configuration).
    fn key(oidc: &OidcClient, spec: &ClientSpec) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            oidc.name(),
            oidc.issuer(),
            oidc.client_id(),
            spec.key
        )
    }

    /// The store name of a token, and of its lock.
    fn names(key: &str) -> (String, String) {
        let h = crate::crypto::hash(key);
        (h.clone(), format!("client-{h}"))
    }

    fn aad(key: &str) -> Vec<u8> {
        format!("client-token:{key}").into_bytes()
    }

    /// A token for `spec` that is not due (or still valid while its renewal failed).
    ///
    /// # Errors
    /// [`Error::ClientTokenRefused`], [`Error::ClientTokenUnavailable`].
    pub async fn get(&self, spec: &ClientSpec) -> Result<Arc<ClientToken>, Error> {
        self.get_at(&self.providers.primary(), spec).await
    }

    /// As [`ClientTokens::get`], with `oidc`'s client: an exchange's `actor_token` comes from
    /// the session's own provider, never from `[oidc]` for another provider's session.
    ///
    /// # Errors
    /// [`Error::ClientTokenRefused`], [`Error::ClientTokenUnavailable`].
    pub async fn get_at(
        &self,
        oidc: &Arc<OidcClient>,
        spec: &ClientSpec,
    ) -> Result<Arc<ClientToken>, Error> {
        let key = Self::key(oidc, spec);
        let slot = self.slot(&key);
        let now = self.clock.unix();
        // Fast path without waiting for a renewal in progress.
        if let Ok(s) = slot.try_lock() {
            if let Some(t) = s.current.as_ref().filter(|t| !t.due(now, self.skew)) {
                return Ok(t.clone());
            }
        }
        let mut s = slot.lock().await;
        let now = self.clock.unix();
        if let Some(t) = s.current.as_ref().filter(|t| !t.due(now, self.skew)) {
            return Ok(t.clone());
        }
        if let Some((until, refused, why)) = s.failed.clone() {
            if until > self.clock.now() {
                return self.fallback(&s, now, refused, &why, until - self.clock.now());
            }
            s.failed = None;
        }
        match self.renew(oidc, spec, &key).await {
            Ok(t) => {
                crate::metrics::route_token("client", "ok");
                s.current = Some(t.clone());
                Ok(t)
            }
            Err(e) => {
                let (refused, why) = match &e {
                    GrantError::Denied(w) | GrantError::ClientRejected(w) => (true, w.clone()),
                    GrantError::Transient(w) => (false, w.clone()),
                };
                crate::metrics::route_token("client", if refused { "refused" } else { "failed" });
                tracing::error!(event = "client_token_failed", reason = %why, "the client credentials grant failed");
                let why: Arc<str> = why.into();
                let d = self.cooloff.max(Duration::from_secs(1));
                s.failed = Some((self.clock.now() + d, refused, why.clone()));
                self.fallback(&s, now, refused, &why, d)
            }
        }
    }

    fn fallback(
        &self,
        s: &Slot,
        now: i64,
        refused: bool,
        why: &str,
        retry_after: Duration,
    ) -> Result<Arc<ClientToken>, Error> {
        if let Some(t) = s.current.as_ref().filter(|t| t.valid(now)) {
            return Ok(t.clone());
        }
        Err(if refused {
            Error::ClientTokenRefused(why.to_string())
        } else {
            Error::ClientTokenUnavailable {
                why: why.to_string(),
                retry_after,
            }
        })
    }

    /// The shared token if a peer has a fresh one, else a new one from the IdP under the
    /// cross-instance lock.
    async fn renew(
        &self,
        oidc: &OidcClient,
        spec: &ClientSpec,
        key: &str,
    ) -> Result<Arc<ClientToken>, GrantError> {
        let (name, lock) = Self::names(key);
        let owner = crate::crypto::random_token();
        let deadline = Instant::now() + self.lease;
        let store_err = |e: crate::session::StoreError| GrantError::Transient(e.to_string());
        loop {
            if let Some(t) = self.shared(key, &name).await.map_err(store_err)? {
                return Ok(t);
            }
            match self
                .store
                .try_lock(&lock, &owner, self.lease, self.clock.unix_ms())
                .await
                .map_err(store_err)?
            {
                LockState::Acquired => {
                    let r = self.ask(oidc, spec, key, &name).await;
                    if let Err(e) = self.store.unlock(&lock, &owner).await {
                        tracing::warn!(error = %e, "client-token lock not released; its lease will end it");
                    }
                    return r;
                }
                LockState::CoolingOff(_) | LockState::Held if Instant::now() > deadline => {
                    return Err(GrantError::Transient(
                        "timed out waiting for another instance's client token".into(),
                    ));
                }
                LockState::CoolingOff(_) | LockState::Held => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// The token a peer stored, if it is not due.
    async fn shared(
        &self,
        key: &str,
        name: &str,
    ) -> Result<Option<Arc<ClientToken>>, crate::session::StoreError> {
        let Some(blob) = self.store.get_shared(name).await? else {
            return Ok(None);
        };
        let t = self
            .keys
            .load()
            .open(&Self::aad(key), &blob)
            .and_then(|json| serde_json::from_slice::<ClientToken>(&json).ok());
        Ok(t.filter(|t| !t.due(self.clock.unix(), self.skew))
            .map(Arc::new))
    }

    async fn ask(
        &self,
        oidc: &OidcClient,
        spec: &ClientSpec,
        key: &str,
        name: &str,
    ) -> Result<Arc<ClientToken>, GrantError> {
        // A peer may have finished just before we took the lock.
        if let Ok(Some(t)) = self.shared(key, name).await {
            return Ok(t);
        }
        let g = oidc.client_credentials(spec).await?;
        let now = self.clock.unix();
        let t = ClientToken {
            access_token: g.access_token,
            expires_at: g.lifetime.map(|l| now.saturating_add(l)),
            lifetime: g.lifetime,
            header: BearerHeader::default(),
        };
        tracing::info!(
            event = "client_token",
            provider = oidc.name(),
            "client credentials token obtained"
        );
        // Kept in the store until it expires (one without an expiry: for an hour); a peer
        // takes it only while it is not due.
        let keep = t.expires_at.map_or(3600, |exp| exp - now).max(1);
        match serde_json::to_vec(&t) {
            Ok(json) => {
                let blob = self.keys.load().seal(&Self::aad(key), &json);
                let ttl = Duration::from_secs(u64::try_from(keep).unwrap_or(1));
                if let Err(e) = self.store.put_shared(name, blob, ttl).await {
                    tracing::warn!(error = %e, "client token not shared through the store; peers will ask the IdP for their own");
                }
            }
            Err(e) => tracing::warn!(error = %e, "client token not encodable"),
        }
        Ok(Arc::new(t))
    }
}

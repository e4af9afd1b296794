//! Ending sessions (SPEC §3 "ending a session"): logout, admin, back-channel logout, re-login,
//! a refresh the IdP refused, a token that expired with nothing to refresh it.
//!
//! Every path goes through [`Ender`]: the record is read and deleted in one atomic store step,
//! and the tokens *that record held* are revoked — not those of a copy read earlier, so a
//! refresh that landed in between is revoked too. Revocation runs detached, after the caller's
//! answer (the browser or the IdP does not wait for it); a failed revocation is logged and
//! counted by [`crate::oidc::OidcClient::revoke_tokens`], the session stays ended.
//!
//! Owns: the order "delete, then revoke what was deleted". Never decides *whether* a session
//! ends: its callers do.

use crate::oidc::{Binding, Providers};
use crate::session::{short, LockState, Session, Sessions, StoreError, Tokens};
use std::time::{Duration, Instant};

/// How often a step-up upgrade looks again at a refresh lock another owner holds.
const LOCK_POLL: Duration = Duration::from_millis(25);

/// Ends sessions and revokes what they held. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ender {
    sessions: Sessions,
    providers: Providers,
    /// The refresh lock's lease (`refresh::lease`): how long a step-up upgrade holds it, and
    /// about how long it waits for a refresh in flight.
    lock_lease: Duration,
}

impl Ender {
    /// Over these sessions and these IdPs (each session's tokens go back to its own);
    /// `lock_lease` is the refresh lock's lease (`refresh::lease`).
    #[must_use]
    pub fn new(sessions: Sessions, providers: Providers, lock_lease: Duration) -> Self {
        Self {
            sessions,
            providers,
            lock_lease,
        }
    }

    /// Ends one session. `copy` is what the caller read earlier, if anything (it names the
    /// index entries when the deleted record does not open here). Returns whether a record was
    /// deleted; the deleted record's tokens are revoked in the background.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer (then nothing was deleted).
    pub async fn end(
        &self,
        handle: &str,
        copy: Option<&Session>,
        reason: &'static str,
    ) -> Result<bool, StoreError> {
        let Some(deleted) = self.sessions.take(handle, copy).await? else {
            return Ok(false);
        };
        match deleted {
            Some(s) => {
                tracing::info!(
                    target: "audit", event = "session_ended",
                    reason,
                    session = %short(handle),
                    sub = %s.sub,
                    sid = s.sid.as_deref(),
                    ip = s.ip.as_deref(),
                    user_agent = s.user_agent.as_deref(),
                    "session ended"
                );
                self.revoke_session_later(s);
            }
            None => {
                tracing::warn!(
                    target: "audit", event = "session_ended",
                    reason,
                    session = %short(handle),
                    "session ended; its record does not open with this instance's keys, so its tokens were not revoked"
                );
                crate::metrics::revocation_failed();
            }
        }
        Ok(true)
    }

    /// Ends the session a re-login replaces (SPEC §1 callback). Deleted like any other; its
    /// tokens are revoked unless it belonged to the same user *and the same IdP session* (`sid`)
    /// as the new one: an IdP commonly issues both logins from one grant (oidc-provider does),
    /// and revoking the old refresh token would then revoke the new session's grant too. The
    /// grant is not orphaned in that case — the new session holds it, and its logout revokes it.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn end_replaced(&self, handle: &str, new: &Session) -> Result<bool, StoreError> {
        let Some(deleted) = self.sessions.take(handle, None).await? else {
            return Ok(false);
        };
        match deleted {
            Some(s) if same_grant(&s, new) => {
                tracing::info!(
                    target: "audit", event = "session_ended",
                    reason = "relogin",
                    session = %short(handle),
                    sub = %s.sub,
                    "session replaced by a new login in the same IdP session (its grant lives on in the new session)"
                );
            }
            Some(s) => {
                tracing::info!(
                    target: "audit", event = "session_ended",
                    reason = "relogin",
                    session = %short(handle),
                    sub = %s.sub,
                    "session replaced by a new login"
                );
                self.revoke_session_later(s);
            }
            None => {
                tracing::warn!(target: "audit", event = "session_ended", reason = "relogin", session = %short(handle), "replaced session does not open here; its tokens were not revoked");
            }
        }
        Ok(true)
    }

    /// Upgrades a session in place after a step-up login of the same user: the record under
    /// `handle` is replaced by `new` (the browser's cookie keeps naming it), and the old
    /// tokens are revoked unless they came from the same IdP session (see
    /// [`Ender::end_replaced`]). False, and nothing written, if the old record is gone.
    ///
    /// It runs under the session's refresh lock, so a refresh in flight (here or on another
    /// instance) writes first and its tokens are in the record taken here; and the new record
    /// gets a later refresh generation than the old one, so a refresh that read the old record
    /// and outlived its lease is fenced off the new one instead of writing the old grant's
    /// tokens over the step-up's (which would orphan the step-up grant).
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn upgrade(&self, handle: &str, new: &Session) -> Result<bool, StoreError> {
        // On a task of its own: a browser that gives up on the callback mid-way must leave
        // neither the record taken without its successor written nor the refresh lock held.
        let (this, handle, new) = (self.clone(), handle.to_string(), new.clone());
        let done = tokio::spawn(crate::logline::inherit(tracing::Instrument::in_current_span(async move {
            let owner = crate::crypto::random_token();
            let locked = this.lock_out_refreshes(&handle, &owner).await?;
            let upgraded = this.upgrade_locked(&handle, &new).await;
            if locked {
                if let Err(e) = this.sessions.store().unlock(&handle, &owner).await {
                    tracing::warn!(session = %short(&handle), error = %e, "refresh lock not released after a step-up upgrade; its lease will end it");
                }
            }
            upgraded
        })))
        .await;
        done.map_err(|e| StoreError(format!("the step-up upgrade stopped: {e}")))?
    }

    /// Takes the refresh lock of `handle` for `owner`, waiting (about a lease at most) while a
    /// refresh holds it. False when it was not taken: a cool-off marker (no refresh calls the
    /// IdP meanwhile) or a holder that outlived the wait (the generation still fences it).
    async fn lock_out_refreshes(&self, handle: &str, owner: &str) -> Result<bool, StoreError> {
        let deadline = Instant::now() + self.lock_lease + Duration::from_secs(1);
        loop {
            let now_ms = self.sessions.clock().unix_ms();
            match self
                .sessions
                .store()
                .try_lock(handle, owner, self.lock_lease, now_ms)
                .await?
            {
                LockState::Acquired => return Ok(true),
                LockState::CoolingOff(_) => return Ok(false),
                LockState::Held if Instant::now() >= deadline => {
                    tracing::warn!(session = %short(handle), "a refresh held the session's lock for longer than its lease; upgrading without it");
                    return Ok(false);
                }
                LockState::Held => tokio::time::sleep(LOCK_POLL).await,
            }
        }
    }

    async fn upgrade_locked(&self, handle: &str, new: &Session) -> Result<bool, StoreError> {
        let Some((deleted, generation)) = self.sessions.take_record(handle, None).await? else {
            return Ok(false);
        };
        let mut new = new.clone();
        new.generation = generation.saturating_add(1);
        let new = &new;
        self.sessions.save(handle, new).await?;
        tracing::info!(
            target: "audit", event = "session_upgraded",
            session = %short(handle),
            sub = %new.sub,
            "step-up login: the session was upgraded in place"
        );
        match deleted {
            Some(s) if same_grant(&s, new) => {
                // One grant: the login's refresh token is the new session's now. Only the
                // routes' own tokens of the old one are revoked.
                let oidc = self.provider(s.binding());
                let mut old = s.tokens;
                if !old.derived.is_empty() {
                    old.refresh_token = None;
                    self.revoke_derived_later(oidc, old);
                }
            }
            Some(s) => self.revoke_session_later(s),
            None => {
                tracing::warn!(session = %short(handle), "the upgraded session's old record did not open here; its tokens were not revoked")
            }
        }
        Ok(true)
    }

    /// Revokes only the routes' own tokens of `tokens` (not the login's access token, which
    /// is the same grant's as a live session's).
    fn revoke_derived_later(
        &self,
        oidc: Option<std::sync::Arc<crate::oidc::OidcClient>>,
        tokens: Tokens,
    ) {
        if let Some(oidc) = oidc {
            let revoke = async move { oidc.revoke_derived(&tokens).await };
            tokio::spawn(crate::logline::inherit(
                tracing::Instrument::in_current_span(revoke),
            ));
        }
    }

    /// The IdP of a session bound to `binding`; `None`, logged and counted as a failed
    /// revocation, when the configuration no longer has it, or has it pointing at another
    /// issuer or `client_id` (its tokens are then sent nowhere: [`Providers::bound`]).
    fn provider(&self, binding: Binding<'_>) -> Option<std::sync::Arc<crate::oidc::OidcClient>> {
        let found = self.providers.bound(binding);
        if found.is_none() {
            let changed = self.providers.of(binding.provider).is_some();
            tracing::warn!(
                event = "revocation_failed",
                provider = binding.provider.unwrap_or("-"),
                "{}",
                if changed {
                    "the session's identity provider now has another issuer or client_id; its tokens were not sent there"
                } else {
                    "the session's identity provider is no longer configured; its tokens were not revoked"
                }
            );
            crate::metrics::revocation_failed();
        }
        found
    }

    /// Ends each session, going on past failures: every one is attempted, and every one that
    /// was deleted has its tokens revoked. Returns how many were deleted.
    ///
    /// # Errors
    /// The first [`StoreError`], after all were attempted.
    pub async fn end_all(
        &self,
        list: Vec<(String, Option<Session>)>,
        reason: &'static str,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        let mut first_err = None;
        for (handle, copy) in list {
            match self.end(&handle, copy.as_ref(), reason).await {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(session = %short(&handle), error = %e, "ending a session failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(n), Err)
    }

    /// Revokes what session `s` held at its provider, in the background (nowhere when its
    /// provider is not the one it logged in with any more).
    pub fn revoke_session_later(&self, s: Session) {
        if let Some(oidc) = self.provider(s.binding()) {
            let tokens = s.tokens;
            let revoke = async move { oidc.revoke_tokens(&tokens).await };
            tokio::spawn(crate::logline::inherit(
                tracing::Instrument::in_current_span(revoke),
            ));
        }
    }

    /// Revokes `tokens` at the provider of `binding` (a session's or a pending login's) in
    /// the background.
    pub fn revoke_later(&self, binding: Binding<'_>, tokens: Tokens) {
        if let Some(oidc) = self.provider(binding) {
            let revoke = async move { oidc.revoke_tokens(&tokens).await };
            tokio::spawn(crate::logline::inherit(
                tracing::Instrument::in_current_span(revoke),
            ));
        }
    }

    /// The providers.
    #[must_use]
    pub fn providers(&self) -> &Providers {
        &self.providers
    }
}

/// Whether `old` and `new` hold one grant: the same user of the same provider, in the same IdP
/// session (`sid`).
fn same_grant(old: &Session, new: &Session) -> bool {
    old.sub == new.sub && old.provider == new.provider && old.sid.is_some() && old.sid == new.sid
}

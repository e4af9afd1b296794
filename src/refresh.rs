//! Keeping the access token fresh before it is forwarded (SPEC §3): single-flight refresh per
//! session, within this process and across instances.
//!
//! 1. Fresh enough (more than `refresh_skew` left)? Use it.
//! 2. Take the in-process lock of this session, so one task per instance goes on; the others
//!    wait for it and then re-read the session.
//! 3. Re-read the session: another instance may have refreshed it already.
//! 4. Take the Redis lock (`SET NX PX lease`). If another instance holds it, poll the session
//!    until its tokens change or the lock frees.
//! 5. Holding the lock: re-read once more, call the IdP, write the new tokens (only the sealed
//!    data, only if the session still exists), release the lock.
//!
//! The lease cannot run out while the IdP call is in flight: the call is bounded by
//! `oidc.timeout` (reqwest's own timeout, plus a `tokio::time::timeout` around it), and the lease
//! is twice the IdP timeout plus twice the store timeout plus a second.
//!
//! Failures: `invalid_grant` and friends end the session (401). A transient IdP failure forwards
//! the current token while it is still valid, else answers 503 `token_refresh_unavailable`
//! (with `Retry-After`) and keeps the session.

use crate::app::AppState;
use crate::error::Error;
use crate::oidc::{needs_refresh, RefreshError};
use crate::session::{now_unix, short, Session};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// In-process refresh locks, one per session being refreshed.
#[derive(Debug, Default)]
pub struct LocalLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl LocalLocks {
    fn get(&self, handle: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = m.get(handle).and_then(Weak::upgrade) {
            return l;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(tokio::sync::Mutex::new(()));
        m.insert(handle.to_string(), Arc::downgrade(&l));
        l
    }
}

const POLL: Duration = Duration::from_millis(25);

fn lease(state: &AppState) -> Duration {
    state.config.oidc_timeout * 2 + state.config.store_timeout * 2 + Duration::from_secs(1)
}

fn still_valid(s: &Session) -> bool {
    s.tokens
        .access_expires_at
        .is_none_or(|exp| exp > now_unix())
}

/// As [`ensure_fresh`] for a session shared with the session cache: copied only when it must
/// be refreshed.
///
/// # Errors
/// As [`ensure_fresh`].
pub(crate) async fn ensure_fresh_shared(
    state: &AppState,
    handle: String,
    session: Arc<Session>,
) -> Result<Arc<Session>, Error> {
    if !needs_refresh(&session.tokens, state.config.refresh_skew) {
        return Ok(session);
    }
    ensure_fresh(state, handle, Arc::unwrap_or_clone(session))
        .await
        .map(Arc::new)
}

/// Returns the session with a usable access token, refreshing it first when needed.
///
/// # Errors
/// [`Error::Unauthenticated`] when the session ended (grant dead, deleted meanwhile);
/// [`Error::RefreshUnavailable`] when the IdP cannot refresh and the token has expired;
/// [`Error::StoreUnavailable`].
pub(crate) async fn ensure_fresh(
    state: &AppState,
    handle: String,
    session: Session,
) -> Result<Session, Error> {
    let skew = state.config.refresh_skew;
    if !needs_refresh(&session.tokens, skew) {
        return Ok(session);
    }
    if session.tokens.refresh_token.is_none() {
        // Nothing to refresh with: use the token while it lasts, then the session is over.
        if still_valid(&session) {
            return Ok(session);
        }
        state.sessions.delete(&handle, &session).await?;
        return Err(Error::Unauthenticated);
    }
    let local = state.refresh_locks.get(&handle);
    let _local = local.lock().await;
    let Some(session) = state.sessions.load(&handle).await? else {
        return Err(Error::Unauthenticated);
    };
    if !needs_refresh(&session.tokens, skew) {
        return Ok(session);
    }

    let owner = crate::crypto::random_token();
    let lease = lease(state);
    let deadline = Instant::now() + lease + Duration::from_secs(1);
    loop {
        if state
            .sessions
            .store()
            .try_lock(&handle, &owner, lease)
            .await?
        {
            break;
        }
        // Another instance is refreshing: wait for its result.
        tokio::time::sleep(POLL).await;
        let Some(s) = state.sessions.load(&handle).await? else {
            return Err(Error::Unauthenticated);
        };
        if !needs_refresh(&s.tokens, skew) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return fallback(s, "timed out waiting for another instance's refresh".into());
        }
    }
    let result = refresh_locked(state, &handle).await;
    if let Err(e) = state.sessions.store().unlock(&handle, &owner).await {
        tracing::warn!(session = %short(&handle), error = %e, "refresh lock not released; its lease will end it");
    }
    result
}

async fn refresh_locked(state: &AppState, handle: &str) -> Result<Session, Error> {
    let Some(mut s) = state.sessions.load(handle).await? else {
        return Err(Error::Unauthenticated);
    };
    if !needs_refresh(&s.tokens, state.config.refresh_skew) {
        return Ok(s);
    }
    let call = state.oidc.refresh(&s.tokens, &s.sub);
    let outcome = match tokio::time::timeout(state.config.oidc_timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(RefreshError::Transient("IdP call timed out".into())),
    };
    match outcome {
        Ok(tokens) => {
            s.tokens = tokens;
            if !state.sessions.update(handle, &s).await? {
                // Logged out while we refreshed: the new tokens must not outlive the session.
                state.oidc.revoke_tokens(&s.tokens).await;
                return Err(Error::Unauthenticated);
            }
            crate::metrics::refresh("ok");
            tracing::info!(event = "refresh", session = %short(handle), sub = %s.sub, "tokens refreshed");
            Ok(s)
        }
        Err(RefreshError::Fatal(why)) => {
            crate::metrics::refresh("fatal");
            tracing::info!(event = "refresh_refused", session = %short(handle), sub = %s.sub, reason = %why, "refresh refused; session ended");
            state.sessions.delete(handle, &s).await?;
            Err(Error::Unauthenticated)
        }
        Err(RefreshError::Transient(why)) => {
            crate::metrics::refresh("transient");
            tracing::warn!(event = "refresh_unavailable", session = %short(handle), reason = %why, "refresh failed; will retry");
            fallback(s, why)
        }
    }
}

fn fallback(s: Session, why: String) -> Result<Session, Error> {
    if still_valid(&s) {
        Ok(s)
    } else {
        Err(Error::RefreshUnavailable(why))
    }
}

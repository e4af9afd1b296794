//! The session loader stage: from the request's cookie to the live session, through the key
//! ring, the session cache and the store, sliding the idle timeout on activity.
//!
//! Owns: which session a request belongs to. Never refreshes (that is [`crate::refresh`]) and
//! ends a session only when its provider no longer is the one it logged in with (a reload
//! re-pointed it at another issuer or `client_id`): deleted, no token of it sent anywhere.

use crate::clock::Clock;
use crate::cookies::Cookies;
use crate::error::Error;
use crate::oidc::Providers;
use crate::session::{Session, Sessions};
use http::HeaderMap;
use std::sync::Arc;
use std::time::Duration;

/// Loads the browser's current session.
#[derive(Debug, Clone)]
pub(crate) struct SessionLoader {
    sessions: Sessions,
    cookies: Arc<Cookies>,
    clock: Clock,
    slide_interval: i64,
    /// Each session's provider must still be the one it logged in with.
    providers: Providers,
}

impl SessionLoader {
    /// `idle_timeout` sets how often activity is written ([`slide_interval`]).
    #[must_use]
    pub(crate) fn new(
        sessions: Sessions,
        cookies: Arc<Cookies>,
        clock: Clock,
        idle_timeout: Duration,
        providers: Providers,
    ) -> Self {
        Self {
            sessions,
            cookies,
            clock,
            slide_interval: slide_interval(idle_timeout),
            providers,
        }
    }

    /// The browser's current session: `(handle, session)`, or `None` for no, bad or expired
    /// cookie. With `slide`, activity moves the idle timeout (written at most once per slide
    /// interval).
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`].
    pub(crate) async fn current(
        &self,
        headers: &HeaderMap,
        slide: bool,
    ) -> Result<Option<(String, Session)>, Error> {
        Ok(self
            .current_shared(headers, slide)
            .await?
            .map(|(handle, s)| (handle, Arc::unwrap_or_clone(s))))
    }

    /// As [`SessionLoader::current`], sharing the session with the session cache instead of
    /// copying it (the API proxy path).
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`].
    pub(crate) async fn current_shared(
        &self,
        headers: &HeaderMap,
        slide: bool,
    ) -> Result<Option<(String, Arc<Session>)>, Error> {
        let Some(id) = self.cookies.session_id(headers) else {
            return Ok(None);
        };
        let handle = id.handle();
        let span = crate::trace::span!(
            "session.load",
            cache = tracing::field::Empty,
            cloakroom.session = crate::session::short(&handle)
        );
        let loaded = tracing::Instrument::instrument(self.sessions.load_shared(&handle), span);
        let Some(mut s) = loaded.await? else {
            return Ok(None);
        };
        if self.providers.bound(s.binding()).is_none() {
            // Its provider is gone or is now another IdP or registration: the session ends
            // here, its tokens revoked nowhere (the IdP that issued them is not configured any
            // more; the one under its name now must not see them).
            self.sessions.take(&handle, Some(&s)).await?;
            tracing::warn!(
                target: "audit", event = "session_ended",
                reason = "provider_changed",
                session = %crate::session::short(&handle),
                sub = %s.sub,
                provider = s.provider.as_deref().unwrap_or("-"),
                "the session's identity provider is no longer configured as it logged in (gone, or another issuer or client_id); ended, its tokens sent nowhere"
            );
            crate::metrics::revocation_failed();
            return Ok(None);
        }
        if slide {
            let now = self.clock.unix();
            if now - s.last_seen >= self.slide_interval {
                Arc::make_mut(&mut s).last_seen = now;
                if !self.sessions.touch(&handle, &s).await? {
                    return Ok(None);
                }
            }
        }
        Ok(Some((handle, s)))
    }
}

/// Sliding writes at most once per this many seconds: a tenth of the idle timeout, between 1 s
/// and 60 s. The idle expiry is therefore exact to within that interval, and a busy session
/// costs one store write per interval instead of one per request.
#[must_use]
pub(crate) fn slide_interval(idle_timeout: Duration) -> i64 {
    let idle = i64::try_from(idle_timeout.as_secs()).unwrap_or(i64::MAX);
    (idle / 10).clamp(1, 60)
}

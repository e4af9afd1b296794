//! `GET /auth/callback?code&state` (or `?error&state`), and a provider's own
//! `GET /auth/callback/<name>`: finish the code flow (SPEC §1).
//!
//! rate limit → the pending login from the login cookie named for `state` (sealed for it) →
//! the login's provider must be the one this callback is for → `iss` (RFC 9207; required on
//! a callback several providers share) → "state used" marker (once) → (IdP error → back to `return_to`) →
//! exchange code → verify ID token → new session → end the browser's previous session →
//! cookies → 302. From the exchange until the session is stored, every way out (a failed
//! step-up, a store error) revokes the new tokens, unless they are of the browser's live
//! session's grant (`Callback::revoke_unheld`).

use crate::body::{empty, Body};
use crate::clock::Clock;
use crate::context::RequestCtx;
use crate::cookies::Cookies;
use crate::end::Ender;
use crate::error::Error;
use crate::oidc::Providers;
use crate::query::{query_pairs, query_param};
use crate::ratelimit::LoginLimiter;
use crate::session::{PendingLogin, Session, SessionId, Sessions, FORMAT_VERSION, PENDING_TTL};
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// `GET /auth/callback` and what it uses.
#[derive(Debug)]
pub(crate) struct Callback {
    pub(crate) limiter: LoginLimiter,
    pub(crate) cookies: Arc<Cookies>,
    /// The identity providers: the pending login says which one this is.
    pub(crate) providers: Providers,
    pub(crate) sessions: Sessions,
    pub(crate) ender: Ender,
    pub(crate) clock: Clock,
    pub(crate) absolute_timeout: Duration,
    /// `session.remember`.
    pub(crate) remember: crate::config::RememberConfig,
    /// `session.reconstitute`: ends this browser's timed-out session and hands over its state.
    pub(crate) reaper: Option<crate::reaper::Reaper>,
}

impl Callback {
    #[allow(clippy::too_many_lines)]
    pub(crate) async fn handle<B>(
        &self,
        req: &Request<B>,
        ctx: &RequestCtx,
        path_provider: Option<&str>,
    ) -> Result<Response<Body>, Error> {
        let state = self;
        state.limiter.check(ctx.client_ip)?;
        let pairs = query_pairs(req.uri());
        let st = query_param(&pairs, "state")?.ok_or(Error::InvalidState("missing state"))?;
        if st.is_empty() || st.len() > 128 {
            return Err(Error::InvalidState("malformed state"));
        }
        // The pending login comes from the login cookie named for this state, sealed for it: a
        // state from another browser finds no cookie here.
        let sealed = match state.cookies.pending(req.headers(), &st) {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(Error::InvalidState(
                    "no login in progress for this state here",
                ))
            }
            Err(()) => {
                // Two values for one login cookie: ambiguous, refused, and cleared.
                let mut r = Error::InvalidState("ambiguous login cookie").into_response();
                r.headers_mut()
                    .append(header::SET_COOKIE, state.cookies.expire_pending(&st));
                return Ok(r);
            }
        };
        let pending: PendingLogin = serde_json::from_slice(&sealed)
            .map_err(|_| Error::InvalidState("unreadable pending login"))?;
        let now = state.clock.unix();
        let ttl = i64::try_from(PENDING_TTL.as_secs()).unwrap_or(600);
        if pending.created_at + ttl < now {
            return Err(Error::InvalidState("the login took too long"));
        }
        // The provider the login went to, with the issuer and client_id it had then: a reload
        // in between that re-pointed it at another IdP ends the login here.
        let oidc = state
            .providers
            .bound(pending.binding())
            .ok_or(Error::InvalidState(
                "the login's identity provider is no longer configured as it started",
            ))?
            .clone();

        // Mix-up defence (RFC 9700 §4.4): a response must come back to the callback of the
        // provider the login went to. One to another provider's callback (sent there by a
        // provider that passed the login on to an honest one) is refused before its code goes
        // to any token endpoint.
        if oidc.callback_name() != path_provider {
            return Err(Error::InvalidState(
                "this callback is not the login's identity provider's",
            ));
        }
        // RFC 9207: when present (or promised by the IdP), `iss` must be our issuer. On a
        // callback several providers share, nothing else tells them apart: `iss` is required.
        let shared = path_provider.is_none()
            && state
                .providers
                .all()
                .iter()
                .filter(|c| c.callback_name().is_none())
                .count()
                > 1;
        match query_param(&pairs, "iss")? {
            Some(iss) if iss != oidc.issuer() => {
                return Err(Error::InvalidState("iss does not match the issuer"));
            }
            None if oidc.promises_iss() || shared => {
                return Err(Error::InvalidState(
                    "iss missing from the authorization response",
                ));
            }
            _ => {}
        }
        // Taken once: a replayed callback (same state, same cookie) is refused. The marker lives
        // as long as the login cookie could.
        let used = crate::crypto::hash(&format!("state-used:{st}"));
        if !state
            .sessions
            .store()
            .remember_once(&used, PENDING_TTL)
            .await?
        {
            return Err(Error::InvalidState("this login was already finished"));
        }

        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::FOUND;
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp.headers_mut()
            .append(header::SET_COOKIE, state.cookies.expire_pending(&st));

        if let Some(err) = query_param(&pairs, "error")? {
            // The IdP said no (e.g. login_required after prompt=none): back to the SPA, no session.
            let code: String = err
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            set_location(&mut resp, &with_error(&pending.return_to, &code))?;
            crate::metrics::login_finished("idp_error");
            return Ok(resp);
        }
        let code =
            query_param(&pairs, "code")?.ok_or(Error::InvalidRequest("missing code".into()))?;

        let result = match oidc
            .exchange_code(
                &code,
                &pending.pkce_verifier,
                &pending.nonce,
                pending.dpop.as_ref(),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                crate::metrics::login_finished(e.status_and_code().1);
                return Err(e);
            }
        };

        // The browser's earlier sessions (the one it had when the login started, and the one
        // its cookie names now, should the callback carry it).
        let current = state
            .cookies
            .session_id(req.headers())
            .map(|id| id.handle());
        let mut previous: Vec<String> = pending.previous.iter().cloned().chain(current).collect();
        previous.dedup();
        // Until a stored session holds them, the new tokens are revoked on every way out
        // (`Callback::revoke_unheld`): a store that fails from here on leaves no live grant
        // behind.
        let unheld = Unheld {
            sub: result.sub.clone(),
            sid: result.sid.clone(),
            provider: pending.provider.clone(),
            issuer: oidc.issuer().to_string(),
            client_id: oidc.client_id().to_string(),
            tokens: result.tokens.clone(),
        };
        macro_rules! or_revoke {
            (store $e:expr) => {
                or_revoke!($e.map_err(Error::from))
            };
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => {
                        state.revoke_unheld(&previous, unheld).await;
                        crate::metrics::login_finished(e.status_and_code().1);
                        return Err(e);
                    }
                }
            };
        }

        // A step-up login must have reached what it asked for (RFC 9470 §4: the IdP may
        // answer with less); if not, back to the SPA with an error, nothing changed.
        if let Some(up) = &pending.step_up {
            if !up.satisfied_by(
                &result.claims,
                crate::session::now_unix(),
                oidc.clock_skew(),
            ) {
                tracing::info!(target: "audit", event = "step_up_failed", sub = %result.sub, "the step-up login did not reach the acr or auth_time asked for");
                crate::metrics::login_finished("step_up_failed");
                // Not the grant of the session it meant to upgrade (`Callback::revoke_unheld`):
                // a failed step-up must not end the live session's grant.
                state.revoke_unheld(&previous, unheld).await;
                set_location(&mut resp, &with_error(&pending.return_to, "step_up_failed"))?;
                return Ok(resp);
            }
        }
        let now = state.clock.unix();
        if let (Some(_), Some(old)) = (&pending.step_up, &pending.previous) {
            if or_revoke!(
                state
                    .upgrade_in_place(old, &result, &oidc, req, ctx, now)
                    .await
            ) {
                set_location(&mut resp, &pending.return_to)?;
                return Ok(resp);
            }
        }
        let id = SessionId::generate();
        let handle = id.handle();
        let remembered = pending.remember && state.remember.enabled;
        let absolute = if remembered {
            // Never past the refresh token's own end, where the IdP says it: a session that
            // can no longer refresh is not worth remembering.
            let own = secs(state.remember.absolute_timeout);
            result
                .refresh_expires_in
                .filter(|r| *r > 0)
                .map_or(own, |r| own.min(r))
        } else {
            secs(state.absolute_timeout)
        };
        // Re-constitution: one that timed out idle leaves its state to the same user; anyone
        // else gets nothing, and the leftover is gone either way.
        let mut restored: Option<String> = None;
        let mut reconstituted = false;
        if let Some(reaper) = &state.reaper {
            for old in &previous {
                if let Err(e) = reaper.reap(old).await {
                    tracing::debug!(session = %crate::session::short(old), error = %e, "reaping the previous session at login failed");
                }
                match or_revoke!(store state.sessions.take_leftover(old).await) {
                    Some(left)
                        if left.sub == result.sub
                            && left.provider == pending.provider
                            && left.issuer.as_deref().is_none_or(|i| i == oidc.issuer())
                            && left
                                .client_id
                                .as_deref()
                                .is_none_or(|c| c == oidc.client_id()) =>
                    {
                        reconstituted = true;
                        restored = restored.or(left.state);
                    }
                    Some(_) => {
                        tracing::info!(target: "audit", event = "reconstitution_refused", session = %crate::session::short(old), "another user signed in; the timed-out session's leftover was dropped")
                    }
                    None => {}
                }
            }
        }
        let session = Session {
            v: FORMAT_VERSION,
            sub: result.sub,
            sid: result.sid,
            claims: result.claims,
            tokens: result.tokens,
            created_at: now,
            last_seen: now,
            absolute_expires_at: now + absolute,
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect()),
            ip: Some(ctx.client_ip.to_string()),
            remembered,
            idle_timeout: remembered.then(|| secs(state.remember.idle_timeout)),
            reconstituted,
            provider: pending.provider.clone(),
            issuer: Some(oidc.issuer().to_string()),
            client_id: Some(oidc.client_id().to_string()),
            generation: 0,
        };
        or_revoke!(store state.sessions.save(&handle, &session).await);
        if let Some(st) = &restored {
            // The session stands (its tokens are held); only the hand-over is lost.
            if let Err(e) = state
                .sessions
                .save_state(&handle, &session, st.as_bytes())
                .await
            {
                tracing::warn!(session = %crate::session::short(&handle), error = %e, "the timed-out session's state was not handed over");
            }
        }
        // Frequent re-logins must not grow the user's index: drop the handles whose records are
        // gone (expired, ended elsewhere) while we are here.
        if let Err(e) = state
            .sessions
            .prune_sample(crate::session::Index::Sub, oidc.issuer(), &session.sub, 16)
            .await
        {
            tracing::debug!(error = %e, "index pruning at login failed; the next lookup prunes");
        }
        tracing::info!(
            target: "audit", event = "login",
            session = %crate::session::short(&handle),
            sub = %session.sub,
            sid = session.sid.as_deref(),
            ip = session.ip.as_deref(),
            user_agent = session.user_agent.as_deref(),
            remembered = session.remembered,
            reconstituted = session.reconstituted,
            provider = oidc.name(),
            "session created"
        );
        crate::metrics::login_finished("ok");

        // No fixation and no orphan: the browser's earlier sessions end — deleted, their tokens
        // revoked (see `Ender::end_replaced` for the one exception). The new session has a new id.
        for old in previous.into_iter().filter(|h| *h != handle) {
            if let Err(e) = state.ender.end_replaced(&old, &session).await {
                // The new session stands; the old one expires by its TTL.
                tracing::warn!(session = %crate::session::short(&old), error = %e, "previous session not ended at re-login");
            }
        }

        let cookie = if remembered {
            state.cookies.set_persistent_session(&id, absolute)
        } else {
            state.cookies.set_session(&id)
        };
        resp.headers_mut().append(header::SET_COOKIE, cookie);
        set_location(&mut resp, &pending.return_to)?;
        Ok(resp)
    }
}

/// A login's tokens no stored session holds yet, and whose they are.
struct Unheld {
    sub: String,
    sid: Option<String>,
    provider: Option<String>,
    /// The issuer and `client_id` of the provider that issued them (the pending login's).
    issuer: String,
    client_id: String,
    tokens: crate::session::Tokens,
}

impl Callback {
    /// Revokes the tokens of a login that made no session (a failed step-up, a store failure
    /// after the code exchange) — unless, by the same-grant rule of [`Ender::end_replaced`], one
    /// of the browser's live sessions is the same user's in the same IdP session (`sid`): the
    /// IdP issued both from one grant, and revoking any of this login's tokens would end that
    /// session's grant too (oidc-provider revokes every token of the grant with any one of
    /// them). Then nothing is revoked: the grant lives on in the session that holds it, and
    /// its logout revokes it. A session that cannot be read (the store is down) counts as not
    /// the same grant.
    async fn revoke_unheld(&self, previous: &[String], unheld: Unheld) {
        for old in previous {
            let Ok(Some(s)) = self.sessions.load(old).await else {
                continue;
            };
            if s.sub == unheld.sub
                && s.provider == unheld.provider
                && s.issuer.as_deref().is_none_or(|i| i == unheld.issuer)
                && s.client_id.as_deref().is_none_or(|c| c == unheld.client_id)
                && s.sid.is_some()
                && s.sid == unheld.sid
            {
                tracing::info!(session = %crate::session::short(old), "the login's tokens are of the live session's grant: not revoked");
                return;
            }
        }
        let binding = crate::oidc::Binding {
            provider: unheld.provider.as_deref(),
            issuer: Some(&unheld.issuer),
            client_id: Some(&unheld.client_id),
        };
        self.ender.revoke_later(binding, unheld.tokens);
    }

    /// A step-up login of the session's own user replaces that session's record under its
    /// handle: the browser keeps its cookie, the SPA its state. False when there is no such
    /// session (gone, or another user signed in): the caller makes a new one.
    async fn upgrade_in_place<B>(
        &self,
        old: &str,
        result: &crate::oidc::LoginResult,
        oidc: &crate::oidc::OidcClient,
        req: &Request<B>,
        ctx: &RequestCtx,
        now: i64,
    ) -> Result<bool, Error> {
        let Some(prev) = self.sessions.load(old).await? else {
            return Ok(false);
        };
        if prev.sub != result.sub
            || prev.provider != self.providers.record_name(oidc)
            || !prev.binding().matches(oidc)
        {
            return Ok(false);
        }
        let upgraded = Session {
            v: FORMAT_VERSION,
            sub: result.sub.clone(),
            sid: result.sid.clone(),
            claims: result.claims.clone(),
            tokens: result.tokens.clone(),
            // Same session: its lifetime is not extended by the step-up.
            created_at: prev.created_at,
            last_seen: now,
            absolute_expires_at: prev.absolute_expires_at,
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect())
                .or(prev.user_agent),
            ip: Some(ctx.client_ip.to_string()),
            remembered: prev.remembered,
            idle_timeout: prev.idle_timeout,
            reconstituted: prev.reconstituted,
            provider: prev.provider.clone(),
            issuer: Some(oidc.issuer().to_string()),
            client_id: Some(oidc.client_id().to_string()),
            generation: 0,
        };
        if !self.ender.upgrade(old, &upgraded).await? {
            return Ok(false);
        }
        crate::metrics::login_finished("ok");
        Ok(true)
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// `return_to` with `error=<code>` added to its query (before any `#fragment`).
pub(super) fn with_error(return_to: &str, code: &str) -> String {
    let (path, fragment) = return_to
        .split_once('#')
        .map_or((return_to, None), |(p, f)| (p, Some(f)));
    let sep = if path.contains('?') { '&' } else { '?' };
    match fragment {
        Some(f) => format!("{path}{sep}error={code}#{f}"),
        None => format!("{path}{sep}error={code}"),
    }
}

fn set_location(resp: &mut Response<Body>, target: &str) -> Result<(), Error> {
    let v = HeaderValue::from_str(target)
        .map_err(|_| Error::Internal("return_to is not a header value".into()))?;
    resp.headers_mut().insert(header::LOCATION, v);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_error_goes_into_the_query_before_the_fragment() {
        assert_eq!(super::with_error("/app", "x"), "/app?error=x");
        assert_eq!(super::with_error("/app?a=1", "x"), "/app?a=1&error=x");
        assert_eq!(
            super::with_error("/app?a=1#/pay", "x"),
            "/app?a=1&error=x#/pay"
        );
        assert_eq!(super::with_error("/#/pay?q", "x"), "/?error=x#/pay?q");
    }
}

//! `GET /auth/callback?code&state` (or `?error&state`): finish the code flow (SPEC §1).
//!
//! take pending login (once) → check browser binding → (IdP error → back to `return_to`) →
//! exchange code → verify ID token → delete any old session → new session → cookies → 302.

use super::{query_pairs, query_param};
use crate::app::AppState;
use crate::body::{empty, Body};
use crate::cookies;
use crate::error::Error;
use crate::session::{Session, SessionId, FORMAT_VERSION};
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::net::SocketAddr;

pub(crate) async fn callback<B>(
    state: &AppState,
    req: &Request<B>,
    peer: SocketAddr,
) -> Result<Response<Body>, Error> {
    let pairs = query_pairs(req.uri());
    let st = query_param(&pairs, "state")?.ok_or(Error::InvalidState("missing state"))?;
    if st.is_empty() || st.len() > 128 {
        return Err(Error::InvalidState("malformed state"));
    }
    let pending = state
        .sessions
        .take_pending(&st)
        .await?
        .ok_or(Error::InvalidState("unknown, used or expired state"))?;
    let mut tags = cookies::login_tags(req.headers(), &state.config);
    let Some(pos) = tags.iter().position(|t| *t == pending.binding) else {
        return Err(Error::InvalidState("state belongs to another browser"));
    };
    tags.remove(pos);

    // RFC 9207: when present (or promised by the IdP), `iss` must be our issuer (mix-up defence).
    match query_param(&pairs, "iss")? {
        Some(iss) if iss.trim_end_matches('/') != state.oidc.issuer() => {
            return Err(Error::InvalidState("iss does not match the issuer"));
        }
        None if state.oidc.promises_iss() => {
            return Err(Error::InvalidState(
                "iss missing from the authorization response",
            ));
        }
        _ => {}
    }

    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookies::set_login(&state.config, &state.config.keys, &tags),
    );

    if let Some(err) = query_param(&pairs, "error")? {
        // The IdP said no (e.g. login_required after prompt=none): back to the SPA, no session.
        let code: String = err
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        let sep = if pending.return_to.contains('?') {
            '&'
        } else {
            '?'
        };
        let target = format!("{}{sep}error={code}", pending.return_to);
        set_location(&mut resp, &target)?;
        crate::metrics::login_finished("idp_error");
        return Ok(resp);
    }
    let code = query_param(&pairs, "code")?.ok_or(Error::InvalidRequest("missing code".into()))?;

    let result = match state
        .oidc
        .exchange_code(&code, &pending.pkce_verifier, &pending.nonce)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::login_finished(e.status_and_code().1);
            return Err(e);
        }
    };

    let now = state.clock.unix();
    let id = SessionId::generate();
    let handle = id.handle();
    let session = Session {
        v: FORMAT_VERSION,
        sub: result.sub,
        sid: result.sid,
        claims: result.claims,
        tokens: result.tokens,
        created_at: now,
        last_seen: now,
        absolute_expires_at: now
            + i64::try_from(state.config.absolute_timeout.as_secs()).unwrap_or(i64::MAX / 2),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
        ip: Some(crate::proxy::client_ip(&state.config, req.headers(), peer).to_string()),
        generation: 0,
    };
    state.sessions.save(&handle, &session).await?;
    tracing::info!(
        event = "login",
        session = %crate::session::short(&handle),
        sub = %session.sub,
        "session created"
    );
    crate::metrics::login_finished("ok");

    // No fixation and no orphan: the session this browser had when the login started (and
    // the one its cookie names now, should the callback carry it) ends — deleted, its tokens
    // revoked (see `Ender::end_replaced` for the one exception). The new session has a new id.
    let current = cookies::session_id(req.headers(), &state.config).map(|id| id.handle());
    let mut previous: Vec<String> = pending.previous.into_iter().chain(current).collect();
    previous.dedup();
    for old in previous.into_iter().filter(|h| *h != handle) {
        if let Err(e) = state.ender.end_replaced(&old, &session).await {
            // The new session stands; the old one expires by its TTL.
            tracing::warn!(session = %crate::session::short(&old), error = %e, "previous session not ended at re-login");
        }
    }

    resp.headers_mut()
        .append(header::SET_COOKIE, cookies::set_session(&state.config, &id));
    set_location(&mut resp, &pending.return_to)?;
    Ok(resp)
}

fn set_location(resp: &mut Response<Body>, target: &str) -> Result<(), Error> {
    let v = HeaderValue::from_str(target)
        .map_err(|_| Error::Internal("return_to is not a header value".into()))?;
    resp.headers_mut().insert(header::LOCATION, v);
    Ok(())
}

//! `GET /auth/login?return_to=/p&prompt=none`: start the code flow (SPEC §1).
//!
//! rate limit → validate `return_to` → fresh state/nonce/PKCE → the pending login, sealed, in a
//! login cookie of its own (named for its state; nothing is written to the store) → 302 to the
//! IdP. A browser holds at most [`cookies::MAX_PENDING_PER_BROWSER`] pending logins: the oldest
//! are expired first.

use super::{query_pairs, query_param, valid_return_to};
use crate::app::AppState;
use crate::body::{empty, Body};
use crate::cookies;
use crate::error::Error;
use crate::session::{PendingLogin, PENDING_TTL};
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::net::SocketAddr;

pub(crate) async fn login<B>(
    state: &AppState,
    req: &Request<B>,
    peer: SocketAddr,
) -> Result<Response<Body>, Error> {
    state
        .login_limiter
        .check(&state.config, req.headers(), peer)?;
    let pairs = query_pairs(req.uri());
    let return_to = query_param(&pairs, "return_to")?.unwrap_or_else(|| "/".into());
    if !valid_return_to(&return_to) {
        return Err(Error::InvalidReturnTo);
    }
    let prompt_none = match query_param(&pairs, "prompt")?.as_deref() {
        None => false,
        Some("none") => true,
        Some(_) => return Err(Error::InvalidRequest("prompt must be none".into())),
    };

    let auth = state.oidc.authorize(prompt_none);
    // The session this browser has now (its Strict cookie comes with this same-site
    // navigation, never with the cross-site callback): ended once the new one exists.
    let previous = cookies::session_id(req.headers(), &state.config).map(|id| id.handle());
    let now = state.clock.unix();
    let pending = PendingLogin {
        nonce: auth.nonce,
        pkce_verifier: auth.pkce_verifier,
        return_to,
        created_at: now,
        previous,
    };
    let json =
        serde_json::to_vec(&pending).map_err(|e| Error::Internal(format!("pending login: {e}")))?;
    crate::metrics::login_started();

    let location = HeaderValue::from_str(auth.url.as_str())
        .map_err(|_| Error::Internal("authorization URL is not a header value".into()))?;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Room for this one: expire the pending logins that are over their lifetime, then the
    // oldest beyond the per-browser bound.
    let ttl = i64::try_from(PENDING_TTL.as_secs()).unwrap_or(600);
    let mut existing = cookies::pending_cookies(req.headers(), &state.config);
    existing.retain(|(name, created)| {
        let stale = *created + ttl < now;
        if stale {
            h.append(
                header::SET_COOKIE,
                cookies::expire_login_named(&state.config, name),
            );
        }
        !stale
    });
    let over = (existing.len() + 1).saturating_sub(cookies::MAX_PENDING_PER_BROWSER);
    for (name, _) in existing.iter().take(over) {
        h.append(
            header::SET_COOKIE,
            cookies::expire_login_named(&state.config, name),
        );
    }
    h.append(
        header::SET_COOKIE,
        cookies::set_pending(&state.config, auth.state.expose(), now, &json),
    );
    Ok(resp)
}

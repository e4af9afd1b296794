//! `GET /auth/login?return_to=/p&prompt=none`: start the code flow (SPEC §1).
//!
//! validate `return_to` → fresh state/nonce/PKCE → pending login (10 min, once) bound to this
//! browser by the login cookie → 302 to the IdP.

use super::{query_pairs, query_param, valid_return_to};
use crate::app::AppState;
use crate::body::{empty, Body};
use crate::cookies;
use crate::error::Error;
use crate::session::PendingLogin;
use http::{header, HeaderValue, Request, Response, StatusCode};

pub(crate) async fn login<B>(state: &AppState, req: &Request<B>) -> Result<Response<Body>, Error> {
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
    let tag = cookies::new_tag();
    let mut tags = cookies::login_tags(req.headers(), &state.config);
    tags.push(tag.clone());
    // The session this browser has now (its Strict cookie comes with this same-site
    // navigation, never with the cross-site callback): ended once the new one exists.
    let previous = cookies::session_id(req.headers(), &state.config).map(|id| id.handle());
    let pending = PendingLogin {
        nonce: auth.nonce,
        pkce_verifier: auth.pkce_verifier,
        return_to,
        binding: tag,
        previous,
    };
    state
        .sessions
        .put_pending(auth.state.expose(), &pending)
        .await?;
    crate::metrics::login_started();

    let location = HeaderValue::from_str(auth.url.as_str())
        .map_err(|_| Error::Internal("authorization URL is not a header value".into()))?;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.append(
        header::SET_COOKIE,
        cookies::set_login(&state.config, &state.config.keys, &tags),
    );
    Ok(resp)
}

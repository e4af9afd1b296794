//! The one public hyper service: `/auth/*` → `auth`, a configured route → `proxy`, else 404.
//!
//! Owns: the request span, the one access-log line per request, and turning every [`Error`]
//! into a response (logged once, here). Its error type is `Infallible`.

use crate::app::AppState;
use crate::auth;
use crate::body::Body;
use crate::config::TokenPolicy;
use crate::error::Error;
use crate::proxy;
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// A request id: the client's `X-Request-Id` when it is short and plain, else a new one.
fn request_id(req: &Request<Incoming>) -> HeaderValue {
    req.headers()
        .get("x-request-id")
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        })
        .cloned()
        .unwrap_or_else(|| {
            // 96 random bits from the thread's CSPRNG (seeded from the OS; no syscall per
            // request), in hex.
            let mut raw = [0u8; 12];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
            let mut hex = [0u8; 24];
            for (i, b) in raw.iter().enumerate() {
                hex[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
                hex[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 15)];
            }
            HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("-"))
        })
}

/// The first `n` characters of `s`.
fn first_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Handles one request; never fails.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let rid = request_id(&req);
    let span = tracing::info_span!("request", request_id = %rid.to_str().unwrap_or("-"));
    handle_in_span(state, req, peer, rid).instrument(span).await
}

async fn handle_in_span(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    rid: HeaderValue,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: queries carry `code` and `state` on the callback. (A `Uri` clone shares
    // its bytes: no copy.)
    let uri = req.uri().clone();
    // One session cookie or none (SPEC §1): with two distinct values nothing authenticates
    // (`cookies::session_id` says no session), and the answer clears the cookie.
    let ambiguous = crate::cookies::ambiguous_session(req.headers(), &state.config);
    let cross_origin = crate::cors::allowed_cross_origin(&state.config, req.headers()).cloned();
    let (label, cors_scope, result) = handle_inner(&state, req, peer, &rid).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = e.status_and_code();
            if status.is_server_error() {
                tracing::warn!(error = %crate::oidc::error_chain(&e), code, "request failed");
            } else {
                tracing::debug!(error = %e, code, "request refused");
            }
            if matches!(e, Error::StoreUnavailable(_)) {
                crate::metrics::store_error();
            }
            e.into_response()
        }
    };
    resp.headers_mut().insert("x-request-id", rid);
    if let (true, Some(origin)) = (cors_scope, cross_origin) {
        crate::cors::decorate(&mut resp, origin);
    }
    if ambiguous {
        resp.headers_mut().append(
            http::header::SET_COOKIE,
            crate::cookies::expire_session(&state.config),
        );
    }
    let elapsed = started.elapsed();
    tracing::info!(
        %method,
        path = %first_chars(uri.path(), 256),
        route = label,
        status = resp.status().as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    crate::metrics::request(label, resp.status().as_u16(), elapsed);
    Ok(resp)
}

/// Routes one request: its metric label, whether a cross-origin SPA may read the answer
/// (`cors`), and the answer.
async fn handle_inner(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    rid: &HeaderValue,
) -> (&'static str, bool, Result<Response<Body>, Error>) {
    let path = req.uri().path();
    if let Some(rest) = proxy::under_prefix(path, &state.config.server.auth_prefix) {
        if rest == "/backchannel-logout" {
            return if req.method() == Method::POST {
                (
                    "backchannel",
                    false,
                    auth::backchannel_logout(state, req).await,
                )
            } else {
                ("backchannel", false, Err(Error::MethodNotAllowed))
            };
        }
        let m = req.method();
        if matches!(rest, "/user" | "/logout") {
            if crate::cors::is_preflight(m, req.headers()) {
                return (
                    "preflight",
                    false,
                    crate::cors::preflight(&state.config, req.headers()),
                );
            }
            let r = match (rest, m) {
                ("/user", &Method::GET) => ("user", auth::user(state, &req).await),
                ("/logout", &Method::POST) => ("logout", auth::logout(state, &req).await),
                _ => ("auth", Err(Error::MethodNotAllowed)),
            };
            return (r.0, true, r.1);
        }
        let r = match (rest, m) {
            ("/login", &Method::GET) => ("login", auth::login(state, &req, peer).await),
            ("/callback", &Method::GET) => ("callback", auth::callback(state, &req, peer).await),
            ("/user", &Method::GET) => ("user", auth::user(state, &req).await),
            ("/logout", &Method::POST) => ("logout", auth::logout(state, &req).await),
            ("/login" | "/callback" | "/user" | "/logout", _) => {
                ("auth", Err(Error::MethodNotAllowed))
            }
            _ => ("auth", Err(Error::NotFound)),
        };
        return (r.0, false, r.1);
    }
    let Some(idx) = proxy::match_route_index(&state.config.routes, path) else {
        return ("none", false, Err(Error::NotFound));
    };
    let label = state.route_labels[idx];
    let token_route = state.config.routes[idx].token != TokenPolicy::None;
    if token_route && crate::cors::is_preflight(req.method(), req.headers()) {
        return (
            "preflight",
            false,
            crate::cors::preflight(&state.config, req.headers()),
        );
    }
    (
        label,
        token_route,
        proxy_request(state, idx, label, req, peer, rid).await,
    )
}

async fn proxy_request(
    state: &AppState,
    idx: usize,
    label: &'static str,
    req: Request<Incoming>,
    peer: SocketAddr,
    rid: &HeaderValue,
) -> Result<Response<Body>, Error> {
    let route = &state.config.routes[idx];
    if proxy::has_dot_segment(req.uri().path()) {
        return Err(Error::InvalidRequest("dot segments in path".into()));
    }
    let session = match route.token {
        TokenPolicy::None => None,
        TokenPolicy::Required | TokenPolicy::Optional => {
            auth::check_csrf(state, req.headers(), proxy::is_upgrade(req.headers()))?;
            let s = auth::current_session_shared(state, req.headers(), true).await?;
            let s = match s {
                Some((handle, s)) => {
                    Some((state.refresher.ensure_fresh(&handle, s).await?, handle))
                }
                None => None,
            };
            if s.is_none() && route.token == TokenPolicy::Required {
                return Err(Error::Unauthenticated);
            }
            s
        }
    };
    let ctx = proxy::ForwardCtx {
        peer,
        bearer: session.as_ref().map(|(s, _)| &s.tokens.access_token),
        request_id: rid,
        session: session.as_ref().map(|(_, h)| h.as_str()),
    };
    proxy::forward(&state.forwarder, &state.config, route, label, req, &ctx).await
}

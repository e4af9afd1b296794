//! The one public hyper service: `/auth/*` → [`crate::auth`], a configured route → the API
//! stage, else 404.
//!
//! The request's path through the stages: the `RequestCtx` is built once here; the API
//! stage runs the CSRF check ([`Origins`]), the `SessionLoader`, the [`Refresher`] and then
//! the [`Upstream`] (the forwarder). Owns: the request span, the one access-log line per
//! request, and turning every [`Error`] into a response (logged once, here). Its error type is
//! `Infallible`.

use crate::auth::Endpoints;
use crate::body::Body;
use crate::config::{Route, TokenPolicy};
use crate::context::{request_id, ClientIp, RequestCtx};
use crate::cookies::Cookies;
use crate::cors::Origins;
use crate::error::Error;
use crate::loader::SessionLoader;
use crate::proxy::{self, ForwardCtx, Upstream};
use crate::refresh::Refresher;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The public service: the stages, built once at start-up.
#[derive(Debug)]
pub(crate) struct Router {
    /// `server.auth_prefix`.
    pub(crate) auth_prefix: String,
    /// Resolves the client's IP for the request context.
    pub(crate) client_ip: ClientIp,
    /// Origins, CSRF and CORS.
    pub(crate) origins: Arc<Origins>,
    /// Our cookies (the ambiguous-cookie answer clears the session cookie).
    pub(crate) cookies: Arc<Cookies>,
    /// The browser endpoints.
    pub(crate) auth: Endpoints,
    /// The proxied API routes.
    pub(crate) api: Api,
}

/// The API stage: `[[routes]]`, and for token routes CSRF → session → fresh token → upstream.
#[derive(Debug)]
pub(crate) struct Api {
    /// Routes, sorted longest prefix first.
    pub(crate) routes: Vec<Route>,
    /// Metric labels of the routes (their prefixes), in route order.
    pub(crate) labels: Vec<&'static str>,
    pub(crate) origins: Arc<Origins>,
    pub(crate) loader: SessionLoader,
    pub(crate) refresher: Arc<Refresher>,
    pub(crate) upstream: Arc<dyn Upstream>,
}

/// The first `n` characters of `s`.
fn first_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Handles one request; never fails.
pub(crate) async fn handle(
    state: Arc<Router>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let ctx = RequestCtx {
        id: request_id(req.headers()),
        peer,
        client_ip: state.client_ip.resolve(req.headers(), peer),
    };
    let span = tracing::info_span!("request", request_id = %ctx.id.to_str().unwrap_or("-"));
    handle_in_span(state, req, ctx).instrument(span).await
}

async fn handle_in_span(
    state: Arc<Router>,
    req: Request<Incoming>,
    ctx: RequestCtx,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: queries carry `code` and `state` on the callback. (A `Uri` clone shares
    // its bytes: no copy.)
    let uri = req.uri().clone();
    // One session cookie or none (SPEC §1): with two distinct values nothing authenticates
    // (`cookies::session_id` says no session), and the answer clears the cookie.
    let ambiguous = state.cookies.ambiguous_session(req.headers());
    let cross_origin = state.origins.allowed_cross_origin(req.headers()).cloned();
    let (label, cors_scope, result) = handle_inner(&state, req, &ctx).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = e.status_and_code();
            if status.is_server_error() {
                tracing::warn!(error = %crate::error::error_chain(&e), code, "request failed");
            } else {
                tracing::debug!(error = %e, code, "request refused");
            }
            if matches!(e, Error::StoreUnavailable(_)) {
                crate::metrics::store_error();
            }
            e.into_response()
        }
    };
    resp.headers_mut().insert("x-request-id", ctx.id);
    if let (true, Some(origin)) = (cors_scope, cross_origin) {
        crate::cors::decorate(&mut resp, origin);
    }
    if ambiguous {
        resp.headers_mut()
            .append(http::header::SET_COOKIE, state.cookies.expire_session());
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
    state: &Router,
    req: Request<Incoming>,
    ctx: &RequestCtx,
) -> (&'static str, bool, Result<Response<Body>, Error>) {
    let path = req.uri().path();
    let auth = &state.auth;
    if let Some(rest) = proxy::under_prefix(path, &state.auth_prefix) {
        if rest == "/backchannel-logout" {
            return if req.method() == Method::POST {
                ("backchannel", false, auth.backchannel.handle(req).await)
            } else {
                ("backchannel", false, Err(Error::MethodNotAllowed))
            };
        }
        let m = req.method();
        if matches!(rest, "/user" | "/logout") {
            if crate::cors::is_preflight(m, req.headers()) {
                return ("preflight", false, state.origins.preflight(req.headers()));
            }
            let r = match (rest, m) {
                ("/user", &Method::GET) => ("user", auth.user.handle(&req).await),
                ("/logout", &Method::POST) => ("logout", auth.logout.handle(&req).await),
                _ => ("auth", Err(Error::MethodNotAllowed)),
            };
            return (r.0, true, r.1);
        }
        let r = match (rest, m) {
            ("/login", &Method::GET) => ("login", auth.login.handle(&req, ctx).await),
            ("/callback", &Method::GET) => ("callback", auth.callback.handle(&req, ctx).await),
            ("/user", &Method::GET) => ("user", auth.user.handle(&req).await),
            ("/logout", &Method::POST) => ("logout", auth.logout.handle(&req).await),
            ("/login" | "/callback" | "/user" | "/logout", _) => {
                ("auth", Err(Error::MethodNotAllowed))
            }
            _ => ("auth", Err(Error::NotFound)),
        };
        return (r.0, false, r.1);
    }
    state.api.handle(req, ctx).await
}

impl Api {
    /// Routes one API call: its metric label, whether a cross-origin SPA may read the answer,
    /// and the answer.
    async fn handle(
        &self,
        req: Request<Incoming>,
        ctx: &RequestCtx,
    ) -> (&'static str, bool, Result<Response<Body>, Error>) {
        let Some(idx) = proxy::match_route_index(&self.routes, req.uri().path()) else {
            return ("none", false, Err(Error::NotFound));
        };
        let label = self.labels[idx];
        let route = &self.routes[idx];
        let token_route = route.token != TokenPolicy::None;
        if token_route && crate::cors::is_preflight(req.method(), req.headers()) {
            return ("preflight", false, self.origins.preflight(req.headers()));
        }
        (label, token_route, self.call(route, label, req, ctx).await)
    }

    /// CSRF → session → fresh token → upstream.
    async fn call(
        &self,
        route: &Route,
        label: &'static str,
        req: Request<Incoming>,
        ctx: &RequestCtx,
    ) -> Result<Response<Body>, Error> {
        if proxy::has_dot_segment(req.uri().path()) {
            return Err(Error::InvalidRequest("dot segments in path".into()));
        }
        let session = match route.token {
            TokenPolicy::None => None,
            TokenPolicy::Required | TokenPolicy::Optional => {
                self.origins
                    .check_csrf(req.headers(), proxy::is_upgrade(req.headers()))?;
                let s = match self.loader.current_shared(req.headers(), true).await? {
                    Some((handle, s)) => {
                        Some((self.refresher.ensure_fresh(&handle, s).await?, handle))
                    }
                    None => None,
                };
                if s.is_none() && route.token == TokenPolicy::Required {
                    return Err(Error::Unauthenticated);
                }
                s
            }
        };
        let fwd = ForwardCtx {
            peer: ctx.peer,
            bearer: session.as_ref().map(|(s, _)| &s.tokens),
            request_id: &ctx.id,
            session: session.as_ref().map(|(_, h)| h.as_str()),
        };
        self.upstream.forward(route, label, req, fwd).await
    }
}

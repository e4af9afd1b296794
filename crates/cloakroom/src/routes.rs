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
use crate::client_tokens::{ClientToken, ClientTokens};
use crate::config::{Route, TokenPolicy};
use crate::config::{StepUp, UserToken};
use crate::context::{request_id, ClientIp, RequestCtx};
use crate::cookies::Cookies;
use crate::cors::Origins;
use crate::error::Error;
use crate::error::StepUpChallenge;
use crate::loader::SessionLoader;
use crate::proxy::{self, ForwardCtx, Upstream};
use crate::refresh::{Refresher, Target};
use crate::session::{Credential, Session};
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
    /// `telemetry.trust_incoming_trace`: the browser's `traceparent` is believed (else it is
    /// removed, and the request starts a new trace).
    pub(crate) trust_incoming_trace: bool,
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
    /// Cloakroom's own tokens (`token = "client"` / `"user_or_client"` routes).
    pub(crate) clients: Arc<ClientTokens>,
    /// `server.auth_prefix`, for the step-up answer's login URL.
    pub(crate) auth_prefix: String,
    pub(crate) upstream: Arc<dyn Upstream>,
}

/// The token a request is forwarded with, kept alive while it is forwarded.
enum Held {
    /// None (an anonymous request on an optional route, or `token = "none"`).
    Nothing,
    /// The user's: the login's token, or the derived one under this key.
    User(Arc<Session>, Option<String>),
    /// Cloakroom's own.
    Client(Arc<ClientToken>),
}

impl Held {
    fn credential(&self) -> Option<Credential<'_>> {
        match self {
            Held::Nothing => None,
            Held::User(s, None) => Some(s.tokens.credential()),
            Held::User(s, Some(k)) => s
                .tokens
                .derived
                .get(k)
                .map(|d| d.credential(s.tokens.dpop.as_ref())),
            Held::Client(t) => Some(t.credential()),
        }
    }
}

/// The first `n` characters of `s`.
fn first_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Handles one request; never fails.
pub(crate) async fn handle(
    state: Arc<Router>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let ctx = RequestCtx {
        id: request_id(req.headers()),
        peer,
        client_ip: state.client_ip.resolve(req.headers(), peer),
    };
    if crate::logline::fast() {
        // No span: nothing exports or pretty-prints it. The log lines get the id from here.
        crate::trace::strip_untrusted(&mut req, state.trust_incoming_trace);
        let id = ctx.id.clone();
        return crate::logline::in_request(id, handle_in_span(state, req, ctx)).await;
    }
    let span = tracing::info_span!(
        "request",
        request_id = %ctx.id.to_str().unwrap_or("-"),
        otel.kind = tracing::field::Empty
    );
    crate::trace::server(&span, &mut req, state.trust_incoming_trace);
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
    resp.headers_mut().insert("x-request-id", ctx.id.clone());
    if let (true, Some(origin)) = (cors_scope, cross_origin) {
        crate::cors::decorate(&mut resp, origin);
    }
    if ambiguous {
        resp.headers_mut()
            .append(http::header::SET_COOKIE, state.cookies.expire_session());
    }
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let path = first_chars(uri.path(), 256);
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    if crate::logline::fast() {
        crate::logline::access(&method, path, label, status, duration_ms, &ctx.id);
    } else {
        tracing::info!(%method, path = %path, route = label, status, duration_ms, "request");
        crate::trace::server_done(&tracing::Span::current(), label, status);
    }
    crate::metrics::request(label, status, elapsed);
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
        let m = req.method().clone();
        let device = rest.strip_prefix("/sessions/").map(str::to_string);
        if matches!(rest, "/user" | "/logout" | "/sessions" | "/session/state") || device.is_some()
        {
            if crate::cors::is_preflight(&m, req.headers()) {
                return ("preflight", false, state.origins.preflight(req.headers()));
            }
            let r = match (rest, m, device) {
                ("/user", Method::GET, _) => ("user", auth.user.handle(&req).await),
                ("/logout", Method::POST, _) => ("logout", auth.logout.handle(req).await),
                ("/sessions", Method::GET, _) => ("sessions", auth.devices.list(&req).await),
                (_, Method::DELETE, Some(id)) => ("sessions", auth.devices.end(&req, &id).await),
                ("/session/state", Method::GET, _) => ("state", auth.devices.get_state(&req).await),
                ("/session/state", Method::PUT, _) => ("state", auth.devices.put_state(req).await),
                _ => ("auth", Err(Error::MethodNotAllowed)),
            };
            return (r.0, true, r.1);
        }
        // `<auth_prefix>/callback/<name>`: a provider's own callback (`callback = "own"`).
        if let Some(name) = rest.strip_prefix("/callback/") {
            return if m == Method::GET {
                (
                    "callback",
                    false,
                    auth.callback.handle(&req, ctx, Some(name)).await,
                )
            } else {
                ("auth", false, Err(Error::MethodNotAllowed))
            };
        }
        let r = match (rest, &m) {
            ("/login", &Method::GET) => ("login", auth.login.handle(&req, ctx).await),
            ("/callback", &Method::GET) => {
                ("callback", auth.callback.handle(&req, ctx, None).await)
            }
            ("/providers", &Method::GET) => ("providers", Ok(auth.login.providers())),
            ("/login" | "/callback" | "/providers", _) => ("auth", Err(Error::MethodNotAllowed)),
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
        let token_route = route.token.sends_token();
        if token_route && crate::cors::is_preflight(req.method(), req.headers()) {
            return ("preflight", false, self.origins.preflight(req.headers()));
        }
        (label, token_route, self.call(route, label, req, ctx).await)
    }

    /// CSRF → session → step-up → fresh token → upstream (→ an RFC 9470 challenge).
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
        // CSRF on every route that attaches a token; with `csrf = false` (client routes only)
        // a request that fails it is an anonymous machine caller, never the user.
        let csrf_ok = if route.token.sends_token() {
            match self
                .origins
                .check_csrf(req.headers(), proxy::is_upgrade(req.headers()))
            {
                Ok(()) => true,
                Err(e) if route.csrf => return Err(e),
                Err(_) => false,
            }
        } else {
            true
        };
        let mut session_handle = None;
        let held = match route.token {
            TokenPolicy::None => Held::Nothing,
            TokenPolicy::Client => Held::Client(self.client_token(route).await?),
            TokenPolicy::Required | TokenPolicy::Optional | TokenPolicy::UserOrClient => {
                let current = if csrf_ok {
                    self.loader.current_shared(req.headers(), true).await?
                } else {
                    None
                };
                match current {
                    Some((handle, s)) => {
                        let held = self.user_token(route, &handle, s).await?;
                        session_handle = Some(handle);
                        held
                    }
                    None => match route.token {
                        TokenPolicy::Required => return Err(Error::Unauthenticated),
                        TokenPolicy::UserOrClient => Held::Client(self.client_token(route).await?),
                        _ => Held::Nothing,
                    },
                }
            }
        };
        let fwd = ForwardCtx {
            peer: ctx.peer,
            bearer: held.credential(),
            request_id: &ctx.id,
            session: session_handle.as_deref(),
        };
        let resp = self.upstream.forward(route, label, req, fwd).await?;
        if let (Held::User(s, _), http::StatusCode::UNAUTHORIZED) = (&held, resp.status()) {
            if let Some(c) = crate::stepup::upstream_challenge(resp.headers(), &self.auth_prefix)
                .map(|c| c.for_provider(s.provider.as_deref()))
            {
                tracing::info!(
                    event = "step_up_challenge",
                    route = label,
                    "the upstream asks for a stronger or more recent authentication (RFC 9470)"
                );
                return Err(Error::StepUpRequired(Box::new(c)));
            }
        }
        Ok(resp)
    }

    /// Cloakroom's own token for a client route.
    async fn client_token(&self, route: &Route) -> Result<Arc<ClientToken>, Error> {
        let spec = route
            .client
            .as_ref()
            .ok_or_else(|| Error::Internal("client route without a client token".into()))?;
        self.clients.get(spec).await
    }

    /// The session's token for this route: step-up first, then the login's token fresh, then
    /// the route's own (per resource or exchanged).
    async fn user_token(
        &self,
        route: &Route,
        handle: &str,
        s: Arc<Session>,
    ) -> Result<Held, Error> {
        if !route.takes_provider(s.provider.as_deref()) {
            return Err(Error::ProviderNotAllowed);
        }
        if let Some(step) = &route.step_up {
            check_step_up(step, &s, &self.auth_prefix)?;
        }
        let (target, key) = match &route.user_token {
            UserToken::Login => {
                let s = self.refresher.ensure_fresh(handle, s).await?;
                return Ok(Held::User(s, None));
            }
            UserToken::Resource(spec) => (Target::Resource(spec.clone()), spec.key.clone()),
            UserToken::Exchange(spec) => {
                let s = self.refresher.ensure_fresh(handle, s).await?;
                let t = Target::Exchange(spec.clone());
                let s = self.refresher.ensure(handle, s, &t).await?;
                return held_derived(s, spec.key.clone(), &t);
            }
        };
        let s = self.refresher.ensure(handle, s, &target).await?;
        held_derived(s, key, &target)
    }
}

/// The session holding the derived token under `key`, or "not now" if a fenced write left a
/// copy without it.
fn held_derived(s: Arc<Session>, key: String, target: &Target) -> Result<Held, Error> {
    if s.tokens.derived.contains_key(&key) {
        Ok(Held::User(s, Some(key)))
    } else {
        Err(target.unavailable_now())
    }
}

/// A session that does not meet the route's `acr_values`/`max_age` gets a step-up answer.
/// `auth_time` is the IdP's timestamp: compared with the wall clock, like DPoP's `iat`.
fn check_step_up(step: &StepUp, s: &Session, auth_prefix: &str) -> Result<(), Error> {
    let max_age = step.max_age.map(|d| d.as_secs());
    let acr = (!step.acr_values.is_empty()).then(|| {
        step.acr_values
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    });
    if crate::session::auth_satisfies(&s.claims, acr, max_age, crate::session::now_unix(), 0) {
        return Ok(());
    }
    let acr_values = (!step.acr_values.is_empty()).then(|| step.acr_values.join(" "));
    Err(Error::StepUpRequired(Box::new(
        StepUpChallenge::new(auth_prefix, acr_values, max_age).for_provider(s.provider.as_deref()),
    )))
}

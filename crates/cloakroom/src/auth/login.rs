//! `GET /auth/login?return_to=/p&prompt=none&provider=NAME`: start the code flow (SPEC §1).
//!
//! rate limit → validate `return_to` → fresh state/nonce/PKCE → the pending login, sealed, in a
//! login cookie of its own (named for its state; nothing is written to the store) → 302 to the
//! IdP. A browser holds at most [`cookies::MAX_PENDING_PER_BROWSER`] pending logins: the oldest
//! are expired first.

use super::valid_return_to;
use crate::body::{empty, Body};
use crate::clock::Clock;
use crate::context::RequestCtx;
use crate::cookies::{self, Cookies};
use crate::error::Error;
use crate::oidc::Providers;
use crate::query::{query_pairs, query_param};
use crate::ratelimit::LoginLimiter;
use crate::session::{PendingLogin, StepUpRequest, PENDING_TTL};
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;

/// `GET /auth/login` and what it uses.
#[derive(Debug)]
pub(crate) struct Login {
    pub(crate) limiter: LoginLimiter,
    /// The identity providers; `?provider=` picks one, else the default.
    pub(crate) providers: Providers,
    pub(crate) cookies: Arc<Cookies>,
    pub(crate) clock: Clock,
    /// `session.remember.enabled`.
    pub(crate) remember_enabled: bool,
}

impl Login {
    /// `GET /auth/providers`: the identity providers a login may name (`?provider=`), the
    /// default first-marked, so an SPA can offer one button each. Names only: nothing else of
    /// their configuration.
    pub(crate) fn providers(&self) -> Response<Body> {
        let default = self.providers.default_provider();
        let list: Vec<serde_json::Value> = self
            .providers
            .all()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name(),
                    "default": std::ptr::eq(&**p, &*default),
                })
            })
            .collect();
        crate::error::json_response(StatusCode::OK, &serde_json::json!({ "providers": list }))
    }

    pub(crate) async fn handle<B>(
        &self,
        req: &Request<B>,
        ctx: &RequestCtx,
    ) -> Result<Response<Body>, Error> {
        let state = self;
        // Login CSRF: another site must not start a login (a remembered one, another
        // provider's, a step-up bound to fail) in the user's browser. Browsers say where a
        // navigation came from; `same-site`, `same-origin` and `none` (typed, bookmarked) pass,
        // as does a client that sends no such header.
        if req
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Err(Error::CrossSiteLogin);
        }
        state.limiter.check(ctx.client_ip)?;
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

        let remember = match query_param(&pairs, "remember")?.as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") if state.remember_enabled => true,
            // A navigation: back to the SPA with the reason, not a dead-end JSON page.
            Some("true" | "1") => {
                let to = super::callback::with_error(&return_to, "remember_disabled");
                let mut resp = Response::new(empty());
                *resp.status_mut() = StatusCode::FOUND;
                resp.headers_mut().insert(
                    header::LOCATION,
                    HeaderValue::from_str(&to).map_err(|_| Error::InvalidReturnTo)?,
                );
                return Ok(resp);
            }
            Some(_) => {
                return Err(Error::InvalidRequest(
                    "remember must be true or false".into(),
                ))
            }
        };
        let step_up = step_up_request(&pairs)?;
        let oidc = match query_param(&pairs, "provider")? {
            None => state.providers.default_provider(),
            Some(name) => state.providers.named(&name).ok_or(Error::UnknownProvider)?,
        };
        let auth = oidc.authorize(prompt_none, step_up.as_ref()).await?;
        // The session this browser has now (its Strict cookie comes with this same-site
        // navigation, never with the cross-site callback): ended once the new one exists.
        let previous = state
            .cookies
            .session_id(req.headers())
            .map(|id| id.handle());
        let now = state.clock.unix();
        let pending = PendingLogin {
            nonce: auth.nonce,
            pkce_verifier: auth.pkce_verifier,
            return_to,
            created_at: now,
            previous,
            dpop: auth.dpop,
            step_up,
            remember,
            provider: state.providers.record_name(&oidc),
            issuer: Some(oidc.issuer().to_string()),
            client_id: Some(oidc.client_id().to_string()),
        };
        let json = serde_json::to_vec(&pending)
            .map_err(|e| Error::Internal(format!("pending login: {e}")))?;
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
        let mut existing = state.cookies.pending_cookies(req.headers());
        existing.retain(|(name, created)| {
            let stale = *created + ttl < now;
            if stale {
                h.append(header::SET_COOKIE, state.cookies.expire_login_named(name));
            }
            !stale
        });
        let over = (existing.len() + 1).saturating_sub(cookies::MAX_PENDING_PER_BROWSER);
        for (name, _) in existing.iter().take(over) {
            h.append(header::SET_COOKIE, state.cookies.expire_login_named(name));
        }
        h.append(
            header::SET_COOKIE,
            state.cookies.set_pending(auth.state.expose(), now, &json),
        );
        Ok(resp)
    }
}

/// `acr_values` (space-separated words) and `max_age` (seconds), if the login is a step-up.
fn step_up_request(pairs: &[(String, String)]) -> Result<Option<StepUpRequest>, Error> {
    let acr_values = query_param(pairs, "acr_values")?
        .map(|a| a.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|a| !a.is_empty());
    if let Some(a) = &acr_values {
        if a.len() > 512 || !a.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err(Error::InvalidRequest(
                "acr_values must be at most 512 printable ASCII characters".into(),
            ));
        }
    }
    let max_age = match query_param(pairs, "max_age")? {
        None => None,
        Some(m) => Some(
            m.parse::<u64>()
                .ok()
                .filter(|m| *m <= 366 * 24 * 3600)
                .ok_or_else(|| {
                    Error::InvalidRequest("max_age must be a number of seconds".into())
                })?,
        ),
    };
    Ok(
        (acr_values.is_some() || max_age.is_some()).then_some(StepUpRequest {
            acr_values,
            max_age,
        }),
    )
}

//! CORS for an SPA served from another origin (`csrf.allowed_origins`, SPEC §2): preflights to
//! token routes and to `/auth/user` and `/auth/logout` are answered here, never forwarded, and
//! the real responses carry `Access-Control-Allow-Origin: <that origin>` with credentials.
//!
//! Never `*` (config refuses it: credentials are involved), never the public origin (a
//! same-origin SPA needs no CORS), and it weakens nothing: the real request still needs the
//! CSRF header and an allowed `Origin` (`auth::check_csrf`).

use crate::body::{empty, Body};
use crate::config::Config;
use crate::error::Error;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

/// The request's `Origin`, when it is one of `csrf.allowed_origins` (a cross-origin SPA).
pub(crate) fn allowed_cross_origin<'a>(
    config: &Config,
    headers: &'a HeaderMap,
) -> Option<&'a HeaderValue> {
    let o = headers.get(header::ORIGIN)?;
    let s = o.to_str().ok()?;
    config
        .csrf
        .allowed_origins
        .iter()
        .any(|a| a == s)
        .then_some(o)
}

/// Whether this is a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`).
pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: 204 with the configured methods and headers for an allowed
/// origin, else 403 `origin`.
///
/// # Errors
/// [`Error::Origin`] when the origin is not allowed.
pub(crate) fn preflight(config: &Config, headers: &HeaderMap) -> Result<Response<Body>, Error> {
    let origin = allowed_cross_origin(config, headers).ok_or(Error::Origin)?;
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        config.csrf.cors_allow_methods.clone(),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        config.csrf.cors_allow_headers.clone(),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Lets an allowed cross origin read a real response (replacing whatever an upstream said).
pub(crate) fn decorate(resp: &mut Response<Body>, origin: HeaderValue) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

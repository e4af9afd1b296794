//! CORS for an SPA served from another origin (`csrf.allowed_origins`, SPEC §2): preflights to
//! token routes and to `/auth/user` and `/auth/logout` are answered here, never forwarded, and
//! the real responses carry `Access-Control-Allow-Origin: <that origin>` with credentials.
//!
//! Never `*` (config refuses it: credentials are involved), never the public origin (a
//! same-origin SPA needs no CORS), and it weakens nothing: the real request still needs the
//! CSRF header and an allowed `Origin` (`Origins::check_csrf`, here too: both read the same
//! origin list).

use crate::body::{empty, Body};
use crate::config::CsrfConfig;
use crate::error::Error;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

/// Which origins may call us: the public origin, and `csrf.allowed_origins` (cross-origin SPAs,
/// which also get CORS). Built once from `server.public_url` and `[csrf]`.
#[derive(Debug, Clone)]
pub struct Origins {
    public_origin: String,
    cfg: CsrfConfig,
}

impl Origins {
    /// From the public origin (`server.public_url`'s) and `[csrf]`.
    #[must_use]
    pub fn new(public_origin: &str, cfg: &CsrfConfig) -> Self {
        Self {
            public_origin: public_origin.to_string(),
            cfg: cfg.clone(),
        }
    }

    /// The request's `Origin`, when it is one of `csrf.allowed_origins` (a cross-origin SPA).
    pub(crate) fn allowed_cross_origin<'a>(
        &self,
        headers: &'a HeaderMap,
    ) -> Option<&'a HeaderValue> {
        let o = headers.get(header::ORIGIN)?;
        let s = o.to_str().ok()?;
        self.cfg.allowed_origins.iter().any(|a| a == s).then_some(o)
    }

    /// SPEC §2: the CSRF header must be present with value `1`, and a present `Origin` must be
    /// ours or allowed. WebSocket upgrades cannot carry custom headers: for them an allowed
    /// `Origin` is required instead.
    ///
    /// # Errors
    /// [`Error::Origin`] or [`Error::Csrf`].
    pub(crate) fn check_csrf(&self, headers: &HeaderMap, websocket: bool) -> Result<(), Error> {
        let origin = headers.get(header::ORIGIN);
        if let Some(o) = origin {
            let ok = o.to_str().is_ok_and(|o| {
                o == self.public_origin || self.cfg.allowed_origins.iter().any(|a| a == o)
            });
            if !ok {
                return Err(Error::Origin);
            }
        }
        if websocket {
            return if origin.is_some() {
                Ok(())
            } else {
                Err(Error::Origin)
            };
        }
        match headers.get(&self.cfg.header) {
            Some(v) if v.as_bytes() == b"1" => Ok(()),
            _ => Err(Error::Csrf),
        }
    }

    /// The answer to a preflight: 204 with the configured methods and headers for an allowed
    /// origin, else 403 `origin`.
    ///
    /// # Errors
    /// [`Error::Origin`] when the origin is not allowed.
    pub(crate) fn preflight(&self, headers: &HeaderMap) -> Result<Response<Body>, Error> {
        let origin = self.allowed_cross_origin(headers).ok_or(Error::Origin)?;
        Ok(preflight_answer(
            origin.clone(),
            self.cfg.cors_allow_methods.clone(),
            self.cfg.cors_allow_headers.clone(),
        ))
    }
}

/// Whether this is a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`).
pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn preflight_answer(
    origin: HeaderValue,
    methods: HeaderValue,
    headers: HeaderValue,
) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, headers);
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
    r
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
    // The SPA client reads it to tell our 401s from an upstream's.
    if h.contains_key(crate::error::ERROR_HEADER) {
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(crate::error::ERROR_HEADER),
        );
    }
}

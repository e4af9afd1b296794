//! Errors: the request-path [`Error`] with its one status mapping, and [`StartupError`].
//!
//! Owns: what each failure answers (status + stable JSON code). Bodies never carry internals:
//! the `#[source]` chain goes to the log (once, in `routes`), never to the client.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, Body};

/// The header on every error answer Cloakroom itself makes (its value: the error code). An
/// upstream's copy is dropped from its responses, so a browser seeing it knows the answer, and
/// any `login_url` in it, came from Cloakroom and not from an API behind it.
pub const ERROR_HEADER: &str = "x-cloakroom-error";

/// A failure on the request path. Every variant maps to one status and one code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- client
    /// No (valid) session where one is required.
    #[error("no valid session")]
    Unauthenticated,
    /// As [`Error::Unauthenticated`] (same status and code), for a session that ended because
    /// its access token expired with no refresh token: the answer names a silent
    /// re-authentication (`session.without_refresh_token = "silent_login"`).
    #[error("no valid session; a silent login may restore it")]
    SilentLoginPossible {
        /// `/auth/login?prompt=none`.
        login_url: String,
    },
    /// Missing or wrong CSRF header.
    #[error("missing or wrong CSRF header")]
    Csrf,
    /// `Origin` not allowed.
    #[error("origin not allowed")]
    Origin,
    /// `return_to` is not a same-origin relative path.
    #[error("invalid return_to")]
    InvalidReturnTo,
    /// `/auth/login` reached from another site (`Sec-Fetch-Site: cross-site`): a login CSRF
    /// attempt (another site cannot start a login, a remembered one, or a step-up, in the user's
    /// browser).
    #[error("login started from another site")]
    CrossSiteLogin,
    /// `/auth/login?provider=` names no configured provider.
    #[error("no such identity provider")]
    UnknownProvider,
    /// The route does not take sessions of this session's provider (`[[routes]] providers`).
    #[error("this route does not accept sessions of this identity provider")]
    ProviderNotAllowed,
    /// Unknown, replayed, expired or foreign `state`.
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// Malformed request (bad back-channel logout token, bad query…).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No route and no endpoint for this path.
    #[error("not found")]
    NotFound,
    /// Wrong method on a known endpoint.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A `token = "dpop"` route, and the session's token is not DPoP-bound.
    #[error("the route needs a DPoP-bound token")]
    DpopRequired,
    /// The session's authentication is not strong or recent enough for this route (its
    /// `acr_values`/`max_age`, or an upstream's RFC 9470 challenge): the SPA runs a step-up
    /// login.
    #[error("step-up authentication required")]
    StepUpRequired(Box<StepUpChallenge>),
    /// The SPA's state is over [`crate::auth::MAX_STATE`] bytes.
    #[error("session state too large")]
    StateTooLarge,
    /// Too many logins from this client IP.
    #[error("rate limited")]
    RateLimited {
        /// When the next one would be allowed: the `Retry-After` header.
        retry_after: std::time::Duration,
    },
    // --- IdP
    /// The ID token failed validation (OIDC Core 3.1.3.7).
    #[error("ID token rejected: {0}")]
    InvalidIdToken(String),
    /// The IdP refused, or did not answer, the pushed authorization request (RFC 9126).
    #[error("pushed authorization request failed: {0}")]
    AuthorizationRequest(String),
    /// The code exchange failed.
    #[error("token exchange failed: {0}")]
    TokenExchange(String),
    /// The IdP refused to exchange the user's token for this route's (`invalid_target`, …).
    #[error("token exchange refused: {0}")]
    TokenExchangeDenied(String),
    /// The IdP refused a per-resource token for this route (`invalid_target`, `invalid_scope`).
    #[error("resource token refused: {0}")]
    ResourceTokenDenied(String),
    /// No exchanged token can be had now (the IdP is down or slow).
    #[error("token exchange unavailable: {why}")]
    TokenExchangeUnavailable {
        /// Why (for the log).
        why: String,
        /// The `Retry-After` header.
        retry_after: std::time::Duration,
    },
    /// No client-credentials token can be had now (the IdP is down or slow).
    #[error("client token unavailable: {why}")]
    ClientTokenUnavailable {
        /// Why (for the log).
        why: String,
        /// The `Retry-After` header.
        retry_after: std::time::Duration,
    },
    /// The IdP refused Cloakroom's client-credentials request (a configuration problem).
    #[error("client token refused: {0}")]
    ClientTokenRefused(String),
    /// The IdP could not refresh a token and the current one is expired.
    #[error("token refresh unavailable: {why}")]
    RefreshUnavailable {
        /// Why (for the log).
        why: String,
        /// When to try again (the cool-off left): the `Retry-After` header.
        retry_after: std::time::Duration,
    },
    // --- upstream
    /// Could not connect to / talk to the upstream.
    #[error("upstream unavailable")]
    UpstreamUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    // --- store
    /// The session store did not answer.
    #[error("session store unavailable")]
    StoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    // --- us
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Status and stable error code. One match, no catch-all: a new variant must be mapped here.
    #[must_use]
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::Unauthenticated | Error::SilentLoginPossible { .. } => {
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            }
            Error::Csrf => (StatusCode::FORBIDDEN, "csrf"),
            Error::Origin => (StatusCode::FORBIDDEN, "origin"),
            Error::InvalidReturnTo => (StatusCode::BAD_REQUEST, "invalid_return_to"),
            Error::CrossSiteLogin => (StatusCode::FORBIDDEN, "cross_site_login"),
            Error::UnknownProvider => (StatusCode::BAD_REQUEST, "unknown_provider"),
            Error::ProviderNotAllowed => (StatusCode::FORBIDDEN, "provider_not_allowed"),
            Error::InvalidState(_) => (StatusCode::BAD_REQUEST, "invalid_state"),
            Error::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Error::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Error::DpopRequired => (StatusCode::FORBIDDEN, "dpop_required"),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::StepUpRequired(_) => (StatusCode::UNAUTHORIZED, "step_up_required"),
            Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Error::StateTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "state_too_large"),
            Error::InvalidIdToken(_) => (StatusCode::UNAUTHORIZED, "invalid_id_token"),
            Error::AuthorizationRequest(_) => {
                (StatusCode::BAD_GATEWAY, "authorization_request_failed")
            }
            Error::TokenExchange(_) => (StatusCode::BAD_GATEWAY, "token_exchange_failed"),
            Error::RefreshUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "token_refresh_unavailable")
            }
            Error::TokenExchangeDenied(_) => (StatusCode::FORBIDDEN, "token_exchange_denied"),
            Error::ResourceTokenDenied(_) => (StatusCode::FORBIDDEN, "resource_token_denied"),
            Error::TokenExchangeUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "token_exchange_unavailable",
            ),
            Error::ClientTokenUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "client_token_unavailable")
            }
            Error::ClientTokenRefused(_) => (StatusCode::BAD_GATEWAY, "client_token_refused"),
            Error::UpstreamUnavailable(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
            Error::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Error::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The response the client gets: status + `{"error": code}`, never the cause.
    #[must_use]
    pub fn into_response(&self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let body = match self {
            Error::StepUpRequired(c) => serde_json::json!({
                "error": code,
                "acr_values": c.acr_values,
                "max_age": c.max_age,
                "login_url": c.login_url,
            }),
            Error::SilentLoginPossible { login_url } => serde_json::json!({
                "error": code,
                "login_url": login_url,
            }),
            _ => serde_json::json!({ "error": code }),
        };
        let mut resp = json_response(status, &body);
        // Marks the answer as Cloakroom's own (an upstream's copy of the header is dropped,
        // `proxy::filter_response`): the SPA client acts on a 401's `login_url` only then.
        resp.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(code));
        match self {
            Error::RefreshUnavailable { retry_after, .. }
            | Error::RateLimited { retry_after }
            | Error::TokenExchangeUnavailable { retry_after, .. }
            | Error::ClientTokenUnavailable { retry_after, .. } => {
                // Whole seconds, rounded up, at least 1.
                let secs = retry_after.as_millis().div_ceil(1000).max(1);
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(u64::try_from(secs).unwrap_or(1)),
                );
            }
            Error::StoreUnavailable(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        resp
    }
}

/// What a step-up answer tells the SPA: what to ask for, and the login URL that asks for it
/// (relative to the public URL; the SPA appends `&return_to=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUpChallenge {
    /// Space-separated `acr` values, one of which the new login must reach.
    pub acr_values: Option<String>,
    /// The longest time since authentication, in seconds.
    pub max_age: Option<u64>,
    /// `/auth/login?acr_values=…&max_age=…`.
    pub login_url: String,
}

impl StepUpChallenge {
    /// The challenge for these requirements, its login URL under `auth_prefix`.
    #[must_use]
    pub fn new(auth_prefix: &str, acr_values: Option<String>, max_age: Option<u64>) -> Self {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(a) = &acr_values {
            q.append_pair("acr_values", a);
        }
        if let Some(m) = max_age {
            q.append_pair("max_age", &m.to_string());
        }
        Self {
            login_url: format!("{auth_prefix}/login?{}", q.finish()),
            acr_values,
            max_age,
        }
    }

    /// The login URL for a session of `provider` (a recorded name; `None`: `[oidc]`): the
    /// step-up must go to the session's own identity provider to upgrade it.
    #[must_use]
    pub fn for_provider(mut self, provider: Option<&str>) -> Self {
        if let Some(p) = provider {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("provider", p)
                .finish();
            let sep = if self.login_url.ends_with('?') {
                ""
            } else {
                "&"
            };
            self.login_url = format!("{}{sep}{q}", self.login_url);
        }
        self
    }
}

/// A JSON response with `Cache-Control: no-store`.
#[must_use]
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A failure before serving: config, bind, discovery, store connect.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    /// A listener could not bind.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// OIDC discovery failed.
    #[error("OIDC discovery at {issuer} failed: {reason}")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// The session store could not be reached.
    #[error("session store: {0}")]
    Store(String),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The per-core runtimes could not be started.
    #[error("cannot start the per-core runtimes: {0}")]
    Runtime(String),
}

/// An error and its sources on one line (no values from requests in any of them).
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_is_pinned() {
        let io =
            || Box::new(std::io::Error::other("x")) as Box<dyn std::error::Error + Send + Sync>;
        let table: Vec<(Error, u16, &str)> = vec![
            (Error::Unauthenticated, 401, "unauthenticated"),
            (Error::Csrf, 403, "csrf"),
            (Error::Origin, 403, "origin"),
            (Error::InvalidReturnTo, 400, "invalid_return_to"),
            (Error::CrossSiteLogin, 403, "cross_site_login"),
            (Error::UnknownProvider, 400, "unknown_provider"),
            (Error::ProviderNotAllowed, 403, "provider_not_allowed"),
            (Error::InvalidState("x"), 400, "invalid_state"),
            (Error::InvalidRequest("x".into()), 400, "invalid_request"),
            (Error::NotFound, 404, "not_found"),
            (Error::DpopRequired, 403, "dpop_required"),
            (
                Error::StepUpRequired(Box::new(StepUpChallenge::new("/auth", None, Some(5)))),
                401,
                "step_up_required",
            ),
            (
                Error::TokenExchangeDenied("x".into()),
                403,
                "token_exchange_denied",
            ),
            (
                Error::ResourceTokenDenied("x".into()),
                403,
                "resource_token_denied",
            ),
            (
                Error::TokenExchangeUnavailable {
                    why: "x".into(),
                    retry_after: std::time::Duration::from_secs(5),
                },
                503,
                "token_exchange_unavailable",
            ),
            (
                Error::ClientTokenUnavailable {
                    why: "x".into(),
                    retry_after: std::time::Duration::from_secs(5),
                },
                503,
                "client_token_unavailable",
            ),
            (
                Error::ClientTokenRefused("x".into()),
                502,
                "client_token_refused",
            ),
            (Error::MethodNotAllowed, 405, "method_not_allowed"),
            (Error::InvalidIdToken("x".into()), 401, "invalid_id_token"),
            (
                Error::AuthorizationRequest("x".into()),
                502,
                "authorization_request_failed",
            ),
            (
                Error::TokenExchange("x".into()),
                502,
                "token_exchange_failed",
            ),
            (
                Error::RefreshUnavailable {
                    why: "x".into(),
                    retry_after: std::time::Duration::from_secs(5),
                },
                503,
                "token_refresh_unavailable",
            ),
            (
                Error::UpstreamUnavailable(io()),
                502,
                "upstream_unavailable",
            ),
            (Error::UpstreamTimeout, 504, "upstream_timeout"),
            (Error::StoreUnavailable(io()), 503, "store_unavailable"),
            (Error::Internal("x".into()), 500, "internal"),
        ];
        for (e, status, code) in table {
            let (s, c) = e.status_and_code();
            assert_eq!((s.as_u16(), c), (status, code), "{e:?}");
            let resp = e.into_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(resp.headers()[ERROR_HEADER], code, "marked as ours");
        }
    }

    #[test]
    fn a_step_up_answer_says_what_to_ask_for() {
        let c = StepUpChallenge::new("/auth", Some("urn:a urn:b".into()), Some(300));
        assert_eq!(
            c.login_url,
            "/auth/login?acr_values=urn%3Aa+urn%3Ab&max_age=300"
        );
        let resp = Error::StepUpRequired(Box::new(c)).into_response();
        assert_eq!(resp.status(), 401);
    }
}

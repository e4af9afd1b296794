//! The demo API, behind Cloakroom's `/api/` route (`token = "required"`).
//!
//! `GET /api/whoami` verifies the bearer token Cloakroom attached, against the development
//! IdP's key and its revoked set, and answers with what it learned from it, never the token:
//! `{"subject", "scopes", "expires_at", "expires_in", "issued_at", "issuer", "message"}`.
//! Without a valid bearer it answers 401 JSON (RFC 6750).

use super::idp::AccessTokenVerifier;
use super::{DemoError, LocalServer};
use cloakroom::body::Body;
use cloakroom::error::json_response;
use cloakroom::session::now_unix;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// A running demo API. Dropping it stops it.
#[derive(Debug)]
pub struct DemoApi {
    server: LocalServer,
}

impl DemoApi {
    /// Serves the API on `addr` (loopback only), checking tokens with `verifier`.
    ///
    /// # Errors
    /// [`DemoError::NotLoopback`], [`DemoError::Bind`].
    pub async fn start(addr: SocketAddr, verifier: AccessTokenVerifier) -> Result<Self, DemoError> {
        let verifier = Arc::new(verifier);
        let server = LocalServer::start(addr, move |req, _peer| {
            let verifier = verifier.clone();
            async move { Ok(answer(&verifier, &req)) }
        })?;
        Ok(Self { server })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn unauthorized(error: &str, message: &str) -> Response<Body> {
    let mut resp = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"error": error, "message": message}),
    );
    let challenge = if error == "invalid_token" {
        format!(
            "Bearer realm=\"demo-api\", error=\"invalid_token\", error_description=\"{message}\""
        )
    } else {
        "Bearer realm=\"demo-api\"".to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn answer<B>(verifier: &AccessTokenVerifier, req: &Request<B>) -> Response<Body> {
    if req.uri().path() != "/api/whoami" {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    }
    if req.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method_not_allowed"}),
        );
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = bearer else {
        return unauthorized("unauthenticated", "no bearer token");
    };
    let claims = match verifier.verify(token) {
        Ok(c) => c,
        Err(why) => {
            tracing::info!(reason = why, "demo API: bearer token refused");
            return unauthorized("invalid_token", why);
        }
    };
    let now = now_unix();
    let scopes: Vec<&str> = claims.scope.split(' ').filter(|s| !s.is_empty()).collect();
    json_response(
        StatusCode::OK,
        &json!({
            "subject": claims.sub,
            "scopes": scopes,
            "issued_at": claims.iat,
            "expires_at": claims.exp,
            "expires_in": claims.exp - now,
            "issuer": claims.iss,
            "message": format!(
                "Hello {}! This API checked the bearer token Cloakroom attached to your call. \
                 Your browser never held that token: it only has an opaque cookie.",
                claims.sub
            ),
        }),
    )
}

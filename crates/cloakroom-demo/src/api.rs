//! The demo API, behind Cloakroom's `/api/` route (`token = "required"`) and its
//! `/api/sensitive` route (`token = "required"`, `max_age`: step-up).
//!
//! It trusts the demo's development IdPs ([`TrustedIdp`]): the primary one, whose tokens must be
//! DPoP-bound, and the partner IdP, whose tokens are plain bearer tokens (Cloakroom does DPoP
//! with `[oidc]` only). A token is checked against the IdP whose key signed it (`kid`).
//!
//! `GET /api/whoami` verifies the token Cloakroom attached, against that IdP's key and its
//! revoked set, and answers with what it learned from it, never the token: `{"subject",
//! "scopes", "expires_at", "expires_in", "issued_at", "issuer", "idp", "dpop", "message"}`. A
//! DPoP-bound token (`cnf.jkt`) must come as `Authorization: DPoP` with a proof for this
//! request signed by that key (RFC 9449 §7.1), and `dpop` says what was checked; a bound token
//! sent as a bearer is refused, and so is an unbound token from an IdP whose tokens must be
//! bound. Without a valid token it answers 401 JSON (RFC 6750, RFC 9449 §7.1).
//!
//! `GET /api/sensitive` makes the same checks and stands for an action that wants a recent
//! login: Cloakroom's route asks for one (`max_age`), so a call with an older login gets
//! Cloakroom's `step_up_required` and never arrives here; the route takes only the primary
//! IdP's sessions (`providers = ["default"]`), so a partner session gets Cloakroom's 403
//! `provider_not_allowed`. It answers `{"ok", "what", "subject", "idp", "auth_time", "acr",
//! "authenticated_ago"}` from the token's RFC 9068 claims.

use super::idp::{AccessClaims, AccessTokenVerifier};
use super::{DemoError, LocalServer};
use cloakroom::body::Body;
use cloakroom::error::json_response;
use cloakroom::session::now_unix;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// An identity provider whose access tokens the API takes.
#[derive(Debug, Clone)]
pub struct TrustedIdp {
    /// What the API's answers call it ("Demo IdP").
    pub name: String,
    /// Its key, issuer and revoked tokens.
    pub verifier: AccessTokenVerifier,
    /// Its tokens must be DPoP-bound (and come with their proof): an unbound one is refused.
    pub dpop_required: bool,
}

/// A running demo API. Dropping it stops it.
#[derive(Debug)]
pub struct DemoApi {
    server: LocalServer,
}

impl DemoApi {
    /// Serves the API on `addr` (loopback only), taking the access tokens of `idps`.
    ///
    /// # Errors
    /// [`DemoError::NotLoopback`], [`DemoError::Bind`].
    pub async fn start(addr: SocketAddr, idps: Vec<TrustedIdp>) -> Result<Self, DemoError> {
        let checker = Arc::new(Checker {
            idps,
            proofs: crate::dpop::ProofChecker::default(),
        });
        let server = LocalServer::start(addr, move |req, _peer| {
            let checker = checker.clone();
            async move { Ok(answer(&checker, &req)) }
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
            "Bearer realm=\"demo-api\", error=\"invalid_token\", error_description=\"{message}\", DPoP algs=\"ES256\""
        )
    } else {
        "Bearer realm=\"demo-api\", DPoP algs=\"ES256\"".to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The trusted IdPs and the DPoP proofs seen (each is good once).
struct Checker {
    idps: Vec<TrustedIdp>,
    proofs: crate::dpop::ProofChecker,
}

fn answer<B>(checker: &Checker, req: &Request<B>) -> Response<Body> {
    let sensitive = match req.uri().path() {
        "/api/whoami" => false,
        "/api/sensitive" => true,
        _ => return json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
    };
    if req.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method_not_allowed"}),
        );
    }
    let (idp, claims, proof_checked) = match check_token(checker, req) {
        Ok(c) => c,
        Err((error, message)) => return unauthorized(error, message),
    };
    if sensitive {
        sensitive_action(idp, &claims)
    } else {
        whoami(idp, &claims, proof_checked.as_deref())
    }
}

/// Why a call is refused: the 401's `error` and `message`.
type Refusal = (&'static str, &'static str);

/// The access token (and, for a DPoP-bound one, the proof that came with it): the IdP that
/// issued it, its claims and the proof key's thumbprint, or why it is refused.
fn check_token<'c, B>(
    checker: &'c Checker,
    req: &Request<B>,
) -> Result<(&'c TrustedIdp, AccessClaims, Option<String>), Refusal> {
    let credentials = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            let dpop = scheme.eq_ignore_ascii_case("dpop");
            (dpop || scheme.eq_ignore_ascii_case("bearer")).then(|| (dpop, token.trim()))
        });
    let Some((dpop, token)) = credentials else {
        return Err(("unauthenticated", "no access token"));
    };
    let Some(idp) = checker.idps.iter().find(|i| i.verifier.signed_it(token)) else {
        tracing::info!("demo API: access token refused: not signed by a trusted IdP's key");
        return Err(("invalid_token", "unknown signing key"));
    };
    let claims = match idp.verifier.verify(token) {
        Ok(c) => c,
        Err(why) => {
            tracing::info!(reason = why, idp = %idp.name, "demo API: access token refused");
            return Err(("invalid_token", why));
        }
    };
    let bound = claims.cnf.as_ref().and_then(|c| c.jkt.clone());
    if idp.dpop_required && bound.is_none() {
        tracing::info!(idp = %idp.name, "demo API: an unbound token from an IdP whose tokens must be DPoP-bound");
        return Err(("invalid_token", "this IdP's tokens must be DPoP-bound"));
    }
    let proof_checked = match (&bound, dpop) {
        (Some(_), false) => {
            return Err(("invalid_token", "a DPoP-bound token sent as a bearer token"))
        }
        (None, true) => return Err(("invalid_token", "not a DPoP-bound token")),
        (None, false) => None,
        (Some(jkt), true) => {
            let proof = req.headers().get("dpop").and_then(|v| v.to_str().ok());
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let htu = format!("http://{host}{}", req.uri().path());
            match proof.map(|p| {
                checker
                    .proofs
                    .check(p, req.method().as_str(), &htu, Some(token), now_unix())
            }) {
                None => return Err(("invalid_token", "no DPoP proof")),
                Some(Err(why)) => {
                    tracing::info!(reason = why, "demo API: DPoP proof refused");
                    return Err(("invalid_token", why));
                }
                Some(Ok(k)) if k != *jkt => {
                    return Err(("invalid_token", "the DPoP proof's key is not the token's"))
                }
                Some(Ok(k)) => Some(k),
            }
        }
    };
    Ok((idp, claims, proof_checked))
}

/// `GET /api/sensitive`: Cloakroom let it through, so the login behind it is recent enough.
fn sensitive_action(idp: &TrustedIdp, claims: &AccessClaims) -> Response<Body> {
    let now = now_unix();
    tracing::info!(sub = %claims.sub, auth_time = ?claims.auth_time, "demo API: sensitive action");
    json_response(
        StatusCode::OK,
        &json!({
            "ok": true,
            "what": "a sensitive action",
            "subject": claims.sub,
            "idp": idp.name,
            "auth_time": claims.auth_time,
            "acr": claims.acr,
            "authenticated_ago": claims.auth_time.map(|t| now - t),
            "message": format!(
                "Done, {}. Cloakroom only forwards this call when your login is recent enough \
                 (the route's max_age); otherwise it answers step_up_required and the app asks \
                 you to sign in again.",
                claims.sub
            ),
        }),
    )
}

/// `GET /api/whoami`: what the token says.
fn whoami(idp: &TrustedIdp, claims: &AccessClaims, proof_checked: Option<&str>) -> Response<Body> {
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
            "idp": idp.name,
            "dpop": match proof_checked {
                Some(jkt) => json!({
                    "bound": true,
                    "proof_verified": true,
                    "key_thumbprint": jkt,
                }),
                None => json!({ "bound": false }),
            },
            "message": format!(
                "Hello {}! This API checked the {} the {} issued and Cloakroom attached to your \
                 call{}. Your browser never held that token: it only has an opaque cookie.",
                claims.sub,
                if proof_checked.is_some() { "DPoP-bound token" } else { "bearer token" },
                idp.name,
                if proof_checked.is_some() {
                    ", and the proof signed for this very request by the key it is bound to \
                     (a key that never left Cloakroom)"
                } else {
                    ""
                },
            ),
        }),
    )
}

//! A development OpenID provider for `cloakroom-demo`. **Not for production.**
//!
//! It implements as much of OpenID Connect Core, RFC 6749, RFC 7636 (PKCE), RFC 7009
//! (revocation), RFC 9207 (`iss` in the authorization response) and RP-Initiated Logout as the
//! demo needs to drive every Cloakroom path through a real code flow:
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | discovery |
//! | `GET /jwks` | the RSA public key (generated at start-up, `kid` = RFC 7638 thumbprint) |
//! | `GET /authorize` | code flow, PKCE S256 required, `prompt=none`/`login`, `max_age` (a login older than that, or `max_age=0`, means the login page again); login page |
//! | `POST /authorize/login` | checks the demo credentials, sets `devidp_session`, redirects |
//! | `POST /token` | `authorization_code`; `refresh_token` with rotation and reuse detection; with a `DPoP` proof (RFC 9449), DPoP-bound access tokens (`cnf.jkt`, `token_type: DPoP`), the code bound to `dpop_jkt` when the authorization request sent one |
//! | `POST /revoke` | refresh tokens (the whole grant) and access tokens (by `jti`) |
//!
//! The client authenticates with its secret (Basic or in the body) or, when registered with a
//! public JWK set, with `private_key_jwt` only (RFC 7523 assertions: ES256, PS256 or EdDSA,
//! `aud` the issuer or the token endpoint, each `jti` once).
//! | `GET`/`POST /end_session` | ends the IdP session, back to a registered URI |
//!
//! One client, one user ([`DEMO_USER`] / [`DEMO_PASSWORD`]), all state in memory, a fresh key
//! on every start, and it binds loopback addresses only. Several can run side by side (the
//! demo runs two, for two identity providers): each has its own issuer (port), key, client,
//! display name ([`IdpOptions::name`]) and session cookie ([`IdpOptions::session_cookie`]).
//!
//! Every ID token carries `auth_time` (when the user last typed the password at this IdP),
//! `acr` ([`DEMO_ACR`]) and `amr` (`["pwd"]`); access tokens carry `auth_time` and `acr` too
//! (RFC 9068 §2.2.1), so an API can see how recent the login behind a call is. `acr_values` in
//! an authorization request is accepted and, there being one way to log in, does not change
//! the answer (OIDC Core 3.1.2.1: it is a voluntary claim request).

use super::{
    csp_hash_of_element, escape_html, html, parse_pairs, read_form, redirect, single, DemoError,
    LocalServer,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use cloakroom::body::Body;
use cloakroom::crypto::random_token;
use cloakroom::error::json_response;
use cloakroom::secret::{constant_time_eq, Secret};
use cloakroom::session::now_unix;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use url::Url;

/// The demo user's name (and `sub`).
pub const DEMO_USER: &str = "alice";
/// The demo user's password.
pub const DEMO_PASSWORD: &str = "demo";
/// The IdP's session cookie, by default ([`IdpOptions::session_cookie`]). Cookies ignore
/// ports, so it must not share a name with Cloakroom's cookies on the same host, nor with
/// another development IdP's.
pub const SESSION_COOKIE: &str = "devidp_session";
/// The IdP's display name, by default ([`IdpOptions::name`]).
pub const DEFAULT_NAME: &str = "Development IdP";
/// The `aud` of every access token: the demo API.
pub const API_AUDIENCE: &str = "cloakroom-demo-api";
/// The `acr` of every login at the development IdP: user name and password.
pub const DEMO_ACR: &str = "urn:cloakroom:demo:pwd";

const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
const CODE_TTL: i64 = 60;
const INTERACTION_TTL: i64 = 600;
const SESSION_TTL: i64 = 8 * 3600;
const REFRESH_TTL: i64 = 24 * 3600;
const ID_TOKEN_TTL: i64 = 600;
/// Issued tokens remembered for [`DevIdp::issued_tokens`].
const MAX_RECORDED: usize = 10_000;

const STYLE: &str =
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}\
.banner{background:#b3261e;color:#fff;padding:.75rem 1rem;text-align:center}\
main{max-width:26rem;margin:2rem auto;background:#fff;padding:1.5rem 2rem;border-radius:8px;\
box-shadow:0 1px 4px #0002}label{display:block;margin:.75rem 0}input{display:block;width:100%;\
box-sizing:border-box;padding:.5rem;font:inherit}button{font:inherit;padding:.5rem 1.25rem;\
margin-top:.5rem}.error{color:#b3261e;font-weight:600}.hint{color:#666;font-size:.9rem}";

/// The one registered client.
#[derive(Debug, Clone)]
pub struct ClientRegistration {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (client_secret_basic or client_secret_post).
    pub client_secret: Secret,
    /// The one registered redirect URI (exact match).
    pub redirect_uri: String,
    /// The one registered post-logout redirect URI (exact match).
    pub post_logout_redirect_uri: String,
    /// With a public JWK set, the client authenticates with `private_key_jwt` (RFC 7523)
    /// only, its assertions signed by one of these keys; without, with its secret.
    pub jwks: Option<Value>,
}

/// How the development IdP behaves.
#[derive(Debug, Clone)]
pub struct IdpOptions {
    /// The client.
    pub client: ClientRegistration,
    /// Lifetime of access tokens (`expires_in`).
    pub access_token_ttl: Duration,
    /// What its pages call it (e.g. "Demo IdP", "Partner IdP"); [`DEFAULT_NAME`] by default.
    pub name: String,
    /// Its session cookie's name ([`SESSION_COOKIE`] by default). Cookies ignore ports: two
    /// development IdPs on the same host need different names, or signing in at one would
    /// sign the browser out of the other.
    pub session_cookie: String,
}

impl IdpOptions {
    /// `client`, with `access_token_ttl`, the default name and session cookie.
    #[must_use]
    pub fn new(client: ClientRegistration, access_token_ttl: Duration) -> Self {
        Self {
            client,
            access_token_ttl,
            name: DEFAULT_NAME.into(),
            session_cookie: SESSION_COOKIE.into(),
        }
    }
}

/// A running development IdP. Dropping it stops it.
#[derive(Debug)]
pub struct DevIdp {
    shared: Arc<Shared>,
    server: LocalServer,
}

impl DevIdp {
    /// Generates a signing key and starts serving on `addr`, which must be a loopback address
    /// (port 0 picks a free port).
    ///
    /// # Errors
    /// [`DemoError::NotLoopback`] for any other address; [`DemoError::Bind`];
    /// [`DemoError::Key`].
    pub async fn start(addr: SocketAddr, options: IdpOptions) -> Result<Self, DemoError> {
        let listener = LocalServer::bind(addr)?;
        let signer = tokio::task::spawn_blocking(Signer::generate)
            .await
            .map_err(|e| DemoError::Key(e.to_string()))??;
        let bound = listener
            .local_addr()
            .map_err(|source| DemoError::Bind { addr, source })?;
        let issuer = format!("http://{bound}");
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            options,
            signer,
            page_csp: HeaderValue::from_str(&format!(
                "default-src 'none'; style-src {}; frame-ancestors 'none'; base-uri 'none'",
                csp_hash_of_element(&format!("<style>{STYLE}</style>"), "style")
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
            state: Mutex::new(State::default()),
            revoked: Arc::new(RevokedJtis::default()),
            proofs: crate::dpop::ProofChecker::default(),
            assertion_jtis: Mutex::default(),
        });
        let s = shared.clone();
        let server = LocalServer::serve(listener, move |req, _peer| {
            let s = s.clone();
            async move { Ok(s.handle(req).await) }
        })?;
        tracing::warn!(
            %issuer,
            "DEVELOPMENT IdP listening: not for production (one demo user, in-memory state, new key every start)"
        );
        Ok(Self { shared, server })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The issuer, `http://<addr>`.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// What its pages call it ([`IdpOptions::name`]).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.shared.options.name
    }

    /// Its session cookie's name ([`IdpOptions::session_cookie`]).
    #[must_use]
    pub fn session_cookie(&self) -> &str {
        &self.shared.options.session_cookie
    }

    /// What a resource server needs to check this IdP's access tokens: its public key, issuer,
    /// audience, and the revoked `jti`s.
    #[must_use]
    pub fn access_token_verifier(&self) -> AccessTokenVerifier {
        AccessTokenVerifier {
            key: self.shared.signer.decoding.clone(),
            kid: self.shared.signer.kid.clone(),
            issuer: self.shared.issuer.clone(),
            revoked: self.shared.revoked.clone(),
        }
    }

    /// Every access, refresh and ID token issued so far (the latest 10 000): lets tests prove
    /// that none of them reached the browser.
    #[must_use]
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().issued.clone()
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

// ------------------------------------------------------------------ keys

struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    jwk: Value,
}

impl Signer {
    fn generate() -> Result<Self, DemoError> {
        let key_err = |e: &dyn std::fmt::Display| DemoError::Key(e.to_string());
        let private =
            rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| key_err(&e))?;
        let der = private.to_pkcs1_der().map_err(|e| key_err(&e))?;
        let n = URL_SAFE_NO_PAD.encode(private.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(private.e().to_bytes_be());
        // RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order.
        let thumbprint_input = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(thumbprint_input.as_bytes()));
        let decoding = DecodingKey::from_rsa_components(&n, &e).map_err(|e| key_err(&e))?;
        Ok(Self {
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            decoding,
            jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e}),
            kid,
        })
    }

    fn sign(&self, typ: &str, claims: &Value) -> Result<String, String> {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        h.typ = Some(typ.into());
        jsonwebtoken::encode(&h, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Verifies one of our own JWTs (signature, `iss`, optionally `exp`).
    fn verify<T: for<'de> Deserialize<'de>>(
        &self,
        token: &str,
        issuer: &str,
        check_exp: bool,
    ) -> Option<T> {
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[issuer]);
        v.validate_aud = false;
        v.validate_exp = check_exp;
        v.set_required_spec_claims(&["iss", "sub"]);
        jsonwebtoken::decode::<T>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

/// Revoked access tokens, by `jti`, until they would have expired anyway.
#[derive(Debug, Default)]
struct RevokedJtis(Mutex<HashMap<String, i64>>);

impl RevokedJtis {
    fn revoke(&self, jti: String, exp: i64) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = now_unix();
        m.retain(|_, e| *e > now);
        m.insert(jti, exp);
    }

    fn contains(&self, jti: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(jti)
    }
}

/// Checks access tokens of the development IdP, the way a resource server would: RS256 under
/// the IdP's key, `typ` `at+jwt`, `iss`, `aud` = [`API_AUDIENCE`], `exp`, not revoked.
#[derive(Clone)]
pub struct AccessTokenVerifier {
    key: DecodingKey,
    kid: String,
    issuer: String,
    revoked: Arc<RevokedJtis>,
}

impl std::fmt::Debug for AccessTokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokenVerifier")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What a verified access token says.
#[derive(Debug, Clone, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// RFC 9068 §2.2.1: when the user last authenticated (unix seconds).
    pub auth_time: Option<i64>,
    /// RFC 9068 §2.2.1: how the user authenticated.
    pub acr: Option<String>,
    /// RFC 9449 §6: the DPoP key the token is bound to.
    pub cnf: Option<Confirmation>,
}

/// An access token's `cnf` claim.
#[derive(Debug, Clone, Deserialize)]
pub struct Confirmation {
    /// The bound DPoP key's RFC 7638 thumbprint.
    pub jkt: Option<String>,
}

impl AccessTokenVerifier {
    /// The issuer whose tokens it checks.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether `token` (a JWT) names this IdP's signing key (`kid`) in its header: which of
    /// several IdPs' verifiers is the one to [`AccessTokenVerifier::verify`] it with.
    #[must_use]
    pub fn signed_it(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token)
            .is_ok_and(|h| h.kid.as_deref() == Some(self.kid.as_str()))
    }

    /// Verifies `token`.
    ///
    /// # Errors
    /// A short reason (never echoing the token).
    pub fn verify(&self, token: &str) -> Result<AccessClaims, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        if header.alg != Algorithm::RS256 || header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err("unknown signing key");
        }
        if header.typ.as_deref() != Some("at+jwt") {
            return Err("not an access token");
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[self.issuer.as_str()]);
        v.set_audience(&[API_AUDIENCE]);
        v.set_required_spec_claims(&["iss", "aud", "exp", "sub"]);
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &self.key, &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
                _ => "invalid token",
            })?
            .claims;
        if self.revoked.contains(&claims.jti) {
            return Err("token revoked");
        }
        Ok(claims)
    }
}

// ------------------------------------------------------------------ state

#[derive(Default)]
struct State {
    /// Login pages shown, by interaction id: the authorization request waiting for a login.
    interactions: HashMap<String, (AuthRequest, i64)>,
    /// IdP sessions, by `devidp_session` cookie value.
    sessions: HashMap<String, IdpSession>,
    codes: HashMap<String, Code>,
    /// Refresh tokens, current and rotated-out (kept to detect reuse).
    refresh: HashMap<String, RefreshEntry>,
    grants: HashMap<String, Grant>,
    issued: Vec<String>,
}

#[derive(Clone)]
struct AuthRequest {
    redirect_uri: String,
    scope: Vec<String>,
    state: String,
    nonce: String,
    code_challenge: String,
    /// RFC 9449 §10: the thumbprint the code is bound to.
    dpop_jkt: Option<String>,
    force_login: bool,
    prompt_none: bool,
    /// OIDC Core 3.1.2.1: the longest time since the user last authenticated, in seconds.
    max_age: Option<i64>,
}

#[derive(Clone)]
struct IdpSession {
    sub: String,
    sid: String,
    auth_time: i64,
    expires_at: i64,
}

struct Code {
    req: AuthRequest,
    session: IdpSession,
    expires_at: i64,
    /// Set once redeemed: a second redemption revokes what the first one issued.
    redeemed_by: Option<String>,
}

struct RefreshEntry {
    grant: String,
    rotated: bool,
    expires_at: i64,
}

struct Grant {
    sub: String,
    sid: String,
    auth_time: i64,
    scope: Vec<String>,
    access_jtis: Vec<(String, i64)>,
    refresh_tokens: Vec<String>,
    revoked: bool,
    expires_at: i64,
}

impl State {
    fn prune(&mut self, now: i64) {
        self.interactions.retain(|_, (_, exp)| *exp > now);
        self.sessions.retain(|_, s| s.expires_at > now);
        self.codes.retain(|_, c| c.expires_at > now);
        self.refresh.retain(|_, r| r.expires_at > now);
        self.grants.retain(|_, g| g.expires_at > now);
    }

    fn record(&mut self, token: &str) {
        if self.issued.len() >= MAX_RECORDED {
            self.issued.remove(0);
        }
        self.issued.push(token.to_string());
    }
}

struct Shared {
    issuer: String,
    options: IdpOptions,
    signer: Signer,
    page_csp: HeaderValue,
    state: Mutex<State>,
    revoked: Arc<RevokedJtis>,
    /// DPoP proofs at the token endpoint.
    proofs: crate::dpop::ProofChecker,
    /// The `jti`s of the client assertions seen (each is good once).
    assertion_jtis: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// An OAuth error (RFC 6749 §5.2).
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut resp = json_response(
            self.status,
            &json!({"error": self.error, "error_description": self.description}),
        );
        resp.headers_mut()
            .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"dev-idp\""),
            );
        }
        resp
    }
}

fn invalid_grant(description: &str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn invalid_request(description: &str) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
}

/// Decodes `%XX` and `+` (the form encoding RFC 6749 §2.3.1 applies before Basic).
fn form_decode(s: &str) -> String {
    parse_pairs(format!("v={}", s.replace('&', "%26")).as_bytes())
        .into_iter()
        .next()
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Checks an authorization request once its client and redirect URI are known to be good.
/// Errors are `(error, description)` for the redirect back to the client.
fn parse_auth_request(
    pairs: &[(String, String)],
    redirect_uri: &str,
) -> Result<AuthRequest, (&'static str, String)> {
    let get = |name| single(pairs, name);
    let bad = |e: String| ("invalid_request", e);
    if get("request").map_err(bad)?.is_some() || get("request_uri").map_err(bad)?.is_some() {
        return Err((
            "request_not_supported",
            "request objects are not supported".into(),
        ));
    }
    match get("response_type").map_err(bad)? {
        Some("code") => {}
        _ => {
            return Err((
                "unsupported_response_type",
                "only response_type=code".into(),
            ))
        }
    }
    let state = get("state")
        .map_err(bad)?
        .ok_or_else(|| bad("state is required".into()))?;
    let nonce = get("nonce")
        .map_err(bad)?
        .ok_or_else(|| bad("nonce is required".into()))?;
    let code_challenge = get("code_challenge")
        .map_err(bad)?
        .ok_or_else(|| bad("PKCE is required: code_challenge is missing".into()))?;
    if get("code_challenge_method").map_err(bad)? != Some("S256") {
        return Err(bad("code_challenge_method must be S256".into()));
    }
    // 43 characters: the unpadded base64url of a SHA-256 digest.
    if code_challenge.len() != 43 || !valid_pkce_string(code_challenge) {
        return Err(bad(
            "code_challenge is not a base64url SHA-256 digest".into()
        ));
    }
    let scope: Vec<String> = get("scope")
        .map_err(bad)?
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if !scope.iter().any(|s| s == "openid") {
        return Err(("invalid_scope", "scope must include openid".into()));
    }
    if let Some(s) = scope.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(("invalid_scope", format!("unknown scope {s}")));
    }
    let prompt: Vec<&str> = get("prompt")
        .map_err(bad)?
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    if prompt.contains(&"none") && prompt.len() > 1 {
        return Err(bad("prompt=none cannot be combined".into()));
    }
    let max_age = match get("max_age").map_err(bad)? {
        None => None,
        Some(m) => Some(
            m.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| m.parse::<i64>().ok())
                .flatten()
                .ok_or_else(|| bad("max_age must be a non-negative integer (seconds)".into()))?,
        ),
    };
    // Voluntary (OIDC Core 3.1.2.1, 5.5.1.1): one way to log in here, so it changes nothing,
    // but it is still one parameter.
    get("acr_values").map_err(bad)?;
    Ok(AuthRequest {
        redirect_uri: redirect_uri.to_string(),
        scope,
        state: state.to_string(),
        nonce: nonce.to_string(),
        code_challenge: code_challenge.to_string(),
        dpop_jkt: get("dpop_jkt").map_err(bad)?.map(String::from),
        force_login: prompt.contains(&"login"),
        prompt_none: prompt == ["none"],
        max_age,
    })
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`.
fn valid_pkce_string(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.prune(now_unix());
        st
    }

    fn client(&self) -> &ClientRegistration {
        &self.options.client
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = match (&method, path.as_str()) {
            (&Method::GET, "/.well-known/openid-configuration") => self.discovery(),
            (&Method::GET, "/jwks") => {
                json_response(StatusCode::OK, &json!({"keys": [self.signer.jwk]}))
            }
            (&Method::GET, "/authorize") => self.authorize(&req),
            (&Method::POST, "/authorize/login") => self.login(req).await,
            (&Method::POST, "/token") => self.token(req).await,
            (&Method::POST, "/revoke") => self.revoke(req).await,
            (&Method::GET, "/end_session") => {
                let pairs = parse_pairs(req.uri().query().unwrap_or_default().as_bytes());
                self.end_session(req.headers(), &pairs)
            }
            (&Method::POST, "/end_session") => {
                let headers = req.headers().clone();
                match read_form(req).await {
                    Some(pairs) => self.end_session(&headers, &pairs),
                    None => self.error_page(StatusCode::BAD_REQUEST, "Unreadable request."),
                }
            }
            (&Method::GET, "/") => self.home(),
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        };
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "dev-idp request");
        resp
    }

    fn discovery(&self) -> Response<Body> {
        let i = &self.issuer;
        json_response(
            StatusCode::OK,
            &json!({
                "issuer": i,
                "authorization_endpoint": format!("{i}/authorize"),
                "token_endpoint": format!("{i}/token"),
                "jwks_uri": format!("{i}/jwks"),
                "revocation_endpoint": format!("{i}/revoke"),
                "end_session_endpoint": format!("{i}/end_session"),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["ES256", "PS256", "EdDSA"],
                "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "scopes_supported": SCOPES,
                "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid",
                    "at_hash", "acr", "amr", "name", "email", "email_verified"],
                "acr_values_supported": [DEMO_ACR],
                "prompt_values_supported": ["none", "login"],
                "authorization_response_iss_parameter_supported": true,
                "dpop_signing_alg_values_supported": ["ES256"],
                "request_parameter_supported": false,
                "claims_parameter_supported": false,
            }),
        )
    }

    fn page(&self, status: StatusCode, title: &str, body: &str) -> Response<Body> {
        let page = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} · {name}</title><style>{STYLE}</style></head><body>\n\
             <div class=\"banner\" role=\"alert\" id=\"dev-idp-banner\"><strong>Development IdP — \
             not for production.</strong> Built into <code>cloakroom-demo</code>: one fixed user, \
             in-memory state, a new signing key on every start.</div>\n<main>\n{body}\n</main>\
             </body></html>\n",
            title = escape_html(title),
            name = escape_html(&self.options.name),
        );
        let mut resp = html(status, page);
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, self.page_csp.clone());
        resp
    }

    fn error_page(&self, status: StatusCode, message: &str) -> Response<Body> {
        self.page(
            status,
            "Error",
            &format!(
                "<h1>Cannot continue</h1><p class=\"error\">{}</p>",
                escape_html(message)
            ),
        )
    }

    fn home(&self) -> Response<Body> {
        self.page(
            StatusCode::OK,
            "Home",
            &format!(
                "<h1>{name}</h1><p>Issuer <code>{i}</code>. \
                 <a href=\"/.well-known/openid-configuration\">Discovery document</a>.</p>",
                name = escape_html(&self.options.name),
                i = escape_html(&self.issuer)
            ),
        )
    }

    fn login_page(
        &self,
        status: StatusCode,
        interaction: &str,
        req: &AuthRequest,
        reauth: Option<&str>,
        error: Option<&str>,
    ) -> Response<Body> {
        let reauth = reauth
            .map(|r| {
                format!(
                    "<p id=\"reauth\"><strong>Sign in again:</strong> {}</p>\n",
                    escape_html(r)
                )
            })
            .unwrap_or_default();
        let error = error
            .map(|e| {
                format!(
                    "<p class=\"error\" id=\"login-error\">{}</p>",
                    escape_html(e)
                )
            })
            .unwrap_or_default();
        let body = format!(
            "<h1>Sign in to the <span id=\"idp-name\">{name}</span></h1>\n\
             <p><strong>{client}</strong> asks for: {scopes}.</p>\n{reauth}{error}\n\
             <form method=\"post\" action=\"/authorize/login\">\n\
             <input type=\"hidden\" name=\"interaction\" value=\"{interaction}\">\n\
             <label>User name <input name=\"username\" value=\"{user}\" autocomplete=\"username\" required></label>\n\
             <label>Password <input name=\"password\" type=\"password\" value=\"{password}\" \
             autocomplete=\"current-password\" required></label>\n\
             <button type=\"submit\" id=\"sign-in\">Sign in</button>\n</form>\n\
             <p class=\"hint\">Demo user: <code>{user}</code> / <code>{password}</code></p>",
            name = escape_html(&self.options.name),
            client = escape_html(&self.client().client_id),
            scopes = escape_html(&req.scope.join(", ")),
            interaction = escape_html(interaction),
            user = DEMO_USER,
            password = DEMO_PASSWORD,
        );
        self.page(status, "Sign in", &body)
    }

    /// A redirect back to the client with `params`, `state` and `iss` (RFC 9207).
    fn back_to_client(
        &self,
        redirect_uri: &str,
        params: &[(&str, &str)],
        state: Option<&str>,
    ) -> Response<Body> {
        let Ok(mut url) = Url::parse(redirect_uri) else {
            return self.error_page(StatusCode::BAD_REQUEST, "Invalid redirect_uri.");
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(s) = state {
                q.append_pair("state", s);
            }
            q.append_pair("iss", &self.issuer);
        }
        redirect(StatusCode::FOUND, url.as_str())
    }

    fn current_session(&self, st: &State, headers: &HeaderMap) -> Option<(String, IdpSession)> {
        cloakroom::cookies::request_cookies(headers, &self.options.session_cookie)
            .find_map(|v| st.sessions.get(v).map(|s| (v.to_string(), s.clone())))
    }

    fn issue_code(&self, st: &mut State, req: AuthRequest, session: IdpSession) -> Response<Body> {
        let code = random_token();
        let (redirect_uri, state) = (req.redirect_uri.clone(), req.state.clone());
        st.codes.insert(
            code.clone(),
            Code {
                req,
                session,
                expires_at: now_unix() + CODE_TTL,
                redeemed_by: None,
            },
        );
        self.back_to_client(&redirect_uri, &[("code", &code)], Some(&state))
    }

    // ---------------------------------------------------------------- /authorize

    fn authorize<B>(&self, req: &Request<B>) -> Response<Body> {
        let pairs = parse_pairs(req.uri().query().unwrap_or_default().as_bytes());
        let get = |name| single(&pairs, name);
        // Until client_id and redirect_uri check out, errors are shown here, never redirected.
        let (client_id, redirect_uri) = match (get("client_id"), get("redirect_uri")) {
            (Ok(c), Ok(r)) => (c, r),
            (Err(e), _) | (_, Err(e)) => return self.error_page(StatusCode::BAD_REQUEST, &e),
        };
        if client_id != Some(self.client().client_id.as_str()) {
            return self.error_page(StatusCode::BAD_REQUEST, "Unknown client_id.");
        }
        if redirect_uri != Some(self.client().redirect_uri.as_str()) {
            return self.error_page(
                StatusCode::BAD_REQUEST,
                "redirect_uri is not the one registered for this client.",
            );
        }
        let redirect_uri = self.client().redirect_uri.clone();
        let state = get("state").ok().flatten();
        let fail = |error: &str, description: &str| {
            self.back_to_client(
                &redirect_uri,
                &[("error", error), ("error_description", description)],
                state,
            )
        };
        let auth = match parse_auth_request(&pairs, &redirect_uri) {
            Ok(a) => a,
            Err((error, description)) => return fail(error, &description),
        };

        let mut st = self.lock();
        let session = self.current_session(&st, req.headers()).map(|(_, s)| s);
        let reauth = match (&session, auth.max_age) {
            _ if auth.force_login => {
                Some("the application asks for a fresh login (prompt=login).".to_string())
            }
            (Some(_), Some(0)) => {
                Some("the application asks for a fresh login (max_age=0).".to_string())
            }
            (Some(s), Some(max)) if now_unix() - s.auth_time > max => Some(format!(
                "the application wants a login at most {max} s old, and yours is {} s old.",
                now_unix() - s.auth_time
            )),
            _ => None,
        };
        if let (Some(session), None) = (session.clone(), &reauth) {
            tracing::info!(sub = %session.sub, "dev-idp: code issued from the existing IdP session");
            return self.issue_code(&mut st, auth, session);
        }
        if auth.prompt_none {
            return fail(
                "login_required",
                if session.is_some() {
                    "the IdP session is older than max_age"
                } else {
                    "no session at the development IdP"
                },
            );
        }
        if let (Some(s), Some(why)) = (&session, &reauth) {
            tracing::info!(sub = %s.sub, reason = %why, "dev-idp: asking for the password again");
        }
        let interaction = random_token();
        st.interactions.insert(
            interaction.clone(),
            (auth.clone(), now_unix() + INTERACTION_TTL),
        );
        drop(st);
        // Only an existing session is "again"; prompt=login without one is a first login.
        let reauth = session.and(reauth);
        self.login_page(StatusCode::OK, &interaction, &auth, reauth.as_deref(), None)
    }

    // ---------------------------------------------------------------- /authorize/login

    async fn login(&self, req: Request<Incoming>) -> Response<Body> {
        let headers = req.headers().clone();
        let Some(form) = read_form(req).await else {
            return self.error_page(StatusCode::BAD_REQUEST, "Unreadable form.");
        };
        let field = |name| single(&form, name).ok().flatten().unwrap_or_default();
        let mut st = self.lock();
        let Some((auth, _)) = st.interactions.get(field("interaction")).cloned() else {
            return self.error_page(
                StatusCode::BAD_REQUEST,
                "This login request has expired or was already used. Go back to the app and log in again.",
            );
        };
        let user_ok = constant_time_eq(field("username").as_bytes(), DEMO_USER.as_bytes());
        let password_ok = constant_time_eq(field("password").as_bytes(), DEMO_PASSWORD.as_bytes());
        if !(user_ok && password_ok) {
            drop(st);
            tracing::info!("dev-idp: wrong user name or password");
            return self.login_page(
                StatusCode::UNAUTHORIZED,
                field("interaction"),
                &auth,
                None,
                Some("Wrong user name or password."),
            );
        }
        st.interactions.remove(field("interaction"));
        let now = now_unix();
        // Signing in again (prompt=login, max_age) renews the IdP session: same `sid`, a new
        // `auth_time`, and a new cookie value (the old one stops working).
        let previous = self.current_session(&st, &headers);
        let sid = match &previous {
            Some((old_cookie, s)) if s.sub == DEMO_USER => {
                let sid = s.sid.clone();
                st.sessions.remove(old_cookie);
                Some(sid)
            }
            _ => None,
        };
        let renewed = sid.is_some();
        let session = IdpSession {
            sub: DEMO_USER.into(),
            sid: sid.unwrap_or_else(random_token),
            auth_time: now,
            expires_at: now + SESSION_TTL,
        };
        let cookie_value = random_token();
        st.sessions.insert(cookie_value.clone(), session.clone());
        if renewed {
            tracing::info!(sub = %session.sub, "dev-idp: user signed in again; IdP session renewed");
        } else {
            tracing::info!(sub = %session.sub, "dev-idp: user logged in; IdP session started");
        }
        let mut resp = self.issue_code(&mut st, auth, session);
        *resp.status_mut() = StatusCode::SEE_OTHER;
        let mut c = cookie::Cookie::new(self.options.session_cookie.clone(), cookie_value);
        c.set_http_only(true);
        c.set_same_site(cookie::SameSite::Lax);
        c.set_path("/");
        if let Ok(v) = HeaderValue::from_str(&c.to_string()) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp
    }

    // ---------------------------------------------------------------- client authentication

    /// RFC 6749 §2.3.1: `client_secret_basic` or `client_secret_post`, not both.
    fn authenticate_client(
        &self,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<(), OAuthError> {
        let invalid_client = || {
            OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            )
        };
        let assertion_type =
            single(form, "client_assertion_type").map_err(|e| invalid_request(&e))?;
        if let Some(jwks) = &self.client().jwks {
            // private_key_jwt only: a secret is not this client's way in.
            if assertion_type != Some(cloakroom::oidc::ASSERTION_TYPE) {
                tracing::info!("dev-idp: a private_key_jwt client came without an assertion");
                return Err(invalid_client());
            }
            return self.check_assertion(jwks, form).map_err(|why| {
                tracing::info!(reason = why, "dev-idp: client assertion refused");
                invalid_client()
            });
        }
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
            });
        let post_id = single(form, "client_id").map_err(|e| invalid_request(&e))?;
        let post_secret = single(form, "client_secret").map_err(|e| invalid_request(&e))?;
        let (id, secret) = match (basic, post_secret) {
            (Some(_), Some(_)) => {
                return Err(invalid_request("use one client authentication method"))
            }
            (Some(b), None) => {
                let decoded = STANDARD
                    .decode(b)
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(invalid_client)?;
                let (id, secret) = decoded.split_once(':').ok_or_else(invalid_client)?;
                let id = form_decode(id);
                if post_id.is_some_and(|p| p != id) {
                    return Err(invalid_client());
                }
                (id, form_decode(secret))
            }
            (None, Some(s)) => (post_id.unwrap_or_default().to_string(), s.to_string()),
            (None, None) => return Err(invalid_client()),
        };
        let c = self.client();
        let ok = constant_time_eq(id.as_bytes(), c.client_id.as_bytes())
            & constant_time_eq(secret.as_bytes(), c.client_secret.expose().as_bytes());
        if ok {
            Ok(())
        } else {
            tracing::info!("dev-idp: client authentication failed");
            Err(invalid_client())
        }
    }

    /// RFC 7523 §3: a client assertion signed by one of the registered keys, `iss` = `sub` =
    /// the client, `aud` the issuer or the token endpoint, not expired, its `jti` new.
    fn check_assertion(&self, jwks: &Value, form: &[(String, String)]) -> Result<(), &'static str> {
        #[derive(Deserialize)]
        struct Claims {
            sub: String,
            jti: String,
        }
        let jwt = single(form, "client_assertion")
            .ok()
            .flatten()
            .ok_or("no client_assertion")?;
        let client_id = &self.client().client_id;
        if single(form, "client_id")
            .ok()
            .flatten()
            .is_some_and(|c| c != client_id)
        {
            return Err("client_id is another client's");
        }
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| "malformed assertion")?;
        if !matches!(
            header.alg,
            Algorithm::ES256 | Algorithm::PS256 | Algorithm::EdDSA
        ) {
            return Err("assertion algorithm not allowed");
        }
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(jwks.clone()).map_err(|_| "registered jwks unreadable")?;
        let jwk = match header.kid.as_deref() {
            Some(kid) => set.find(kid),
            None if set.keys.len() == 1 => set.keys.first(),
            None => None,
        }
        .ok_or("assertion signed by an unregistered key")?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| "registered key unusable")?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[client_id.as_str()]);
        let token_endpoint = format!("{}/token", self.issuer);
        v.set_audience(&[self.issuer.as_str(), token_endpoint.as_str()]);
        v.set_required_spec_claims(&["iss", "sub", "aud", "exp"]);
        v.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &v)
            .map_err(|_| "assertion signature, audience or expiry invalid")?
            .claims;
        if claims.sub != *client_id {
            return Err("assertion sub is not the client");
        }
        let mut seen = self
            .assertion_jtis
            .lock()
            .map_err(|_| "replay set poisoned")?;
        if seen.len() > 10_000 {
            seen.clear();
        }
        if !seen.insert(claims.jti) {
            return Err("assertion replayed");
        }
        Ok(())
    }

    // ---------------------------------------------------------------- /token

    async fn token(&self, req: Request<Incoming>) -> Response<Body> {
        let headers = req.headers().clone();
        let Some(form) = read_form(req).await else {
            return invalid_request("unreadable body").into_response();
        };
        if let Err(e) = self.authenticate_client(&headers, &form) {
            return e.into_response();
        }
        // RFC 9449 §5: a proof makes the access token DPoP-bound to its key.
        let jkt = match headers.get("dpop").map(|v| v.to_str()) {
            None => None,
            Some(Ok(proof)) => {
                let htu = format!("{}/token", self.issuer);
                match self.proofs.check(proof, "POST", &htu, None, now_unix()) {
                    Ok(jkt) => Some(jkt),
                    Err(why) => {
                        return OAuthError::new(StatusCode::BAD_REQUEST, "invalid_dpop_proof", why)
                            .into_response()
                    }
                }
            }
            Some(Err(_)) => {
                return OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_dpop_proof",
                    "unreadable DPoP header",
                )
                .into_response()
            }
        };
        let get = |name| single(&form, name);
        let result = match get("grant_type") {
            Err(e) => Err(invalid_request(&e)),
            Ok(Some("authorization_code")) => self.code_grant(&form, jkt.as_deref()),
            Ok(Some("refresh_token")) => self.refresh_grant(&form, jkt.as_deref()),
            Ok(Some(_)) => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "authorization_code or refresh_token",
            )),
            Ok(None) => Err(invalid_request("grant_type is missing")),
        };
        match result {
            Ok(body) => {
                let mut resp = json_response(StatusCode::OK, &body);
                resp.headers_mut()
                    .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
                resp
            }
            Err(e) => e.into_response(),
        }
    }

    fn code_grant(
        &self,
        form: &[(String, String)],
        jkt: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let get = |name| {
            single(form, name)
                .map_err(|e| invalid_request(&e))?
                .ok_or_else(|| invalid_request(&format!("{name} is missing")))
        };
        let (code, redirect_uri, verifier) =
            (get("code")?, get("redirect_uri")?, get("code_verifier")?);
        let mut st = self.lock();
        let Some(entry) = st.codes.get_mut(code) else {
            return Err(invalid_grant("unknown or expired code"));
        };
        if let Some(grant) = entry.redeemed_by.clone() {
            // RFC 6749 §4.1.2: a code used twice revokes what it was exchanged for.
            tracing::warn!("dev-idp: authorization code replayed; its grant is revoked");
            self.revoke_grant(&mut st, &grant);
            return Err(invalid_grant("code already used"));
        }
        if entry.req.redirect_uri != redirect_uri {
            return Err(invalid_grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        let digest = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        if !valid_pkce_string(verifier)
            || !constant_time_eq(digest.as_bytes(), entry.req.code_challenge.as_bytes())
        {
            return Err(invalid_grant("PKCE verification failed"));
        }
        if let Some(bound) = &entry.req.dpop_jkt {
            if jkt != Some(bound.as_str()) {
                return Err(invalid_grant(
                    "the code is bound to another DPoP key (dpop_jkt)",
                ));
            }
        }
        let grant_id = random_token();
        entry.redeemed_by = Some(grant_id.clone());
        let (req, session) = (entry.req.clone(), entry.session.clone());
        st.grants.insert(
            grant_id.clone(),
            Grant {
                sub: session.sub,
                sid: session.sid,
                auth_time: session.auth_time,
                scope: req.scope.clone(),
                access_jtis: Vec::new(),
                refresh_tokens: Vec::new(),
                revoked: false,
                expires_at: now_unix() + REFRESH_TTL,
            },
        );
        let body = self
            .issue_tokens(&mut st, &grant_id, Some(&req.nonce), &req.scope, jkt)
            .map_err(|e| OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e))?;
        tracing::info!("dev-idp: code exchanged for tokens");
        Ok(body)
    }

    fn refresh_grant(
        &self,
        form: &[(String, String)],
        jkt: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let token = single(form, "refresh_token")
            .map_err(|e| invalid_request(&e))?
            .ok_or_else(|| invalid_request("refresh_token is missing"))?;
        let requested = single(form, "scope").map_err(|e| invalid_request(&e))?;
        let mut st = self.lock();
        let Some(entry) = st.refresh.get(token) else {
            return Err(invalid_grant("unknown, revoked or expired refresh token"));
        };
        let grant_id = entry.grant.clone();
        if entry.rotated {
            tracing::warn!(
                "dev-idp: a rotated-out refresh token was used again; the whole grant is revoked"
            );
            self.revoke_grant(&mut st, &grant_id);
            return Err(invalid_grant("refresh token reused; grant revoked"));
        }
        let Some(grant) = st.grants.get(&grant_id).filter(|g| !g.revoked) else {
            return Err(invalid_grant("grant revoked"));
        };
        let scope = match requested {
            None => grant.scope.clone(),
            Some(r) => {
                let asked: Vec<String> = r
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if asked.iter().any(|s| !grant.scope.contains(s)) {
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_scope",
                        "a refresh cannot widen the scope",
                    ));
                }
                asked
            }
        };
        if let Some(e) = st.refresh.get_mut(token) {
            e.rotated = true;
        }
        let body = self
            .issue_tokens(&mut st, &grant_id, None, &scope, jkt)
            .map_err(|e| OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e))?;
        tracing::info!("dev-idp: tokens refreshed; refresh token rotated");
        Ok(body)
    }

    /// Signs an access token (bound to the DPoP key `jkt` when there is one) and an ID token
    /// and, with `offline_access`, mints a new refresh token for `grant_id`.
    fn issue_tokens(
        &self,
        st: &mut State,
        grant_id: &str,
        nonce: Option<&str>,
        scope: &[String],
        jkt: Option<&str>,
    ) -> Result<Value, String> {
        let grant = st.grants.get_mut(grant_id).ok_or("grant vanished")?;
        let now = now_unix();
        let ttl = i64::try_from(self.options.access_token_ttl.as_secs()).unwrap_or(60);
        let jti = random_token();
        let client_id = &self.options.client.client_id;
        let mut access_claims = json!({
            "iss": self.issuer, "sub": grant.sub, "aud": API_AUDIENCE, "client_id": client_id,
            "scope": scope.join(" "), "iat": now, "exp": now + ttl, "jti": jti,
            "auth_time": grant.auth_time, "acr": DEMO_ACR,
        });
        if let Some(jkt) = jkt {
            access_claims["cnf"] = json!({ "jkt": jkt });
        }
        let access_token = self.signer.sign("at+jwt", &access_claims)?;
        grant.access_jtis.push((jti, now + ttl));
        // OIDC Core 3.1.3.6: at_hash is the left half of SHA-256(access_token), base64url.
        let digest = sha2::Sha256::digest(access_token.as_bytes());
        let mut id_claims = json!({
            "iss": self.issuer, "sub": grant.sub, "aud": client_id, "iat": now,
            "exp": now + ID_TOKEN_TTL, "auth_time": grant.auth_time, "sid": grant.sid,
            "acr": DEMO_ACR, "amr": ["pwd"],
            "at_hash": URL_SAFE_NO_PAD.encode(&digest[..16]),
        });
        if let Some(n) = nonce {
            id_claims["nonce"] = json!(n);
        }
        if scope.iter().any(|s| s == "profile") {
            id_claims["name"] = json!("Alice Demo");
        }
        if scope.iter().any(|s| s == "email") {
            id_claims["email"] = json!("alice@demo.test");
            id_claims["email_verified"] = json!(true);
        }
        let id_token = self.signer.sign("JWT", &id_claims)?;
        let refresh_token = grant
            .scope
            .iter()
            .any(|s| s == "offline_access")
            .then(random_token);
        if let Some(rt) = &refresh_token {
            grant.refresh_tokens.push(rt.clone());
            st.refresh.insert(
                rt.clone(),
                RefreshEntry {
                    grant: grant_id.to_string(),
                    rotated: false,
                    expires_at: now + REFRESH_TTL,
                },
            );
        }
        for t in [Some(&access_token), Some(&id_token), refresh_token.as_ref()]
            .into_iter()
            .flatten()
        {
            st.record(t);
        }
        let mut body = json!({
            "access_token": access_token,
            "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
            "expires_in": ttl,
            "id_token": id_token,
            "scope": scope.join(" "),
        });
        if let Some(rt) = refresh_token {
            body["refresh_token"] = json!(rt);
        }
        Ok(body)
    }

    /// Ends a grant: its refresh tokens stop working and its access tokens are revoked.
    fn revoke_grant(&self, st: &mut State, grant_id: &str) {
        let Some(g) = st.grants.get_mut(grant_id) else {
            return;
        };
        g.revoked = true;
        let tokens = std::mem::take(&mut g.refresh_tokens);
        for (jti, exp) in std::mem::take(&mut g.access_jtis) {
            self.revoked.revoke(jti, exp);
        }
        for t in tokens {
            st.refresh.remove(&t);
        }
    }

    // ---------------------------------------------------------------- /revoke

    async fn revoke(&self, req: Request<Incoming>) -> Response<Body> {
        let headers = req.headers().clone();
        let Some(form) = read_form(req).await else {
            return invalid_request("unreadable body").into_response();
        };
        if let Err(e) = self.authenticate_client(&headers, &form) {
            return e.into_response();
        }
        let token = match single(&form, "token") {
            Err(e) => return invalid_request(&e).into_response(),
            Ok(None) => return invalid_request("token is missing").into_response(),
            Ok(Some(t)) => t,
        };
        // RFC 7009 §2.2: 200 whether or not the token was known (or already revoked).
        let mut st = self.lock();
        if let Some(grant) = st.refresh.get(token).map(|e| e.grant.clone()) {
            self.revoke_grant(&mut st, &grant);
            tracing::info!("dev-idp: refresh token revoked (and its grant)");
        } else if let Some(c) = self
            .signer
            .verify::<AccessClaims>(token, &self.issuer, false)
            .filter(|c| c.client_id == self.client().client_id)
        {
            self.revoked.revoke(c.jti, c.exp);
            tracing::info!("dev-idp: access token revoked");
        }
        let mut resp = Response::new(cloakroom::body::empty());
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    // ---------------------------------------------------------------- /end_session

    fn end_session(&self, headers: &HeaderMap, pairs: &[(String, String)]) -> Response<Body> {
        #[derive(Deserialize)]
        struct Hint {
            aud: Value,
            sid: Option<String>,
        }
        let get = |name| single(pairs, name);
        let (hint, redirect_to, client_id, state) = match (
            get("id_token_hint"),
            get("post_logout_redirect_uri"),
            get("client_id"),
            get("state"),
        ) {
            (Ok(h), Ok(r), Ok(c), Ok(s)) => (h, r, c, s),
            (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) => {
                return self.error_page(StatusCode::BAD_REQUEST, &e)
            }
        };
        let ours = self.client().client_id.as_str();
        let hint = match hint {
            None => None,
            // Expired hints are fine (OIDC RP-Initiated Logout §2); the signature is not optional.
            Some(h) => match self.signer.verify::<Hint>(h, &self.issuer, false) {
                Some(h) if h.aud == json!(ours) || h.aud == json!([ours]) => Some(h),
                _ => {
                    return self.error_page(
                        StatusCode::BAD_REQUEST,
                        "id_token_hint is not an ID token this IdP issued to this client.",
                    )
                }
            },
        };
        if client_id.is_some_and(|c| c != ours) {
            return self.error_page(StatusCode::BAD_REQUEST, "Unknown client_id.");
        }
        let identified = hint.is_some() || client_id.is_some();
        if let Some(r) = redirect_to {
            if !identified || r != self.client().post_logout_redirect_uri {
                return self.error_page(
                    StatusCode::BAD_REQUEST,
                    "post_logout_redirect_uri is not registered for this client.",
                );
            }
        }

        let mut st = self.lock();
        let mut ended = false;
        if let Some((cookie, s)) = self.current_session(&st, headers) {
            st.sessions.remove(&cookie);
            tracing::info!(sub = %s.sub, "dev-idp: IdP session ended (end_session)");
            ended = true;
        }
        if let Some(sid) = hint.and_then(|h| h.sid) {
            st.sessions.retain(|_, s| s.sid != sid);
        }
        drop(st);

        let mut resp = match redirect_to {
            Some(r) => match Url::parse(r) {
                Ok(mut url) => {
                    if let Some(s) = state {
                        url.query_pairs_mut().append_pair("state", s);
                    }
                    redirect(StatusCode::FOUND, url.as_str())
                }
                Err(_) => self.error_page(StatusCode::BAD_REQUEST, "Invalid redirect URI."),
            },
            None => self.page(
                StatusCode::OK,
                "Logged out",
                &format!(
                    "<h1>Logged out</h1><p>{} the {}.</p>",
                    if ended {
                        "You are logged out of"
                    } else {
                        "There was no session at"
                    },
                    escape_html(&self.options.name)
                ),
            ),
        };
        let mut c = cookie::Cookie::new(self.options.session_cookie.clone(), "");
        c.set_http_only(true);
        c.set_same_site(cookie::SameSite::Lax);
        c.set_path("/");
        c.set_max_age(cookie::time::Duration::ZERO);
        if let Ok(v) = HeaderValue::from_str(&c.to_string()) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> IdpOptions {
        IdpOptions::new(
            ClientRegistration {
                client_id: "c".into(),
                client_secret: Secret::new("s"),
                redirect_uri: "http://localhost:1/cb".into(),
                post_logout_redirect_uri: "http://localhost:1/".into(),
                jwks: None,
            },
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn refuses_to_bind_anything_but_loopback() {
        for addr in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0"] {
            let r = DevIdp::start(addr.parse().unwrap(), options()).await;
            assert!(matches!(r, Err(DemoError::NotLoopback(_))), "{addr}: {r:?}");
        }
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c%26d"), "a:b c&d");
        assert_eq!(form_decode("plain"), "plain");
    }

    #[test]
    fn pkce_strings_follow_rfc_7636() {
        assert!(valid_pkce_string(&"a".repeat(43)));
        assert!(!valid_pkce_string(&"a".repeat(42)));
        assert!(!valid_pkce_string(&format!("{}=", "a".repeat(43))));
    }
}

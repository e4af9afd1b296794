//! The OIDC relying party: discovery, authorization URL, code exchange, ID-token validation.
//!
//! Owns: the only HTTP client that talks to the IdP (redirects off, timeouts set) and every
//! `openidconnect` type; handlers never see them. Never logs a token, code or secret.

use crate::clock::Clock;
use crate::config::{ClientAuth, Config};
use crate::error::{Error, StartupError};
use crate::secret::Secret;
use crate::session::{now_unix, Tokens};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClient, CoreClientAuthMethod, CoreErrorResponseType, CoreGrantType, CoreIdToken,
    CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType, CoreTokenResponse,
};
use openidconnect::{
    AccessTokenHash, AdditionalProviderMetadata, AuthType, AuthorizationCode, ClientId,
    ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    RequestTokenError, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Provider metadata fields beyond what `openidconnect` models.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExtraMetadata {
    /// RP-initiated logout endpoint.
    pub end_session_endpoint: Option<Url>,
    /// RFC 7009 revocation endpoint.
    pub revocation_endpoint: Option<Url>,
    /// RFC 9207: the IdP puts `iss` in authorization responses.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Asymmetric algorithms we accept for ID tokens; never `none`, never HMAC.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 8] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

/// `(sub, sid, claims)` of a verified ID token.
type VerifiedIdToken = (
    String,
    Option<String>,
    serde_json::Map<String, serde_json::Value>,
);

enum VerifyError {
    UnknownKey(String),
    Invalid(String),
}

/// Why a refresh failed (SPEC §3).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// The grant is dead (`invalid_grant`): end the session.
    #[error("refresh refused: {0}")]
    Fatal(String),
    /// The IdP refused *us* (`invalid_client`, `unauthorized_client`: a client-secret rollover,
    /// a misconfiguration): keep the session, tell the operator loudly.
    #[error("client refused by the IdP: {0}")]
    ClientRejected(String),
    /// Unreachable, timed out, 5xx, unreadable: try again after the cool-off; keep the session.
    #[error("refresh unavailable: {0}")]
    Transient(String),
}

/// A token response from a refresh grant, not yet checked (see [`OidcClient::finish_refresh`]).
#[derive(Debug)]
pub struct RefreshResponse(CoreTokenResponse);

/// The checked content of a back-channel logout token.
#[derive(Debug, Clone)]
pub struct LogoutClaims {
    /// Subject, if given.
    pub sub: Option<String>,
    /// IdP session id, if given.
    pub sid: Option<String>,
    /// Token id, for replay detection.
    pub jti: String,
}

#[derive(Debug, Deserialize)]
struct LogoutClaimsRaw {
    iat: i64,
    jti: Option<String>,
    sub: Option<String>,
    sid: Option<String>,
    nonce: Option<serde_json::Value>,
    events: Option<serde_json::Map<String, serde_json::Value>>,
}

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Logout tokens older than this (plus skew) are refused; their `jti`s are remembered as long.
pub const LOGOUT_TOKEN_MAX_AGE: i64 = 300;

const LOGOUT_ALGS: [jsonwebtoken::Algorithm; 8] = [
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::RS384,
    jsonwebtoken::Algorithm::RS512,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::PS384,
    jsonwebtoken::Algorithm::PS512,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
];

/// The IdP's signing keys, in both forms we verify with, re-fetched (at most once per
/// [`JWKS_REFETCH_INTERVAL`]) when a token names a key we don't know.
struct Jwks {
    uri: Url,
    http: reqwest::Client,
    current: std::sync::RwLock<Arc<KeySet>>,
    /// Last re-fetch for a token that came from the IdP's token endpoint.
    last_refetch: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Last re-fetch for a token anyone could have sent (back-channel logout): its own, smaller
    /// budget, so random `kid`s cannot keep the refetch window busy for real ID tokens.
    last_anonymous_refetch: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// Who asks for a JWKS re-fetch, and so which budget it spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// A token from the IdP's own token endpoint.
    Idp,
    /// A token an unauthenticated caller posted.
    Anonymous,
}

struct KeySet {
    oidc: CoreJsonWebKeySet,
    jwt: Vec<jsonwebtoken::jwk::Jwk>,
}

/// Minimum time between two JWKS re-fetches triggered by unknown key ids.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// The same for tokens from unauthenticated callers (back-channel logout).
pub const JWKS_ANONYMOUS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

impl KeySet {
    fn from_oidc(oidc: CoreJsonWebKeySet) -> Self {
        let jwt = serde_json::to_value(&oidc)
            .ok()
            .and_then(|v| v.get("keys").and_then(|k| k.as_array()).cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|k| serde_json::from_value(k).ok())
            .collect();
        Self { oidc, jwt }
    }
}

impl Jwks {
    fn new(uri: Url, http: reqwest::Client, keys: CoreJsonWebKeySet) -> Self {
        Self {
            uri,
            http,
            current: std::sync::RwLock::new(Arc::new(KeySet::from_oidc(keys))),
            last_refetch: tokio::sync::Mutex::new(None),
            last_anonymous_refetch: tokio::sync::Mutex::new(None),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-fetches the JWKS unless `budget`'s last one was within its interval. True if keys
    /// other than `seen` (the set the caller failed with) are now current — fetched now, or
    /// by another task meanwhile — so the caller tries once more.
    async fn refetch(&self, seen: &Arc<KeySet>, budget: Budget) -> bool {
        let (mut last, interval) = match budget {
            Budget::Idp => (self.last_refetch.lock().await, JWKS_REFETCH_INTERVAL),
            Budget::Anonymous => (
                self.last_anonymous_refetch.lock().await,
                JWKS_ANONYMOUS_REFETCH_INTERVAL,
            ),
        };
        if !Arc::ptr_eq(&self.current(), seen) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < interval) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        crate::metrics::jwks_refetch();
        let fetched = async {
            let req = http::Request::get(self.uri.as_str())
                .body(Vec::new())
                .ok()?;
            let resp = idp_call(self.http.clone(), req).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            serde_json::from_slice::<CoreJsonWebKeySet>(resp.body()).ok()
        }
        .await;
        match fetched {
            Some(keys) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Arc::new(KeySet::from_oidc(keys));
                tracing::info!("JWKS re-fetched after an unknown key id");
                true
            }
            None => {
                tracing::warn!("JWKS re-fetch failed");
                false
            }
        }
    }
}

/// A fresh authorization request: the URL to redirect to and the secrets to keep.
#[derive(Debug)]
pub struct AuthRequest {
    /// Where the browser goes.
    pub url: Url,
    /// `state` (also the pending-login key).
    pub state: Secret,
    /// `nonce`.
    pub nonce: Secret,
    /// PKCE verifier.
    pub pkce_verifier: Secret,
}

/// The outcome of a successful code exchange.
#[derive(Debug)]
pub struct LoginResult {
    /// Subject.
    pub sub: String,
    /// `sid` claim.
    pub sid: Option<String>,
    /// ID-token claims minus `nonce`, `at_hash`, `c_hash`.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Tokens.
    pub tokens: Tokens,
}

/// The relying party, built once at start-up.
pub struct OidcClient {
    client: Client,
    jwks: Jwks,
    http: reqwest::Client,
    end_session: Option<Url>,
    revocation: Option<Url>,
    issuer: String,
    client_id: String,
    scopes: Vec<String>,
    extra_params: Vec<(String, String)>,
    post_logout_redirect_uri: Url,
    clock_skew: Duration,
    promises_iss: bool,
    client_auth: ClientAuth,
    client_secret: Secret,
    timeout: Duration,
    clock: Clock,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The largest IdP response we read (discovery, JWKS, token responses). Anything bigger is an
/// error, not an allocation.
pub const MAX_IDP_RESPONSE: usize = 256 * 1024;

/// Why an IdP HTTP call failed (transport, or a response over [`MAX_IDP_RESPONSE`]).
#[derive(Debug, thiserror::Error)]
pub enum IdpHttpError {
    /// Connect, TLS, timeout, protocol.
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    /// The body was larger than [`MAX_IDP_RESPONSE`].
    #[error("response larger than {MAX_IDP_RESPONSE} bytes")]
    TooLarge,
    /// The response could not be represented.
    #[error("malformed response")]
    Malformed,
}

/// One IdP call for `openidconnect`: reqwest underneath, the body read with a size bound.
async fn idp_call(
    http: reqwest::Client,
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, IdpHttpError> {
    idp_call_within(http, req, None).await
}

/// As [`idp_call`], with a timeout of its own instead of the client's.
async fn idp_call_within(
    http: reqwest::Client,
    req: openidconnect::HttpRequest,
    timeout: Option<Duration>,
) -> Result<openidconnect::HttpResponse, IdpHttpError> {
    let (parts, body) = req.into_parts();
    let mut builder = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body);
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    let mut resp = builder.send().await?;
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_IDP_RESPONSE as u64)
    {
        return Err(IdpHttpError::TooLarge);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > MAX_IDP_RESPONSE {
            return Err(IdpHttpError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    let mut out = http::Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    out.body(buf).map_err(|_| IdpHttpError::Malformed)
}

/// The IdP HTTP client: no redirects (openidconnect's SSRF advice), bounded timeouts.
///
/// # Errors
/// If the TLS backend cannot initialise.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("cloakroom/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl OidcClient {
    /// Discovers the provider (metadata + JWKS) and builds the client.
    ///
    /// # Errors
    /// [`StartupError::Discovery`] when the IdP cannot be reached or its metadata is unusable.
    pub async fn discover(config: &Config) -> Result<Self, StartupError> {
        let fail = |reason: String| StartupError::Discovery {
            issuer: config.oidc.issuer.to_string(),
            reason,
        };
        let http = http_client(config.oidc.timeout).map_err(|e| fail(e.to_string()))?;
        // Exactly as configured: an issuer with a trailing slash (Auth0) keeps it, one without
        // gets none (OIDC Discovery §4.3 compares them as strings).
        let issuer_str = config.oidc.issuer_id.clone();
        let issuer = IssuerUrl::new(issuer_str.clone()).map_err(|e| fail(e.to_string()))?;
        let bounded = {
            let http = http.clone();
            move |r| idp_call(http.clone(), r)
        };
        let metadata = Metadata::discover_async(issuer, &bounded)
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        let extra = metadata.additional_metadata().clone();
        let jwks = Jwks::new(
            metadata.jwks_uri().url().clone(),
            http.clone(),
            metadata.jwks().clone(),
        );
        let redirect = config
            .server
            .public_url
            .join(&format!("{}/callback", config.server.auth_prefix))
            .map_err(|e| fail(e.to_string()))?;
        let redirect = RedirectUrl::from_url(redirect);
        let client: Client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.oidc.client_id.clone()),
            Some(ClientSecret::new(
                config.oidc.client_secret.expose().to_string(),
            )),
        )
        .set_redirect_uri(redirect)
        .set_auth_type(match config.oidc.client_auth {
            ClientAuth::Basic => AuthType::BasicAuth,
            ClientAuth::Post => AuthType::RequestBody,
        });
        Ok(Self {
            client,
            jwks,
            http,
            end_session: extra.end_session_endpoint,
            revocation: extra.revocation_endpoint,
            issuer: issuer_str,
            client_id: config.oidc.client_id.clone(),
            scopes: config.oidc.scopes.clone(),
            extra_params: config
                .oidc
                .extra_auth_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            post_logout_redirect_uri: config.oidc.post_logout_redirect_uri.clone(),
            clock_skew: config.oidc.clock_skew,
            promises_iss: extra.authorization_response_iss_parameter_supported,
            client_auth: config.oidc.client_auth,
            client_secret: config.oidc.client_secret.clone(),
            timeout: config.oidc.timeout,
            clock: Clock::system(),
        })
    }

    /// Times token lifetimes with `clock` (tests advance it).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The issuer.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The revocation endpoint, if the IdP has one.
    #[must_use]
    pub fn revocation_endpoint(&self) -> Option<&Url> {
        self.revocation.as_ref()
    }

    /// The IdP client as `openidconnect` calls it: responses bounded by [`MAX_IDP_RESPONSE`].
    fn bounded(
        &self,
    ) -> impl Fn(
        openidconnect::HttpRequest,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<openidconnect::HttpResponse, IdpHttpError>>
                + Send,
        >,
    > {
        self.bounded_with(None)
    }

    /// As [`Self::bounded`], each call given `timeout` (when set) instead of `oidc.timeout`.
    fn bounded_with(
        &self,
        timeout: Option<Duration>,
    ) -> impl Fn(
        openidconnect::HttpRequest,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<openidconnect::HttpResponse, IdpHttpError>>
                + Send,
        >,
    > {
        let http = self.http.clone();
        move |r| Box::pin(idp_call_within(http.clone(), r, timeout))
    }

    /// The shared IdP HTTP client.
    #[must_use]
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A new authorization request with fresh `state`, `nonce` and PKCE S256 challenge.
    #[must_use]
    pub fn authorize(&self, prompt_none: bool) -> AuthRequest {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = crate::crypto::random_token();
        let nonce = crate::crypto::random_token();
        let (st, no) = (state.clone(), nonce.clone());
        let mut req = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(st),
                move || Nonce::new(no),
            )
            .set_pkce_challenge(challenge);
        for s in &self.scopes {
            if s != "openid" {
                req = req.add_scope(Scope::new(s.clone()));
            }
        }
        if prompt_none {
            req = req.add_prompt(CoreAuthPrompt::None);
        }
        for (k, v) in &self.extra_params {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let (url, _, _) = req.url();
        AuthRequest {
            url,
            state: Secret::new(state),
            nonce: Secret::new(nonce),
            pkce_verifier: Secret::new(verifier.into_secret()),
        }
    }

    /// Exchanges a code and validates the ID token (OIDC Core 3.1.3.7).
    ///
    /// # Errors
    /// [`Error::TokenExchange`] when the IdP refuses or is unreachable;
    /// [`Error::InvalidIdToken`] when the ID token fails any check.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &Secret,
        nonce: &Secret,
    ) -> Result<LoginResult, Error> {
        let resp: CoreTokenResponse = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| Error::TokenExchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose().to_string()))
            .request_async(&self.bounded())
            .await
            .map_err(|e| {
                // A token response whose only fault is an ID token that does not even parse as
                // one (e.g. no `sub`) is an invalid ID token, not a failed exchange.
                if let RequestTokenError::Parse(_, body) = &e {
                    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
                    let shaped = v.as_ref().is_some_and(|v| {
                        v.get("access_token")
                            .is_some_and(serde_json::Value::is_string)
                            && v.get("id_token").is_some_and(serde_json::Value::is_string)
                    });
                    if shaped {
                        return Error::InvalidIdToken("the ID token does not parse".into());
                    }
                }
                Error::TokenExchange(describe_token_error(&e))
            })?;
        let id_token = resp
            .id_token()
            .ok_or_else(|| Error::InvalidIdToken("no id_token in the token response".into()))?;
        let (sub, sid, claims) = self
            .verify_id_token(id_token, resp.access_token(), Some(nonce))
            .await?;
        Ok(LoginResult {
            sub,
            sid,
            claims,
            tokens: self.tokens_from(&resp, id_token.to_string(), None),
        })
    }

    fn id_token_verifier(
        &self,
        keys: CoreJsonWebKeySet,
    ) -> openidconnect::core::CoreIdTokenVerifier<'static> {
        let skew = self.clock_skew;
        openidconnect::core::CoreIdTokenVerifier::new_confidential_client(
            ClientId::new(self.client_id.clone()),
            ClientSecret::new(self.client_secret.expose().to_string()),
            IssuerUrl::new(self.issuer.clone())
                .unwrap_or_else(|_| unreachable!("validated at discovery")),
            keys,
        )
        .set_allowed_algs(ALLOWED_ALGS)
        .set_issue_time_verifier_fn(move |iat| {
            let now = now_unix();
            let skew = i64::try_from(skew.as_secs()).unwrap_or(60);
            let iat = iat.timestamp();
            if iat > now + skew {
                Err(format!("issued {}s in the future", iat - now))
            } else if iat < now - 600 - skew {
                Err("issued too long ago".into())
            } else {
                Ok(())
            }
        })
    }

    /// Verifies an ID token (OIDC Core 3.1.3.7). `nonce: None` is the refresh case (OIDC Core
    /// 12.2), where no nonce is expected. A `kid` we don't know triggers one rate-limited JWKS
    /// re-fetch (key rotation at the IdP).
    async fn verify_id_token(
        &self,
        id_token: &CoreIdToken,
        access_token: &openidconnect::AccessToken,
        nonce: Option<&Secret>,
    ) -> Result<VerifiedIdToken, Error> {
        let mut refetched = false;
        loop {
            let keys = self.jwks.current();
            match self.verify_with(&keys.oidc, id_token, access_token, nonce) {
                Err(VerifyError::UnknownKey(e)) if !refetched => {
                    refetched = true;
                    if !self.jwks.refetch(&keys, Budget::Idp).await {
                        return Err(Error::InvalidIdToken(e));
                    }
                }
                Err(VerifyError::UnknownKey(e) | VerifyError::Invalid(e)) => {
                    return Err(Error::InvalidIdToken(e))
                }
                Ok(v) => return Ok(v),
            }
        }
    }

    fn verify_with(
        &self,
        keys: &CoreJsonWebKeySet,
        id_token: &CoreIdToken,
        access_token: &openidconnect::AccessToken,
        nonce: Option<&Secret>,
    ) -> Result<VerifiedIdToken, VerifyError> {
        let verifier = self.id_token_verifier(keys.clone());
        let claims = match nonce {
            Some(n) => id_token.claims(&verifier, &Nonce::new(n.expose().to_string())),
            None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(|e| match e {
            openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            ) => VerifyError::UnknownKey(e.to_string()),
            other => VerifyError::Invalid(other.to_string()),
        })?;
        let invalid = |e: &dyn std::fmt::Display| VerifyError::Invalid(e.to_string());
        // OIDC Core 3.1.3.7 (4, 5): `azp`, when present, must be our client id.
        if let Some(azp) = claims.authorized_party() {
            if azp.as_str() != self.client_id {
                return Err(VerifyError::Invalid("azp is not this client".into()));
            }
        }
        // at_hash, when present, binds the access token to this ID token (3.1.3.8).
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token.signing_alg().map_err(|e| invalid(&e))?;
            let key = id_token.signing_key(&verifier).map_err(|e| invalid(&e))?;
            let actual =
                AccessTokenHash::from_token(access_token, alg, key).map_err(|e| invalid(&e))?;
            if actual != *expected {
                return Err(VerifyError::Invalid("at_hash does not match".into()));
            }
        }
        let sub = claims.subject().to_string();
        if sub.is_empty() {
            return Err(VerifyError::Invalid("empty sub".into()));
        }
        // The signature is verified: now read every claim, including non-standard ones.
        let raw = id_token.to_string();
        let mut map = raw
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Map<_, _>>(&b).ok())
            .ok_or_else(|| VerifyError::Invalid("unreadable payload".into()))?;
        for k in ["nonce", "at_hash", "c_hash"] {
            map.remove(k);
        }
        let sid = map.get("sid").and_then(|v| v.as_str()).map(String::from);
        Ok((sub, sid, map))
    }

    /// The refresh grant itself (RFC 6749 §6): one HTTP call to the token endpoint, bounded by
    /// [`refresh_timeout`] — twice `oidc.timeout`: the call runs detached from every browser
    /// request (only requests whose token has expired wait, and those at most
    /// `session.refresh_wait`), and a refresh given up on while the IdP is still working on it
    /// may be answered — and its refresh token rotated — after we stopped listening. Nothing
    /// else is inside that bound, so a slow JWKS re-fetch can never make an answered refresh
    /// look like a failed one.
    ///
    /// # Errors
    /// [`RefreshError`], classified (SPEC §3).
    pub async fn refresh_grant(&self, current: &Tokens) -> Result<RefreshResponse, RefreshError> {
        let Some(rt) = &current.refresh_token else {
            return Err(RefreshError::Fatal("no refresh token".into()));
        };
        let rt_oauth = openidconnect::RefreshToken::new(rt.expose().to_string());
        let request = self
            .client
            .exchange_refresh_token(&rt_oauth)
            .map_err(|e| RefreshError::Transient(e.to_string()))?;
        let within = refresh_timeout(self.timeout);
        let http = self.bounded_with(Some(within));
        let call = request.request_async(&http);
        let outcome = tokio::time::timeout(within + Duration::from_millis(250), call)
            .await
            .map_err(|_| {
                RefreshError::Transient(
                    "IdP call timed out (if the IdP still answers and rotates the refresh token, the next refresh is refused)".into(),
                )
            })?;
        match outcome {
            Ok(r) => Ok(RefreshResponse(r)),
            Err(e) => {
                let why = describe_token_error(&e);
                Err(match classify(&e) {
                    FailureKind::Fatal => RefreshError::Fatal(why),
                    FailureKind::ClientRejected => RefreshError::ClientRejected(why),
                    FailureKind::Transient => RefreshError::Transient(why),
                })
            }
        }
    }

    /// The tokens after a refresh grant answered: a rotated refresh token replaces the old
    /// one, without one the old one is kept. A new ID token must verify and name the same
    /// subject (OIDC Core 12.2); one that does not verify is dropped (the old one is kept).
    ///
    /// # Errors
    /// [`RefreshError::Fatal`] when the new ID token names another subject.
    pub async fn finish_refresh(
        &self,
        resp: &RefreshResponse,
        current: &Tokens,
        sub: &str,
    ) -> Result<Tokens, RefreshError> {
        let resp = &resp.0;
        let mut id_token = current.id_token.clone();
        if let Some(new_id) = resp.id_token() {
            match self
                .verify_id_token(new_id, resp.access_token(), None)
                .await
            {
                Ok((new_sub, _, _)) if new_sub == sub => id_token = Secret::new(new_id.to_string()),
                Ok(_) => {
                    return Err(RefreshError::Fatal(
                        "refreshed ID token names another subject".into(),
                    ))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refreshed ID token did not verify; keeping the old one")
                }
            }
        }
        Ok(self.tokens_from(
            resp,
            id_token.expose().to_string(),
            current.refresh_token.clone(),
        ))
    }

    /// The tokens of a refresh response without any check, for revoking them when they cannot
    /// be kept (the session ended while the refresh ran).
    #[must_use]
    pub fn unchecked_tokens(&self, resp: &RefreshResponse, current: &Tokens) -> Tokens {
        self.tokens_from(
            &resp.0,
            current.id_token.expose().to_string(),
            current.refresh_token.clone(),
        )
    }

    /// Validates a back-channel logout token (OIDC Back-Channel Logout 1.0 §2.6): signature by a
    /// JWKS key (asymmetric only; an unknown `kid` triggers one rate-limited re-fetch), `iss`,
    /// `aud`, `iat` (bounded age), `exp` if present, the logout `events` claim, `sid` and/or
    /// `sub`, no `nonce`, and a `jti` (replay is checked by the caller against the store).
    ///
    /// # Errors
    /// A short reason, never echoing the token.
    pub async fn validate_logout_token(&self, token: &str) -> Result<LogoutClaims, String> {
        if token.len() > 16 * 1024 {
            return Err("token too large".into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        if !LOGOUT_ALGS.contains(&header.alg) {
            return Err(format!("algorithm {:?} not allowed", header.alg));
        }
        let mut refetched = false;
        let key = loop {
            let keys = self.jwks.current();
            let found = keys
                .jwt
                .iter()
                .find(|k| match (&header.kid, &k.common.key_id) {
                    (Some(want), Some(have)) => want == have,
                    (None, _) => keys.jwt.len() == 1,
                    _ => false,
                });
            if let Some(k) = found {
                break jsonwebtoken::DecodingKey::from_jwk(k).map_err(|e| format!("key: {e}"))?;
            }
            if refetched || !self.jwks.refetch(&keys, Budget::Anonymous).await {
                return Err("unknown key id".into());
            }
            refetched = true;
        };
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_issuer(&[self.issuer.as_str()]);
        v.set_audience(&[self.client_id.as_str()]);
        v.set_required_spec_claims(&["iss", "aud", "iat"]);
        v.leeway = self.clock_skew.as_secs();
        let data = jsonwebtoken::decode::<LogoutClaimsRaw>(token, &key, &v)
            .map_err(|e| format!("{:?}", e.kind()))?;
        let c = data.claims;
        let now = now_unix();
        let skew = i64::try_from(self.clock_skew.as_secs()).unwrap_or(60);
        if c.iat > now + skew {
            return Err("iat in the future".into());
        }
        if c.iat < now - LOGOUT_TOKEN_MAX_AGE - skew {
            return Err("iat too old".into());
        }
        if c.nonce.is_some() {
            return Err("nonce present".into());
        }
        let events_ok = c
            .events
            .as_ref()
            .and_then(|e| e.get(BACKCHANNEL_EVENT))
            .is_some_and(serde_json::Value::is_object);
        if !events_ok {
            return Err("missing back-channel logout event".into());
        }
        let jti = c.jti.filter(|j| !j.is_empty()).ok_or("missing jti")?;
        if c.sid.is_none() && c.sub.is_none() {
            return Err("neither sid nor sub".into());
        }
        Ok(LogoutClaims {
            sub: c.sub,
            sid: c.sid,
            jti,
        })
    }

    /// The RP-initiated logout URL (OIDC RP-Initiated Logout 1.0 §2), if the IdP has one.
    #[must_use]
    pub fn end_session_url(&self, id_token_hint: Option<&Secret>) -> Option<Url> {
        let mut url = self.end_session.clone()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(h) = id_token_hint {
                q.append_pair("id_token_hint", h.expose());
            }
            q.append_pair(
                "post_logout_redirect_uri",
                self.post_logout_redirect_uri.as_str(),
            );
            q.append_pair("client_id", &self.client_id);
        }
        Some(url)
    }
}

impl OidcClient {
    /// Tokens from a token response, with the access token's lifetime recorded: `expires_in`,
    /// else the JWT's `exp − iat` (read, not verified: it only times the refresh).
    fn tokens_from(
        &self,
        resp: &CoreTokenResponse,
        id_token: String,
        old_refresh: Option<Secret>,
    ) -> Tokens {
        let access = resp.access_token().secret();
        let lifetime = resp
            .expires_in()
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4))
            .or_else(|| jwt_lifetime(access));
        Tokens {
            access_token: Secret::new(access.clone()),
            access_expires_at: lifetime.map(|l| self.clock.unix().saturating_add(l)),
            access_lifetime: lifetime,
            refresh_token: resp
                .refresh_token()
                .map(|r| Secret::new(r.secret().clone()))
                .or(old_refresh),
            id_token: Secret::new(id_token),
        }
    }
}

/// `exp − iat` of a JWT access token, if it is one and says both.
fn jwt_lifetime(token: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Times {
        exp: i64,
        iat: i64,
    }
    let payload = token.split('.').nth(1)?;
    let t: Times = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    (t.exp > t.iat).then_some(t.exp - t.iat)
}

/// How long a refresh grant may take: twice `oidc.timeout` (see [`OidcClient::refresh_grant`]).
#[must_use]
pub fn refresh_timeout(oidc_timeout: Duration) -> Duration {
    oidc_timeout * 2
}

/// What a token-endpoint failure means for the session (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// `invalid_grant`: the grant is dead, end the session.
    Fatal,
    /// `invalid_client`, `unauthorized_client`: our credentials are refused (a secret rollover
    /// at the IdP); the user's grant may be fine. Keep the session.
    ClientRejected,
    /// Network, timeout, 5xx, anything else: try again later.
    Transient,
}

fn describe_token_error<RE: std::error::Error + 'static>(
    e: &RequestTokenError<RE, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => format!("IdP answered {}", r.error().as_ref()),
        RequestTokenError::Request(inner) => format!("request failed: {}", error_chain(inner)),
        RequestTokenError::Parse(p, _) => format!("unreadable response: {p}"),
        RequestTokenError::Other(o) => format!("unexpected response: {o}"),
    }
}

/// Classifies a token-endpoint failure (SPEC §3).
#[must_use]
pub fn classify<RE: std::error::Error + 'static>(
    e: &RequestTokenError<RE, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
) -> FailureKind {
    match e {
        RequestTokenError::ServerResponse(r) => match r.error() {
            CoreErrorResponseType::InvalidGrant => FailureKind::Fatal,
            CoreErrorResponseType::InvalidClient | CoreErrorResponseType::UnauthorizedClient => {
                FailureKind::ClientRejected
            }
            _ => FailureKind::Transient,
        },
        _ => FailureKind::Transient,
    }
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

impl OidcClient {
    /// RFC 9207: whether the IdP promises `iss` in authorization responses.
    #[must_use]
    pub fn promises_iss(&self) -> bool {
        self.promises_iss
    }

    /// Revokes the refresh token, then the access token (RFC 7009 §2.1), if the IdP has a
    /// revocation endpoint. Failures are logged and counted, never returned: logout goes on.
    pub async fn revoke_tokens(&self, tokens: &Tokens) {
        let Some(endpoint) = &self.revocation else {
            return;
        };
        let mut list: Vec<(&Secret, &str)> = Vec::with_capacity(2);
        if let Some(rt) = &tokens.refresh_token {
            list.push((rt, "refresh_token"));
        }
        list.push((&tokens.access_token, "access_token"));
        for (token, hint) in list {
            if let Err(reason) = self.revoke_one(endpoint, token, hint).await {
                crate::metrics::revocation_failed();
                tracing::warn!(event = "revocation_failed", token_type = hint, %reason, "token revocation failed");
            }
        }
    }

    async fn revoke_one(&self, endpoint: &Url, token: &Secret, hint: &str) -> Result<(), String> {
        let mut form: Vec<(&str, &str)> =
            vec![("token", token.expose()), ("token_type_hint", hint)];
        let mut req = self.http.post(endpoint.clone());
        match self.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: form-urlencode id and secret before Basic.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.client_id), Some(enc(self.client_secret.expose())));
            }
            ClientAuth::Post => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", self.client_secret.expose()));
            }
        }
        let resp = req.form(&form).send().await.map_err(|e| error_chain(&e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("IdP answered {}", resp.status()))
        }
    }
}

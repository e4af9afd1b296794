//! The OIDC relying party: discovery, the bounded HTTP adapter, authorization URL, code
//! exchange and the refresh grant. The rest lives in submodules: `jwks` (the key cache and
//! its re-fetch budgets), `id_token` (ID-token verification), `logout_token` (back-channel
//! logout tokens), `revocation` (RFC 7009 revocation and the end-session URL) and `errors`
//! (failure classification).
//!
//! Owns: the only HTTP client that talks to the IdP (redirects off, timeouts set) and every
//! `openidconnect` type; handlers never see them. Never logs a token, code or secret.
//!
//! `openidconnect` does the protocol work: discovery, the authorization URL (pushed to the
//! IdP first with PAR, RFC 9126, which `openidconnect` does not do: `OidcClient::push`), the code and
//! refresh grants, ID-token parsing and verification (typed claims), and the end-session URL.
//! Hand-written, each for a reason given where it lives: revocation (`revocation`), logout
//! tokens with `jsonwebtoken` (`logout_token`), reading one JWKS into both key types (`jwks`),
//! and `jwt_lifetime`'s read of a JWT access token's `exp − iat`, which only times the
//! refresh (to `openidconnect` an access token is an opaque string).

mod client_auth;
pub mod dpop;
mod errors;
pub mod grants;
mod id_token;
mod jwks;
mod logout_token;
mod mtls;
mod providers;
mod report;
mod revocation;

use crate::error::error_chain;
pub use client_auth::{ClientKey, Credentials, KeyKind, ASSERTION_TYPE};
pub use dpop::DpopKey;
pub use errors::{classify, FailureKind, RefreshError};
pub use jwks::{JWKS_ANONYMOUS_REFETCH_INTERVAL, JWKS_REFETCH_INTERVAL};
pub use logout_token::{LogoutClaims, LOGOUT_TOKEN_MAX_AGE};
pub use mtls::ClientCert;
pub use providers::{Binding, Providers};
pub use report::{capability_report, ReportLine};

use errors::describe_token_error;
use jwks::{Jwks, Recorded};

use crate::clock::Clock;
use crate::config::{AssertionAudience, ClientAuth, Config, OidcConfig, Par, Profile};
use crate::error::{Error, StartupError};
use crate::secret::Secret;
use crate::session::Tokens;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse, CoreSubjectIdentifierType,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndSessionUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    LogoutProviderMetadata, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadata, RedirectUrl, RequestTokenError, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use url::Url;

/// Provider metadata fields beyond what `openidconnect` models (`end_session_endpoint` is
/// in its [`LogoutProviderMetadata`], which wraps these).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ExtraMetadata {
    /// RFC 7009 revocation endpoint.
    pub revocation_endpoint: Option<Url>,
    /// RFC 9207: the IdP puts `iss` in authorization responses.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// RFC 9126: where authorization requests are pushed.
    pub pushed_authorization_request_endpoint: Option<Url>,
    /// RFC 9126 §5: the IdP takes authorization requests only through PAR.
    #[serde(default)]
    pub require_pushed_authorization_requests: bool,
    /// RFC 9449 §5.1: the algorithms the IdP accepts in DPoP proofs.
    pub dpop_signing_alg_values_supported: Option<Vec<String>>,
    /// RFC 8414: the PKCE methods the IdP supports.
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// RFC 8705 §5: where the calls that present a client certificate go.
    pub mtls_endpoint_aliases: Option<MtlsAliases>,
    /// RFC 8705 §3.3: the IdP binds access tokens to client certificates.
    #[serde(default)]
    pub tls_client_certificate_bound_access_tokens: bool,
}

/// RFC 8705 §5 `mtls_endpoint_aliases`: the endpoints Cloakroom calls with its certificate.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct MtlsAliases {
    /// The token endpoint.
    pub token_endpoint: Option<Url>,
    /// The revocation endpoint.
    pub revocation_endpoint: Option<Url>,
    /// The PAR endpoint.
    pub pushed_authorization_request_endpoint: Option<Url>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    LogoutProviderMetadata<ExtraMetadata>,
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

/// A token response whose ID token carries our [`id_token::ExtraClaims`].
type IdpTokenResponse = StandardTokenResponse<id_token::IdTokenFields, CoreTokenType>;

/// `CoreClient`, but with our [`id_token::ExtraClaims`] in ID tokens.
type Client = openidconnect::Client<
    id_token::ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    IdpTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointMaybeSet,
>;

/// A token response from a refresh grant, not yet checked (see [`OidcClient::finish_refresh`]).
#[derive(Debug)]
pub struct RefreshResponse(IdpTokenResponse);

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
    /// The login's DPoP key (`oidc.dpop`), its thumbprint sent as `dpop_jkt`.
    pub dpop: Option<DpopKey>,
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
    /// The refresh token's lifetime in seconds, if the IdP said (`refresh_expires_in`).
    pub refresh_expires_in: Option<i64>,
}

/// Claims the userinfo endpoint is never allowed to supply (`OidcClient::merge_userinfo`):
/// the ID token's own validity and audience (`iss`, `aud`, `exp`, `iat`, `nbf`, `jti`, `nonce`,
/// `azp`, the hashes), what the login reached (`acr`, `amr`, `auth_time`: step-up decisions
/// read them), the IdP session (`sid`: back-channel logout and the same-grant rule read it),
/// the token binding (`cnf`), and the JWT machinery of other specs (`act`, `may_act`, `events`,
/// aggregated and distributed claims). `sub` must match and is the ID token's.
pub const PROTOCOL_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "nonce",
    "azp",
    "at_hash",
    "c_hash",
    "s_hash",
    "auth_time",
    "acr",
    "amr",
    "sid",
    "cnf",
    "act",
    "may_act",
    "events",
    "_claim_names",
    "_claim_sources",
];

/// The relying party, built once at start-up.
pub struct OidcClient {
    /// The provider's name (`oidc.name`, `[[oidc.providers]] name`).
    name: String,
    client: Client,
    jwks: Jwks,
    http: reqwest::Client,
    end_session: Option<EndSessionUrl>,
    revocation: Option<Url>,
    /// The PAR endpoint when authorization requests are pushed (`oidc.par` and discovery).
    par: Option<Url>,
    issuer: String,
    client_id: String,
    scopes: Vec<String>,
    extra_params: Vec<(String, String)>,
    post_logout_redirect_uri: Url,
    clock_skew: Duration,
    promises_iss: bool,
    /// Its logins come back to `<auth_prefix>/callback/<name>` (`callback = "own"`), not to
    /// the shared `<auth_prefix>/callback`.
    own_callback: bool,
    /// `oidc.dpop`: a DPoP key per login, proofs at the token endpoint.
    dpop: bool,
    /// `oidc.profile = "fapi2"`: ID tokens signed with PS256, ES256 or EdDSA only.
    fapi2: bool,
    /// With a client certificate: its `x5t#S256`, and whether the IdP's mTLS aliases are used.
    mtls: Option<(String, bool)>,
    /// The IdP's last `DPoP-Nonce`s.
    nonces: dpop::Nonces,
    credentials: Credentials,
    timeout: Duration,
    clock: Clock,
    /// Resources asked for at login (see [`OidcClient::with_login_resources`]).
    login_resources: Vec<String>,
    /// `oidc.userinfo`.
    userinfo: bool,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("name", &self.name)
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
    send_bounded(builder).await
}

/// Sends one request to the IdP and reads the response, the body bounded by
/// [`MAX_IDP_RESPONSE`]: the one place an IdP response is read.
async fn send_bounded(
    builder: reqwest::RequestBuilder,
) -> Result<openidconnect::HttpResponse, IdpHttpError> {
    let mut resp = crate::trace::send_idp(builder).await?;
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

/// The IdP HTTP client: no redirects (openidconnect's SSRF advice), bounded timeouts, the
/// extra CAs of `oidc.tls_ca_file` trusted besides the WebPKI roots, and the mTLS client
/// certificate presented to servers that ask for one (RFC 8705).
///
/// # Errors
/// If the TLS backend cannot initialise, or a certificate cannot be used.
pub fn http_client(config: &OidcConfig) -> Result<reqwest::Client, reqwest::Error> {
    let timeout = config.timeout;
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("cloakroom/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &config.tls_ca {
        for c in reqwest::Certificate::from_pem_bundle(pem)? {
            b = b.add_root_certificate(c);
        }
    }
    if let Some(cert) = &config.client_cert {
        b = b.identity(cert.identity()?);
    }
    b.build()
}

/// Provider `p`'s redirect URI: `<server.public_url><server.auth_prefix>/callback`, or with
/// `callback = "own"` `…/callback/<name>`.
///
/// # Errors
/// [`StartupError::Discovery`] when the public URL cannot take the path.
pub fn redirect_uri(config: &Config, p: &OidcConfig) -> Result<Url, StartupError> {
    let path = match p.callback {
        crate::config::CallbackPath::Shared => format!("{}/callback", config.server.auth_prefix),
        crate::config::CallbackPath::Own => {
            format!("{}/callback/{}", config.server.auth_prefix, p.name)
        }
    };
    config
        .server
        .public_url
        .join(&path)
        .map_err(|e| StartupError::Discovery {
            issuer: p.issuer.to_string(),
            reason: e.to_string(),
        })
}

impl OidcClient {
    /// Discovers the provider (metadata + JWKS) and builds the client for `[oidc]`, with
    /// `redirect` as its redirect URI (the public URL's `<auth_prefix>/callback`, see
    /// [`redirect_uri`]).
    ///
    /// # Errors
    /// [`StartupError::Discovery`] when the IdP cannot be reached or its metadata is unusable.
    pub async fn discover(config: &OidcConfig, redirect: Url) -> Result<Self, StartupError> {
        let fail = |reason: String| StartupError::Discovery {
            issuer: config.issuer.to_string(),
            reason,
        };
        let http = http_client(config).map_err(|e| fail(error_chain(&e)))?;
        // Exactly as configured: an issuer with a trailing slash (Auth0) keeps it, one without
        // gets none (OIDC Discovery §4.3 compares them as strings).
        let issuer_str = config.issuer_id.clone();
        let issuer = IssuerUrl::new(issuer_str.clone()).map_err(|e| fail(e.to_string()))?;
        // The bounded adapter, keeping what it read: the JWKS discovery fetched is read into
        // both our key types from those bytes (jwks.rs).
        let recorded = Recorded::default();
        let recording = {
            let (http, recorded) = (http.clone(), recorded.clone());
            move |r: openidconnect::HttpRequest| {
                let (http, recorded, uri) = (http.clone(), recorded.clone(), r.uri().clone());
                async move {
                    let resp = idp_call(http, r).await?;
                    recorded.record(&uri, resp.body());
                    Ok::<_, IdpHttpError>(resp)
                }
            }
        };
        let discovery = Metadata::discover_async(issuer, &recording);
        let metadata = crate::trace::idp_call!("idp.discovery", discovery)
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        let extra = metadata.additional_metadata().clone();
        let fapi2 = config.profile == Profile::Fapi2;
        if fapi2 {
            let problems = fapi2_problems(config, &metadata, &extra.additional_metadata);
            if !problems.is_empty() {
                return Err(fail(format!(
                    "oidc.profile = \"fapi2\" needs what the IdP does not advertise: {}",
                    problems.join("; ")
                )));
            }
        }
        // FAPI 2.0 pushes every authorization request.
        let par_mode = if fapi2 { Par::Always } else { config.par };
        let par = par_endpoint(par_mode, &extra.additional_metadata).map_err(fail)?;
        let jwks = Jwks::from_discovery(metadata.jwks_uri().url().clone(), http.clone(), &recorded)
            .ok_or_else(|| fail("the JWKS could not be read".into()))?;
        let signer = signer(config, &metadata).map_err(fail)?;
        if config.dpop {
            dpop_supported(&extra.additional_metadata).map_err(fail)?;
        }
        let credentials = Credentials::new(config.client_auth, &config.client_secret, signer);
        // RFC 8705 §5: with a client certificate, the calls that present it go to the IdP's
        // mTLS endpoint aliases when it has them.
        let aliases = config
            .client_cert
            .as_ref()
            .and_then(|_| extra.additional_metadata.mtls_endpoint_aliases.clone())
            .unwrap_or_default();
        let redirect = RedirectUrl::from_url(redirect);
        // With private_key_jwt openidconnect knows no secret and puts client_id in the body;
        // the assertion is added to each grant (`assertion_params`).
        let secret = config
            .client_auth
            .needs_secret()
            .then(|| ClientSecret::new(config.client_secret.expose().to_string()));
        let client = openidconnect::Client::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            secret,
        )
        .set_redirect_uri(redirect)
        .set_auth_type(match config.client_auth {
            ClientAuth::Basic => AuthType::BasicAuth,
            ClientAuth::Post
            | ClientAuth::PrivateKeyJwt
            | ClientAuth::TlsClientAuth
            | ClientAuth::SelfSignedTlsClientAuth => AuthType::RequestBody,
        });
        let token_url = aliases
            .token_endpoint
            .clone()
            .map(openidconnect::TokenUrl::from_url)
            .or_else(|| client.token_uri().cloned())
            .ok_or_else(|| fail("discovery names no token_endpoint".into()))?;
        let client = client.set_token_uri(token_url);
        let revocation = match aliases
            .revocation_endpoint
            .or(extra.additional_metadata.revocation_endpoint)
        {
            Some(r) => Some(r),
            None => revocation::from_authorization_server_metadata(&http, &issuer_str).await,
        };
        Ok(Self {
            client,
            jwks,
            http,
            end_session: extra.end_session_endpoint,
            revocation,
            par: par.map(|p| aliases.pushed_authorization_request_endpoint.unwrap_or(p)),
            issuer: issuer_str,
            client_id: config.client_id.clone(),
            own_callback: config.callback == crate::config::CallbackPath::Own,
            scopes: config.scopes.clone(),
            extra_params: config
                .extra_auth_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            post_logout_redirect_uri: config.post_logout_redirect_uri.clone(),
            clock_skew: config.clock_skew,
            // FAPI 2.0: RFC 9207 `iss` is required in every authorization response.
            promises_iss: fapi2
                || extra
                    .additional_metadata
                    .authorization_response_iss_parameter_supported,
            fapi2,
            mtls: config
                .client_cert
                .as_ref()
                .map(|c| (c.thumbprint().to_string(), aliases.token_endpoint.is_some())),
            dpop: config.dpop,
            nonces: dpop::Nonces::default(),
            credentials,
            timeout: config.timeout,
            clock: Clock::system(),
            login_resources: Vec::new(),
            userinfo: config.userinfo,
            name: config.name.clone(),
        })
    }

    /// Asks at login for these resources (RFC 8707 §2.1, one `resource` parameter each) and
    /// these scopes besides `oidc.scopes`: what the routes' per-resource tokens need the grant
    /// to hold.
    #[must_use]
    pub fn with_login_resources(mut self, resources: Vec<String>, scopes: Vec<String>) -> Self {
        for s in scopes {
            if !self.scopes.contains(&s) {
                self.scopes.push(s);
            }
        }
        self.login_resources = resources;
        self
    }

    /// Times token lifetimes with `clock` (tests advance it).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The provider's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The issuer.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `client_id` Cloakroom is registered with there.
    #[must_use]
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `oidc.clock_skew`: the tolerance for the IdP's timestamps.
    #[must_use]
    pub fn clock_skew(&self) -> Duration {
        self.clock_skew
    }

    /// The callback its logins come back to: `Some(name)` for `<auth_prefix>/callback/<name>`,
    /// `None` for the shared `<auth_prefix>/callback`.
    #[must_use]
    pub fn callback_name(&self) -> Option<&str> {
        self.own_callback.then_some(self.name.as_str())
    }

    /// RFC 9207: whether the IdP promises `iss` in authorization responses.
    #[must_use]
    pub fn promises_iss(&self) -> bool {
        self.promises_iss
    }

    /// The revocation endpoint, if the IdP has one.
    #[must_use]
    pub fn revocation_endpoint(&self) -> Option<&Url> {
        self.revocation.as_ref()
    }

    /// The IdP client as `openidconnect` calls it: responses bounded by [`MAX_IDP_RESPONSE`],
    /// each call given `timeout` (when set) instead of `oidc.timeout`, and with a DPoP proof
    /// made with `key` (when given) on every call, carrying the IdP's last nonce; the nonce
    /// each answer brings is kept for the next.
    fn bounded_dpop(
        &self,
        timeout: Option<Duration>,
        key: Option<&DpopKey>,
    ) -> impl Fn(
        openidconnect::HttpRequest,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<openidconnect::HttpResponse, IdpHttpError>>
                + Send,
        >,
    > {
        let http = self.http.clone();
        let (key, nonces) = (key.cloned(), self.nonces.clone());
        move |mut r| {
            let (http, key, nonces) = (http.clone(), key.clone(), nonces.clone());
            // Wall-clock time: the IdP compares `iat` with its own clock.
            let now = crate::session::now_unix();
            Box::pin(async move {
                let Some(key) = key else {
                    return idp_call_within(http, r, timeout).await;
                };
                let origin = dpop::origin_of(r.uri());
                let proof = key
                    .proof(
                        r.method().as_str(),
                        &r.uri().to_string(),
                        None,
                        nonces.get(&origin).as_deref(),
                        now,
                    )
                    .map_err(|_| IdpHttpError::Malformed)?;
                let mut v = http::HeaderValue::from_str(proof.expose())
                    .map_err(|_| IdpHttpError::Malformed)?;
                v.set_sensitive(true);
                r.headers_mut().insert("dpop", v);
                let resp = idp_call_within(http, r, timeout).await?;
                if let Some(n) = resp.headers().get("dpop-nonce") {
                    nonces.set(&origin, n.as_bytes());
                }
                Ok(resp)
            })
        }
    }

    /// The shared IdP HTTP client.
    #[must_use]
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A new authorization request with fresh `state`, `nonce` and PKCE S256 challenge. With
    /// PAR (RFC 9126) its parameters are pushed to the IdP first, and the browser's URL
    /// carries only `client_id` and the `request_uri` the IdP answered.
    ///
    /// # Errors
    /// [`Error::AuthorizationRequest`] when the IdP refuses or does not answer the push.
    pub async fn authorize(
        &self,
        prompt_none: bool,
        step_up: Option<&crate::session::StepUpRequest>,
    ) -> Result<AuthRequest, Error> {
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
        // RFC 9449 §10: the code is bound to the login's DPoP key.
        let dpop = self.dpop.then(DpopKey::generate);
        if let Some(key) = &dpop {
            let jkt = key.thumbprint().map_err(Error::Internal)?;
            req = req.add_extra_param("dpop_jkt", jkt.to_string());
        }
        for s in &self.scopes {
            if s != "openid" {
                req = req.add_scope(Scope::new(s.clone()));
            }
        }
        if prompt_none {
            req = req.add_prompt(CoreAuthPrompt::None);
        }
        for r in &self.login_resources {
            req = req.add_extra_param("resource", r.clone());
        }
        if let Some(up) = step_up {
            // OIDC Core 3.1.2.1; RFC 9470 §4 names these two for a step-up.
            if let Some(a) = &up.acr_values {
                req = req.add_extra_param("acr_values", a.clone());
            }
            if let Some(m) = up.max_age {
                req = req.add_extra_param("max_age", m.to_string());
            }
        }
        for (k, v) in &self.extra_params {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let (mut url, _, _) = req.url();
        if let Some(endpoint) = &self.par {
            let request_uri = self.push(endpoint, &url).await?;
            url.query_pairs_mut()
                .clear()
                .append_pair("client_id", &self.client_id)
                .append_pair("request_uri", &request_uri);
        }
        Ok(AuthRequest {
            url,
            state: Secret::new(state),
            nonce: Secret::new(nonce),
            pkce_verifier: Secret::new(verifier.into_secret()),
            dpop,
        })
    }

    /// Pushes the parameters of the front-channel authorization `url` to the PAR endpoint with
    /// the client's authentication, and returns the `request_uri` the IdP answered (RFC 9126
    /// §2). The IdP's error code is kept for the log; its description may echo parameters and
    /// is not.
    async fn push(&self, endpoint: &Url, url: &Url) -> Result<String, Error> {
        let fail = Error::AuthorizationRequest;
        let form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let builder = self
            .credentials
            .request(
                self.http
                    .post(endpoint.clone())
                    .header(http::header::ACCEPT, "application/json"),
                &self.client_id,
                form,
                crate::session::now_unix(),
            )
            .map_err(fail)?;
        let resp = crate::trace::idp_call!("idp.par", send_bounded(builder))
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        #[derive(Deserialize)]
        struct Pushed {
            request_uri: String,
        }
        #[derive(Deserialize)]
        struct Refused {
            error: String,
        }
        let status = resp.status();
        if status.is_success() {
            let pushed: Pushed = serde_json::from_slice(resp.body())
                .map_err(|_| fail(format!("HTTP {status} without a request_uri")))?;
            return Ok(pushed.request_uri);
        }
        Err(fail(match serde_json::from_slice::<Refused>(resp.body()) {
            Ok(r) => format!("HTTP {status}, error {:?}", r.error),
            Err(_) => format!("HTTP {status}"),
        }))
    }

    /// The `private_key_jwt` assertion for a grant openidconnect sends (none for a secret,
    /// which openidconnect sends itself).
    fn assertion_params(&self) -> Result<Vec<(String, String)>, String> {
        match &self.credentials {
            Credentials::PrivateKeyJwt(signer) => Ok(vec![
                ("client_assertion_type".into(), ASSERTION_TYPE.into()),
                (
                    "client_assertion".into(),
                    signer
                        .assertion(&self.client_id, crate::session::now_unix())?
                        .expose()
                        .to_string(),
                ),
            ]),
            _ => Ok(Vec::new()),
        }
    }

    /// How the client authenticates, for `cloakroom check`: the method, and with
    /// `private_key_jwt` the algorithm chosen.
    #[must_use]
    pub fn client_auth_summary(&self) -> String {
        match &self.credentials {
            Credentials::Basic(_) => "client_secret_basic".into(),
            Credentials::Post(_) => "client_secret_post".into(),
            Credentials::PrivateKeyJwt(s) => format!("private_key_jwt, {:?}", s.alg()),
            Credentials::Mtls(ClientAuth::SelfSignedTlsClientAuth) => {
                "self_signed_tls_client_auth".into()
            }
            Credentials::Mtls(_) => "tls_client_auth".into(),
        }
    }

    /// Whether the FAPI 2.0 profile is in force (`oidc.profile = "fapi2"`; discovery checked
    /// that the IdP has every piece it needs).
    #[must_use]
    pub fn is_fapi2(&self) -> bool {
        self.fapi2
    }

    /// The client certificate, for `cloakroom check`: its `x5t#S256` and whether the IdP's
    /// mTLS endpoint aliases are in use.
    #[must_use]
    pub fn client_cert_summary(&self) -> Option<String> {
        self.mtls.as_ref().map(|(t, aliases)| {
            format!(
                "x5t#S256 {t}; {}",
                if *aliases {
                    "token, PAR and revocation calls go to the IdP's mtls_endpoint_aliases"
                } else {
                    "the IdP advertises no mtls_endpoint_aliases: its plain endpoints get the certificate"
                }
            )
        })
    }

    /// Whether tokens are DPoP-bound (`oidc.dpop`).
    #[must_use]
    pub fn uses_dpop(&self) -> bool {
        self.dpop
    }

    /// Whether authorization requests are pushed (PAR).
    #[must_use]
    pub fn uses_par(&self) -> bool {
        self.par.is_some()
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
        dpop: Option<&DpopKey>,
    ) -> Result<LoginResult, Error> {
        let http = self.bounded_dpop(None, dpop);
        let mut asked_nonce = false;
        let outcome = loop {
            let mut request = self
                .client
                .exchange_code(AuthorizationCode::new(code.to_string()))
                .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose().to_string()));
            for (k, v) in self.assertion_params().map_err(Error::TokenExchange)? {
                request = request.add_extra_param(k, v);
            }
            let call = request.request_async(&http);
            let grant = "authorization_code";
            match crate::trace::idp_call!("idp.token", call, oauth.grant_type = grant).await {
                // RFC 9449 §8: once more, with the nonce the IdP just sent (kept by `http`).
                Err(e) if dpop.is_some() && !asked_nonce && wants_dpop_nonce(&e) => {
                    crate::metrics::dpop_nonce_retry("idp");
                    asked_nonce = true;
                }
                other => break other,
            }
        };
        let resp: IdpTokenResponse = outcome.map_err(|e| {
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
        let (sub, sid, mut claims) = self
            .verify_id_token(id_token, resp.access_token(), Some(nonce))
            .await?;
        if self.userinfo {
            self.merge_userinfo(resp.access_token(), &sub, &mut claims)
                .await?;
        }
        let refresh_expires_in = resp
            .extra_fields()
            .extra_fields()
            .refresh_expires_in
            .and_then(|s| i64::try_from(s).ok())
            .filter(|_| resp.refresh_token().is_some());
        Ok(LoginResult {
            refresh_expires_in,
            sub,
            sid,
            claims,
            tokens: crate::session::Tokens {
                resources: Some(self.login_resources.clone()),
                ..self.tokens_from(&resp, id_token.to_string(), None, dpop)
            },
        })
    }

    /// `oidc.userinfo`: the userinfo endpoint's claims (OIDC Core 5.3), for the same `sub`
    /// (5.3.4, checked by `openidconnect`), added to the ID token's where it has none of its
    /// own — never a protocol claim ([`PROTOCOL_CLAIMS`]: what the login reached, its session,
    /// its binding and the ID token's own validity come from the verified ID token only). The
    /// access token goes to the IdP only.
    ///
    /// # Errors
    /// [`Error::TokenExchange`] when the IdP has no userinfo endpoint or the call fails.
    async fn merge_userinfo(
        &self,
        access_token: &openidconnect::AccessToken,
        sub: &str,
        claims: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Error> {
        let request = self
            .client
            .user_info(
                access_token.clone(),
                Some(openidconnect::SubjectIdentifier::new(sub.to_string())),
            )
            .map_err(|e| Error::TokenExchange(format!("userinfo: {e}")))?;
        let http = self.bounded_dpop(None, None);
        let call = crate::trace::idp_call!("idp.userinfo", request.request_async(&http));
        let info: openidconnect::UserInfoClaims<id_token::ExtraClaims, CoreGenderClaim> = call
            .await
            .map_err(|e| Error::TokenExchange(format!("userinfo: {}", error_chain(&e))))?;
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&info) else {
            return Err(Error::TokenExchange("userinfo: unreadable claims".into()));
        };
        for (k, v) in map {
            if PROTOCOL_CLAIMS.contains(&k.as_str()) {
                continue;
            }
            claims.entry(k).or_insert(v);
        }
        Ok(())
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
        self.refresh_grant_for(current, None).await
    }

    /// As [`OidcClient::refresh_grant`], asking for a token for one resource (RFC 8707 §2.2:
    /// `resource` and the scopes on the refresh grant). The answer's refresh token, rotated or
    /// not, is the session's from then on, like any refresh.
    ///
    /// # Errors
    /// [`RefreshError`], classified; `invalid_target` and `invalid_scope` are
    /// [`RefreshError::Denied`].
    pub async fn refresh_grant_for(
        &self,
        current: &Tokens,
        resource: Option<&crate::config::ResourceSpec>,
    ) -> Result<RefreshResponse, RefreshError> {
        let Some(rt) = &current.refresh_token else {
            return Err(RefreshError::Fatal("no refresh token".into()));
        };
        let rt_oauth = openidconnect::RefreshToken::new(rt.expose().to_string());
        let within = refresh_timeout(self.timeout);
        let http = self.bounded_dpop(Some(within), current.dpop.as_ref());
        let mut asked_nonce = false;
        let outcome = loop {
            let mut request = self.client.exchange_refresh_token(&rt_oauth);
            if let Some(spec) = resource {
                request = request.add_extra_param("resource", spec.resource.clone());
                for s in spec.scope.iter().flat_map(|s| s.split(' ')) {
                    request = request.add_scope(Scope::new(s.to_string()));
                }
            }
            for (k, v) in self.assertion_params().map_err(RefreshError::Transient)? {
                request = request.add_extra_param(k, v);
            }
            let call = request.request_async(&http);
            let call =
                crate::trace::idp_call!("idp.token", call, oauth.grant_type = "refresh_token");
            let outcome = tokio::time::timeout(within + Duration::from_millis(250), call)
                .await
                .map_err(|_| {
                    RefreshError::Transient(
                        "IdP call timed out (if the IdP still answers and rotates the refresh token, the next refresh is refused)".into(),
                    )
                })?;
            match outcome {
                // RFC 9449 §8: refused before the refresh token was looked at, so once more
                // with the nonce the IdP just sent.
                Err(e) if current.dpop.is_some() && !asked_nonce && wants_dpop_nonce(&e) => {
                    crate::metrics::dpop_nonce_retry("idp");
                    asked_nonce = true;
                }
                other => break other,
            }
        };
        match outcome {
            Ok(r) => Ok(RefreshResponse(r)),
            Err(e) => {
                let why = describe_token_error(&e);
                Err(match classify(&e) {
                    FailureKind::Fatal => RefreshError::Fatal(why),
                    FailureKind::ClientRejected => RefreshError::ClientRejected(why),
                    FailureKind::Denied => RefreshError::Denied(why),
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
            current.dpop.as_ref(),
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
            current.dpop.as_ref(),
        )
    }
}

impl OidcClient {
    /// Tokens from a token response, with the access token's lifetime recorded: `expires_in`,
    /// else the JWT's `exp − iat` (read, not verified: it only times the refresh). The DPoP
    /// key the request was proved with is kept when the IdP bound the token to it
    /// (`token_type` `DPoP`, RFC 9449 §5); a `Bearer` answer means it did not.
    fn tokens_from(
        &self,
        resp: &IdpTokenResponse,
        id_token: String,
        old_refresh: Option<Secret>,
        dpop: Option<&DpopKey>,
    ) -> Tokens {
        let bound = matches!(resp.token_type(), CoreTokenType::Extension(t) if t.eq_ignore_ascii_case("dpop"));
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
            dpop: dpop.filter(|_| bound).cloned(),
            derived: std::collections::BTreeMap::new(),
            resources: None,
            bearer_header: crate::session::BearerHeader::default(),
        }
    }
}

/// The `private_key_jwt` signer: the first configured key, its algorithm from what the IdP
/// offers, and the audience `oidc.client_assertion_audience` names.
///
/// # Errors
/// When the IdP offers no algorithm the key can make, or has no token endpoint to name.
fn signer(config: &OidcConfig, metadata: &Metadata) -> Result<Option<client_auth::Signer>, String> {
    if config.client_auth != ClientAuth::PrivateKeyJwt {
        return Ok(None);
    }
    let key = config
        .client_keys
        .first()
        .cloned()
        .ok_or_else(|| "no client key".to_string())?;
    let offered: Option<Vec<String>> = metadata
        .token_endpoint_auth_signing_alg_values_supported()
        .map(|algs| {
            algs.iter()
                .filter_map(|a| serde_json::to_value(a).ok()?.as_str().map(String::from))
                .collect()
        });
    let alg = client_auth::choose_alg(key.kind(), offered.as_deref())?;
    if config.profile == Profile::Fapi2 && alg == jsonwebtoken::Algorithm::RS256 {
        return Err(format!(
            "oidc.profile = \"fapi2\" allows PS256, ES256 or EdDSA client assertions, and the IdP's token_endpoint_auth_signing_alg_values_supported ({}) leaves only RS256 for the RSA client key",
            offered.as_deref().map(|o| o.join(", ")).unwrap_or_default()
        ));
    }
    let audience = match config.client_assertion_audience {
        AssertionAudience::Issuer => config.issuer_id.clone(),
        AssertionAudience::TokenEndpoint => metadata
            .token_endpoint()
            .map(|t| t.url().to_string())
            .ok_or_else(|| "oidc.client_assertion_audience is `token_endpoint`, but discovery names no token endpoint".to_string())?,
    };
    Ok(Some(client_auth::Signer::new(
        key,
        alg,
        config.client_key_id.clone(),
        audience,
    )))
}

/// The PAR endpoint to push to, from `oidc.par` and what discovery says (RFC 9126 §5).
///
/// # Errors
/// Why the two cannot work together, naming `oidc.par`.
fn par_endpoint(par: Par, meta: &ExtraMetadata) -> Result<Option<Url>, String> {
    let endpoint = meta.pushed_authorization_request_endpoint.clone();
    let required = meta.require_pushed_authorization_requests;
    match (par, endpoint) {
        (Par::Never, _) if required => Err(
            "the IdP requires pushed authorization requests (require_pushed_authorization_requests), and oidc.par is `never`: set it to `auto` or `always`".into(),
        ),
        (Par::Never, _) => Ok(None),
        (_, Some(e)) => Ok(Some(e)),
        (Par::Always, None) => Err(
            "oidc.par is `always`, but discovery advertises no pushed_authorization_request_endpoint".into(),
        ),
        (Par::Auto, None) if required => Err(
            "the IdP requires pushed authorization requests but advertises no pushed_authorization_request_endpoint".into(),
        ),
        (Par::Auto, None) => Ok(None),
    }
}

/// What the FAPI 2.0 Security Profile, as `config` meets it (client authentication by
/// `private_key_jwt` or mTLS; tokens bound by DPoP or by the client certificate), needs of the
/// IdP that its discovery document does not advertise, one entry each (empty: nothing is
/// missing). A list the IdP omits is taken as saying nothing, except where FAPI 2.0 needs the
/// IdP to say it (PAR, `iss`, DPoP, certificate-bound tokens).
fn fapi2_problems(config: &OidcConfig, metadata: &Metadata, extra: &ExtraMetadata) -> Vec<String> {
    let mut out = Vec::new();
    let names = |v: Option<Vec<serde_json::Value>>| -> Option<Vec<String>> {
        v.map(|v| {
            v.into_iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
    };
    if extra.pushed_authorization_request_endpoint.is_none() {
        out.push("a pushed_authorization_request_endpoint (PAR)".to_string());
    }
    if !extra.authorization_response_iss_parameter_supported {
        out.push("authorization_response_iss_parameter_supported = true (RFC 9207)".into());
    }
    if config.dpop {
        if let Err(e) = dpop_supported(extra) {
            out.push(format!("DPoP with ES256 ({e})"));
        }
    } else if !extra.tls_client_certificate_bound_access_tokens {
        out.push(
            "tls_client_certificate_bound_access_tokens = true (certificate-bound tokens, RFC 8705 §3, as oidc.dpop is false)".into(),
        );
    }
    if let Some(m) = &extra.code_challenge_methods_supported {
        if !m.iter().any(|x| x == "S256") {
            out.push(format!(
                "PKCE S256 in code_challenge_methods_supported ({})",
                m.join(", ")
            ));
        }
    }
    let auth = names(metadata.token_endpoint_auth_methods_supported().map(|v| {
        v.iter()
            .filter_map(|m| serde_json::to_value(m).ok())
            .collect()
    }));
    let method = match config.client_auth {
        ClientAuth::TlsClientAuth => "tls_client_auth",
        ClientAuth::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        _ => "private_key_jwt",
    };
    if let Some(a) = auth.filter(|a| !a.iter().any(|x| x == method)) {
        out.push(format!(
            "{method} in token_endpoint_auth_methods_supported ({})",
            a.join(", ")
        ));
    }
    let id_algs = names(Some(
        metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter_map(|m| serde_json::to_value(m).ok())
            .collect(),
    ))
    .unwrap_or_default();
    if !id_algs
        .iter()
        .any(|a| id_token::FAPI2_ID_TOKEN_ALGS.contains(&a.as_str()))
    {
        out.push(format!(
            "ID tokens signed with PS256, ES256 or EdDSA (id_token_signing_alg_values_supported: {})",
            id_algs.join(", ")
        ));
    }
    out
}

/// With `oidc.dpop`: the IdP must take ES256 proofs (RFC 9449 §5.1).
///
/// # Errors
/// Why not, naming `oidc.dpop`.
fn dpop_supported(meta: &ExtraMetadata) -> Result<(), String> {
    match &meta.dpop_signing_alg_values_supported {
        Some(algs) if algs.iter().any(|a| a == "ES256") => Ok(()),
        Some(algs) => Err(format!(
            "oidc.dpop is true, but the IdP's dpop_signing_alg_values_supported ({}) lacks ES256, the algorithm of Cloakroom's DPoP keys",
            algs.join(", ")
        )),
        None => Err(
            "oidc.dpop is true, but discovery advertises no dpop_signing_alg_values_supported (the IdP does not say it supports DPoP)".into(),
        ),
    }
}

/// Whether a token endpoint refusal asks for a DPoP nonce (RFC 9449 §8: `use_dpop_nonce`).
fn wants_dpop_nonce<RE: std::error::Error + 'static>(
    e: &RequestTokenError<RE, StandardErrorResponse<CoreErrorResponseType>>,
) -> bool {
    matches!(e, RequestTokenError::ServerResponse(r)
        if matches!(r.error(), CoreErrorResponseType::Extension(x) if x == "use_dpop_nonce"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(algs: Option<&[&str]>) -> ExtraMetadata {
        ExtraMetadata {
            revocation_endpoint: None,
            authorization_response_iss_parameter_supported: false,
            pushed_authorization_request_endpoint: None,
            require_pushed_authorization_requests: false,
            dpop_signing_alg_values_supported: algs
                .map(|a| a.iter().map(|s| (*s).to_string()).collect()),
            code_challenge_methods_supported: None,
            mtls_endpoint_aliases: None,
            tls_client_certificate_bound_access_tokens: false,
        }
    }

    #[test]
    fn dpop_needs_an_idp_that_takes_es256_proofs() {
        assert!(dpop_supported(&meta(Some(&["ES256", "EdDSA"]))).is_ok());
        let none = dpop_supported(&meta(None)).expect_err("not advertised");
        assert!(none.contains("oidc.dpop") && none.contains("dpop_signing_alg_values_supported"));
        let other = dpop_supported(&meta(Some(&["EdDSA"]))).expect_err("no ES256");
        assert!(
            other.contains("EdDSA") && other.contains("ES256"),
            "{other}"
        );
    }
}

//! The OIDC relying party: discovery, authorization URL, code exchange, ID-token validation.
//!
//! Owns: the only HTTP client that talks to the IdP (redirects off, timeouts set) and every
//! `openidconnect` type; handlers never see them. Never logs a token, code or secret.

use crate::config::{ClientAuth, Config};
use crate::error::{Error, StartupError};
use crate::secret::Secret;
use crate::session::{now_unix, Tokens};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClient, CoreClientAuthMethod, CoreErrorResponseType, CoreGrantType, CoreIdToken,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
    CoreTokenResponse,
};
use openidconnect::{
    AccessTokenHash, AdditionalProviderMetadata, AuthType, AuthorizationCode, ClientId,
    ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    RequestTokenError, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
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
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
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
            issuer: config.issuer.to_string(),
            reason,
        };
        let http = http_client(config.oidc_timeout).map_err(|e| fail(e.to_string()))?;
        let issuer_str = config.issuer.as_str().trim_end_matches('/').to_string();
        let issuer = IssuerUrl::new(issuer_str.clone()).map_err(|e| fail(e.to_string()))?;
        let metadata = Metadata::discover_async(issuer, &http)
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        let extra = metadata.additional_metadata().clone();
        let redirect = config
            .public_url
            .join(&format!("{}/callback", config.auth_prefix))
            .map_err(|e| fail(e.to_string()))?;
        let redirect = RedirectUrl::from_url(redirect);
        let client: Client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(config.client_secret.expose().to_string())),
        )
        .set_redirect_uri(redirect)
        .set_auth_type(match config.client_auth {
            ClientAuth::Basic => AuthType::BasicAuth,
            ClientAuth::Post => AuthType::RequestBody,
        });
        Ok(Self {
            client,
            http,
            end_session: extra.end_session_endpoint,
            revocation: extra.revocation_endpoint,
            issuer: issuer_str,
            client_id: config.client_id.clone(),
            scopes: config.scopes.clone(),
            extra_params: config
                .extra_auth_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            post_logout_redirect_uri: config.post_logout_redirect_uri.clone(),
            clock_skew: config.clock_skew,
            promises_iss: extra.authorization_response_iss_parameter_supported,
            client_auth: config.client_auth,
            client_secret: config.client_secret.clone(),
        })
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
            .request_async(&self.http)
            .await
            .map_err(|e| Error::TokenExchange(describe_token_error(&e)))?;
        let id_token = resp
            .id_token()
            .ok_or_else(|| Error::InvalidIdToken("no id_token in the token response".into()))?;
        let (sub, sid, claims) = self.verify_id_token(id_token, &resp, nonce)?;
        Ok(LoginResult {
            sub,
            sid,
            claims,
            tokens: tokens_from(&resp, id_token.to_string(), None),
        })
    }

    fn verify_id_token(
        &self,
        id_token: &CoreIdToken,
        resp: &CoreTokenResponse,
        nonce: &Secret,
    ) -> Result<VerifiedIdToken, Error> {
        let skew = self.clock_skew;
        let verifier = self
            .client
            .id_token_verifier()
            .set_allowed_algs(ALLOWED_ALGS)
            .set_issue_time_verifier_fn(move |iat| {
                let now = chrono_now();
                let skew = i64::try_from(skew.as_secs()).unwrap_or(60);
                let iat = iat.timestamp();
                if iat > now + skew {
                    Err(format!("issued {}s in the future", iat - now))
                } else if iat < now - 600 - skew {
                    Err("issued too long ago".into())
                } else {
                    Ok(())
                }
            });
        let nonce = Nonce::new(nonce.expose().to_string());
        let claims = id_token
            .claims(&verifier, &nonce)
            .map_err(|e| Error::InvalidIdToken(e.to_string()))?;
        // at_hash, when present, binds the access token to this ID token (3.1.3.8).
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token
                .signing_alg()
                .map_err(|e| Error::InvalidIdToken(e.to_string()))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|e| Error::InvalidIdToken(e.to_string()))?;
            let actual = AccessTokenHash::from_token(resp.access_token(), alg, key)
                .map_err(|e| Error::InvalidIdToken(e.to_string()))?;
            if actual != *expected {
                return Err(Error::InvalidIdToken("at_hash does not match".into()));
            }
        }
        let sub = claims.subject().to_string();
        if sub.is_empty() {
            return Err(Error::InvalidIdToken("empty sub".into()));
        }
        // The signature is verified: now read every claim, including non-standard ones.
        let raw = id_token.to_string();
        let mut map = raw
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Map<_, _>>(&b).ok())
            .ok_or_else(|| Error::InvalidIdToken("unreadable payload".into()))?;
        for k in ["nonce", "at_hash", "c_hash"] {
            map.remove(k);
        }
        let sid = map.get("sid").and_then(|v| v.as_str()).map(String::from);
        Ok((sub, sid, map))
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

fn chrono_now() -> i64 {
    now_unix()
}

fn tokens_from(resp: &CoreTokenResponse, id_token: String, old_refresh: Option<Secret>) -> Tokens {
    Tokens {
        access_token: Secret::new(resp.access_token().secret().clone()),
        access_expires_at: resp
            .expires_in()
            .map(|d| now_unix() + i64::try_from(d.as_secs()).unwrap_or(0)),
        refresh_token: resp
            .refresh_token()
            .map(|r| Secret::new(r.secret().clone()))
            .or(old_refresh),
        id_token: Secret::new(id_token),
    }
}

/// Whether a token-endpoint failure is the IdP's final word (`invalid_grant`…) or transient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The grant is dead: end the session.
    Fatal,
    /// Network, timeout, 5xx: try again later.
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
            CoreErrorResponseType::InvalidGrant
            | CoreErrorResponseType::InvalidClient
            | CoreErrorResponseType::UnauthorizedClient => FailureKind::Fatal,
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

/// Whether the access token needs a refresh (less than `skew` left).
#[must_use]
pub fn needs_refresh(tokens: &Tokens, skew: Duration) -> bool {
    tokens
        .access_expires_at
        .is_some_and(|exp| exp - now_unix() < i64::try_from(skew.as_secs()).unwrap_or(60))
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

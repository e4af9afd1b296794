//! The token requests that are not about the login's grant: Cloakroom's own token (client
//! credentials, RFC 6749 §4.4) and token exchange (RFC 8693). Both are form POSTs to the token
//! endpoint with the configured client authentication ([`super::Credentials::request`]); openidconnect
//! has neither grant with the parameters these need (`resource`, `audience`, `actor_token`).
//!
//! Owns: the request parameters and reading the answer. Never caches: `client_tokens.rs` and the
//! refresher do.

use super::{send_bounded, OidcClient};
use crate::config::{ClientSpec, ExchangeSpec};
use crate::error::error_chain;
use crate::secret::Secret;
use serde::Deserialize;

/// RFC 8693 §2.1.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: the subject and actor tokens are access tokens.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A token the IdP granted.
pub struct Granted {
    /// The access token.
    pub access_token: Secret,
    /// `expires_in`, else the JWT's `exp − iat`.
    pub lifetime: Option<i64>,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Why a grant failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GrantError {
    /// The IdP refused what was asked (`invalid_target`, `invalid_scope`, `invalid_grant`,
    /// `unauthorized_client`, …): asking again will not help.
    #[error("refused: {0}")]
    Denied(String),
    /// The IdP refused our client (`invalid_client`).
    #[error("client refused: {0}")]
    ClientRejected(String),
    /// Unreachable, timed out, 5xx, unreadable.
    #[error("unavailable: {0}")]
    Transient(String),
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

impl OidcClient {
    /// Cloakroom's own token: the client credentials grant with `spec`'s scope and resource.
    ///
    /// # Errors
    /// [`GrantError`], classified.
    pub async fn client_credentials(&self, spec: &ClientSpec) -> Result<Granted, GrantError> {
        let mut form = vec![("grant_type".to_string(), "client_credentials".to_string())];
        if let Some(s) = &spec.scope {
            form.push(("scope".into(), s.clone()));
        }
        if let Some(r) = &spec.resource {
            form.push(("resource".into(), r.clone()));
        }
        self.token_request(form).await
    }

    /// Exchanges the user's access token `subject` for one `spec` describes (RFC 8693 §2.1),
    /// with Cloakroom's own token as `actor_token` when given.
    ///
    /// # Errors
    /// [`GrantError`], classified: `invalid_target` and other refusals are
    /// [`GrantError::Denied`].
    pub async fn exchange_token(
        &self,
        subject: &Secret,
        spec: &ExchangeSpec,
        actor: Option<&Secret>,
    ) -> Result<Granted, GrantError> {
        let mut form = vec![
            ("grant_type".to_string(), TOKEN_EXCHANGE.to_string()),
            ("subject_token".into(), subject.expose().to_string()),
            ("subject_token_type".into(), ACCESS_TOKEN_TYPE.into()),
            ("audience".into(), spec.audience.clone()),
        ];
        if let Some(s) = &spec.scope {
            form.push(("scope".into(), s.clone()));
        }
        if let Some(t) = &spec.requested_token_type {
            form.push(("requested_token_type".into(), t.clone()));
        }
        if let Some(a) = actor {
            form.push(("actor_token".into(), a.expose().to_string()));
            form.push(("actor_token_type".into(), ACCESS_TOKEN_TYPE.into()));
        }
        self.token_request(form).await
    }

    async fn token_request(&self, form: Vec<(String, String)>) -> Result<Granted, GrantError> {
        let endpoint = self.client.token_uri().url().clone();
        let builder = self
            .credentials
            .request(
                self.http
                    .post(endpoint)
                    .header(http::header::ACCEPT, "application/json"),
                &self.client_id,
                form,
                crate::session::now_unix(),
            )
            .map_err(GrantError::Transient)?;
        let resp = crate::trace::idp_call!("idp.token", send_bounded(builder))
            .await
            .map_err(|e| GrantError::Transient(format!("request failed: {}", error_chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            let t: TokenAnswer = serde_json::from_slice(resp.body()).map_err(|_| {
                GrantError::Transient(format!("HTTP {status} without an access_token"))
            })?;
            let lifetime = t
                .expires_in
                .filter(|l| *l > 0)
                .or_else(|| super::jwt_lifetime(&t.access_token));
            return Ok(Granted {
                access_token: Secret::new(t.access_token),
                lifetime,
            });
        }
        // The IdP's error code only: its description may echo what was sent.
        let code = serde_json::from_slice::<ErrorAnswer>(resp.body())
            .ok()
            .map(|e| e.error.chars().take(64).collect::<String>());
        let why = format!(
            "HTTP {status}{}",
            code.as_deref()
                .map(|c| format!(", error {c:?}"))
                .unwrap_or_default()
        );
        Err(match code.as_deref() {
            _ if status.is_server_error() => GrantError::Transient(why),
            Some("invalid_client") => GrantError::ClientRejected(why),
            Some("temporarily_unavailable" | "server_error") => GrantError::Transient(why),
            Some(_) => GrantError::Denied(why),
            None => GrantError::Transient(why),
        })
    }
}

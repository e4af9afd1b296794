//! The identity providers of one deployment: `[oidc]` and `[[oidc.providers]]`, each an
//! [`OidcClient`] of its own. A login picks one (`/auth/login?provider=NAME`, else
//! `oidc.default_provider`); the session records its name, and everything later done for that
//! session — refresh, route tokens, revocation, end-session, back-channel logout — goes to that
//! same provider.

use super::OidcClient;
use std::sync::Arc;

/// The providers, `[oidc]` first. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Providers {
    all: Arc<[Arc<OidcClient>]>,
    /// Index into `all` of `oidc.default_provider`.
    default: usize,
}

impl Providers {
    /// One provider (every test and most deployments).
    #[must_use]
    pub fn single(client: Arc<OidcClient>) -> Self {
        Self {
            all: Arc::from(vec![client]),
            default: 0,
        }
    }

    /// `[oidc]` and the others; `default` names the one a login without `?provider=` uses
    /// (`[oidc]` when it names none of them: configuration validation rules that out).
    #[must_use]
    pub fn new(primary: Arc<OidcClient>, others: Vec<Arc<OidcClient>>, default: &str) -> Self {
        let mut clients = vec![primary];
        clients.extend(others);
        let default = clients
            .iter()
            .position(|c| c.name() == default)
            .unwrap_or(0);
        Self {
            all: Arc::from(clients),
            default,
        }
    }

    /// `[oidc]`: whose client Cloakroom's own tokens (client credentials, actor tokens) use.
    #[must_use]
    pub fn primary(&self) -> &Arc<OidcClient> {
        &self.all[0]
    }

    /// The provider of a login without `?provider=`.
    #[must_use]
    pub fn default_provider(&self) -> &Arc<OidcClient> {
        &self.all[self.default]
    }

    /// The provider called `name`.
    #[must_use]
    pub fn named(&self, name: &str) -> Option<&Arc<OidcClient>> {
        self.all.iter().find(|c| c.name() == name)
    }

    /// A session's provider: the one its record names, `[oidc]` for records from before
    /// providers were recorded. `None` when the configuration no longer has it.
    #[must_use]
    pub fn of(&self, recorded: Option<&str>) -> Option<&Arc<OidcClient>> {
        match recorded {
            None => Some(self.primary()),
            Some(n) => self.named(n),
        }
    }

    /// The provider whose issuer is `iss` (back-channel logout tokens say who sent them).
    #[must_use]
    pub fn by_issuer(&self, iss: &str) -> Option<&Arc<OidcClient>> {
        self.all.iter().find(|c| c.issuer() == iss)
    }

    /// The provider that would have sent this logout token: the one whose issuer its (not yet
    /// verified) `iss` names. With one provider, that one (its validation then says what is
    /// wrong with the token). `None` when no provider has that issuer.
    #[must_use]
    pub fn for_jwt(&self, jwt: &str) -> Option<&Arc<OidcClient>> {
        if self.all.len() == 1 {
            return Some(self.primary());
        }
        let payload = jwt.split('.').nth(1)?;
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            payload.trim_end_matches('='),
        )
        .ok()?;
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: String,
        }
        let Iss { iss } = serde_json::from_slice(&bytes).ok()?;
        self.by_issuer(&iss)
    }

    /// Every provider, `[oidc]` first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<OidcClient>> {
        self.all.iter()
    }

    /// How many there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Never: there is always `[oidc]`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The name a session records for `client`: `None` for `[oidc]` (so records stay as they
    /// were before there were several providers, and keep working when more are added), the
    /// name for the others.
    #[must_use]
    pub fn record_name(&self, client: &OidcClient) -> Option<String> {
        (!std::ptr::eq(client, &**self.primary())).then(|| client.name().to_string())
    }
}

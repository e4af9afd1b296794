//! The identity providers of one deployment: `[oidc]` and `[[oidc.providers]]`, each an
//! [`OidcClient`] of its own. A login picks one (`/auth/login?provider=NAME`, else
//! `oidc.default_provider`); the session records its name, and everything later done for that
//! session — refresh, route tokens, revocation, end-session, back-channel logout — goes to that
//! same provider. A reload that changes them swaps the whole set at once for every holder
//! ([`Providers::replace`]); a call already under way finishes with the client it took.

use super::OidcClient;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The providers, `[oidc]` first. Cheap to clone; every clone sees a [`Providers::replace`].
#[derive(Debug, Clone)]
pub struct Providers {
    set: Arc<ArcSwap<Set>>,
}

#[derive(Debug)]
struct Set {
    all: Vec<Arc<OidcClient>>,
    /// Index into `all` of `oidc.default_provider`.
    default: usize,
}

impl Set {
    fn new(primary: Arc<OidcClient>, others: Vec<Arc<OidcClient>>, default: &str) -> Self {
        let mut all = vec![primary];
        all.extend(others);
        let default = all.iter().position(|c| c.name() == default).unwrap_or(0);
        Self { all, default }
    }
}

impl Providers {
    /// One provider (every test and most deployments).
    #[must_use]
    pub fn single(client: Arc<OidcClient>) -> Self {
        let name = client.name().to_string();
        Self::new(client, Vec::new(), &name)
    }

    /// `[oidc]` and the others; `default` names the one a login without `?provider=` uses
    /// (`[oidc]` when it names none of them: configuration validation rules that out).
    #[must_use]
    pub fn new(primary: Arc<OidcClient>, others: Vec<Arc<OidcClient>>, default: &str) -> Self {
        Self {
            set: Arc::new(ArcSwap::from_pointee(Set::new(primary, others, default))),
        }
    }

    /// Replaces the whole set, for every clone (a reload that changed `[oidc]` or
    /// `[[oidc.providers]]`).
    pub fn replace(&self, primary: Arc<OidcClient>, others: Vec<Arc<OidcClient>>, default: &str) {
        self.set.store(Arc::new(Set::new(primary, others, default)));
    }

    /// `[oidc]`: whose client Cloakroom's own tokens (client credentials, actor tokens) use.
    #[must_use]
    pub fn primary(&self) -> Arc<OidcClient> {
        self.set.load().all[0].clone()
    }

    /// The provider of a login without `?provider=`.
    #[must_use]
    pub fn default_provider(&self) -> Arc<OidcClient> {
        let set = self.set.load();
        set.all[set.default].clone()
    }

    /// The provider called `name`.
    #[must_use]
    pub fn named(&self, name: &str) -> Option<Arc<OidcClient>> {
        self.set
            .load()
            .all
            .iter()
            .find(|c| c.name() == name)
            .cloned()
    }

    /// A session's provider: the one its record names, `[oidc]` for records that name none.
    /// `None` when the configuration no longer has it.
    #[must_use]
    pub fn of(&self, recorded: Option<&str>) -> Option<Arc<OidcClient>> {
        match recorded {
            None => Some(self.primary()),
            Some(n) => self.named(n),
        }
    }

    /// The provider whose issuer is `iss` (back-channel logout tokens say who sent them).
    #[must_use]
    pub fn by_issuer(&self, iss: &str) -> Option<Arc<OidcClient>> {
        self.set
            .load()
            .all
            .iter()
            .find(|c| c.issuer() == iss)
            .cloned()
    }

    /// The provider that would have sent this logout token: the one whose issuer its (not yet
    /// verified) `iss` names. With one provider, that one (its validation then says what is
    /// wrong with the token). `None` when no provider has that issuer.
    #[must_use]
    pub fn for_jwt(&self, jwt: &str) -> Option<Arc<OidcClient>> {
        if self.len() == 1 {
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

    /// Every provider, `[oidc]` first (as the set is now).
    #[must_use]
    pub fn all(&self) -> Vec<Arc<OidcClient>> {
        self.set.load().all.clone()
    }

    /// How many there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.set.load().all.len()
    }

    /// Never: there is always `[oidc]`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.set.load().all.is_empty()
    }

    /// The name a session records for `client`: `None` for `[oidc]` (so records stay as they
    /// were before there were several providers, and keep working when more are added), the
    /// name for the others.
    #[must_use]
    pub fn record_name(&self, client: &OidcClient) -> Option<String> {
        (client.name() != self.primary().name()).then(|| client.name().to_string())
    }
}

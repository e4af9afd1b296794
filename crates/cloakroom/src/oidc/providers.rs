//! The identity providers of one deployment: `[oidc]` and `[[oidc.providers]]`, each an
//! [`OidcClient`] of its own. A login picks one (`/auth/login?provider=NAME`, else
//! `oidc.default_provider`); the session records its name, and everything later done for that
//! session — refresh, route tokens, revocation, end-session, back-channel logout — goes to that
//! same provider. A reload that changes them swaps the whole set at once for every holder
//! ([`Providers::replace`]); a call already under way finishes with the client it took.

use super::OidcClient;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// What a session, pending login or leftover records of its provider: the name (`None`:
/// `[oidc]`), and the issuer and `client_id` it logged in with (`None` in records written
/// before they were recorded). See [`Providers::bound`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The provider's name as recorded ([`Providers::record_name`]).
    pub provider: Option<&'a str>,
    /// The issuer at login.
    pub issuer: Option<&'a str>,
    /// The `client_id` at login.
    pub client_id: Option<&'a str>,
}

impl Binding<'_> {
    /// Whether `client` still has the recorded issuer and `client_id` (a record without them
    /// matches any).
    #[must_use]
    pub fn matches(&self, client: &OidcClient) -> bool {
        self.issuer.is_none_or(|i| i == client.issuer())
            && self.client_id.is_none_or(|c| c == client.client_id())
    }
}

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

    /// The issuer whose index holds a session's `sub` and `sid`: the one it records, or (a
    /// record written before sessions recorded it) its provider's as configured now.
    #[must_use]
    pub fn issuer_of(&self, s: &crate::session::Session) -> Option<String> {
        s.issuer.clone().or_else(|| {
            self.of(s.provider.as_deref())
                .map(|p| p.issuer().to_string())
        })
    }

    /// The provider a session, pending login or leftover is bound to: the one its record
    /// names ([`Providers::of`]), and only while that provider still has the issuer and
    /// `client_id` the record was made with. A record without them (written before they were
    /// recorded) is taken as the named provider's as configured now. `None` when the provider
    /// is gone or now points at another IdP or registration (a reload changed `[oidc]`,
    /// `[[oidc.providers]]` or which one is `[oidc]`): such a record is ended and no token of
    /// it is sent anywhere.
    #[must_use]
    pub fn bound(&self, b: Binding<'_>) -> Option<Arc<OidcClient>> {
        self.of(b.provider).filter(|c| b.matches(c))
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

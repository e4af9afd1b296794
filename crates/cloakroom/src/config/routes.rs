//! `[upstream]` and `[[routes]]`: where API calls go and with which token policy.

use super::Problems;
use serde::Deserialize;
use std::time::Duration;
use url::Url;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    #[serde(with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pool_idle_timeout: Option<Duration>,
    tls_ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    prefix: String,
    upstream: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default)]
    upstream_client_cert: bool,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    /// RFC 8707 resource indicator of this route's API.
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    exchange: Option<RawExchange>,
    #[serde(default)]
    csrf: Option<bool>,
    #[serde(default)]
    acr_values: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    #[serde(default)]
    providers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExchange {
    audience: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    requested_token_type: Option<String>,
    #[serde(default)]
    actor_token: bool,
}

/// `[upstream]`, validated: the shared upstream client's settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Default upstream response timeout (each route may set its own).
    pub timeout: Duration,
    /// How long idle upstream connections stay pooled.
    pub pool_idle_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for `https://` upstreams, besides the WebPKI roots.
    pub tls_ca: Option<Vec<u8>>,
}

/// Token policy of a route (SPEC §2): whose token it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPolicy {
    /// A session is needed; the user's token is attached.
    Required,
    /// The user's token is attached when there is a session.
    Optional,
    /// Plain pass-through: no session lookup, no CSRF check.
    None,
    /// Cloakroom's own token (client credentials grant); no session is looked at.
    Client,
    /// The user's token when there is a session, else Cloakroom's own.
    UserOrClient,
}

impl TokenPolicy {
    /// Whether the route looks at the browser's session.
    #[must_use]
    pub fn uses_session(self) -> bool {
        matches!(self, Self::Required | Self::Optional | Self::UserOrClient)
    }

    /// Whether the route attaches any token (and so is CSRF-checked unless it says otherwise).
    #[must_use]
    pub fn sends_token(self) -> bool {
        self != Self::None
    }
}

/// Which of the session's tokens a route sends the user's (SPEC §2 v2 "route tokens").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserToken {
    /// The access token from login.
    Login,
    /// A token for one resource (RFC 8707), obtained with the refresh token.
    Resource(std::sync::Arc<ResourceSpec>),
    /// A token exchanged for the user's (RFC 8693).
    Exchange(std::sync::Arc<ExchangeSpec>),
}

/// A per-resource user token: `resource`, and the `scopes` asked for with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    /// The resource indicator.
    pub resource: String,
    /// Space-separated scopes, if any.
    pub scope: Option<String>,
    /// Where the session keeps this token (`Tokens::derived`).
    pub key: String,
}

/// `[routes.exchange]`: what the user's token is exchanged for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// `audience`.
    pub audience: String,
    /// `scope`.
    pub scope: Option<String>,
    /// `requested_token_type`.
    pub requested_token_type: Option<String>,
    /// Cloakroom's own token as `actor_token`, when `actor_token = true`.
    pub actor: Option<std::sync::Arc<ClientSpec>>,
    /// Where the session keeps the result (`Tokens::derived`).
    pub key: String,
}

/// A client-credentials token: its optional `scope` and `resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    /// Space-separated scopes, if any.
    pub scope: Option<String>,
    /// The resource indicator, if any.
    pub resource: Option<String>,
    /// The cache key (routes asking for the same token share it).
    pub key: String,
}

impl ClientSpec {
    /// A client token with these parameters.
    #[must_use]
    pub fn new(scope: Option<String>, resource: Option<String>) -> Self {
        let key = format!(
            "client|{}|{}",
            scope.as_deref().unwrap_or(""),
            resource.as_deref().unwrap_or("")
        );
        Self {
            scope,
            resource,
            key,
        }
    }
}

/// Step-up: what the session's authentication must satisfy (`acr_values`, `max_age`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// One of these `acr` values (empty: any).
    pub acr_values: Vec<String>,
    /// At most this long since the user authenticated (`auth_time`).
    pub max_age: Option<Duration>,
}

/// How a route's token is sent (`token = "dpop"` or `"bearer"`; otherwise as issued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScheme {
    /// As the IdP issued it: `DPoP` with a proof for a DPoP-bound token, else `Bearer`.
    AsIssued,
    /// `DPoP` with a proof; a session whose token is not DPoP-bound gets 403 `dpop_required`.
    Dpop,
    /// `Bearer`, even for a DPoP-bound token (for an upstream that does not know DPoP).
    Bearer,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix, longest wins.
    pub prefix: String,
    /// Upstream base URL (`http://host:port`, optionally with a base path).
    pub upstream: Url,
    /// Token policy.
    pub token: TokenPolicy,
    /// How the token is sent.
    pub scheme: TokenScheme,
    /// Remove `prefix` from the path before forwarding.
    pub strip_prefix: bool,
    /// Forward over HTTPS presenting the client certificate (`oidc.client_cert_file`), for an
    /// upstream that checks certificate-bound tokens (RFC 8705 §3).
    pub upstream_client_cert: bool,
    /// Upstream response timeout for this route.
    pub timeout: Duration,
    /// Which of the user's tokens is sent (with `Required`, `Optional`, `UserOrClient`).
    pub user_token: UserToken,
    /// Cloakroom's own token (with `Client`, `UserOrClient`).
    pub client: Option<std::sync::Arc<ClientSpec>>,
    /// Whether the CSRF header is required (`csrf = false` only on client routes). On a
    /// `user_or_client` route without it, a request without the header is anonymous: it gets
    /// the client token, never the user's.
    pub csrf: bool,
    /// What the session's authentication must satisfy.
    pub step_up: Option<StepUp>,
    /// `providers = [...]`: the identity providers whose sessions this route takes, as
    /// sessions record them (`None` for `[oidc]`, else the name). `None`: every provider's.
    pub providers: Option<Vec<Option<String>>>,
}

impl Route {
    /// Whether a session of `provider` (as recorded) may use this route.
    #[must_use]
    pub fn takes_provider(&self, provider: Option<&str>) -> bool {
        self.providers
            .as_ref()
            .is_none_or(|p| p.iter().any(|x| x.as_deref() == provider))
    }
}

impl UpstreamConfig {
    pub(super) fn build(raw: RawUpstream, errs: &mut Problems) -> Self {
        let tls_ca = raw.tls_ca_file.as_deref().and_then(|path| {
            let pem = std::fs::read(path)
                .map_err(|e| errs.push(format!("upstream.tls_ca_file: cannot read {path}: {e}")))
                .ok()?;
            let n = rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
                .filter(|c: &Result<rustls_pki_types::CertificateDer<'static>, _>| c.is_ok())
                .count();
            if n == 0 {
                errs.push(format!(
                    "upstream.tls_ca_file: {path} holds no PEM certificate"
                ));
                return None;
            }
            Some(pem)
        });
        Self {
            connect_timeout: raw.connect_timeout.unwrap_or(Duration::from_secs(5)),
            timeout: raw.timeout.unwrap_or(Duration::from_secs(30)),
            pool_idle_timeout: raw.pool_idle_timeout.unwrap_or(Duration::from_secs(90)),
            tls_ca,
        }
    }
}

/// Validates `[[routes]]`: sorted longest prefix first. `auth_prefix` is reserved for the
/// browser-facing endpoints; `upstream` gives the default timeout; `oidc` says whether tokens
/// are DPoP-bound and under which profile.
pub(super) fn build(
    raw: Vec<RawRoute>,
    auth_prefix: &str,
    oidc: &super::OidcConfig,
    upstream: &UpstreamConfig,
    errs: &mut Problems,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        if !r.prefix.starts_with('/') {
            errs.push(format!("{key}.prefix: `{}` must start with `/`", r.prefix));
        }
        if r.prefix == auth_prefix || r.prefix.starts_with(&format!("{auth_prefix}/")) {
            errs.push(format!(
                "{key}.prefix: `{}` overlaps server.auth_prefix `{auth_prefix}`",
                r.prefix
            ));
        }
        let (token, scheme) = match r.token.as_deref().unwrap_or("required") {
            "required" => (TokenPolicy::Required, TokenScheme::AsIssued),
            "optional" => (TokenPolicy::Optional, TokenScheme::AsIssued),
            "dpop" => {
                if !oidc.dpop {
                    errs.push(format!(
                        "{key}.token: `dpop` needs oidc.dpop = true (DPoP-bound tokens)"
                    ));
                }
                (TokenPolicy::Required, TokenScheme::Dpop)
            }
            "bearer" => {
                if oidc.profile == super::Profile::Fapi2 {
                    errs.push(format!(
                        "{key}.token: `bearer` sends sender-constrained tokens unbound, which oidc.profile = \"fapi2\" does not allow"
                    ));
                }
                (TokenPolicy::Required, TokenScheme::Bearer)
            }
            "none" => (TokenPolicy::None, TokenScheme::AsIssued),
            k @ ("exchange" | "client" | "user_or_client") => {
                // Exchanged and client tokens are obtained without a proof of possession and
                // sent as Bearer (README "Route tokens"): FAPI 2.0 wants every token
                // sender-constrained (Security Profile §5.3.3).
                if oidc.profile == super::Profile::Fapi2 {
                    errs.push(format!(
                        "{key}.token: `{k}` sends a Bearer token Cloakroom obtains unbound, which oidc.profile = \"fapi2\" does not allow"
                    ));
                }
                match k {
                    "exchange" => (TokenPolicy::Required, TokenScheme::Bearer),
                    "client" => (TokenPolicy::Client, TokenScheme::Bearer),
                    _ => (TokenPolicy::UserOrClient, TokenScheme::AsIssued),
                }
            }
            o => {
                errs.push(format!(
                    "{key}.token: `{o}` must be required, optional, dpop, bearer, none, exchange, client or user_or_client"
                ));
                (TokenPolicy::Required, TokenScheme::AsIssued)
            }
        };
        // https:// only for routes that present the client certificate.
        let want = if r.upstream_client_cert {
            "https"
        } else {
            "http"
        };
        if r.upstream_client_cert && oidc.client_cert.is_none() {
            errs.push(format!(
                "{key}.upstream_client_cert: needs oidc.client_cert_file (the certificate to present)"
            ));
        }
        let upstream_url = match Url::parse(&r.upstream) {
            Ok(u) if u.scheme() == want && u.host().is_some() && u.query().is_none() => u,
            Ok(_) => {
                errs.push(format!(
                    "{key}.upstream: `{}` must be an {want}:// URL with a host and no query{}",
                    r.upstream,
                    if r.upstream_client_cert {
                        " (upstream_client_cert = true)"
                    } else {
                        " (https:// only with upstream_client_cert = true)"
                    }
                ));
                continue;
            }
            Err(e) => {
                errs.push(format!(
                    "{key}.upstream: `{}` is not a URL ({e})",
                    r.upstream
                ));
                continue;
            }
        };
        let kind = r.token.as_deref().unwrap_or("required");
        let (user_token, client) = route_tokens(&key, kind, &r, token, errs);
        let csrf = r.csrf.unwrap_or(true);
        if !csrf && !matches!(token, TokenPolicy::Client | TokenPolicy::UserOrClient) {
            errs.push(format!(
                "{key}.csrf: `false` is allowed only with token = \"client\" or \"user_or_client\" (machine callers); a route that sends the user's token always checks CSRF"
            ));
        }
        let step_up = step_up(&key, &r, token, errs);
        let providers =
            route_providers(&key, r.providers.as_deref(), token, &user_token, oidc, errs);
        if routes.iter().any(|x: &Route| x.prefix == r.prefix) {
            errs.push(format!("{key}.prefix: `{}` is given twice", r.prefix));
        }
        routes.push(Route {
            prefix: r.prefix,
            upstream: upstream_url,
            token,
            scheme,
            strip_prefix: r.strip_prefix,
            upstream_client_cert: r.upstream_client_cert,
            timeout: r.timeout.unwrap_or(upstream.timeout),
            user_token,
            client,
            csrf,
            step_up,
            providers,
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    routes
}

/// A resource indicator (RFC 8707 §2): an absolute URI without a fragment.
fn resource_ok(r: &str) -> bool {
    Url::parse(r).is_ok_and(|u| u.fragment().is_none() && !u.cannot_be_a_base())
}

fn joined(scopes: Option<&Vec<String>>) -> Option<String> {
    scopes.filter(|s| !s.is_empty()).map(|s| s.join(" "))
}

/// The route's user token and client token, from `token`, `resource`, `scopes` and
/// `[routes.exchange]`.
fn route_tokens(
    key: &str,
    kind: &str,
    r: &RawRoute,
    token: TokenPolicy,
    errs: &mut Problems,
) -> (UserToken, Option<std::sync::Arc<ClientSpec>>) {
    use std::sync::Arc;
    if let Some(res) = &r.resource {
        if !resource_ok(res) {
            errs.push(format!(
                "{key}.resource: `{res}` must be an absolute URI without a fragment (RFC 8707)"
            ));
        }
        if matches!(kind, "none" | "exchange") {
            errs.push(format!(
                "{key}.resource: not with token = \"{kind}\"{}",
                if kind == "exchange" {
                    " (the exchange's audience names the target)"
                } else {
                    ""
                }
            ));
        }
    }
    if let Some(sc) = &r.scopes {
        if sc
            .iter()
            .any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            errs.push(format!(
                "{key}.scopes: each scope must be one non-empty word"
            ));
        }
        if r.resource.is_none() && !matches!(kind, "client" | "user_or_client") {
            errs.push(format!(
                "{key}.scopes: needs resource (a per-resource token), or token = \"client\" / \"user_or_client\""
            ));
        }
    }
    if r.exchange.is_some() != (kind == "exchange") {
        errs.push(format!(
            "{key}.exchange: {}",
            if kind == "exchange" {
                "token = \"exchange\" needs a [routes.exchange] table with an audience"
            } else {
                "only with token = \"exchange\""
            }
        ));
    }
    let scope = joined(r.scopes.as_ref());
    let user = match (&r.exchange, &r.resource) {
        (Some(x), _) if kind == "exchange" => {
            if x.audience.trim().is_empty() {
                errs.push(format!("{key}.exchange.audience: must not be empty"));
            }
            if let Some(t) = &x.requested_token_type {
                if !t.starts_with("urn:") {
                    errs.push(format!(
                        "{key}.exchange.requested_token_type: `{t}` must be a token type URI (RFC 8693 §3), e.g. urn:ietf:params:oauth:token-type:access_token"
                    ));
                }
            }
            UserToken::Exchange(Arc::new(ExchangeSpec {
                key: format!(
                    "exchange|{}|{}|{}|{}",
                    x.audience,
                    x.scope.as_deref().unwrap_or(""),
                    x.requested_token_type.as_deref().unwrap_or(""),
                    x.actor_token
                ),
                audience: x.audience.clone(),
                scope: x.scope.clone(),
                requested_token_type: x.requested_token_type.clone(),
                actor: x.actor_token.then(|| Arc::new(ClientSpec::new(None, None))),
            }))
        }
        (_, Some(res)) if token != TokenPolicy::Client => {
            UserToken::Resource(Arc::new(ResourceSpec {
                key: format!("resource|{res}|{}", scope.as_deref().unwrap_or("")),
                resource: res.clone(),
                scope: scope.clone(),
            }))
        }
        _ => UserToken::Login,
    };
    let client = matches!(token, TokenPolicy::Client | TokenPolicy::UserOrClient)
        .then(|| Arc::new(ClientSpec::new(scope, r.resource.clone())));
    (user, client)
}

/// `acr_values` and `max_age`: only on routes that send the user's token.
fn step_up(key: &str, r: &RawRoute, token: TokenPolicy, errs: &mut Problems) -> Option<StepUp> {
    let acr = r.acr_values.clone().unwrap_or_default();
    if acr.is_empty() && r.max_age.is_none() {
        if r.acr_values.is_some() {
            errs.push(format!("{key}.acr_values: must not be empty"));
        }
        return None;
    }
    if !token.uses_session() {
        errs.push(format!(
            "{key}: acr_values and max_age need a route that sends the user's token"
        ));
    }
    if acr
        .iter()
        .any(|a| a.is_empty() || a.contains(char::is_whitespace))
    {
        errs.push(format!(
            "{key}.acr_values: each value must be one non-empty word"
        ));
    }
    Some(StepUp {
        acr_values: acr,
        max_age: r.max_age,
    })
}

/// What the login must ask for so that every route's per-resource token can be had with the
/// refresh token: the distinct resources of the routes' user tokens, and their scopes.
#[must_use]
/// `providers = [...]`: names of `[oidc]` (recorded as `None`) or of `[[oidc.providers]]`.
///
/// Left out, a route takes every provider's sessions — except, when there are several
/// providers, a route on which Cloakroom asks the IdP for a token on the session's behalf
/// (`token = "exchange"`, or a `resource`): that one takes `[oidc]`'s sessions only, so no
/// other provider is asked for the route's resource or audience (at login or later) unless
/// the route names it.
fn route_providers(
    key: &str,
    names: Option<&[String]>,
    token: TokenPolicy,
    user_token: &UserToken,
    oidc: &super::OidcConfig,
    errs: &mut Problems,
) -> Option<Vec<Option<String>>> {
    let Some(names) = names else {
        let asks_idp = matches!(user_token, UserToken::Exchange(_) | UserToken::Resource(_));
        return (asks_idp && token.uses_session() && !oidc.providers.is_empty())
            .then(|| vec![None]);
    };
    if names.is_empty() {
        errs.push(format!(
            "{key}.providers: must not be empty (leave it out to take every provider's sessions)"
        ));
    }
    if !token.uses_session() {
        errs.push(format!(
            "{key}.providers: only on routes that send the user's token (this one sends none of a session's)"
        ));
    }
    let mut out = Vec::new();
    for n in names {
        if n == &oidc.name {
            out.push(None);
        } else if oidc.providers.iter().any(|p| &p.name == n) {
            out.push(Some(n.clone()));
        } else {
            let all: Vec<&str> = oidc.all().map(|p| p.name.as_str()).collect();
            errs.push(format!(
                "{key}.providers: `{n}` is not a provider (they are: {})",
                all.join(", ")
            ));
        }
    }
    Some(out)
}

/// The resources (RFC 8707) and extra scopes a login at `provider` (as recorded: `None` for
/// `[oidc]`) asks for: those of the per-resource routes that take its sessions.
#[must_use]
pub fn login_resources_for(routes: &[Route], provider: Option<&str>) -> (Vec<String>, Vec<String>) {
    let taken: Vec<Route> = routes
        .iter()
        .filter(|r| r.takes_provider(provider))
        .cloned()
        .collect();
    login_resources(&taken)
}

/// The resources (RFC 8707) and extra scopes the per-resource routes need a login to ask for.
#[must_use]
pub fn login_resources(routes: &[Route]) -> (Vec<String>, Vec<String>) {
    let mut resources: Vec<String> = Vec::new();
    let mut scopes: Vec<String> = Vec::new();
    for r in routes {
        if let UserToken::Resource(spec) = &r.user_token {
            if !resources.contains(&spec.resource) {
                resources.push(spec.resource.clone());
            }
            for s in spec.scope.iter().flat_map(|s| s.split(' ')) {
                if !scopes.iter().any(|x| x == s) {
                    scopes.push(s.to_string());
                }
            }
        }
    }
    (resources, scopes)
}

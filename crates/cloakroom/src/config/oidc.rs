//! `[oidc]` and `CLOAKROOM_OIDC_CLIENT_SECRET`: the relying party's registration at the IdP.

use super::{http_url, placeholder_url, read_secret, Env, Problems, Secret};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOidc {
    /// The provider's name (`/auth/login?provider=NAME`); `[oidc]` defaults to `default`.
    name: Option<String>,
    /// `[oidc]` only: the provider a login without `?provider=` uses (default: `[oidc]` itself).
    default_provider: Option<String>,
    /// `[oidc]` only: `[[oidc.providers]]`, more identity providers beside `[oidc]`.
    providers: Vec<RawOidc>,
    issuer: Option<String>,
    client_id: Option<String>,
    scopes: Option<Vec<String>>,
    extra_auth_params: BTreeMap<String, String>,
    client_auth_method: Option<String>,
    client_key_id: Option<String>,
    client_assertion_audience: Option<String>,
    client_cert_file: Option<String>,
    tls_ca_file: Option<String>,
    par: Option<String>,
    dpop: Option<bool>,
    userinfo: Option<bool>,
    profile: Option<String>,
    post_logout_redirect_uri: Option<String>,
    /// `shared` (`<auth_prefix>/callback`) or `own` (`<auth_prefix>/callback/<name>`).
    callback: Option<String>,
    #[serde(with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    clock_skew: Option<Duration>,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic (RFC 6749 §2.3.1), the default.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
    /// A JWT signed with the client's private key (RFC 7523, OIDC Core §9).
    PrivateKeyJwt,
    /// Mutual TLS with a CA-issued certificate (RFC 8705 §2.1).
    TlsClientAuth,
    /// Mutual TLS with a self-signed certificate registered at the IdP (RFC 8705 §2.2).
    SelfSignedTlsClientAuth,
}

impl ClientAuth {
    /// Whether the client authenticates with its TLS certificate.
    #[must_use]
    pub fn is_mtls(self) -> bool {
        matches!(self, Self::TlsClientAuth | Self::SelfSignedTlsClientAuth)
    }

    /// Whether a client secret is needed.
    #[must_use]
    pub fn needs_secret(self) -> bool {
        matches!(self, Self::Basic | Self::Post)
    }
}

/// The `aud` of a `private_key_jwt` client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAudience {
    /// The issuer identifier (FAPI 2.0), the default.
    Issuer,
    /// The token endpoint's URL, for IdPs that want it.
    TokenEndpoint,
}

/// When the authorization request is pushed to the IdP first (RFC 9126, `oidc.par`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Par {
    /// When discovery advertises `pushed_authorization_request_endpoint` (the default).
    Auto,
    /// Always: start-up fails when the IdP has no PAR endpoint.
    Always,
    /// Never: start-up fails when the IdP requires PAR.
    Never,
}

/// Which redirect URI a provider's logins come back to (`callback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackPath {
    /// `<auth_prefix>/callback`, the one URI of a single-provider deployment (`[oidc]`'s
    /// default). Shared by several providers, it takes only authorization responses with an
    /// RFC 9207 `iss` (mix-up defence).
    Shared,
    /// `<auth_prefix>/callback/<name>`, this provider's alone (`[[oidc.providers]]`' default):
    /// a response there is refused unless the login was this provider's.
    Own,
}

/// A security profile the whole configuration is held to (`oidc.profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// No profile beyond Cloakroom's own rules (the default).
    None,
    /// The FAPI 2.0 Security Profile: PAR, PKCE S256, `private_key_jwt`, DPoP-bound tokens,
    /// RFC 9207 `iss` required, ID tokens signed with PS256, ES256 or EdDSA, clock skew at most
    /// 10 s.
    Fapi2,
}

/// The most clock skew FAPI 2.0 lets a client tolerate (Security Profile §5.3.2.1: 10 s).
pub const FAPI2_MAX_CLOCK_SKEW: Duration = Duration::from_secs(10);

/// `[oidc]`, validated: the primary provider, and in [`OidcConfig::providers`] the others.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The provider's name: what `/auth/login?provider=` and `[[routes]] providers` say, and
    /// what a session records (`oidc.name`, default `default`).
    pub name: String,
    /// `[[oidc.providers]]`: more identity providers, each a whole registration of its own
    /// (empty on those entries themselves). `timeout`, `clock_skew`, `tls_ca_file` and
    /// `post_logout_redirect_uri` default to `[oidc]`'s.
    pub providers: Vec<OidcConfig>,
    /// The name of the provider a login without `?provider=` goes to (`oidc.default_provider`,
    /// default: this one).
    pub default_provider: String,
    /// OIDC issuer URL (discovery at `/.well-known/openid-configuration`).
    pub issuer: Url,
    /// The issuer identifier exactly as configured (a URL parser would add or keep a trailing
    /// slash): compared as is with the discovered `issuer`, `iss` claims and RFC 9207 `iss`.
    pub issuer_id: String,
    /// OAuth client id.
    pub client_id: String,
    /// The redirect URI its logins use (`callback`).
    pub callback: CallbackPath,
    /// OAuth client secret.
    pub client_secret: Secret,
    /// Token endpoint authentication.
    pub client_auth: ClientAuth,
    /// Pushed authorization requests.
    pub par: Par,
    /// DPoP-bound tokens (RFC 9449): a key pair per session, proofs at the token endpoint.
    pub dpop: bool,
    /// Fetch the userinfo endpoint at login and merge its claims into the session's (for IdPs
    /// that put profile claims only there).
    pub userinfo: bool,
    /// The security profile (`oidc.profile`).
    pub profile: Profile,
    /// The `private_key_jwt` keys, from `CLOAKROOM_OIDC_CLIENT_KEY`: the first signs.
    pub client_keys: Vec<crate::oidc::ClientKey>,
    /// The `kid` of assertions (default: the signing key's RFC 7638 thumbprint).
    pub client_key_id: Option<String>,
    /// The `aud` of assertions.
    pub client_assertion_audience: AssertionAudience,
    /// The mTLS client certificate (`oidc.client_cert_file` and
    /// `CLOAKROOM_OIDC_CLIENT_CERT_KEY`), when configured: presented to the IdP (RFC 8705),
    /// which may bind tokens to it, and to `upstream_client_cert` routes.
    pub client_cert: Option<crate::oidc::ClientCert>,
    /// Extra CA certificates (PEM) trusted for the IdP's TLS, besides the WebPKI roots.
    pub tls_ca: Option<Vec<u8>>,
    /// Scopes requested at login.
    pub scopes: Vec<String>,
    /// Extra authorization request parameters (e.g. `audience`, `resource`).
    pub extra_auth_params: BTreeMap<String, String>,
    /// Where the IdP sends the browser after end_session.
    pub post_logout_redirect_uri: Url,
    /// Timeout of every IdP call.
    pub timeout: Duration,
    /// Clock skew tolerated on ID token `iat`/`exp`.
    pub clock_skew: Duration,
}

/// Authorization request parameters Cloakroom sets itself.
const RESERVED: [&str; 12] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "request",
    "request_uri",
    "dpop_jkt",
];

/// The most providers one deployment may have (`[oidc]` and `[[oidc.providers]]`).
pub const MAX_PROVIDERS: usize = 16;

/// A provider name: what URLs, environment variable names and session records carry.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `CLOAKROOM_OIDC_<NAME>_`: the environment prefix of a `[[oidc.providers]]` entry's secrets.
#[must_use]
pub fn provider_env_prefix(name: &str) -> String {
    format!(
        "CLOAKROOM_OIDC_{}_",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// Secrets of `[oidc]` whose names a `[[oidc.providers]]` entry takes with its own prefix.
const PROVIDER_SECRETS: [&str; 3] = ["CLIENT_SECRET", "CLIENT_KEY", "CLIENT_CERT_KEY"];

/// Whether `name` is a provider entry's secret variable (`CLOAKROOM_OIDC_<NAME>_CLIENT_SECRET`
/// and the like, or their `_FILE`): not a `CLOAKROOM_<SECTION>_<KEY>` override.
#[must_use]
pub(super) fn is_provider_secret_var(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("CLOAKROOM_OIDC_") else {
        return false;
    };
    let rest = rest.strip_suffix("_FILE").unwrap_or(rest);
    PROVIDER_SECRETS.iter().any(|s| {
        rest.strip_suffix(s)
            .and_then(|p| p.strip_suffix('_'))
            .is_some_and(|p| !p.is_empty())
    })
}

impl OidcConfig {
    /// `[oidc]` with its `[[oidc.providers]]`. `public_url` gives the default
    /// `post_logout_redirect_uri` (its root).
    pub(super) fn build(
        mut raw: RawOidc,
        public_url: &Url,
        env: &Env,
        errs: &mut Problems,
    ) -> Self {
        let raw_providers = std::mem::take(&mut raw.providers);
        let default_provider = raw.default_provider.take();
        let inherited = (
            raw.timeout,
            raw.clock_skew,
            raw.tls_ca_file.clone(),
            raw.post_logout_redirect_uri.clone(),
        );
        let mut primary = Self::build_one(raw, public_url, env, errs);
        if !valid_name(&primary.name) {
            errs.push(format!(
                "oidc.name: `{}` must be 1 to 32 lowercase letters, digits, `-` or `_`",
                primary.name
            ));
        }
        if raw_providers.len() + 1 > MAX_PROVIDERS {
            errs.push(format!(
                "oidc.providers: at most {} providers besides [oidc]",
                MAX_PROVIDERS - 1
            ));
        }
        let mut names = vec![primary.name.clone()];
        let mut issuers = vec![primary.issuer_id.clone()];
        for (i, mut p) in raw_providers.into_iter().enumerate() {
            let key = match p.name.as_deref() {
                Some(n) if valid_name(n) => format!("oidc.providers[{n}]"),
                _ => format!("oidc.providers[{i}]"),
            };
            let name = match p.name.clone() {
                None => {
                    errs.push(format!("{key}.name: required"));
                    format!("provider-{i}")
                }
                Some(n) if !valid_name(&n) => {
                    errs.push(format!(
                        "{key}.name: `{n}` must be 1 to 32 lowercase letters, digits, `-` or `_`"
                    ));
                    n
                }
                Some(n) => n,
            };
            if names.contains(&name) {
                errs.push(format!("{key}.name: `{name}` is already a provider's name"));
            }
            if p.default_provider.is_some() {
                errs.push(format!("{key}.default_provider: only in [oidc]"));
            }
            if !p.providers.is_empty() {
                errs.push(format!("{key}.providers: providers do not nest"));
            }
            p.timeout = p.timeout.or(inherited.0);
            p.clock_skew = p.clock_skew.or(inherited.1);
            p.tls_ca_file = p.tls_ca_file.or_else(|| inherited.2.clone());
            p.post_logout_redirect_uri = p.post_logout_redirect_uri.or_else(|| inherited.3.clone());
            // The entry's secrets under its own names; its problems under its own keys.
            let prefix = provider_env_prefix(&name);
            let mut own_env = env.clone();
            for s in PROVIDER_SECRETS {
                for suffix in ["", "_FILE"] {
                    let general = format!("CLOAKROOM_OIDC_{s}{suffix}");
                    own_env.remove(&general);
                    if let Some(v) = env.get(&format!("{prefix}{s}{suffix}")) {
                        own_env.insert(general, v.clone());
                    }
                }
            }
            let mut own_errs = Vec::new();
            // A provider beside [oidc] comes back to a callback of its own unless it says
            // otherwise (mix-up defence, README "Several identity providers").
            p.callback = p.callback.or_else(|| Some("own".into()));
            let built = Self::build_one(p, public_url, &own_env, &mut own_errs);
            errs.extend(own_errs.into_iter().map(|m| {
                m.replace("oidc.", &format!("{key}."))
                    .replace("CLOAKROOM_OIDC_", &prefix)
            }));
            if built.dpop {
                errs.push(format!(
                    "{key}.dpop: DPoP is for the primary provider ([oidc]) only, for now"
                ));
            }
            if built.profile == Profile::Fapi2 {
                errs.push(format!(
                    "{key}.profile: fapi2 is for the primary provider ([oidc]) only, for now"
                ));
            }
            if !built.issuer_id.is_empty() && issuers.contains(&built.issuer_id) {
                errs.push(format!(
                    "{key}.issuer: `{}` is already a provider's issuer (back-channel logout finds the provider by its issuer)",
                    built.issuer_id
                ));
            }
            issuers.push(built.issuer_id.clone());
            names.push(name.clone());
            primary.providers.push(Self { name, ..built });
        }
        primary.default_provider = match default_provider {
            None => primary.name.clone(),
            Some(d) if names.contains(&d) => d,
            Some(d) => {
                errs.push(format!(
                    "oidc.default_provider: `{d}` is not a provider (they are: {})",
                    names.join(", ")
                ));
                primary.name.clone()
            }
        };
        primary
    }

    /// Every provider: `[oidc]` first, then `[[oidc.providers]]` in order.
    pub fn all(&self) -> impl Iterator<Item = &OidcConfig> {
        std::iter::once(self).chain(self.providers.iter())
    }

    fn build_one(raw: RawOidc, public_url: &Url, env: &Env, errs: &mut Problems) -> Self {
        let issuer = match raw.issuer.as_deref() {
            None => {
                errs.push("oidc.issuer: required".into());
                placeholder_url()
            }
            Some(s) => http_url("oidc.issuer", s, errs).unwrap_or_else(placeholder_url),
        };
        let client_id = raw.client_id.unwrap_or_default();
        if client_id.is_empty() {
            errs.push("oidc.client_id: required".into());
        }
        let client_auth = match raw.client_auth_method.as_deref() {
            None | Some("client_secret_basic") => ClientAuth::Basic,
            Some("client_secret_post") => ClientAuth::Post,
            Some("private_key_jwt") => ClientAuth::PrivateKeyJwt,
            Some("tls_client_auth") => ClientAuth::TlsClientAuth,
            Some("self_signed_tls_client_auth") => ClientAuth::SelfSignedTlsClientAuth,
            Some(o) => {
                errs.push(format!(
                    "oidc.client_auth_method: `{o}` must be client_secret_basic, client_secret_post, private_key_jwt, tls_client_auth or self_signed_tls_client_auth"
                ));
                ClientAuth::Basic
            }
        };
        let client_secret = read_secret(env, "CLOAKROOM_OIDC_CLIENT_SECRET", errs);
        let client_key = read_secret(env, "CLOAKROOM_OIDC_CLIENT_KEY", errs);
        let mut client_keys = Vec::new();
        if client_auth == ClientAuth::PrivateKeyJwt {
            match client_key.as_ref().map(|k| crate::oidc::ClientKey::parse_all(k.expose())) {
                None => errs.push(
                    "CLOAKROOM_OIDC_CLIENT_KEY: required with oidc.client_auth_method = \"private_key_jwt\" (set it, or CLOAKROOM_OIDC_CLIENT_KEY_FILE; `cloakroom keygen --client-key` makes one)"
                        .into(),
                ),
                Some(Err(why)) => errs.push(format!("CLOAKROOM_OIDC_CLIENT_KEY: {why}")),
                Some(Ok(keys)) => client_keys = keys,
            }
        } else if client_auth.needs_secret()
            && client_secret.as_ref().is_none_or(|s| s.expose().is_empty())
        {
            errs.push(
                "CLOAKROOM_OIDC_CLIENT_SECRET: required (set it, or CLOAKROOM_OIDC_CLIENT_SECRET_FILE)"
                    .into(),
            );
        }
        let client_cert_key = read_secret(env, "CLOAKROOM_OIDC_CLIENT_CERT_KEY", errs);
        let client_cert = match (raw.client_cert_file.as_deref(), client_cert_key) {
            (None, None) => {
                if client_auth.is_mtls() {
                    errs.push(
                        "oidc.client_cert_file: required with a tls_client_auth method (with its key in CLOAKROOM_OIDC_CLIENT_CERT_KEY or CLOAKROOM_OIDC_CLIENT_CERT_KEY_FILE)"
                            .into(),
                    );
                }
                None
            }
            (None, Some(_)) => {
                errs.push(
                    "oidc.client_cert_file: required when CLOAKROOM_OIDC_CLIENT_CERT_KEY is set"
                        .into(),
                );
                None
            }
            (Some(_), None) => {
                errs.push(
                    "CLOAKROOM_OIDC_CLIENT_CERT_KEY: required with oidc.client_cert_file (set it, or CLOAKROOM_OIDC_CLIENT_CERT_KEY_FILE)"
                        .into(),
                );
                None
            }
            (Some(path), Some(key)) => match std::fs::read(path) {
                Err(e) => {
                    errs.push(format!("oidc.client_cert_file: cannot read {path}: {e}"));
                    None
                }
                Ok(pem) => match crate::oidc::ClientCert::load(&pem, key.expose()) {
                    Ok(c) => Some(c),
                    Err(("cert", why)) => {
                        errs.push(format!("oidc.client_cert_file: {path}: {why}"));
                        None
                    }
                    Err((_, why)) => {
                        errs.push(format!("CLOAKROOM_OIDC_CLIENT_CERT_KEY: {why}"));
                        None
                    }
                },
            },
        };
        let tls_ca = match raw.tls_ca_file.as_deref() {
            None => None,
            Some(path) => match std::fs::read(path) {
                Ok(pem)
                    if reqwest::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty()) =>
                {
                    Some(pem)
                }
                Ok(_) => {
                    errs.push(format!("oidc.tls_ca_file: {path} holds no PEM certificate"));
                    None
                }
                Err(e) => {
                    errs.push(format!("oidc.tls_ca_file: cannot read {path}: {e}"));
                    None
                }
            },
        };
        let client_assertion_audience = match raw.client_assertion_audience.as_deref() {
            None | Some("issuer") => AssertionAudience::Issuer,
            Some("token_endpoint") => AssertionAudience::TokenEndpoint,
            Some(o) => {
                errs.push(format!(
                    "oidc.client_assertion_audience: `{o}` must be issuer or token_endpoint"
                ));
                AssertionAudience::Issuer
            }
        };
        let par = match raw.par.as_deref() {
            None | Some("auto") => Par::Auto,
            Some("always") => Par::Always,
            Some("never") => Par::Never,
            Some(o) => {
                errs.push(format!("oidc.par: `{o}` must be auto, always or never"));
                Par::Auto
            }
        };
        let profile = match raw.profile.as_deref() {
            None | Some("none") => Profile::None,
            Some("fapi2") => Profile::Fapi2,
            Some(o) => {
                errs.push(format!("oidc.profile: `{o}` must be none or fapi2"));
                Profile::None
            }
        };
        let dpop = raw.dpop.unwrap_or(false);
        let userinfo = raw.userinfo.unwrap_or(false);
        if userinfo && dpop {
            errs.push(
                "oidc.userinfo: not with oidc.dpop = true yet (the userinfo call would need a DPoP proof of its own)".into(),
            );
        }
        let clock_skew = raw.clock_skew.unwrap_or(match profile {
            Profile::Fapi2 => FAPI2_MAX_CLOCK_SKEW,
            Profile::None => Duration::from_secs(60),
        });
        if profile == Profile::Fapi2 {
            // Every piece FAPI 2.0 needs that the configuration does not give, each by its key.
            let fapi = "with oidc.profile = \"fapi2\"";
            if par == Par::Never {
                errs.push(format!(
                    "oidc.par: must be auto or always {fapi} (PAR is required)"
                ));
            }
            if client_auth.needs_secret() {
                errs.push(format!(
                    "oidc.client_auth_method: must be private_key_jwt, tls_client_auth or self_signed_tls_client_auth {fapi} (a client secret is not allowed)"
                ));
            }
            if client_assertion_audience != AssertionAudience::Issuer {
                errs.push(format!(
                    "oidc.client_assertion_audience: must be issuer {fapi} (the issuer identifier is the assertion's only audience)"
                ));
            }
            if !dpop && client_cert.is_none() {
                errs.push(format!(
                    "oidc.dpop: must be true {fapi}, unless oidc.client_cert_file is set for certificate-bound tokens (sender-constrained tokens are required)"
                ));
            }
            if clock_skew > FAPI2_MAX_CLOCK_SKEW {
                errs.push(format!(
                    "oidc.clock_skew: {}s is more than the 10s allowed {fapi}",
                    clock_skew.as_secs()
                ));
            }
        }
        let scopes = raw.scopes.unwrap_or_else(|| {
            ["openid", "profile", "email", "offline_access"]
                .map(String::from)
                .to_vec()
        });
        if !scopes.iter().any(|s| s == "openid") {
            errs.push("oidc.scopes: must include `openid`".into());
        }
        for k in raw.extra_auth_params.keys() {
            if RESERVED.contains(&k.as_str()) {
                errs.push(format!(
                    "oidc.extra_auth_params.{k}: set by Cloakroom itself, cannot be overridden"
                ));
            }
        }
        let callback = match raw.callback.as_deref() {
            None | Some("shared") => CallbackPath::Shared,
            Some("own") => CallbackPath::Own,
            Some(o) => {
                errs.push(format!("oidc.callback: `{o}` must be shared or own"));
                CallbackPath::Shared
            }
        };
        let post_logout_redirect_uri = match raw.post_logout_redirect_uri.as_deref() {
            None => public_url.join("/").unwrap_or_else(|_| public_url.clone()),
            Some(s) => {
                http_url("oidc.post_logout_redirect_uri", s, errs).unwrap_or_else(placeholder_url)
            }
        };
        Self {
            name: raw.name.unwrap_or_else(|| "default".into()),
            providers: Vec::new(),
            default_provider: String::new(),
            issuer_id: raw
                .issuer
                .as_deref()
                .map(str::trim)
                .unwrap_or_default()
                .to_string(),
            issuer,
            client_id,
            callback,
            client_secret: client_secret.unwrap_or_else(|| Secret::new("")),
            client_auth,
            par,
            dpop,
            userinfo,
            profile,
            client_keys,
            client_key_id: raw.client_key_id,
            client_assertion_audience,
            client_cert,
            tls_ca,
            scopes,
            extra_auth_params: raw.extra_auth_params,
            post_logout_redirect_uri,
            timeout: raw.timeout.unwrap_or(Duration::from_secs(10)),
            clock_skew,
        }
    }
}

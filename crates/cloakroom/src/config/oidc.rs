//! `[oidc]` and `CLOAKROOM_OIDC_CLIENT_SECRET`: the relying party's registration at the IdP.

use super::{http_url, placeholder_url, read_secret, Env, Problems, Secret};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOidc {
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

/// `[oidc]`, validated.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// OIDC issuer URL (discovery at `/.well-known/openid-configuration`).
    pub issuer: Url,
    /// The issuer identifier exactly as configured (a URL parser would add or keep a trailing
    /// slash): compared as is with the discovered `issuer`, `iss` claims and RFC 9207 `iss`.
    pub issuer_id: String,
    /// OAuth client id.
    pub client_id: String,
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

impl OidcConfig {
    /// `public_url` gives the default `post_logout_redirect_uri` (its root).
    pub(super) fn build(raw: RawOidc, public_url: &Url, env: &Env, errs: &mut Problems) -> Self {
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
        let post_logout_redirect_uri = match raw.post_logout_redirect_uri.as_deref() {
            None => public_url.join("/").unwrap_or_else(|_| public_url.clone()),
            Some(s) => {
                http_url("oidc.post_logout_redirect_uri", s, errs).unwrap_or_else(placeholder_url)
            }
        };
        Self {
            issuer_id: raw
                .issuer
                .as_deref()
                .map(str::trim)
                .unwrap_or_default()
                .to_string(),
            issuer,
            client_id,
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

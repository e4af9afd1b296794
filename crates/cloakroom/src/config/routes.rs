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

/// Token policy of a route (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPolicy {
    /// A session is needed; the bearer is attached.
    Required,
    /// The bearer is attached when there is a session.
    Optional,
    /// Plain pass-through: no session lookup, no CSRF check.
    None,
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
            o => {
                errs.push(format!(
                    "{key}.token: `{o}` must be required, optional, dpop, bearer or none"
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
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    routes
}

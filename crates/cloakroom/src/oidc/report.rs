//! `cloakroom check`'s report: for each capability, what the configuration asks and what the
//! IdP's discovery document advertises, side by side, with a verdict. It reads the discovery
//! document itself, so it reports even when `OidcClient::discover` refuses to start (that
//! refusal, with its reasons, is printed after it).

use super::{http_client, send_bounded, ExtraMetadata};
use crate::config::{ClientAuth, OidcConfig, Par, Profile};
use crate::error::error_chain;
use serde_json::Value;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLine {
    /// The capability.
    pub what: &'static str,
    /// What the configuration asks.
    pub asks: String,
    /// What the IdP advertises.
    pub idp: String,
    /// `ok`, `MISSING` (the configuration needs what the IdP does not advertise) or `note`.
    pub verdict: &'static str,
}

impl std::fmt::Display for ReportLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<8} {}: config asks {}; the IdP advertises {}",
            self.verdict, self.what, self.asks, self.idp
        )
    }
}

fn list(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    })
}

fn shown(v: Option<&Vec<String>>) -> String {
    v.map_or_else(
        || "nothing (not listed)".into(),
        |l| format!("[{}]", l.join(", ")),
    )
}

/// The report for `config`, from the IdP's discovery document.
///
/// # Errors
/// When the discovery document cannot be fetched or read.
pub async fn capability_report(config: &OidcConfig) -> Result<Vec<ReportLine>, String> {
    let http = http_client(config).map_err(|e| error_chain(&e))?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        config.issuer_id.trim_end_matches('/')
    );
    let resp = send_bounded(http.get(&url))
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let doc: Value =
        serde_json::from_slice(resp.body()).map_err(|e| format!("{url}: not JSON ({e})"))?;
    let mut extra: ExtraMetadata =
        serde_json::from_value(doc.clone()).map_err(|e| format!("{url}: {e}"))?;
    // As `OidcClient::discover` does: an endpoint only in the RFC 8414 metadata is used.
    let mut from_rfc8414 = false;
    if extra.revocation_endpoint.is_none() {
        extra.revocation_endpoint =
            super::revocation::from_authorization_server_metadata(&http, &config.issuer_id).await;
        from_rfc8414 = extra.revocation_endpoint.is_some();
    }
    let mut out = lines(config, &doc, &extra);
    if from_rfc8414 {
        for l in out.iter_mut().filter(|l| l.what == "revocation (RFC 7009)") {
            l.idp = "an endpoint, in its RFC 8414 metadata only (not in OpenID discovery)".into();
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_lines)]
fn lines(config: &OidcConfig, doc: &Value, extra: &ExtraMetadata) -> Vec<ReportLine> {
    let fapi2 = config.profile == Profile::Fapi2;
    let mut out = Vec::new();
    let mut line = |what, asks: String, idp: String, ok: Option<bool>| {
        out.push(ReportLine {
            what,
            asks,
            idp,
            verdict: match ok {
                Some(true) => "ok",
                Some(false) => "MISSING",
                None => "note",
            },
        });
    };

    let method = match config.client_auth {
        ClientAuth::Basic => "client_secret_basic",
        ClientAuth::Post => "client_secret_post",
        ClientAuth::PrivateKeyJwt => "private_key_jwt",
        ClientAuth::TlsClientAuth => "tls_client_auth",
        ClientAuth::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
    };
    let methods = list(&doc["token_endpoint_auth_methods_supported"]);
    // RFC 8414: absent means client_secret_basic only.
    let offered = methods
        .as_ref()
        .map_or(method == "client_secret_basic", |m| {
            m.iter().any(|x| x == method)
        });
    line(
        "client authentication",
        method.into(),
        shown(methods.as_ref()),
        Some(offered),
    );
    if config.client_auth == ClientAuth::PrivateKeyJwt {
        let algs = list(&doc["token_endpoint_auth_signing_alg_values_supported"]);
        let kind = config.client_keys.first().map(super::ClientKey::kind);
        let usable = kind.map(|k| super::client_auth::choose_alg(k, algs.as_deref()));
        let asks = match (kind, &usable) {
            (Some(k), Some(Ok(a))) => format!("a {k:?} key, signing {a:?}"),
            (Some(k), _) => format!("a {k:?} key"),
            (None, _) => "a key".into(),
        };
        let fits = usable.as_ref().is_some_and(|r| {
            r.as_ref()
                .is_ok_and(|a| !(fapi2 && *a == jsonwebtoken::Algorithm::RS256))
        });
        line(
            "client assertion algorithm",
            asks,
            shown(algs.as_ref()),
            Some(fits),
        );
    }
    let pkce = list(&doc["code_challenge_methods_supported"]);
    line(
        "PKCE",
        "S256".into(),
        shown(pkce.as_ref()),
        Some(pkce.as_ref().is_none_or(|m| m.iter().any(|x| x == "S256"))),
    );
    let par_asks = match (config.par, fapi2) {
        (_, true) => "always (fapi2)",
        (Par::Auto, _) => "auto",
        (Par::Always, _) => "always",
        (Par::Never, _) => "never",
    };
    let par_idp = match (
        &extra.pushed_authorization_request_endpoint,
        extra.require_pushed_authorization_requests,
    ) {
        (Some(_), true) => "an endpoint, and requires it",
        (Some(_), false) => "an endpoint",
        (None, _) => "no endpoint",
    };
    let par_ok = match (config.par, fapi2) {
        (_, true) | (Par::Always, _) => extra.pushed_authorization_request_endpoint.is_some(),
        (Par::Never, _) => !extra.require_pushed_authorization_requests,
        (Par::Auto, _) => {
            extra.pushed_authorization_request_endpoint.is_some()
                || !extra.require_pushed_authorization_requests
        }
    };
    line(
        "PAR (RFC 9126)",
        par_asks.into(),
        par_idp.into(),
        Some(par_ok),
    );
    let dpop_algs = extra.dpop_signing_alg_values_supported.as_ref();
    line(
        "DPoP (RFC 9449)",
        if config.dpop { "on, ES256" } else { "off" }.into(),
        shown(dpop_algs),
        config
            .dpop
            .then(|| dpop_algs.is_some_and(|a| a.iter().any(|x| x == "ES256"))),
    );
    let aliases = extra.mtls_endpoint_aliases.is_some();
    line(
        "mTLS (RFC 8705)",
        match (&config.client_cert, config.client_auth.is_mtls()) {
            (Some(c), true) => format!("client authentication by certificate {}", c.thumbprint()),
            (Some(c), false) => format!("certificate {} presented", c.thumbprint()),
            (None, _) => "no client certificate".into(),
        },
        format!(
            "{}; certificate-bound tokens {}",
            if aliases {
                "mtls_endpoint_aliases"
            } else {
                "no mtls_endpoint_aliases"
            },
            if extra.tls_client_certificate_bound_access_tokens {
                "yes"
            } else {
                "no"
            }
        ),
        config.client_cert.as_ref().map(|_| {
            // Certificate-bound tokens are what FAPI 2.0 needs of mTLS without DPoP.
            !fapi2 || config.dpop || extra.tls_client_certificate_bound_access_tokens
        }),
    );
    line(
        "iss in authorization responses (RFC 9207)",
        if fapi2 {
            "required (fapi2)"
        } else {
            "checked when present or promised"
        }
        .into(),
        if extra.authorization_response_iss_parameter_supported {
            "yes"
        } else {
            "no"
        }
        .into(),
        fapi2
            .then_some(extra.authorization_response_iss_parameter_supported)
            .or(Some(true)),
    );
    let id_algs = list(&doc["id_token_signing_alg_values_supported"]);
    let allowed: &[&str] = if fapi2 {
        &super::id_token::FAPI2_ID_TOKEN_ALGS
    } else {
        &[
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ]
    };
    line(
        "ID token signature",
        format!("one of [{}]", allowed.join(", ")),
        shown(id_algs.as_ref()),
        Some(
            id_algs
                .as_ref()
                .is_some_and(|l| l.iter().any(|a| allowed.contains(&a.as_str()))),
        ),
    );
    line(
        "revocation (RFC 7009)",
        "used at logout and when a session ends".into(),
        if extra.revocation_endpoint.is_some() {
            "an endpoint"
        } else {
            "no endpoint: tokens outlive their sessions until they expire"
        }
        .into(),
        extra.revocation_endpoint.is_some().then_some(true),
    );
    let backchannel = doc["backchannel_logout_supported"] == true;
    line(
        "back-channel logout",
        "accepted at <auth_prefix>/backchannel-logout".into(),
        if backchannel {
            "supported"
        } else {
            "not supported"
        }
        .into(),
        backchannel.then_some(true),
    );
    if config.userinfo {
        let has = doc["userinfo_endpoint"].is_string();
        line(
            "userinfo (oidc.userinfo)",
            "claims fetched at login".into(),
            if has {
                "an endpoint"
            } else {
                "no userinfo_endpoint"
            }
            .into(),
            Some(has),
        );
    }
    line(
        "RP-initiated logout",
        "end_session_url after /auth/logout".into(),
        if doc["end_session_endpoint"].is_string() {
            "an end_session_endpoint"
        } else {
            "no end_session_endpoint: logout ends only Cloakroom's session"
        }
        .into(),
        doc["end_session_endpoint"].is_string().then_some(true),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_extra: &str, dpop: bool) -> crate::config::Config {
        let mut env: crate::config::Env = [
            ("CLOAKROOM_OIDC_CLIENT_SECRET", "s"),
            (
                "CLOAKROOM_COOKIE_KEYS",
                "1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if dpop {
            env.insert("CLOAKROOM_OIDC_DPOP".into(), "true".into());
        }
        let toml = format!("[server]\npublic_url = \"https://app.example\"\n[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\n{toml_extra}");
        crate::config::Config::from_toml(&toml, &env).expect("config")
    }

    /// The verdict of each line of the report for `doc`.
    fn verdicts(config: &crate::config::Config, doc: &Value) -> Vec<ReportLine> {
        let extra: ExtraMetadata = serde_json::from_value(doc.clone()).expect("extra");
        lines(&config.oidc, doc, &extra)
    }

    fn verdict(report: &[ReportLine], what: &str) -> &'static str {
        report
            .iter()
            .find(|l| l.what == what)
            .map(|l| l.verdict)
            .unwrap_or_else(|| panic!("{what} not in {report:?}"))
    }

    #[test]
    fn missing_pieces_are_marked_and_notes_are_not_failures() {
        let report = verdicts(
            &config("", true),
            &serde_json::json!({
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }),
        );
        assert_eq!(verdict(&report, "client authentication"), "ok");
        assert_eq!(verdict(&report, "DPoP (RFC 9449)"), "MISSING");
        assert_eq!(verdict(&report, "ID token signature"), "ok");
        assert_eq!(verdict(&report, "revocation (RFC 7009)"), "note");
        assert!(report.iter().all(|l| !l.to_string().is_empty()));
    }

    #[test]
    fn userinfo_needs_its_endpoint_and_eddsa_is_a_usable_signature() {
        let config = config("userinfo = true\n", false);
        for (doc, userinfo) in [
            (
                serde_json::json!({"id_token_signing_alg_values_supported": ["EdDSA"]}),
                "MISSING",
            ),
            (
                serde_json::json!({
                    "id_token_signing_alg_values_supported": ["EdDSA"],
                    "userinfo_endpoint": "https://idp.example/me",
                }),
                "ok",
            ),
        ] {
            let report = verdicts(&config, &doc);
            assert_eq!(verdict(&report, "ID token signature"), "ok");
            assert_eq!(verdict(&report, "userinfo (oidc.userinfo)"), userinfo);
        }
    }
}

//! What the IdP is told when a session ends: RFC 7009 revocation and the RP-initiated logout
//! (end-session) URL, which `openidconnect`'s `LogoutRequest` builds.
//!
//! Revocation stays hand-written (one form POST, through the same bounded adapter as every
//! other IdP call), not `openidconnect`'s `Client::revoke_token`, because that refuses every
//! revocation endpoint that is not `https` (`ConfigurationError::InsecureUrl`, checked inside
//! `oauth2` with no way around it), while `oidc.issuer` may be `http` (a loopback IdP: the
//! demo, the test IdP): every revocation would fail there, and no test would exercise the
//! code production runs. It would also count only `200` as success (this code accepts any
//! `2xx`) and drop the status code from the failure logged.

use super::id_token::IdToken;
use super::{send_bounded, OidcClient};
use crate::error::error_chain;
use crate::secret::Secret;
use crate::session::Tokens;
use openidconnect::{ClientId, EndSessionUrl, LogoutRequest, PostLogoutRedirectUrl};
use url::Url;

impl OidcClient {
    /// The RP-initiated logout URL (OIDC RP-Initiated Logout 1.0 §2), if the IdP has one.
    #[must_use]
    pub fn end_session_url(&self, id_token_hint: Option<&Secret>) -> Option<Url> {
        let endpoint = self.end_session.clone()?;
        Some(end_session_url(
            endpoint,
            id_token_hint,
            &self.post_logout_redirect_uri,
            &self.client_id,
        ))
    }

    /// Revokes the refresh token, then the access token (RFC 7009 §2.1), if the IdP has a
    /// revocation endpoint. Failures are logged and counted, never returned: logout goes on.
    pub async fn revoke_tokens(&self, tokens: &Tokens) {
        let Some(endpoint) = &self.revocation else {
            crate::metrics::revocation_unavailable();
            tracing::warn!(
                event = "revocation_unavailable",
                "the IdP has no revocation endpoint: the ended session's tokens could not be revoked (they lapse when they expire)"
            );
            return;
        };
        let mut list: Vec<(&Secret, &str)> = Vec::with_capacity(2 + tokens.derived.len());
        // The routes' own tokens first: revoking the refresh token may end the grant they
        // came from, and with it the IdP's record of them.
        for d in tokens.derived.values() {
            list.push((&d.access_token, "access_token"));
        }
        if let Some(rt) = &tokens.refresh_token {
            list.push((rt, "refresh_token"));
        }
        list.push((&tokens.access_token, "access_token"));
        for (token, hint) in list {
            self.revoke_logged(endpoint, token, hint).await;
        }
    }

    /// Revokes only the routes' own tokens (`Tokens::derived`).
    pub async fn revoke_derived(&self, tokens: &Tokens) {
        let Some(endpoint) = &self.revocation else {
            return;
        };
        for d in tokens.derived.values() {
            self.revoke_logged(endpoint, &d.access_token, "access_token")
                .await;
        }
    }

    /// One revocation, its failure logged and counted. An IdP that cannot revoke the token's
    /// type (RFC 7009 §2.2.1 `unsupported_token_type`: oidc-provider for JWT access tokens,
    /// which live until they expire) has not failed: that is logged at info, not counted.
    async fn revoke_logged(&self, endpoint: &Url, token: &Secret, hint: &str) {
        match self.revoke_one(endpoint, token, hint).await {
            Ok(Revoked::Yes) => {}
            Ok(Revoked::Unsupported) => tracing::info!(
                event = "revocation_unsupported",
                token_type = hint,
                "the IdP cannot revoke this token; it lapses when it expires"
            ),
            Err(reason) => {
                crate::metrics::revocation_failed();
                tracing::warn!(event = "revocation_failed", token_type = hint, %reason, "token revocation failed");
            }
        }
    }

    async fn revoke_one(
        &self,
        endpoint: &Url,
        token: &Secret,
        hint: &str,
    ) -> Result<Revoked, String> {
        let form = vec![
            ("token".to_string(), token.expose().to_string()),
            ("token_type_hint".to_string(), hint.to_string()),
        ];
        let req = self.credentials.request(
            self.http.post(endpoint.clone()),
            &self.client_id,
            form,
            crate::session::now_unix(),
        )?;
        let call = crate::trace::idp_call!("idp.revoke", send_bounded(req), token_type_hint = hint);
        let resp = call.await.map_err(|e| error_chain(&e))?;
        if resp.status().is_success() {
            Ok(Revoked::Yes)
        } else if unsupported_token_type(resp.status(), resp.body()) {
            Ok(Revoked::Unsupported)
        } else {
            Err(format!("IdP answered {}", resp.status()))
        }
    }
}

/// What the IdP did with a token sent for revocation.
enum Revoked {
    /// Revoked (or already dead: RFC 7009 §2.2 answers 200 either way).
    Yes,
    /// The IdP does not revoke tokens of this type.
    Unsupported,
}

/// A `400` whose JSON error is `unsupported_token_type` (RFC 7009 §2.2.1).
fn unsupported_token_type(status: http::StatusCode, body: &[u8]) -> bool {
    status == http::StatusCode::BAD_REQUEST
        && serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|v| v["error"] == "unsupported_token_type")
}

/// The end-session URL: `id_token_hint` (the session's ID token), `client_id` and
/// `post_logout_redirect_uri`, added to the endpoint's own query; no `state`.
fn end_session_url(
    endpoint: EndSessionUrl,
    id_token_hint: Option<&Secret>,
    post_logout_redirect_uri: &Url,
    client_id: &str,
) -> Url {
    let mut request = LogoutRequest::from(endpoint)
        .set_client_id(ClientId::new(client_id.to_string()))
        .set_post_logout_redirect_uri(PostLogoutRedirectUrl::from_url(
            post_logout_redirect_uri.clone(),
        ));
    if let Some(hint) = id_token_hint {
        // Every stored ID token verified, so it parses; `LogoutRequest` takes only a typed one.
        match hint.expose().parse::<IdToken>() {
            Ok(token) => request = request.set_id_token_hint(&token),
            Err(_) => tracing::warn!("the session's ID token does not parse: no id_token_hint"),
        }
    }
    request.http_get_url()
}

/// The revocation endpoint from the IdP's OAuth 2.0 Authorization Server Metadata (RFC 8414),
/// for an IdP whose OpenID discovery document does not list it (django-oauth-toolkit lists it
/// only there). Tried at the RFC 8414 §3.1 location (`/.well-known/oauth-authorization-server`
/// inserted before the issuer's path), then appended to the issuer; a document whose `issuer`
/// is not exactly ours is ignored (§3.3). `None` when neither has one.
pub(super) async fn from_authorization_server_metadata(
    http: &reqwest::Client,
    issuer: &str,
) -> Option<Url> {
    let parsed = Url::parse(issuer).ok()?;
    let path = parsed.path().trim_end_matches('/');
    let mut inserted = parsed.clone();
    inserted.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    inserted.set_query(None);
    let appended = format!(
        "{}/.well-known/oauth-authorization-server",
        issuer.trim_end_matches('/')
    );
    let mut tried = vec![inserted.to_string()];
    if appended != tried[0] {
        tried.push(appended);
    }
    #[derive(serde::Deserialize)]
    struct Rfc8414 {
        issuer: String,
        revocation_endpoint: Option<Url>,
    }
    for url in tried {
        let Ok(resp) = send_bounded(http.get(&url)).await else {
            continue;
        };
        if !resp.status().is_success() {
            continue;
        }
        match serde_json::from_slice::<Rfc8414>(resp.body()) {
            Ok(m) if m.issuer == issuer => {
                if let Some(e) = m.revocation_endpoint {
                    tracing::info!(
                        endpoint = %e,
                        "the revocation endpoint comes from the IdP's RFC 8414 metadata (its OpenID discovery does not list one)"
                    );
                    return Some(e);
                }
                return None;
            }
            Ok(m) => tracing::warn!(
                url = %url,
                issuer = %m.issuer,
                "RFC 8414 metadata for another issuer ignored"
            ),
            Err(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    /// The end-session URL as it was built by hand before `LogoutRequest`.
    fn before(endpoint: &Url, hint: Option<&Secret>, post_logout: &Url, client_id: &str) -> Url {
        let mut url = endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(h) = hint {
                q.append_pair("id_token_hint", h.expose());
            }
            q.append_pair("post_logout_redirect_uri", post_logout.as_str());
            q.append_pair("client_id", client_id);
        }
        url
    }

    #[test]
    fn unsupported_token_type_is_only_that_400() {
        let body = br#"{"error":"unsupported_token_type","error_description":"x"}"#;
        assert!(unsupported_token_type(http::StatusCode::BAD_REQUEST, body));
        assert!(!unsupported_token_type(
            http::StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_request"}"#
        ));
        assert!(!unsupported_token_type(
            http::StatusCode::UNAUTHORIZED,
            body
        ));
        assert!(!unsupported_token_type(
            http::StatusCode::BAD_REQUEST,
            b"<html>"
        ));
    }

    fn id_token() -> Secret {
        let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let header = enc(serde_json::json!({ "alg": "RS256", "kid": "k1", "typ": "JWT" }));
        let payload = enc(serde_json::json!({
            "iss": "https://idp.example.com", "aud": "client", "exp": 2_000_000_000,
            "iat": 1_900_000_000, "sub": "alice", "sid": "s1", "groups": ["a"],
        }));
        let signature = URL_SAFE_NO_PAD.encode((0..=255u8).collect::<Vec<_>>());
        Secret::new(format!("{header}.{payload}.{signature}"))
    }

    /// The endpoint's own query first, then ours, each as (name, value).
    fn pairs(url: &Url) -> Vec<(String, String)> {
        url.query_pairs()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }

    #[test]
    fn the_end_session_url_has_the_parameters_it_had_before() {
        let token = id_token();
        for endpoint in [
            "https://idp.example.com/session/end",
            "https://idp.example.com/oidc/logout?tenant=a%20b&x=1",
        ] {
            let endpoint = Url::parse(endpoint).expect("url");
            for post_logout in [
                "https://app.example.com/",
                "https://app.example.com/bye?a=1&b=%2F",
            ] {
                let post_logout = Url::parse(post_logout).expect("url");
                for hint in [Some(&token), None] {
                    for client_id in ["client", "my client&id=é"] {
                        let old = before(&endpoint, hint, &post_logout, client_id);
                        let new = end_session_url(
                            EndSessionUrl::from_url(endpoint.clone()),
                            hint,
                            &post_logout,
                            client_id,
                        );
                        assert_eq!(
                            new[..url::Position::AfterPath],
                            old[..url::Position::AfterPath]
                        );
                        // The same parameters; only their order differs (`LogoutRequest` puts
                        // `client_id` before `post_logout_redirect_uri`).
                        let (mut old_pairs, mut new_pairs) = (pairs(&old), pairs(&new));
                        let own = endpoint.query_pairs().count();
                        assert_eq!(new_pairs[..own], old_pairs[..own], "endpoint query first");
                        old_pairs.sort();
                        new_pairs.sort();
                        assert_eq!(new_pairs, old_pairs);
                        assert!(new.fragment().is_none());
                    }
                }
            }
        }
    }

    #[test]
    fn the_id_token_hint_is_the_stored_token_itself() {
        let token = id_token();
        let endpoint = EndSessionUrl::new("https://idp.example.com/end".into()).expect("url");
        let post_logout = Url::parse("https://app.example.com/").expect("url");
        let url = end_session_url(endpoint, Some(&token), &post_logout, "client");
        let hint = url
            .query_pairs()
            .find(|(k, _)| k == "id_token_hint")
            .map(|(_, v)| v.into_owned());
        assert_eq!(hint.as_deref(), Some(token.expose()));
    }
}

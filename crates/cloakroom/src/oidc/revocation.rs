//! What the IdP is told when a session ends: RFC 7009 revocation and the RP-initiated logout
//! (end-session) URL.

use super::{error_chain, OidcClient};
use crate::config::ClientAuth;
use crate::secret::Secret;
use crate::session::Tokens;
use url::Url;

impl OidcClient {
    /// The RP-initiated logout URL (OIDC RP-Initiated Logout 1.0 §2), if the IdP has one.
    #[must_use]
    pub fn end_session_url(&self, id_token_hint: Option<&Secret>) -> Option<Url> {
        let mut url = self.end_session.clone()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(h) = id_token_hint {
                q.append_pair("id_token_hint", h.expose());
            }
            q.append_pair(
                "post_logout_redirect_uri",
                self.post_logout_redirect_uri.as_str(),
            );
            q.append_pair("client_id", &self.client_id);
        }
        Some(url)
    }

    /// Revokes the refresh token, then the access token (RFC 7009 §2.1), if the IdP has a
    /// revocation endpoint. Failures are logged and counted, never returned: logout goes on.
    pub async fn revoke_tokens(&self, tokens: &Tokens) {
        let Some(endpoint) = &self.revocation else {
            return;
        };
        let mut list: Vec<(&Secret, &str)> = Vec::with_capacity(2);
        if let Some(rt) = &tokens.refresh_token {
            list.push((rt, "refresh_token"));
        }
        list.push((&tokens.access_token, "access_token"));
        for (token, hint) in list {
            if let Err(reason) = self.revoke_one(endpoint, token, hint).await {
                crate::metrics::revocation_failed();
                tracing::warn!(event = "revocation_failed", token_type = hint, %reason, "token revocation failed");
            }
        }
    }

    async fn revoke_one(&self, endpoint: &Url, token: &Secret, hint: &str) -> Result<(), String> {
        let mut form: Vec<(&str, &str)> =
            vec![("token", token.expose()), ("token_type_hint", hint)];
        let mut req = self.http.post(endpoint.clone());
        match self.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: form-urlencode id and secret before Basic.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.client_id), Some(enc(self.client_secret.expose())));
            }
            ClientAuth::Post => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", self.client_secret.expose()));
            }
        }
        let resp = req.form(&form).send().await.map_err(|e| error_chain(&e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("IdP answered {}", resp.status()))
        }
    }
}

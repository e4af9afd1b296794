//! Back-channel logout tokens (OIDC Back-Channel Logout 1.0 §2.6).
//!
//! Checked with `jsonwebtoken`, not `openidconnect`: it has no logout-token type, and its JWT
//! type and claims verifier (`JsonWebToken`, `JwtClaimsVerifier`) are private to the crate,
//! exposed only through ID tokens and UserInfo responses. The keys come from the same JWKS
//! cache as the ID tokens' (`jwks`), with a re-fetch budget of their own.

use super::jwks::Budget;
use super::OidcClient;
use crate::session::now_unix;
use serde::Deserialize;

/// The checked content of a back-channel logout token.
#[derive(Debug, Clone)]
pub struct LogoutClaims {
    /// Subject, if given.
    pub sub: Option<String>,
    /// IdP session id, if given.
    pub sid: Option<String>,
    /// Token id, for replay detection.
    pub jti: String,
}

#[derive(Debug, Deserialize)]
struct LogoutClaimsRaw {
    iat: i64,
    jti: Option<String>,
    sub: Option<String>,
    sid: Option<String>,
    nonce: Option<serde_json::Value>,
    events: Option<serde_json::Map<String, serde_json::Value>>,
}

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Logout tokens older than this (plus skew) are refused; their `jti`s are remembered as long.
pub const LOGOUT_TOKEN_MAX_AGE: i64 = 300;

const LOGOUT_ALGS: [jsonwebtoken::Algorithm; 8] = [
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::RS384,
    jsonwebtoken::Algorithm::RS512,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::PS384,
    jsonwebtoken::Algorithm::PS512,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
];

impl OidcClient {
    /// Validates a back-channel logout token (OIDC Back-Channel Logout 1.0 §2.6): signature by a
    /// JWKS key (asymmetric only; an unknown `kid` triggers one rate-limited re-fetch), `iss`,
    /// `aud`, `iat` (bounded age), `exp` if present, the logout `events` claim, `sid` and/or
    /// `sub`, no `nonce`, and a `jti` (replay is checked by the caller against the store).
    ///
    /// # Errors
    /// A short reason, never echoing the token.
    pub async fn validate_logout_token(&self, token: &str) -> Result<LogoutClaims, String> {
        if token.len() > 16 * 1024 {
            return Err("token too large".into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        if !LOGOUT_ALGS.contains(&header.alg) {
            return Err(format!("algorithm {:?} not allowed", header.alg));
        }
        let mut refetched = false;
        let key = loop {
            let keys = self.jwks.current();
            let found = keys
                .jwt
                .iter()
                .find(|k| match (&header.kid, &k.common.key_id) {
                    (Some(want), Some(have)) => want == have,
                    (None, _) => keys.jwt.len() == 1,
                    _ => false,
                });
            if let Some(k) = found {
                break jsonwebtoken::DecodingKey::from_jwk(k).map_err(|e| format!("key: {e}"))?;
            }
            if refetched || !self.jwks.refetch(&keys, Budget::Anonymous).await {
                return Err("unknown key id".into());
            }
            refetched = true;
        };
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_issuer(&[self.issuer.as_str()]);
        v.set_audience(&[self.client_id.as_str()]);
        v.set_required_spec_claims(&["iss", "aud", "iat"]);
        v.leeway = self.clock_skew.as_secs();
        let data = jsonwebtoken::decode::<LogoutClaimsRaw>(token, &key, &v)
            .map_err(|e| format!("{:?}", e.kind()))?;
        let c = data.claims;
        let now = now_unix();
        let skew = i64::try_from(self.clock_skew.as_secs()).unwrap_or(60);
        if c.iat > now + skew {
            return Err("iat in the future".into());
        }
        if c.iat < now - LOGOUT_TOKEN_MAX_AGE - skew {
            return Err("iat too old".into());
        }
        if c.nonce.is_some() {
            return Err("nonce present".into());
        }
        let events_ok = c
            .events
            .as_ref()
            .and_then(|e| e.get(BACKCHANNEL_EVENT))
            .is_some_and(serde_json::Value::is_object);
        if !events_ok {
            return Err("missing back-channel logout event".into());
        }
        let jti = c.jti.filter(|j| !j.is_empty()).ok_or("missing jti")?;
        if c.sid.is_none() && c.sub.is_none() {
            return Err("neither sid nor sub".into());
        }
        Ok(LogoutClaims {
            sub: c.sub,
            sid: c.sid,
            jti,
        })
    }
}

//! ID-token verification (OIDC Core 3.1.3.7, 12.2).

use super::jwks::Budget;
use super::OidcClient;
use crate::error::Error;
use crate::secret::Secret;
use crate::session::now_unix;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreIdToken, CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::{AccessTokenHash, ClientId, ClientSecret, IssuerUrl, Nonce};

/// Asymmetric algorithms we accept for ID tokens; never `none`, never HMAC.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 8] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

/// `(sub, sid, claims)` of a verified ID token.
type VerifiedIdToken = (
    String,
    Option<String>,
    serde_json::Map<String, serde_json::Value>,
);

enum VerifyError {
    UnknownKey(String),
    Invalid(String),
}

impl OidcClient {
    fn id_token_verifier(
        &self,
        keys: CoreJsonWebKeySet,
    ) -> openidconnect::core::CoreIdTokenVerifier<'static> {
        let skew = self.clock_skew;
        openidconnect::core::CoreIdTokenVerifier::new_confidential_client(
            ClientId::new(self.client_id.clone()),
            ClientSecret::new(self.client_secret.expose().to_string()),
            IssuerUrl::new(self.issuer.clone())
                .unwrap_or_else(|_| unreachable!("validated at discovery")),
            keys,
        )
        .set_allowed_algs(ALLOWED_ALGS)
        .set_issue_time_verifier_fn(move |iat| {
            let now = now_unix();
            let skew = i64::try_from(skew.as_secs()).unwrap_or(60);
            let iat = iat.timestamp();
            if iat > now + skew {
                Err(format!("issued {}s in the future", iat - now))
            } else if iat < now - 600 - skew {
                Err("issued too long ago".into())
            } else {
                Ok(())
            }
        })
    }

    /// Verifies an ID token (OIDC Core 3.1.3.7). `nonce: None` is the refresh case (OIDC Core
    /// 12.2), where no nonce is expected. A `kid` we don't know triggers one rate-limited JWKS
    /// re-fetch (key rotation at the IdP).
    pub(super) async fn verify_id_token(
        &self,
        id_token: &CoreIdToken,
        access_token: &openidconnect::AccessToken,
        nonce: Option<&Secret>,
    ) -> Result<VerifiedIdToken, Error> {
        let mut refetched = false;
        loop {
            let keys = self.jwks.current();
            match self.verify_with(&keys.oidc, id_token, access_token, nonce) {
                Err(VerifyError::UnknownKey(e)) if !refetched => {
                    refetched = true;
                    if !self.jwks.refetch(&keys, Budget::Idp).await {
                        return Err(Error::InvalidIdToken(e));
                    }
                }
                Err(VerifyError::UnknownKey(e) | VerifyError::Invalid(e)) => {
                    return Err(Error::InvalidIdToken(e))
                }
                Ok(v) => return Ok(v),
            }
        }
    }

    fn verify_with(
        &self,
        keys: &CoreJsonWebKeySet,
        id_token: &CoreIdToken,
        access_token: &openidconnect::AccessToken,
        nonce: Option<&Secret>,
    ) -> Result<VerifiedIdToken, VerifyError> {
        let verifier = self.id_token_verifier(keys.clone());
        let claims = match nonce {
            Some(n) => id_token.claims(&verifier, &Nonce::new(n.expose().to_string())),
            None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(|e| match e {
            openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            ) => VerifyError::UnknownKey(e.to_string()),
            other => VerifyError::Invalid(other.to_string()),
        })?;
        let invalid = |e: &dyn std::fmt::Display| VerifyError::Invalid(e.to_string());
        // OIDC Core 3.1.3.7 (4, 5): `azp`, when present, must be our client id.
        if let Some(azp) = claims.authorized_party() {
            if azp.as_str() != self.client_id {
                return Err(VerifyError::Invalid("azp is not this client".into()));
            }
        }
        // at_hash, when present, binds the access token to this ID token (3.1.3.8).
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token.signing_alg().map_err(|e| invalid(&e))?;
            let key = id_token.signing_key(&verifier).map_err(|e| invalid(&e))?;
            let actual =
                AccessTokenHash::from_token(access_token, alg, key).map_err(|e| invalid(&e))?;
            if actual != *expected {
                return Err(VerifyError::Invalid("at_hash does not match".into()));
            }
        }
        let sub = claims.subject().to_string();
        if sub.is_empty() {
            return Err(VerifyError::Invalid("empty sub".into()));
        }
        // The signature is verified: now read every claim, including non-standard ones.
        let raw = id_token.to_string();
        let mut map = raw
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Map<_, _>>(&b).ok())
            .ok_or_else(|| VerifyError::Invalid("unreadable payload".into()))?;
        for k in ["nonce", "at_hash", "c_hash"] {
            map.remove(k);
        }
        let sid = map.get("sid").and_then(|v| v.as_str()).map(String::from);
        Ok((sub, sid, map))
    }
}

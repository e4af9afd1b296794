//! ID-token verification (OIDC Core 3.1.3.7, 12.2).

use super::jwks::Budget;
use super::OidcClient;
use crate::error::Error;
use crate::secret::Secret;
use crate::session::now_unix;
use openidconnect::core::{
    CoreGenderClaim, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{AccessTokenHash, AdditionalClaims, ClientId, IssuerUrl, Nonce};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Every ID-token claim `openidconnect` does not model (`sid` among them), as the IdP sent it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct ExtraClaims {
    #[serde(flatten)]
    other: Map<String, Value>,
}
impl AdditionalClaims for ExtraClaims {}

impl ExtraClaims {
    /// The `sid` claim (OIDC Back-Channel Logout 1.0 §2.1), if it is a string.
    fn sid(&self) -> Option<&str> {
        self.other.get("sid").and_then(Value::as_str)
    }
}

/// Token-response fields besides the standard ones that Cloakroom reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub(super) struct ExtraTokenFields {
    /// The refresh token's lifetime in seconds, where the IdP says it (Keycloak and others:
    /// not standard, so only ever a bound, never required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) refresh_expires_in: Option<u64>,
}
impl openidconnect::ExtraTokenFields for ExtraTokenFields {}

/// An ID token with our [`ExtraClaims`].
pub(super) type IdToken = openidconnect::IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// The `id_token` field of a token response, with our [`ExtraClaims`].
pub(super) type IdTokenFields = openidconnect::IdTokenFields<
    ExtraClaims,
    ExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

type IdTokenClaims = openidconnect::IdTokenClaims<ExtraClaims, CoreGenderClaim>;

/// The ID-token algorithms FAPI 2.0 allows (Security Profile §5.4), by their JOSE names.
pub(super) const FAPI2_ID_TOKEN_ALGS: [&str; 3] = ["PS256", "ES256", "EdDSA"];

/// [`FAPI2_ID_TOKEN_ALGS`] as openidconnect names them.
const FAPI2_ALGS: [CoreJwsSigningAlgorithm; 3] = [
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Asymmetric algorithms we accept for ID tokens; never `none`, never HMAC.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    // Ed25519 (RFC 8037); found missing by the provider matrix (tests/it/matrix.rs).
    CoreJwsSigningAlgorithm::EdDsa,
];

/// `(sub, sid, claims)` of a verified ID token.
type VerifiedIdToken = (String, Option<String>, Map<String, Value>);

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
        // A public-client verifier: the secret would only check HMAC-signed ID tokens, and
        // only asymmetric algorithms are allowed (and with private_key_jwt there is none).
        openidconnect::core::CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.client_id.clone()),
            IssuerUrl::new(self.issuer.clone())
                .unwrap_or_else(|_| unreachable!("validated at discovery")),
            keys,
        )
        .set_allowed_algs(if self.fapi2 {
            FAPI2_ALGS.to_vec()
        } else {
            ALLOWED_ALGS.to_vec()
        })
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
        id_token: &IdToken,
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
        id_token: &IdToken,
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
        let sid = claims.additional_claims().sid().map(String::from);
        let claims =
            user_claims(claims).ok_or_else(|| VerifyError::Invalid("unreadable claims".into()))?;
        Ok((sub, sid, claims))
    }
}

/// The claims the user endpoint shows: every claim of the (verified) ID token, minus `nonce`,
/// `at_hash` and `c_hash` (SPEC §1).
fn user_claims(claims: &IdTokenClaims) -> Option<Map<String, Value>> {
    let Value::Object(mut map) = serde_json::to_value(claims).ok()? else {
        return None;
    };
    for k in ["nonce", "at_hash", "c_hash"] {
        map.remove(k);
    }
    // The typed claims always serialize `aud` as an array; one audience is shown as a string,
    // the form IdPs send it in (RFC 7519 §4.1.3).
    let single = match map.get("aud") {
        Some(Value::Array(aud)) if aud.len() == 1 => Some(aud[0].clone()),
        _ => None,
    };
    if let Some(aud) = single {
        map.insert("aud".into(), aud);
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the user endpoint showed before the claims were typed: the raw payload, minus
    /// `nonce`, `at_hash` and `c_hash`.
    fn raw_minus_hashes(payload: &Value) -> Map<String, Value> {
        let mut map = payload.as_object().cloned().unwrap_or_default();
        for k in ["nonce", "at_hash", "c_hash"] {
            map.remove(k);
        }
        map
    }

    #[test]
    fn user_claims_are_every_claim_sent_minus_nonce_and_hashes() {
        let payload = json!({
            "iss": "https://idp.example.com", "aud": "client", "azp": "client",
            "exp": 2_000_000_000, "iat": 1_900_000_000, "auth_time": 1_899_999_990,
            "sub": "alice", "sid": "idp-session", "nonce": "n", "at_hash": "a", "c_hash": "c",
            "acr": "urn:mace:incommon:iap:silver", "amr": ["pwd", "otp"],
            "name": "Alice Liddell", "name#fr": "Alice", "email": "alice@example.test",
            "email_verified": true, "address": { "locality": "Oxford", "country": "UK" },
            "updated_at": 1_800_000_000, "locale": "en-GB",
            "groups": ["a", "b"], "org": { "id": 7, "roles": ["admin"] }, "tenant": null,
        });
        let claims: IdTokenClaims = serde_json::from_value(payload.clone()).expect("claims");
        assert_eq!(claims.additional_claims().sid(), Some("idp-session"));
        assert_eq!(user_claims(&claims), Some(raw_minus_hashes(&payload)));
    }

    #[test]
    fn several_audiences_stay_an_array_and_a_non_string_sid_is_no_sid() {
        let payload = json!({
            "iss": "https://idp.example.com", "aud": ["client", "api"], "exp": 2_000_000_000,
            "iat": 1_900_000_000, "sub": "alice", "sid": 42,
        });
        let claims: IdTokenClaims = serde_json::from_value(payload.clone()).expect("claims");
        assert_eq!(claims.additional_claims().sid(), None);
        assert_eq!(user_claims(&claims), Some(raw_minus_hashes(&payload)));
    }
}

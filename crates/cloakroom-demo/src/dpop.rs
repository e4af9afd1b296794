//! DPoP proof checks (RFC 9449 §4.3), as the development IdP's token endpoint and the demo API
//! make them: the proof is a `dpop+jwt` signed with ES256 by the public key it carries, for this
//! request's method and URI, recent, with a `jti` not seen before and, at an API, the hash of
//! the access token it comes with. The result is the key's RFC 7638 thumbprint (`jkt`), which
//! the IdP binds tokens to (`cnf.jkt`) and the API compares with the token's.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Digest;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How far a proof's `iat` may be from now (seconds).
const IAT_WINDOW: i64 = 60;

/// The most `jti`s remembered (oldest forgotten first; they are refused by `iat` by then).
const MAX_JTIS: usize = 10_000;

#[derive(Deserialize)]
struct ProofClaims {
    htm: String,
    htu: String,
    iat: i64,
    jti: String,
    ath: Option<String>,
}

/// Checks proofs and remembers their `jti`s.
#[derive(Debug, Default)]
pub struct ProofChecker {
    seen: Mutex<(HashMap<String, i64>, VecDeque<String>)>,
}

impl ProofChecker {
    /// Checks `proof` for a request with method `htm` to `htu` (query ignored) at `now`;
    /// `access_token` is the token it must be bound to (`ath`), at an API. Returns the key's
    /// thumbprint.
    ///
    /// # Errors
    /// A short reason (never echoing the proof).
    pub fn check(
        &self,
        proof: &str,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
        now: i64,
    ) -> Result<String, &'static str> {
        let header = jsonwebtoken::decode_header(proof).map_err(|_| "malformed DPoP proof")?;
        if header.typ.as_deref() != Some("dpop+jwt") {
            return Err("DPoP proof typ is not dpop+jwt");
        }
        if header.alg != Algorithm::ES256 {
            return Err("DPoP proof is not ES256");
        }
        let jwk = header.jwk.ok_or("DPoP proof without jwk")?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| "DPoP proof jwk unusable")?;
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        let claims = jsonwebtoken::decode::<ProofClaims>(proof, &key, &v)
            .map_err(|_| "DPoP proof signature or claims invalid")?
            .claims;
        if claims.htm != htm {
            return Err("DPoP proof htm mismatch");
        }
        let strip = |u: &str| u.split(['?', '#']).next().unwrap_or_default().to_string();
        if strip(&claims.htu) != strip(htu) {
            return Err("DPoP proof htu mismatch");
        }
        if (claims.iat - now).abs() > IAT_WINDOW {
            return Err("DPoP proof iat not recent");
        }
        if let Some(at) = access_token {
            let ath = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(at.as_bytes()));
            if claims.ath.as_deref() != Some(ath.as_str()) {
                return Err("DPoP proof ath mismatch");
            }
        }
        let mut seen = self.seen.lock().map_err(|_| "replay cache poisoned")?;
        if seen.0.contains_key(&claims.jti) {
            return Err("DPoP proof replayed");
        }
        if seen.1.len() >= MAX_JTIS {
            if let Some(old) = seen.1.pop_front() {
                seen.0.remove(&old);
            }
        }
        seen.0.insert(claims.jti.clone(), claims.iat);
        seen.1.push_back(claims.jti);
        drop(seen);
        jwk.thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| "DPoP proof jwk has no thumbprint")
    }
}

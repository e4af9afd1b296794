//! DPoP (RFC 9449): one P-256 key pair per session, made at `/auth/login`, kept sealed in the
//! pending login and then in the session record (it never leaves the server), and the proofs
//! signed with it: at the IdP's token endpoint (code exchange and every refresh) and on every
//! request to a route that sends the token as `Authorization: DPoP`.
//!
//! `p256` makes the key and gives its public point (the JWK and its RFC 7638 thumbprint, the
//! `jkt` the IdP binds the token to); `ring` signs (ES256): a proof is made on every DPoP
//! request, and ring's P-256 signing takes a small fraction of what a pure-Rust signer did
//! (measured ~425 µs per proof with `jsonwebtoken`'s RustCrypto backend; ring is used for TLS
//! already). The JWS header is the same for every proof of a key and is encoded once. Nonces
//! (`DPoP-Nonce`, §8 and §9)
//! are kept per origin in a [`Nonces`] map: the last one each server sent is put in the next
//! proof to it, and a refusal asking for one (`use_dpop_nonce`) is answered by one retry.

use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A session's DPoP key: the P-256 private scalar (serialized as base64url, inside the sealed
/// record only), with its signing key, public JWK and thumbprint worked out on first use.
#[derive(Clone)]
pub struct DpopKey {
    d: Secret,
    prepared: Arc<OnceLock<Result<Prepared, String>>>,
}

struct Prepared {
    signer: ring::signature::EcdsaKeyPair,
    /// `base64url({"alg":"ES256","typ":"dpop+jwt","jwk":{…}})`.
    header: String,
    thumbprint: String,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DpopKey([redacted])")
    }
}

impl Serialize for DpopKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.d.serialize(s)
    }
}

impl<'de> Deserialize<'de> for DpopKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_secret(Secret::deserialize(d)?))
    }
}

impl DpopKey {
    /// A new random key.
    #[must_use]
    pub fn generate() -> Self {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        Self::from_secret(Secret::new(URL_SAFE_NO_PAD.encode(secret.to_bytes())))
    }

    fn from_secret(d: Secret) -> Self {
        Self {
            d,
            prepared: Arc::new(OnceLock::new()),
        }
    }

    fn prepared(&self) -> Result<&Prepared, String> {
        self.prepared
            .get_or_init(|| {
                let bytes = URL_SAFE_NO_PAD
                    .decode(self.d.expose())
                    .map_err(|_| "the session's DPoP key is not base64url".to_string())?;
                let secret = p256::SecretKey::from_slice(&bytes)
                    .map_err(|_| "the session's DPoP key is not a P-256 key".to_string())?;
                let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                    &secret.public_key(),
                    false,
                );
                let (Some(x), Some(y)) = (point.x(), point.y()) else {
                    return Err("the DPoP public key has no coordinates".into());
                };
                let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
                // RFC 7638 §3.2: the required members, lexicographic, no whitespace.
                let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
                let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
                let header = serde_json::json!({
                    "alg": "ES256",
                    "typ": "dpop+jwt",
                    "jwk": {"kty": "EC", "crv": "P-256", "x": x, "y": y},
                });
                let signer = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &bytes,
                    point.as_bytes(),
                    &ring::rand::SystemRandom::new(),
                )
                .map_err(|e| format!("the DPoP key cannot sign ({e})"))?;
                Ok(Prepared {
                    signer,
                    header: URL_SAFE_NO_PAD.encode(header.to_string()),
                    thumbprint,
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The RFC 7638 thumbprint of the public key: the `jkt` (`dpop_jkt`, `cnf.jkt`).
    ///
    /// # Errors
    /// When the stored key cannot be read (a corrupt record).
    pub fn thumbprint(&self) -> Result<&str, String> {
        self.prepared().map(|p| p.thumbprint.as_str())
    }

    /// A proof (§4.2) for a request with method `htm` to `htu` (its query and fragment are
    /// left out), with `ath` for `access_token` when the request carries one, and `nonce` when
    /// the server gave one. `now` is `iat`; `jti` is fresh.
    ///
    /// # Errors
    /// When the key cannot be read or signing fails.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<Secret, String> {
        let p = self.prepared()?;
        let mut claims = serde_json::json!({
            "jti": crate::crypto::random_token(),
            "htm": htm,
            "htu": target_uri(htu),
            "iat": now,
        });
        if let Some(at) = access_token {
            claims["ath"] = URL_SAFE_NO_PAD.encode(Sha256::digest(at.as_bytes())).into();
        }
        if let Some(n) = nonce {
            claims["nonce"] = n.into();
        }
        let mut jws = String::with_capacity(p.header.len() + 400);
        jws.push_str(&p.header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut jws);
        let sig = p
            .signer
            .sign(&ring::rand::SystemRandom::new(), jws.as_bytes())
            .map_err(|_| "cannot sign the DPoP proof".to_string())?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut jws);
        Ok(Secret::new(jws))
    }
}

/// `htu`: the URI without query and fragment (§4.2).
fn target_uri(uri: &str) -> &str {
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    &uri[..end]
}

/// The most origins whose nonce is remembered; beyond it the map starts again (a nonce lost is
/// one retry, not an error).
const MAX_ORIGINS: usize = 256;

/// The last `DPoP-Nonce` each server (by origin: scheme, host and port) sent.
#[derive(Debug, Default, Clone)]
pub struct Nonces(Arc<Mutex<HashMap<String, String>>>);

impl Nonces {
    /// The nonce to put in the next proof to `origin`, if it sent one.
    #[must_use]
    pub fn get(&self, origin: &str) -> Option<String> {
        self.0.lock().ok()?.get(origin).cloned()
    }

    /// Remembers the nonce `origin` sent (a header value that is not a valid nonce is
    /// ignored: §8.1's `NQCHAR`s only, at most 512 of them).
    pub fn set(&self, origin: &str, nonce: &[u8]) {
        let valid = !nonce.is_empty()
            && nonce.len() <= 512
            && nonce
                .iter()
                .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e));
        let Ok(mut map) = self.0.lock() else { return };
        if !valid {
            return;
        }
        if map.len() >= MAX_ORIGINS && !map.contains_key(origin) {
            map.clear();
        }
        let nonce = String::from_utf8_lossy(nonce).into_owned();
        map.insert(origin.to_string(), nonce);
    }
}

/// The origin of `uri` (`scheme://host[:port]`), the key of [`Nonces`].
#[must_use]
pub fn origin_of(uri: &http::Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", http::uri::Authority::as_str)
    )
}

/// Whether an answer asks for a DPoP nonce: `400 {"error":"use_dpop_nonce"}` from an
/// authorization server (§8), or `401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"`
/// from a resource server (§9); either way with a `DPoP-Nonce` header.
#[must_use]
pub fn asks_for_nonce(status: http::StatusCode, headers: &http::HeaderMap) -> bool {
    if !headers.contains_key("dpop-nonce") {
        return false;
    }
    status == http::StatusCode::UNAUTHORIZED
        && headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                let v = v.trim_start();
                v.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("dpop "))
                    && v.contains("use_dpop_nonce")
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    use jsonwebtoken::Algorithm;

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
    }

    #[test]
    fn a_proof_carries_the_key_and_every_claim_and_verifies() {
        let key = DpopKey::generate();
        let proof = key
            .proof(
                "GET",
                "https://api.example/orders?x=1#f",
                Some("tok"),
                Some("n-1"),
                1000,
            )
            .expect("proof");
        let parts: Vec<&str> = proof.expose().split('.').collect();
        let (header, claims) = (decode(parts[0]), decode(parts[1]));
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert!(
            header["jwk"].get("d").is_none(),
            "no private part: {header}"
        );
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://api.example/orders");
        assert_eq!(claims["iat"], 1000);
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(
            claims["ath"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(b"tok")).as_str()
        );
        // It verifies with the JWK it carries, and that JWK's thumbprint is the key's.
        let jwk: Jwk = serde_json::from_value(header["jwk"].clone()).expect("jwk");
        let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key");
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(proof.expose(), &dk, &v).expect("verifies");
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).expect("thumbprint"),
            key.thumbprint().expect("thumbprint")
        );
        // Fresh jti per proof; the key survives a round trip through the record.
        let again = key
            .proof("GET", "https://a/", None, None, 1)
            .expect("proof");
        assert_ne!(
            decode(again.expose().split('.').nth(1).expect("claims"))["jti"],
            claims["jti"]
        );
        let json = serde_json::to_string(&key).expect("ser");
        let back: DpopKey = serde_json::from_str(&json).expect("de");
        assert_eq!(back.thumbprint(), key.thumbprint());
    }

    #[test]
    fn nonce_challenges_are_recognised_and_bad_nonces_ignored() {
        let mut h = http::HeaderMap::new();
        h.insert("dpop-nonce", "abc".parse().expect("v"));
        h.insert(
            http::header::WWW_AUTHENTICATE,
            r#"DPoP error="use_dpop_nonce", algs="ES256""#.parse().expect("v"),
        );
        assert!(asks_for_nonce(http::StatusCode::UNAUTHORIZED, &h));
        assert!(!asks_for_nonce(http::StatusCode::FORBIDDEN, &h));
        h.insert(
            http::header::WWW_AUTHENTICATE,
            r#"Bearer error="invalid_token""#.parse().expect("v"),
        );
        assert!(!asks_for_nonce(http::StatusCode::UNAUTHORIZED, &h));

        let n = Nonces::default();
        n.set("http://a", b"good-1");
        n.set("http://a", b"bad\"quote");
        n.set("http://b", b"");
        assert_eq!(n.get("http://a").as_deref(), Some("good-1"));
        assert_eq!(n.get("http://b"), None);
    }
}

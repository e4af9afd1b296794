//! The IdP's signing keys (JWKS) and their re-fetch budgets.
//!
//! Each JWKS document is read once, from its bytes, into both key types we verify with:
//! `openidconnect`'s `CoreJsonWebKey` (ID tokens) and `jsonwebtoken`'s `Jwk` (logout tokens,
//! for which `openidconnect` has no type). No conversion from the typed keys exists short of
//! serializing them again (their fields are private to the crate), so the start-up JWKS is read
//! from the bytes `openidconnect`'s discovery fetched ([`Recorded`]), and a re-fetch from the
//! bytes it read. `jsonwebtoken` thereby sees members `openidconnect` drops (`x5c`, `key_ops`);
//! `DecodingKey::from_jwk` uses none of them.

use super::idp_call;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet};
use serde::Deserialize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use url::Url;

/// The IdP's signing keys, in both forms we verify with, re-fetched (at most once per
/// [`JWKS_REFETCH_INTERVAL`]) when a token names a key we don't know.
pub(super) struct Jwks {
    uri: Url,
    http: reqwest::Client,
    current: std::sync::RwLock<Arc<KeySet>>,
    /// Last re-fetch for a token that came from the IdP's token endpoint.
    last_refetch: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Last re-fetch for a token anyone could have sent (back-channel logout): its own, smaller
    /// budget, so random `kid`s cannot keep the refetch window busy for real ID tokens.
    last_anonymous_refetch: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// Who asks for a JWKS re-fetch, and so which budget it spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Budget {
    /// A token from the IdP's own token endpoint.
    Idp,
    /// A token an unauthenticated caller posted.
    Anonymous,
}

pub(super) struct KeySet {
    pub(super) oidc: CoreJsonWebKeySet,
    pub(super) jwt: Vec<jsonwebtoken::jwk::Jwk>,
}

/// Minimum time between two JWKS re-fetches triggered by unknown key ids.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// The same for tokens from unauthenticated callers (back-channel logout).
pub const JWKS_ANONYMOUS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

impl KeySet {
    /// Reads a JWKS document. A key `openidconnect` cannot read is skipped, as its own set
    /// type does; the `jsonwebtoken` list holds the keys both types can read.
    fn parse(body: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(body).ok()?;
        let mut oidc = Vec::with_capacity(doc.keys.len());
        let mut jwt = Vec::with_capacity(doc.keys.len());
        for key in doc.keys {
            let Ok(typed) = serde_json::from_value::<CoreJsonWebKey>(key.clone()) else {
                continue;
            };
            oidc.push(typed);
            if let Ok(k) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(key) {
                jwt.push(k);
            }
        }
        Some(Self {
            oidc: CoreJsonWebKeySet::new(oidc),
            jwt,
        })
    }
}

/// The response bodies an IdP call adapter read, by request URI: discovery records them so the
/// JWKS it fetched is read into our [`KeySet`] without a second fetch.
#[derive(Clone, Default)]
pub(super) struct Recorded(Arc<Mutex<Vec<Read>>>);

/// One response [`Recorded`]: the request URI and the body.
struct Read {
    uri: String,
    body: Vec<u8>,
}

impl Recorded {
    pub(super) fn record(&self, uri: &http::Uri, body: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Read {
                uri: uri.to_string(),
                body: body.to_vec(),
            });
    }

    fn body_of(&self, uri: &Url) -> Option<Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|read| read.uri == uri.as_str())
            .map(|read| read.body.clone())
    }
}

impl Jwks {
    /// The keys at `uri`, read from the response discovery `recorded`; `None` if it
    /// recorded none for `uri` or it does not parse.
    pub(super) fn from_discovery(
        uri: Url,
        http: reqwest::Client,
        recorded: &Recorded,
    ) -> Option<Self> {
        let keys = KeySet::parse(&recorded.body_of(&uri)?)?;
        Some(Self {
            uri,
            http,
            current: std::sync::RwLock::new(Arc::new(keys)),
            last_refetch: tokio::sync::Mutex::new(None),
            last_anonymous_refetch: tokio::sync::Mutex::new(None),
        })
    }

    pub(super) fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-fetches the JWKS unless `budget`'s last one was within its interval. True if keys
    /// other than `seen` (the set the caller failed with) are now current — fetched now, or
    /// by another task meanwhile — so the caller tries once more.
    pub(super) async fn refetch(&self, seen: &Arc<KeySet>, budget: Budget) -> bool {
        let (mut last, interval) = match budget {
            Budget::Idp => (self.last_refetch.lock().await, JWKS_REFETCH_INTERVAL),
            Budget::Anonymous => (
                self.last_anonymous_refetch.lock().await,
                JWKS_ANONYMOUS_REFETCH_INTERVAL,
            ),
        };
        if !Arc::ptr_eq(&self.current(), seen) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < interval) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        crate::metrics::jwks_refetch();
        let fetched = async {
            let req = http::Request::get(self.uri.as_str())
                .body(Vec::new())
                .ok()?;
            let call = idp_call(self.http.clone(), req);
            let resp = crate::trace::idp_call!("idp.jwks", call).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            KeySet::parse(resp.body())
        }
        .await;
        match fetched {
            Some(keys) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                tracing::info!("JWKS re-fetched after an unknown key id");
                true
            }
            None => {
                tracing::warn!("JWKS re-fetch failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// How the two key lists were built before: the typed set from the bytes, the
    /// `jsonwebtoken` list by serializing the typed set again.
    fn round_trip(body: &[u8]) -> (CoreJsonWebKeySet, Vec<jsonwebtoken::jwk::Jwk>) {
        let oidc: CoreJsonWebKeySet = serde_json::from_slice(body).expect("typed set");
        let jwt = serde_json::to_value(&oidc)
            .ok()
            .and_then(|v| v.get("keys").and_then(|k| k.as_array()).cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|k| serde_json::from_value(k).ok())
            .collect();
        (oidc, jwt)
    }

    #[test]
    fn both_key_lists_are_what_the_round_trip_gave() {
        let body = serde_json::to_vec(&json!({ "keys": [
            { "kty": "RSA", "kid": "rsa", "use": "sig", "alg": "RS256", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB" },
            { "kty": "EC", "kid": "ec", "crv": "P-256", "alg": "ES256",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
              "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
              "x5c": ["MIIB"], "extra": { "ignored": true } },
            { "kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB" },
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
            { "kty": "EC", "kid": "broken-x", "crv": "P-256", "x": 7, "y": "AQAB" },
            { "kty": "nope", "kid": "unknown-kty" },
            { "kid": "no-kty" },
            "not a key",
        ]}))
        .expect("json");
        let keys = KeySet::parse(&body).expect("parses");
        let (oidc, jwt) = round_trip(&body);
        assert_eq!(keys.oidc, oidc);
        // `jsonwebtoken` now also sees the members `openidconnect`'s type drops (`x5c`, a
        // member it could not read); what a logout token is checked with is the same: the key
        // id, use and algorithm, the key material, and whether it makes a decoding key.
        let used = |keys: &[jsonwebtoken::jwk::Jwk]| {
            keys.iter()
                .map(|k| {
                    let material = match &k.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::Other(_) => None,
                        known => Some(known.clone()),
                    };
                    let decodes = jsonwebtoken::DecodingKey::from_jwk(k).is_ok();
                    let c = &k.common;
                    (
                        c.key_id.clone(),
                        c.public_key_use.clone(),
                        c.key_algorithm,
                        material,
                        decodes,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(used(&keys.jwt), used(&jwt));
        let kids: Vec<_> = keys
            .jwt
            .iter()
            .map(|k| k.common.key_id.as_deref())
            .collect();
        assert_eq!(
            kids,
            [
                Some("rsa"),
                Some("ec"),
                Some("enc"),
                Some("hmac"),
                Some("broken-x")
            ]
        );
    }

    #[test]
    fn a_document_without_keys_is_refused() {
        assert!(KeySet::parse(b"{}").is_none());
        assert!(KeySet::parse(b"[]").is_none());
        assert!(KeySet::parse(br#"{"keys": []}"#).is_some());
    }

    #[test]
    fn the_body_discovery_recorded_is_found_by_its_url() {
        let recorded = Recorded::default();
        for (i, url) in [
            "https://idp.example.com/.well-known/openid-configuration",
            "https://idp.example.com:8443/tenant/keys?v=2&x=%20y",
            "http://127.0.0.1:4000/jwks",
            "http://[::1]:4000/a%2Fb/jwks",
        ]
        .into_iter()
        .enumerate()
        {
            let url = Url::parse(url).expect("url");
            // As openidconnect builds its requests: `.uri(url.to_string())`.
            let uri = http::Uri::try_from(url.to_string()).expect("uri");
            recorded.record(&uri, &[u8::try_from(i).expect("small")]);
            assert_eq!(
                recorded.body_of(&url),
                Some(vec![u8::try_from(i).expect("small")])
            );
        }
        let other = Url::parse("http://127.0.0.1:4001/jwks").expect("url");
        assert_eq!(recorded.body_of(&other), None);
    }
}

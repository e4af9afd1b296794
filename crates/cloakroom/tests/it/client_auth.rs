//! `private_key_jwt` client authentication (RFC 7523, OIDC Core §9) against the real IdP: the
//! PAR push, the code exchange, the refresh and revocation all authenticate with a signed
//! assertion, for each key type; a key the IdP does not know is refused.

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv};
use reqwest::Method;
use std::time::Duration;

fn generated(alg: &'static rcgen::SignatureAlgorithm) -> String {
    rcgen::KeyPair::generate_for(alg)
        .expect("key pair")
        .serialize_pem()
}

fn rsa() -> String {
    std::fs::read_to_string(
        crate::support::repo_root()
            .join("crates/cloakroom/tests/it/fixtures/test-client-rsa-2048.pem"),
    )
    .expect("RSA fixture")
}

/// A count from the IdP's `/test/stats`, by dotted path (absent = 0).
async fn stat(env: &TestEnv, path: &str) -> u64 {
    env.idp.stat(&path.split('.').collect::<Vec<_>>()).await
}

/// `key` registered at the IdP, which takes assertions signed with `alg` only.
fn env_with(key: String, alg: &'static str) -> Opts {
    Opts {
        client_auth: "private_key_jwt",
        client_key: Some(key),
        idp_client_auth_alg: Some(alg),
        // Only PAR is let in, so the push is authenticated with the assertion too.
        idp_require_par: true,
        access_token_ttl: 60,
        ..Opts::default()
    }
}

/// Login (PAR push and code exchange), an API call, a refresh and a logout with revocation,
/// all authenticated with `key`, which must sign with `alg`.
async fn the_whole_lifecycle_authenticates_with(key: String, alg: &'static str) {
    let env = TestEnv::start_with(env_with(key, alg)).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(stat(&env, "token_requests.authorization_code").await, 1);
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    let first = env.session_of(&b).await.expect("session");

    // Past half the token's life the next request is forwarded and a refresh runs behind it.
    env.advance(Duration::from_secs(40));
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    let refreshes = env
        .idp
        .wait_stat(&["token_requests", "refresh_token"], 1)
        .await;
    assert_eq!(refreshes, 1);
    let mut refreshed = env.session_of(&b).await.expect("session");
    for _ in 0..400 {
        if refreshed.tokens.access_token.expose() != first.tokens.access_token.expose() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        refreshed = env.session_of(&b).await.expect("session");
    }
    assert_ne!(
        refreshed.tokens.access_token.expose(),
        first.tokens.access_token.expose()
    );

    // Logout revokes both tokens, after the answer: wait for the IdP to count them.
    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200);
    assert_eq!(env.idp.wait_stat(&["revocations"], 2).await, 2);
    assert_eq!(stat(&env, "grant_errors.invalid_client").await, 0);
    // Push, code, refresh, two revocations: each with an assertion naming the issuer.
    let issuer = serde_json::to_string(&env.idp.issuer).unwrap();
    let auds = env.idp.stats().await["assertion_audiences"].clone();
    assert_eq!(auds, serde_json::json!({ issuer: 5 }), "{auds}");
}

#[tokio::test]
async fn an_ec_p256_key_signs_es256_assertions_for_every_idp_call() {
    the_whole_lifecycle_authenticates_with(generated(&rcgen::PKCS_ECDSA_P256_SHA256), "ES256")
        .await;
}

/// An Ed25519 key as a private JWK (`d` is the seed after the 16-byte PKCS#8 header).
fn as_jwk(pem: &str) -> String {
    let b64 =
        |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).expect("DER");
    let public = cloakroom::oidc::ClientKey::parse_all(pem).expect("key")[0].public_jwk(None);
    serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "d": b64(&der[16..48]), "x": public["x"],
    })
    .to_string()
}

#[tokio::test]
async fn an_ed25519_key_given_as_a_jwk_signs_eddsa_assertions_for_every_idp_call() {
    let pem = generated(&rcgen::PKCS_ED25519);
    the_whole_lifecycle_authenticates_with(as_jwk(&pem), "EdDSA").await;
}

#[tokio::test]
async fn an_rsa_key_signs_ps256_assertions_for_every_idp_call() {
    // PS256, not RS256: the IdP offers both.
    the_whole_lifecycle_authenticates_with(rsa(), "PS256").await;
}

#[tokio::test]
async fn assertions_can_name_the_token_endpoint_as_their_audience() {
    let key = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let env = TestEnv::start_with(Opts {
        client_assertion_audience: "token_endpoint",
        ..env_with(key, "ES256")
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert_eq!(stat(&env, "token_requests.authorization_code").await, 1);
    // The push and the code exchange each sent one, naming the token endpoint.
    let token_endpoint = serde_json::to_string(&format!("{}/token", env.idp.issuer)).unwrap();
    let auds = env.idp.stats().await["assertion_audiences"].clone();
    assert_eq!(auds, serde_json::json!({ token_endpoint: 2 }), "{auds}");
}

#[tokio::test]
async fn the_first_of_several_keys_signs_and_a_key_the_idp_does_not_know_is_refused() {
    // Rotation: the new key first, the old one after it; the IdP knows only the new one.
    let new = generated(&rcgen::PKCS_ECDSA_P256_SHA256);
    let old = generated(&rcgen::PKCS_ED25519);
    let known = cloakroom::oidc::ClientKey::parse_all(&new).expect("key")[0].public_jwk(None);
    let env = TestEnv::start_with(Opts {
        idp_client_jwks: Some(serde_json::json!({ "keys": [known] })),
        ..env_with(format!("{new}{old}"), "ES256")
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);

    // Signing with a key the IdP has not registered: the push is refused, and the browser
    // gets a JSON error, no cookie, nothing stored.
    let env = TestEnv::start_with(Opts {
        idp_client_jwks: Some(serde_json::json!({ "keys": [known] })),
        ..env_with(old, "EdDSA")
    })
    .await;
    let before = env.redis.cli(&["DBSIZE"]);
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login?return_to=/app")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "authorization_request_failed");
    assert!(b.jar.is_empty(), "{:?}", b.jar);
    assert_eq!(env.redis.cli(&["DBSIZE"]), before);
}

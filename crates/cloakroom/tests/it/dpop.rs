//! DPoP-bound tokens (RFC 9449, `oidc.dpop`) against the real IdP, which is set to issue the
//! client DPoP-bound tokens only (`dpop_bound_access_tokens`): a session's key signs proofs at
//! the token endpoint (code exchange, every refresh) and on every API call, nonces are fetched
//! from the IdP and from upstreams when they ask, and routes send the token as they say.

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv, CLIENT_ID, CLIENT_SECRET};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::time::Duration;

const ROUTES: &str = r#"
[[routes]]
prefix = "/dpop/"
upstream = "http://@UPSTREAM@"
token = "dpop"
[[routes]]
prefix = "/bearer/"
upstream = "http://@UPSTREAM@"
token = "bearer"
"#;

fn opts() -> Opts {
    Opts {
        dpop: true,
        idp_dpop_bound: true,
        access_token_ttl: 60,
        ..Opts::default()
    }
}

async fn start(opts: Opts) -> TestEnv {
    TestEnv::start_with(Opts {
        extra_toml: ROUTES.into(),
        ..opts
    })
    .await
}

fn part(jwt: &str, i: usize) -> serde_json::Value {
    let p = jwt.split('.').nth(i).expect("JWT part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("JSON")
}

/// What the upstream last received: the `Authorization` value and the DPoP proof.
fn last_credentials(env: &TestEnv) -> (String, Option<String>, serde_json::Value) {
    let last = env.upstream.last();
    let h = &last["headers"];
    (
        h["authorization"].as_str().unwrap_or_default().to_string(),
        h["dpop"].as_str().map(String::from),
        last,
    )
}

/// Checks a proof as a resource server would (§4.3, §7.1): signed by the JWK it carries, for
/// `htm`/`htu`, with `ath` of `token`; returns its claims and the JWK's thumbprint.
fn check_proof(proof: &str, htm: &str, htu: &str, token: &str) -> (serde_json::Value, String) {
    let header = part(proof, 0);
    assert_eq!(header["typ"], "dpop+jwt", "{header}");
    assert_eq!(header["alg"], "ES256", "{header}");
    assert!(
        header["jwk"].get("d").is_none(),
        "a private key in {header}"
    );
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(header["jwk"].clone()).expect("jwk");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(proof, &key, &v)
        .expect("the proof verifies with its own key")
        .claims;
    assert_eq!(claims["htm"], htm, "{claims}");
    assert_eq!(claims["htu"], htu, "{claims}");
    let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
    assert_eq!(claims["ath"], ath.as_str(), "{claims}");
    assert!(
        claims["jti"].as_str().is_some_and(|j| j.len() >= 16),
        "{claims}"
    );
    assert!(claims["iat"].is_i64(), "{claims}");
    (
        claims,
        jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .expect("thumbprint"),
    )
}

#[tokio::test]
async fn dpop_bound_tokens_reach_the_api_with_a_proof_per_request_and_survive_a_refresh() {
    let env = start(opts()).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    // The code exchange carried a proof (the IdP binds only what was proved).
    assert_eq!(env.idp.stat(&["dpop_proofs", "without_nonce"]).await, 1);

    let r = b.xhr(Method::GET, &env.url("/dpop/orders?page=2")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (auth, proof, _) = last_credentials(&env);
    let token = auth
        .strip_prefix("DPoP ")
        .unwrap_or_else(|| panic!("not a DPoP authorization: {auth:.12}"))
        .to_string();
    let proof = proof.expect("a DPoP proof");
    let htu = format!("http://{}/dpop/orders", env.upstream.addr);
    let (first, jkt) = check_proof(&proof, "GET", &htu, &token);
    // The IdP bound the token to exactly that key.
    let info = env.idp.introspect(CLIENT_ID, CLIENT_SECRET, &token).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["token_type"], "DPoP", "{info}");
    assert_eq!(info["cnf"]["jkt"], jkt.as_str(), "{info}");
    // The key is the session's, sealed in its record, and never sent anywhere in the clear.
    let s = env.session_of(&b).await.expect("session");
    let key = s
        .tokens
        .dpop
        .as_ref()
        .expect("the session keeps its DPoP key");
    assert_eq!(key.thumbprint().expect("thumbprint"), jkt);

    // Every request gets a proof of its own; a token = "required" route sends the token as it
    // was issued (DPoP), a POST gets a proof for POST.
    let r = b.xhr(Method::POST, &env.url("/api/things")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (auth2, proof2, _) = last_credentials(&env);
    assert_eq!(auth2, format!("DPoP {token}"));
    let htu = format!("http://{}/api/things", env.upstream.addr);
    let (second, jkt2) = check_proof(&proof2.expect("proof"), "POST", &htu, &token);
    assert_eq!(jkt2, jkt);
    assert_ne!(second["jti"], first["jti"]);

    // token = "bearer": plain bearer, no proof.
    let r = b.xhr(Method::GET, &env.url("/bearer/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (auth3, proof3, _) = last_credentials(&env);
    assert_eq!(auth3, format!("Bearer {token}"));
    assert!(proof3.is_none());

    // Past the token's expiry (the request waits for the refresh): the refresh grant is
    // proved with the same key, and the new token is bound to it too.
    env.advance(Duration::from_secs(65));
    let r = b.xhr(Method::GET, &env.url("/dpop/after")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    assert_eq!(env.idp.stat(&["dpop_proofs", "without_nonce"]).await, 2);
    let (auth4, proof4, _) = last_credentials(&env);
    let fresh = auth4.strip_prefix("DPoP ").expect("DPoP").to_string();
    assert_ne!(fresh, token, "a new access token");
    let htu = format!("http://{}/dpop/after", env.upstream.addr);
    let (_, jkt4) = check_proof(&proof4.expect("proof"), "GET", &htu, &fresh);
    assert_eq!(jkt4, jkt);
    let info = env.idp.introspect(CLIENT_ID, CLIENT_SECRET, &fresh).await;
    assert_eq!(info["cnf"]["jkt"], jkt.as_str(), "{info}");

    // Nothing of the token, the proof or the key reached the browser.
    let seen = format!("{:?} {} {:?}", r.headers, r.body, b.jar);
    for secret in [token.as_str(), fresh.as_str(), jkt.as_str()] {
        assert!(!seen.contains(secret), "leaked to the browser");
    }
    assert!(!seen.to_ascii_lowercase().contains("dpop+jwt"));
}

#[tokio::test]
async fn the_code_is_bound_to_the_login_key_with_dpop_jkt() {
    // Front-channel (no PAR), so the parameter is visible in the browser's redirect.
    let env = start(Opts {
        par: "never",
        ..opts()
    })
    .await;
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login?return_to=/app")).await;
    let q = crate::support::query(&r.location());
    let jkt = q
        .get("dpop_jkt")
        .expect("dpop_jkt in the authorization request")
        .clone();
    assert_eq!(jkt.len(), 43, "a SHA-256 thumbprint: {jkt}");
    let callback = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let s = env.session_of(&b).await.expect("session");
    let key = s.tokens.dpop.as_ref().expect("DPoP key");
    assert_eq!(key.thumbprint().expect("thumbprint"), jkt);
    // Each login makes a key of its own.
    let mut other = Browser::new();
    let r = other.get(&env.url("/auth/login?return_to=/app")).await;
    let q2 = crate::support::query(&r.location());
    assert_ne!(q2["dpop_jkt"], jkt);
}

#[tokio::test]
async fn an_idp_that_insists_on_nonces_gets_one_retry_then_the_remembered_nonce() {
    let env = start(Opts {
        idp_dpop_nonce: true,
        ..opts()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    // The first proof had no nonce and was refused with `use_dpop_nonce`; the retry with the
    // IdP's nonce was accepted.
    assert_eq!(env.idp.stat(&["dpop_proofs", "without_nonce"]).await, 1);
    assert_eq!(env.idp.stat(&["dpop_proofs", "with_nonce"]).await, 1);
    assert_eq!(
        env.idp
            .stat(&["token_requests", "authorization_code"])
            .await,
        1
    );
    let r = b.xhr(Method::GET, &env.url("/dpop/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A refresh goes straight out with the nonce the IdP sent last.
    env.advance(Duration::from_secs(65));
    let r = b.xhr(Method::GET, &env.url("/dpop/y")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    assert_eq!(env.idp.stat(&["dpop_proofs", "without_nonce"]).await, 1);
    let with_nonce = env.idp.stat(&["dpop_proofs", "with_nonce"]).await;
    assert!(
        (2..=3).contains(&with_nonce),
        "the refresh carried a nonce ({with_nonce} proofs with one)"
    );
    let metrics = reqwest::get(env.admin_url(0, "/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics.contains(r#"cloakroom_dpop_nonce_retries_total{target="idp"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_upstream_nonce_challenge_is_answered_by_one_retry_when_the_request_can_be_replayed() {
    let env = start(opts()).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let seen = env.upstream.seen.clone();
    let refused = || seen.dpop_nonce_refused.load(Ordering::SeqCst);

    // Refused (no nonce yet), sent again with the nonce, answered.
    let before = env.upstream.count();
    let r = b.xhr(Method::GET, &env.url("/dpop/dpop-nonce/a")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((env.upstream.count() - before, refused()), (2, 1));
    // Remembered: the next request carries it at once.
    let before = env.upstream.count();
    let r = b.xhr(Method::GET, &env.url("/dpop/dpop-nonce/b")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((env.upstream.count() - before, refused()), (1, 1));

    // The upstream moves to a new nonce: a small body was kept and goes again, whole.
    seen.dpop_nonce.fetch_add(1, Ordering::SeqCst);
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let req = b
        .request(Method::POST, &env.url("/dpop/dpop-nonce/upload"))
        .header("x-csrf", "1")
        .body(body.clone());
    let r = b.send(req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(refused(), 2);
    let j = r.json();
    assert_eq!(j["len"], 10_000);
    assert_eq!(
        j["sha256"],
        crate::support::upstream::hex(&Sha256::digest(&body)).as_str()
    );

    // A body too big to keep streams once, and the upstream's 401 goes back to the SPA.
    seen.dpop_nonce.fetch_add(1, Ordering::SeqCst);
    let big = vec![7u8; 200 * 1024];
    let before = env.upstream.count();
    let req = b
        .request(Method::POST, &env.url("/dpop/dpop-nonce/upload"))
        .header("x-csrf", "1")
        .body(big);
    let r = b.send(req).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.headers.contains_key("dpop-nonce"));
    assert_eq!((env.upstream.count() - before, refused()), (1, 3));
    // ... and the nonce it sent is used from then on.
    let r = b.xhr(Method::GET, &env.url("/dpop/dpop-nonce/c")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(refused(), 3);
}

#[tokio::test]
async fn a_session_without_a_bound_token_is_refused_by_a_dpop_route_and_sent_as_bearer_elsewhere() {
    // Sessions made before oidc.dpop was turned on hold plain bearer tokens: after the switch a
    // `token = "dpop"` route refuses them (403 dpop_required), the others send them as issued.
    let mut env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    env.opts.dpop = true;
    env.opts.extra_toml = ROUTES.into();
    let i = env.start_extra(&env.keys.clone()).await;
    let r = b.xhr(Method::GET, &format!("{}/dpop/x", env.base(i))).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, "dpop_required".into())
    );
    let before = env.upstream.count();
    let r = b.xhr(Method::GET, &format!("{}/api/x", env.base(i))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        env.upstream.count(),
        before + 1,
        "the refused call never went upstream"
    );
    let (auth, proof, _) = last_credentials(&env);
    assert!(auth.starts_with("Bearer "), "{auth:.12}");
    assert!(proof.is_none());
}

#[tokio::test]
async fn a_refresh_refused_for_want_of_a_nonce_is_retried_and_loses_no_refresh_token() {
    // Another instance has not met the IdP yet, so its first refresh proof carries no nonce:
    // the IdP refuses it with use_dpop_nonce before it looks at the refresh token (RFC 9449
    // §8), and the retry with the nonce refreshes. Nothing is reused, no grant revoked.
    let mut env = start(Opts {
        idp_dpop_nonce: true,
        ..opts()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let i = env.start_extra(&env.keys.clone()).await;
    env.advance(Duration::from_secs(65));
    let without = env.idp.stat(&["dpop_proofs", "without_nonce"]).await;
    let r = b
        .xhr(Method::GET, &format!("{}/dpop/after", env.base(i)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    assert_eq!(
        env.idp.stat(&["dpop_proofs", "without_nonce"]).await,
        without + 1,
        "the first refresh proof had no nonce and was refused"
    );
    assert_eq!(env.idp.stat(&["refresh_reuse"]).await, 0);
    assert_eq!(env.idp.stat(&["grants_revoked"]).await, 0);
    // The session goes on refreshing with the rotated refresh token.
    env.advance(Duration::from_secs(65));
    let r = b
        .xhr(Method::GET, &format!("{}/dpop/again", env.base(i)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 2);
    assert_eq!(env.idp.stat(&["grants_revoked"]).await, 0);
}

//! `oidc.profile = "fapi2"` against oidc-provider's own FAPI 2.0 Security Profile: PAR (the IdP
//! takes nothing else), PKCE S256, `private_key_jwt` with the issuer as audience, DPoP-bound
//! tokens (the IdP issues no other kind to the client), RFC 9207 `iss`, PS256 ID tokens. And the
//! refusal: an IdP that lacks pieces stops start-up with every missing piece named.

use crate::support::browser::Browser;
use crate::support::{query, start_up_error, Opts, TestEnv};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Method;
use std::time::Duration;

fn fapi2(idp_fapi2: bool) -> Opts {
    Opts {
        profile: "fapi2",
        client_auth: "private_key_jwt",
        client_key: Some(
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .expect("key pair")
                .serialize_pem(),
        ),
        dpop: true,
        idp_dpop_bound: true,
        idp_fapi2,
        access_token_ttl: 60,
        ..Opts::default()
    }
}

fn header_of(jwt: &str) -> serde_json::Value {
    let p = jwt.split('.').next().expect("header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("b64")).expect("json")
}

#[tokio::test]
async fn a_fapi2_client_logs_in_calls_apis_refreshes_and_logs_out_at_a_fapi2_idp() {
    let env = TestEnv::start_with(fapi2(true)).await;
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login?return_to=/app")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    // Pushed: the browser carries client_id and request_uri only.
    let q = query(&r.location());
    assert_eq!(
        q.keys().map(String::as_str).collect::<Vec<_>>(),
        ["client_id", "request_uri"]
    );
    let callback = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    // RFC 9207: the IdP names itself, and Cloakroom requires it.
    assert_eq!(query(&callback).get("iss"), Some(&env.idp.issuer));
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);

    let s = env.session_of(&b).await.expect("session");
    assert_eq!(header_of(s.tokens.id_token.expose())["alg"], "PS256");
    let jkt = s
        .tokens
        .dpop
        .as_ref()
        .expect("a DPoP-bound session")
        .thumbprint()
        .expect("thumbprint")
        .to_string();
    // `dpop` is kept only when the IdP answered token_type DPoP (bound to that key).
    let _ = jkt;
    let token = s.tokens.access_token.expose().to_string();

    let r = b.xhr(Method::GET, &env.url("/api/orders")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let last = env.upstream.last();
    assert_eq!(last["headers"]["authorization"], format!("DPoP {token}"));
    assert!(last["headers"]["dpop"].is_string());
    // Every assertion named the issuer as its audience (oidc-provider's FAPI 2.0 check).
    let audiences = env.idp.stats().await["assertion_audiences"].clone();
    assert_eq!(
        audiences
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        // (counted by the JSON of `aud`: one string, the issuer)
        Some(vec![format!("\"{}\"", env.idp.issuer)]),
        "{audiences}"
    );

    // The refresh, proved with the session's key.
    env.advance(Duration::from_secs(65));
    let r = b.xhr(Method::GET, &env.url("/api/orders")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    let fresh = env.session_of(&b).await.expect("session").tokens;
    assert_ne!(fresh.access_token.expose(), token);
    let again = fresh
        .dpop
        .as_ref()
        .expect("still bound")
        .thumbprint()
        .expect("jkt");
    assert_eq!(again, jkt, "the refreshed token is bound to the same key");

    // Logout revokes (authenticated with an assertion) and ends the session.
    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.idp.wait_stat(&["revocations"], 1).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 401);
}

#[tokio::test]
async fn start_up_names_what_the_idp_lacks_for_fapi2() {
    // An IdP without PAR and signing ID tokens with RS256 only (oidc-provider advertises the
    // algorithms it has keys for), which FAPI 2.0 does not allow. The instance the env starts
    // is no FAPI client; the one started here is, and must not start.
    let mut env = TestEnv::start_with(Opts {
        idp_without_par: true,
        profile: "none",
        ..fapi2(false)
    })
    .await;
    env.opts.profile = "fapi2";
    let err = start_up_error(env.config(1, &env.keys, "")).await;
    assert!(err.contains("fapi2"), "{err}");
    // `cloakroom check` says the same, and fails.
    let (code, out) = env.run_check("");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("idp: FAILED") && out.contains("pushed_authorization_request_endpoint"),
        "{out}"
    );
    // ... and the report names the same pieces, line by line.
    assert!(
        out.contains(
            "MISSING  PAR (RFC 9126): config asks always (fapi2); the IdP advertises no endpoint"
        ),
        "{out}"
    );
    assert!(out.contains("MISSING  ID token signature: config asks one of [PS256, ES256, EdDSA]; the IdP advertises [RS256]"), "{out}");
    assert!(
        err.contains("pushed_authorization_request_endpoint"),
        "{err}"
    );
    assert!(
        err.contains("id_token_signing_alg_values_supported: RS256"),
        "{err}"
    );
}

#[tokio::test]
async fn a_fapi2_client_may_authenticate_and_bind_its_tokens_with_mtls_instead() {
    // FAPI 2.0's other road: tls_client_auth at the IdP's mTLS aliases, certificate-bound
    // tokens instead of DPoP.
    let pki = std::sync::Arc::new(crate::support::pki::Pki::new());
    let env = TestEnv::start_with(Opts {
        profile: "fapi2",
        client_auth: "tls_client_auth",
        pki: Some(pki.clone()),
        idp_cert_bound: true,
        idp_fapi2: true,
        access_token_ttl: 60,
        ..Opts::default()
    })
    .await;
    // `cloakroom check` reports the method, the certificate and the profile.
    let (code, out) = env.run_check("");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("client authentication tls_client_auth"),
        "{out}"
    );
    assert!(out.contains("PAR on") && out.contains("DPoP off"), "{out}");
    let x5t = crate::support::pki::Pki::thumbprint(&pki.client_der);
    assert!(
        out.contains(&format!("x5t#S256 {x5t}")) && out.contains("mtls_endpoint_aliases"),
        "{out}"
    );
    assert!(
        out.contains("profile: fapi2, every requirement met"),
        "{out}"
    );
    // The capability report: each line config against discovery, all met here.
    for what in [
        "ok       client authentication: config asks tls_client_auth",
        "ok       PAR (RFC 9126): config asks always (fapi2); the IdP advertises an endpoint, and requires it",
        "ok       mTLS (RFC 8705)",
        "ok       iss in authorization responses (RFC 9207): config asks required (fapi2)",
        "ok       ID token signature",
        "ok       revocation (RFC 7009)",
    ] {
        assert!(out.contains(what), "{what} not in:\n{out}");
    }
    assert!(!out.contains("MISSING"), "{out}");
    let mut b = Browser::new();
    env.login(&mut b).await;
    let s = env.session_of(&b).await.expect("session");
    assert!(s.tokens.dpop.is_none(), "bound by certificate, not DPoP");
    assert_eq!(header_of(s.tokens.id_token.expose())["alg"], "PS256");
    let r = b.xhr(Method::GET, &env.url("/api/orders")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.advance(Duration::from_secs(65));
    assert_eq!(
        b.xhr(Method::GET, &env.url("/api/orders")).await.status,
        200
    );
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    assert_eq!(env.idp.stat(&["grant_errors", "invalid_client"]).await, 0);
}

/// The whole FAPI 2.0 lifecycle for one client kind against the IdP's FAPI 2.0 profile (PAR
/// required, DPoP, mTLS aliases), every API call checked by the echo upstream as a resource
/// server would (`/checked/`: introspection for the binding, the proof in full).
async fn full_fapi2_lifecycle(client_auth: &'static str) {
    let pki = std::sync::Arc::new(crate::support::pki::Pki::new());
    let key = (client_auth == "private_key_jwt").then(|| {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("key pair")
            .serialize_pem()
    });
    let env = TestEnv::start_with(Opts {
        profile: "fapi2",
        client_auth,
        client_key: key,
        pki: Some(pki),
        dpop: true,
        idp_dpop_bound: true,
        idp_dpop_nonce: true,
        idp_fapi2: true,
        access_token_ttl: 60,
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    // The IdP asked for a DPoP nonce once, and got it.
    assert_eq!(env.idp.stat(&["dpop_proofs", "without_nonce"]).await, 1);
    assert!(env.idp.stat(&["dpop_proofs", "with_nonce"]).await >= 1);
    // An upstream nonce challenge, answered by one retry that the resource server accepts.
    let before = env.upstream.count();
    let r = b
        .xhr(Method::GET, &env.url("/api/checked/dpop-nonce/x"))
        .await;
    assert_eq!(r.status, 200, "{client_auth}: {}", r.body);
    assert_eq!(r.json()["rs_check"]["binding"], "dpop", "{}", r.body);
    assert_eq!(env.upstream.count() - before, 2, "one challenge, one retry");
    let r = b.xhr(Method::GET, &env.url("/api/checked/orders")).await;
    assert_eq!(r.status, 200, "{client_auth}: {}", r.body);
    assert_eq!(r.json()["rs_check"]["binding"], "dpop", "{}", r.body);
    let tokens = env.session_of(&b).await.expect("session").tokens;
    let token = tokens.access_token.clone();
    let jkt = tokens
        .dpop
        .as_ref()
        .expect("DPoP key")
        .thumbprint()
        .expect("jkt")
        .to_string();
    let sent_proof = env.upstream.last()["headers"]["dpop"]
        .as_str()
        .expect("proof")
        .to_string();

    // A stolen token, without the session's key: as a bearer, or with a proof of another key,
    // or with a proof replayed; the resource server refuses each.
    let echo = format!("http://{}/api/checked/orders", env.upstream.addr);
    let thief = cloakroom::oidc::DpopKey::generate();
    let forged = thief
        .proof(
            "GET",
            &echo,
            Some(token.expose()),
            None,
            cloakroom::session::now_unix(),
        )
        .expect("proof");
    for (auth, proof, why) in [
        (
            format!("Bearer {}", token.expose()),
            None,
            "as a bearer token",
        ),
        (
            format!("DPoP {}", token.expose()),
            Some(forged.expose().to_string()),
            "not the token's",
        ),
        (
            format!("DPoP {}", token.expose()),
            Some(sent_proof),
            "replayed",
        ),
    ] {
        let mut req = reqwest::Client::new()
            .get(&echo)
            .header("authorization", auth);
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        let r = req.send().await.expect("echo");
        assert_eq!(r.status(), 401, "{client_auth}: {why}");
        let body: serde_json::Value = r.json().await.expect("json");
        assert!(
            body["why"].as_str().is_some_and(|w| w.contains(why)),
            "{why}: {body}"
        );
    }

    // The refresh: a new proof with the same key, a new token bound to it.
    env.advance(Duration::from_secs(65));
    let r = b.xhr(Method::GET, &env.url("/api/checked/after")).await;
    assert_eq!(r.status, 200, "{client_auth}: {}", r.body);
    assert_eq!(r.json()["rs_check"]["binding"], "dpop");
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    assert_eq!(
        env.idp.stat(&["dpop_proofs", "without_nonce"]).await,
        1,
        "the refresh went out with the IdP's last nonce"
    );
    let refreshed = env.session_of(&b).await.expect("session").tokens;
    let fresh = refreshed.access_token.clone();
    assert_ne!(fresh.expose(), token.expose());
    assert_eq!(
        refreshed
            .dpop
            .as_ref()
            .map(|k| k.thumbprint().map(String::from)),
        Some(Ok(jkt)),
        "the same key proves the refresh"
    );

    // Logout revokes at the IdP (through the alias, authenticated as this client kind).
    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.idp.wait_stat(&["revocations"], 1).await;
    assert_eq!(env.idp.stat(&["grant_errors", "invalid_client"]).await, 0);
    let r = reqwest::Client::new()
        .get(format!("http://{}/api/checked/gone", env.upstream.addr))
        .header("authorization", format!("DPoP {}", fresh.expose()))
        .send()
        .await
        .expect("echo");
    assert_eq!(r.status(), 401, "the revoked token is no longer active");
}

#[tokio::test]
async fn fapi2_lifecycle_with_private_key_jwt() {
    full_fapi2_lifecycle("private_key_jwt").await;
}

#[tokio::test]
async fn fapi2_lifecycle_with_tls_client_auth() {
    full_fapi2_lifecycle("tls_client_auth").await;
}

#[tokio::test]
async fn fapi2_lifecycle_with_self_signed_tls_client_auth() {
    full_fapi2_lifecycle("self_signed_tls_client_auth").await;
}

#[tokio::test]
async fn an_idp_offering_only_rs256_client_assertions_is_refused_under_fapi2() {
    let rsa = std::fs::read_to_string(
        crate::support::repo_root()
            .join("crates/cloakroom/tests/it/fixtures/test-client-rsa-2048.pem"),
    )
    .expect("RSA fixture");
    let mut env = TestEnv::start_with(Opts {
        client_auth: "private_key_jwt",
        client_key: Some(rsa),
        idp_client_auth_algs: Some(vec!["RS256"]),
        ..Opts::default()
    })
    .await;
    env.opts.profile = "fapi2";
    env.opts.dpop = true;
    let (code, out) = env.run_check("");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("idp: FAILED") && out.contains("RS256"),
        "{out}"
    );
    assert!(out.contains("fapi2"), "{out}");
    assert!(
        out.contains("MISSING  client assertion algorithm: config asks a Rsa key"),
        "{out}"
    );
}

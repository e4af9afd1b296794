//! `oidc.profile = "fapi2"` against oidc-provider's own FAPI 2.0 Security Profile: PAR (the IdP
//! takes nothing else), PKCE S256, `private_key_jwt` with the issuer as audience, DPoP-bound
//! tokens (the IdP issues no other kind to the client), RFC 9207 `iss`, PS256 ID tokens. And the
//! refusal: an IdP that lacks pieces stops start-up with every missing piece named.

use crate::support::browser::Browser;
use crate::support::{bind0, query, Opts, TestEnv};
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
    let public = bind0();
    let port = public.local_addr().expect("addr").port();
    let config = env.config(port, &env.keys, "");
    let err = match cloakroom::App::start_with(
        config,
        cloakroom::Listeners {
            public: Some(public),
            admin: Some(bind0()),
            ..Default::default()
        },
    )
    .await
    {
        Ok(app) => {
            app.shutdown().await;
            panic!("started without PAR under fapi2")
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("fapi2"), "{err}");
    // `cloakroom check` says the same, and fails.
    let (code, out) = env.run_check("");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("idp: FAILED") && out.contains("pushed_authorization_request_endpoint"),
        "{out}"
    );
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

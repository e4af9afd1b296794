//! Mutual TLS (RFC 8705) against the real IdP: `tls_client_auth` (a CA-issued certificate,
//! matched by subject DN) and `self_signed_tls_client_auth` (a registered self-signed one) at
//! the IdP's `mtls_endpoint_aliases` (a TLS listener of the test IdP that asks for client
//! certificates; its plain endpoints see no certificate, so the whole lifecycle working proves
//! the aliases are used), certificate-bound access tokens (`cnf.x5t#S256`), and a route that
//! forwards them over mTLS with the same certificate to an upstream that refuses anyone else.

use crate::support::browser::Browser;
use crate::support::pki::Pki;
use crate::support::upstream::Upstream;
use crate::support::{Opts, TestEnv, CLIENT_ID};
use reqwest::Method;
use std::sync::Arc;
use std::time::Duration;

/// Introspects `token` at the IdP's mTLS alias, authenticated with the client certificate.
async fn introspect(env: &TestEnv, pki: &Pki, token: &str) -> serde_json::Value {
    let meta: serde_json::Value = reqwest::get(env.idp.url("/.well-known/openid-configuration"))
        .await
        .expect("discovery")
        .json()
        .await
        .expect("discovery json");
    let endpoint = meta["mtls_endpoint_aliases"]["introspection_endpoint"]
        .as_str()
        .expect("an mTLS introspection alias")
        .to_string();
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", pki.client_cert_pem, pki.client_key_pem).as_bytes(),
    )
    .expect("identity");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("ca"))
        .identity(identity)
        .build()
        .expect("client")
        .post(endpoint)
        .form(&[("token", token), ("client_id", CLIENT_ID)])
        .send()
        .await
        .expect("introspection")
        .json()
        .await
        .expect("introspection json")
}

#[tokio::test]
async fn tls_client_auth_gets_certificate_bound_tokens_that_reach_an_mtls_upstream() {
    let pki = Arc::new(Pki::new());
    let secure = Upstream::start_tls(&pki).await;
    let extra = format!(
        "[upstream]\ntls_ca_file = \"{ca}\"\n[[routes]]\nprefix = \"/secure/\"\nupstream = \"https://127.0.0.1:{port}\"\nupstream_client_cert = true\n",
        ca = pki.path("ca.pem"),
        port = secure.addr.port()
    );
    let env = TestEnv::start_with(Opts {
        client_auth: "tls_client_auth",
        pki: Some(pki.clone()),
        idp_cert_bound: true,
        access_token_ttl: 60,
        extra_toml: extra,
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(
        env.idp
            .stat(&["token_requests", "authorization_code"])
            .await,
        1
    );
    let s = env.session_of(&b).await.expect("session");
    let token = s.tokens.access_token.expose().to_string();
    let x5t = Pki::thumbprint(&pki.client_der);
    let info = introspect(&env, &pki, &token).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(
        info["cnf"]["x5t#S256"],
        x5t.as_str(),
        "bound to our certificate: {info}"
    );

    // The mTLS route: over TLS, with our certificate, the bound token as a bearer.
    let r = b.xhr(Method::GET, &env.url("/secure/orders")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        secure.last()["headers"]["authorization"],
        format!("Bearer {token}")
    );
    assert_eq!(
        secure.seen.peer_certs.lock().expect("lock").first(),
        Some(&x5t),
        "the upstream saw the certificate the token is bound to"
    );

    // The refresh presents the certificate too (a bound refresh needs it), and so does the
    // revocation at logout.
    env.advance(Duration::from_secs(65));
    let r = b.xhr(Method::GET, &env.url("/secure/after")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    let fresh = env.session_of(&b).await.expect("session").tokens;
    assert_ne!(fresh.access_token.expose(), token);
    let info = introspect(&env, &pki, fresh.access_token.expose()).await;
    assert_eq!(info["cnf"]["x5t#S256"], x5t.as_str(), "{info}");
    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.idp.wait_stat(&["revocations"], 1).await;
    assert_eq!(env.idp.stat(&["grant_errors", "invalid_client"]).await, 0);
}

#[tokio::test]
async fn self_signed_tls_client_auth_runs_the_whole_lifecycle() {
    let pki = Arc::new(Pki::new());
    let env = TestEnv::start_with(Opts {
        client_auth: "self_signed_tls_client_auth",
        pki: Some(pki),
        access_token_ttl: 60,
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    env.advance(Duration::from_secs(65));
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    env.idp.wait_stat(&["revocations"], 1).await;
    assert_eq!(env.idp.stat(&["grant_errors", "invalid_client"]).await, 0);
}

#[tokio::test]
async fn an_mtls_upstream_refuses_a_connection_without_the_certificate() {
    // The same upstream behind a route without upstream_client_cert cannot even be configured
    // as https; reached with another certificate-less client it refuses the handshake, so the
    // test above seeing our certificate is the route's doing.
    let pki = Pki::new();
    let secure = Upstream::start_tls(&pki).await;
    let plain = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("ca"))
        .build()
        .expect("client");
    let r = plain
        .get(format!("https://127.0.0.1:{}/x", secure.addr.port()))
        .send()
        .await;
    assert!(r.is_err(), "no client certificate, no answer");
    assert_eq!(secure.count(), 0);
}

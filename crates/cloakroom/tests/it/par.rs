//! Pushed authorization requests (RFC 9126, `oidc.par`) against the real IdP.

use crate::support::browser::Browser;
use crate::support::fault::Fault;
use crate::support::{query, start_up_error, Opts, TestEnv, CLIENT_ID};
use cloakroom::config::Par;
use reqwest::Method;

#[tokio::test]
async fn a_login_pushes_its_request_and_the_browser_carries_only_client_id_and_request_uri() {
    // An IdP that takes authorization requests only through PAR: a front-channel request
    // would be refused there, so the whole login working proves the push.
    let env = TestEnv::start_with(Opts {
        idp_require_par: true,
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login?return_to=/app")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let loc = r.location();
    assert!(
        loc.starts_with(&format!("{}/auth?", env.idp.issuer)),
        "{loc}"
    );
    let q = query(&loc);
    assert_eq!(
        q.keys().map(String::as_str).collect::<Vec<_>>(),
        ["client_id", "request_uri"],
        "{loc}"
    );
    assert_eq!(q["client_id"], CLIENT_ID);
    assert!(
        q["request_uri"].starts_with("urn:ietf:params:oauth:request_uri:"),
        "{loc}"
    );
    // state, nonce, the PKCE challenge and the redirect URI stayed between us and the IdP.
    for p in ["state", "nonce", "code_challenge", "redirect_uri", "scope"] {
        assert!(!loc.contains(p), "{p} in {loc}");
    }
    let callback = env.idp.login(&mut b, &loc, "alice", "wonderland").await;
    assert!(
        callback.starts_with(&env.url("/auth/callback")),
        "{callback}"
    );
    assert_eq!(b.get(&callback).await.status, 302);
    let before = env.upstream.authorizations_seen();
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    let sent = env.upstream.authorizations_since(before);
    let session = env.session_of(&b).await.expect("session");
    assert_eq!(
        sent,
        [format!("Bearer {}", session.tokens.access_token.expose())]
    );

    // prompt=none goes through the push too: a browser without an IdP session comes back
    // with login_required, never a login page.
    let mut fresh = Browser::new();
    let r = fresh
        .get(&env.url("/auth/login?prompt=none&return_to=/silent"))
        .await;
    assert_eq!(r.status, 302);
    assert!(!r.location().contains("prompt"), "{}", r.location());
    let callback = env.follow_back(&mut fresh, &r.location()).await;
    let r = fresh.get(&callback).await;
    assert_eq!(
        (r.status, r.location()),
        (302, "/silent?error=login_required".to_string())
    );
}

#[tokio::test]
async fn par_and_the_idp_disagreeing_is_a_start_up_error_naming_oidc_par() {
    // `never` against an IdP that requires PAR.
    let env = TestEnv::start_with(Opts {
        idp_require_par: true,
        ..Opts::default()
    })
    .await;
    let mut config = env.config(0, &env.keys, "");
    config.oidc.par = Par::Never;
    let err = start_up_error(config).await;
    assert!(
        err.contains("oidc.par") && err.contains("requires pushed authorization requests"),
        "{err}"
    );

    // `always` against an IdP without a PAR endpoint; `auto` there uses the front channel.
    let env = TestEnv::start_with(Opts {
        idp_without_par: true,
        ..Opts::default()
    })
    .await;
    let mut config = env.config(0, &env.keys, "");
    config.oidc.par = Par::Always;
    let err = start_up_error(config).await;
    assert!(
        err.contains("oidc.par") && err.contains("pushed_authorization_request_endpoint"),
        "{err}"
    );
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login?return_to=/app")).await;
    let q = query(&r.location());
    assert!(q.contains_key("state") && !q.contains_key("request_uri"));
    env.login(&mut b).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
}

#[tokio::test]
async fn a_push_the_idp_cannot_take_is_a_502_that_leaves_nothing_behind() {
    let env = TestEnv::start_with(Opts {
        idp_fault: true,
        ..Opts::default()
    })
    .await;
    let fault = env.idp_fault.as_ref().expect("fault proxy");
    fault.set(Fault::Reset);
    let dbsize = || env.redis.cli(&["DBSIZE"]).trim().to_string();
    let before = dbsize();
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login?return_to=/app")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "authorization_request_failed");
    assert!(r.headers.get("set-cookie").is_none(), "{:?}", r.headers);
    assert!(b.jar.is_empty(), "{:?}", b.jar);
    assert_eq!(dbsize(), before);

    // Once the IdP answers again, the next login works.
    fault.set(Fault::Pass);
    env.login(&mut b).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
}

#[tokio::test]
async fn a_client_authenticating_in_the_body_pushes_with_its_secret_there() {
    let env = TestEnv::start_with(Opts {
        idp_require_par: true,
        client_auth: "client_secret_post",
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
}

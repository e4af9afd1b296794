//! Step-up authentication with the plain test IdP (no `acr` values configured): a route's
//! `max_age`, the step-up login that asks the IdP for it, the in-place session upgrade, and an
//! upstream's RFC 9470 challenge turned into the same JSON answer. (`route_tokens.rs` covers
//! `acr_values`, forced re-authentication and challenges ending in success.)

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv};
use reqwest::Method;
use std::sync::atomic::Ordering;

const ROUTES: &str = r#"
[[routes]]
prefix = "/recent/"
upstream = "http://@UPSTREAM@"
max_age = "5m"
[[routes]]
prefix = "/plain/"
upstream = "http://@UPSTREAM@"
"#;

/// A test env with the routes above, and a browser logged in there.
async fn logged_in() -> (TestEnv, Browser) {
    let env = TestEnv::start_with(Opts {
        extra_toml: ROUTES.into(),
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    (env, b)
}

#[tokio::test]
async fn a_max_age_route_asks_for_a_step_up_and_the_session_is_upgraded_in_place() {
    let (env, mut b) = logged_in().await;
    let before = env.session_of(&b).await.expect("session");
    // The first login asked for no max_age, so its ID token need not carry auth_time: the
    // route cannot know the login is recent.
    assert!(
        before.claims.get("auth_time").is_none(),
        "{:?}",
        before.claims
    );
    assert_eq!(b.xhr(Method::GET, &env.url("/plain/x")).await.status, 200);
    let r = b.xhr(Method::GET, &env.url("/recent/x")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.headers.get("location").is_none());
    let v = r.json();
    assert_eq!(v["error"], "step_up_required");
    assert_eq!(v["max_age"], 300);
    assert_eq!(v["login_url"], "/auth/login?max_age=300");
    let upstream_calls = env.upstream.count();

    // The SPA follows login_url with its page as return_to.
    let cookie = b.jar.clone();
    let r = b
        .get(&env.url("/auth/login?max_age=300&return_to=/app/pay"))
        .await;
    assert_eq!(r.status, 302);
    let callback = env.follow_back(&mut b, &r.location()).await;
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), "/app/pay");
    assert!(
        r.set_cookie("__Host-cloakroom").is_none() && r.set_cookie("cloakroom").is_none(),
        "no new session cookie: {:?}",
        r.set_cookies()
    );
    assert_eq!(b.jar, cookie, "the same session cookie");
    let after = env
        .session_of(&b)
        .await
        .expect("the same session, upgraded");
    assert_eq!(after.created_at, before.created_at);
    assert_eq!(after.absolute_expires_at, before.absolute_expires_at);
    assert!(after.claims.get("auth_time").is_some());
    assert_ne!(
        after.tokens.access_token.expose(),
        before.tokens.access_token.expose(),
        "new tokens"
    );
    let r = b.xhr(Method::GET, &env.url("/recent/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.upstream.count(), upstream_calls + 1);
    let user = b.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_eq!(user["auth_time"], after.claims["auth_time"], "{user}");
    // Still one session: the old record was replaced, not joined by another.
    let r = reqwest::Client::new()
        .get(env.admin_url(0, "/admin/users/alice/sessions"))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    let listed: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    for t in [&after.tokens.access_token, &before.tokens.access_token] {
        assert!(!b.received.contains(t.expose()));
    }
}

#[tokio::test]
async fn an_upstreams_rfc_9470_challenge_reaches_the_spa_as_a_step_up_answer() {
    let (env, mut b) = logged_in().await;
    let r = b.xhr(Method::GET, &env.url("/plain/challenge/pay")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.headers.get("www-authenticate").is_none(), "JSON only");
    let v = r.json();
    assert_eq!(v["error"], "step_up_required", "{v}");
    assert_eq!(v["max_age"], 60);
    assert_eq!(v["login_url"], "/auth/login?max_age=60");
    assert_eq!(
        env.upstream.seen.step_up_challenges.load(Ordering::SeqCst),
        1
    );
    // An ordinary 401 of the upstream is passed on as it is.
    let r = b.xhr(Method::GET, &env.url("/plain/dpop-nonce/x")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "use_dpop_nonce");
    assert!(r.headers.get("www-authenticate").is_some());
}

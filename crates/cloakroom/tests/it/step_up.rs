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

/// The session's refresh lock key in the env's Redis.
fn lock_key(env: &TestEnv, b: &Browser) -> String {
    let mut headers = http::HeaderMap::new();
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    headers.insert(http::header::COOKIE, cookie.parse().expect("cookie"));
    let handle = cloakroom::cookies::Cookies::from_config(&env.config(1, &env.keys, ""))
        .session_id(&headers)
        .expect("session id")
        .handle();
    format!("cloakroom:lock:{{{handle}}}")
}

async fn until(what: &str, done: impl FnMut() -> bool) {
    until_within(what, std::time::Duration::from_secs(15), done).await;
}

async fn until_within(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_in_flight_cannot_undo_a_step_up_upgrade() {
    use crate::support::fault::{Fault, FaultProxy};
    use std::time::Duration;
    let mut env = TestEnv::start_with(Opts {
        extra_toml: ROUTES.into(),
        access_token_ttl: 60,
        refresh_skew: "10s",
        idp_fault: true,
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let before = env.session_of(&b).await.expect("session");
    assert!(before.claims.get("auth_time").is_none());
    // A second instance, whose Redis connections go through a proxy of this test's own (with a
    // store timeout long enough that a held write is not retried).
    let redis_addr = env
        .redis
        .url()
        .trim_start_matches("redis://")
        .parse()
        .expect("addr");
    let redis = FaultProxy::start(redis_addr).await;
    let toml = env.toml(1, ROUTES).replace(
        &format!("url = \"{}\"", env.store_url()),
        &format!("url = \"{}\"\ntimeout = \"10s\"", redis.url("redis")),
    );
    let vars = env.env_vars(&env.keys);
    let other = env
        .start_extra_with(
            move |port| toml.replace("127.0.0.1:1\"", &format!("127.0.0.1:{port}\"")),
            &vars,
        )
        .await;
    let idp = env.idp_fault.as_ref().expect("IdP proxy");

    // The access token expires; a call on the second instance starts a refresh there, which
    // reads the record (generation 0), takes the lock and is held at the IdP.
    env.advance(Duration::from_secs(61));
    idp.set(Fault::Stall);
    let lock = lock_key(&env, &b);
    let api = {
        let (url, cookie) = (format!("{}/api/x", env.base(other)), cookie.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .header("x-csrf", "1")
                .header("cookie", cookie)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    until("no refresh started", || {
        env.redis.cli(&["EXISTS", &lock]).contains('1')
    })
    .await;
    // The IdP answers (rotating the refresh token); the write of the refreshed session is held
    // on its way to Redis.
    redis.set(Fault::Stall);
    idp.set(Fault::Pass);
    env.idp
        .wait_stat(&["token_requests", "refresh_token"], 1)
        .await;

    // Meanwhile the user steps up on the first instance.
    let r = b
        .get(&env.url("/auth/login?max_age=300&return_to=/app/pay"))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = env.follow_back(&mut b, &r.location()).await;
    let mut step_up = tokio::spawn(async move {
        let r = b.get(&callback).await;
        (b, r)
    });
    // The upgrade waits for the refresh in flight (it holds the lock); without that wait it
    // would be done by now.
    let early = tokio::time::timeout(Duration::from_secs(2), &mut step_up)
        .await
        .ok();
    let waited = early.is_none();
    redis.set(Fault::Pass);
    let (b, r) = match early {
        Some(done) => done,
        None => step_up.await,
    }
    .expect("join");
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), "/app/pay");
    // Normally at once; in the whole suite on two loaded cores it was once still held after
    // 15 s (issue note of 2026-12-08: to be found out), so the wait covers the lock's lease
    // on the second instance (store timeout 10 s: about 45 s). What this test is about is
    // checked below: the record is the upgraded one.
    until_within(
        "the refresh lock was not released within its lease",
        Duration::from_secs(60),
        || !env.redis.cli(&["EXISTS", &lock]).contains('1'),
    )
    .await;
    let _ = api.await;

    // The record is the upgraded session, not the refresh of the old one written over it.
    let after = env.session_of(&b).await.expect("session");
    assert!(
        after.claims.get("auth_time").is_some(),
        "the step-up was undone by the refresh in flight (the upgrade waited: {waited})"
    );
    let mut b = b;
    let r = b.xhr(Method::GET, &env.url("/recent/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Its refresh token is the live one: the next refresh works, no grant lost.
    env.advance(Duration::from_secs(61));
    let before_refreshes = env.idp.stat(&["token_requests", "refresh_token"]).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/plain/x")).await.status, 200);
    assert!(env.idp.stat(&["token_requests", "refresh_token"]).await > before_refreshes);
    assert_eq!(env.idp.stat(&["refresh_reuse"]).await, 0);
    assert_eq!(env.idp.stat(&["grants_revoked"]).await, 0);
}

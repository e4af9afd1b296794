//! The user's own sessions ("your devices", sign out elsewhere and everywhere), "remember me",
//! and the SPA's state kept with its session: on real Redis, against the real IdP, over two
//! instances.

use crate::support::browser::{Browser, Resp};
use crate::support::{Opts, TestEnv};
use reqwest::Method;
use std::time::Duration;

const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0";

fn browser(ua: &str) -> Browser {
    let mut b = Browser::new();
    b.user_agent = ua.into();
    b
}

async fn devices(env: &TestEnv, b: &mut Browser, i: usize) -> Vec<serde_json::Value> {
    let r = b
        .xhr(Method::GET, &format!("{}/auth/sessions", env.base(i)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["sessions"].as_array().expect("sessions").clone()
}

async fn api(env: &TestEnv, b: &mut Browser, i: usize) -> u16 {
    b.xhr(Method::GET, &format!("{}/api/x", env.base(i)))
        .await
        .status
}

/// Nothing a session holds appears in what the browser received.
async fn no_tokens(env: &TestEnv, b: &Browser, held: &[cloakroom::session::Session]) {
    let _ = env;
    for s in held {
        assert!(!b.received.contains(s.tokens.access_token.expose()));
        if let Some(rt) = &s.tokens.refresh_token {
            assert!(!b.received.contains(rt.expose()));
        }
        assert!(!b.received.contains(s.tokens.id_token.expose()));
    }
}

#[tokio::test]
async fn the_user_lists_their_devices_and_ends_one_on_every_instance() {
    let env = TestEnv::start_with(Opts {
        instances: 2,
        ..Opts::default()
    })
    .await;
    let mut laptop = browser(CHROME);
    env.login_as(&mut laptop, 0, "alice", "wonderland").await;
    let mut desktop = browser(FIREFOX);
    env.login_as(&mut desktop, 1, "alice", "wonderland").await;
    let mut other = Browser::new();
    env.login_as(&mut other, 0, "bob", "builder").await;

    let list = devices(&env, &mut laptop, 0).await;
    assert_eq!(list.len(), 2, "alice's two, never bob's: {list:?}");
    assert_eq!(list[0]["current"], true, "this one first");
    assert_eq!(list[0]["device"], "Chrome on Linux");
    assert_eq!(list[1]["current"], false);
    assert_eq!(list[1]["device"], "Firefox on Windows 10");
    for d in &list {
        assert_eq!(d["ip"], "127.0.0.1");
        assert!(d["created_at"].as_i64().is_some() && d["last_seen"].as_i64().is_some());
        let id = d["id"].as_str().expect("id");
        assert_eq!(id.len(), 8, "a short id: {id}");
    }
    let held: Vec<_> = [
        env.session_of(&laptop).await.expect("laptop"),
        env.session_of(&desktop).await.expect("desktop"),
    ]
    .into();
    no_tokens(&env, &laptop, &held).await;

    // CSRF header required.
    let r = laptop.get(&env.url("/auth/sessions")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Bob's session is not alice's to end; an unknown id neither.
    let bobs = devices(&env, &mut other, 0).await[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    for id in [bobs.as_str(), "nosuchid"] {
        let r = laptop
            .xhr(Method::DELETE, &env.url(&format!("/auth/sessions/{id}")))
            .await;
        assert_eq!(r.status, 404, "{id}: {}", r.body);
        assert_eq!(r.json()["error"], "not_found");
    }
    assert_eq!(api(&env, &mut other, 0).await, 200);

    // The desktop (signed in on instance 1) is ended from the laptop (instance 0).
    assert_eq!(api(&env, &mut desktop, 1).await, 200);
    let id = list[1]["id"].as_str().expect("id");
    let r = laptop
        .xhr(Method::DELETE, &env.url(&format!("/auth/sessions/{id}")))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ended"], true);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while api(&env, &mut desktop, 1).await != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "instance 1 still serves the ended session after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api(&env, &mut laptop, 0).await, 200);
    assert_eq!(devices(&env, &mut laptop, 1).await.len(), 1);
    // Ending this browser's own session: it is over, and its cookie is expired.
    let own = list[0]["id"].as_str().expect("id");
    let r = laptop
        .xhr(Method::DELETE, &env.url(&format!("/auth/sessions/{own}")))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["current"], true);
    assert!(
        !laptop.jar.contains_key("__Host-cloakroom"),
        "cookie expired"
    );
    assert_eq!(api(&env, &mut laptop, 0).await, 401);
    // Its tokens were revoked at the IdP.
    let rt = held[1].tokens.refresh_token.as_ref().expect("rt").expose();
    env.idp.wait_revoked(rt).await;
}

#[tokio::test]
async fn sign_out_of_the_other_devices_or_everywhere() {
    let env = TestEnv::start_with(Opts {
        instances: 2,
        ..Opts::default()
    })
    .await;
    let mut a = browser(CHROME);
    env.login_as(&mut a, 0, "alice", "wonderland").await;
    let mut b = browser(FIREFOX);
    env.login_as(&mut b, 1, "alice", "wonderland").await;
    let mut c = Browser::new();
    env.login_as(&mut c, 1, "alice", "wonderland").await;
    let mut bob = Browser::new();
    env.login_as(&mut bob, 0, "bob", "builder").await;
    let held_b = env.session_of(&b).await.expect("b");

    // Others: this one stays (no cookie change), the other two end on every instance.
    let jar = a.jar.get("__Host-cloakroom").cloned();
    let r = a
        .send(
            a.request(Method::POST, &env.url("/auth/logout"))
                .header("x-csrf", "1")
                .header("content-type", "application/json")
                .body(r#"{"scope":"others"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ended"], 2);
    assert!(r.json()["end_session_url"].is_null());
    assert_eq!(a.jar.get("__Host-cloakroom").cloned(), jar);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while api(&env, &mut b, 1).await != 401 || api(&env, &mut c, 1).await != 401 {
        assert!(std::time::Instant::now() < deadline, "still live after 1 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api(&env, &mut a, 0).await, 200);
    assert_eq!(api(&env, &mut bob, 0).await, 200, "another user's are kept");
    env.idp
        .wait_revoked(held_b.tokens.refresh_token.as_ref().expect("rt").expose())
        .await;

    // Everywhere: two fresh sessions and this one all end, and the IdP logout URL comes back.
    let mut d = Browser::new();
    env.login_as(&mut d, 1, "alice", "wonderland").await;
    let r = a
        .send(
            a.request(Method::POST, &env.url("/auth/logout"))
                .header("x-csrf", "1")
                .body(r#"{"scope":"everywhere"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ended"], 2);
    assert!(r.json()["end_session_url"].is_string());
    assert_eq!(api(&env, &mut a, 0).await, 401);
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while api(&env, &mut d, 1).await != 401 {
        assert!(std::time::Instant::now() < deadline, "still live after 1 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api(&env, &mut bob, 0).await, 200);

    // A scope that is not one: 400, nothing ended.
    let r = bob
        .send(
            bob.request(Method::POST, &env.url("/auth/logout"))
                .header("x-csrf", "1")
                .body(r#"{"scope":"galaxy"}"#),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(api(&env, &mut bob, 0).await, 200);
}

/// `v` is `expected`, or a few seconds less (the session was made a moment before `now`).
fn near(v: &serde_json::Value, expected: i64) {
    let v = v.as_i64().expect("a unix time");
    assert!(
        (expected - 3..=expected).contains(&v),
        "{v} is not {expected}"
    );
}

fn max_age(r: &Resp) -> Option<i64> {
    r.set_cookies()
        .iter()
        .find(|c| c.starts_with("__Host-cloakroom="))
        .and_then(|c| {
            c.split(';')
                .find_map(|p| p.trim().strip_prefix("Max-Age="))
                .and_then(|v| v.parse().ok())
        })
}

async fn login_remembered(env: &TestEnv, b: &mut Browser, remember: bool) -> Resp {
    let r = b
        .get(&env.url(&format!("/auth/login?return_to=/app&remember={remember}")))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = env.idp.login(b, &r.location(), "alice", "wonderland").await;
    b.get(&callback).await
}

const REMEMBER: &str =
    "[session.remember]\nenabled = true\nabsolute_timeout = \"30d\"\nidle_timeout = \"7d\"\n";

#[tokio::test]
async fn remember_me_makes_a_persistent_cookie_and_its_own_lifetimes() {
    let env = TestEnv::start_with(Opts {
        session_toml: REMEMBER.into(),
        ..Opts::default()
    })
    .await;
    let mut kept = Browser::new();
    let r = login_remembered(&env, &mut kept, true).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let age = max_age(&r).expect("a persistent cookie");
    assert_eq!(age, 30 * 24 * 3600);
    let mut plain = Browser::new();
    let r = login_remembered(&env, &mut plain, false).await;
    assert_eq!(max_age(&r), None, "a browser-session cookie");

    let user = kept.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_eq!(user["remembered"], true, "{user}");
    let s = &user["session"];
    let now = s["now"].as_i64().expect("now");
    near(&s["absolute_expires_at"], now + 30 * 24 * 3600);
    near(&s["idle_expires_at"], now + 7 * 24 * 3600);
    let user = plain.xhr(Method::GET, &env.url("/auth/user")).await.json();
    assert_eq!(user["remembered"], false);
    let devices = devices(&env, &mut kept, 0).await;
    assert!(devices
        .iter()
        .any(|d| d["remembered"] == true && d["current"] == true));

    // An hour idle: the plain session (30 min idle) is over, the remembered one is not.
    env.advance(Duration::from_secs(3600));
    assert_eq!(api(&env, &mut plain, 0).await, 401);
    assert_eq!(api(&env, &mut kept, 0).await, 200);
    // Eight days idle: over too.
    env.advance(Duration::from_secs(8 * 24 * 3600));
    assert_eq!(api(&env, &mut kept, 0).await, 401);

    // Logout ends a remembered session like any other.
    let mut again = Browser::new();
    login_remembered(&env, &mut again, true).await;
    assert_eq!(api(&env, &mut again, 0).await, 200);
    let r = again.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200);
    assert_eq!(api(&env, &mut again, 0).await, 401);
}

#[tokio::test]
async fn remember_me_is_refused_where_it_is_off_and_bounded_by_the_refresh_tokens_life() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    let r = b
        .get(&env.url("/auth/login?remember=true&return_to=/app%3Fx%3D1"))
        .await;
    assert_eq!(
        r.status, 302,
        "a navigation goes back to the SPA: {}",
        r.body
    );
    assert_eq!(r.location(), "/app?x=1&error=remember_disabled");
    assert!(r.set_cookies().is_empty(), "no login started");

    // An IdP that says its refresh tokens live a day: a remembered session lives no longer.
    let mut o = Opts {
        session_toml: REMEMBER.into(),
        ..Opts::default()
    };
    o.idp_extra.insert("refresh_expires_in".into(), true.into());
    o.idp_extra
        .insert("refresh_token_ttl".into(), 86_400.into());
    let env = TestEnv::start_with(o).await;
    let r = login_remembered(&env, &mut b, true).await;
    assert_eq!(max_age(&r), Some(86_400));
    let user = b.xhr(Method::GET, &env.url("/auth/user")).await.json();
    let s = &user["session"];
    near(
        &s["absolute_expires_at"],
        s["now"].as_i64().expect("now") + 86_400,
    );
}

#[tokio::test]
async fn the_spa_keeps_a_small_sealed_state_with_its_session() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let put = |b: &Browser, body: String| {
        b.request(Method::PUT, &env.url("/auth/session/state"))
            .header("x-csrf", "1")
            .header("content-type", "application/json")
            .body(body)
    };
    let r = b.xhr(Method::GET, &env.url("/auth/session/state")).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["state"].is_null());

    let state = r#"{"draft":"a secret note 7f3a","page":3}"#;
    let r = b.send(put(&b, state.into())).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = b.xhr(Method::GET, &env.url("/auth/session/state")).await;
    assert_eq!(r.json()["state"]["draft"], "a secret note 7f3a");
    // Sealed at rest.
    for k in env.redis.values(&["KEYS", "*"]) {
        let v = env.redis.cli(&["DUMP", &k]);
        assert!(
            !v.contains("a secret note"),
            "{k} holds the state in plaintext"
        );
    }

    // Too large, not JSON, no CSRF header: refused, the state kept.
    let big = format!("\"{}\"", "x".repeat(cloakroom::auth::MAX_STATE));
    let r = b.send(put(&b, big)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"], "state_too_large");
    let r = b.send(put(&b, "not json".into())).await;
    assert_eq!(r.status, 400);
    let r = b
        .send(
            b.request(Method::PUT, &env.url("/auth/session/state"))
                .body("{}"),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = b.xhr(Method::GET, &env.url("/auth/session/state")).await;
    assert_eq!(r.json()["state"]["page"], 3);

    let held = env.session_of(&b).await.expect("session");
    no_tokens(&env, &b, &[held]).await;
    // Another user's session has its own (none); logout deletes this one's.
    let mut other = Browser::new();
    env.login_as(&mut other, 0, "bob", "builder").await;
    let r = other
        .xhr(Method::GET, &env.url("/auth/session/state"))
        .await;
    assert!(r.json()["state"].is_null());
    b.xhr(Method::POST, &env.url("/auth/logout")).await;
    let r = b.xhr(Method::GET, &env.url("/auth/session/state")).await;
    assert_eq!(r.status, 401);
    let left = env.redis.values(&["KEYS", "cloakroom:shared:*"]);
    assert!(left.is_empty(), "the state went with its session: {left:?}");
}

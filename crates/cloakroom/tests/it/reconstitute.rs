//! Re-constituted sessions (`session.reconstitute`): a session that times out idle is ended by
//! the reaper — its tokens revoked at the IdP with no request from anyone — and leaves its
//! user, creation time and the SPA's state for the window; the same user signing in again in
//! the same browser gets the state back, anyone else nothing. On real Redis, the real IdP,
//! and the clock seam (no sleeping through timeouts).

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv};
use reqwest::Method;
use std::time::Duration;

const RECONSTITUTE: &str = "[session.reconstitute]\nenabled = true\nwindow = \"7d\"\n";

fn opts() -> Opts {
    Opts {
        session_toml: RECONSTITUTE.into(),
        ..Opts::default()
    }
}

async fn save_state(env: &TestEnv, b: &mut Browser, json: &str) {
    let req = b
        .request(Method::PUT, &env.url("/auth/session/state"))
        .header("x-csrf", "1")
        .header("content-type", "application/json")
        .body(json.to_string());
    let r = b.send(req).await;
    assert_eq!(r.status, 204, "{}", r.body);
}

async fn state(env: &TestEnv, b: &mut Browser) -> serde_json::Value {
    let r = b.xhr(Method::GET, &env.url("/auth/session/state")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["state"].clone()
}

async fn user(env: &TestEnv, b: &mut Browser) -> serde_json::Value {
    let r = b.xhr(Method::GET, &env.url("/auth/user")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Drops the IdP's cookies (cookies ignore ports: the jar holds the IdP's and ours).
fn forget_idp(b: &mut Browser) {
    b.jar.retain(|k, _| k.starts_with("__Host-cloakroom"));
}

/// Lets the session of `b` time out idle and waits until the reaper ended it (its refresh
/// token revoked at the IdP).
async fn time_out(env: &TestEnv, b: &Browser) {
    let s = env.session_of(b).await.expect("a session");
    for t in [&s.tokens.access_token, &s.tokens.id_token]
        .into_iter()
        .chain(s.tokens.refresh_token.as_ref())
    {
        assert!(
            !b.received.contains(t.expose()),
            "a token reached the browser"
        );
    }
    env.advance(Duration::from_secs(31 * 60));
    env.idp
        .wait_revoked(s.tokens.refresh_token.as_ref().expect("rt").expose())
        .await;
}

#[tokio::test]
async fn an_idle_timeout_is_reaped_and_the_same_user_gets_the_state_back() {
    let env = TestEnv::start_with(opts()).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let first = user(&env, &mut b).await;
    assert_eq!(first["reconstituted"], false);
    save_state(
        &env,
        &mut b,
        r#"{"route":"/orders/42","draft":"half a sentence"}"#,
    )
    .await;

    // Idle past the timeout: the reaper ends it on its own, tokens revoked, record gone.
    time_out(&env, &b).await;
    assert!(
        env.redis.values(&["KEYS", "cloakroom:s:*"]).is_empty(),
        "the session record was removed"
    );
    assert_eq!(
        b.xhr(Method::GET, &env.url("/api/x")).await.status,
        401,
        "the cookie no longer works"
    );
    // Only the sealed leftover is kept (and nothing in it is readable).
    for k in env.redis.values(&["KEYS", "*"]) {
        assert!(
            !env.redis.cli(&["DUMP", &k]).contains("half a sentence"),
            "{k}"
        );
    }

    // The same user signs in again in the same browser: a new session, with the state back.
    env.login(&mut b).await;
    let again = user(&env, &mut b).await;
    assert_eq!(again["reconstituted"], true, "{again}");
    assert_eq!(again["sub"], "alice");
    assert_eq!(state(&env, &mut b).await["route"], "/orders/42");

    // The leftover was taken: a second re-login gets nothing more.
    env.login(&mut b).await;
    assert_eq!(user(&env, &mut b).await["reconstituted"], false);
}

#[tokio::test]
async fn another_user_gets_nothing_and_the_leftover_is_gone_either_way() {
    let env = TestEnv::start_with(opts()).await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    save_state(&env, &mut b, r#"{"secret":"alice's"}"#).await;
    time_out(&env, &b).await;

    // Bob signs in on the same browser (signed out of the IdP first: only our cookies stay):
    // nothing of alice's.
    forget_idp(&mut b);
    env.login_as(&mut b, 0, "bob", "builder").await;
    let u = user(&env, &mut b).await;
    assert_eq!(u["sub"], "bob");
    assert_eq!(u["reconstituted"], false);
    assert!(state(&env, &mut b).await.is_null());
    // ... and alice after him gets nothing either: the leftover was dropped.
    forget_idp(&mut b);
    env.login(&mut b).await;
    assert_eq!(user(&env, &mut b).await["reconstituted"], false);
    assert!(state(&env, &mut b).await.is_null());
}

#[tokio::test]
async fn a_logout_or_a_browser_that_signs_in_before_the_reaper_came() {
    let env = TestEnv::start_with(opts()).await;
    // Logout is not a timeout: nothing is kept.
    let mut b = Browser::new();
    env.login(&mut b).await;
    save_state(&env, &mut b, r#"{"n":1}"#).await;
    assert_eq!(
        b.xhr(Method::POST, &env.url("/auth/logout")).await.status,
        200
    );
    env.login(&mut b).await;
    assert_eq!(user(&env, &mut b).await["reconstituted"], false);
    assert!(state(&env, &mut b).await.is_null());

    // An absolute timeout is not an idle one: nothing is kept either.
    save_state(&env, &mut b, r#"{"n":2}"#).await;
    let s = env.session_of(&b).await.expect("session");
    for _ in 0..30 {
        // Active all along (sliding), until the 12 h absolute lifetime ends it.
        env.advance(Duration::from_secs(25 * 60));
        b.xhr(Method::GET, &env.url("/auth/user")).await;
    }
    env.idp
        .wait_revoked(s.tokens.refresh_token.as_ref().expect("rt").expose())
        .await;
    env.login(&mut b).await;
    assert_eq!(user(&env, &mut b).await["reconstituted"], false);
}

/// The short id of `b`'s own session (as the logs name it).
async fn own_id(env: &TestEnv, b: &mut Browser) -> String {
    let r = b.xhr(Method::GET, &env.url("/auth/sessions")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["sessions"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["current"] == true))
        .and_then(|s| s["id"].as_str())
        .expect("this session")
        .to_string()
}

/// Waits for the audit line ending session `id` with `reason`.
async fn wait_audit(id: &str, reason: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = crate::support::logs();
        if logs
            .lines()
            .any(|l| l.contains("session_ended") && l.contains(reason) && l.contains(id))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no session_ended {reason} audit event for {id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `session.end_timed_out` without re-constitution: an idle and an absolute timeout each end
/// their session actively — tokens revoked at the IdP, an audit event with the reason — and
/// nothing is left behind for a later login.
#[tokio::test]
async fn timed_out_sessions_are_ended_revoked_and_audited_without_reconstitution() {
    let env = TestEnv::start_with(Opts {
        idle_timeout: "30m",
        absolute_timeout: "1h",
        session_toml: "end_timed_out = true\n".into(),
        ..Opts::default()
    })
    .await;
    // Idle.
    let mut idle = Browser::new();
    env.login(&mut idle).await;
    let id = own_id(&env, &mut idle).await;
    time_out(&env, &idle).await;
    wait_audit(&id, "idle_timeout").await;
    assert_eq!(idle.xhr(Method::GET, &env.url("/api/x")).await.status, 401);

    // Absolute: kept busy (every 20 min) until the hour is up.
    let mut busy = Browser::new();
    env.login(&mut busy).await;
    let id = own_id(&env, &mut busy).await;
    let s = env.session_of(&busy).await.expect("a session");
    for _ in 0..2 {
        env.advance(Duration::from_secs(20 * 60));
        assert_eq!(
            busy.xhr(Method::GET, &env.url("/auth/user")).await.status,
            200
        );
    }
    env.advance(Duration::from_secs(21 * 60));
    env.idp
        .wait_revoked(s.tokens.refresh_token.as_ref().expect("rt").expose())
        .await;
    wait_audit(&id, "absolute_timeout").await;

    // No leftover: the next login in the idle browser is a fresh session.
    forget_idp(&mut idle);
    env.login(&mut idle).await;
    assert_eq!(user(&env, &mut idle).await["reconstituted"], false);
}

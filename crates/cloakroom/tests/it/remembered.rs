//! Remembered sessions outlive `session.absolute_timeout`, and so must their entries in the
//! `sub`/`sid` indexes: every path that finds a user's sessions through them — back-channel
//! logout, `logout scope=others|everywhere`, the admin per-user end, `/auth/sessions` — still
//! finds a remembered session older than `absolute_timeout` (issue #30, item 1).
//!
//! Time moves by the clock seam; Redis is made to catch up with it ([`age_redis`]: every key's
//! TTL runs down by the same amount, the ones it would have expired are gone), never by
//! sleeping.

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv, ADMIN_TOKEN, CLIENT_ID};
use reqwest::Method;
use std::time::Duration;

const REMEMBER: &str =
    "[session.remember]\nenabled = true\nabsolute_timeout = \"30d\"\nidle_timeout = \"7d\"\n";

/// Past the env's `session.absolute_timeout` (12 h), well inside a remembered session's idle
/// timeout (7 d).
const LATER: Duration = Duration::from_secs(13 * 3600);

/// Moves Cloakroom's clock forward by `d` and makes the env's Redis catch up: every key with a
/// TTL loses `d` of it, and the keys that would have expired meanwhile are deleted.
fn advance_all(env: &TestEnv, d: Duration) {
    env.advance(d);
    age_redis(env, d);
}

fn age_redis(env: &TestEnv, d: Duration) {
    let by = i64::try_from(d.as_millis()).expect("ms");
    for key in env.redis.values(&["KEYS", "cloakroom:*"]) {
        let pttl: i64 = env.redis.values(&["PTTL", &key])[0].parse().expect("PTTL");
        if pttl < 0 {
            continue; // no TTL (the reaper's schedule), or gone meanwhile
        }
        if pttl <= by {
            env.redis.cli(&["DEL", &key]);
        } else {
            env.redis.cli(&["PEXPIRE", &key, &(pttl - by).to_string()]);
        }
    }
}

async fn login(env: &TestEnv, remember: bool) -> Browser {
    let mut b = Browser::new();
    let r = b
        .get(&env.url(&format!("/auth/login?return_to=/app&remember={remember}")))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);
    b
}

async fn api(env: &TestEnv, b: &mut Browser) -> u16 {
    b.xhr(Method::GET, &env.url("/api/x")).await.status
}

/// A remembered session of alice's, then `LATER` (past `absolute_timeout`): still in use.
async fn old_remembered(env: &TestEnv) -> Browser {
    let mut b = login(env, true).await;
    advance_all(env, LATER);
    assert_eq!(
        api(env, &mut b).await,
        200,
        "a remembered session outlives absolute_timeout"
    );
    b
}

async fn logout(env: &TestEnv, b: &mut Browser, scope: &str) -> serde_json::Value {
    let r = b
        .send(
            b.request(Method::POST, &env.url("/auth/logout"))
                .header("x-csrf", "1")
                .header("content-type", "application/json")
                .body(format!(r#"{{"scope":"{scope}"}}"#)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[tokio::test]
async fn a_remembered_session_older_than_absolute_timeout_is_found_by_every_index_path() {
    let env = TestEnv::start_with(Opts {
        session_toml: REMEMBER.into(),
        ..Opts::default()
    })
    .await;

    // /auth/sessions lists it, and the admin per-user end ends it.
    let mut old = old_remembered(&env).await;
    let mut now = login(&env, false).await;
    let r = now.xhr(Method::GET, &env.url("/auth/sessions")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = r.json()["sessions"].as_array().expect("sessions").clone();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|d| d["remembered"] == true && d["current"] == false),
        "the remembered session is listed: {listed:?}"
    );
    let r = old.xhr(Method::GET, &env.url("/auth/sessions")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .any(|d| d["current"] == true),
        "it lists itself: {}",
        r.body
    );
    let r = reqwest::Client::new()
        .get(env.admin_url(0, "/admin/users/alice/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["sessions"].as_array().map(Vec::len), Some(2), "{v}");
    let r = reqwest::Client::new()
        .delete(env.admin_url(0, "/admin/users/alice/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["ended"], 2, "{v}");
    assert_eq!(api(&env, &mut old).await, 401, "ended by the admin");
    assert_eq!(api(&env, &mut now).await, 401);

    // logout scope=others, from a session made after it. A plain login in between, whose
    // own lifetime is shorter, must not cut the index's TTL down to its own.
    let mut old = old_remembered(&env).await;
    let _plain = login(&env, false).await;
    advance_all(&env, LATER);
    let mut now = login(&env, false).await;
    assert_eq!(logout(&env, &mut now, "others").await["ended"], 1);
    assert_eq!(api(&env, &mut old).await, 401, "ended by scope=others");
    assert_eq!(api(&env, &mut now).await, 200);

    // logout scope=everywhere (the session above has idled out meanwhile).
    let mut old = old_remembered(&env).await;
    let mut now = login(&env, false).await;
    assert_eq!(logout(&env, &mut now, "everywhere").await["ended"], 2);
    assert_eq!(api(&env, &mut old).await, 401, "ended by scope=everywhere");
    assert_eq!(api(&env, &mut now).await, 401);

    // Back-channel logout: the user logs out at the IdP, which sends its own logout token
    // (`sub` and this IdP session's `sid`).
    let mut old = old_remembered(&env).await;
    let mut other = login(&env, false).await;
    let s = env.session_of(&old).await.expect("session");
    let end = format!(
        "{}?id_token_hint={}&post_logout_redirect_uri={}&client_id={CLIENT_ID}",
        env.idp.url("/session/end"),
        s.tokens.id_token.expose(),
        url::form_urlencoded::byte_serialize(format!("{}/", env.base(0)).as_bytes())
            .collect::<String>()
    );
    let sent = env.idp.stat(&["backchannel_logouts_sent"]).await;
    let back = env.idp.end_session(&mut old, &end).await;
    assert!(back.starts_with(&env.base(0)), "{back}");
    assert!(env.idp.stat(&["backchannel_logouts_sent"]).await > sent);
    assert_eq!(
        api(&env, &mut old).await,
        401,
        "ended by back-channel logout"
    );
    assert!(env.session_of(&old).await.is_none());
    assert_eq!(
        api(&env, &mut other).await,
        200,
        "another IdP session's is kept"
    );
}

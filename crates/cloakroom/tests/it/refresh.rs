//! SPEC §3 token lifecycle under failure (issue #10), against the real IdP (rotating refresh
//! tokens, reuse revokes the grant) and real Redis, with faults on real sockets
//! (`support/fault.rs`) and time moved by each instance's clock instead of sleeps.
//!
//! Every scenario counts the refresh grants the IdP answered and checks that no grant was
//! revoked (`refresh_reuse` and `grants_revoked` stay 0): a lost rotated refresh token shows
//! up as a reuse at the next refresh.

use crate::support::browser::Browser;
use crate::support::fault::Fault;
use crate::support::{Opts, TestEnv, CLIENT_ID, CLIENT_SECRET};
use reqwest::Method;
use std::time::Duration;

fn cookie_of(b: &Browser) -> String {
    format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"])
}

async fn refreshes(env: &TestEnv) -> u64 {
    env.idp.stat(&["token_requests", "refresh_token"]).await
}

/// Waits until the IdP has answered `n` refresh grants in all (a refresh behind a forwarded
/// request finishes after its response).
async fn refreshes_reach(env: &TestEnv, n: u64) -> u64 {
    env.idp
        .wait_stat(&["token_requests", "refresh_token"], n)
        .await
}

async fn no_grant_lost(env: &TestEnv) {
    assert_eq!(
        env.idp.stat(&["refresh_reuse"]).await,
        0,
        "a refresh token was reused"
    );
    assert_eq!(
        env.idp.stat(&["grants_revoked"]).await,
        0,
        "a grant was revoked"
    );
}

/// One API call through instance `i`; returns (status, the Authorization the upstream got).
async fn call(env: &TestEnv, i: usize, cookie: &str) -> (u16, Option<String>) {
    let seen = env.upstream.authorizations_seen();
    let r = reqwest::Client::new()
        .get(format!("{}/api/x", env.base(i)))
        .header("x-csrf", "1")
        .header("cookie", cookie)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let auth = (status == 200)
        .then(|| env.upstream.authorizations_since(seen).pop())
        .flatten();
    (status, auth)
}

fn bearer(s: &cloakroom::session::Session) -> String {
    format!("Bearer {}", s.tokens.access_token.expose())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_tokens_are_refreshed_at_half_life_never_on_every_request() {
    // 20 s access tokens against the default 60 s skew: the case that used to refresh on every
    // request.
    let env = TestEnv::start_with(Opts {
        access_token_ttl: 20,
        refresh_skew: "60s",
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = cookie_of(&b);
    let first = env.session_of(&b).await.expect("session");
    assert_eq!(first.tokens.access_lifetime, Some(20), "lifetime recorded");

    // Five calls a second apart: none is due (more than 10 s left), no refresh.
    for _ in 0..5 {
        env.advance(Duration::from_secs(1));
        let (status, auth) = call(&env, 0, &cookie).await;
        assert_eq!(status, 200);
        assert_eq!(auth, Some(bearer(&first)));
    }
    assert_eq!(refreshes(&env).await, 0);

    // Past half-life (9 s left): due but valid, forwarded at once; one refresh behind it.
    env.advance(Duration::from_secs(6));
    let (status, auth) = call(&env, 0, &cookie).await;
    assert_eq!(status, 200);
    assert_eq!(
        auth,
        Some(bearer(&first)),
        "still valid: forwarded as it was"
    );
    assert_eq!(refreshes_reach(&env, 1).await, 1);
    let second = env.session_of(&b).await.expect("session");
    assert_ne!(bearer(&second), bearer(&first));
    for _ in 0..5 {
        let (status, auth) = call(&env, 0, &cookie).await;
        assert_eq!(status, 200);
        assert_eq!(auth, Some(bearer(&second)));
    }
    assert_eq!(
        refreshes(&env).await,
        1,
        "the new token is not refreshed again"
    );

    // Expired: 16 parallel calls, one refresh, one token forwarded 16 times.
    env.advance(Duration::from_secs(25));
    let seen = env.upstream.authorizations_seen();
    let calls = (0..16).map(|_| call(&env, 0, &cookie));
    let out = futures_util::future::join_all(calls).await;
    assert!(out.iter().all(|(s, _)| *s == 200), "{out:?}");
    assert_eq!(refreshes(&env).await, 2);
    let third = env.session_of(&b).await.expect("session");
    let forwarded = env.upstream.authorizations_since(seen);
    assert_eq!(forwarded.len(), 16);
    assert!(
        forwarded.iter().all(|a| *a == bearer(&third)),
        "{forwarded:?}"
    );
    no_grant_lost(&env).await;
}

/// Waits (at most 15 s) until the refresh lock of the session behind `browser` is held: its
/// refresh is under way.
async fn refresh_under_way(env: &TestEnv, browser: &Browser) {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        cookie_of(browser).parse().expect("cookie"),
    );
    let handle = cloakroom::cookies::Cookies::from_config(&env.config(1, &env.keys, ""))
        .session_id(&headers)
        .expect("session id")
        .handle();
    let key = format!("cloakroom:lock:{{{handle}}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !env.redis.cli(&["EXISTS", &key]).contains('1') {
        assert!(std::time::Instant::now() < deadline, "no refresh started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a request for `path` with `cookie` over HTTP/1 and closes the connection once
/// `ready` resolves, without reading the answer.
async fn abort_http1(
    addr: std::net::SocketAddr,
    path: &str,
    cookie: &str,
    ready: impl std::future::Future<Output = ()>,
) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-csrf: 1\r\ncookie: {cookie}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    ready.await;
    drop(s);
}

/// The same over HTTP/2 (prior knowledge): the stream is cancelled with `RST_STREAM` once
/// `ready` resolves; the connection stays up.
async fn abort_http2(
    addr: std::net::SocketAddr,
    path: &str,
    cookie: &str,
    ready: impl std::future::Future<Output = ()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.expect("h2 ready");
    let req = http::Request::get(format!("http://127.0.0.1{path}"))
        .header("x-csrf", "1")
        .header("cookie", cookie)
        .body(())
        .expect("request");
    let (resp, mut stream) = send.send_request(req, true).expect("send");
    ready.await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(resp);
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abort_mid_refresh_loses_no_rotated_refresh_token() {
    let env = TestEnv::start_with(Opts {
        access_token_ttl: 60,
        refresh_skew: "10s",
        idp_fault: true,
        ..Opts::default()
    })
    .await;
    let idp = env.idp_fault.as_ref().expect("IdP proxy");
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = cookie_of(&b);
    let addr = env.apps[0].public_addr;

    for (round, http2) in [(1, false), (2, true)] {
        let before = env.session_of(&b).await.expect("session");
        // Expired: the request waits for the refresh; the IdP holds the refresh request, and
        // the browser gives up while the refresh is in flight. Then the IdP answers (and
        // rotates the refresh token) with nobody waiting.
        env.advance(Duration::from_secs(61));
        idp.set(Fault::Stall);
        let ready = refresh_under_way(&env, &b);
        if http2 {
            abort_http2(addr, "/api/abort", &cookie, ready).await;
        } else {
            abort_http1(addr, "/api/abort", &cookie, ready).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // the abort reaches Cloakroom
        assert_eq!(
            refreshes(&env).await,
            round - 1,
            "round {round}: held at the IdP"
        );
        idp.set(Fault::Pass);
        assert_eq!(refreshes_reach(&env, round).await, round, "round {round}");
        // The refresh went on without the browser and stored the rotated refresh token.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let after = loop {
            let s = env.session_of(&b).await.expect("session kept");
            if s.tokens.refresh_token.as_ref().map(|t| t.expose())
                != before.tokens.refresh_token.as_ref().map(|t| t.expose())
                || std::time::Instant::now() > deadline
            {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_ne!(
            after.tokens.refresh_token.as_ref().map(|t| t.expose()),
            before.tokens.refresh_token.as_ref().map(|t| t.expose()),
            "round {round}: the rotated refresh token was stored"
        );
        // The lock was released: the next call does not wait for a lease, and uses the token.
        let (status, auth) = call(&env, 0, &cookie).await;
        assert_eq!(status, 200, "round {round}");
        assert_eq!(auth, Some(bearer(&after)));
    }
    // A further refresh with the stored refresh token works: nothing was lost or reused.
    env.advance(Duration::from_secs(61));
    let (status, _) = call(&env, 0, &cookie).await;
    assert_eq!(status, 200);
    assert_eq!(refreshes(&env).await, 3);
    no_grant_lost(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_write_that_fails_after_the_idp_answered_is_retried_within_the_lease() {
    let env = TestEnv::start_with(Opts {
        access_token_ttl: 60,
        refresh_skew: "10s",
        idp_fault: true,
        redis_fault: true,
        ..Opts::default()
    })
    .await;
    let idp = env.idp_fault.as_ref().expect("IdP proxy");
    let redis = env.redis_fault.as_ref().expect("Redis proxy");
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = cookie_of(&b);
    let before = env.session_of(&b).await.expect("session");

    env.advance(Duration::from_secs(61));
    // The IdP holds the refresh request; Redis goes away while it does; then the IdP answers.
    idp.set(Fault::Stall);
    let pending = {
        let cookie = cookie.clone();
        let url = env.url("/api/x");
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
    // Wait until the refresh has taken its lock (it has read the session and is at the IdP).
    refresh_under_way(&env, &b).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(refreshes(&env).await, 0, "held at the proxy");
    redis.set(Fault::Drop);
    idp.set(Fault::Pass);
    assert_eq!(
        refreshes_reach(&env, 1).await,
        1,
        "the IdP answered (and rotated)"
    );
    // Writes fail for a while, then Redis is back within the lease.
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.set(Fault::Pass);
    let status = pending.await.expect("join").expect("response");
    assert_eq!(status, 200, "the waiting request got the refreshed token");
    let after = env.session_of(&b).await.expect("session");
    assert_ne!(
        after.tokens.refresh_token.as_ref().map(|t| t.expose()),
        before.tokens.refresh_token.as_ref().map(|t| t.expose()),
        "the rotated refresh token reached Redis"
    );
    // And it is the one the IdP will accept next time.
    env.advance(Duration::from_secs(61));
    assert_eq!(call(&env, 0, &cookie).await.0, 200);
    assert_eq!(refreshes(&env).await, 2);
    no_grant_lost(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_idp_holds_up_only_requests_whose_token_has_expired() {
    let env = TestEnv::start_with(Opts {
        access_token_ttl: 60,
        refresh_skew: "20s",
        oidc_timeout: "5s",
        session_toml: "refresh_wait = \"1s\"".into(),
        idp_fault: true,
        ..Opts::default()
    })
    .await;
    let idp = env.idp_fault.as_ref().expect("IdP proxy");
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = cookie_of(&b);
    let first = env.session_of(&b).await.expect("session");

    // Due but valid, IdP stalled: ten calls all answered with the current token while the one
    // refresh is still held at the IdP.
    env.advance(Duration::from_secs(45));
    idp.set(Fault::Stall);
    for _ in 0..10 {
        let (status, auth) = call(&env, 0, &cookie).await;
        assert_eq!(status, 200);
        assert_eq!(auth, Some(bearer(&first)));
    }
    assert_eq!(
        refreshes(&env).await,
        0,
        "all ten answered before the IdP did"
    );
    idp.set(Fault::Pass);
    assert_eq!(refreshes_reach(&env, 1).await, 1, "one refresh for the ten");
    // The IdP has answered; the refreshed session is written moments later.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        let s = env.session_of(&b).await.expect("session");
        if s.tokens.access_token.expose() != first.tokens.access_token.expose() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refreshed session was not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(call(&env, 0, &cookie).await.1, Some(bearer(&second)));

    // Expired, IdP stalled: the request waits refresh_wait (1 s), then 503 with Retry-After;
    // the refresh itself goes on and lands once the IdP answers.
    env.advance(Duration::from_secs(61));
    idp.set(Fault::Stall);
    let (status, _) = call(&env, 0, &cookie).await;
    assert_eq!(status, 503);
    idp.set(Fault::Pass);
    assert_eq!(refreshes_reach(&env, 2).await, 2);
    // The flight's result was kept: the next call uses it without a new refresh.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = call(&env, 0, &cookie).await;
        if status == 200 || std::time::Instant::now() > deadline {
            assert_eq!(status, 200);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refreshes(&env).await, 2);
    no_grant_lost(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_keeps_the_session_and_says_so() {
    // A client-secret rollover at the IdP: one instance still has the old secret.
    let mut env = TestEnv::start_with(Opts {
        access_token_ttl: 60,
        refresh_skew: "10s",
        session_toml: "refresh_cooloff = \"2s\"".into(),
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = cookie_of(&b);
    let mut vars = env.env_vars(&env.keys);
    vars.insert(
        "CLOAKROOM_OIDC_CLIENT_SECRET".into(),
        "a-secret-the-idp-no-longer-accepts".into(),
    );
    let toml = env.toml(1, "");
    let wrong = env
        .start_extra_with(
            move |port| toml.replace("127.0.0.1:1\"", &format!("127.0.0.1:{port}\"")),
            &vars,
        )
        .await;

    env.advance(Duration::from_secs(61));
    let before = env.idp.stat(&["grant_errors", "invalid_client"]).await;
    for _ in 0..3 {
        let (status, _) = call(&env, wrong, &cookie).await;
        assert_eq!(status, 503, "kept, not ended");
    }
    assert_eq!(
        env.idp.stat(&["grant_errors", "invalid_client"]).await - before,
        1,
        "one IdP call per cool-off"
    );
    assert!(env.session_of(&b).await.is_some(), "the session is kept");
    assert!(
        crate::support::logs().contains("refresh_client_rejected"),
        "an error for the operator"
    );
    // The instance with the current secret refreshes the same session once the cool-off is
    // over (the cool-off is shared through Redis).
    let (status, _) = call(&env, 0, &cookie).await;
    assert_eq!(status, 503, "cooling off on every instance");
    env.advance(Duration::from_millis(2100));
    let (status, _) = call(&env, 0, &cookie).await;
    assert_eq!(status, 200);
    assert_eq!(refreshes(&env).await, 1);
    no_grant_lost(&env).await;
}

#[tokio::test]
async fn re_login_ends_the_previous_session_without_its_cookie_on_the_callback() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login_as(&mut b, 0, "alice", "wonderland").await;
    let old_cookie = cookie_of(&b);
    let old = env.session_of(&b).await.expect("alice's session");
    let old_rt = old.tokens.refresh_token.clone().expect("refresh token");

    // A second login in the same browser, as another user: the IdP session is forgotten (its
    // cookies dropped) so the IdP asks who is there.
    b.jar.retain(|k, _| !k.starts_with("idp_"));
    let r = b.get(&env.url("/auth/login?return_to=/again")).await;
    assert_eq!(r.status, 302);
    let callback = env.idp.login(&mut b, &r.location(), "bob", "builder").await;
    // The callback is a cross-site navigation: the SameSite=Strict session cookie stays home.
    b.jar.remove("__Host-cloakroom");
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let new = env.session_of(&b).await.expect("bob's session");
    assert_eq!(new.sub, "bob");

    // Alice's session is gone, and its refresh grant was revoked at the IdP.
    let mut stale = Browser::new();
    stale.jar.insert(
        "__Host-cloakroom".into(),
        old_cookie.trim_start_matches("__Host-cloakroom=").into(),
    );
    assert_eq!(
        stale.xhr(Method::GET, &env.url("/auth/user")).await.status,
        401
    );
    env.idp
        .wait_inactive(
            CLIENT_ID,
            CLIENT_SECRET,
            old_rt.expose(),
            "the replaced session's refresh token",
        )
        .await;
    // Bob's session works.
    assert_eq!(
        b.xhr(Method::GET, &env.url("/auth/user")).await.json()["sub"],
        "bob"
    );
    let keys = env.redis.cli(&["KEYS", "cloakroom:s:*"]);
    assert_eq!(
        keys.lines().filter(|l| l.contains("cloakroom:s:")).count(),
        1,
        "{keys}"
    );
}

#[tokio::test]
async fn re_login_in_the_same_idp_session_replaces_the_session_and_keeps_the_grant() {
    let env = TestEnv::start_with(Opts {
        access_token_ttl: 60,
        refresh_skew: "10s",
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let old_cookie = cookie_of(&b);
    // The same user again, silently through the IdP session; callback without our cookie.
    let r = b.get(&env.url("/auth/login?return_to=/again")).await;
    let callback = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    b.jar.remove("__Host-cloakroom");
    assert_eq!(b.get(&callback).await.status, 302);
    assert_ne!(cookie_of(&b), old_cookie);
    let mut stale = Browser::new();
    stale.jar.insert(
        "__Host-cloakroom".into(),
        old_cookie.trim_start_matches("__Host-cloakroom=").into(),
    );
    assert_eq!(
        stale.xhr(Method::GET, &env.url("/auth/user")).await.status,
        401
    );
    // The new session's grant is alive: it refreshes.
    env.advance(Duration::from_secs(61));
    assert_eq!(call(&env, 0, &cookie_of(&b)).await.0, 200);
    assert_eq!(refreshes(&env).await, 1);
    no_grant_lost(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_revokes_the_tokens_of_a_refresh_that_landed_after_it_was_read() {
    let env = TestEnv::start_with(Opts {
        instances: 2,
        access_token_ttl: 60,
        refresh_skew: "10s",
        ..Opts::default()
    })
    .await;
    for how in ["logout", "admin"] {
        let mut b = Browser::new();
        env.login(&mut b).await;
        let cookie = cookie_of(&b);
        // Instance 0 reads (and caches) the session...
        assert_eq!(call(&env, 0, &cookie).await.0, 200);
        // ...then instance 1 refreshes it (its clock alone says the token expired).
        env.clocks[1].advance(Duration::from_secs(61));
        assert_eq!(call(&env, 1, &cookie).await.0, 200);
        let refreshed = env.session_of(&b).await.expect("session");
        let rt = refreshed.tokens.refresh_token.clone().expect("rt");
        // Ending it through instance 0 revokes the refresh token the record holds now.
        match how {
            "logout" => {
                let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
                assert_eq!(r.status, 200);
            }
            _ => {
                let r = reqwest::Client::new()
                    .delete(env.admin_url(0, "/admin/users/alice/sessions"))
                    .bearer_auth(crate::support::ADMIN_TOKEN)
                    .send()
                    .await
                    .expect("admin");
                assert_eq!(r.status(), 200);
            }
        }
        env.idp
            .wait_inactive(CLIENT_ID, CLIENT_SECRET, rt.expose(), how)
            .await;
        assert!(env.session_of(&b).await.is_none(), "{how}");
    }
}

#[tokio::test]
async fn backchannel_logout_after_a_store_failure_is_accepted_on_the_idps_retry() {
    let env = TestEnv::start_with(Opts {
        redis_fault: true,
        ..Opts::default()
    })
    .await;
    let redis = env.redis_fault.as_ref().expect("Redis proxy");
    let mut b = Browser::new();
    env.login(&mut b).await;
    let s = env.session_of(&b).await.expect("session");
    redis.set(Fault::Drop);
    let (token, status) = env.backchannel_logout(Some(&s.sub), s.sid.as_deref()).await;
    assert_eq!(status, 503, "the store is away: the IdP should retry");
    redis.set(Fault::Pass);
    // A failure half way: the lookups work, ending the session (a script) does not.
    assert_eq!(
        env.redis
            .cli(&["ACL", "SETUSER", "default", "-eval", "-evalsha"])
            .trim(),
        "OK"
    );
    assert_eq!(
        env.post_logout_token(&token).await,
        503,
        "the session could not be ended: the IdP should retry"
    );
    assert!(env.session_of(&b).await.is_some());
    assert_eq!(
        env.redis
            .cli(&["ACL", "SETUSER", "default", "+@all"])
            .trim(),
        "OK"
    );
    assert_eq!(
        env.post_logout_token(&token).await,
        200,
        "the retry is not a replay"
    );
    assert!(env.session_of(&b).await.is_none(), "the session ended");
    assert_eq!(
        env.post_logout_token(&token).await,
        400,
        "now it is a replay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_on_two_instances_keeps_every_session_findable() {
    use cloakroom::crypto::KeyRing;
    let k1 = KeyRing::generate_entry(1);
    let k2 = KeyRing::generate_entry(2);
    // Mid-rotation done wrong (the new key first on one instance before the other has it):
    // instance 1 seals with k2, instance 0 cannot open those records.
    let env = TestEnv::start_with(Opts {
        instances: 2,
        instance_keys: vec![k1.clone(), format!("{k2},{k1}")],
        ..Opts::default()
    })
    .await;
    for how in ["backchannel", "admin"] {
        let mut a = Browser::new();
        env.login_as(&mut a, 0, "alice", "wonderland").await;
        let mut c = Browser::new();
        env.login_as(&mut c, 1, "alice", "wonderland").await;
        assert!(env
            .session_of_with(&c, &format!("{k2},{k1}"))
            .await
            .is_some());
        // Instance 0 lists (and prunes) alice's sessions: the one it cannot open stays indexed.
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
        assert_eq!(listed["unreadable"], 1, "{listed}");
        // "Log out everywhere" through instance 0 ends both.
        match how {
            "backchannel" => {
                assert_eq!(env.backchannel_logout(Some("alice"), None).await.1, 200);
            }
            _ => {
                let r = reqwest::Client::new()
                    .delete(env.admin_url(0, "/admin/users/alice/sessions"))
                    .bearer_auth(crate::support::ADMIN_TOKEN)
                    .send()
                    .await
                    .expect("admin");
                let body: serde_json::Value = r.json().await.expect("json");
                assert_eq!(body["ended"], 2, "{body}");
            }
        }
        assert!(env.session_of_with(&a, &k1).await.is_none(), "{how}");
        assert!(
            env.session_of_with(&c, &format!("{k2},{k1}"))
                .await
                .is_none(),
            "{how}: the session sealed with the key instance 0 lacks was ended too"
        );
    }
}

/// Issue #30 item 11: a store that fails after the code exchange (the session cannot be
/// written) leaves no live grant behind: the callback answers 503 and the tokens the IdP just
/// issued — which no session holds — are revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_after_the_code_exchange_revokes_the_new_tokens() {
    let env = TestEnv::start_with(Opts {
        idp_fault: true,
        redis_fault: true,
        ..Opts::default()
    })
    .await;
    let idp = env.idp_fault.as_ref().expect("IdP proxy");
    let redis = env.redis_fault.as_ref().expect("Redis proxy");
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login?return_to=/app")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    // The IdP holds the code exchange; Redis goes away while it does; then the IdP answers.
    let exchanges = |sent: &str| sent.matches("grant_type=authorization_code").count();
    let before = exchanges(&idp.sent());
    idp.set(Fault::Stall);
    let pending = tokio::spawn(async move { b.get(&callback).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while exchanges(&idp.sent()) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no code exchange reached the IdP's proxy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.set(Fault::Drop);
    idp.set(Fault::Pass);
    let r = pending.await.expect("join");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "store_unavailable");
    assert!(r.set_cookie("__Host-cloakroom").is_none(), "no session");
    // The refresh token and the access token, revoked at the IdP.
    assert_eq!(env.idp.wait_stat(&["revocations"], 2).await, 2);
    let revoked = env.idp.stats().await["revoked_tokens"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(revoked, 2, "both answered 200");
    redis.set(Fault::Pass);
}

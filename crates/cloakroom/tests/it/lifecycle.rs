//! SPEC §1 (logout, back-channel logout, slide=false), §3 (token lifecycle), §5 (admin API),
//! against real Redis and the real IdP rotating refresh tokens on every use.

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv, ADMIN_TOKEN, CLIENT_ID, CLIENT_SECRET};
use reqwest::Method;
use std::time::Duration;

async fn refreshes(env: &TestEnv) -> u64 {
    env.idp.stats().await["token_requests"]["refresh_token"]
        .as_u64()
        .unwrap_or(0)
}

fn cookie_of(b: &Browser) -> String {
    format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"])
}

/// `n` concurrent API calls with `cookie`, spread round-robin over `bases`.
async fn storm(bases: &[String], cookie: &str, n: usize) -> Vec<(u16, String)> {
    let client = reqwest::Client::new();
    let calls = (0..n).map(|i| {
        let url = format!("{}/api/storm/{i}", bases[i % bases.len()]);
        let req = client
            .get(url)
            .header("x-csrf", "1")
            .header("cookie", cookie);
        async move {
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    });
    futures_util::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_storm_across_two_instances_refreshes_once_per_session() {
    let env = TestEnv::start_with(Opts {
        instances: 2,
        access_token_ttl: 60,
        refresh_skew: "10s",
        ..Opts::default()
    })
    .await;
    let bases = vec![env.base(0), env.base(1)];
    let mut browsers = Vec::new();
    for i in 0..21 {
        let mut b = Browser::new();
        env.login_as(&mut b, i % 2, "alice", "wonderland").await;
        browsers.push(b);
    }
    // Every access token expires (60 s lifetime), on both instances' clocks.
    env.advance(Duration::from_secs(61));
    let before = refreshes(&env).await;

    // One session, 50 concurrent calls over two instances: one refresh, 50 successes, one
    // access token forwarded.
    let seen = env.upstream.authorizations_seen();
    let out = storm(&bases, &cookie_of(&browsers[0]), 50).await;
    assert!(
        out.iter().all(|(s, _)| *s == 200),
        "{:?}",
        out.iter().filter(|(s, _)| *s != 200).collect::<Vec<_>>()
    );
    assert_eq!(
        refreshes(&env).await - before,
        1,
        "exactly one refresh reached the IdP"
    );
    let tokens: std::collections::BTreeSet<String> = env
        .upstream
        .authorizations_since(seen)
        .into_iter()
        .collect();
    assert_eq!(tokens.len(), 1, "every call forwarded the one new token");
    let new = env.session_of(&browsers[0]).await.expect("session");
    assert!(tokens.contains(&format!("Bearer {}", new.tokens.access_token.expose())));

    // Twenty sessions at once, 50 calls each: twenty refreshes.
    let storms = browsers[1..].iter().map(|b| {
        let c = cookie_of(b);
        let bases = bases.clone();
        async move { storm(&bases, &c, 50).await }
    });
    let all = futures_util::future::join_all(storms).await;
    let failed: usize = all.iter().flatten().filter(|(s, _)| *s != 200).count();
    assert_eq!(failed, 0, "all 1000 calls succeed");
    assert_eq!(
        refreshes(&env).await - before,
        21,
        "one refresh per session"
    );

    // The rotated refresh tokens were kept: the next refresh works too. Due but valid (less
    // than 10 s left): forwarded at once, refreshed once in the background.
    env.advance(Duration::from_secs(55));
    let out = storm(&bases, &cookie_of(&browsers[0]), 10).await;
    assert!(out.iter().all(|(s, _)| *s == 200), "{out:?}");
    assert_eq!(
        env.idp
            .wait_stat(&["token_requests", "refresh_token"], before + 22)
            .await
            - before,
        22
    );
    assert_eq!(
        env.idp.stat(&["grants_revoked"]).await,
        0,
        "no reuse, no revoked grant"
    );
    assert_eq!(env.idp.stat(&["refresh_reuse"]).await, 0);
}

#[tokio::test]
async fn refresh_refused_by_the_idp_ends_the_session() {
    let env = TestEnv::start_with(Opts {
        access_token_ttl: 3,
        refresh_skew: "1s",
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let s = env.session_of(&b).await.expect("session");
    env.idp
        .revoke(
            CLIENT_ID,
            CLIENT_SECRET,
            s.tokens.refresh_token.as_ref().unwrap().expose(),
        )
        .await;
    // Past the access token's expiry.
    env.advance(Duration::from_secs(4));
    let r = b.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "unauthenticated");
    assert!(
        env.session_of(&b).await.is_none(),
        "the session is gone from Redis"
    );
    let keys = env.redis.cli(&["KEYS", "cloakroom:s:*"]);
    assert!(!keys.contains("cloakroom:s:"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_outage_keeps_the_session_and_recovers_one_idp_call_per_cooloff() {
    let env = TestEnv::start_with(Opts {
        access_token_ttl: 60,
        refresh_skew: "20s",
        oidc_timeout: "1s",
        session_toml: "refresh_cooloff = \"2s\"".into(),
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let before = env.session_of(&b).await.expect("session");
    let hits = || env.idp.stat(&["token_endpoint_hits"]);
    let auth = |env: &TestEnv| {
        env.upstream.last()["headers"]["authorization"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Due (less than min(20 s, 30 s) left) but still valid: forwarded at once with the current
    // token while the refresh fails in the background; then one IdP call per cool-off, however
    // many requests come.
    env.advance(Duration::from_secs(45));
    for mode in ["reset", "503"] {
        env.idp.outage(mode).await;
        let start = hits().await;
        for _ in 0..5 {
            let r = b.xhr(Method::GET, &env.url("/api/x")).await;
            assert_eq!(r.status, 200, "{mode}: {}", r.body);
            assert_eq!(
                auth(&env),
                format!("Bearer {}", before.tokens.access_token.expose())
            );
        }
        assert_eq!(
            env.idp.wait_stat(&["token_endpoint_hits"], start + 1).await,
            start + 1,
            "{mode}: one IdP call within the cool-off"
        );
        env.advance(Duration::from_millis(2100));
    }
    // Expired: 503 with Retry-After, and the session survives; still one call per cool-off.
    env.advance(Duration::from_secs(15));
    for mode in ["reset", "503"] {
        env.idp.outage(mode).await;
        let start = hits().await;
        for i in 0..5 {
            let r = b.xhr(Method::GET, &env.url("/api/x")).await;
            assert_eq!(r.status, 503, "{mode} {i}: {}", r.body);
            assert_eq!(r.json()["error"], "token_refresh_unavailable");
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&retry), "{retry}");
        }
        assert_eq!(hits().await, start + 1, "{mode}: one IdP call per cool-off");
        assert!(env.session_of(&b).await.is_some(), "{mode}: session kept");
        env.advance(Duration::from_millis(2100));
    }
    // The IdP is back: calls work again without a new login.
    env.idp.outage("none").await;
    let r = b.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = env.session_of(&b).await.expect("session");
    assert_ne!(
        after.tokens.access_token.expose(),
        before.tokens.access_token.expose()
    );
    assert_eq!(
        auth(&env),
        format!("Bearer {}", after.tokens.access_token.expose())
    );
    assert_eq!(env.idp.stat(&["grants_revoked"]).await, 0);
}

#[tokio::test]
async fn idle_and_absolute_timeouts_with_matching_redis_ttl() {
    let env = TestEnv::start_with(Opts {
        idle_timeout: "4s",
        absolute_timeout: "8s",
        refresh_skew: "1s",
        ..Opts::default()
    })
    .await;
    let pttl = |env: &TestEnv| {
        let keys = env.redis.cli(&["KEYS", "cloakroom:s:*"]);
        let k = keys
            .lines()
            .find(|l| l.starts_with("cloakroom:s:"))
            .expect("session key")
            .to_string();
        env.redis
            .cli(&["PTTL", &k])
            .trim()
            .trim_start_matches(':')
            .parse::<i64>()
            .expect("pttl")
    };

    // Idle: polling with slide=false does not extend the session.
    let mut b = Browser::new();
    env.login(&mut b).await;
    let ttl = pttl(&env);
    // Session times are whole seconds, so expiry can come up to 1 s early.
    assert!(
        (2000..=4000).contains(&ttl),
        "Redis TTL {ttl} ms follows the idle timeout"
    );
    let first = b
        .xhr(Method::GET, &env.url("/auth/user?slide=false"))
        .await
        .json();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = b.xhr(Method::GET, &env.url("/auth/user?slide=false")).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["session"]["idle_expires_at"],
            first["session"]["idle_expires_at"]
        );
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        b.xhr(Method::GET, &env.url("/auth/user?slide=false"))
            .await
            .status,
        401
    );

    // Activity slides the idle timeout, but not past the absolute lifetime.
    let mut b = Browser::new();
    env.login(&mut b).await;
    let start = std::time::Instant::now();
    let mut last_ok = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(11) {
        let r = b.xhr(Method::GET, &env.url("/api/x")).await;
        if r.status != 200 {
            break;
        }
        last_ok = start.elapsed();
        let u = b.xhr(Method::GET, &env.url("/auth/user")).await.json();
        let s = &u["session"];
        let ttl = pttl(&env) / 1000;
        let left = s["expires_at"].as_i64().unwrap() - cloakroom::session::now_unix();
        assert!(
            (ttl - left).abs() <= 1,
            "Redis TTL {ttl}s vs session end in {left}s"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(
        last_ok > Duration::from_secs(5),
        "activity kept the session past the idle timeout ({last_ok:?})"
    );
    assert!(
        last_ok < Duration::from_secs(9),
        "the absolute lifetime ended it ({last_ok:?})"
    );
    assert_eq!(b.xhr(Method::GET, &env.url("/auth/user")).await.status, 401);
}

#[tokio::test]
async fn logout_revokes_tokens_at_the_idp() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let s = env.session_of(&b).await.expect("session");
    let rt = s.tokens.refresh_token.clone().expect("rt");
    assert_eq!(
        env.idp
            .introspect(CLIENT_ID, CLIENT_SECRET, rt.expose())
            .await["active"],
        true
    );

    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["end_session_url"]
        .as_str()
        .unwrap()
        .starts_with(&env.idp.url("/session/end?")));
    assert!(r
        .set_cookie("__Host-cloakroom")
        .unwrap()
        .contains("Max-Age=0"));
    // Revocation runs after the answer: wait for it before trying the refresh token.
    env.idp
        .wait_inactive(CLIENT_ID, CLIENT_SECRET, rt.expose(), "the refresh token")
        .await;
    let (status, body) = env
        .idp
        .try_refresh(CLIENT_ID, CLIENT_SECRET, rt.expose())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    for t in [rt.expose(), s.tokens.access_token.expose()] {
        assert_eq!(
            env.idp.introspect(CLIENT_ID, CLIENT_SECRET, t).await["active"],
            false
        );
    }
    assert!(env
        .redis
        .cli(&["KEYS", "cloakroom:*"])
        .lines()
        .all(|k| !k.starts_with("cloakroom:s:")
            && !k.starts_with("cloakroom:u:")
            && !k.starts_with("cloakroom:sid:")));
    // A second logout (no cookie now, or the old cookie) is harmless.
    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(
        (r.status, r.json()["end_session_url"].clone()),
        (200, serde_json::Value::Null)
    );
}

#[tokio::test]
async fn backchannel_logout_from_the_real_idp_ends_the_session() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let mut other = Browser::new();
    env.login(&mut other).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/auth/user")).await.status, 200);
    // The user logs out at the IdP (RP-initiated, from another tab): the IdP calls our
    // back-channel endpoint for the IdP session of browser `b` only.
    let s = env.session_of(&b).await.expect("session");
    let end = format!(
        "{}?id_token_hint={}&post_logout_redirect_uri={}&client_id={CLIENT_ID}",
        env.idp.url("/session/end"),
        s.tokens.id_token.expose(),
        url::form_urlencoded::byte_serialize(format!("{}/", env.base(0)).as_bytes())
            .collect::<String>()
    );
    let back = env.idp.end_session(&mut b, &end).await;
    assert!(back.starts_with(&env.base(0)), "{back}");
    assert!(
        env.idp.stats().await["backchannel_logouts_sent"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(b.xhr(Method::GET, &env.url("/auth/user")).await.status, 401);
    assert!(env.session_of(&b).await.is_none());
    // The other browser's session (another IdP session, another sid) lives on.
    assert_eq!(
        other.xhr(Method::GET, &env.url("/auth/user")).await.status,
        200
    );
}

fn logout_claims(env: &TestEnv) -> serde_json::Value {
    serde_json::json!({
        "iss": env.idp.issuer,
        "aud": CLIENT_ID,
        "iat": cloakroom::session::now_unix(),
        "exp": cloakroom::session::now_unix() + 120,
        "jti": cloakroom::crypto::random_token(),
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        "sub": "alice",
    })
}

async fn post_logout_token(env: &TestEnv, token: &str) -> (u16, String, Option<String>) {
    let r = reqwest::Client::new()
        .post(env.url("/auth/backchannel-logout"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    let cc = r
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.text().await.unwrap_or_default(), cc)
}

#[tokio::test]
async fn backchannel_logout_by_sub_and_bad_tokens() {
    let env = TestEnv::start().await;
    let mut browsers = Vec::new();
    for _ in 0..2 {
        let mut b = Browser::new();
        env.login(&mut b).await;
        browsers.push(b);
    }
    let mut bob = Browser::new();
    env.login_as(&mut bob, 0, "bob", "builder").await;

    // Hand-made bad tokens: each 400 invalid_request, nobody logged out.
    let b64 = |v: &serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let good = logout_claims(&env);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = logout_claims(&env);
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = logout_claims(&env);
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let signed = env.idp.sign(&good, &serde_json::json!({})).await;
    let mut parts: Vec<String> = signed.split('.').map(String::from).collect();
    parts[2] = parts[2].chars().rev().collect();
    let bad_signature = parts.join(".");
    let alg_none = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    let now = cloakroom::session::now_unix();
    let cases = vec![
        ("bad signature", bad_signature),
        (
            "unknown kid",
            env.idp
                .sign(&good, &serde_json::json!({"kid": "nobody"}))
                .await,
        ),
        ("alg none", alg_none),
        (
            "wrong iss",
            env.idp
                .sign(
                    &with("iss", "https://evil.example".into()),
                    &serde_json::json!({}),
                )
                .await,
        ),
        (
            "wrong aud",
            env.idp
                .sign(&with("aud", "someone-else".into()), &serde_json::json!({}))
                .await,
        ),
        (
            "nonce",
            env.idp
                .sign(&with("nonce", "n".into()), &serde_json::json!({}))
                .await,
        ),
        (
            "no events",
            env.idp
                .sign(&without("events"), &serde_json::json!({}))
                .await,
        ),
        (
            "wrong event",
            env.idp
                .sign(
                    &with("events", serde_json::json!({"x": {}})),
                    &serde_json::json!({}),
                )
                .await,
        ),
        (
            "stale iat",
            env.idp
                .sign(&with("iat", (now - 3600).into()), &serde_json::json!({}))
                .await,
        ),
        (
            "future iat",
            env.idp
                .sign(&with("iat", (now + 3600).into()), &serde_json::json!({}))
                .await,
        ),
        (
            "expired",
            env.idp
                .sign(&with("exp", (now - 600).into()), &serde_json::json!({}))
                .await,
        ),
        (
            "no jti",
            env.idp.sign(&without("jti"), &serde_json::json!({})).await,
        ),
        (
            "no sub or sid",
            env.idp.sign(&without("sub"), &serde_json::json!({})).await,
        ),
        ("garbage", "not.a.jwt".into()),
    ];
    for (name, token) in cases {
        let (status, body, cc) = post_logout_token(&env, &token).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body, r#"{"error":"invalid_request"}"#, "{name}");
        assert_eq!(cc.as_deref(), Some("no-store"), "{name}");
    }
    for b in &mut browsers {
        assert_eq!(b.xhr(Method::GET, &env.url("/auth/user")).await.status, 200);
    }

    // A valid sub-only token ends every session of alice, and only hers.
    let token = env.idp.sign(&good, &serde_json::json!({})).await;
    let (status, _, cc) = post_logout_token(&env, &token).await;
    assert_eq!(status, 200);
    assert_eq!(cc.as_deref(), Some("no-store"));
    for b in &mut browsers {
        assert_eq!(b.xhr(Method::GET, &env.url("/auth/user")).await.status, 401);
    }
    assert_eq!(
        bob.xhr(Method::GET, &env.url("/auth/user")).await.status,
        200
    );
    // The same token again: a replayed jti.
    let (status, _, _) = post_logout_token(&env, &token).await;
    assert_eq!(status, 400, "replayed jti");
}

#[tokio::test]
async fn admin_lists_and_ends_sessions() {
    let env = TestEnv::start().await;
    let admin = |path: &str| env.admin_url(0, path);
    let client = reqwest::Client::new();
    // No or wrong token: 401.
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token"),
        Some(ADMIN_TOKEN),
    ] {
        let mut req = client.get(admin("/admin/users/alice/sessions"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
    }
    // Not reachable through the public listener.
    let r = client
        .get(env.url("/admin/users/alice/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // alice: three sessions (two browsers, one of them twice in separate profiles).
    let mut alice: Vec<Browser> = Vec::new();
    for _ in 0..3 {
        let mut b = Browser::new();
        env.login(&mut b).await;
        alice.push(b);
    }
    let mut bob = Browser::new();
    env.login_as(&mut bob, 0, "bob", "builder").await;
    let list: serde_json::Value = client
        .get(admin("/admin/users/alice/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 3, "{list}");
    let text = list.to_string();
    let mut rts = Vec::new();
    for b in &alice {
        let s = env.session_of(b).await.unwrap();
        assert!(!text.contains(s.tokens.access_token.expose()));
        rts.push(s.tokens.refresh_token.unwrap());
    }
    assert_eq!(sessions[0]["user_agent"], "cloakroom-test-browser");
    assert_eq!(sessions[0]["ip"], "127.0.0.1");

    // End one session by handle.
    let handle_of = |b: &Browser| {
        let config = env.config(1, &env.keys, "");
        let mut h = http::HeaderMap::new();
        h.insert("cookie", cookie_of(b).parse().unwrap());
        cloakroom::cookies::Cookies::from_config(&config)
            .session_id(&h)
            .unwrap()
            .handle()
    };
    let h0 = handle_of(&alice[0]);
    let r = client
        .delete(admin(&format!("/admin/sessions/{h0}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        alice[0]
            .xhr(Method::GET, &env.url("/auth/user"))
            .await
            .status,
        401
    );
    let r = client
        .delete(admin(&format!("/admin/sessions/{h0}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // "Log out everywhere" except the current device.
    let keep = handle_of(&alice[2]);
    let r: serde_json::Value = client
        .delete(admin(&format!("/admin/users/alice/sessions?except={keep}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["ended"], 1);
    assert_eq!(
        alice[1]
            .xhr(Method::GET, &env.url("/auth/user"))
            .await
            .status,
        401
    );
    assert_eq!(
        alice[2]
            .xhr(Method::GET, &env.url("/auth/user"))
            .await
            .status,
        200
    );
    // Then everywhere.
    let r: serde_json::Value = client
        .delete(admin("/admin/users/alice/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["ended"], 1);
    assert_eq!(
        alice[2]
            .xhr(Method::GET, &env.url("/auth/user"))
            .await
            .status,
        401
    );
    for rt in &rts {
        // Revocation runs after the admin's answer.
        env.idp
            .wait_inactive(
                CLIENT_ID,
                CLIENT_SECRET,
                rt.expose(),
                "an ended session's refresh token",
            )
            .await;
        let (status, _) = env
            .idp
            .try_refresh(CLIENT_ID, CLIENT_SECRET, rt.expose())
            .await;
        assert_eq!(status, 400, "refresh token revoked at the IdP");
    }
    assert_eq!(
        bob.xhr(Method::GET, &env.url("/auth/user")).await.status,
        200
    );
    // Audit events are in the log.
    let logs = crate::support::logs();
    assert!(logs.contains("end_user_sessions"), "audit event logged");
}

#[tokio::test]
async fn silent_login_with_prompt_none() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let first = b.jar["__Host-cloakroom"].clone();
    // With a live IdP session: a new session without any interaction.
    let r = b
        .get(&env.url("/auth/login?prompt=none&return_to=/silent"))
        .await;
    // (The test IdP advertises PAR, so prompt=none travels in the pushed request; the
    // login_required below shows it arrived.)
    let loc = env.follow_back(&mut b, &r.location()).await;
    let r = b.get(&loc).await;
    assert_eq!((r.status, r.location()), (302, "/silent".to_string()));
    assert_ne!(b.jar["__Host-cloakroom"], first, "a new session");
    assert_eq!(b.xhr(Method::GET, &env.url("/auth/user")).await.status, 200);

    // Without an IdP session: back to return_to with error=login_required, no session.
    let mut fresh = Browser::new();
    let r = fresh
        .get(&env.url("/auth/login?prompt=none&return_to=/silent"))
        .await;
    let loc = env.follow_back(&mut fresh, &r.location()).await;
    let r = fresh.get(&loc).await;
    assert_eq!(
        (r.status, r.location()),
        (302, "/silent?error=login_required".to_string())
    );
    assert!(!fresh.jar.contains_key("__Host-cloakroom"));
}

//! Issue #7: a hostile IdP. Every malformed, forged or misdirected token response is refused
//! with the SPEC error code, creates no session, and panics nothing.

use crate::support::browser::{Browser, Resp};
use crate::support::hostile_idp::{sign_hs256, unsigned, HostileIdp, Key, Reply};
use crate::support::{Opts, TestEnv, CLIENT_ID, CLIENT_SECRET};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

struct Rig {
    env: TestEnv,
    idp: HostileIdp,
    key: Key,
}

async fn rig(promise_iss: bool) -> Rig {
    rig_with(promise_iss, false).await
}

async fn rig_with(promise_iss: bool, trailing_slash: bool) -> Rig {
    let key = Key::new("k1");
    let idp = HostileIdp::start_with(&[&key], promise_iss, trailing_slash).await;
    let env = TestEnv::start_with(Opts {
        issuer: Some(idp.issuer.clone()),
        oidc_timeout: "1s",
        refresh_skew: "5s",
        ..Opts::default()
    })
    .await;
    Rig { env, idp, key }
}

fn claims(r: &Rig, nonce: &str) -> Value {
    let now = cloakroom::session::now_unix();
    json!({
        "iss": r.idp.issuer, "sub": "mallory-target", "aud": CLIENT_ID,
        "exp": now + 300, "iat": now, "nonce": nonce, "name": "Test",
    })
}

fn token_response(id_token: &str) -> Value {
    json!({
        "access_token": format!("at-{}", cloakroom::crypto::random_token()),
        "token_type": "Bearer", "expires_in": 2,
        "refresh_token": format!("rt-{}", cloakroom::crypto::random_token()),
        "id_token": id_token,
    })
}

/// Starts a login, lets `make` decide the token endpoint's answer (given the request's nonce),
/// and runs the callback. `iss`: what to put in the authorization response (RFC 9207).
async fn attempt(r: &Rig, iss: Option<&str>, make: impl FnOnce(&str) -> Reply) -> (Browser, Resp) {
    let mut b = Browser::new();
    let login = b.get(&r.env.url("/auth/login")).await;
    assert_eq!(login.status, 302);
    let loc = url::Url::parse(&login.location()).unwrap();
    assert!(loc.as_str().starts_with(&r.idp.issuer));
    let q: std::collections::HashMap<String, String> = loc.query_pairs().into_owned().collect();
    r.idp.set_reply(make(&q["nonce"]));
    let mut cb = format!("/auth/callback?code=anything&state={}", q["state"]);
    if let Some(i) = iss {
        cb.push_str(&format!(
            "&iss={}",
            url::form_urlencoded::byte_serialize(i.as_bytes()).collect::<String>()
        ));
    }
    let resp = b.get(&r.env.url(&cb)).await;
    (b, resp)
}

fn no_session(r: &Rig, resp: &Resp, what: &str) {
    assert!(
        resp.set_cookie("__Host-cloakroom").is_none(),
        "{what}: a session cookie was set"
    );
    let keys = r.env.redis.cli(&["KEYS", "cloakroom:s:*"]);
    assert!(
        !keys.contains("cloakroom:s:"),
        "{what}: a session was stored"
    );
}

#[tokio::test]
async fn forged_and_invalid_id_tokens_are_refused() {
    let r = rig(false).await;
    let iss = r.idp.issuer.clone();
    let stranger = Key::new("k1"); // same kid, other key: a bad signature
    let now = cloakroom::session::now_unix();
    type Make = Box<dyn Fn(&Rig, &str) -> String>;
    let with = |k: &'static str, v: Value| -> Make {
        Box::new(move |r: &Rig, n: &str| {
            let mut c = claims(r, n);
            c[k] = v.clone();
            r.key.sign(&c)
        })
    };
    let without = |k: &'static str| -> Make {
        Box::new(move |r: &Rig, n: &str| {
            let mut c = claims(r, n);
            c.as_object_mut().unwrap().remove(k);
            r.key.sign(&c)
        })
    };
    let cases: Vec<(&str, Make)> = vec![
        (
            "alg none",
            Box::new(|r: &Rig, n: &str| unsigned(&claims(r, n))),
        ),
        (
            "HS256 with the client secret",
            Box::new(|r: &Rig, n: &str| {
                sign_hs256(&claims(r, n), CLIENT_SECRET.as_bytes(), Some("k1"))
            }),
        ),
        (
            "HS256 with the public key",
            Box::new(|r: &Rig, n: &str| {
                sign_hs256(
                    &claims(r, n),
                    r.key.pair.public_key_pem().as_bytes(),
                    Some("k1"),
                )
            }),
        ),
        (
            "HS256 with the JWK",
            Box::new(|r: &Rig, n: &str| {
                sign_hs256(
                    &claims(r, n),
                    r.key.jwk().to_string().as_bytes(),
                    Some("k1"),
                )
            }),
        ),
        (
            "bad signature",
            Box::new(move |r: &Rig, n: &str| stranger.sign(&claims(r, n))),
        ),
        (
            "unknown kid",
            Box::new(|r: &Rig, n: &str| Key::new("nobody").sign(&claims(r, n))),
        ),
        ("wrong iss", with("iss", json!("https://evil.example"))),
        ("wrong aud", with("aud", json!("someone-else"))),
        (
            "several aud, no azp",
            with("aud", json!([CLIENT_ID, "other"])),
        ),
        (
            "several aud, wrong azp",
            Box::new(|r: &Rig, n: &str| {
                let mut c = claims(r, n);
                c["aud"] = json!([CLIENT_ID, "other"]);
                c["azp"] = json!("other");
                r.key.sign(&c)
            }),
        ),
        // One audience, but azp names another party (README promised this check; v2 enforces it).
        ("one aud, foreign azp", with("azp", json!("other"))),
        ("expired", with("exp", json!(now - 600))),
        ("issued in the future", with("iat", json!(now + 3600))),
        ("missing nonce", without("nonce")),
        ("wrong nonce", with("nonce", json!("not-the-nonce"))),
        ("no sub", without("sub")),
    ];
    for (what, make) in cases {
        let (_, resp) = attempt(&r, Some(&iss), |n| {
            Reply::Json(200, token_response(&make(&r, n)))
        })
        .await;
        assert_eq!(resp.status, 401, "{what}: {}", resp.body);
        assert_eq!(resp.json()["error"], "invalid_id_token", "{what}");
        no_session(&r, &resp, what);
    }
    // No ID token at all.
    let (_, resp) = attempt(&r, Some(&iss), |_| {
        let mut t = token_response("x");
        t.as_object_mut().unwrap().remove("id_token");
        Reply::Json(200, t)
    })
    .await;
    assert_eq!(
        (resp.status, resp.json()["error"].clone()),
        (401, json!("invalid_id_token"))
    );
    no_session(&r, &resp, "no id_token");

    // The baseline: a correct token is accepted (the fixture is not simply broken).
    let (mut b, resp) = attempt(&r, Some(&iss), |n| {
        Reply::Json(200, token_response(&r.key.sign(&claims(&r, n))))
    })
    .await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    assert_eq!(
        b.xhr(Method::GET, &r.env.url("/auth/user")).await.json()["sub"],
        "mallory-target"
    );
}

#[tokio::test]
async fn broken_token_endpoints_are_502_without_a_session() {
    let r = rig(false).await;
    let iss = r.idp.issuer.clone();
    let cases: Vec<(&str, Reply)> = vec![
        (
            "invalid_grant",
            Reply::Json(400, json!({"error": "invalid_grant"})),
        ),
        (
            "server error",
            Reply::Json(500, json!({"error": "server_error"})),
        ),
        (
            "malformed JSON",
            Reply::Raw(200, b"{\"access_token\": ".to_vec()),
        ),
        ("not JSON", Reply::Raw(200, b"<html>hello</html>".to_vec())),
        (
            "wrong types",
            Reply::Json(200, json!({"access_token": 7, "token_type": ["x"]})),
        ),
        (
            "oversized",
            Reply::Raw(200, {
                let mut v = br#"{"access_token":"a","token_type":"Bearer","pad":""#.to_vec();
                v.extend(std::iter::repeat_n(b'x', 8 * 1024 * 1024));
                v.extend(br#""}"#);
                v
            }),
        ),
        (
            "slow",
            Reply::Slow(
                Duration::from_secs(3),
                json!({"access_token": "a", "token_type": "Bearer"}),
            ),
        ),
    ];
    for (what, reply) in cases {
        let (_, resp) = attempt(&r, Some(&iss), |_| reply.clone()).await;
        assert_eq!(resp.status, 502, "{what}: {}", resp.body);
        assert_eq!(resp.json()["error"], "token_exchange_failed", "{what}");
        no_session(&r, &resp, what);
    }
}

#[tokio::test]
async fn mix_up_defence_checks_the_authorization_response_iss() {
    let r = rig(true).await;
    let good = |n: &str| Reply::Json(200, token_response(&r.key.sign(&claims(&r, n))));
    for (what, iss) in [
        ("missing iss", None),
        ("wrong iss", Some("https://other-idp.example")),
    ] {
        let before = r.idp.token_requests();
        let (_, resp) = attempt(&r, iss, good).await;
        assert_eq!(resp.status, 400, "{what}: {}", resp.body);
        assert_eq!(resp.json()["error"], "invalid_state");
        assert_eq!(
            r.idp.token_requests(),
            before,
            "{what}: the code was not sent anywhere"
        );
        no_session(&r, &resp, what);
    }
    let iss = r.idp.issuer.clone();
    let (_, resp) = attempt(&r, Some(&iss), good).await;
    assert_eq!(resp.status, 302, "{}", resp.body);
}

#[tokio::test]
async fn jwks_rotation_mid_session_refetches_once_and_rate_limits() {
    let r = rig(false).await;
    let iss = r.idp.issuer.clone();
    let (mut b, resp) = attempt(&r, Some(&iss), |n| {
        Reply::Json(200, token_response(&r.key.sign(&claims(&r, n))))
    })
    .await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    let fetches = r.idp.jwks_fetches();

    // The IdP rotates to a new key; the next refresh brings an ID token signed by it.
    let k2 = Key::new("k2");
    r.idp.publish(&[&r.key, &k2]);
    let now = cloakroom::session::now_unix();
    let refreshed = k2.sign(&json!({"iss": iss, "sub": "mallory-target", "aud": CLIENT_ID, "exp": now + 300, "iat": now}));
    r.idp
        .set_reply(Reply::Json(200, token_response(&refreshed)));
    // The 2 s access token has expired: the call waits for the refresh.
    r.env.advance(Duration::from_secs(3));
    let resp = b.xhr(Method::GET, &r.env.url("/api/x")).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(
        r.idp.jwks_fetches(),
        fetches + 1,
        "one re-fetch for the new kid"
    );
    let s = r.env.session_of(&b).await.expect("session");
    assert_eq!(
        s.tokens.id_token.expose(),
        refreshed,
        "the new ID token verified and was kept"
    );

    // Another unknown kid right away: no second re-fetch (rate limited); the refresh still
    // succeeds, keeping the previous ID token.
    let k3 = Key::new("k3");
    let unknown = k3.sign(&json!({"iss": iss, "sub": "mallory-target", "aud": CLIENT_ID, "exp": now + 300, "iat": now}));
    r.idp.set_reply(Reply::Json(200, token_response(&unknown)));
    r.env.advance(Duration::from_secs(3));
    let resp = b.xhr(Method::GET, &r.env.url("/api/x")).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(r.idp.jwks_fetches(), fetches + 1, "rate limited");
    let s = r.env.session_of(&b).await.expect("session");
    assert_eq!(s.tokens.id_token.expose(), refreshed);

    // A refreshed ID token for another subject ends the session.
    let other = k2.sign(
        &json!({"iss": iss, "sub": "someone-else", "aud": CLIENT_ID, "exp": now + 300, "iat": now}),
    );
    r.idp.set_reply(Reply::Json(200, token_response(&other)));
    r.env.advance(Duration::from_secs(3));
    let resp = b.xhr(Method::GET, &r.env.url("/api/x")).await;
    assert_eq!(resp.status, 401, "{}", resp.body);
}

#[tokio::test]
async fn an_issuer_with_a_trailing_slash_is_used_exactly_as_configured_and_discovered() {
    // Auth0 style: `https://tenant.auth0.com/`. Trimming it would fail discovery's and every
    // token's `iss` check.
    let r = rig_with(true, true).await;
    let iss = r.idp.issuer.clone();
    assert!(iss.ends_with('/'), "{iss}");
    let (mut b, resp) = attempt(&r, Some(&iss), |n| {
        Reply::Json(200, token_response(&r.key.sign(&claims(&r, n))))
    })
    .await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    assert_eq!(
        b.xhr(Method::GET, &r.env.url("/auth/user")).await.status,
        200
    );
    // Exactly: the same issuer without its slash is another issuer.
    let bare = iss.trim_end_matches('/').to_string();
    let (_, resp) = attempt(&r, Some(&bare), |n| {
        Reply::Json(200, token_response(&r.key.sign(&claims(&r, n))))
    })
    .await;
    assert_eq!(
        resp.status, 400,
        "RFC 9207 iss without the slash: {}",
        resp.body
    );
    let (_, resp) = attempt(&r, Some(&iss), |n| {
        let mut c = claims(&r, n);
        c["iss"] = json!(bare);
        Reply::Json(200, token_response(&r.key.sign(&c)))
    })
    .await;
    assert_eq!(
        resp.status, 401,
        "ID token iss without the slash: {}",
        resp.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_refetch_done_by_another_task_is_followed_by_a_retry() {
    let r = rig(false).await;
    let iss = r.idp.issuer.clone();
    let mut browsers = Vec::new();
    for _ in 0..2 {
        let (b, resp) = attempt(&r, Some(&iss), |n| {
            Reply::Json(200, token_response(&r.key.sign(&claims(&r, n))))
        })
        .await;
        assert_eq!(resp.status, 302, "{}", resp.body);
        browsers.push(b);
    }
    let fetches = r.idp.jwks_fetches();
    // The IdP rotates; both sessions refresh at once and both get an ID token signed by the
    // new key. One task re-fetches the JWKS; the other, which failed on the old set, must try
    // again with the new one rather than give up.
    let k2 = Key::new("k2");
    r.idp.publish(&[&r.key, &k2]);
    // A slow JWKS endpoint, so the second verification fails on the old set while the first
    // task's re-fetch is still under way.
    r.idp.state.lock().unwrap().jwks_delay = Duration::from_millis(300);
    let now = cloakroom::session::now_unix();
    let refreshed = k2.sign(&json!({"iss": iss, "sub": "mallory-target", "aud": CLIENT_ID, "exp": now + 300, "iat": now}));
    r.idp
        .set_reply(Reply::Json(200, token_response(&refreshed)));
    r.env.advance(Duration::from_secs(3));
    let url = r.env.url("/api/x");
    let calls = browsers.iter_mut().map(|b| b.xhr(Method::GET, &url));
    let out = futures_util::future::join_all(calls).await;
    assert!(out.iter().all(|o| o.status == 200));
    assert_eq!(r.idp.jwks_fetches(), fetches + 1, "one re-fetch");
    for b in &browsers {
        let s = r.env.session_of(b).await.expect("session");
        assert_eq!(
            s.tokens.id_token.expose(),
            refreshed,
            "both kept the new ID token"
        );
    }
}

#[tokio::test]
async fn anonymous_logout_tokens_with_random_kids_do_not_spend_the_idp_refetch_budget() {
    let r = rig(false).await;
    let iss = r.idp.issuer.clone();
    let (mut b, resp) = attempt(&r, Some(&iss), |n| {
        Reply::Json(200, token_response(&r.key.sign(&claims(&r, n))))
    })
    .await;
    assert_eq!(resp.status, 302, "{}", resp.body);
    let fetches = r.idp.jwks_fetches();
    let now = cloakroom::session::now_unix();
    for i in 0..5 {
        let stranger = Key::new(&format!("random-{i}"));
        let token = stranger.sign(&json!({
            "iss": iss, "aud": CLIENT_ID, "iat": now, "jti": format!("j{i}"), "sub": "mallory-target",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }));
        let resp = reqwest::Client::new()
            .post(r.env.url("/auth/backchannel-logout"))
            .form(&[("logout_token", token.as_str())])
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 400);
    }
    assert_eq!(
        r.idp.jwks_fetches(),
        fetches + 1,
        "anonymous callers share one small budget"
    );
    // A rotation at the IdP right after: the real ID token still gets its re-fetch.
    let k2 = Key::new("k2");
    r.idp.publish(&[&r.key, &k2]);
    let refreshed = k2.sign(&json!({"iss": iss, "sub": "mallory-target", "aud": CLIENT_ID, "exp": now + 300, "iat": now}));
    r.idp
        .set_reply(Reply::Json(200, token_response(&refreshed)));
    r.env.advance(Duration::from_secs(3));
    let resp = b.xhr(Method::GET, &r.env.url("/api/x")).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(r.idp.jwks_fetches(), fetches + 2);
    let s = r.env.session_of(&b).await.expect("session");
    assert_eq!(s.tokens.id_token.expose(), refreshed);
}

//! SPEC §2 and §4: the proxy, cookie handling, sessions at rest, key rotation.

use crate::support::browser::Browser;
use crate::support::upstream::{hex, pattern};
use crate::support::TestEnv;
use base64::Engine;
use cloakroom::crypto::KeyRing;
use futures_util::StreamExt;
use reqwest::Method;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn bad_cookies_get_the_same_401_and_never_reach_the_upstream() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let good = b.jar["__Host-cloakroom"].clone();
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    let before = env.upstream.count();

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let raw = b64.decode(&good).expect("base64url cookie");
    let mut flipped = raw.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut other_version = raw.clone();
    other_version[0] = 2;
    let other_key = KeyRing::parse(&KeyRing::generate_entry(1)).unwrap();
    let foreign = other_key.seal_text(b"__Host-cloakroom", &[7u8; 32]);
    let cases = [
        ("tampered", b64.encode(&flipped)),
        ("truncated", good[..good.len() - 4].to_string()),
        ("garbage", "not-a-cookie!!".to_string()),
        ("empty", String::new()),
        ("oversized", "A".repeat(4000)),
        ("other key", foreign),
        ("version", b64.encode(&other_version)),
    ];
    for (name, value) in cases {
        let mut evil = Browser::new();
        evil.jar.insert("__Host-cloakroom".into(), value);
        let r = evil.xhr(Method::GET, &env.url("/api/x")).await;
        assert_eq!(r.status, 401, "{name}");
        assert_eq!(r.body, r#"{"error":"unauthenticated"}"#, "{name}");
        let r = evil.xhr(Method::GET, &env.url("/auth/user")).await;
        assert_eq!(r.status, 401, "{name}");
    }
    assert_eq!(
        env.upstream.count(),
        before,
        "no upstream request for a bad cookie"
    );
}

#[tokio::test]
async fn csrf_header_and_origin_are_enforced() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let before = env.upstream.count();

    // Missing or wrong CSRF header.
    for (path, method) in [
        ("/api/x", Method::GET),
        ("/api/x", Method::POST),
        ("/auth/user", Method::GET),
        ("/auth/logout", Method::POST),
    ] {
        let r = b.send(b.request(method.clone(), &env.url(path))).await;
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (403, "csrf".into()),
            "{method} {path}"
        );
        let r = b
            .send(
                b.request(method.clone(), &env.url(path))
                    .header("x-csrf", "0"),
            )
            .await;
        assert_eq!(r.status, 403, "{method} {path} with x-csrf: 0");
    }
    // Foreign Origin, even with the header.
    let r = b
        .send(
            b.request(Method::POST, &env.url("/api/x"))
                .header("x-csrf", "1")
                .header("origin", "https://evil.example"),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (403, "origin".into())
    );
    assert_eq!(env.upstream.count(), before);
    // `Connection: x-csrf` cannot smuggle the header away before the check, and
    // `Connection: authorization` cannot strip the bearer.
    let r = b
        .send(
            b.request(Method::GET, &env.url("/api/x"))
                .header("x-csrf", "1")
                .header("connection", "authorization, x-csrf"),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = env.upstream.last();
    assert!(seen["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer "));
    // The session is still intact after all that.
    assert_eq!(b.xhr(Method::GET, &env.url("/auth/user")).await.status, 200);
    // The logout was refused above: the session survived it.
}

#[tokio::test]
async fn route_policies_and_header_hygiene() {
    let env = TestEnv::start().await;
    let mut anon = Browser::new();
    // required without a session: 401 JSON, never a redirect.
    let r = anon.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!(r.status, 401);
    assert!(r.headers.get("location").is_none());
    // none: no CSRF needed, no session, cookies and browser auth stripped anyway.
    let r = anon
        .send(
            anon.request(Method::GET, &env.url("/public/p"))
                .header("cookie", "__Host-cloakroom=x; other=1")
                .header("authorization", "Basic Zm9vOmJhcg==")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-forwarded-host", "evil.example"),
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = env.upstream.last();
    assert!(seen["headers"].get("cookie").is_none());
    assert!(seen["headers"].get("authorization").is_none());
    assert_eq!(
        seen["headers"]["x-forwarded-for"], "127.0.0.1",
        "untrusted XFF replaced"
    );
    assert_ne!(seen["headers"]["x-forwarded-host"], "evil.example");
    // optional without a session: forwarded without a bearer.
    let r = anon.xhr(Method::GET, &env.url("/opt/o")).await;
    assert_eq!(r.status, 200);
    assert!(env.upstream.last()["headers"]
        .get("authorization")
        .is_none());
    // optional with a session: bearer attached.
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/opt/o")).await.status, 200);
    assert!(env.upstream.last()["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer "));
    // strip_prefix onto an upstream base path.
    assert_eq!(
        b.xhr(Method::GET, &env.url("/stripped/a/b?q=1"))
            .await
            .status,
        200
    );
    let seen = env.upstream.last();
    assert_eq!(seen["path"], "/base/a/b");
    assert_eq!(seen["query"], "q=1");
    // Dot segments cannot escape a prefix.
    let before = env.upstream.count();
    for p in [
        "/public/../api/x",
        "/public/%2e%2e/api/x",
        "/public/%2E%2E%2Fapi",
    ] {
        let raw = crate::support::raw_request(
            env.apps[0].public_addr,
            &format!(
                "GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-csrf: 1\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{p}: {raw}");
    }
    assert_eq!(env.upstream.count(), before);
    // Unknown path: 404 JSON.
    let r = anon.get(&env.url("/nowhere")).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, "not_found".into())
    );
}

/// Issue #30 item 4: Cloakroom's own error answers carry `x-cloakroom-error: <code>` (the SPA
/// client acts on a 401's `login_url` only then), and an upstream's copy of that header is
/// dropped on every route, so an API cannot pass its 401 off as Cloakroom's.
#[tokio::test]
async fn cloakroom_marks_its_own_errors_and_an_upstreams_copy_of_the_mark_is_dropped() {
    let env = TestEnv::start().await;
    let mut anon = Browser::new();
    let mark = |r: &crate::support::browser::Resp| {
        r.headers
            .get_all("x-cloakroom-error")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
    };
    // Ours: no session, no CSRF header, no route.
    let r = anon.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!((r.status, mark(&r)), (401, vec!["unauthenticated".into()]));
    let r = anon.get(&env.url("/api/x")).await;
    assert_eq!((r.status, mark(&r)), (403, vec!["csrf".into()]));
    let r = anon.get(&env.url("/nowhere")).await;
    assert_eq!((r.status, mark(&r)), (404, vec!["not_found".into()]));
    // An upstream's 401 dressed as ours: passed on, body and all, without the mark.
    let r = anon.get(&env.url("/public/fake-login-401")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.json()["login_url"],
        "https://evil.example/auth/login?prompt=none"
    );
    assert_eq!(
        mark(&r),
        Vec::<String>::new(),
        "an upstream's copy is dropped"
    );
    let mut b = Browser::new();
    env.login(&mut b).await;
    let r = b.xhr(Method::GET, &env.url("/api/fake-login-401")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(mark(&r), Vec::<String>::new(), "on token routes too");
    // An upstream's RFC 9470 challenge becomes Cloakroom's own step-up answer: marked.
    let r = b.xhr(Method::GET, &env.url("/api/challenge/x")).await;
    assert_eq!(r.json()["error"], "step_up_required", "{}", r.body);
    assert_eq!(mark(&r), vec!["step_up_required".to_string()]);
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let r = b.xhr(Method::GET, &env.url("/down/x")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    let r = b.xhr(Method::GET, &env.url("/api/slow/x")).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_eq!(r.headers["content-type"], "application/json");
}

#[tokio::test]
async fn fifty_megabytes_stream_both_ways_without_buffering() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    // The proxy under test is the real binary in its own process, so its memory is its own.
    let proxy = env.spawn_binary("").await;
    let base = format!("http://{}", proxy.addr);
    let client = reqwest::Client::new();
    let warm = client
        .get(format!("{base}/api/warm"))
        .header("x-csrf", "1")
        .header("cookie", &cookie)
        .send()
        .await
        .expect("warm-up");
    assert_eq!(warm.status(), 200);
    let rss_before = proxy.status_kib("VmRSS");

    // Upload: a streamed body, hashed on both sides.
    let mut expected = Sha256::new();
    for c in 0..SIZE.div_ceil(65536) {
        let v: Vec<u8> = (c * 65536..((c + 1) * 65536).min(SIZE))
            .map(pattern)
            .collect();
        expected.update(&v);
    }
    let expected = hex(&expected.finalize());
    let stream = futures_util::stream::iter((0..SIZE.div_ceil(65536)).map(|c| {
        let v: Vec<u8> = (c * 65536..((c + 1) * 65536).min(SIZE))
            .map(pattern)
            .collect();
        Ok::<_, std::io::Error>(v)
    }));
    let r = client
        .post(format!("{base}/api/upload"))
        .header("x-csrf", "1")
        .header("cookie", &cookie)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let out: serde_json::Value = r.json().await.expect("json");
    assert_eq!(out["len"], SIZE);
    assert_eq!(out["sha256"], expected);

    // Download: hashed as it arrives.
    let r = client
        .get(format!("{base}/api/download/{SIZE}"))
        .header("x-csrf", "1")
        .header("cookie", &cookie)
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    let mut got = Sha256::new();
    let mut len = 0u64;
    let mut s = r.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.expect("chunk");
        len += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!(len, SIZE);
    assert_eq!(hex(&got.finalize()), expected);

    // The proxy did not hold either body: its peak RSS grew by far less than 50 MB.
    let grown_mib = proxy.status_kib("VmHWM").saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 16,
        "proxy peak RSS grew by {grown_mib} MiB while streaming 2 × 50 MiB"
    );
}

#[tokio::test]
async fn redis_holds_no_token_or_session_id_in_plaintext() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    let session = env.session_of(&b).await.expect("session");
    let cookie = b.jar["__Host-cloakroom"].clone();
    let config = env.config(1, &env.keys, "");
    let mut h = http::HeaderMap::new();
    h.insert(
        "cookie",
        format!("__Host-cloakroom={cookie}").parse().unwrap(),
    );
    let id = cloakroom::cookies::Cookies::from_config(&config)
        .session_id(&h)
        .expect("id");

    let mut dump = String::new();
    let keys = env.redis.cli(&["KEYS", "*"]);
    let names: Vec<&str> = keys
        .lines()
        .filter(|l| l.starts_with("cloakroom:"))
        .collect();
    assert!(
        names.iter().any(|k| k.starts_with("cloakroom:s:")),
        "{keys}"
    );
    for k in names {
        dump.push_str(k);
        dump.push_str(&env.redis.cli(&["DUMP", k]));
        dump.push_str(&env.redis.cli(&["SMEMBERS", k]));
        dump.push_str(&env.redis.cli(&["GET", k]));
    }
    let refresh = session.tokens.refresh_token.clone().expect("rt");
    for (name, secret) in [
        ("access token", session.tokens.access_token.expose()),
        ("refresh token", refresh.expose()),
        ("id token", session.tokens.id_token.expose()),
        ("session id", id.expose()),
        ("cookie", cookie.as_str()),
        ("subject", "alice"),
        ("email", "alice@example.test"),
    ] {
        assert!(!dump.contains(secret), "{name} found in Redis");
    }
}

#[tokio::test]
async fn key_rotation_keeps_old_cookies_working() {
    let mut env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    // A new instance with a new key first and the old one second.
    let rotated = format!("{},{}", KeyRing::generate_entry(2), env.keys);
    let i = env.start_extra(&rotated).await;
    let r = b.xhr(Method::GET, &format!("{}/api/x", env.base(i))).await;
    assert_eq!(r.status, 200, "old cookie, rotated ring");
    // A ring without the old key logs the cookie out (it cannot be opened).
    let j = env.start_extra(&KeyRing::generate_entry(3)).await;
    let r = b.xhr(Method::GET, &format!("{}/api/x", env.base(j))).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn websocket_upgrade_needs_an_allowed_origin_and_carries_the_bearer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let handshake = |origin: &str| {
        format!(
            "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}Cookie: {cookie}\r\n\r\n"
        )
    };
    // Without an Origin (WebSockets can't send the CSRF header): refused.
    let raw = crate::support::raw_request(env.apps[0].public_addr, &handshake("")).await;
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    let raw = crate::support::raw_request(
        env.apps[0].public_addr,
        &handshake("Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");

    // With our Origin: 101, then bytes flow both ways through the proxy.
    let mut s = tokio::net::TcpStream::connect(env.apps[0].public_addr)
        .await
        .unwrap();
    s.write_all(handshake(&format!("Origin: {}\r\n", env.base(0))).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "connection closed during the handshake"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [&b"hello through the cloakroom"[..], b"second frame"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
    }
    let seen = env.upstream.last();
    assert_eq!(seen["path"], "/api/ws");
    assert_eq!(
        seen["authorization"], true,
        "the bearer is attached to the upgrade"
    );
    assert_eq!(seen["cookie"], false);
}

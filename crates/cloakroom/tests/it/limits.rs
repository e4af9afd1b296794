//! Issue #11 on the real stack: upstreams cannot touch our cookies, forwarded headers come
//! from configuration, token routes are `Cache-Control: private`, and connections, tunnels
//! and event streams are bounded (per listener, per peer IP, idle, HTTP/2 pings, drain).
//!
//! Timing tests use settings far from the defaults and assert only "closed within the
//! configured time plus a margin".

use crate::support::browser::Browser;
use crate::support::upstream::SET_COOKIES;
use crate::support::{Binary, TestEnv, ADMIN_TOKEN};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until end of stream (or an error, or `wait`); returns the bytes and whether the
/// connection was closed.
async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return (buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (buf, false),
        }
    }
}

/// Reads one response head (up to the blank line).
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("a response head")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed during the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_string()
}

/// One keep-alive request whose response is read whole (it has a Content-Length).
async fn keep_alive_get(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("body");
    head
}

/// A connection from a given loopback address (127.0.0.0/8 is all loopback on Linux).
async fn connect_from(local: [u8; 4], to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from((local, 0))).expect("bind");
    sock.connect(to).await.expect("connect")
}

/// Whether a fresh connection from `local` is served (a 200) rather than closed at once.
async fn served_from(local: [u8; 4], to: SocketAddr) -> bool {
    let mut s = connect_from(local, to).await;
    let _ = s
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await;
    let (buf, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200")
}

/// A keep-alive connection that has been served once, so it holds one of the listener's
/// slots. Retried: right after start-up the slot of `spawn_binary`'s own probe connection may
/// not be free yet.
async fn held_connection(addr: SocketAddr) -> TcpStream {
    held_connection_from([127, 0, 0, 1], addr).await
}

/// As [`held_connection`], from the loopback address `local`.
async fn held_connection_from(local: [u8; 4], addr: SocketAddr) -> TcpStream {
    for _ in 0..50 {
        let mut s = connect_from(local, addr).await;
        if s.write_all(b"GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .is_ok()
        {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).to_string();
            if head.starts_with("HTTP/1.1 200") {
                let len: usize = header(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                s.read_exact(&mut body).await.expect("body");
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no free connection slot");
}

fn set_cookies(headers: &str) -> Vec<String> {
    headers
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
                .map(|(_, v)| v.trim().to_string())
        })
        .collect()
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

fn kept_cookies() -> Vec<String> {
    SET_COOKIES
        .iter()
        .filter(|(_, keep)| *keep)
        .map(|(c, _)| (*c).to_string())
        .collect()
}

async fn metrics(admin: SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

// ------------------------------------------------------------------ our cookies are ours

/// An upstream's `Set-Cookie` naming the session or a login cookie, in any prefix and case
/// variant, is dropped on every route (`token = "none"` too) and on a `101`, and so is
/// `Clear-Site-Data`; every other cookie passes. Each drop is logged (route, never the value)
/// and counted.
#[tokio::test]
async fn upstreams_cannot_set_or_clear_our_cookies_on_any_route_or_upgrade() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let addr = env.apps[0].public_addr;
    for (path, extra) in [
        ("/public/setcookie", String::new()),
        ("/opt/setcookie", "x-csrf: 1\r\n".to_string()),
        (
            "/api/setcookie",
            format!("Cookie: {cookie}\r\nx-csrf: 1\r\n"),
        ),
    ] {
        let raw = crate::support::raw_request(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"),
        )
        .await;
        let head = raw.split("\r\n\r\n").next().unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert_eq!(set_cookies(head), kept_cookies(), "{path}: {head}");
        assert!(header(head, "clear-site-data").is_none(), "{path}: {head}");
    }

    // A WebSocket 101, on a token route and on a pass-through one.
    for (path, extra) in [
        ("/public/ws/setcookie", String::new()),
        (
            "/api/ws/setcookie",
            format!("Cookie: {cookie}\r\nOrigin: {}\r\n", env.base(0)),
        ),
    ] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
        assert_eq!(set_cookies(&head), kept_cookies(), "{path}: {head}");
        assert!(header(&head, "clear-site-data").is_none(), "{head}");
        s.write_all(b"still a tunnel").await.expect("write");
        let mut got = [0u8; 14];
        s.read_exact(&mut got).await.expect("echo");
        assert_eq!(&got, b"still a tunnel");
    }

    let text = metrics(env.apps[0].admin_addr).await;
    for needle in [
        r#"cloakroom_upstream_headers_dropped_total{route="/public/",header="set-cookie"}"#,
        r#"cloakroom_upstream_headers_dropped_total{route="/api/",header="set-cookie"}"#,
        r#"cloakroom_upstream_headers_dropped_total{route="/public/",header="clear-site-data"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
    let logs = crate::support::logs();
    assert!(
        logs.contains("dropped an upstream Set-Cookie naming a Cloakroom cookie"),
        "the drop is logged"
    );
    for n in 1..=9 {
        assert!(
            !logs.contains(&format!("evil{n}")),
            "a dropped cookie's value was logged"
        );
    }
}

// ------------------------------------------------------------------ forwarded headers

const SPOOFED: &str = "Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\n\
    X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7, 8.8.8.8\r\n\
    X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 8443\r\n\
    X-Forwarded-Prefix: /evil\r\nX-Forwarded-Server: evil\r\nX-Real-IP: 6.6.6.6\r\n\
    X-Client-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\n\
    X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-Keep: yes\r\n";

/// `X-Forwarded-Host`/`-Proto` come from `server.public_url` and every other forwarding header
/// is removed, whether or not the peer is a trusted proxy; `X-Forwarded-For` is appended to
/// for a trusted peer and replaced for anyone else.
#[tokio::test]
async fn forwarded_headers_come_from_config_whatever_the_peer() {
    let mut env = TestEnv::start().await;
    let template = env.toml(1, "").replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        1,
    );
    let vars = env.env_vars(&env.keys);
    let trusted = env
        .start_extra_with(
            |port| {
                template
                    .replace(
                        "listen = \"127.0.0.1:1\"",
                        &format!("listen = \"127.0.0.1:{port}\""),
                    )
                    .replace(
                        "public_url = \"http://127.0.0.1:1\"",
                        &format!("public_url = \"http://127.0.0.1:{port}\""),
                    )
            },
            &vars,
        )
        .await;
    for (i, xff) in [
        (0, "127.0.0.1"),
        (trusted, "6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1"),
    ] {
        let addr = env.apps[i].public_addr;
        let raw = crate::support::raw_request(
            addr,
            &format!("GET /public/fwd HTTP/1.1\r\nHost: evil.example\r\n{SPOOFED}Connection: close\r\n\r\n"),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        let h = env.upstream.last()["headers"].clone();
        assert_eq!(h["x-forwarded-for"], xff, "instance {i}: {h}");
        assert_eq!(h["x-forwarded-proto"], "http", "instance {i}: {h}");
        assert_eq!(
            h["x-forwarded-host"],
            env.base(i).trim_start_matches("http://"),
            "instance {i}: {h}"
        );
        for gone in [
            "forwarded",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-server",
            "x-real-ip",
            "x-client-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-original-url",
            "x-rewrite-url",
        ] {
            assert!(
                h.get(gone).is_none(),
                "instance {i}: {gone} reached the upstream: {h}"
            );
        }
        assert_eq!(h["x-keep"], "yes", "other headers pass");
    }
}

// ------------------------------------------------------------------ Cache-Control

/// Token-route responses without a `Cache-Control` of their own get `private`; an upstream's
/// own is kept; pass-through routes are left alone.
#[tokio::test]
async fn token_route_responses_are_private_unless_the_upstream_says_otherwise() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let r = b.xhr(reqwest::Method::GET, &env.url("/api/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["cache-control"], "private");
    let r = b.xhr(reqwest::Method::GET, &env.url("/api/cached")).await;
    assert_eq!(r.headers["cache-control"], "public, max-age=60");
    let r = b.xhr(reqwest::Method::GET, &env.url("/opt/x")).await;
    assert_eq!(r.headers["cache-control"], "private", "optional routes too");
    let r = reqwest::Client::new()
        .get(env.url("/opt/x"))
        .header("x-csrf", "1")
        .send()
        .await
        .expect("anonymous");
    assert_eq!(
        r.headers()["cache-control"],
        "private",
        "without a session too"
    );
    let r = reqwest::get(env.url("/public/x")).await.expect("public");
    assert!(r.headers().get("cache-control").is_none());
}

// ------------------------------------------------------------------ connection limits

/// `max_connections_per_ip` caps one peer address while another is still served; a closed
/// connection gives its slot back.
#[tokio::test]
async fn a_per_ip_cap_refuses_one_peer_while_others_are_served() {
    let env = TestEnv::start().await;
    let bin = env
        .spawn_binary_with_server("max_connections = 10\nmax_connections_per_ip = 2\n")
        .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(held_connection_from([127, 0, 0, 1], bin.addr).await);
    }
    assert!(
        !served_from([127, 0, 0, 1], bin.addr).await,
        "a third from the same IP is closed"
    );
    assert!(
        served_from([127, 0, 0, 2], bin.addr).await,
        "another IP is served"
    );
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        served_from([127, 0, 0, 1], bin.addr).await,
        "a freed slot is reused"
    );
    let text = metrics(bin.admin_addr).await;
    assert!(
        text.contains(r#"cloakroom_connections_refused_total{limit="per_ip"}"#),
        "{text}"
    );
}

/// HTTP/1: a kept-alive connection idle for `http1_idle_timeout` is closed, while a response
/// that takes longer than that is not cut.
#[tokio::test]
async fn idle_http1_connections_are_closed_and_busy_ones_are_not() {
    let env = TestEnv::start().await;
    let bin = env
        .spawn_binary_with_server("http1_idle_timeout = \"2s\"\nheader_read_timeout = \"60s\"\n")
        .await;
    let mut s = TcpStream::connect(bin.addr).await.expect("connect");
    // The upstream takes 3 s (longer than the idle timeout): the request is in flight, not idle.
    assert!(keep_alive_get(&mut s, "/public/slow/x")
        .await
        .starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(6)).await;
    assert!(
        closed,
        "an idle keep-alive connection is closed within 2 s + margin"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not long before the idle timeout: {:?}",
        started.elapsed()
    );
}

/// HTTP/1: the header-read timeout bounds a request head from its first byte, not the time a
/// kept-alive connection waits between requests, which is `http1_idle_timeout`'s.
#[tokio::test]
async fn the_header_read_timeout_bounds_heads_not_keep_alive_idle_time() {
    let env = TestEnv::start().await;
    let bin = env
        .spawn_binary_with_server("header_read_timeout = \"2s\"\nhttp1_idle_timeout = \"6s\"\n")
        .await;
    let mut s = TcpStream::connect(bin.addr).await.expect("connect");
    assert!(keep_alive_get(&mut s, "/public/x")
        .await
        .starts_with("HTTP/1.1 200"));
    // Idle for longer than the header-read timeout: still served.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(keep_alive_get(&mut s, "/public/x")
        .await
        .starts_with("HTTP/1.1 200"));
    // Then a head that never ends is cut within 2 s (+ margin) of its first byte, long
    // before the idle timeout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "a slow head is cut");
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "{:?}",
        started.elapsed()
    );
    let text = metrics(bin.admin_addr).await;
    assert!(
        text.contains(r#"cloakroom_connections_closed_total{reason="header_timeout"}"#),
        "{text}"
    );

    // A connection that never sends a byte is closed too: its first head is due
    // `header_read_timeout` after the connection opened.
    let mut quiet = TcpStream::connect(bin.addr).await.expect("connect");
    let (_, closed) = read_until_closed(&mut quiet, Duration::from_secs(10)).await;
    assert!(closed, "an idle new connection is closed");
}

async fn h2_raw(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    // An empty SETTINGS frame.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    s
}

/// The frames (type, flags, payload) in `bytes`.
fn h2_frames(bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 9 <= bytes.len() {
        let len = usize::from(bytes[i]) << 16
            | usize::from(bytes[i + 1]) << 8
            | usize::from(bytes[i + 2]);
        if i + 9 + len > bytes.len() {
            break;
        }
        out.push((
            bytes[i + 3],
            bytes[i + 4],
            bytes[i + 9..i + 9 + len].to_vec(),
        ));
        i += 9 + len;
    }
    out
}

/// HTTP/2: the server announces the configured stream and header-list limits; a peer that
/// does not answer keep-alive pings is closed after the ping interval plus its timeout.
#[tokio::test]
async fn http2_limits_are_announced_and_unanswered_pings_close_the_connection() {
    let env = TestEnv::start().await;
    let bin = env
        .spawn_binary_with_server(
            "http2_max_concurrent_streams = 7\nhttp2_max_header_list_size = 4096\n\
             http2_keep_alive_interval = \"1s\"\nhttp2_keep_alive_timeout = \"1s\"\n\
             http1_idle_timeout = \"60s\"\nhttp2_idle_timeout = \"60s\"\n",
        )
        .await;
    let mut s = h2_raw(bin.addr).await;
    let started = Instant::now();
    let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "a peer that never answers a PING is closed");
    let frames = h2_frames(&bytes);
    let settings = frames
        .iter()
        .find(|(t, flags, _)| *t == 4 && flags & 1 == 0)
        .map(|(_, _, p)| p.clone())
        .expect("server SETTINGS");
    let setting = |id: u16| {
        settings.chunks(6).find_map(|c| {
            (u16::from_be_bytes([c[0], c[1]]) == id)
                .then(|| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
        })
    };
    assert_eq!(setting(3), Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(setting(6), Some(4096), "SETTINGS_MAX_HEADER_LIST_SIZE");
    assert!(
        frames.iter().any(|(t, flags, _)| *t == 6 && flags & 1 == 0),
        "the server pinged: {frames:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// HTTP/2: a connection with no open stream for `http2_idle_timeout` gets GOAWAY and is
/// closed, although it answers pings.
#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let env = TestEnv::start().await;
    let bin = env
        .spawn_binary_with_server("http2_idle_timeout = \"2s\"\nhttp1_idle_timeout = \"60s\"\n")
        .await;
    let tcp = TcpStream::connect(bin.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::get(format!("http://{}/public/x", bin.addr))
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), conn).await;
    assert!(
        ended.is_ok(),
        "the idle h2 connection is closed within 2 s + margin"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    drop(client);
}

// ------------------------------------------------------------------ tunnels and streams

fn ws_handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

async fn open_tunnel(addr: SocketAddr, path: &str, extra: &str) -> TcpStream {
    let mut s = held_connection(addr).await;
    s.write_all(ws_handshake(path, extra).as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.expect("echo");
    assert_eq!(&got, b"ping");
    s
}

/// A WebSocket tunnel holds its connection slot while it lives (so `max_connections` counts
/// it), and is closed after `tunnel_idle_timeout` without bytes either way, which frees the
/// slot.
#[tokio::test]
async fn tunnels_count_toward_the_limit_and_close_when_idle() {
    let env = TestEnv::start().await;
    let bin = env
        .spawn_binary_with_server(
            "max_connections = 2\nmax_connections_per_ip = 0\ntunnel_idle_timeout = \"3s\"\n",
        )
        .await;
    let mut tunnel = open_tunnel(bin.addr, "/public/ws", "").await;
    let other = held_connection(bin.addr).await;
    assert!(
        !served_from([127, 0, 0, 1], bin.addr).await,
        "tunnel + connection fill both slots"
    );
    drop(other);

    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut tunnel, Duration::from_secs(8)).await;
    assert!(closed, "an idle tunnel is closed within 3 s + margin");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        served_from([127, 0, 0, 1], bin.addr).await,
        "its slot is free again"
    );
    let text = metrics(bin.admin_addr).await;
    assert!(
        text.contains(r#"cloakroom_tunnels_ended_total{reason="idle"}"#),
        "{text}"
    );
}

/// A server-sent-event response holds its connection's slot while it streams, and without an
/// event for `tunnel_idle_timeout` it is ended cleanly (the chunked body terminates, so an
/// EventSource reconnects).
#[tokio::test]
async fn idle_event_streams_end_cleanly() {
    let env = TestEnv::start().await;
    let bin = env
        .spawn_binary_with_server(
            "tunnel_idle_timeout = \"4s\"\nmax_connections = 1\nmax_connections_per_ip = 0\n",
        )
        .await;
    let mut s = held_connection(bin.addr).await;
    s.write_all(b"GET /public/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !served_from([127, 0, 0, 1], bin.addr).await,
        "the open stream holds the only slot"
    );
    let started = Instant::now();
    let mut body = Vec::new();
    let mut chunk = [0u8; 1024];
    while !body.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut chunk))
            .await
            .expect("the idle stream ends within 4 s + margin")
            .expect("read");
        assert!(
            n > 0,
            "ended with a terminating chunk, not a cut connection"
        );
        body.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&body).contains("data: hello"));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // The connection stays usable afterwards (a clean end, keep-alive).
    assert!(keep_alive_get(&mut s, "/public/x")
        .await
        .starts_with("HTTP/1.1 200"));
}

fn sigterm(bin: &Binary) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &bin.pid().to_string()])
        .status();
}

/// At SIGTERM a tunnel is drained (bytes in flight delivered, then a clean close) and an event
/// stream ends cleanly, long before `shutdown_drain`; the process exits 0.
#[tokio::test]
async fn shutdown_drains_tunnels_and_event_streams_then_exits() {
    let env = TestEnv::start().await;
    let mut bin = env
        .spawn_binary_with_server("shutdown_drain = \"40s\"\n")
        .await;
    let mut tunnel = open_tunnel(bin.addr, "/public/ws", "").await;
    let mut sse = TcpStream::connect(bin.addr).await.expect("connect");
    sse.write_all(b"GET /public/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    assert!(read_head(&mut sse).await.starts_with("HTTP/1.1 200"));
    tunnel.write_all(b"last words").await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    sigterm(&bin);
    let (got, closed) = read_until_closed(&mut tunnel, Duration::from_secs(20)).await;
    assert!(closed, "the tunnel is closed at shutdown");
    assert_eq!(got, b"last words", "what was in flight was delivered first");
    let (body, closed) = read_until_closed(&mut sse, Duration::from_secs(20)).await;
    assert!(closed);
    assert!(
        body.ends_with(b"0\r\n\r\n"),
        "the event stream ended cleanly: {:?}",
        String::from_utf8_lossy(&body)
    );
    let status = tokio::task::spawn_blocking(move || bin.child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "drained well before 40 s: {:?}",
        started.elapsed()
    );
}

/// Each tunnel is registered with the session it was opened for: `Tunnels::close_session`
/// with that session's handle cuts it (and only it).
#[tokio::test]
async fn a_sessions_tunnels_are_registered_under_its_handle() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let addr = env.apps[0].public_addr;
    let extra = format!("Cookie: {cookie}\r\nOrigin: {}\r\n", env.base(0));
    let mut ours = open_tunnel(addr, "/api/ws", &extra).await;
    let mut anonymous = open_tunnel(addr, "/public/ws", "").await;
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::COOKIE, cookie.parse().expect("cookie"));
    let config = env.config(1, &env.keys, "");
    let handle = cloakroom::cookies::Cookies::from_config(&config)
        .session_id(&headers)
        .expect("session id")
        .handle();
    let tunnels = env.apps[0].tunnels();
    assert_eq!(tunnels.live(), 2);
    assert_eq!(tunnels.close_session(&handle), 1);
    let (_, closed) = read_until_closed(&mut ours, Duration::from_secs(5)).await;
    assert!(closed, "the session's tunnel is cut");
    anonymous.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    anonymous
        .read_exact(&mut got)
        .await
        .expect("the other tunnel lives on");
    assert_eq!(&got, b"ping");
    let _ = ADMIN_TOKEN;
}

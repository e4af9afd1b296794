//! Issue #7, proxy hardening: hostile HTTP at the public listener, on the real stack.
//!
//! Raw sockets wherever a client library would normalise the request (smuggling, folding, dot
//! segments, absolute-form targets). Every test is named for the property it proves; each
//! checks with `env.upstream.count()` / `env.upstream.last()` that nothing extra, and nothing
//! smuggled, reached the upstream.
//!
//! Slowloris (a request head that never ends) is proved in
//! `ops::slow_headers_big_headers_and_too_many_connections_are_cut_off` and not repeated here.

use crate::support::browser::Browser;
use crate::support::TestEnv;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What came back on one raw connection.
struct Raw {
    text: String,
    /// The server closed the connection (EOF or reset) within the wait.
    closed: bool,
}

impl Raw {
    /// The status of the first response, if any.
    fn status(&self) -> Option<u16> {
        self.text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
    }

    /// How many responses came back on the connection.
    fn responses(&self) -> usize {
        self.text.matches("HTTP/1.1 ").count()
    }

    fn head(&self) -> &str {
        &self.text[..self.text.len().min(300)]
    }
}

/// Writes `bytes` on a fresh connection, then reads until the server closes it or `wait` passes.
/// Without `Connection: close` a keep-alive server keeps the connection open, so the wait also
/// shows whether a smuggled second request got its own response.
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Raw {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may refuse and close before it read everything: a failed write is an answer.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    let mut closed = false;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    Raw {
        text: String::from_utf8_lossy(&buf).to_string(),
        closed,
    }
}

const WAIT: Duration = Duration::from_secs(2);

/// A refusal: an error status (400, 404, 405, 414, 431…), or the connection closed without an
/// answer. Never a 2xx/3xx.
fn refused(r: &Raw) -> bool {
    match r.status() {
        None => r.closed,
        Some(s) => s >= 400,
    }
}

/// The smuggled request every attempt below tries to hide.
const SMUGGLED: &str = "GET /public/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

fn upstream_never_saw_the_smuggled_request(env: &TestEnv, before: usize, what: &str) {
    // Every request's path is kept: a smuggled request that reached the upstream is found here
    // even when it arrived after the answer (then at the next attempt's check, or the last's).
    // The count is a second check, with room for the one request an attempt forwards and the
    // previous attempt's, whose head the upstream may read after that attempt's connection
    // closed (a runtime per core runs the forward and the upstream connection in turn).
    assert!(
        !env.upstream.saw_path("/public/smuggled"),
        "{what}: a smuggled request reached the upstream"
    );
    let after = env.upstream.count();
    assert!(
        after <= before + 2,
        "{what}: the upstream saw {} requests for one",
        after - before
    );
}

// ------------------------------------------------------------------ request smuggling (HTTP/1.1)

/// RFC 9112 §6.1/§6.3: with both `Content-Length` and `Transfer-Encoding`, the chunked framing
/// wins, `Content-Length` is not forwarded, and the connection is closed after the answer, so
/// bytes beyond the chunked body are never read as a second request (CL.TE and TE.CL).
#[tokio::test]
async fn cl_and_te_together_are_framed_by_te_alone_and_close_the_connection() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;

    // CL.TE: a front end that believed Content-Length would pass the smuggled request along as
    // body; one that believes TE sees an empty body and then the smuggled request.
    let body = format!("0\r\n\r\n{SMUGGLED}");
    // TE.CL: Content-Length covers only the chunk size line.
    let te_cl_body = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let cases = [
        (
            "CL.TE",
            format!(
                "POST /public/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{body}",
                body.len()
            ),
            0usize,
        ),
        (
            "TE.CL",
            format!(
                "POST /public/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 4\r\n\r\n{te_cl_body}"
            ),
            SMUGGLED.len(),
        ),
    ];
    for (name, req, te_len) in cases {
        let before = env.upstream.count();
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        upstream_never_saw_the_smuggled_request(&env, before, name);
        assert_eq!(r.responses(), 1, "{name}: exactly one answer: {}", r.text);
        assert!(
            r.closed,
            "{name}: the connection must close after CL+TE: {}",
            r.head()
        );
        match r.status() {
            Some(400) => assert_eq!(env.upstream.count(), before, "{name}"),
            Some(200) => {
                let seen = env.upstream.last();
                assert_eq!(seen["path"], "/public/upload", "{name}");
                let h = &seen["headers"];
                assert!(
                    h.get("content-length").is_none() || h.get("transfer-encoding").is_none(),
                    "{name}: both framings forwarded: {h}"
                );
                let out: serde_json::Value =
                    serde_json::from_str(r.text.split("\r\n\r\n").nth(1).unwrap_or_default())
                        .unwrap_or_default();
                assert_eq!(out["len"], te_len, "{name}: the body is what TE framed");
            }
            other => panic!("{name}: unexpected answer {other:?}: {}", r.head()),
        }
    }
}

/// Conflicting or malformed `Content-Length` is a 400 (or a closed connection): never a guess at
/// the framing, never an upstream request.
#[tokio::test]
async fn conflicting_or_malformed_content_length_is_refused() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    for cl in [
        "Content-Length: 4\r\nContent-Length: 40",
        "Content-Length: 40\r\nContent-Length: 4",
        "Content-Length: 4, 40",
        "Content-Length: -4",
        "Content-Length: +4",
        "Content-Length: 0x4",
        "Content-Length: 4 4",
        "Content-Length: 4.0",
        "Content-Length: 99999999999999999999999",
        "Content-Length: ",
    ] {
        let before = env.upstream.count();
        let req = format!(
            "POST /public/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n{cl}\r\n\r\nabcd{SMUGGLED}"
        );
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        assert!(refused(&r), "{cl:?}: {}", r.head());
        assert_eq!(env.upstream.count(), before, "{cl:?} reached the upstream");
    }
}

/// RFC 9112 §5.2: obs-fold (a header line continued on the next line) in a request is refused,
/// so a folded `Transfer-Encoding` or `Content-Length` cannot be read two ways.
#[tokio::test]
async fn obs_fold_continuation_lines_are_refused() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    for folded in [
        "X-Folded: a\r\n b",
        "X-Folded: a\r\n\tb",
        "Transfer-Encoding:\r\n chunked",
        "Transfer-Encoding: identity\r\n chunked",
        "Content-Length: 0\r\n 40",
        "X-Csrf: 1\r\n x",
    ] {
        let before = env.upstream.count();
        let req = format!(
            "POST /public/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n{folded}\r\n\r\n0\r\n\r\n{SMUGGLED}"
        );
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        assert_eq!(r.status(), Some(400), "{folded:?}: {}", r.head());
        assert_eq!(
            env.upstream.count(),
            before,
            "{folded:?} reached the upstream"
        );
    }
}

/// Obfuscated `Transfer-Encoding` (not chunked last, unknown codings, whitespace before the
/// colon, TE on HTTP/1.0) is refused rather than guessed at.
#[tokio::test]
async fn obfuscated_transfer_encoding_is_refused() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    for (version, te) in [
        ("1.1", "Transfer-Encoding: xchunked"),
        ("1.1", "Transfer-Encoding: chunked, identity"),
        ("1.1", "Transfer-Encoding: identity"),
        ("1.1", "Transfer-Encoding: gzip"),
        ("1.1", "Transfer-Encoding : chunked"),
        (
            "1.1",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        ),
        ("1.1", "Transfer-Encoding: \"chunked\""),
        ("1.0", "Transfer-Encoding: chunked"),
    ] {
        let before = env.upstream.count();
        let req = format!(
            "POST /public/upload HTTP/{version}\r\nHost: 127.0.0.1\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        );
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        assert!(refused(&r), "{te:?}: {}", r.head());
        assert_eq!(env.upstream.count(), before, "{te:?} reached the upstream");
    }
}

/// A chunked body with a bad chunk size (not hex, overflowing, negative, missing CRLF) is never
/// a success and ends the connection: the bytes after it are never parsed as a second request,
/// neither by Cloakroom nor by the upstream.
#[tokio::test]
async fn bad_chunk_sizes_end_the_connection_without_desync() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    for chunks in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "5 5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5\r\nhello\r\n0\r\nX-Trailer\r\n\r\n",
    ] {
        let before = env.upstream.count();
        let req = format!(
            "POST /public/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}{SMUGGLED}"
        );
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        upstream_never_saw_the_smuggled_request(&env, before, chunks);
        assert!(
            r.responses() <= 1,
            "{chunks:?}: a second answer means a second request was parsed: {}",
            r.text
        );
        assert!(
            r.closed,
            "{chunks:?}: the connection must end: {}",
            r.head()
        );
        // Today the answer is 502 `upstream_unavailable` (the body error surfaces in the
        // upstream client); what matters here is that it is never a success.
        assert!(refused(&r), "{chunks:?}: {}", r.head());
    }
}

// ------------------------------------------------------------------ header and URI hygiene

/// A bare CR, NUL or DEL in a header value, or a space or CR in a header name, is a 400: a
/// header can never be split into two on its way to the upstream.
#[tokio::test]
async fn crlf_and_control_bytes_in_header_lines_are_refused() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    for line in [
        &b"X-Injected: a\rTransfer-Encoding: chunked"[..],
        b"X-Injected: a\rSet-Cookie: evil=1",
        b"X-Injected: a\x00b",
        b"X-Injected: a\x7fb",
        b"X Injected: a",
        b"X-Injected\r: a",
        b"\rX-Injected: a",
        b": no-name",
    ] {
        let before = env.upstream.count();
        let mut req = b"GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
        req.extend_from_slice(line);
        req.extend_from_slice(b"\r\n\r\n");
        let r = exchange(addr, &req, WAIT).await;
        assert_eq!(
            r.status(),
            Some(400),
            "{:?}: {}",
            String::from_utf8_lossy(line),
            r.head()
        );
        assert_eq!(env.upstream.count(), before);
    }
}

/// Percent-encoded CR/LF stays encoded: it never splits Cloakroom's response nor becomes a
/// header, neither through a proxied path nor through `return_to`.
#[tokio::test]
async fn encoded_crlf_never_splits_a_response() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let r = exchange(
        addr,
        b"GET /public/a%0d%0aSet-Cookie:%20evil=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.head());
    let head = r.text.split("\r\n\r\n").next().unwrap_or_default();
    assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    assert_eq!(
        env.upstream.last()["path"],
        "/public/a%0d%0aSet-Cookie:%20evil=1"
    );

    for rt in [
        "/%0d%0aSet-Cookie:%20evil=1",
        "/%0aLocation:%20https://evil.example",
        "/a%00b",
    ] {
        let r = exchange(
            addr,
            format!(
                "GET /auth/login?return_to={rt} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(r.status(), Some(400), "{rt}: {}", r.head());
        assert!(r.text.contains("invalid_return_to"), "{rt}: {}", r.text);
        assert!(!r.text.to_ascii_lowercase().contains("set-cookie: evil"));
    }
}

/// An oversized request head (one huge header, too many headers) or URI is refused with
/// 431/414/400 or a closed connection, before anything reaches the upstream.
#[tokio::test]
async fn oversized_heads_and_uris_are_refused_before_the_upstream() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        (
            "64 KiB header",
            format!(
                "GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            ),
        ),
        (
            "1 MiB header",
            format!(
                "GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1024 * 1024)
            ),
        ),
        (
            "200 headers",
            format!("GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n"),
        ),
        (
            "20 KiB URI",
            format!(
                "GET /public/{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                "a".repeat(20 * 1024)
            ),
        ),
        (
            "100 KiB URI",
            format!(
                "GET /public/x?q={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                "a".repeat(100 * 1024)
            ),
        ),
        (
            "20 KiB cookie",
            format!(
                "GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nx-csrf: 1\r\nCookie: __Host-cloakroom={}\r\n\r\n",
                "A".repeat(20 * 1024)
            ),
        ),
    ];
    for (name, req) in cases {
        let before = env.upstream.count();
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        assert!(
            matches!(r.status(), Some(400 | 414 | 431)) || (r.status().is_none() && r.closed),
            "{name}: {}",
            r.head()
        );
        assert_eq!(env.upstream.count(), before, "{name} reached the upstream");
    }
    // And the listener still serves.
    let r = exchange(
        addr,
        b"GET /public/after HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200));
}

// ------------------------------------------------------------------ hop-by-hop abuse

/// `Connection` can name any header as hop-by-hop. Naming ours changes nothing: the CSRF and
/// Origin checks run on the request as received, the bearer, `X-Forwarded-*` and
/// `X-Request-Id` are set after the stripping, the browser's own `Authorization` never survives,
/// and a stripped `Content-Length` does not change the body the upstream gets.
#[tokio::test]
async fn connection_named_headers_cannot_remove_bearer_csrf_or_framing() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let session = env.session_of(&b).await.expect("session");
    let bearer = format!("Bearer {}", session.tokens.access_token.expose());
    let get = |extra: &str| {
        format!(
            "GET /api/hop HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n{extra}Connection: close\r\n\r\n"
        )
    };

    // No CSRF header, but `Connection: x-csrf` (and a second Connection line): still 403.
    let before = env.upstream.count();
    for extra in [
        "Connection: x-csrf\r\n",
        "Connection: keep-alive, x-csrf\r\nConnection: cookie\r\n",
        "x-csrf: 0\r\nConnection: x-csrf\r\n",
    ] {
        let r = exchange(addr, get(extra).as_bytes(), WAIT).await;
        assert_eq!(r.status(), Some(403), "{extra:?}: {}", r.head());
        assert!(r.text.contains(r#""csrf""#), "{}", r.text);
    }
    // A foreign Origin named hop-by-hop is still checked.
    let r = exchange(
        addr,
        get("x-csrf: 1\r\nOrigin: https://evil.example\r\nConnection: origin\r\n").as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.head());
    assert!(r.text.contains(r#""origin""#), "{}", r.text);
    assert_eq!(
        env.upstream.count(),
        before,
        "refused requests reached the upstream"
    );

    // Every header Cloakroom sets, named hop-by-hop, plus two forged Authorization headers.
    let r = exchange(
        addr,
        get(
            "x-csrf: 1\r\nAuthorization: Bearer forged-1\r\nAuthorization: Bearer forged-2\r\n\
             X-Request-Id: rid-hop-1\r\n\
             Connection: authorization, cookie, x-forwarded-for, x-forwarded-proto\r\n\
             Connection: x-forwarded-host, x-request-id, host\r\n",
        )
        .as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.head());
    let seen = env.upstream.last();
    let h = &seen["headers"];
    assert_eq!(seen["authorization_count"], 1, "{h}");
    assert_eq!(
        h["authorization"],
        bearer.as_str(),
        "our bearer, not the forged one"
    );
    assert_eq!(seen["cookie_count"], 0);
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("x-forwarded-host").is_some(), "{h}");
    assert!(h.get("x-request-id").is_some(), "{h}");
    assert!(h.get("x-csrf").is_none(), "{h}");
    assert!(
        h.get("connection").is_none_or(|c| c != "authorization"),
        "{h}"
    );

    // `Connection: content-length, transfer-encoding` on a body: the upstream still gets it whole.
    for framing in [
        "Content-Length: 11\r\n\r\nhello world".to_string(),
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_string(),
    ] {
        let req = format!(
            "POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nx-csrf: 1\r\n\
             Connection: close, content-length, transfer-encoding\r\n{framing}"
        );
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        assert_eq!(r.status(), Some(200), "{}", r.head());
        let out: serde_json::Value =
            serde_json::from_str(r.text.split("\r\n\r\n").nth(1).unwrap_or_default())
                .unwrap_or_default();
        assert_eq!(out["len"], 11, "{framing:?}: {out}");
        assert_eq!(
            out["sha256"],
            crate::support::upstream::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"hello world"))
        );
    }
}

// ------------------------------------------------------------------ escaping a route prefix

/// Dot segments in every spelling (literal, `%2e`, mixed case, encoded `/` and `\`, backslash)
/// are a 400 on every kind of route: a prefix cannot be escaped at an upstream that normalises,
/// and the bearer of `/api/` is never sent to a path outside it.
#[tokio::test]
async fn dot_segments_in_every_spelling_cannot_escape_a_prefix() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let before = env.upstream.count();
    for prefix in ["/api/", "/public/", "/stripped/", "/opt/"] {
        for escape in [
            "../admin",
            "..",
            "./../admin",
            "x/../../admin",
            "%2e%2e/admin",
            "%2E%2E/admin",
            "%2e./admin",
            ".%2E/admin",
            "..%2fadmin",
            "..%2Fadmin",
            "%2e%2e%2fadmin",
            "%2e%2e%5cadmin",
            "..%5Cadmin",
            "..\\admin",
            "x\\..\\..\\admin",
            "%2e",
            "./admin",
        ] {
            let path = format!("{prefix}{escape}");
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nx-csrf: 1\r\nConnection: close\r\n\r\n"
            );
            let r = exchange(addr, req.as_bytes(), WAIT).await;
            assert_eq!(r.status(), Some(400), "{path}: {}", r.head());
        }
    }
    // A prefix's own encoded slash does not form another prefix.
    let r = exchange(
        addr,
        b"GET /public%2f..%2fapi/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(refused(&r), "{}", r.head());
    assert_eq!(
        env.upstream.count(),
        before,
        "an escape reached the upstream"
    );
}

/// Double-encoded (`%252e%252e`) and overlong-UTF-8 dots are not dot segments after one
/// decoding: Cloakroom forwards such a path byte for byte (it never decodes, so it never creates
/// a `..`), and the upstream sees it under the route's prefix.
#[tokio::test]
async fn double_encoded_dots_are_forwarded_verbatim_under_the_prefix() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    for path in [
        "/public/%252e%252e/api/x",
        "/public/%252E%252E%252Fapi",
        "/public/%25%32%65%25%32%65/api",
        "/public/%c0%ae%c0%ae/api",
        "/public/%e0%80%ae%e0%80%ae/api",
        "/public/...",
        "/public/a..b/c",
    ] {
        let before = env.upstream.count();
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        match r.status() {
            Some(200) => {
                assert_eq!(env.upstream.count(), before + 1);
                assert_eq!(env.upstream.last()["path"], path, "forwarded verbatim");
            }
            _ => assert!(
                refused(&r) && env.upstream.count() == before,
                "{path}: {}",
                r.head()
            ),
        }
    }
}

/// Path parameters on a dot segment (`..;`, `%2e%2e;x`) are a dot segment to Tomcat, Jetty and
/// older Spring, which strip `;params` before normalising: they must be refused like `..`.
///
/// KNOWN WEAKNESS (issue #7 report): `proxy::has_dot_segment` compares whole segments, so
/// `/api/..;/admin` passes and is forwarded with the bearer.
#[tokio::test]
async fn dot_segments_with_path_parameters_cannot_escape_a_prefix() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let before = env.upstream.count();
    let mut forwarded = Vec::new();
    for path in [
        "/api/..;/admin",
        "/api/..;jsessionid=x/admin",
        "/api/%2e%2e;/admin",
        "/api/.;/..;/admin",
        "/public/..;/api/x",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nx-csrf: 1\r\nConnection: close\r\n\r\n"
        );
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        if !refused(&r) {
            forwarded.push(format!("{path} -> {:?}", r.status()));
        }
    }
    assert!(
        forwarded.is_empty() && env.upstream.count() == before,
        "dot segments with ;params were forwarded: {forwarded:?}"
    );
}

/// An absolute-form target names another host, a CONNECT names a tunnel, `OPTIONS *` names no
/// path: none of them turns Cloakroom into an open proxy. Only a configured route's upstream is
/// ever contacted, and only under that route's prefix.
#[tokio::test]
async fn absolute_form_connect_and_asterisk_targets_cannot_redirect_the_proxy() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let redis_port = env
        .redis
        .url()
        .rsplit(':')
        .next()
        .unwrap_or("6379")
        .to_string();

    let before = env.upstream.count();
    let r = exchange(
        addr,
        b"GET http://evil.example:1/public/abs HTTP/1.1\r\nHost: evil.example:1\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    if r.status() == Some(200) {
        // Forwarded to the route's own upstream, never to evil.example.
        assert_eq!(env.upstream.count(), before + 1);
        assert_eq!(env.upstream.last()["path"], "/public/abs");
    } else {
        assert!(refused(&r), "{}", r.head());
    }

    let before = env.upstream.count();
    for req in [
        format!("CONNECT 127.0.0.1:{redis_port} HTTP/1.1\r\nHost: 127.0.0.1:{redis_port}\r\n\r\nPING\r\n"),
        "OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_string(),
        "GET public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_string(),
        "GET @evil.example/public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            .to_string(),
    ] {
        let r = exchange(addr, req.as_bytes(), WAIT).await;
        assert!(refused(&r), "{req:?}: {}", r.head());
        assert!(!r.text.contains("+PONG"), "CONNECT tunnelled to Redis");
    }
    assert_eq!(env.upstream.count(), before);
}

// ------------------------------------------------------------------ Host and forwarding headers

/// From an untrusted peer, `Forwarded` is dropped and `X-Forwarded-For/-Proto` are replaced by
/// what Cloakroom itself knows (the TCP peer, the public URL's scheme).
#[tokio::test]
async fn untrusted_peer_cannot_spoof_forwarded_for_or_proto() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let r = exchange(
        addr,
        b"GET /public/fwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\n\
          Forwarded: for=7.7.7.7\r\n\
          X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7, 8.8.8.8\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.head());
    let h = env.upstream.last()["headers"].clone();
    assert!(h.get("forwarded").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_ne!(h["x-forwarded-host"], "evil.example");
}

/// A spoofed `Host` steers nothing Cloakroom decides: the login redirect's `redirect_uri` comes
/// from the configuration, and the Origin check compares with the configured public origin.
#[tokio::test]
async fn spoofed_host_does_not_steer_login_or_the_origin_check() {
    // The front-channel request, so that its redirect_uri can be read off the redirect (with
    // PAR it goes in the push, from the same configuration).
    let env = TestEnv::start_with(crate::support::Opts {
        par: "never",
        ..crate::support::Opts::default()
    })
    .await;
    let addr = env.apps[0].public_addr;
    let r = exchange(
        addr,
        b"GET /auth/login?return_to=/app HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(302), "{}", r.head());
    let location = r
        .text
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_string())
        })
        .expect("Location");
    let url = url::Url::parse(&location).expect("absolute IdP URL");
    let redirect_uri = url
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.to_string())
        .expect("redirect_uri");
    assert_eq!(redirect_uri, format!("{}/auth/callback", env.base(0)));
    assert!(!location.contains("evil.example"), "{location}");

    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let before = env.upstream.count();
    let r = exchange(
        addr,
        format!(
            "GET /api/x HTTP/1.1\r\nHost: evil.example\r\nOrigin: http://evil.example\r\n\
             Cookie: {cookie}\r\nx-csrf: 1\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.head());
    assert!(r.text.contains(r#""origin""#));
    assert_eq!(env.upstream.count(), before);
}

/// From an untrusted peer, no client-supplied forwarding header reaches the upstream under its
/// trusted-looking name: `X-Forwarded-Host` is the public host (not the request's `Host`), and
/// `X-Forwarded-Port`, `X-Forwarded-Prefix` and `X-Real-IP`, which frameworks (Spring's
/// ForwardedHeaderFilter, nginx `real_ip`, Rails, Express `trust proxy`) believe, are not
/// passed through with the client's value.
///
/// Found in the issue #7 report (then `proxy::set_forwarded` copied the request's `Host` into
/// `X-Forwarded-Host`); fixed. Since issue #11 the same holds for trusted peers too
/// (`limits::forwarded_headers_come_from_config_whatever_the_peer`).
#[tokio::test]
async fn untrusted_peer_cannot_spoof_host_port_prefix_or_real_ip_upstream() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let r = exchange(
        addr,
        b"GET /public/fwd2 HTTP/1.1\r\nHost: evil.example\r\n\
          X-Forwarded-Port: 8443\r\nX-Forwarded-Prefix: /evil\r\nX-Real-IP: 6.6.6.6\r\n\
          Connection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.head());
    let h = env.upstream.last()["headers"].clone();
    let public_host = env.base(0).trim_start_matches("http://").to_string();
    let mut spoofed = Vec::new();
    if h["x-forwarded-host"] != public_host.as_str() {
        spoofed.push(format!("x-forwarded-host: {}", h["x-forwarded-host"]));
    }
    for (name, evil) in [
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/evil"),
        ("x-real-ip", "6.6.6.6"),
    ] {
        if h.get(name).is_some_and(|v| v == evil) {
            spoofed.push(format!("{name}: {evil}"));
        }
    }
    assert!(
        spoofed.is_empty(),
        "client-controlled forwarding headers reached the upstream: {spoofed:?}"
    );
}

// ------------------------------------------------------------------ HTTP/2

/// The locked `h2` has the fixes for HTTP/2 Rapid Reset (CVE-2023-44487: 0.3.22 / 0.4.0, the
/// pending-accept reset limit) and the CONTINUATION flood (0.3.26 / 0.4.4).
#[test]
fn locked_h2_has_the_rapid_reset_and_continuation_flood_fixes() {
    let lock = include_str!("../../../../Cargo.lock");
    let versions: Vec<(u64, u64, u64)> = lock
        .split("[[package]]")
        .filter(|p| p.lines().any(|l| l.trim() == r#"name = "h2""#))
        .filter_map(|p| {
            let v = p
                .lines()
                .find_map(|l| l.trim().strip_prefix("version = "))?
                .trim_matches('"');
            let mut it = v.split('.').map(|n| n.parse::<u64>().unwrap_or(0));
            Some((it.next()?, it.next()?, it.next()?))
        })
        .collect();
    assert!(!versions.is_empty(), "h2 is not in Cargo.lock");
    for v in versions {
        let fixed = match v {
            (0, 3, p) => p >= 26,
            (0, 4, p) => p >= 4,
            (0, m, _) => m > 4,
            _ => true,
        };
        assert!(
            fixed,
            "h2 {v:?} predates the rapid-reset / CONTINUATION fixes"
        );
    }
}

/// An h2c (prior knowledge) connection to the public listener.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    (send, tokio::spawn(conn))
}

async fn h2_get(send: h2::client::SendRequest<bytes::Bytes>, uri: &str) -> u16 {
    let mut send = send.ready().await.expect("h2 ready");
    let req = http::Request::get(uri).body(()).expect("request");
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("h2 answer in time")
        .expect("h2 response");
    resp.status().as_u16()
}

/// One HTTP/2 frame: 9-byte header, then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The same attack in raw frames (the h2 client only sees a broken pipe once the server hangs
/// up): preface, SETTINGS, then `n` × (HEADERS with END_STREAM, RST_STREAM CANCEL). Returns the
/// error code of the server's GOAWAY, if it sent one before closing.
async fn raw_rapid_reset(addr: SocketAddr, n: u32) -> Option<u32> {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    // HPACK: :method GET, :scheme http, :path (literal, not indexed) /public/rr.
    let mut block = vec![0x82, 0x86, 0x04, 10];
    block.extend_from_slice(b"/public/rr");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(SETTINGS, 0, 0, &[]));
    for i in 0..n {
        let id = 2 * i + 1;
        out.extend(h2_frame(HEADERS, 0x5, id, &block));
        out.extend(h2_frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = s.split();
    let writer = async {
        let _ = wr.write_all(&out).await;
    };
    let reader = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await
        {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf
    };
    let ((), buf) = tokio::join!(writer, reader);
    let mut at = 0;
    while at + 9 <= buf.len() {
        let len =
            usize::from(buf[at]) << 16 | usize::from(buf[at + 1]) << 8 | usize::from(buf[at + 2]);
        let kind = buf[at + 3];
        let payload = buf.get(at + 9..at + 9 + len)?;
        if kind == GOAWAY && payload.len() >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        at += 9 + len;
    }
    None
}

/// HTTP/2 Rapid Reset (CVE-2023-44487): a client that opens and at once resets 2,000 streams
/// gets GOAWAY (ENHANCE_YOUR_CALM) and loses its connection, the upstream is not hammered with
/// the cancelled requests, and a fresh connection is served normally afterwards.
#[tokio::test]
async fn http2_rapid_reset_gets_goaway_and_the_server_keeps_serving() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let base = env.base(0);

    // A normal h2c request works first (so the attack below talks to a real HTTP/2 server).
    let (send, conn) = h2_connect(addr).await;
    assert_eq!(h2_get(send, &format!("{base}/public/h2")).await, 200);
    conn.abort();

    let before = env.upstream.count();
    let (mut send, conn) = h2_connect(addr).await;
    let mut opened = 0;
    for i in 0..2000 {
        send = match tokio::time::timeout(Duration::from_secs(5), send.ready()).await {
            Ok(Ok(s)) => s,
            _ => break,
        };
        let req = http::Request::get(format!("{base}/public/rapid-reset/{i}"))
            .body(())
            .expect("request");
        let Ok((resp, mut stream)) = send.send_request(req, true) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        drop(resp);
        opened += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the server must end a rapid-reset connection, not keep it")
        .expect("connection task");
    let err = ended.expect_err("the connection ends with an error (GOAWAY), not cleanly");
    assert!(
        err.is_go_away() || err.is_io(),
        "expected GOAWAY or a closed connection, got {err:?}"
    );
    if err.is_go_away() {
        assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    }
    assert!(opened > 0, "no stream was opened");
    let amplified = env.upstream.count() - before;
    assert!(
        amplified < 200,
        "{amplified} of {opened} reset streams still reached the upstream"
    );

    // The same in raw frames: the server's answer is GOAWAY with ENHANCE_YOUR_CALM (0xb).
    let before = env.upstream.count();
    let code = raw_rapid_reset(addr, 2000).await;
    assert_eq!(code, Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM) expected");
    let amplified = env.upstream.count() - before;
    assert!(
        amplified < 200,
        "{amplified} raw reset streams reached the upstream"
    );

    // A fresh connection, HTTP/2 and HTTP/1.1, is served.
    let (send, conn) = h2_connect(addr).await;
    assert_eq!(
        h2_get(send, &format!("{base}/public/after-reset")).await,
        200
    );
    conn.abort();
    let r = exchange(
        addr,
        b"GET /public/after-reset-h1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200));
}

/// H2.CL downgrade smuggling: an HTTP/2 request whose DATA is longer than its `content-length`
/// is a stream error, and the HTTP/1.1 request Cloakroom sends upstream is framed by what it
/// forwards, so the extra bytes never become a request at the upstream.
#[tokio::test]
async fn http2_content_length_mismatch_cannot_smuggle_into_the_upstream() {
    let env = TestEnv::start().await;
    let addr = env.apps[0].public_addr;
    let base = env.base(0);
    let before = env.upstream.count();
    let (send, conn) = h2_connect(addr).await;
    let mut send = send.ready().await.expect("ready");
    let req = http::Request::post(format!("{base}/public/upload"))
        .header("content-length", "0")
        .body(())
        .expect("request");
    let (resp, mut body) = send.send_request(req, false).expect("send");
    let _ = body.send_data(bytes::Bytes::from(SMUGGLED.repeat(4)), true);
    let status = match tokio::time::timeout(Duration::from_secs(10), resp).await {
        Ok(Ok(r)) => Some(r.status().as_u16()),
        Ok(Err(_)) => None, // the stream was reset: the refusal we want
        Err(_) => panic!("no answer to an H2.CL request"),
    };
    conn.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    upstream_never_saw_the_smuggled_request(&env, before, "H2.CL");
    if env.upstream.count() > before {
        let seen = env.upstream.last();
        assert_eq!(seen["path"], "/public/upload");
    }
    assert_ne!(
        status,
        Some(200),
        "an H2.CL request with extra DATA was answered 200"
    );
}

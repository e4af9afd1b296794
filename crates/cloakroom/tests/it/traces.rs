//! OpenTelemetry traces (issue #18, part 2): the real binary exports its spans over OTLP to the
//! test support's receiver (`support/otlp.rs`), the real IdP and Redis behind it. One trace per
//! request — request → session.load → refresh → idp.token, store calls, the upstream call —
//! whose `traceparent` reaches the upstream and the IdP; a browser's `traceparent` believed
//! only with `telemetry.trust_incoming_trace`; OTLP/HTTP and OTLP/gRPC; the last spans flushed
//! at exit; and no token, cookie, code or secret in anything exported.

use crate::support::browser::{Browser, Resp};
use crate::support::otlp::{OtlpReceiver, RecordedSpan};
use crate::support::{query, Opts, TestEnv, CLIENT_SECRET};
use reqwest::Method;
use std::time::Duration;

/// A `[telemetry]` section exporting to `r` (50 ms batches), with `extra` keys.
fn telemetry(r: &OtlpReceiver, extra: &str) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nbatch_delay = \"50ms\"\n{extra}\n",
        r.endpoint()
    )
}

/// A login through `base`; returns the authorization code the browser carried back.
async fn login(env: &TestEnv, base: &str, b: &mut Browser) -> String {
    let r = b.get(&format!("{base}/auth/login?return_to=/x")).await;
    assert_eq!(r.status, 302, "login: {}", r.body);
    let callback = env.idp.login(b, &r.location(), "alice", "wonderland").await;
    let code = query(&callback).get("code").cloned().expect("a code");
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "callback: {}", r.body);
    code
}

/// The `traceparent` the echo upstream received: (trace id, parent span id, flags).
fn upstream_traceparent(r: &Resp) -> (String, String, String) {
    let tp = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream got no traceparent: {}", r.body))
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn in_trace<'a>(spans: &'a [RecordedSpan], trace: &str) -> Vec<&'a RecordedSpan> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

fn named<'a>(spans: &[&'a RecordedSpan], name: &str) -> &'a RecordedSpan {
    spans
        .iter()
        .copied()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
}

fn has_all(spans: &[RecordedSpan], trace: &str, names: &[&str]) -> bool {
    let t = in_trace(spans, trace);
    names.iter().all(|n| t.iter().any(|s| s.name == *n))
}

async fn stop(bin: crate::support::Binary) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &bin.pid().to_string()])
        .status();
    let mut bin = bin;
    let status = tokio::task::spawn_blocking(move || {
        let s = bin.child.wait();
        (bin, s)
    })
    .await
    .expect("wait");
    assert!(
        status.1.is_ok_and(|s| s.success()),
        "the binary did not stop cleanly"
    );
}

const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_SPAN: &str = "00f067aa0ba902b7";

fn incoming(b: &Browser, url: &str) -> reqwest::RequestBuilder {
    b.request(Method::GET, url)
        .header(
            "traceparent",
            format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"),
        )
        .header("tracestate", "vendor=abc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_traced_from_the_browser_to_the_idp_and_the_upstream_and_nothing_secret_is_exported(
) {
    let receiver = OtlpReceiver::start().await;
    let collector_key = "k3y-=-value-0123456789";
    let env = TestEnv::start_with(Opts {
        binary: true,
        // Every IdP call crosses the fault proxy, which keeps what Cloakroom sent.
        idp_fault: true,
        // Expired 3 s after issue: the second API call waits for a refresh.
        access_token_ttl: 3,
        env: vec![(
            "CLOAKROOM_OTLP_HEADERS",
            "x-collector-key=k3y-%3D-value-0123456789".into(),
        )],
        ..Opts::default()
    })
    .await;
    let bin = env.spawn_binary(&telemetry(&receiver, "")).await;
    let base = format!("http://{}", bin.addr);
    let mut b = Browser::new();
    let code = login(&env, &base, &mut b).await;
    let first = env.session_of(&b).await.expect("a session");

    let r = b.xhr(Method::GET, &format!("{base}/api/first")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let r = b.xhr(Method::GET, &format!("{base}/api/second")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (trace, upstream_parent, flags) = upstream_traceparent(&r);
    assert_eq!(flags, "01", "sampled (sample_ratio defaults to 1)");
    let second = env.session_of(&b).await.expect("the session");
    assert_ne!(
        first.tokens.access_token, second.tokens.access_token,
        "the token was refreshed"
    );
    let cookies: Vec<String> = b.jar.values().cloned().collect();
    let r = b
        .send(
            b.request(Method::POST, &format!("{base}/auth/logout"))
                .header("x-csrf", "1"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The refreshing request: one trace, each span a child of the one that caused it.
    let spans = receiver
        .wait_for("the refreshing request's trace", |s| {
            has_all(
                s,
                &trace,
                &[
                    "request",
                    "session.load",
                    "refresh",
                    "idp.token",
                    "upstream",
                ],
            )
        })
        .await;
    let t = in_trace(&spans, &trace);
    let request = named(&t, "request");
    assert!(
        request.parent_span_id.is_empty(),
        "a new trace: {request:?}"
    );
    assert_eq!(request.kind, 2, "server");
    assert_eq!(request.attr("http.request.method"), Some("GET"));
    assert_eq!(request.attr("url.path"), Some("/api/second"));
    assert_eq!(request.attr("http.route"), Some("/api/"));
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    assert!(request.attr("request_id").is_some(), "{request:?}");
    let load = named(&t, "session.load");
    assert_eq!(load.parent_span_id, request.span_id);
    assert!(
        matches!(load.attr("cache"), Some("hit" | "miss" | "off")),
        "{load:?}"
    );
    assert_eq!(
        load.attr("cloakroom.session").map(str::len),
        Some(8),
        "the short handle only"
    );
    let refresh = named(&t, "refresh");
    assert_eq!(refresh.parent_span_id, request.span_id);
    assert_eq!(refresh.attr("single_flight"), Some("leader"), "{refresh:?}");
    assert_eq!(refresh.attr("blocking"), Some("true"), "{refresh:?}");
    let token = named(&t, "idp.token");
    assert_eq!(token.parent_span_id, refresh.span_id);
    assert_eq!(token.kind, 3, "client");
    assert_eq!(token.attr("oauth.grant_type"), Some("refresh_token"));
    assert_eq!(token.attr("http.response.status_code"), Some("200"));
    assert_eq!(token.attr("http.request.method"), Some("POST"));
    assert!(
        t.iter()
            .any(|s| s.name == "store.write_refresh" && s.parent_span_id == refresh.span_id),
        "the refresh's store calls are its children: {t:#?}"
    );
    assert!(
        t.iter()
            .any(|s| s.name.starts_with("store.") && s.attr("db.system.name") == Some("redis")),
        "{t:#?}"
    );
    let upstream = named(&t, "upstream");
    assert_eq!(upstream.parent_span_id, request.span_id);
    assert_eq!(upstream.kind, 3);
    assert_eq!(
        upstream.span_id, upstream_parent,
        "the upstream's traceparent names the upstream span"
    );
    assert_eq!(upstream.attr("http.response.status_code"), Some("200"));
    assert_eq!(upstream.attr("http.route"), Some("/api/"));
    assert!(t.iter().all(|s| s.service == "cloakroom"));
    // The IdP got the refresh call's own traceparent.
    let sent = env
        .idp_fault
        .as_ref()
        .expect("proxy")
        .sent()
        .to_ascii_lowercase();
    assert!(
        sent.contains(&format!("traceparent: 00-{trace}-{}-01", token.span_id)),
        "the IdP never got the refresh's traceparent"
    );

    // The login: the callback's code exchange, and the PAR push of /auth/login, in their own
    // traces, also propagated to the IdP.
    let spans = receiver
        .wait_for(
            "the login's and the logout's spans, with their parents",
            |s| {
                // A span and its parent may come in different batches (the revocation runs on
                // after the logout's answer): wait for both.
                let with_parent =
                    |x: &RecordedSpan| s.iter().any(|p| p.span_id == x.parent_span_id);
                ["idp.par", "idp.revoke"]
                    .iter()
                    .all(|n| s.iter().any(|x| x.name == *n && with_parent(x)))
                    && s.iter().any(|x| {
                        x.attr("oauth.grant_type") == Some("authorization_code") && with_parent(x)
                    })
            },
        )
        .await;
    let parent_of = |s: &RecordedSpan| {
        spans
            .iter()
            .find(|p| p.span_id == s.parent_span_id)
            .cloned()
            .unwrap_or_else(|| panic!("no parent for {s:?}"))
    };
    let exchange = spans
        .iter()
        .find(|s| s.attr("oauth.grant_type") == Some("authorization_code"))
        .expect("the code exchange");
    let callback = parent_of(exchange);
    assert_eq!(callback.name, "request");
    assert_eq!(callback.attr("url.path"), Some("/auth/callback"));
    assert!(sent.contains(&format!(
        "traceparent: 00-{}-{}-01",
        exchange.trace_id, exchange.span_id
    )));
    let par = spans.iter().find(|s| s.name == "idp.par").expect("PAR");
    assert_eq!(parent_of(par).attr("url.path"), Some("/auth/login"));
    let revoke = spans
        .iter()
        .find(|s| s.name == "idp.revoke")
        .expect("revoke");
    assert_eq!(parent_of(revoke).attr("url.path"), Some("/auth/logout"));
    assert!(revoke
        .attr("token_type_hint")
        .is_some_and(|h| h.ends_with("_token")));
    // The startup's discovery is a trace of its own.
    let discovery = spans
        .iter()
        .find(|s| s.name == "idp.discovery")
        .expect("discovery");
    assert!(discovery.parent_span_id.is_empty());
    let fetched: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "idp.fetch" && s.parent_span_id == discovery.span_id)
        .filter_map(|s| s.attr("url.path"))
        .collect();
    assert!(
        fetched.contains(&"/.well-known/openid-configuration") && fetched.len() >= 2,
        "{fetched:?}"
    );

    // The collector got its headers (from CLOAKROOM_OTLP_HEADERS, percent-decoded).
    assert!(receiver
        .headers()
        .iter()
        .all(|h| h.get("x-collector-key").is_some_and(|v| v == collector_key)));

    // Nothing secret in anything exported, nor the collector's key in the log.
    let mut secrets: Vec<String> = vec![code, CLIENT_SECRET.into(), collector_key.into()];
    secrets.extend(cookies);
    for s in [&first, &second] {
        secrets.push(s.tokens.access_token.expose().into());
        secrets.push(s.tokens.id_token.expose().into());
        secrets.extend(
            s.tokens
                .refresh_token
                .as_ref()
                .map(|t| t.expose().to_string()),
        );
    }
    let raw = receiver.raw();
    let spans = receiver.spans();
    assert!(spans.len() > 20, "{}", spans.len());
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !raw.contains(secret.as_str()),
            "a secret in what was exported"
        );
        for s in &spans {
            for (k, v) in &s.attributes {
                assert!(!v.contains(secret.as_str()), "a secret in {}.{k}", s.name);
            }
        }
    }
    let log_path = bin.stderr_path.clone();
    stop(bin).await;
    let log = std::fs::read_to_string(log_path).expect("log");
    assert!(!log.contains("k3y-"), "the collector's key in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_traceparent_is_believed_only_when_trusted() {
    let receiver = OtlpReceiver::start().await;
    let mut env = TestEnv::start().await;
    let b = Browser::new();

    // Tracing on, not trusted (the default): a new trace, the browser's headers not forwarded.
    let bin = env.spawn_binary(&telemetry(&receiver, "")).await;
    let r = Browser::new()
        .send(incoming(
            &b,
            &format!("http://{}/public/untrusted", bin.addr),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (trace, _, _) = upstream_traceparent(&r);
    assert_ne!(trace, INCOMING_TRACE);
    assert!(
        r.json()["headers"].get("tracestate").is_none(),
        "{}",
        r.body
    );
    let spans = receiver
        .wait_for("the untrusted request", |s| {
            has_all(s, &trace, &["request", "upstream"])
        })
        .await;
    assert!(named(&in_trace(&spans, &trace), "request")
        .parent_span_id
        .is_empty());
    assert!(spans.iter().all(|s| s.trace_id != INCOMING_TRACE));
    stop(bin).await;

    // Trusted: the request's parent is the browser's span, the trace and its state go on.
    let bin = env
        .spawn_binary(&telemetry(&receiver, "trust_incoming_trace = true"))
        .await;
    let r = Browser::new()
        .send(incoming(&b, &format!("http://{}/public/trusted", bin.addr)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (trace, parent, flags) = upstream_traceparent(&r);
    assert_eq!(trace, INCOMING_TRACE);
    assert_ne!(parent, INCOMING_SPAN, "the upstream's parent is our span");
    assert_eq!(flags, "01");
    assert_eq!(r.json()["headers"]["tracestate"], "vendor=abc");
    let spans = receiver
        .wait_for("the trusted request", |s| {
            has_all(s, INCOMING_TRACE, &["request", "upstream"])
        })
        .await;
    let t = in_trace(&spans, INCOMING_TRACE);
    let request = named(&t, "request");
    assert_eq!(request.parent_span_id, INCOMING_SPAN);
    let upstream = named(&t, "upstream");
    assert_eq!(upstream.parent_span_id, request.span_id);
    assert_eq!(upstream.span_id, parent);
    stop(bin).await;

    // Tracing off (the in-process instance): untrusted headers are removed, nothing is made up.
    let r = Browser::new()
        .send(incoming(&b, &env.url("/public/off")))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["headers"].get("traceparent").is_none(),
        "{}",
        r.body
    );
    assert!(
        r.json()["headers"].get("tracestate").is_none(),
        "{}",
        r.body
    );
    let r = Browser::new().get(&env.url("/public/plain")).await;
    assert!(
        r.json()["headers"].get("traceparent").is_none(),
        "{}",
        r.body
    );
    // ... and trusted ones pass through as they came.
    let i = env
        .start_extra_routes("[telemetry]\ntrust_incoming_trace = true")
        .await;
    let r = Browser::new()
        .send(incoming(&b, &format!("{}/public/off-trusted", env.base(i))))
        .await;
    assert_eq!(
        r.json()["headers"]["traceparent"],
        format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-01")
    );
    assert_eq!(r.json()["headers"]["tracestate"], "vendor=abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_grpc_too_the_last_are_flushed_at_exit_and_unsampled_traces_still_propagate()
{
    let env = TestEnv::start().await;
    let b = Browser::new();

    // OTLP/gRPC.
    let grpc = OtlpReceiver::start().await;
    let bin = env
        .spawn_binary(&telemetry(&grpc, "protocol = \"grpc\""))
        .await;
    let r = Browser::new()
        .get(&format!("http://{}/public/grpc", bin.addr))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (trace, upstream_parent, _) = upstream_traceparent(&r);
    let spans = grpc
        .wait_for("the spans over gRPC", |s| {
            has_all(s, &trace, &["request", "upstream"])
        })
        .await;
    assert_eq!(
        named(&in_trace(&spans, &trace), "upstream").span_id,
        upstream_parent
    );
    let (http, over_grpc) = grpc.exports();
    assert!(http == 0 && over_grpc > 0, "{http} {over_grpc}");
    stop(bin).await;

    // A batch delay longer than the test: the spans can only come from the flush at exit.
    let late = OtlpReceiver::start().await;
    let bin = env
        .spawn_binary(&format!(
            "[telemetry]\notlp_endpoint = \"{}\"\nbatch_delay = \"5m\"\n",
            late.endpoint()
        ))
        .await;
    let r = Browser::new()
        .get(&format!("http://{}/public/late", bin.addr))
        .await;
    let (trace, _, _) = upstream_traceparent(&r);
    stop(bin).await;
    let spans = late.spans();
    assert!(
        has_all(&spans, &trace, &["request", "upstream"]),
        "{spans:#?}"
    );

    // Sampling 0: nothing is exported, but the upstream still gets a (not sampled) trace.
    let none = OtlpReceiver::start().await;
    let bin = env
        .spawn_binary(&telemetry(&none, "sample_ratio = 0"))
        .await;
    let r = Browser::new()
        .get(&format!("http://{}/public/unsampled", bin.addr))
        .await;
    let (_, _, flags) = upstream_traceparent(&r);
    assert_eq!(flags, "00");
    // A trusted caller's sampled trace would be kept (parent-based); this one is not trusted.
    let r = Browser::new()
        .send(incoming(
            &b,
            &format!("http://{}/public/unsampled", bin.addr),
        ))
        .await;
    assert_eq!(upstream_traceparent(&r).2, "00");
    stop(bin).await;
    assert!(none.spans().is_empty(), "{:#?}", none.spans());
}

/// A collector on a private CA: `telemetry.tls_ca_file` trusts it, over OTLP/HTTP and gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_behind_a_private_ca_is_trusted_with_tls_ca_file() {
    let env = TestEnv::start().await;
    let pki = crate::support::pki::Pki::new();
    std::fs::write(pki.path("server.pem"), &pki.server_cert_pem).expect("cert");
    std::fs::write(pki.path("server-key.pem"), &pki.server_key_pem).expect("key");
    for protocol in ["http/protobuf", "grpc"] {
        let acceptor =
            cloakroom::server::tls_acceptor(&pki.path("server.pem"), &pki.path("server-key.pem"))
                .expect("acceptor");
        let collector = OtlpReceiver::start_tls(acceptor).await;
        assert!(collector.endpoint().starts_with("https://"));
        let bin = env
            .spawn_binary(&telemetry(
                &collector,
                &format!(
                    "protocol = \"{protocol}\"\ntls_ca_file = \"{}\"",
                    pki.path("ca.pem")
                ),
            ))
            .await;
        let r = Browser::new()
            .get(&format!("http://{}/public/tls", bin.addr))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (trace, _, _) = upstream_traceparent(&r);
        collector
            .wait_for(&format!("the spans over TLS ({protocol})"), |s| {
                has_all(s, &trace, &["request", "upstream"])
            })
            .await;
        stop(bin).await;
    }
}

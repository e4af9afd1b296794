//! The benchmark cannot rot: `cloakroom-bench --smoke` runs every scenario of `scripts/bench`
//! (direct, pass-through, authenticated, the nginx and Apache references, fixed-rate latency,
//! peak RSS, refresh storm against the real IdP, IdP outage) with tiny settings and the built-in
//! load generator, and must collect every figure. No wall-clock assertion: only that everything
//! ran, nothing failed and the storm refreshed each session exactly once.
//!
//! The references need nginx, apache2 and libapache2-mod-auth-openidc installed (scripts/test
//! installs them when it runs as root, as CI does); without them this test fails and says so.

#[test]
fn the_benchmark_runs_every_scenario_and_collects_every_metric() {
    let dir = std::env::temp_dir().join(format!("cloakroom-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let json = dir.join("results.json");
    let md = dir.join("BENCHMARKS.md");
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_cloakroom-bench"));
    // `cargo test --workspace` builds the `cloakroom` binary beside this one (its package has
    // integration tests); `cargo test -p cloakroom-bench` alone does not.
    let cloakroom = bench.with_file_name("cloakroom");
    assert!(
        cloakroom.exists(),
        "{} is missing: build it first (`cargo build -p cloakroom`) or run `cargo test --workspace`",
        cloakroom.display()
    );
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(bench)
        .arg("--smoke")
        .arg("--cloakroom")
        .arg(&cloakroom)
        .arg("--repo")
        .arg(&repo)
        .arg("--json")
        .arg(&json)
        .arg("--out")
        .arg(&md)
        .output()
        .expect("run cloakroom-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cloakroom-bench --smoke failed:\n{stdout}\n{stderr}"
    );

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("results.json")).expect("JSON");
    assert_eq!(r["smoke"], true);
    for key in [
        "nproc",
        "cpu",
        "kernel",
        "rustc",
        "redis",
        "nginx",
        "apache httpd",
        "mod_auth_openidc",
    ] {
        assert!(
            r["machine"][key].as_str().is_some_and(|s| !s.is_empty()),
            "machine.{key}: {}",
            r["machine"]
        );
    }
    let scenarios: Vec<&serde_json::Value> = r["throughput"]
        .as_array()
        .expect("throughput")
        .iter()
        .chain(r["latency"].as_array().expect("latency"))
        .chain([&r["rss"], &r["storm"]["scenario"]])
        .collect();
    let ids: Vec<&str> = scenarios.iter().filter_map(|s| s["id"].as_str()).collect();
    let refs = ["nginx", "apache", "apache-oidc"];
    assert_eq!(
        ids,
        [
            "a",
            "b",
            "c",
            "nginx",
            "apache",
            "apache-oidc",
            "b",
            "c",
            "nginx",
            "apache",
            "apache-oidc",
            "p",
            "p1",
            "a",
            "b",
            "c",
            "b",
            "c",
            "rss",
            "d"
        ],
        "direct, then pass-through, authenticated and the three references twice, interleaved; \
         the minimal reference proxies (multi-thread, per core); direct, pass-through and authenticated at a fixed rate; \
         peak RSS; storm"
    );
    // (c) against nginx at one fixed rate over the throughput connections, twice, interleaved.
    let vs_nginx: Vec<&str> = r["latency_vs_nginx"]
        .as_array()
        .expect("latency_vs_nginx")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(vs_nginx, ["nginx", "c", "nginx", "c"]);
    for s in r["latency_vs_nginx"].as_array().expect("latency_vs_nginx") {
        assert!(s["load"]["requests"].as_u64().unwrap_or(0) > 0, "{s}");
        assert!(
            s["load"]["p99_us"].as_f64().is_some_and(f64::is_finite),
            "{s}"
        );
    }
    for s in &scenarios {
        let id = s["id"].as_str().unwrap_or("?");
        let load = &s["load"];
        assert!(
            load["requests"].as_u64().unwrap_or(0) > 0,
            "{id}: no requests: {s}"
        );
        assert_eq!(load["errors"], 0, "{id}: failed requests: {s}");
        for k in ["rps", "p50_us", "p99_us", "p999_us"] {
            assert!(
                load[k].as_f64().is_some_and(f64::is_finite),
                "{id}: {k}: {s}"
            );
        }
        if id == "a" {
            continue;
        }
        assert!(
            s["cpu_us_per_req"].as_f64().is_some_and(f64::is_finite),
            "{id}: {s}"
        );
        if id == "p" || id == "p1" {
            continue;
        }
        if refs.contains(&id) {
            // The server's whole process tree, user and kernel time.
            assert!(
                s["cpu_kernel_us_per_req"]
                    .as_f64()
                    .is_some_and(|k| k.is_finite() && k >= 0.0),
                "{id}: {s}"
            );
            // Every call went through to the upstream, with a bearer and without the cookie.
            assert_eq!(s["upstream_requests"], load["requests"], "{id}: {s}");
            assert_eq!(s["upstream_bearer_requests"], load["requests"], "{id}: {s}");
            assert_eq!(s["upstream_cookie_requests"], 0, "{id}: {s}");
            if id == "apache-oidc" {
                // mod_auth_openidc reads its sessions from the benchmark's Redis.
                assert!(
                    s["redis_cmds_per_req"].as_f64().is_some_and(|c| c >= 1.0),
                    "{id}: {s}"
                );
            }
            continue;
        }
        for k in [
            "cpu_us_per_req",
            "redis_cmds_per_req",
            "redis_cpu_us_per_req",
            "upstream_reuse_pct",
        ] {
            assert!(s[k].as_f64().is_some_and(f64::is_finite), "{id}: {k}: {s}");
        }
        assert!(s["upstream_conns_opened"].as_u64().is_some(), "{id}: {s}");
        assert!(
            s["peak_rss_kib"].as_u64().is_some_and(|k| k > 0),
            "{id}: {s}"
        );
        if id != "d" {
            // Every call reached the upstream.
            assert_eq!(s["upstream_requests"], load["requests"], "{id}: {s}");
        }
    }
    // The pass-through route never reads a session (the session cache's subscriber pings,
    // though).
    assert!(
        r["throughput"][1]["redis_cmds"].get("hmget").is_none(),
        "{}",
        r["throughput"][1]
    );
    // The storm: every session refreshed exactly once at the real IdP, every call answered 200.
    let storm = &r["storm"];
    let sessions = storm["sessions"].as_u64().expect("sessions");
    assert!(sessions > 0);
    assert_eq!(storm["idp_refreshes"], sessions, "{storm}");
    assert_eq!(storm["cloakroom_refreshes"], sessions, "{storm}");
    assert_eq!(storm["failures"], serde_json::json!({}), "{storm}");
    assert_eq!(
        storm["scenario"]["load"]["requests"],
        sessions * storm["per_session"].as_u64().expect("per_session")
    );
    // (c) forwards a bearer on every call.
    assert_eq!(
        r["throughput"][2]["upstream_bearer_requests"], r["throughput"][2]["load"]["requests"],
        "{}",
        r["throughput"][2]
    );
    // (f): two instances on a 3-master cluster, both answered, the cache kept Redis quiet.
    let scale = &r["scale"];
    assert_eq!(scale["instances"], 2, "{scale}");
    assert_eq!(scale["masters"], 3, "{scale}");
    for i in scale["per_instance"].as_array().expect("per_instance") {
        assert!(i["load"]["requests"].as_u64().is_some_and(|n| n > 0), "{i}");
    }
    assert_eq!(scale["scenario"]["load"]["errors"], 0, "{scale}");
    assert!(
        scale["sentinel"]["load"]["requests"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{scale}"
    );
    assert!(
        scale["redis_bytes_per_session"]
            .as_f64()
            .is_some_and(|b| b > 0.0),
        "{scale}"
    );
    // The references were checked before the load: each forwards a bearer and no cookie,
    // mod_auth_openidc's bearer is valid at the IdP and a call without a session is redirected.
    let checks = r["refs"]["checks"].as_array().expect("refs.checks");
    assert_eq!(checks.len(), 4, "{}", r["refs"]);
    for c in checks {
        assert_eq!(c["passed"], true, "{c}");
    }
    assert_eq!(r["refs"]["oidc_sessions"], 2, "{}", r["refs"]);
    // Every target was evaluated (issues #6, #10, #13 and #26), and the report names each.
    let targets = r["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 16);
    for what in [
        "vs the per-core bare hyper proxy (p1)",
        "p99 added over nginx as a plain reverse proxy",
    ] {
        assert!(
            targets
                .iter()
                .any(|t| t["what"].as_str().is_some_and(|w| w.contains(what))),
            "target {what:?}"
        );
    }
    assert!(report_has_round3_figures(&md));
    let report = std::fs::read_to_string(&md).expect("report");
    for t in targets {
        assert!(report.contains(t["what"].as_str().expect("what")), "{t}");
    }
    assert!(report.contains("Smoke run"));
    assert!(report.contains("## References: nginx and Apache httpd"));

    // Issue #10 (counts only, no timing). The storm with 10 % of its calls abandoned by the
    // client (HTTP/1.1 reset, HTTP/2 RST_STREAM): still one refresh per session, no failure
    // among the other calls or in the check after, no grant revoked, no refresh token reused.
    let calls = sessions * storm["per_session"].as_u64().expect("per_session");
    assert_eq!(storm["abort_pct"], 10, "{storm}");
    let planned = storm["planned_aborts"].as_u64().expect("planned_aborts");
    assert_eq!(planned, calls.div_ceil(10), "{storm}");
    let aborted = storm["aborted"].as_u64().expect("aborted");
    assert!(
        aborted > 0,
        "no call was aborted before its answer: {storm}"
    );
    assert_eq!(
        aborted + storm["answered_before_abort"].as_u64().expect("answered"),
        planned,
        "{storm}"
    );
    assert_eq!(
        storm["aborted_tcp"].as_u64().unwrap_or(0) + storm["aborted_h2"].as_u64().unwrap_or(0),
        aborted,
        "{storm}"
    );
    assert_eq!(storm["token_endpoint_hits"], sessions, "{storm}");
    assert_eq!(storm["grants_revoked"], 0, "{storm}");
    assert_eq!(storm["refresh_reuse"], 0, "{storm}");
    assert_eq!(storm["verify_calls"], sessions, "{storm}");
    assert_eq!(storm["verify_failures"], serde_json::json!({}), "{storm}");

    // (e) The IdP's token endpoint down during load: at most one token-endpoint call per session
    // per cool-off (plus the first), calls with a valid token all answered, expired ones 503;
    // afterwards exactly one refresh per session, nothing revoked, every session recovered.
    let e = &r["stall"];
    let n = e["valid_sessions"].as_u64().expect("valid_sessions")
        + e["expired_sessions"].as_u64().expect("expired_sessions");
    assert!(n > 0, "{e}");
    let per = e["stall_seconds"]
        .as_u64()
        .expect("stall_seconds")
        .div_ceil(e["cooloff_seconds"].as_u64().expect("cooloff_seconds"));
    assert_eq!(e["bound"], n * (per + 1), "{e}");
    let hits = e["token_endpoint_hits"]
        .as_u64()
        .expect("token_endpoint_hits");
    assert!(
        hits >= n,
        "every session tried a refresh during the outage: {e}"
    );
    assert!(
        hits <= n * (per + 1),
        "token endpoint called too often: {e}"
    );
    assert_eq!(e["within_bound"], true, "{e}");
    assert_eq!(e["idp_refreshes"], n, "{e}");
    assert_eq!(e["cloakroom_refreshes"], n, "{e}");
    assert_eq!(e["grants_revoked"], 0, "{e}");
    assert_eq!(e["refresh_reuse"], 0, "{e}");
    assert_eq!(e["valid_calls_past_expiry"], 0, "{e}");
    for phase in ["valid_before", "valid_stall", "valid_recovery"] {
        let p = &e[phase];
        let c = p["calls"].as_u64().unwrap_or(0);
        assert!(c > 0, "{phase}: {e}");
        assert_eq!(
            p["statuses"],
            serde_json::json!({ "200": c }),
            "{phase}: {e}"
        );
        assert!(
            p["p99_us"].as_f64().is_some_and(f64::is_finite),
            "{phase}: {e}"
        );
    }
    let es = &e["expired_stall"];
    assert!(es["calls"].as_u64().unwrap_or(0) > 0, "{e}");
    assert_eq!(
        es["statuses"],
        serde_json::json!({ "503": es["calls"] }),
        "expired tokens during the outage: 503 token_refresh_unavailable: {e}"
    );
    assert_eq!(e["not_recovered"], 0, "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The report carries issue #26's capacity figures and the per-core reference.
fn report_has_round3_figures(md: &std::path::Path) -> bool {
    let report = std::fs::read_to_string(md).expect("report");
    [
        "requests/s per Cloakroom core",
        "Redis commands per steady-state request: single server",
        "… Sentinel-monitored master",
        "… 3-master Cluster, 2 instances",
        "(p1) reference: minimal hyper-util proxy, a runtime per core",
        "### (c) against nginx at one fixed rate",
    ]
    .iter()
    .all(|s| report.contains(s))
}

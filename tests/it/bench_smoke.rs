//! The benchmark cannot rot: `cloakroom-bench --smoke` runs every scenario of `scripts/bench`
//! (direct, pass-through, authenticated, fixed-rate latency, peak RSS, refresh storm against the
//! real IdP) with tiny settings and the built-in load generator, and must collect every figure.
//! No wall-clock assertion: only that everything ran, nothing failed and the storm refreshed
//! each session exactly once.
#![cfg(feature = "bench")]

#[test]
fn the_benchmark_runs_every_scenario_and_collects_every_metric() {
    let dir = std::env::temp_dir().join(format!("cloakroom-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let json = dir.join("results.json");
    let md = dir.join("BENCHMARKS.md");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloakroom-bench"))
        .arg("--smoke")
        .arg("--cloakroom")
        .arg(env!("CARGO_BIN_EXE_cloakroom"))
        .arg("--repo")
        .arg(env!("CARGO_MANIFEST_DIR"))
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
    for key in ["nproc", "cpu", "kernel", "rustc", "redis"] {
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
    assert_eq!(
        ids,
        ["a", "b", "c", "b", "c", "p", "a", "b", "c", "b", "c", "rss", "d"],
        "direct, then pass-through and authenticated twice, reference proxy; the same at a \
         fixed rate; peak RSS; storm"
    );
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
        if id == "p" {
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
    // Every target was evaluated, and the report names each.
    let targets = r["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 8);
    let report = std::fs::read_to_string(&md).expect("report");
    for t in targets {
        assert!(report.contains(t["what"].as_str().expect("what")), "{t}");
    }
    assert!(report.contains("Smoke run"));
    let _ = std::fs::remove_dir_all(&dir);
}

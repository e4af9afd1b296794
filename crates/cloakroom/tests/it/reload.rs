//! Configuration reload without a restart (issue #18, part 1, first step): SIGHUP re-reads
//! the file and the environment, validates the whole result and swaps routes, upstreams and
//! CSRF origins atomically while requests run; an invalid file, or a change only a restart can
//! apply, changes nothing. The real binary.

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv};
use reqwest::Method;
use std::time::Duration;

fn hup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "SIGHUP sent");
}

use crate::support::metric_sum as metric;

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_route_under_load_and_a_bad_file_changes_nothing() {
    let env = TestEnv::start_with(Opts {
        binary: true,
        ..Opts::default()
    })
    .await;
    let bin = env.spawn_binary("").await;
    let base = format!("http://{}", bin.addr);
    let mut b = Browser::new();
    let r = b.get(&format!("{base}/auth/login?return_to=/x")).await;
    let callback = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    assert_eq!(b.get(&callback).await.status, 302);
    let new_route = format!("{base}/reloaded/x");
    assert_eq!(b.xhr(Method::GET, &new_route).await.status, 404);

    // Load on the session's route all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, mut b, url) = (stop.clone(), b.clone(), format!("{base}/api/load"));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(b.xhr(Method::GET, &url).await.status);
            }
            statuses
        })
    };

    // A route more, to the same upstream.
    let original = std::fs::read_to_string(&bin.config_path).expect("config");
    let up = env.upstream.addr;
    std::fs::write(
        &bin.config_path,
        format!("{original}\n[[routes]]\nprefix = \"/reloaded/\"\nupstream = \"http://{up}\"\n"),
    )
    .expect("write");
    hup(bin.pid());
    let mut probe = b.clone();
    wait_for("the new route", async || {
        probe.xhr(Method::GET, &new_route).await.status == 200
    })
    .await;
    assert_eq!(
        metric(
            bin.admin_addr,
            "cloakroom_config_reload_total{result=\"ok\"}"
        )
        .await,
        1.0
    );

    // A file with a mistake: refused whole, every problem named, nothing changed.
    std::fs::write(
        &bin.config_path,
        format!("{original}\n[[routes]]\nprefix = \"no-slash\"\nupstream = \"ftp://x\"\n"),
    )
    .expect("write");
    hup(bin.pid());
    let admin = bin.admin_addr;
    wait_for("the refusal counted", async || {
        metric(admin, "cloakroom_config_reload_total{result=\"error\"}").await >= 1.0
    })
    .await;
    assert_eq!(
        b.xhr(Method::GET, &new_route).await.status,
        200,
        "still the reloaded config"
    );
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200, "still ready");

    // A change only a restart applies (another public listener): refused, named.
    std::fs::write(
        &bin.config_path,
        original.replacen(
            "login_rate_limit",
            "max_connections = 77\nlogin_rate_limit",
            1,
        ),
    )
    .expect("write");
    hup(bin.pid());
    wait_for("the second refusal", async || {
        metric(admin, "cloakroom_config_reload_total{result=\"error\"}").await >= 2.0
    })
    .await;
    assert_eq!(b.xhr(Method::GET, &new_route).await.status, 200);

    // `cloakroom reload`: validated here, then applied by the instance (POST /admin/reload).
    let cli = |env: &TestEnv, path: &std::path::Path| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cloakroom"));
        cmd.args(["reload", "--config"]).arg(path);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in env.env_vars(&env.keys) {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("cloakroom reload");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    std::fs::write(
        &bin.config_path,
        format!("{original}\n[[routes]]\nprefix = \"/by-cli/\"\nupstream = \"http://{up}\"\n"),
    )
    .expect("write");
    let (code, out) = cli(&env, &bin.config_path);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        b.xhr(Method::GET, &format!("{base}/by-cli/x")).await.status,
        200
    );
    assert_eq!(
        b.xhr(Method::GET, &new_route).await.status,
        404,
        "the file in force has no /reloaded/ route any more"
    );
    // A bad file never reaches the instance; a restart-only change is refused by it.
    std::fs::write(
        &bin.config_path,
        format!("{original}\n[[routes]]\nprefix = \"x\"\n"),
    )
    .expect("write");
    let (code, out) = cli(&env, &bin.config_path);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("missing field `upstream`"), "{out}");
    std::fs::write(
        &bin.config_path,
        original.replacen(
            "login_rate_limit",
            "max_connections = 78\nlogin_rate_limit",
            1,
        ),
    )
    .expect("write");
    let (code, out) = cli(&env, &bin.config_path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("server: changed"), "{out}");
    assert_eq!(
        b.xhr(Method::GET, &format!("{base}/by-cli/x")).await.status,
        200
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.await.expect("load");
    assert!(statuses.len() > 10, "the load ran: {}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "no request failed during the reloads: {statuses:?}"
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &bin.pid().to_string()])
        .status();
    let mut bin = bin;
    let _ = bin.child.wait();
    let log = std::fs::read_to_string(&bin.stderr_path).expect("log");
    for key in ["routes[", "server: changed"] {
        assert!(log.contains(key), "the refusal names {key}:\n{log}");
    }
}

/// `reload.watch`: a change to the file is applied without any signal (as a Kubernetes
/// ConfigMap update is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_config_file_reloads_by_itself() {
    let env = TestEnv::start_with(Opts {
        binary: true,
        ..Opts::default()
    })
    .await;
    let bin = env.spawn_binary("\n[reload]\nwatch = true\n").await;
    let url = format!("http://{}/watched/x", bin.addr);
    let plain = reqwest::Client::new();
    let status = |plain: reqwest::Client, url: String| async move {
        plain.get(url).send().await.expect("call").status().as_u16()
    };
    assert_eq!(status(plain.clone(), url.clone()).await, 404);
    let original = std::fs::read_to_string(&bin.config_path).expect("config");
    let up = env.upstream.addr;
    std::fs::write(
        &bin.config_path,
        format!(
            "{original}\n[[routes]]\nprefix = \"/watched/\"\nupstream = \"http://{up}\"\ntoken = \"none\"\n"
        ),
    )
    .expect("write");
    wait_for("the watched change", async || {
        status(plain.clone(), url.clone()).await == 200
    })
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &bin.pid().to_string()])
        .status();
    let mut bin = bin;
    let _ = bin.child.wait();
}

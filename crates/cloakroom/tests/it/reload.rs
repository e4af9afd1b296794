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

/// Stops the binary (SIGTERM) and waits for it; returns it for its log.
fn terminate(mut bin: crate::support::Binary) -> crate::support::Binary {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &bin.pid().to_string()])
        .status();
    let _ = bin.child.wait();
    bin
}

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
    let bin = terminate(bin);
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
    // The same route to another upstream (a port nobody listens on): its answers change.
    let closed = crate::support::redis::free_port();
    std::fs::write(
        &bin.config_path,
        format!(
            "{original}\n[[routes]]\nprefix = \"/watched/\"\nupstream = \"http://127.0.0.1:{closed}\"\ntoken = \"none\"\n"
        ),
    )
    .expect("write");
    wait_for("the changed upstream", async || {
        status(plain.clone(), url.clone()).await == 502
    })
    .await;
    terminate(bin);
}

/// Logs `b` in through the binary at `base` (oidc-provider, or the provider `query` names).
async fn login_through(
    env: &TestEnv,
    b: &mut Browser,
    base: &str,
    query: &str,
    idp: &crate::support::idp::Idp,
) {
    let r = b
        .get(&format!("{base}/auth/login?return_to=/x{query}"))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let callback = idp.login(b, &r.location(), "alice", "wonderland").await;
    assert!(callback.starts_with(base), "{callback}");
    let _ = env;
    assert_eq!(b.get(&callback).await.status, 302);
}

/// The key ring and the admin token come from `_FILE`s; rewritten and reloaded while a session
/// is in use, nothing fails: a new first key seals new sessions from then on and the old key
/// still opens the old ones; the old admin token stops working, the new one works. Then the old
/// key is removed: the sessions only it opened stop opening, the new ones go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_and_a_new_admin_token_apply_under_load() {
    let env = TestEnv::start_with(Opts {
        binary: true,
        ..Opts::default()
    })
    .await;
    let bin = env.spawn_binary_file_secrets("").await;
    let base = format!("http://{}", bin.addr);
    let admin = bin.admin_addr;
    let mut old_session = Browser::new();
    login_through(&env, &mut old_session, &base, "", &env.idp).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, mut b, url) = (
            stop.clone(),
            old_session.clone(),
            format!("{base}/api/load"),
        );
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(b.xhr(Method::GET, &url).await.status);
            }
            statuses
        })
    };
    let admin_status = |token: String| async move {
        reqwest::Client::new()
            .get(format!("http://{admin}/admin/users/alice/sessions"))
            .bearer_auth(token)
            .send()
            .await
            .expect("admin")
            .status()
            .as_u16()
    };
    let old_token = crate::support::ADMIN_TOKEN.to_string();
    assert_eq!(admin_status(old_token.clone()).await, 200);

    // Step 1: a new first key, the old one still in the ring; a new admin token.
    let new_key = cloakroom::crypto::KeyRing::generate_entry(2);
    let new_token = "rotated-admin-token-fedcba9876543210".to_string();
    std::fs::write(
        &bin.secret_files["CLOAKROOM_COOKIE_KEYS"],
        format!("{new_key},{}", env.keys),
    )
    .expect("keys");
    std::fs::write(&bin.secret_files["CLOAKROOM_ADMIN_TOKEN"], &new_token).expect("token");
    hup(bin.pid());
    wait_for("the new admin token", async || {
        admin_status(new_token.clone()).await == 200
    })
    .await;
    assert_eq!(
        admin_status(old_token.clone()).await,
        401,
        "the old token is refused"
    );
    let mut new_session = Browser::new();
    login_through(&env, &mut new_session, &base, "", &env.idp).await;
    assert!(
        env.session_of_with(&new_session, &new_key).await.is_some(),
        "a session made after the reload is sealed with the new first key"
    );
    assert!(
        env.session_of_with(&old_session, &new_key).await.is_none(),
        "the old session is still sealed with the old key"
    );
    assert_eq!(
        old_session
            .xhr(Method::GET, &format!("{base}/api/x"))
            .await
            .status,
        200
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.await.expect("load");
    assert!(statuses.len() > 10, "the load ran: {}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "no request failed during the rotation: {statuses:?}"
    );

    // Step 2: the old key removed. What only it opened no longer opens.
    std::fs::write(&bin.secret_files["CLOAKROOM_COOKIE_KEYS"], &new_key).expect("keys");
    hup(bin.pid());
    wait_for("the old key gone", async || {
        old_session
            .clone()
            .xhr(Method::GET, &format!("{base}/api/x"))
            .await
            .status
            == 401
    })
    .await;
    assert_eq!(
        new_session
            .xhr(Method::GET, &format!("{base}/api/x"))
            .await
            .status,
        200
    );
    assert_eq!(
        metric(admin, "cloakroom_config_reload_total{result=\"ok\"}").await,
        2.0
    );
    let bin = terminate(bin);
    let log = std::fs::read_to_string(&bin.stderr_path).expect("log");
    assert!(!log.contains(&new_token), "the admin token in the log");
}

/// A provider added by a reload: `?provider=second` is unknown before, a working login after
/// (discovered at the reload), while the first provider's session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_an_identity_provider() {
    let env = TestEnv::start_with(Opts {
        binary: true,
        second_idp: true,
        ..Opts::default()
    })
    .await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");
    let port = env.binary_port.expect("binary port");
    let full = env.toml(port, "");
    let block = format!(
        "[[oidc.providers]]\nname = \"second\"\nissuer = \"{}\"\nclient_id = \"{}\"\n",
        idp2.issuer,
        crate::support::CLIENT_ID
    );
    assert!(
        full.contains(&block),
        "the env's config names the second IdP"
    );
    let bin = env.spawn_binary("").await;
    // Start without the second provider.
    let with_second = std::fs::read_to_string(&bin.config_path).expect("config");
    std::fs::write(&bin.config_path, with_second.replace(&block, "")).expect("write");
    hup(bin.pid());
    let admin = bin.admin_addr;
    wait_for("the first reload", async || {
        metric(admin, "cloakroom_config_reload_total{result=\"ok\"}").await >= 1.0
    })
    .await;
    let base = format!("http://{}", bin.addr);
    let mut first = Browser::new();
    login_through(&env, &mut first, &base, "", &env.idp).await;
    let mut b = Browser::new();
    let r = b
        .get(&format!("{base}/auth/login?return_to=/x&provider=second"))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "unknown_provider");

    std::fs::write(&bin.config_path, &with_second).expect("write");
    hup(bin.pid());
    wait_for("the second reload", async || {
        metric(admin, "cloakroom_config_reload_total{result=\"ok\"}").await >= 2.0
    })
    .await;
    login_through(&env, &mut b, &base, "&provider=second", idp2).await;
    let u = b
        .xhr(Method::GET, &format!("{base}/auth/user"))
        .await
        .json();
    assert_eq!(u["provider"], "second", "{u}");
    assert_eq!(
        first
            .xhr(Method::GET, &format!("{base}/api/x"))
            .await
            .status,
        200
    );

    // A provider whose discovery fails at the reload: refused, nothing changed.
    std::fs::write(
        &bin.config_path,
        with_second.replace(&idp2.issuer, "http://127.0.0.1:9"),
    )
    .expect("write");
    hup(bin.pid());
    wait_for("the refusal", async || {
        metric(admin, "cloakroom_config_reload_total{result=\"error\"}").await >= 1.0
    })
    .await;
    assert_eq!(
        b.xhr(Method::GET, &format!("{base}/api/x")).await.status,
        200
    );
    terminate(bin);
}

/// `log.level` is reloaded: at `warn` the access lines stop; the refusal of a bad file (an
/// error line) still shows, and shows that the log was written out after the quieted request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_log_level() {
    let env = TestEnv::start_with(Opts {
        binary: true,
        ..Opts::default()
    })
    .await;
    let bin = env.spawn_binary("").await;
    let base = format!("http://{}", bin.addr);
    let plain = reqwest::Client::new();
    let log = || std::fs::read_to_string(&bin.stderr_path).unwrap_or_default();
    plain
        .get(format!("{base}/public/before-the-reload"))
        .send()
        .await
        .expect("call");
    wait_for("the access line at info", async || {
        log().contains("/public/before-the-reload")
    })
    .await;
    let original = std::fs::read_to_string(&bin.config_path).expect("config");
    assert!(original.contains("level = \"info\""), "{original}");
    std::fs::write(
        &bin.config_path,
        original.replace("level = \"info\"", "level = \"warn\""),
    )
    .expect("write");
    hup(bin.pid());
    let admin = bin.admin_addr;
    wait_for("the reload", async || {
        metric(admin, "cloakroom_config_reload_total{result=\"ok\"}").await >= 1.0
    })
    .await;
    plain
        .get(format!("{base}/public/after-the-reload"))
        .send()
        .await
        .expect("call");
    // An error line after it: once it is in the log, so would the access line be.
    std::fs::write(&bin.config_path, "[server\n").expect("write");
    hup(bin.pid());
    wait_for("the refusal logged", async || {
        log().contains("reload_failed")
    })
    .await;
    assert!(
        !log().contains("/public/after-the-reload"),
        "an info line at level warn:\n{}",
        log()
    );
    terminate(bin);
}

/// Sessions are bound to their provider's issuer and client_id, not only to its name (issue
/// #30, item 5): a reload that points `[oidc]` at another IdP ends the sessions made at the
/// old one instead of sending their tokens to the new one — no refresh, no revocation there,
/// no token to the API either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_re_points_a_provider_ends_its_sessions_and_sends_their_tokens_nowhere() {
    let env = TestEnv::start_with(Opts {
        binary: true,
        second_idp: true,
        ..Opts::default()
    })
    .await;
    let idp2 = env.idp2.as_ref().expect("the second IdP");
    let bin = env.spawn_binary("").await;
    let base = format!("http://{}", bin.addr);
    let admin = bin.admin_addr;
    let mut b = Browser::new();
    login_through(&env, &mut b, &base, "", &env.idp).await;
    assert_eq!(
        b.xhr(Method::GET, &format!("{base}/api/x")).await.status,
        200
    );

    // `[oidc]` now names the second IdP (and the second provider entry is gone: issuers differ).
    let text = std::fs::read_to_string(&bin.config_path).expect("config");
    let block_at = text
        .find("[[oidc.providers]]")
        .expect("the second provider's entry");
    let block_end = text[block_at..]
        .find("\n\n")
        .map_or(text.len(), |i| block_at + i);
    let without = format!("{}{}", &text[..block_at], &text[block_end..]);
    let issuer_line = format!("issuer = \"{}\"", env.idp.issuer);
    assert!(without.contains(&issuer_line), "{without}");
    let re_pointed = without.replacen(&issuer_line, &format!("issuer = \"{}\"", idp2.issuer), 1);
    std::fs::write(&bin.config_path, re_pointed).expect("write");
    let before = idp2.stats().await;
    hup(bin.pid());
    wait_for("the reload", async || {
        metric(admin, "cloakroom_config_reload_total{result=\"ok\"}").await >= 1.0
    })
    .await;

    let seen = env.upstream.authorizations_seen();
    let r = b.xhr(Method::GET, &format!("{base}/api/x")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        env.upstream.authorizations_since(seen).is_empty(),
        "the old IdP's token went to the API"
    );
    let r = b.xhr(Method::GET, &format!("{base}/auth/user")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // Logging out now finds nothing to revoke; nothing of the old session reached the new IdP.
    let r = b
        .send(
            b.request(Method::POST, &format!("{base}/auth/logout"))
                .header("x-csrf", "1"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = idp2.stats().await;
    for k in ["token_endpoint_hits", "revocations"] {
        assert_eq!(after[k], before[k], "{k} at the new IdP: {after}");
    }
    terminate(bin);
}

//! SPEC §1 [v2] (issue #11): stateless pending logins, one cookie or none, rate limits, and
//! what the store holds at rest — against real Redis and the real IdP.

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv};
use reqwest::Method;
use std::time::Duration;

fn dbsize(env: &TestEnv) -> u64 {
    env.redis
        .cli(&["DBSIZE"])
        .trim()
        .trim_start_matches(':')
        .parse()
        .expect("DBSIZE")
}

#[tokio::test]
async fn anonymous_logins_write_nothing_to_the_store() {
    let env = TestEnv::start().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for i in 0..100 {
        let r = client
            .get(env.url(&format!("/auth/login?return_to=/p{i}")))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), 302);
    }
    assert_eq!(dbsize(&env), 0, "{}", env.redis.cli(&["KEYS", "*"]));
}

#[tokio::test]
async fn parallel_tab_logins_never_overwrite_each_other() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    // Five navigations leave at once (session restore): each sees the same jar, and each
    // response's Set-Cookie lands independently.
    let starts = (0..5).map(|i| {
        let mut tab = Browser::new();
        tab.jar = b.jar.clone();
        let url = env.url(&format!("/auth/login?return_to=/tab{i}"));
        async move {
            let r = tab.get(&url).await;
            assert_eq!(r.status, 302);
            (r.location(), tab.login_cookies())
        }
    });
    let started = futures_util::future::join_all(starts).await;
    for (_, cookies) in &started {
        b.jar.extend(cookies.iter().cloned());
    }
    assert_eq!(b.login_cookies().len(), 5, "one cookie per pending login");
    for (i, (authorize, _)) in started.iter().enumerate() {
        let cb = env
            .idp
            .login(&mut b, authorize, "alice", "wonderland")
            .await;
        let r = b.get(&cb).await;
        assert_eq!(r.status, 302, "tab {i}: {}", r.body);
        assert_eq!(r.location(), format!("/tab{i}"));
    }
    assert!(
        b.login_cookies().is_empty(),
        "each callback cleared its own cookie"
    );
}

#[tokio::test]
async fn a_browser_holds_a_bounded_number_of_pending_logins_oldest_dropped_first() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    let mut authorize = Vec::new();
    for i in 0..10 {
        let r = b
            .get(&env.url(&format!("/auth/login?return_to=/n{i}")))
            .await;
        assert_eq!(r.status, 302);
        authorize.push(r.location());
        env.advance(Duration::from_secs(1));
        assert!(b.login_cookies().len() <= cloakroom::cookies::MAX_PENDING_PER_BROWSER);
    }
    assert_eq!(
        b.login_cookies().len(),
        cloakroom::cookies::MAX_PENDING_PER_BROWSER
    );
    // The two oldest were dropped; the newest works.
    let cb = env
        .idp
        .login(&mut b, &authorize[0], "alice", "wonderland")
        .await;
    let r = b.get(&cb).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_state");
    let cb = env
        .idp
        .login(&mut b, &authorize[9], "alice", "wonderland")
        .await;
    let r = b.get(&cb).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), "/n9");
}

#[tokio::test]
async fn two_session_cookie_values_authenticate_nobody_and_are_cleared() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let good = b.jar["__Host-cloakroom"].clone();
    let mut other = Browser::new();
    env.login(&mut other).await;
    let second = other.jar["__Host-cloakroom"].clone();
    let client = reqwest::Client::new();
    for (cookie, expect) in [
        (format!("__Host-cloakroom={good}"), 200),
        (
            format!("__Host-cloakroom={good}; __Host-cloakroom={good}"),
            200,
        ),
        (
            format!("__Host-cloakroom={good}; __Host-cloakroom={second}"),
            401,
        ),
        (
            format!("__Host-cloakroom={good}; __Host-cloakroom=garbage"),
            401,
        ),
        (
            format!("__Host-cloakroom=garbage; __Host-cloakroom={good}"),
            401,
        ),
    ] {
        for path in ["/auth/user", "/api/x"] {
            let r = client
                .get(env.url(path))
                .header("x-csrf", "1")
                .header("cookie", &cookie)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status().as_u16(), expect, "{path} {cookie}");
            let clears = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .any(|v| v.to_str().unwrap().starts_with("__Host-cloakroom=;"));
            assert_eq!(clears, expect == 401, "{path}: cleared iff ambiguous");
        }
    }
    // A public route stays public, and the ambiguous cookie is cleared there too.
    let r = client
        .get(env.url("/opt/x"))
        .header("x-csrf", "1")
        .header(
            "cookie",
            format!("__Host-cloakroom={good}; __Host-cloakroom={second}"),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        env.upstream.last()["authorization_count"],
        0,
        "no token for anyone"
    );
}

#[tokio::test]
async fn two_values_for_one_login_cookie_are_refused_at_the_callback() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login")).await;
    let cb = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    let (name, value) = b.login_cookies().pop().expect("login cookie");
    let r = reqwest::Client::new()
        .get(&cb)
        .header("cookie", format!("{name}={value}; {name}=planted"))
        .send()
        .await
        .expect("callback");
    assert_eq!(r.status(), 400);
    let cleared = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap().starts_with(&format!("{name}=;")));
    assert!(cleared);
    assert_eq!(dbsize(&env), 0, "no session, no marker");
}

#[tokio::test]
async fn logins_are_rate_limited_per_client_ip() {
    let env = TestEnv::start_with(Opts {
        login_rate_limit: 3,
        ..Opts::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let r = client
            .get(env.url("/auth/login"))
            .send()
            .await
            .expect("login");
        statuses.push(r.status().as_u16());
        last = Some(r);
    }
    assert_eq!(statuses, [302, 302, 302, 429, 429]);
    let r = last.unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "rate_limited"
    );
    // The callback shares the budget.
    let r = client
        .get(env.url("/auth/callback?state=x&code=y"))
        .send()
        .await
        .expect("callback");
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn return_to_is_visible_ascii_and_short_or_refused_at_login() {
    let env = TestEnv::start().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let long = format!("/{}", "a".repeat(512));
    for bad in ["/caf%C3%A9", "/a%20b", long.as_str()] {
        let r = client
            .get(env.url(&format!("/auth/login?return_to={bad}")))
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), 400, "{bad}");
    }
    // Percent-encoded as a path, it is fine (and reaches the callback's Location intact).
    let mut b = Browser::new();
    let r = b
        .get(&env.url("/auth/login?return_to=%2Fcaf%25C3%25A9"))
        .await;
    assert_eq!(r.status, 302);
    let cb = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    let r = b.get(&cb).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.location(), "/caf%C3%A9");
}

#[tokio::test]
async fn index_names_are_keyed_last_seen_is_bounded_and_logins_prune_stale_handles() {
    let env = TestEnv::start_with(Opts {
        idle_timeout: "10m",
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    // A key listing shows no plain hash of who is logged in.
    let keys = env.redis.cli(&["KEYS", "*"]);
    assert!(!keys.contains(&cloakroom::crypto::hash("alice")), "{keys}");
    assert!(!keys.contains("alice"), "{keys}");
    let index = keys
        .lines()
        .find(|k| k.starts_with("cloakroom:u:"))
        .expect("a sub index")
        .to_string();

    // Whoever can write Redis cannot stretch the idle timeout past now + idle.
    let record = keys
        .lines()
        .find(|k| k.starts_with("cloakroom:s:"))
        .expect("a record")
        .to_string();
    let far = (cloakroom::session::now_unix() + 10_000_000).to_string();
    env.redis.cli(&["HSET", &record, "s", &far]);
    let u = b
        .xhr(Method::GET, &env.url("/auth/user?slide=false"))
        .await
        .json();
    let idle_end = u["session"]["idle_expires_at"].as_i64().unwrap();
    assert!(
        idle_end <= cloakroom::session::now_unix() + 600 + 2,
        "{idle_end}"
    );

    // A stale handle in the user's index goes at the next login.
    env.redis
        .cli(&["SADD", &index, "stale-handle-of-a-gone-session"]);
    let mut c = Browser::new();
    env.login(&mut c).await;
    let members = env.redis.cli(&["SMEMBERS", &index]);
    assert!(!members.contains("stale-handle"), "{members}");
    let handles = members
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('*') && !l.starts_with('$'))
        .count();
    assert_eq!(handles, 2, "{members}");
}

#[tokio::test]
async fn a_cross_origin_spa_gets_preflights_answered_without_weakening_csrf() {
    let env = TestEnv::start_with(Opts {
        extra_toml: "[csrf]\nallowed_origins = [\"https://spa.example\"]\nallowed_headers = [\"content-type\", \"x-trace\"]".into(),
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let client = reqwest::Client::new();
    let before = env.upstream.count();
    for path in ["/api/x", "/auth/user", "/auth/logout"] {
        let r = client
            .request(Method::OPTIONS, env.url(path))
            .header("origin", "https://spa.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-csrf, content-type")
            .send()
            .await
            .expect("preflight");
        assert_eq!(r.status(), 204, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://spa.example");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        assert!(
            allowed.contains("x-csrf") && allowed.contains("x-trace"),
            "{allowed}"
        );
        assert!(h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST"));
        assert!(!h.values().any(|v| v == "*"), "never a wildcard");
    }
    assert_eq!(
        env.upstream.count(),
        before,
        "preflights never reach the upstream"
    );
    // Another origin: refused.
    let r = client
        .request(Method::OPTIONS, env.url("/api/x"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert_eq!(r.status(), 403);
    // The real request from the SPA: readable by it, still CSRF-checked.
    let r = client
        .get(env.url("/api/x"))
        .header("origin", "https://spa.example")
        .header("x-csrf", "1")
        .header("cookie", &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://spa.example"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let r = client
        .get(env.url("/api/x"))
        .header("origin", "https://spa.example")
        .header("cookie", &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 403, "no CSRF header, no call");
    // A public route gets no credentialed CORS from us.
    let r = client
        .get(env.url("/public/x"))
        .header("origin", "https://spa.example")
        .send()
        .await
        .expect("request");
    assert!(r
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
}

#[tokio::test]
async fn a_route_whose_prefix_starts_like_the_auth_prefix_is_reachable() {
    // The upstream's address is only known once the env runs: an extra instance gets it.
    let env = TestEnv::start().await;
    let toml = env.toml(1, "").replace(
        "[[routes]]\nprefix = \"/public/\"",
        &format!(
            "[[routes]]\nprefix = \"/authors/\"\nupstream = \"http://{}\"\ntoken = \"none\"\n[[routes]]\nprefix = \"/public/\"",
            env.upstream.addr
        ),
    );
    let vars = env.env_vars(&env.keys);
    let mut env = env;
    let i = env
        .start_extra_with(
            move |port| toml.replace("127.0.0.1:1\"", &format!("127.0.0.1:{port}\"")),
            &vars,
        )
        .await;
    let r = reqwest::get(format!("{}/authors/list", env.base(i)))
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "/authors/ is a route, not under /auth");
    assert_eq!(env.upstream.last()["path"], "/authors/list");
    let r = reqwest::get(format!("{}/auth/nothing", env.base(i)))
        .await
        .expect("request");
    assert_eq!(r.status(), 404);
}

/// Issue #30 item 8: login CSRF. Another site cannot start a login in the user's browser (a
/// remembered one, another provider's, a step-up bound to fail): a navigation the browser marks
/// `Sec-Fetch-Site: cross-site` is refused with 403 `cross_site_login`, before anything is
/// set in the browser. Same-origin, same-site and user-typed (`none`)
/// navigations, and clients that send no such header, log in as before.
#[tokio::test]
async fn a_login_started_from_another_site_is_refused() {
    let env = TestEnv::start().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for site in ["cross-site", "Cross-Site"] {
        let r = client
            .get(env.url("/auth/login?return_to=/app&remember=true"))
            .header("sec-fetch-site", site)
            .header("sec-fetch-mode", "navigate")
            .send()
            .await
            .expect("login");
        assert_eq!(r.status(), 403, "{site}");
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.headers().get("location").is_none());
        assert_eq!(r.headers()["x-cloakroom-error"], "cross_site_login");
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["error"], "cross_site_login");
    }
    for site in [Some("same-origin"), Some("same-site"), Some("none"), None] {
        let mut req = client.get(env.url("/auth/login?return_to=/app"));
        if let Some(s) = site {
            req = req.header("sec-fetch-site", s);
        }
        let r = req.send().await.expect("login");
        assert_eq!(r.status(), 302, "{site:?}");
    }
}

/// Issue #30 item 10: the login budget is per IPv6 /64 (rotating through one's own /64 buys
/// no new budget; another /64 has its own), per IPv4 address as before.
#[tokio::test]
async fn the_login_rate_limit_counts_an_ipv6_64_as_one_client() {
    let env = TestEnv::start_with(Opts {
        login_rate_limit: 3,
        ..Opts::default()
    })
    .await;
    // The test client is the trusted proxy; the client IP comes from X-Forwarded-For.
    let port = env.apps[0].public_addr.port();
    let config = trusting_loopback(&env, port);
    env.apps[0].reload(config).await.expect("reload");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |ip: String| {
        let client = client.clone();
        let url = env.url("/auth/login");
        async move {
            client
                .get(url)
                .header("x-forwarded-for", ip)
                .send()
                .await
                .expect("login")
                .status()
                .as_u16()
        }
    };
    let mut statuses = Vec::new();
    for i in 1..=5 {
        statuses.push(login(format!("2001:db8:aa:bb::{i:x}")).await);
    }
    assert_eq!(statuses, [302, 302, 302, 429, 429], "one /64, one budget");
    assert_eq!(
        login("2001:db8:aa:bb:ffff:ffff:ffff:ffff".into()).await,
        429
    );
    assert_eq!(login("2001:db8:aa:bc::1".into()).await, 302, "another /64");
    assert_eq!(login("192.0.2.1".into()).await, 302);
    assert_eq!(login("192.0.2.2".into()).await, 302, "IPv4: per address");
}

/// Issue #30 item 10: a reload keeps the login limiter, budgets and all, while its settings
/// stay the same (a reload is no way to a fresh budget).
#[tokio::test]
async fn a_reload_keeps_the_login_budgets() {
    let env = TestEnv::start_with(Opts {
        login_rate_limit: 3,
        ..Opts::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = || async {
        client
            .get(env.url("/auth/login"))
            .send()
            .await
            .expect("login")
            .status()
            .as_u16()
    };
    for _ in 0..3 {
        assert_eq!(login().await, 302);
    }
    // A reload that changes something else (a route).
    let port = env.apps[0].public_addr.port();
    let more = "[[routes]]\nprefix = \"/more/\"\nupstream = \"http://@UPSTREAM@\"\n";
    let config = env.config(port, &env.keys, more);
    env.apps[0].reload(config).await.expect("reload");
    assert_eq!(login().await, 429, "the budget survived the reload");
    let mut b = Browser::new();
    assert_eq!(
        b.xhr(Method::GET, &env.url("/more/x")).await.status,
        401,
        "the reload took effect"
    );
}

/// The env's config with `server.trusted_proxies = ["127.0.0.1"]`.
fn trusting_loopback(env: &TestEnv, port: u16) -> cloakroom::config::Config {
    let text = env.toml(port, &env.opts.extra_toml).replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        1,
    );
    cloakroom::config::Config::from_toml(&text, &env.env_vars(&env.keys))
        .unwrap_or_else(|e| panic!("test config: {e}"))
}

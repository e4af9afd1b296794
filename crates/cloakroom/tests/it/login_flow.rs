//! SPEC §1: login, callback, user, logout against the real IdP.

use crate::support::browser::Browser;
use crate::support::{query, TestEnv, CLIENT_ID, CLIENT_SECRET};
use reqwest::Method;

#[tokio::test]
async fn full_flow_attaches_the_idp_token_and_no_token_reaches_the_browser() {
    // The front-channel request, so that its parameters can be read off the redirect (with
    // PAR they travel in the push: par.rs).
    let env = TestEnv::start_with(crate::support::Opts {
        par: "never",
        ..crate::support::Opts::default()
    })
    .await;
    let mut b = Browser::new();

    // Step 1: login redirects to the IdP with every SPEC parameter.
    let r = b
        .get(&env.url("/auth/login?return_to=/app/page%3Fx%3D1"))
        .await;
    assert_eq!(r.status, 302);
    let loc = r.location();
    assert!(
        loc.starts_with(&format!("{}/auth?", env.idp.issuer)),
        "{loc}"
    );
    let q = query(&loc);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], env.url("/auth/callback"));
    assert_eq!(q["scope"], "openid profile email offline_access");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    assert!(!q.contains_key("prompt"));
    // The pending login travels in a cookie of its own, named for its state; the store gets
    // nothing.
    let login_cookie = r.set_login_cookie().expect("login cookie");
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(login_cookie.contains(attr), "{login_cookie}");
    }
    let login_name = login_cookie.split('=').next().unwrap().to_string();
    assert_eq!(
        env.redis.cli(&["DBSIZE"]).trim().trim_start_matches(':'),
        "0",
        "/auth/login stored something: {}",
        env.redis.cli(&["KEYS", "*"])
    );
    assert_eq!(r.headers["cache-control"], "no-store");

    // Step 2: the IdP logs alice in and sends us back; the callback sets the session cookie.
    let callback = env.idp.login(&mut b, &loc, "alice", "wonderland").await;
    assert!(
        callback.starts_with(&env.url("/auth/callback?")),
        "{callback}"
    );
    let r = b.get(&callback).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(r.location(), "/app/page?x=1");
    let set = r.set_cookie("__Host-cloakroom").expect("session cookie");
    let mut attrs: Vec<&str> = set.split(';').map(str::trim).skip(1).collect();
    attrs.sort_unstable();
    assert_eq!(
        attrs,
        ["HttpOnly", "Path=/", "SameSite=Strict", "Secure"],
        "{set}"
    );
    assert!(!set.to_ascii_lowercase().contains("domain"));
    let value = set.split(';').next().unwrap().split_once('=').unwrap().1;
    assert!(value.len() < 200, "cookie value is {} bytes", value.len());
    let cleared = r.set_cookie(&login_name).expect("login cookie cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // Step 3: /auth/user returns claims and session times, no token.
    let r = b.xhr(Method::GET, &env.url("/auth/user")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let u = r.json();
    assert_eq!(u["sub"], "alice");
    assert_eq!(u["claims"]["email"], "alice@example.test");
    assert_eq!(u["claims"]["name"], "Alice Liddell");
    assert!(u["claims"].get("nonce").is_none());
    assert!(u["claims"].get("at_hash").is_none());
    let s = &u["session"];
    let now = cloakroom::session::now_unix();
    for k in [
        "created_at",
        "expires_at",
        "idle_expires_at",
        "absolute_expires_at",
    ] {
        assert!(s[k].as_i64().is_some(), "{k} in {s}");
    }
    assert!((s["created_at"].as_i64().unwrap() - now).abs() < 30);
    assert_eq!(
        s["idle_expires_at"].as_i64().unwrap() - s["created_at"].as_i64().unwrap(),
        1800
    );
    assert_eq!(
        s["absolute_expires_at"].as_i64().unwrap() - s["created_at"].as_i64().unwrap(),
        43200
    );
    assert_eq!(s["expires_at"], s["idle_expires_at"]);

    // Step 4: an API call reaches the upstream with the IdP's access token, and without the
    // browser's Cookie, CSRF header or Authorization.
    let req = b
        .request(Method::GET, &env.url("/api/orders?id=7"))
        .header("x-csrf", "1")
        .header("authorization", "Bearer browser-supplied")
        .header("origin", env.base(0));
    let r = b.send(req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = env.upstream.last();
    assert_eq!(seen["path"], "/api/orders");
    assert_eq!(seen["query"], "id=7");
    assert_eq!(seen["authorization_count"], 1);
    let auth = seen["headers"]["authorization"].as_str().unwrap();
    let access_token = auth.strip_prefix("Bearer ").expect("bearer");
    assert_ne!(access_token, "browser-supplied");
    assert!(seen["headers"].get("cookie").is_none());
    assert!(seen["headers"].get("x-csrf").is_none());
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        env.base(0).trim_start_matches("http://")
    );
    let intro = env
        .idp
        .introspect(CLIENT_ID, CLIENT_SECRET, access_token)
        .await;
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["sub"], "alice");
    assert_eq!(intro["client_id"], CLIENT_ID);

    // The session holds exactly the tokens the IdP issued: the same access token, plus
    // refresh and ID tokens.
    let session = env.session_of(&b).await.expect("session in Redis");
    assert_eq!(session.tokens.access_token.expose(), access_token);
    let refresh = session.tokens.refresh_token.clone().expect("refresh token");
    let id_token = session.tokens.id_token.clone();

    // Step 5: logout ends the session and expires the cookie.
    let r = b.xhr(Method::POST, &env.url("/auth/logout")).await;
    assert_eq!(r.status, 200);
    let end = r.json()["end_session_url"]
        .as_str()
        .expect("end_session_url")
        .to_string();
    let eq = query(&end);
    assert_eq!(eq["client_id"], CLIENT_ID);
    assert_eq!(eq["post_logout_redirect_uri"], format!("{}/", env.base(0)));
    assert!(r
        .set_cookie("__Host-cloakroom")
        .expect("expired")
        .contains("Max-Age=0"));
    let r = b.xhr(Method::GET, &env.url("/auth/user")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthenticated");

    // No token string reached the browser. The one exception the SPEC asks for is the ID token
    // as `id_token_hint` inside the end_session URL (SPEC §1 Logout): remove exactly that URL
    // and scan everything else.
    let received = b
        .received
        .replace(&end, "<end_session_url>")
        .replace(&serde_json::to_string(&end).unwrap(), "<end_session_url>");
    assert!(eq["id_token_hint"] == id_token.expose());
    for (name, t) in [
        ("access", access_token),
        ("refresh", refresh.expose()),
        ("id", id_token.expose()),
    ] {
        assert!(
            !received.contains(t),
            "the {name} token reached the browser"
        );
        if let Some(i) = crate::support::logs().find(t) {
            let l = crate::support::logs();
            panic!(
                "the {name} token reached the log: {}",
                &l[i.saturating_sub(300)..i]
            );
        }
    }
}

#[tokio::test]
async fn callback_state_is_single_use_and_bound_to_the_browser() {
    let env = TestEnv::start().await;

    // Replayed state: the second use of a callback URL fails.
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login")).await;
    let callback = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    let (login_name, login_cookie) = b.login_cookies().pop().expect("login cookie");
    assert_eq!(b.get(&callback).await.status, 302);
    // The same callback again, with the same login cookie: the "state used" marker refuses it.
    b.jar.insert(login_name, login_cookie);
    let r = b.get(&callback).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_state");

    // State from another browser: no login cookie, or another browser's login cookie.
    for steal_cookie in [false, true] {
        let mut victim = Browser::new();
        let r = victim.get(&env.url("/auth/login")).await;
        let callback = env
            .idp
            .login(&mut victim, &r.location(), "alice", "wonderland")
            .await;
        let mut attacker = Browser::new();
        if steal_cookie {
            let r = attacker.get(&env.url("/auth/login")).await;
            assert_eq!(r.status, 302);
        }
        let r = attacker.get(&callback).await;
        assert_eq!(r.status, 400, "steal_cookie={steal_cookie}");
        assert_eq!(r.json()["error"], "invalid_state");
        assert!(r.set_cookie("__Host-cloakroom").is_none());
    }

    // Expired pending login: its cookie outlived its 10 minutes (a browser would have dropped
    // it; the sealed creation time says so too).
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login")).await;
    let callback = env
        .idp
        .login(&mut b, &r.location(), "alice", "wonderland")
        .await;
    env.advance(std::time::Duration::from_secs(601));
    let r = b.get(&callback).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_state");

    // Garbage and missing state.
    for q in ["", "?state=nope&code=x", "?code=x"] {
        let r = b.get(&env.url(&format!("/auth/callback{q}"))).await;
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.json()["error"], "invalid_state");
    }
}

#[tokio::test]
async fn bad_return_to_is_refused() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    for bad in [
        "//evil.example",
        "/%5Cevil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "/x%0d%0aSet-Cookie:%20a=b",
        "evil",
    ] {
        let r = b
            .get(&env.url(&format!("/auth/login?return_to={bad}")))
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"], "invalid_return_to", "{bad}");
        assert!(r.headers.get("location").is_none());
    }
}

#[tokio::test]
async fn several_tabs_log_in_at_once_and_each_login_gets_a_new_session() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    // Three tabs start logging in before any finishes.
    let mut urls = Vec::new();
    for i in 0..3 {
        let r = b
            .get(&env.url(&format!("/auth/login?return_to=/tab{i}")))
            .await;
        assert_eq!(r.status, 302);
        urls.push(r.location());
    }
    let mut callbacks = Vec::new();
    for u in &urls {
        callbacks.push(env.idp.login(&mut b, u, "alice", "wonderland").await);
    }
    let mut previous: Option<String> = None;
    for (i, cb) in callbacks.iter().enumerate() {
        let r = b.get(cb).await;
        assert_eq!(r.status, 302, "tab {i}: {}", r.body);
        assert_eq!(r.location(), format!("/tab{i}"));
        let now = b
            .jar
            .get("__Host-cloakroom")
            .cloned()
            .expect("session cookie");
        if let Some(prev) = &previous {
            assert_ne!(prev, &now, "a new login must issue a new session");
            // The previous session is gone (no fixation, no orphan).
            let mut old = Browser::new();
            old.jar.insert("__Host-cloakroom".into(), prev.clone());
            assert_eq!(
                old.xhr(Method::GET, &env.url("/auth/user")).await.status,
                401
            );
        }
        previous = Some(now);
    }
    assert_eq!(b.xhr(Method::GET, &env.url("/auth/user")).await.status, 200);
}

#[tokio::test]
async fn idp_error_goes_back_to_return_to_without_a_session() {
    let env = TestEnv::start().await;
    let mut b = Browser::new();
    let r = b.get(&env.url("/auth/login?return_to=/back%3Fa%3D1")).await;
    let r = b.get(&r.location()).await;
    assert_eq!(r.status, 303);
    let interaction = env.idp.absolute(&r.location());
    let r = b.get(&format!("{interaction}/abort")).await;
    let mut loc = env.idp.absolute(&r.location());
    while loc.starts_with(&env.idp.issuer) {
        loc = env.idp.absolute(&b.get(&loc).await.location());
    }
    assert!(loc.contains("error=access_denied"), "{loc}");
    let r = b.get(&loc).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.location(), "/back?a=1&error=access_denied");
    assert!(r.set_cookie("__Host-cloakroom").is_none());
    assert_eq!(b.xhr(Method::GET, &env.url("/auth/user")).await.status, 401);
}

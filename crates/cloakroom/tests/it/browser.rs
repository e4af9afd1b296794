//! Real-browser end-to-end tests (issue #4): headless Chromium, driven over WebDriver
//! (a `chromedriver` process per test + `fantoccini`), clicks through the SPA: log in at the IdP's
//! HTML page, see the user, call the API (200), log out (through the IdP), call the API (401).
//! Twice: against `cloakroom-demo` (its development IdP) and against the integration tests' setup
//! (Redis, the npm oidc-provider from tests/idp). Both prove, from inside the page, that no token
//! and no session cookie is readable by JavaScript.
//!
//! Chromium, its driver and the page helpers are in `support::chromium` (Debian's `chromium` and
//! `chromium-driver`, or `CLOAKROOM_CHROMIUM` / `CLOAKROOM_CHROMEDRIVER`). On a failure a
//! screenshot is saved to `target/browser-failures/<test>-<step>.png`.
//! `CLOAKROOM_SCREENSHOT=docs/demo.png` makes the demo test save the SPA after login and an API
//! call (README's picture).

use crate::support::browser::Browser as TestJar;
use crate::support::chromium::{manifest_path, real_idp_env, Chrome, Idp, WAIT};
use cloakroom_demo::{self as demo, DemoOptions};
use serde_json::Value;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ the click-through

/// What differs between the two setups.
struct Setup<'a> {
    /// The SPA's URL (through Cloakroom).
    spa: &'a str,
    /// Cloakroom's session cookie name.
    session_cookie: &'a str,
    /// The user name the SPA should show after login.
    user: &'a str,
}

/// Opens the SPA, checks it shows nobody, and clicks "Log in" (the browser goes to the IdP).
async fn open_and_start_login(c: &Chrome, s: &Setup<'_>) {
    c.open_logged_out(s.spa).await;
    c.click("open", "login").await;
}

/// After the IdP sent the browser back: the user is shown, the session cookie is HttpOnly.
async fn expect_logged_in(c: &Chrome, s: &Setup<'_>) {
    c.wait_logged_in(s.spa, s.user).await;
    c.wait_text("logged-in", "countdown", "a countdown", |t| {
        t.ends_with(" s")
    })
    .await;
    let cookies = c.cookies("logged-in").await;
    match cookies.iter().find(|(n, _)| n == s.session_cookie) {
        Some((_, true)) => {}
        Some((_, false)) => {
            c.fail("logged-in", format!("{} is not HttpOnly", s.session_cookie))
                .await
        }
        None => {
            c.fail(
                "logged-in",
                format!("no {} cookie in the browser: {cookies:?}", s.session_cookie),
            )
            .await
        }
    }
}

/// Clicks "Log out" and waits until the browser is back on a *new* SPA page showing nobody.
/// `confirm_at_idp`: the IdP asks for confirmation (its button id).
async fn logout(c: &Chrome, s: &Setup<'_>, confirm_at_idp: Option<&str>) {
    // Marks this document: the SPA after logout must be a fresh load, not this page.
    c.js("logout", "window.__beforeLogout = true; return null")
        .await;
    c.click("logout", "logout").await;
    if let Some(button) = confirm_at_idp {
        c.click("logout-confirm", button).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let url = c.url().await;
        let fresh = c
            .client
            .execute("return window.__beforeLogout === undefined", vec![])
            .await
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if fresh && url.starts_with(s.spa) {
            break;
        }
        if Instant::now() >= deadline {
            c.fail(
                "logout",
                format!("not back on a fresh SPA page within {WAIT:?} (at {url})"),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_text("logout", "user", "\"not logged in\"", |t| {
        t == "not logged in"
    })
    .await;
    if c.cookies("logout")
        .await
        .iter()
        .any(|(n, _)| n == s.session_cookie)
    {
        c.fail(
            "logout",
            format!("{} survived the logout", s.session_cookie),
        )
        .await;
    }
}

// ------------------------------------------------------------------ (a) the demo

#[tokio::test]
async fn browser_demo_login_api_logout() {
    // The demo with private_key_jwt (and DPoP, its default): what a FAPI-minded deployment
    // runs, in a real browser.
    let d = demo::start(DemoOptions {
        port: 0,
        access_token_ttl: Duration::from_secs(60),
        client_auth: demo::DemoClientAuth::PrivateKeyJwt,
        ..DemoOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the demo did not start: {e}"));
    let c = Chrome::start("demo").await;
    let started = c.elapsed();
    let s = Setup {
        spa: &d.url,
        session_cookie: demo::COOKIE_NAME,
        user: demo::idp::DEMO_USER,
    };

    open_and_start_login(&c, &s).await;
    // The development IdP's login page, prefilled with alice / demo: submit it.
    c.wait_url("idp-login", d.idp.issuer()).await;
    let user = c.input_value("idp-login", "username").await;
    if user != demo::idp::DEMO_USER {
        c.fail("idp-login", format!("user name not prefilled: {user:?}"))
            .await;
    }
    c.click("idp-login", "sign-in").await;
    expect_logged_in(&c, &s).await;

    let result = c.call_api("api-200", "200").await;
    if !result.contains(demo::idp::DEMO_USER) {
        c.fail(
            "api-200",
            format!("the API did not name the user: {result}"),
        )
        .await;
    }
    let tokens = d.idp.issued_tokens();
    assert!(
        tokens.len() >= 3,
        "access, refresh and ID token were issued"
    );
    c.assert_page_holds_no_secrets("after-login", demo::COOKIE_NAME, &tokens)
        .await;
    if let Some(path) = std::env::var_os("CLOAKROOM_SCREENSHOT") {
        // Let the countdown tick once so the picture shows a running session.
        c.wait_text("screenshot", "countdown", "a countdown", |t| {
            t.ends_with(" s")
        })
        .await;
        c.screenshot_to("screenshot", &manifest_path(&path.to_string_lossy()))
            .await;
    }

    logout(&c, &s, None).await;
    let result = c.call_api("api-401", "401").await;
    if !result.contains("unauthenticated") {
        c.fail("api-401", format!("expected unauthenticated: {result}"))
            .await;
    }
    c.assert_page_holds_no_secrets("after-logout", demo::COOKIE_NAME, &d.idp.issued_tokens())
        .await;

    eprintln!(
        "[demo] chromium up in {started:?}, click-through done in {:?}",
        c.elapsed() - started
    );
    c.close().await;
    d.shutdown().await;
}

// ------------------------------------------------------------------ (b) the real IdP

#[tokio::test]
async fn browser_real_idp_login_api_logout() {
    let (env, spa_task) = real_idp_env().await;
    let c = Chrome::start("real-idp").await;
    let started = c.elapsed();
    let spa_url = env.url("/");
    let session_cookie = "__Host-cloakroom";
    let s = Setup {
        spa: &spa_url,
        session_cookie,
        user: "Alice Liddell",
    };

    open_and_start_login(&c, &s).await;
    // oidc-provider's interaction, as the HTML page server.js renders for browsers.
    c.sign_in_at_idp(Idp::Real, &env.idp.url("/interaction/"))
        .await;
    expect_logged_in(&c, &s).await;

    let result = c.call_api("api-200", "200").await;
    // The echo upstream: a bearer token arrived (it never echoes its value), no cookie did.
    let echoed: Value = serde_json::from_str(&result)
        .unwrap_or_else(|_| panic!("the echo upstream's answer is JSON: {result}"));
    if echoed["headers"]["authorization"] != "<present>" || echoed["cookie_count"] != 0 {
        c.fail(
            "api-200",
            format!("bearer attached and cookies stripped? {result}"),
        )
        .await;
    }
    // The tokens behind the browser's cookie, read from Redis the way Cloakroom does.
    let cookie_value = match c.client.get_named_cookie(session_cookie).await {
        Ok(ck) => ck.value().to_string(),
        Err(e) => c.fail("api-200", format!("no session cookie: {e}")).await,
    };
    let mut jar = TestJar::new();
    jar.jar.insert(session_cookie.into(), cookie_value);
    let Some(session) = env.session_of(&jar).await else {
        c.fail("api-200", "no session in Redis behind the browser's cookie")
            .await
    };
    let mut tokens = vec![
        session.tokens.access_token.expose().to_string(),
        session.tokens.id_token.expose().to_string(),
    ];
    tokens.extend(session.tokens.refresh_token.map(|t| t.expose().to_string()));
    c.assert_page_holds_no_secrets("after-login", session_cookie, &tokens)
        .await;

    logout(&c, &s, Some("logout-confirm")).await;
    let result = c.call_api("api-401", "401").await;
    if !result.contains("unauthenticated") {
        c.fail("api-401", format!("expected unauthenticated: {result}"))
            .await;
    }
    c.assert_page_holds_no_secrets("after-logout", session_cookie, &tokens)
        .await;
    // Revocation runs after the logout's answer.
    let revoked = env.idp.wait_stat(&["revocations"], 1).await;
    assert!(revoked >= 1, "logout revoked the tokens at the IdP");

    eprintln!(
        "[real-idp] chromium up in {started:?}, click-through done in {:?}",
        c.elapsed() - started
    );
    c.close().await;
    spa_task.abort();
}

//! Real-browser tests of the SPA client library (issue #16: `clients/js`, `@cloakroom/client`)
//! as the demo SPA uses it: headless Chromium over WebDriver (one chromedriver per test, as in
//! `browser.rs`), the demo with its development IdP, and the integration setup with the real
//! IdP (npm oidc-provider) and Redis.
//!
//! - The expiry warning comes from the library's `expiring` event, timed by the server's clock:
//!   Cloakroom's clock is moved forward (the test clock seam), so the session nears its end
//!   while the browser's clock says half an hour is left; nothing sleeps.
//! - Logging out in one tab logs the other tab of the same browser out (BroadcastChannel).
//! - A page that calls the API without a session is sent to the login and comes back to the
//!   same path and query.
//! - "Remember me", "Your devices" (sign one out, sign out the others) and the notes kept with
//!   the session (`saveState` / `restoredState`).
//! - "Sign in with the Partner IdP" (`login({provider})`): the demo's second identity provider,
//!   the session's provider shown, its API call and its logout at that IdP.
//!
//! Chromium, its driver and the page helpers are in `support::chromium` (Debian's `chromium` and
//! `chromium-driver`, or `CLOAKROOM_CHROMIUM` / `CLOAKROOM_CHROMEDRIVER`). On a failure a
//! screenshot is saved to `target/browser-failures/spa-client-<test>-<step>.png`.

use crate::support::browser::Browser as TestJar;
use crate::support::chromium::{real_idp_env, Chrome, Idp, BACKGROUND_TAB_FLAGS, WAIT};
use cloakroom_demo::{self as demo, DemoOptions};
use fantoccini::Locator;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long the other tab may take to show a logout: BroadcastChannel is immediate, so this is
/// only WebDriver's round trips (the page's own polls, every 10 s, would show another notice).
const OTHER_TAB_WAIT: Duration = Duration::from_secs(4);

/// Chromium for the test `test` (screenshots `spa-client-<test>-<step>.png`), its background
/// tabs at full speed.
async fn chrome(test: &str) -> Chrome {
    Chrome::start_with_flags(&format!("spa-client-{test}"), BACKGROUND_TAB_FLAGS).await
}

// ------------------------------------------------------------------ the two setups

/// Opens the SPA at `spa`, logs in through `idp`, and waits for the user to be shown.
async fn log_in(c: &Chrome, spa: &str, idp: Idp, idp_prefix: &str, user: &str) {
    c.open_logged_out(spa).await;
    c.click("open", "login").await;
    c.sign_in_at_idp(idp, idp_prefix).await;
    c.wait_logged_in(spa, user).await;
}

async fn start_demo() -> demo::DemoHandle {
    demo::start(DemoOptions {
        port: 0,
        ..DemoOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the demo did not start: {e}"))
}

// ------------------------------------------------------------------ (a) the expiry warning

#[tokio::test]
async fn spa_client_warns_before_the_session_ends_by_the_servers_clock() {
    let (env, spa_task) = real_idp_env().await;
    let c = chrome("expiring").await;
    let spa = env.url("/");
    log_in(
        &c,
        &spa,
        Idp::Real,
        &env.idp.url("/interaction/"),
        "Alice Liddell",
    )
    .await;

    // The library corrects the browser's clock with the server's (`session.now`).
    let user = c
        .js(
            "contract",
            "return fetch('/auth/user?slide=false', { headers: { 'x-csrf': '1' } }) \
               .then((r) => r.json());",
        )
        .await;
    if !user["session"]["now"].is_i64() {
        c.fail(
            "contract",
            format!("GET /auth/user has no session.now (the server's clock, issue #16): {user}"),
        )
        .await;
    }

    // Half an hour left (the setup's idle timeout): no warning.
    c.wait_text("fresh", "countdown", "minutes", |t| t.contains(" min "))
        .await;
    if let Some((_, true)) = c.probe("warning").await {
        c.fail("fresh", "the expiry warning shows for a fresh session")
            .await;
    }

    // Cloakroom's clock runs 29.5 minutes ahead: the session has 30 s left by the server's clock,
    // still half an hour by the browser's. The page's next poll (at most 10 s away) finds out.
    env.advance(Duration::from_secs(29 * 60 + 30));
    let warning = c.wait_shown("warning", "warning", WAIT).await;
    if !warning.contains("Your session ends in") {
        c.fail("warning", format!("unexpected warning: {warning:?}"))
            .await;
    }
    // Seconds, not minutes: the countdown runs on the server's clock.
    c.wait_text(
        "warning",
        "countdown",
        "under a minute (by the server's clock; the browser's says half an hour)",
        |t| t.ends_with(" s") && !t.contains("min"),
    )
    .await;

    // "Keep me signed in" slides the session: the warning goes.
    c.click("keep-alive", "keep-alive").await;
    c.wait_hidden("keep-alive", "warning").await;
    c.wait_text("keep-alive", "countdown", "minutes again", |t| {
        t.contains(" min ")
    })
    .await;

    c.close().await;
    spa_task.abort();
}

// ------------------------------------------------------------------ (b) cross-tab logout

#[tokio::test]
async fn spa_client_logout_in_one_tab_logs_out_the_other() {
    let d = start_demo().await;
    let c = chrome("cross-tab").await;
    log_in(&c, &d.url, Idp::Dev, d.idp.issuer(), demo::idp::DEMO_USER).await;
    let first = match c.client.window().await {
        Ok(w) => w,
        Err(e) => c.fail("tabs", format!("no window handle: {e}")).await,
    };
    // Marks this document: it must notice the logout without reloading.
    c.js("tabs", "window.__firstTab = true; return null").await;

    let second = match c.client.new_window(true).await {
        Ok(w) => w.handle,
        Err(e) => {
            c.fail("tabs", format!("cannot open a second tab: {e}"))
                .await
        }
    };
    if let Err(e) = c.client.switch_to_window(second).await {
        c.fail("tabs", format!("cannot switch to the second tab: {e}"))
            .await;
    }
    c.goto("second-tab", &d.url).await;
    c.wait_text(
        "second-tab",
        "user",
        "logged in (one session, two tabs)",
        |t| t.starts_with("Logged in as"),
    )
    .await;
    c.click("second-tab", "logout").await;
    // Through the IdP's end_session and back: a fresh page without a session.
    c.wait_text("second-tab", "user", "\"not logged in\"", |t| {
        t == "not logged in"
    })
    .await;

    if let Err(e) = c.client.switch_to_window(first).await {
        c.fail("first-tab", format!("cannot switch back: {e}"))
            .await;
    }
    let notice = c
        .wait_shown("first-tab", "other-tab-notice", OTHER_TAB_WAIT)
        .await;
    if !notice.contains("another tab") {
        c.fail("first-tab", format!("unexpected notice: {notice:?}"))
            .await;
    }
    c.wait_for(
        "first-tab",
        "user",
        "\"not logged in\"",
        OTHER_TAB_WAIT,
        |t, _| t == "not logged in",
    )
    .await;
    let same = c.js("first-tab", "return window.__firstTab === true").await;
    if same != Value::Bool(true) {
        c.fail("first-tab", "the first tab reloaded instead of being told")
            .await;
    }
    c.wait_hidden("first-tab", "logout").await;

    c.close().await;
    d.shutdown().await;
}

// ------------------------------------------------------------------ (c) deep link through login

/// Opens `base` + `/deep?…` without a session: the library sends the browser to the login, and
/// after signing in it is back on the same path and query, where the API call succeeds.
async fn deep_link_survives_login(c: &Chrome, base: &str, idp: Idp, idp_prefix: &str) {
    let path = "/deep?from=spa-client&n=42";
    c.goto("deep", &format!("{base}{path}")).await;
    c.sign_in_at_idp(idp, idp_prefix).await;
    let url = c.wait_url("back", &format!("{base}/deep")).await;
    let back = url::Url::parse(&url).expect("url");
    let here = format!("{}?{}", back.path(), back.query().unwrap_or_default());
    if here != path {
        c.fail(
            "back",
            format!("came back to {here}, not to {path} (return_to lost the page)"),
        )
        .await;
    }
    c.wait_text("back", "deep-status", "HTTP 200", |t| t == "200")
        .await;
    let shown = c
        .wait_text("back", "here", "the page's own URL", |t| !t.is_empty())
        .await;
    if shown != path {
        c.fail("back", format!("the page says it is {shown:?}"))
            .await;
    }
}

#[tokio::test]
async fn spa_client_sends_a_page_without_a_session_to_login_and_back_demo() {
    let d = start_demo().await;
    let c = chrome("deep-link-demo").await;
    let base = d.url.trim_end_matches('/').to_string();
    deep_link_survives_login(&c, &base, Idp::Dev, d.idp.issuer()).await;
    c.wait_text(
        "api",
        "deep-result",
        "the API's answer, naming the user",
        |t| t.contains(demo::idp::DEMO_USER),
    )
    .await;
    c.close().await;
    d.shutdown().await;
}

#[tokio::test]
async fn spa_client_sends_a_page_without_a_session_to_login_and_back_real_idp() {
    let (env, spa_task) = real_idp_env().await;
    let c = chrome("deep-link-real-idp").await;
    let base = env.base(0);
    deep_link_survives_login(&c, &base, Idp::Real, &env.idp.url("/interaction/")).await;
    // The echo upstream: the call arrived with a bearer token.
    c.wait_text("api", "deep-result", "the echoed call", |t| {
        t.contains("\"authorization\": \"<present>\"")
    })
    .await;
    c.close().await;
    spa_task.abort();
}

/// Issue #30 item 4: in a real browser, through Cloakroom, the library follows only the
/// `login_url` of Cloakroom's own 401 (marked `x-cloakroom-error`). An upstream's 401 that
/// looks like Cloakroom's — its body naming a login elsewhere, Cloakroom's header copied onto
/// it — sends the browser nowhere: Cloakroom drops the copied header and the library leaves
/// an unmarked 401 to the app.
#[tokio::test]
async fn spa_client_follows_only_cloakrooms_own_login_url_never_an_upstreams() {
    let (env, spa_task) = real_idp_env().await;
    let c = chrome("foreign-login-url").await;
    c.open_logged_out(&env.url("/")).await;
    let script = format!(
        "return import('{js}').then(async (m) => {{ \
           const assigned = []; \
           const location = {{ pathname: '/orders', search: '', hash: '', \
                               assign: (u) => assigned.push(u) }}; \
           const client = m.createCloakroom({{ location, channelName: null }}); \
           const seen = []; \
           client.on('unauthenticated', (e) => seen.push(e.loginUrl)); \
           const theirs = await client.fetch('/public/fake-login-401'); \
           const theirsMark = theirs.headers.get('x-cloakroom-error'); \
           const theirsBody = await theirs.json(); \
           const afterTheirs = assigned.slice(); \
           const ours = await client.fetch('/api/x'); \
           client.stop(); \
           return {{ theirs: theirs.status, theirsMark, theirsLoginUrl: theirsBody.login_url, \
                     afterTheirs, ours: ours.status, oursMark: ours.headers.get('x-cloakroom-error'), \
                     assigned, seen }}; \
         }});",
        js = demo::CLIENT_JS_PATH
    );
    let v = c.js("fetch", &script).await;
    let expect = serde_json::json!({
        "theirs": 401,
        "theirsMark": null,
        "theirsLoginUrl": "https://evil.example/auth/login?prompt=none",
        "afterTheirs": [],
        "ours": 401,
        "oursMark": "unauthenticated",
        "assigned": ["/auth/login?return_to=%2Forders"],
        "seen": ["/auth/login?return_to=%2Forders"],
    });
    if v != expect {
        c.fail("fetch", format!("expected {expect}\n     got {v}"))
            .await;
    }
    c.close().await;
    spa_task.abort();
}

// ------------------------------------------------------------------ (d) devices, notes, remember me

/// Another device of the same user: the demo's login flow with the test's HTTP browser.
async fn second_device(d: &demo::DemoHandle) -> TestJar {
    let base = d.url.trim_end_matches('/');
    let mut b = TestJar::new();
    b.user_agent = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0".into();
    let r = b.get(&format!("{base}/auth/login?return_to=/")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let page = b.get(&r.location()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let marker = "name=\"interaction\" value=\"";
    let start = page.body.find(marker).expect("interaction field") + marker.len();
    let len = page.body[start..].find('"').expect("end of value");
    let interaction = page.body[start..start + len].to_string();
    let r = b
        .post_form(
            &format!("{}/authorize/login", d.idp.issuer()),
            &[
                ("interaction", &interaction),
                ("username", demo::idp::DEMO_USER),
                ("password", demo::idp::DEMO_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = b.get(&r.location()).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(
        b.jar.contains_key(demo::COOKIE_NAME),
        "second device signed in"
    );
    b
}

async fn has_session(d: &demo::DemoHandle, b: &mut TestJar) -> bool {
    let url = format!("{}auth/user?slide=false", d.url);
    let r = b.xhr(reqwest::Method::GET, &url).await;
    match r.status {
        200 => true,
        401 => false,
        s => panic!("GET /auth/user: {s} {}", r.body),
    }
}

/// The `li`s of `#device-list`: (text, has a "Sign out" button).
async fn devices(c: &Chrome, step: &str) -> Vec<(String, bool)> {
    let v = c
        .js(
            step,
            "return [...document.querySelectorAll('#device-list li')].map((li) => \
               [li.textContent, !!li.querySelector('button.end-session')]);",
        )
        .await;
    serde_json::from_value(v).unwrap_or_default()
}

/// Reloads the page and waits until `#device-list` has `n` entries.
async fn reload_until_devices(c: &Chrome, step: &str, url: &str, n: usize) -> Vec<(String, bool)> {
    let deadline = Instant::now() + WAIT;
    loop {
        c.goto(step, url).await;
        c.wait_text(step, "user", "logged in", |t| t.starts_with("Logged in as"))
            .await;
        let inner = Instant::now() + Duration::from_secs(3);
        loop {
            let list = devices(c, step).await;
            if list.len() == n {
                return list;
            }
            if Instant::now() >= inner {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if Instant::now() >= deadline {
            let list = devices(c, step).await;
            c.fail(
                step,
                format!("#device-list never had {n} entries: {list:?}"),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn spa_client_lists_and_signs_out_devices_keeps_notes_and_remembers() {
    let d = start_demo().await;
    let c = chrome("devices").await;

    // "Remember me", then Log in.
    c.open_logged_out(&d.url).await;
    c.click("open", "remember").await;
    c.click("open", "login").await;
    c.sign_in_at_idp(Idp::Dev, d.idp.issuer()).await;
    c.wait_text("remembered", "user", "logged in and remembered", |t| {
        t.starts_with("Logged in as") && t.contains("(remembered on this device)")
    })
    .await;
    match c.client.get_named_cookie(demo::COOKIE_NAME).await {
        Ok(ck) if ck.expires().is_some() || ck.max_age().is_some() => {}
        Ok(ck) => {
            c.fail(
                "remembered",
                format!("a remembered session's cookie is persistent: {ck:?}"),
            )
            .await
        }
        Err(e) => {
            c.fail("remembered", format!("no session cookie: {e}"))
                .await
        }
    }

    // Your devices: this one.
    let list = reload_until_devices(&c, "devices-1", &d.url, 1).await;
    let (text, has_button) = &list[0];
    if *has_button || !text.contains("(this device)") {
        c.fail(
            "devices-1",
            format!("this device, without a Sign out: {list:?}"),
        )
        .await;
    }

    // Another device appears; its "Sign out" ends it.
    let mut other = second_device(&d).await;
    let list = reload_until_devices(&c, "devices-2", &d.url, 2).await;
    let Some((text, _)) = list.iter().find(|(_, button)| *button) else {
        c.fail("devices-2", format!("no Sign out button: {list:?}"))
            .await
    };
    if !text.contains("Firefox") {
        c.fail(
            "devices-2",
            format!("the other device by its browser: {text:?}"),
        )
        .await;
    }
    match c
        .client
        .find(Locator::Css("#device-list button.end-session"))
        .await
    {
        Ok(button) => {
            if let Err(e) = button.click().await {
                c.fail("devices-2", format!("cannot click Sign out: {e}"))
                    .await;
            }
        }
        Err(e) => {
            c.fail("devices-2", format!("no Sign out button: {e}"))
                .await
        }
    }
    let deadline = Instant::now() + WAIT;
    while has_session(&d, &mut other).await {
        if Instant::now() >= deadline {
            c.fail(
                "devices-2",
                "Sign out did not end the other device's session",
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_for("devices-2", "device-list", "one device", WAIT, |t, _| {
        t.contains("(this device)") && !t.contains("Firefox")
    })
    .await;

    // "Sign out other devices": the other goes, this one stays.
    let mut other = second_device(&d).await;
    reload_until_devices(&c, "others", &d.url, 2).await;
    c.click("others", "logout-others").await;
    let deadline = Instant::now() + WAIT;
    while has_session(&d, &mut other).await {
        if Instant::now() >= deadline {
            c.fail("others", "Sign out other devices left the other session")
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_for("others", "device-list", "only this device", WAIT, |t, _| {
        t.contains("(this device)") && !t.contains("Firefox")
    })
    .await;
    c.wait_text("others", "user", "still logged in", |t| {
        t.starts_with("Logged in as")
    })
    .await;

    // Notes: saved with the session as you type, there again after a reload.
    let notes = "Remember the milk (saved by the browser test)";
    c.type_into("notes", "notes", notes).await;
    c.wait_text("notes", "notes-status", "\"Saved.\"", |t| {
        t.contains("Saved.")
    })
    .await;
    c.goto("notes-reload", &d.url).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let v = c
            .js(
                "notes-reload",
                "return document.getElementById('notes').value",
            )
            .await;
        if v.as_str() == Some(notes) {
            break;
        }
        if Instant::now() >= deadline {
            c.fail("notes-reload", format!("the notes were not restored: {v}"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some((_, true)) = c.probe("restored").await {
        c.fail("notes-reload", "a live session is not \"restored\"")
            .await;
    }

    c.close().await;
    d.shutdown().await;
}

// ------------------------------------------------------------------ (e) the second provider

#[tokio::test]
async fn spa_client_signs_in_with_the_partner_idp_and_shows_the_provider() {
    let d = start_demo().await;
    let c = chrome("partner-idp").await;
    let partner = &d.partner_idp;

    c.open_logged_out(&d.url).await;
    if let Some((_, true)) = c.probe("provider").await {
        c.fail("open", "a provider is shown without a session")
            .await;
    }
    c.click("open", "login-partners").await;
    // The Partner IdP's own login page, not the Demo IdP's.
    c.wait_url("idp-login", partner.issuer()).await;
    c.wait_text("idp-login", "idp-name", "the Partner IdP", |t| {
        t == demo::PARTNER_IDP_NAME
    })
    .await;
    c.click("idp-login", "sign-in").await;
    c.wait_logged_in(&d.url, demo::idp::DEMO_USER).await;
    let shown = c
        .wait_text("provider", "provider", "the Partner IdP named", |t| {
            t.contains(demo::PARTNER_IDP_NAME)
        })
        .await;
    if !shown.contains(&format!("\"{}\"", demo::PARTNER_PROVIDER)) {
        c.fail(
            "provider",
            format!("the provider's name is shown: {shown:?}"),
        )
        .await;
    }

    // The API got the Partner IdP's token: a bearer token (extra providers do not do DPoP).
    let result = c.call_api("api-200", "200").await;
    let api: Value = serde_json::from_str(&result)
        .unwrap_or_else(|_| panic!("the API's answer is JSON: {result}"));
    if api["idp"] != demo::PARTNER_IDP_NAME
        || api["issuer"] != partner.issuer()
        || api["dpop"]["bound"] != false
    {
        c.fail("api-200", format!("a Partner IdP bearer token? {api}"))
            .await;
    }

    // The sensitive action is for the Demo IdP's users: 403, and the page says why.
    c.click("sensitive", "sensitive").await;
    c.wait_text("sensitive", "sensitive-status", "HTTP 403", |t| t == "403")
        .await;
    let note = c.wait_shown("sensitive", "sensitive-note", WAIT).await;
    if !note.contains(demo::PARTNER_IDP_NAME) {
        c.fail("sensitive", format!("unexpected note: {note:?}"))
            .await;
    }
    if let Some((_, true)) = c.probe("step-up").await {
        c.fail("sensitive", "no step-up is offered for a refused provider")
            .await;
    }
    c.assert_page_holds_no_secrets("after-login", demo::COOKIE_NAME, &partner.issued_tokens())
        .await;

    // Logout: through the Partner IdP's end_session and back, logged out.
    c.click("logout", "logout").await;
    c.wait_text("logout", "user", "\"not logged in\"", |t| {
        t == "not logged in"
    })
    .await;
    c.wait_hidden("logout", "provider").await;
    let result = c.call_api("api-401", "401").await;
    if !result.contains("unauthenticated") {
        c.fail("api-401", format!("expected unauthenticated: {result}"))
            .await;
    }
    if !d.idp.issued_tokens().is_empty() {
        c.fail("api-401", "the Demo IdP was never part of this session")
            .await;
    }

    // "Log in" is still the Demo IdP's, and the page says so.
    c.click("demo-idp", "login").await;
    c.sign_in_at_idp(Idp::Dev, d.idp.issuer()).await;
    c.wait_logged_in(&d.url, demo::idp::DEMO_USER).await;
    c.wait_text("demo-idp", "provider", "the Demo IdP named", |t| {
        t.contains(demo::DEMO_IDP_NAME) && t.contains("\"default\"")
    })
    .await;

    c.close().await;
    d.shutdown().await;
}

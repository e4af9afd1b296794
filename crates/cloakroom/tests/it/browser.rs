//! Real-browser end-to-end tests (issue #4): headless Chromium, driven over WebDriver
//! (a `chromedriver` process per test + `fantoccini`), clicks through the SPA: log in at the IdP's
//! HTML page, see the user, call the API (200), log out (through the IdP), call the API (401).
//! Twice: against `cloakroom-demo` (its development IdP) and against the integration tests' setup
//! (Redis, the npm oidc-provider from tests/idp). Both prove, from inside the page, that no token
//! and no session cookie is readable by JavaScript.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test` installs them). Override the
//! binaries with `CLOAKROOM_CHROMIUM` / `CLOAKROOM_CHROMEDRIVER`. On a failure a screenshot is
//! saved to `target/browser-failures/<test>-<step>.png`. `CLOAKROOM_SCREENSHOT=docs/demo.png`
//! makes the demo test save the SPA after login and an API call (README's picture).

use crate::support::browser::Browser as TestJar;
use crate::support::{Opts, TestEnv};
use bytes::Bytes;
use cloakroom_demo::{self as demo, DemoOptions};
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any one thing may take to appear in the page (a bound, not an expectation).
const WAIT: Duration = Duration::from_secs(20);
/// The demo SPA, served at `/` of the integration setup by a tiny static server below.
const SPA_HTML: &str = include_str!("../../../cloakroom-demo/src/spa.html");

/// The SPA without the demo's canonical host: this setup runs on 127.0.0.1 (the IdP's
/// registered redirect URI), where the demo's page would move itself to localhost.
fn spa_html() -> &'static str {
    static HTML: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HTML.get_or_init(|| SPA_HTML.replacen(r#" data-canonical-host="localhost""#, "", 1))
}

/// The Chromium flags that work as root on a closed network (plus a fresh profile per test).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--window-size=1280,1200",
];

const INSTALL: &str = "the browser end-to-end tests need Chromium and chromedriver: \
     `apt-get install -y chromium chromium-driver` (scripts/test installs them when missing), \
     or point CLOAKROOM_CHROMIUM / CLOAKROOM_CHROMEDRIVER at them";

// ------------------------------------------------------------------ Chromium over WebDriver

fn manifest_path(p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        crate::support::repo_root().join(p)
    }
}

/// `var`, else the first of `candidates` that exists (or is found on PATH).
fn find_binary(var: &str, candidates: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{var}={} does not exist; {INSTALL}",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for c in candidates {
        if c.starts_with('/') {
            if Path::new(c).is_file() {
                return PathBuf::from(c);
            }
        } else if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join(c))
            .find(|p| p.is_file())
        {
            return p;
        }
    }
    panic!("{} not found; {INSTALL}", candidates.join(" / "));
}

/// A headless Chromium with a fresh profile, behind its own chromedriver. Dropping it kills
/// chromedriver and the browser (one process group) and removes the profile.
struct Chrome {
    client: Client,
    /// The test's name, for screenshot file names.
    test: &'static str,
    driver: Child,
    profile: PathBuf,
    started: Instant,
}

impl Chrome {
    async fn start(test: &'static str) -> Self {
        let started = Instant::now();
        let chromium = find_binary(
            "CLOAKROOM_CHROMIUM",
            &["/usr/bin/chromium", "chromium", "chromium-browser"],
        );
        let chromedriver = find_binary(
            "CLOAKROOM_CHROMEDRIVER",
            &["/usr/bin/chromedriver", "chromedriver"],
        );
        let profile = std::env::temp_dir().join(format!(
            "cloakroom-chromium-{}-{test}-{}",
            std::process::id(),
            crate::support::redis::free_port()
        ));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let port = crate::support::redis::free_port();
        let log = profile.join("chromedriver.log");
        use std::os::unix::process::CommandExt;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("chromedriver log"))
            // Its own process group: Drop kills chromedriver and the Chromium it started.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}); {INSTALL}", chromedriver.display()));
        let mut chrome = ChromeStart {
            driver: Some(driver),
            profile: profile.clone(),
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = reqwest::get(format!("{webdriver}/status"))
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if let Some(status) = chrome.driver().try_wait().ok().flatten() {
                panic!(
                    "chromedriver exited ({status}): {}; {INSTALL}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {webdriver} within {WAIT:?}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&webdriver)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Chromium ({}) did not start under chromedriver: {e}\n{}\n{INSTALL}",
                    chromium.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Self {
            client,
            test,
            driver: chrome.driver.take().expect("driver"),
            profile: std::mem::take(&mut chrome.profile),
            started,
        }
    }

    /// Saves a screenshot of the page to `target/browser-failures/<test>-<step>.png` and panics
    /// with `msg`, the path, the URL and the page's text.
    async fn fail(&self, step: &str, msg: impl std::fmt::Display) -> ! {
        let dir = manifest_path("target/browser-failures");
        let path = dir.join(format!("{}-{step}.png", self.test));
        let shot = match self.client.screenshot().await {
            Ok(png) => std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&path, png))
                .map(|()| format!("screenshot: {}", path.display()))
                .unwrap_or_else(|e| format!("screenshot not saved: {e}")),
            Err(e) => format!("no screenshot: {e}"),
        };
        let url = self
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default();
        let text = self
            .client
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        panic!(
            "[{}] step {step}: {msg}\n  {shot}\n  url: {url}\n  page text:\n{text}",
            self.test
        );
    }

    async fn goto(&self, step: &str, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            self.fail(step, format!("cannot open {url}: {e}")).await;
        }
    }

    async fn js(&self, step: &str, script: &str) -> Value {
        match self.client.execute(script, vec![]).await {
            Ok(v) => v,
            Err(e) => {
                self.fail(step, format!("script failed: {e}\n{script}"))
                    .await
            }
        }
    }

    /// Polls `#id`'s text until `pred` holds (bounded by [`WAIT`]); returns it.
    async fn wait_text(
        &self,
        step: &str,
        id: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::from("(no such element)");
        loop {
            if let Ok(el) = self.client.find(Locator::Css(&format!("#{id}"))).await {
                if let Ok(t) = el.text().await {
                    if pred(&t) {
                        return t;
                    }
                    last = t;
                }
            }
            if Instant::now() >= deadline {
                self.fail(
                    step,
                    format!("#{id} did not become {what} within {WAIT:?} (last text: {last:?})"),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `#id` to be displayed, then clicks it.
    async fn click(&self, step: &str, id: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(el) = self.client.find(Locator::Css(&format!("#{id}"))).await {
                if el.is_displayed().await.unwrap_or(false) && el.click().await.is_ok() {
                    return;
                }
            }
            if Instant::now() >= deadline {
                self.fail(step, format!("#{id} was not clickable within {WAIT:?}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an `<input id=…>` and returns its current value.
    async fn input_value(&self, step: &str, id: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(el) = self
                .client
                .find(Locator::Css(&format!("#{id}, [name={id}]")))
                .await
            {
                if let Ok(v) = el.prop("value").await {
                    return v.unwrap_or_default();
                }
            }
            if Instant::now() >= deadline {
                self.fail(step, format!("no input #{id} within {WAIT:?}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, step: &str, id: &str, text: &str) {
        let el = match self.client.find(Locator::Css(&format!("#{id}"))).await {
            Ok(el) => el,
            Err(e) => self.fail(step, format!("no input #{id}: {e}")).await,
        };
        if let Err(e) = el.clear().await {
            self.fail(step, format!("cannot clear #{id}: {e}")).await;
        }
        if let Err(e) = el.send_keys(text).await {
            self.fail(step, format!("cannot type into #{id}: {e}"))
                .await;
        }
    }

    /// Waits until the browser shows a page whose URL starts with `prefix`.
    async fn wait_url(&self, step: &str, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self
                .client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            if url.starts_with(prefix) {
                return url;
            }
            if Instant::now() >= deadline {
                self.fail(
                    step,
                    format!("the browser never reached {prefix}… (at {url})"),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `#call-api` and waits for `#api-status` to show `status`; returns `#api-result`.
    async fn call_api(&self, step: &str, status: &str) -> String {
        // Reset first, so an earlier call's status cannot satisfy the wait.
        self.js(
            step,
            "document.getElementById('api-status').textContent = '–'; return null",
        )
        .await;
        self.click(step, "call-api").await;
        self.wait_text(step, "api-status", &format!("HTTP {status}"), |t| {
            t == status
        })
        .await;
        self.wait_text(step, "api-result", "filled", |t| {
            !t.is_empty() && t != "(not called yet)"
        })
        .await
    }

    /// The browser's cookies for the current page's host (HttpOnly ones included, as WebDriver
    /// sees them): `(name, http_only)`.
    async fn cookies(&self, step: &str) -> Vec<(String, bool)> {
        match self.client.get_all_cookies().await {
            Ok(cs) => cs
                .iter()
                .map(|c| (c.name().to_string(), c.http_only().unwrap_or(false)))
                .collect(),
            Err(e) => self.fail(step, format!("cannot read cookies: {e}")).await,
        }
    }

    /// From inside the page: `document.cookie` has no session cookie and no token, and the
    /// Web Storage areas are empty (so hold nothing token-like). `tokens` are the tokens the IdP
    /// issued for this session; none may appear in the page either.
    async fn assert_page_holds_no_secrets(
        &self,
        step: &str,
        session_cookie: &str,
        tokens: &[String],
    ) {
        let seen = self
            .js(
                step,
                "const dump = (s) => { const o = {}; for (let i = 0; i < s.length; i++) { \
                   const k = s.key(i); o[k] = s.getItem(k); } return o; }; \
                 return { cookie: document.cookie, local: dump(localStorage), \
                   session: dump(sessionStorage), html: document.documentElement.outerHTML };",
            )
            .await;
        let cookie = seen["cookie"].as_str().unwrap_or_default();
        if cookie.contains(&format!("{session_cookie}=")) {
            self.fail(
                step,
                format!("document.cookie shows the session cookie: {cookie:?}"),
            )
            .await;
        }
        for (area, v) in [
            ("localStorage", &seen["local"]),
            ("sessionStorage", &seen["session"]),
        ] {
            if v.as_object().is_none_or(|o| !o.is_empty()) {
                self.fail(step, format!("{area} is not empty: {v}")).await;
            }
        }
        let html = seen["html"].as_str().unwrap_or_default();
        for (what, text) in [("document.cookie", cookie), ("the page", html)] {
            if text.contains("eyJ") {
                self.fail(step, format!("{what} holds a JWT-shaped string"))
                    .await;
            }
            if let Some(t) = tokens.iter().find(|t| text.contains(t.as_str())) {
                let head: String = t.chars().take(8).collect();
                self.fail(step, format!("{what} holds an issued token ({head}…)"))
                    .await;
            }
        }
    }

    /// Saves the whole page (the window is first grown to the document's height) as a PNG.
    async fn screenshot_to(&self, step: &str, path: &Path) {
        let sizes = self
            .js(
                step,
                "return [document.documentElement.scrollHeight, \
                   window.outerHeight - window.innerHeight, window.outerWidth];",
            )
            .await;
        let n = |i: usize| sizes[i].as_u64().unwrap_or(0) as u32;
        if let Err(e) = self
            .client
            .set_window_size(n(2).max(1280), n(0) + n(1))
            .await
        {
            self.fail(step, format!("cannot resize the window: {e}"))
                .await;
        }
        match self.client.screenshot().await {
            Ok(png) => {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                std::fs::write(path, png)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
                eprintln!("[{}] screenshot saved to {}", self.test, path.display());
            }
            Err(e) => self.fail(step, format!("screenshot failed: {e}")).await,
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the WebDriver session (Chromium exits); Drop then stops chromedriver.
    async fn close(mut self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        self.kill();
    }

    fn kill(&mut self) {
        kill_group(&mut self.driver);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Guards chromedriver while Chromium starts (a panic there must not leave it running).
struct ChromeStart {
    driver: Option<Child>,
    profile: PathBuf,
}

impl ChromeStart {
    fn driver(&mut self) -> &mut Child {
        self.driver.as_mut().expect("driver")
    }
}

impl Drop for ChromeStart {
    fn drop(&mut self) {
        if let Some(d) = self.driver.as_mut() {
            kill_group(d);
            let _ = std::fs::remove_dir_all(&self.profile);
        }
    }
}

/// Kills the process group led by `child` (chromedriver and the Chromium it started), by id.
fn kill_group(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
    }
    let _ = child.wait();
}

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
    c.goto("open", s.spa).await;
    c.wait_text("open", "user", "\"not logged in\"", |t| {
        t == "not logged in"
    })
    .await;
    c.click("open", "login").await;
}

/// After the IdP sent the browser back: the user is shown, the session cookie is HttpOnly.
async fn expect_logged_in(c: &Chrome, s: &Setup<'_>) {
    c.wait_url("logged-in", s.spa).await;
    let user = s.user;
    c.wait_text("logged-in", "user", &format!("logged in as {user}"), |t| {
        t.starts_with("Logged in as") && t.contains(user)
    })
    .await;
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
        let url = c
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default();
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
        redis: None,
        access_token_ttl: Duration::from_secs(60),
        client_auth: demo::DemoClientAuth::PrivateKeyJwt,
        sensitive_max_age: demo::SENSITIVE_MAX_AGE,
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

/// Serves the demo SPA at `/` and the client library it imports (what `[[routes]] prefix = "/"
/// token = "none"` points at).
async fn spa_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, ctype, body) = match req.uri().path() {
                        "/" => (200, "text/html; charset=utf-8", spa_html()),
                        // The page imports the client library (clients/js), as the demo serves it.
                        demo::CLIENT_JS_PATH => (200, "text/javascript", demo::CLIENT_JS),
                        _ => (404, "text/plain", "not found\n"),
                    };
                    let resp = hyper::Response::builder()
                        .status(status)
                        .header("content-type", ctype)
                        .header("cache-control", "no-store")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .expect("response");
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn browser_real_idp_login_api_logout() {
    let (spa, spa_task) = spa_server().await;
    let env = TestEnv::start_with(Opts {
        extra_toml: format!(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://{spa}\"\ntoken = \"none\"\n"
        ),
        ..Opts::default()
    })
    .await;
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
    c.wait_url("idp-login", &env.idp.url("/interaction/")).await;
    c.type_into("idp-login", "login", "alice").await;
    c.type_into("idp-login", "password", "wonderland").await;
    c.click("idp-login", "sign-in").await;
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

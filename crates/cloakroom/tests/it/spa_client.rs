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
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test` installs them), or
//! `CLOAKROOM_CHROMIUM` / `CLOAKROOM_CHROMEDRIVER`. On a failure a screenshot is saved to
//! `target/browser-failures/spa-client-<test>-<step>.png`.

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
/// How long the other tab may take to show a logout: BroadcastChannel is immediate, so this is
/// only WebDriver's round trips (the page's own polls, every 10 s, would show another notice).
const OTHER_TAB_WAIT: Duration = Duration::from_secs(4);

const SPA_HTML: &str = include_str!("../../../cloakroom-demo/src/spa.html");
const DEEP_HTML: &str = include_str!("../../../cloakroom-demo/src/deep.html");

/// A demo page without the demo's canonical host: the integration setup runs on 127.0.0.1 (the
/// IdP's registered redirect URI), where the demo's pages would move themselves to localhost.
fn without_canonical_host(page: &str) -> String {
    let out = page.replacen(r#" data-canonical-host="localhost""#, "", 1);
    assert_ne!(out, page, "the demo page declares its canonical host");
    out
}

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
    // Two tabs: the one in the background keeps running its timers at full speed.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--window-size=1280,1200",
];

const INSTALL: &str = "the browser end-to-end tests need Chromium and chromedriver: \
     `apt-get install -y chromium chromium-driver` (scripts/test installs them when missing), \
     or point CLOAKROOM_CHROMIUM / CLOAKROOM_CHROMEDRIVER at them";

// ------------------------------------------------------------------ Chromium over WebDriver

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

/// chromedriver (its own process group) and a fresh profile; Drop kills and removes both.
struct Driver {
    child: Child,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A headless Chromium behind its own chromedriver.
struct Chrome {
    client: Client,
    test: &'static str,
    _driver: Driver,
}

impl Chrome {
    async fn start(test: &'static str) -> Self {
        let chromium = find_binary(
            "CLOAKROOM_CHROMIUM",
            &["/usr/bin/chromium", "chromium", "chromium-browser"],
        );
        let chromedriver = find_binary(
            "CLOAKROOM_CHROMEDRIVER",
            &["/usr/bin/chromedriver", "chromedriver"],
        );
        let profile = std::env::temp_dir().join(format!(
            "cloakroom-chromium-{}-spa-client-{test}-{}",
            std::process::id(),
            crate::support::redis::free_port()
        ));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let port = crate::support::redis::free_port();
        let log = profile.join("chromedriver.log");
        use std::os::unix::process::CommandExt;
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("chromedriver log"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}); {INSTALL}", chromedriver.display()));
        let mut driver = Driver {
            child,
            profile: profile.clone(),
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = reqwest::get(format!("{webdriver}/status"))
                .await
                .ok()
                .is_some_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if let Some(status) = driver.child.try_wait().ok().flatten() {
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
            _driver: driver,
        }
    }

    /// Saves a screenshot and panics with `msg`, the URL and the page's text.
    async fn fail(&self, step: &str, msg: impl std::fmt::Display) -> ! {
        let dir = crate::support::repo_root().join("target/browser-failures");
        let path = dir.join(format!("spa-client-{}-{step}.png", self.test));
        let shot = match self.client.screenshot().await {
            Ok(png) => std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&path, png))
                .map(|()| format!("screenshot: {}", path.display()))
                .unwrap_or_else(|e| format!("screenshot not saved: {e}")),
            Err(e) => format!("no screenshot: {e}"),
        };
        let url = self.url().await;
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
            "[spa-client {}] step {step}: {msg}\n  {shot}\n  url: {url}\n  page text:\n{text}",
            self.test
        );
    }

    async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
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

    /// `#id`'s text and whether it is displayed (`None`: no such element).
    async fn probe(&self, id: &str) -> Option<(String, bool)> {
        let el = self
            .client
            .find(Locator::Css(&format!("#{id}")))
            .await
            .ok()?;
        let text = el.text().await.ok()?;
        let shown = el.is_displayed().await.ok()?;
        Some((text, shown))
    }

    /// Polls `#id` (text, displayed) until `pred` holds, for at most `within`; returns its text.
    async fn wait_for(
        &self,
        step: &str,
        id: &str,
        what: &str,
        within: Duration,
        pred: impl Fn(&str, bool) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            if let Some((text, shown)) = self.probe(id).await {
                if pred(&text, shown) {
                    return text;
                }
                last = Some((text, shown));
            }
            if Instant::now() >= deadline {
                self.fail(
                    step,
                    format!("#{id} did not become {what} within {within:?} (last: {last:?})"),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_text(
        &self,
        step: &str,
        id: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_for(step, id, what, WAIT, |t, _| pred(t)).await
    }

    /// Waits until `#id` is displayed; returns its text.
    async fn wait_shown(&self, step: &str, id: &str, within: Duration) -> String {
        self.wait_for(step, id, "displayed", within, |_, shown| shown)
            .await
    }

    async fn wait_hidden(&self, step: &str, id: &str) {
        self.wait_for(step, id, "hidden", WAIT, |_, shown| !shown)
            .await;
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

    /// Waits until the browser shows a page whose URL starts with `prefix`; returns the URL.
    async fn wait_url(&self, step: &str, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.url().await;
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

    async fn close(self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    }
}

// ------------------------------------------------------------------ the two setups

/// Which identity provider's login page the browser meets.
#[derive(Clone, Copy)]
enum Idp {
    /// The demo's development IdP: user and password prefilled.
    Dev,
    /// The integration tests' oidc-provider.
    Real,
}

/// Signs in at the IdP's page the browser is on (after the SPA sent it there).
async fn sign_in_at_idp(c: &Chrome, idp: Idp, idp_prefix: &str) {
    c.wait_url("idp-login", idp_prefix).await;
    if let Idp::Real = idp {
        c.type_into("idp-login", "login", "alice").await;
        c.type_into("idp-login", "password", "wonderland").await;
    }
    c.click("idp-login", "sign-in").await;
}

/// Opens the SPA at `spa`, logs in through `idp`, and waits for the user to be shown.
async fn log_in(c: &Chrome, spa: &str, idp: Idp, idp_prefix: &str, user: &str) {
    c.goto("open", spa).await;
    c.wait_text("open", "user", "\"not logged in\"", |t| {
        t == "not logged in"
    })
    .await;
    c.click("open", "login").await;
    sign_in_at_idp(c, idp, idp_prefix).await;
    c.wait_url("logged-in", spa).await;
    c.wait_text("logged-in", "user", &format!("logged in as {user}"), |t| {
        t.starts_with("Logged in as") && t.contains(user)
    })
    .await;
}

/// Serves the demo's pages and the client library (what `[[routes]] prefix = "/"` points at),
/// for the integration setup.
async fn spa_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let spa: &'static str = Box::leak(without_canonical_host(SPA_HTML).into_boxed_str());
    let deep: &'static str = Box::leak(without_canonical_host(DEEP_HTML).into_boxed_str());
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
                let svc = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let (status, ctype, body) = match req.uri().path() {
                            "/" => (200, "text/html; charset=utf-8", spa),
                            "/deep" => (200, "text/html; charset=utf-8", deep),
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
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// The integration setup with the demo's pages at `/` and `/deep`.
async fn real_idp_env() -> (TestEnv, tokio::task::JoinHandle<()>) {
    let (spa, task) = spa_server().await;
    let env = TestEnv::start_with(Opts {
        extra_toml: format!(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://{spa}\"\ntoken = \"none\"\n"
        ),
        ..Opts::default()
    })
    .await;
    (env, task)
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
    let c = Chrome::start("expiring").await;
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
    let c = Chrome::start("cross-tab").await;
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
    sign_in_at_idp(c, idp, idp_prefix).await;
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
    let c = Chrome::start("deep-link-demo").await;
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
    let c = Chrome::start("deep-link-real-idp").await;
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
    let c = Chrome::start("devices").await;

    // "Remember me", then Log in.
    c.goto("open", &d.url).await;
    c.wait_text("open", "user", "\"not logged in\"", |t| {
        t == "not logged in"
    })
    .await;
    c.click("open", "remember").await;
    c.click("open", "login").await;
    sign_in_at_idp(&c, Idp::Dev, d.idp.issuer()).await;
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

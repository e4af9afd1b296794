//! Headless Chromium over WebDriver for the real-browser tests (`browser.rs`, `spa_client.rs`):
//! a `chromedriver` process per test (its own process group, a fresh profile) driven with
//! `fantoccini`, page helpers that wait for the DOM (bounded by [`WAIT`]) and, on a failure,
//! save a screenshot to `target/browser-failures/<test>-<step>.png`; and the demo SPA served
//! for the integration setup ([`real_idp_env`]).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test` installs them). Override the
//! binaries with `CLOAKROOM_CHROMIUM` / `CLOAKROOM_CHROMEDRIVER`.

use crate::support::{Opts, TestEnv};
use bytes::Bytes;
use cloakroom_demo as demo;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long any one thing may take to appear in the page (a bound, not an expectation).
pub(crate) const WAIT: Duration = Duration::from_secs(20);

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

/// With [`Chrome::start_with_flags`], for tests with two tabs: the one in the background keeps
/// running its timers at full speed.
pub(crate) const BACKGROUND_TAB_FLAGS: &[&str] = &[
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
];

const INSTALL: &str = "the browser end-to-end tests need Chromium and chromedriver: \
     `apt-get install -y chromium chromium-driver` (scripts/test installs them when missing), \
     or point CLOAKROOM_CHROMIUM / CLOAKROOM_CHROMEDRIVER at them";

/// `p` as is when absolute, else below the repository's root.
pub(crate) fn manifest_path(p: &str) -> PathBuf {
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

/// chromedriver (its own process group) and a fresh profile; Drop kills and removes both (also
/// when Chromium fails to start: a panic there must not leave chromedriver running).
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

/// A headless Chromium with a fresh profile, behind its own chromedriver. Dropping it kills
/// chromedriver and the browser (one process group) and removes the profile.
pub(crate) struct Chrome {
    pub client: Client,
    /// The test's name, for screenshot file names and failure messages.
    test: String,
    started: Instant,
    _driver: Driver,
}

impl Chrome {
    pub(crate) async fn start(test: &str) -> Self {
        Self::start_with_flags(test, &[]).await
    }

    /// As [`Chrome::start`], with Chromium flags beyond the usual ones.
    pub(crate) async fn start_with_flags(test: &str, extra_flags: &[&str]) -> Self {
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
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("chromedriver log"))
            // Its own process group: Drop kills chromedriver and the Chromium it started.
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
        let mut args: Vec<String> = CHROMIUM_FLAGS
            .iter()
            .chain(extra_flags)
            .map(|s| s.to_string())
            .collect();
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
            test: test.to_string(),
            started,
            _driver: driver,
        }
    }

    /// Saves a screenshot of the page to `target/browser-failures/<test>-<step>.png` and panics
    /// with `msg`, the path, the URL and the page's text.
    pub(crate) async fn fail(&self, step: &str, msg: impl std::fmt::Display) -> ! {
        let dir = manifest_path("target/browser-failures");
        let path = dir.join(format!("{}-{step}.png", self.test));
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
            "[{}] step {step}: {msg}\n  {shot}\n  url: {url}\n  page text:\n{text}",
            self.test
        );
    }

    /// The current page's URL (empty if WebDriver does not say).
    pub(crate) async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    pub(crate) async fn goto(&self, step: &str, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            self.fail(step, format!("cannot open {url}: {e}")).await;
        }
    }

    pub(crate) async fn js(&self, step: &str, script: &str) -> Value {
        match self.client.execute(script, vec![]).await {
            Ok(v) => v,
            Err(e) => {
                self.fail(step, format!("script failed: {e}\n{script}"))
                    .await
            }
        }
    }

    /// `#id`'s text and whether it is displayed (`None`: no such element), read in one script so
    /// that both come from the same moment: two WebDriver calls could see the text of a hidden
    /// element ("") and then the element shown a page update later.
    pub(crate) async fn probe(&self, id: &str) -> Option<(String, bool)> {
        let script = "const el = document.getElementById(arguments[0]); \
                      if (!el) return null; \
                      const shown = el.checkVisibility({ visibilityProperty: true }); \
                      return [shown ? el.innerText.trim() : '', shown];";
        let v = self
            .client
            .execute(script, vec![Value::String(id.to_owned())])
            .await
            .ok()?;
        let text = v.get(0)?.as_str()?.to_owned();
        let shown = v.get(1)?.as_bool()?;
        Some((text, shown))
    }

    /// Polls `#id` (text, displayed) until `pred` holds, for at most `within`; returns its text.
    pub(crate) async fn wait_for(
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

    /// Polls `#id`'s text until `pred` holds (bounded by [`WAIT`]); returns it.
    pub(crate) async fn wait_text(
        &self,
        step: &str,
        id: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_for(step, id, what, WAIT, |t, _| pred(t)).await
    }

    /// Waits until `#id` is displayed; returns its text.
    pub(crate) async fn wait_shown(&self, step: &str, id: &str, within: Duration) -> String {
        self.wait_for(step, id, "displayed", within, |_, shown| shown)
            .await
    }

    pub(crate) async fn wait_hidden(&self, step: &str, id: &str) {
        self.wait_for(step, id, "hidden", WAIT, |_, shown| !shown)
            .await;
    }

    /// Waits for `#id` to be displayed, then clicks it.
    pub(crate) async fn click(&self, step: &str, id: &str) {
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

    /// Waits for an `<input id=…>` (or `name=…`) and returns its current value.
    pub(crate) async fn input_value(&self, step: &str, id: &str) -> String {
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

    pub(crate) async fn type_into(&self, step: &str, id: &str, text: &str) {
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
    pub(crate) async fn wait_url(&self, step: &str, prefix: &str) -> String {
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

    /// The browser's cookies for the current page's host (HttpOnly ones included, as WebDriver
    /// sees them): `(name, http_only)`.
    pub(crate) async fn cookies(&self, step: &str) -> Vec<(String, bool)> {
        match self.client.get_all_cookies().await {
            Ok(cs) => cs
                .iter()
                .map(|c| (c.name().to_string(), c.http_only().unwrap_or(false)))
                .collect(),
            Err(e) => self.fail(step, format!("cannot read cookies: {e}")).await,
        }
    }

    /// Saves the whole page (the window is first grown to the document's height) as a PNG.
    pub(crate) async fn screenshot_to(&self, step: &str, path: &Path) {
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

    /// How long ago [`Chrome::start`] was called.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the WebDriver session (Chromium exits); Drop then stops chromedriver.
    pub(crate) async fn close(self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    }
}

// ------------------------------------------------------------------ the demo SPA in the browser

/// Which identity provider's login page the browser meets.
#[derive(Clone, Copy)]
pub(crate) enum Idp {
    /// The demo's development IdP: user and password prefilled.
    Dev,
    /// The integration tests' oidc-provider (alice / wonderland), as the HTML page server.js
    /// renders for browsers.
    Real,
}

impl Chrome {
    /// Opens the demo SPA at `spa` and waits until it shows nobody logged in.
    pub(crate) async fn open_logged_out(&self, spa: &str) {
        self.goto("open", spa).await;
        self.wait_text("open", "user", "\"not logged in\"", |t| {
            t == "not logged in"
        })
        .await;
    }

    /// Signs in at the IdP's page the browser is on (after the SPA sent it there).
    pub(crate) async fn sign_in_at_idp(&self, idp: Idp, idp_prefix: &str) {
        self.wait_url("idp-login", idp_prefix).await;
        if let Idp::Real = idp {
            self.type_into("idp-login", "login", "alice").await;
            self.type_into("idp-login", "password", "wonderland").await;
        }
        self.click("idp-login", "sign-in").await;
    }

    /// After the IdP sent the browser back: waits for the SPA at `spa` to show `user`.
    pub(crate) async fn wait_logged_in(&self, spa: &str, user: &str) {
        self.wait_url("logged-in", spa).await;
        self.wait_text("logged-in", "user", &format!("logged in as {user}"), |t| {
            t.starts_with("Logged in as") && t.contains(user)
        })
        .await;
    }

    /// Clicks `#call-api` and waits for `#api-status` to show `status`; returns `#api-result`.
    pub(crate) async fn call_api(&self, step: &str, status: &str) -> String {
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

    /// From inside the page: `document.cookie` has no session cookie and no token, and the
    /// Web Storage areas are empty (so hold nothing token-like). `tokens` are the tokens the IdP
    /// issued for this session; none may appear in the page either.
    pub(crate) async fn assert_page_holds_no_secrets(
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
}

// ------------------------------------------------------------------ the demo SPA, served

/// A demo page without the demo's canonical host: the integration setup runs on 127.0.0.1 (the
/// IdP's registered redirect URI), where the demo's pages would move themselves to localhost.
fn without_canonical_host(page: &str) -> String {
    let out = page.replacen(r#" data-canonical-host="localhost""#, "", 1);
    assert_ne!(out, page, "the demo page declares its canonical host");
    out
}

/// The demo's `spa.html`, for the integration setup.
fn spa_html() -> &'static str {
    static HTML: OnceLock<String> = OnceLock::new();
    HTML.get_or_init(|| {
        without_canonical_host(include_str!("../../../../cloakroom-demo/src/spa.html"))
    })
}

/// The demo's `deep.html`, for the integration setup.
fn deep_html() -> &'static str {
    static HTML: OnceLock<String> = OnceLock::new();
    HTML.get_or_init(|| {
        without_canonical_host(include_str!("../../../../cloakroom-demo/src/deep.html"))
    })
}

/// Serves the demo's pages (`/`, `/deep`) and the client library they import, as the demo
/// serves it (what `[[routes]] prefix = "/" token = "none"` points at).
async fn spa_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (spa, deep) = (spa_html(), deep_html());
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

/// The integration setup (Redis, the real IdP) with the demo's pages at `/` and `/deep` of
/// instance 0; abort the task at the end of the test.
pub(crate) async fn real_idp_env() -> (TestEnv, tokio::task::JoinHandle<()>) {
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

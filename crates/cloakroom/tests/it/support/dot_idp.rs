//! The second test IdP: django-oauth-toolkit (`tests/idp-dot/server.py`, written independently
//! of `oidc-provider`), run from the venv `target/idp-dot-venv` that `scripts/test` creates from
//! the pinned `tests/idp-dot/requirements.txt`. The ONE place that knows how to log a test user
//! in there.
//!
//! One process serves the whole test binary ([`DotIdp::shared`], started on first use). Each
//! [`super::TestEnv`] registers its own client (its callback URLs are known only once its
//! listeners are bound) and its own copies of the test users: an RP-initiated logout at DOT
//! deletes every token of the user, whichever client holds it, so tests running in parallel
//! must not share a user. The process ends when the test binary does: it exits when its
//! standard input, a pipe only this process holds, reaches end-of-file.

use super::browser::Browser;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The shared DOT process.
pub(crate) struct DotIdp {
    /// `http://127.0.0.1:<port>/o` (DOT mounted under `/o/`, as its docs do it).
    pub issuer: String,
    /// `http://127.0.0.1:<port>`, for the login form and the `/test/*` controls.
    pub origin: String,
    /// The IdP's stderr (kept for debugging a failed test).
    pub log_path: PathBuf,
    /// Guards the `/test/*` controls (`X-Test-Token`).
    token: String,
    /// Never dropped (a static): the child lives until this process exits.
    _child: Child,
    /// Held open: its end-of-file, when this process exits, stops the server.
    _stdin: ChildStdin,
}

/// What `TestEnv` holds for a DOT environment: the shared IdP and this env's client.
pub(crate) struct DotEnv {
    pub idp: &'static DotIdp,
    pub client_id: String,
    pub secret: String,
    /// The test's user names (`alice`, `bob`) → this env's own user at DOT: (username, sub).
    users: BTreeMap<String, (String, String)>,
}

/// Every DOT client's secret: 32 bytes or more, as jwcrypto insists for a client whose ID tokens
/// are HS256 (signed with the secret); DOT's own generated secrets are 128 characters.
pub(crate) const CLIENT_SECRET: &str = "test-dot-client-secret-0123456789abcdef";

/// The test users every env gets its own copy of: (name, password, full name, email).
const USERS: [(&str, &str, &str, &str); 2] = [
    ("alice", "wonderland", "Alice Liddell", "alice@example.test"),
    ("bob", "builder", "Bob Builder", "bob@example.test"),
];

fn venv_python() -> PathBuf {
    std::env::var_os("CLOAKROOM_DOT_VENV")
        .map_or_else(
            || super::repo_root().join("target/idp-dot-venv"),
            PathBuf::from,
        )
        .join("bin/python")
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(12)..].join("\n");
    format!("{tail}\n({})", path.display())
}

impl DotIdp {
    /// The shared process, started on first use. Panics, saying what to install, when it
    /// cannot start.
    pub(crate) fn shared() -> &'static Self {
        static DOT: OnceLock<Result<DotIdp, String>> = OnceLock::new();
        match DOT.get_or_init(Self::start) {
            Ok(d) => d,
            Err(e) => panic!("the DOT test IdP (tests/idp-dot) did not start: {e}"),
        }
    }

    fn start() -> Result<Self, String> {
        let python = venv_python();
        if !python.exists() {
            return Err(format!(
                "{} is missing. `scripts/test` creates the venv (python3 -m venv, needs Debian's \
                 python3-venv) and installs tests/idp-dot/requirements.txt into it; by hand: \
                 `python3 -m venv target/idp-dot-venv && target/idp-dot-venv/bin/pip install -r \
                 tests/idp-dot/requirements.txt`",
                python.display()
            ));
        }
        let dir = std::env::temp_dir().join(format!("cloakroom-dot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log_path = dir.join("server.log");
        let token = cloakroom::crypto::random_token();
        let mut child = Command::new(&python)
            .arg(super::repo_root().join("tests/idp-dot/server.py"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--port", "0"])
            .env("DOT_TEST_TOKEN", &token)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&log_path).map_err(|e| format!("log file: {e}"))?,
            ))
            .spawn()
            .map_err(|e| format!("cannot run {} ({e})", python.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let mut sink = String::new();
            while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        // Migrations and an RSA key at start: a few seconds on a busy machine.
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_default();
        let Some(issuer) = line.trim().strip_prefix("READY ").map(String::from) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "no READY line within 60 s (it said {line:?}); its log ends with:\n{}",
                log_tail(&log_path)
            ));
        };
        let origin = issuer
            .strip_suffix("/o")
            .ok_or_else(|| format!("unexpected issuer {issuer}"))?
            .to_string();
        Ok(Self {
            issuer,
            origin,
            log_path,
            token,
            _child: child,
            _stdin: stdin,
        })
    }

    /// A URL on the IdP.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// The end of the log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// Registers a confidential client (consent skipped) with these callback URLs, and this
    /// env's own copies of the test users; `extra` adds keys to the registration (e.g.
    /// `algorithm`, see server.py's `/test/clients`).
    pub(crate) async fn register(
        &'static self,
        secret: &str,
        redirect_uris: &[String],
        post_logout_redirect_uris: &[String],
        access_token_ttl: u64,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> DotEnv {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let client_id = format!("cloakroom-{n}");
        let users: Vec<serde_json::Value> = USERS
            .iter()
            .map(|(name, password, full, email)| {
                serde_json::json!({
                    "username": format!("{name}-{n}"),
                    "password": password,
                    "name": full,
                    "email": email,
                })
            })
            .collect();
        let mut registration = serde_json::json!({
            "client_id": client_id,
            "client_secret": secret,
            "redirect_uris": redirect_uris,
            "post_logout_redirect_uris": post_logout_redirect_uris,
            "access_token_ttl": access_token_ttl,
            "users": users,
        });
        for (k, v) in extra {
            registration[k] = v.clone();
        }
        let r = reqwest::Client::new()
            .post(self.url("/test/clients"))
            .header("x-test-token", &self.token)
            .json(&registration)
            .send()
            .await
            .expect("DOT client registration");
        assert_eq!(r.status(), 201, "registration: {}", self.log_tail());
        let v: serde_json::Value = r.json().await.expect("registration JSON");
        let users = USERS
            .iter()
            .map(|(name, ..)| {
                let username = format!("{name}-{n}");
                let sub = v["subs"][&username].as_str().expect("sub").to_string();
                ((*name).to_string(), (username, sub))
            })
            .collect();
        DotEnv {
            idp: self,
            client_id,
            secret: secret.to_string(),
            users,
        }
    }
}

/// `&amp;` and friends, as an HTML attribute value holds them.
fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The value of the `<input name="{name}" … value="…">` in `html`.
fn input_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag_end = at + html[at..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let v = tag.split("value=\"").nth(1)?;
    Some(html_unescape(&v[..v.find('"')?]))
}

impl DotEnv {
    /// This env's username for the test user `user` (`alice`, `bob`).
    pub(crate) fn username(&self, user: &str) -> &str {
        &self
            .users
            .get(user)
            .unwrap_or_else(|| panic!("no DOT user {user}"))
            .0
    }

    /// The `sub` DOT gives the test user `user` (its database id, as a string).
    pub(crate) fn sub(&self, user: &str) -> &str {
        &self
            .users
            .get(user)
            .unwrap_or_else(|| panic!("no DOT user {user}"))
            .1
    }

    /// `loc` (a `Location`, often relative at DOT) as an absolute URL.
    pub(crate) fn absolute(&self, loc: &str) -> String {
        if loc.starts_with('/') {
            self.idp.url(loc)
        } else {
            loc.to_string()
        }
    }

    /// Follows DOT's login from the authorization URL to our callback URL as the test user
    /// `user`: `/o/authorize/` sends the browser to Django's `LoginView` form at
    /// `/accounts/login/?next=…`; the form is posted with its `csrfmiddlewaretoken` and `next`;
    /// `next` is the authorization request again, which (consent skipped) redirects to the
    /// callback. Over a live DOT session there is no form. Returns the callback URL.
    pub(crate) async fn login(
        &self,
        browser: &mut Browser,
        authorize_url: &str,
        user: &str,
        password: &str,
    ) -> String {
        let mut r = browser.get(authorize_url).await;
        for _ in 0..6 {
            assert_eq!(
                r.status,
                302,
                "DOT {}: {}\n{}",
                authorize_url,
                r.body,
                self.idp.log_tail()
            );
            let loc = self.absolute(&r.location());
            if !loc.starts_with(&self.idp.origin) {
                return loc;
            }
            if loc.starts_with(&self.idp.url("/accounts/login/")) {
                let page = browser.get(&loc).await;
                assert_eq!(page.status, 200, "login page: {}", page.body);
                let csrf = input_value(&page.body, "csrfmiddlewaretoken").expect("CSRF field");
                let next = input_value(&page.body, "next").expect("next field");
                r = browser
                    .post_form(
                        &loc,
                        &[
                            ("csrfmiddlewaretoken", &csrf),
                            ("username", self.username(user)),
                            ("password", password),
                            ("next", &next),
                        ],
                    )
                    .await;
                assert_eq!(r.status, 302, "login refused (wrong password?): {}", r.body);
            } else {
                r = browser.get(&loc).await;
            }
        }
        panic!("DOT never redirected back");
    }

    /// Follows an end-session URL (Cloakroom's logout answer) at DOT: with a valid
    /// `id_token_hint` for the logged-in user DOT asks nothing, ends its session, deletes the
    /// user's tokens and redirects to the `post_logout_redirect_uri`, which it returns.
    pub(crate) async fn end_session(&self, browser: &mut Browser, url: &str) -> String {
        assert!(url.starts_with(&self.idp.url("/o/logout/")), "{url}");
        let r = browser.get(url).await;
        assert_eq!(
            r.status,
            302,
            "end_session: {}\n{}",
            r.body,
            self.idp.log_tail()
        );
        r.location()
    }

    /// The IdP's counters for this client and how many of its tokens are live:
    /// `{"counters": {"token_requests.refresh_token": n, "token_refused.refresh_token": n,
    /// "revocations": n, …}, "live_access_tokens": n, "live_refresh_tokens": n,
    /// "revoked_refresh_tokens": n}`.
    pub(crate) async fn stats(&self) -> serde_json::Value {
        let r = reqwest::Client::new()
            .get(
                self.idp
                    .url(&format!("/test/stats?client_id={}", self.client_id)),
            )
            .header("x-test-token", &self.idp.token)
            .send()
            .await
            .expect("DOT stats");
        assert_eq!(r.status(), 200);
        r.json().await.expect("DOT stats JSON")
    }

    /// One counter of [`DotEnv::stats`] (0 when it never counted).
    pub(crate) async fn counter(&self, name: &str) -> u64 {
        self.stats().await["counters"][name].as_u64().unwrap_or(0)
    }

    /// RFC 7662 introspection of an access token with this client's credentials (DOT's
    /// introspection knows access tokens only).
    pub(crate) async fn introspect(&self, token: &str) -> serde_json::Value {
        reqwest::Client::new()
            .post(self.idp.url("/o/introspect/"))
            .basic_auth(&self.client_id, Some(&self.secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection")
            .json()
            .await
            .expect("introspection JSON")
    }

    /// A refresh-token grant straight at DOT with this client's credentials: (status, body).
    pub(crate) async fn try_refresh(&self, rt: &str) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(self.idp.url("/o/token/"))
            .basic_auth(&self.client_id, Some(&self.secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
            .send()
            .await
            .expect("token request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    /// Waits (at most 10 s) until none of this client's refresh tokens is live and at least
    /// `revocations` revocation requests succeeded (revocation runs after the logout answer).
    pub(crate) async fn wait_revoked(&self, revocations: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = self.stats().await;
            let done = s["live_refresh_tokens"] == 0
                && s["counters"]["revocations"].as_u64().unwrap_or(0) >= revocations;
            if done {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the tokens were not revoked within 10 s: {s}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// What the provider-neutral core suite (`matrix::core`) asks of the env's IdP, for either one.
impl super::TestEnv {
    /// The `sub` the IdP gives the test user `user`: oidc-provider uses the user name, DOT
    /// the user's database id.
    pub(crate) fn sub_of(&self, user: &str) -> String {
        match &self.dot {
            Some(d) => d.sub(user).to_string(),
            None => user.to_string(),
        }
    }

    /// Refresh-token grants the IdP was asked for (answered or refused).
    pub(crate) async fn refresh_grants(&self) -> u64 {
        match &self.dot {
            Some(d) => d.counter("token_requests.refresh_token").await,
            None => self.idp.stat(&["token_requests", "refresh_token"]).await,
        }
    }

    /// Refresh grants the IdP refused as a reuse (oidc-provider tells reuse apart; DOT's
    /// `invalid_grant` does not, so every refused refresh counts).
    pub(crate) async fn refresh_reuses(&self) -> u64 {
        match &self.dot {
            Some(d) => d.counter("token_refused.refresh_token").await,
            None => self.idp.stat(&["refresh_reuse"]).await,
        }
    }

    /// Revocation requests the IdP answered.
    pub(crate) async fn revocations(&self) -> u64 {
        match &self.dot {
            Some(d) => d.counter("revocations").await,
            None => self.idp.stat(&["revocations"]).await,
        }
    }

    /// Waits until the refresh token `rt` was revoked at the IdP (it runs after the logout
    /// answer). At DOT: none of the client's refresh tokens is live, after a revocation call.
    pub(crate) async fn wait_rt_revoked(&self, rt: &str) {
        match &self.dot {
            Some(d) => d.wait_revoked(1).await,
            None => self.idp.wait_revoked(rt).await,
        }
    }
}

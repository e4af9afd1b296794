//! The real IdP (npm `oidc-provider`, from `tests/idp/`), and the ONE place that knows how to
//! log a test user in there.

use super::browser::Browser;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub(crate) struct Idp {
    pub issuer: String,
    /// The IdP's own address, for the `/test/*` controls and direct token calls, even when the
    /// issuer is a fault proxy in front of it.
    pub direct: String,
    /// The IdP's stderr (kept for debugging a failed test).
    pub log_path: PathBuf,
    child: Child,
}

/// The last lines of an IdP's log, for a failure message that says why without the file.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n");
    format!("{tail:?} ({})", path.display())
}

fn idp_dir() -> PathBuf {
    super::repo_root().join("tests/idp")
}

/// `npm ci` once per test process when `node_modules` is missing.
fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = idp_dir();
        if dir.join("node_modules/oidc-provider").exists() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run npm ({e}). The integration tests need Node.js ≥ 20.12 with npm: `apt-get install nodejs npm`")
            });
        assert!(status.success(), "`npm ci` in tests/idp failed");
    });
}

impl Idp {
    /// Starts the IdP with `config` (the IDP_CONFIG JSON, see tests/idp/README.md) once.
    ///
    /// Node has been seen (rarely, under load) to hang at start-up in a futex before writing its
    /// READY line, and a fixed `port` chosen free can be taken (by another test's outgoing
    /// connection) before node binds it. Callers retry with a fresh port: see
    /// `TestEnv::start_idp`.
    pub(crate) fn start_once(config: &serde_json::Value) -> Result<Self, String> {
        ensure_installed();
        Self::try_start(config)
    }

    fn try_start(config: &serde_json::Value) -> Result<Self, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log_path = std::env::temp_dir().join(format!(
            "cloakroom-idp-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let mut child = Command::new("node")
            .arg(idp_dir().join("server.js"))
            .env("IDP_CONFIG", config.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&log_path).expect("IdP log file"),
            ))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start node ({e}). The integration tests need Node.js ≥ 20.12: `apt-get install nodejs npm`")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        // Read the READY line on a thread, then keep draining stdout there: oidc-provider also
        // prints notices to stdout, and the IdP dies of EPIPE if nobody reads them.
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
        let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "no READY line within 30 s; its log ends with: {}",
                log_tail(&log_path)
            ));
        };
        let Some(issuer) = line.trim().strip_prefix("READY ").map(String::from) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "it said {line:?}; its log ends with: {}",
                log_tail(&log_path)
            ));
        };
        let direct = config["port"].as_u64().map_or_else(
            || issuer.trim_end_matches('/').to_string(),
            |p| format!("http://127.0.0.1:{p}"),
        );
        Ok(Self {
            issuer,
            direct,
            log_path,
            child,
        })
    }

    /// A URL on the IdP itself (never through a fault proxy).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.direct)
    }

    /// Follows the IdP's login from the authorization URL to our callback URL, logging in as
    /// `user`/`password`. Returns the callback URL the IdP redirected to.
    pub(crate) async fn login(
        &self,
        browser: &mut Browser,
        authorize_url: &str,
        user: &str,
        password: &str,
    ) -> String {
        self.login_with(browser, authorize_url, user, password, &[])
            .await
            .0
    }

    /// As [`Idp::login`], with extra fields for the login form (e.g. `acr`, `auth_age`); also
    /// says whether the IdP asked for a login at all (it does not over a live IdP session
    /// whose authentication satisfies the request).
    pub(crate) async fn login_with(
        &self,
        browser: &mut Browser,
        authorize_url: &str,
        user: &str,
        password: &str,
        extra: &[(&str, &str)],
    ) -> (String, bool) {
        let r = browser.get(authorize_url).await;
        assert_eq!(r.status, 303, "authorize: {}", r.body);
        let mut loc = self.absolute(&r.location());
        let asked = loc.contains("/interaction/");
        if asked {
            let mut form = vec![("login", user), ("password", password)];
            form.extend_from_slice(extra);
            let r = browser.post_form(&format!("{loc}/login"), &form).await;
            assert_eq!(r.status, 303, "interaction login: {}", r.body);
            loc = self.absolute(&r.location());
        }
        // Follow the IdP's own redirects until it sends the browser back to us.
        for _ in 0..5 {
            if !loc.starts_with(&self.issuer) {
                return (loc, asked);
            }
            let r = browser.get(&loc).await;
            assert!(
                r.status == 303 || r.status == 302,
                "idp redirect {loc}: {} {}",
                r.status,
                r.body
            );
            loc = self.absolute(&r.location());
        }
        panic!("the IdP never redirected back (last: {loc})");
    }

    /// Drives an RP-initiated logout at `end_session_url` to the end (confirming at the IdP).
    pub(crate) async fn end_session(&self, browser: &mut Browser, end_session_url: &str) -> String {
        let r = browser.get(end_session_url).await;
        assert_eq!(r.status, 200, "end_session: {}", r.body);
        let form: serde_json::Value = serde_json::from_str(&r.body).expect("logout form JSON");
        let action = form["action"].as_str().expect("action").to_string();
        let fields: Vec<(String, String)> = form["fields"]
            .as_object()
            .expect("fields")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = browser.post_form(&action, &refs).await;
        assert_eq!(r.status, 303, "end_session confirm: {}", r.body);
        r.location()
    }

    pub(crate) fn absolute(&self, loc: &str) -> String {
        if loc.starts_with('/') {
            format!("{}{loc}", self.issuer.trim_end_matches('/'))
        } else {
            loc.to_string()
        }
    }

    pub(crate) async fn stats(&self) -> serde_json::Value {
        reqwest::get(self.url("/test/stats"))
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// RFC 7662 introspection with the client's credentials.
    pub(crate) async fn introspect(
        &self,
        client_id: &str,
        secret: &str,
        token: &str,
    ) -> serde_json::Value {
        reqwest::Client::new()
            .post(self.url("/token/introspection"))
            .basic_auth(client_id, Some(secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection")
            .json()
            .await
            .expect("introspection json")
    }

    /// One counter of `/test/stats`, by path (e.g. `["token_requests", "refresh_token"]`).
    pub(crate) async fn stat(&self, path: &[&str]) -> u64 {
        let mut v = self.stats().await;
        for p in path {
            v = v[*p].take();
        }
        v.as_u64().unwrap_or(0)
    }

    /// Waits (at most 15 s) until counter `path` is at least `at_least`; returns its value.
    /// For effects that happen after a response (a background refresh or revocation).
    pub(crate) async fn wait_stat(&self, path: &[&str], at_least: u64) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let n = self.stat(path).await;
            if n >= at_least || std::time::Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most 10 s) until `token` introspects as inactive — revocation runs after the
    /// response that ended its session. Panics with `what` if it stays active.
    pub(crate) async fn wait_inactive(
        &self,
        client_id: &str,
        secret: &str,
        token: &str,
        what: &str,
    ) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.introspect(client_id, secret, token).await["active"] == true {
            assert!(std::time::Instant::now() < deadline, "{what}: still active");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most 10 s) until `token` was revoked (answered 200 at `/token/revocation`).
    pub(crate) async fn wait_revoked(&self, token: &str) {
        use sha2::Digest;
        let h = super::upstream::hex(&sha2::Sha256::digest(token.as_bytes()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stats = self.stats().await;
            if stats["revoked_tokens"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == &serde_json::Value::String(h.clone())))
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the token was not revoked within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// `none`, `503` or `reset` (see tests/idp/README.md).
    pub(crate) async fn outage(&self, mode: &str) {
        let r = reqwest::Client::new()
            .post(self.url(&format!("/test/outage?mode={mode}")))
            .send()
            .await
            .expect("outage control");
        assert!(r.status().is_success());
    }

    /// Signs `payload` with the IdP's own key (header overrides merged in).
    pub(crate) async fn sign(
        &self,
        payload: &serde_json::Value,
        header: &serde_json::Value,
    ) -> String {
        let v: serde_json::Value = reqwest::Client::new()
            .post(self.url("/test/sign"))
            .json(&serde_json::json!({"payload": payload, "header": header}))
            .send()
            .await
            .expect("sign")
            .json()
            .await
            .expect("sign json");
        v["jwt"].as_str().expect("jwt").to_string()
    }

    /// Tries a refresh-token grant directly at the IdP; returns (status, body).
    pub(crate) async fn try_refresh(
        &self,
        client_id: &str,
        secret: &str,
        rt: &str,
    ) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(self.url("/token"))
            .basic_auth(client_id, Some(secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
            .send()
            .await
            .expect("token request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    /// Revokes a token at the IdP (RFC 7009).
    pub(crate) async fn revoke(&self, client_id: &str, secret: &str, token: &str) {
        let r = reqwest::Client::new()
            .post(self.url("/token/revocation"))
            .basic_auth(client_id, Some(secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("revocation");
        assert!(r.status().is_success());
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.kill();
    }
}

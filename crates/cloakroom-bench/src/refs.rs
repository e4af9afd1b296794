//! The side-by-side references of issue #13, run by the benchmark as child processes of their
//! own (no system service) in front of the same upstream as Cloakroom:
//!
//! - `nginx`: nginx as a plain reverse proxy, the floor: the cookie dropped, a constant bearer
//!   attached, kept-alive upstream connections (`refs/nginx/nginx.conf`);
//! - `apache`: Apache httpd 2.4 + mod_proxy, no authentication, the same header changes
//!   (`refs/apache/httpd-common.conf` + `proxy.conf`);
//! - `apache-oidc`: Apache httpd + mod_auth_openidc, the incumbent: logged in through the same
//!   test IdP as Cloakroom (a client of its own in the IdP configuration the benchmark passes),
//!   sessions server-side in the benchmark's Redis, encrypted (`OIDCCacheEncrypt On`), the access
//!   token forwarded as the bearer (`httpd-common.conf` + `oidc.conf`).
//!
//! The configuration files are templates: every `{{NAME}}` is replaced here at run time (ports,
//! paths, worker counts, secrets). Before the load, [`Refs::check`] proves each one forwards
//! what it should (a bearer, no cookie; mod_auth_openidc's bearer valid at the IdP; no session,
//! a redirect to the IdP), so the figures measure the intended path.

use crate::procs::{self, Server};
use crate::upstream::Upstream;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const NGINX_CONF: &str = include_str!("../refs/nginx/nginx.conf");
const APACHE_COMMON: &str = include_str!("../refs/apache/httpd-common.conf");
const APACHE_PROXY: &str = include_str!("../refs/apache/proxy.conf");
const APACHE_OIDC: &str = include_str!("../refs/apache/oidc.conf");

/// mod_auth_openidc's client at the test IdP (registered through the benchmark's IDP_CONFIG).
pub(crate) const OIDC_CLIENT_ID: &str = "bench-apache-oidc";
const OIDC_CLIENT_SECRET: &str = "bench-apache-oidc-secret-0123456789";
const OIDC_SESSION_COOKIE: &str = "mod_auth_openidc_session";
/// The bearer nginx and Apache without authentication attach: a constant.
pub(crate) const BEARER: &str = "bench-constant-access-token-0123456789";
/// Threads per Apache child process (`ThreadsPerChild`).
const APACHE_THREADS: usize = 64;

/// The references' scenario ids, in the order each round runs them (`--only` takes these, or
/// `refs` for all three).
pub(crate) const IDS: [&str; 3] = ["nginx", "apache", "apache-oidc"];

pub(crate) fn title(id: &str) -> &'static str {
    match id {
        "nginx" => "reference: nginx, plain reverse proxy (cookie dropped, constant bearer)",
        "apache" => "reference: Apache httpd + mod_proxy, no authentication (cookie dropped, constant bearer)",
        _ => "reference: Apache httpd + mod_auth_openidc, sessions in Redis (encrypted)",
    }
}

/// What the report says about the references.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RefsInfo {
    /// Versions detected at run time (`nginx -v`, `apache2 -v`, the module's own string).
    pub versions: BTreeMap<String, String>,
    pub nginx_workers: usize,
    pub apache_processes: usize,
    pub apache_threads_per_process: usize,
    /// Real logins through Apache + mod_auth_openidc and the IdP; its runs rotate over them.
    pub oidc_sessions: usize,
    pub oidc_login_seconds: f64,
    /// What was checked before the load (every one must pass, or the run fails).
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Check {
    pub what: String,
    pub passed: bool,
    pub detail: String,
}

/// The ports of the three servers; mod_auth_openidc's must be known before the IdP starts (its
/// redirect URI is registered there).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub nginx: u16,
    pub apache: u16,
    pub oidc: u16,
}

impl Ports {
    pub(crate) fn free() -> Self {
        Self {
            nginx: procs::free_port(),
            apache: procs::free_port(),
            oidc: procs::free_port(),
        }
    }
}

/// mod_auth_openidc's client for the test IdP's `clients`.
pub(crate) fn idp_client(ports: Ports) -> serde_json::Value {
    serde_json::json!({
        "client_id": OIDC_CLIENT_ID,
        "client_secret": OIDC_CLIENT_SECRET,
        "redirect_uris": [format!("http://127.0.0.1:{}/oidc/callback", ports.oidc)],
        "token_endpoint_auth_method": "client_secret_basic",
    })
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // Not on a non-root user's PATH on Debian.
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    names
        .iter()
        .find_map(|n| dirs.iter().map(|d| d.join(n)).find(|p| p.is_file()))
}

/// The programs and Apache modules the references need.
pub(crate) struct Binaries {
    nginx: PathBuf,
    apache: PathBuf,
    modules: PathBuf,
}

const INSTALL: &str = "scripts/bench and scripts/test install them when missing: apt-get install \
    nginx-light apache2 libapache2-mod-auth-openidc; or run without the references: --no-refs";

/// Finds nginx, apache2 (or httpd) and the modules in `modules`, or says what is missing.
pub(crate) fn find(modules: &Path) -> Result<Binaries, String> {
    let mut missing = Vec::new();
    let nginx = which(&["nginx"]);
    if nginx.is_none() {
        missing.push("nginx".to_string());
    }
    let apache = which(&["apache2", "httpd"]);
    if apache.is_none() {
        missing.push("apache2".to_string());
    }
    for m in [
        "mod_mpm_event.so",
        "mod_authn_core.so",
        "mod_authz_core.so",
        "mod_authz_user.so",
        "mod_headers.so",
        "mod_env.so",
        "mod_proxy.so",
        "mod_proxy_http.so",
        "mod_auth_openidc.so",
    ] {
        if !modules.join(m).is_file() {
            missing.push(format!("{}/{m}", modules.display()));
        }
    }
    match (nginx, apache) {
        (Some(nginx), Some(apache)) if missing.is_empty() => Ok(Binaries {
            nginx,
            apache,
            modules: modules.to_path_buf(),
        }),
        _ => Err(format!(
            "the nginx and Apache references need {} ({INSTALL})",
            missing.join(", ")
        )),
    }
}

/// `mod_auth_openidc-<version>`, as the module names itself in its binary.
fn module_version(so: &Path) -> String {
    let Ok(bytes) = std::fs::read(so) else {
        return "unknown".into();
    };
    let tag = b"mod_auth_openidc-";
    bytes
        .windows(tag.len())
        .position(|w| w == tag)
        .map(|i| {
            let rest = &bytes[i + tag.len()..];
            let end = rest
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-'))
                .unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn versions(b: &Binaries) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let nginx = crate::report::first_line(&b.nginx, &["-v"]).unwrap_or_default();
    m.insert(
        "nginx".into(),
        nginx
            .strip_prefix("nginx version: ")
            .unwrap_or(&nginx)
            .to_string(),
    );
    let apache = crate::report::first_line(&b.apache, &["-v"]).unwrap_or_default();
    m.insert(
        "apache httpd".into(),
        format!(
            "{}, mpm_event",
            apache.strip_prefix("Server version: ").unwrap_or(&apache)
        ),
    );
    m.insert(
        "mod_auth_openidc".into(),
        module_version(&b.modules.join("mod_auth_openidc.so")),
    );
    m
}

/// Replaces every `{{NAME}}` of `template`; an unknown one left over is an error.
fn render(template: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    match s.find("{{") {
        Some(i) => Err(format!(
            "reference config: unknown placeholder {}",
            &s[i..s.len().min(i + 40)]
        )),
        None => Ok(s),
    }
}

/// When started as root, nginx's and Apache's workers switch to this user and group.
fn run_as() -> Option<(&'static str, &'static str)> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0");
    if !root {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    Some(if passwd.lines().any(|l| l.starts_with("www-data:")) {
        ("www-data", "www-data")
    } else {
        ("nobody", "nogroup")
    })
}

/// The running references (each `None` when `--only` left it out).
pub(crate) struct Refs {
    pub ports: Ports,
    pub nginx: Option<Server>,
    pub apache: Option<Server>,
    pub oidc: Option<Server>,
    /// mod_auth_openidc's session cookies (`mod_auth_openidc_session=…`), one per real login.
    pub oidc_cookies: Vec<String>,
    pub info: RefsInfo,
}

/// What the references run against.
pub(crate) struct Env<'a> {
    pub dir: &'a Path,
    pub upstream: SocketAddr,
    pub issuer: &'a str,
    pub redis_port: u16,
    pub access_log: &'a str,
}

impl Refs {
    /// Starts the references `wanted` (ids of [`IDS`]).
    pub(crate) fn start(
        bins: &Binaries,
        ports: Ports,
        env: &Env<'_>,
        wanted: &[&str],
    ) -> Result<Self, String> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let info = RefsInfo {
            versions: versions(bins),
            nginx_workers: workers,
            apache_processes: workers,
            apache_threads_per_process: APACHE_THREADS,
            ..RefsInfo::default()
        };
        let user = run_as();
        let up = env.upstream.to_string();
        let mut refs = Refs {
            ports,
            nginx: None,
            apache: None,
            oidc: None,
            oidc_cookies: Vec::new(),
            info,
        };
        if wanted.contains(&"nginx") {
            let dir = env.dir.join("nginx");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let conf = render(
                NGINX_CONF,
                &[
                    (
                        "RUN_AS",
                        user.map_or_else(
                            || "# not root: the workers run as this user".into(),
                            |(u, g)| format!("user {u} {g};"),
                        ),
                    ),
                    ("WORKERS", workers.to_string()),
                    ("DIR", dir.display().to_string()),
                    ("ACCESS_LOG", env.access_log.into()),
                    ("UPSTREAM", up.clone()),
                    ("PORT", ports.nginx.to_string()),
                    ("BEARER", BEARER.into()),
                ],
            )?;
            let path = dir.join("nginx.conf");
            std::fs::write(&path, conf).map_err(|e| e.to_string())?;
            refs.nginx = Some(Server::spawn(
                "nginx",
                Command::new(&bins.nginx)
                    .arg("-p")
                    .arg(format!("{}/", dir.display()))
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(&path)
                    .args(["-g", "daemon off;"]),
                ports.nginx,
                &dir.join("nginx.out"),
            )?);
        }
        let passphrase = cloakroom::crypto::random_token();
        for (id, port, extra) in [
            ("apache", ports.apache, APACHE_PROXY),
            ("apache-oidc", ports.oidc, APACHE_OIDC),
        ] {
            if !wanted.contains(&id) {
                continue;
            }
            let dir = env.dir.join(id);
            std::fs::create_dir_all(dir.join("run")).map_err(|e| e.to_string())?;
            let conf = render(
                &format!("{APACHE_COMMON}{extra}"),
                &[
                    ("DIR", dir.display().to_string()),
                    ("PORT", port.to_string()),
                    ("MODULES", bins.modules.display().to_string()),
                    (
                        "RUN_AS",
                        user.map_or_else(
                            || "# not root: the children run as this user".into(),
                            |(u, g)| format!("User {u}\nGroup {g}"),
                        ),
                    ),
                    ("SERVERS", workers.to_string()),
                    ("MAX_WORKERS", (workers * APACHE_THREADS).to_string()),
                    ("ACCESS_LOG", env.access_log.into()),
                    ("UPSTREAM", up.clone()),
                    ("BEARER", BEARER.into()),
                    ("ISSUER", env.issuer.into()),
                    ("CLIENT_ID", OIDC_CLIENT_ID.into()),
                    ("CLIENT_SECRET", OIDC_CLIENT_SECRET.into()),
                    ("PASSPHRASE", passphrase.clone()),
                    ("REDIS", format!("127.0.0.1:{}", env.redis_port)),
                ],
            )?;
            let path = dir.join("httpd.conf");
            std::fs::write(&path, conf).map_err(|e| e.to_string())?;
            let server = Server::spawn(
                id,
                Command::new(&bins.apache)
                    .arg("-f")
                    .arg(&path)
                    .arg("-DFOREGROUND"),
                port,
                &dir.join("httpd.out"),
            )?;
            if id == "apache" {
                refs.apache = Some(server);
            } else {
                refs.oidc = Some(server);
            }
        }
        Ok(refs)
    }

    /// The base URL of a reference.
    pub(crate) fn base(&self, id: &str) -> String {
        let port = match id {
            "nginx" => self.ports.nginx,
            "apache" => self.ports.apache,
            _ => self.ports.oidc,
        };
        format!("http://127.0.0.1:{port}")
    }

    pub(crate) fn server(&mut self, id: &str) -> Option<&mut Server> {
        match id {
            "nginx" => self.nginx.as_mut(),
            "apache" => self.apache.as_mut(),
            _ => self.oidc.as_mut(),
        }
    }

    /// `n` real logins through Apache + mod_auth_openidc and the IdP (when it runs).
    pub(crate) async fn login(
        &mut self,
        http: &reqwest::Client,
        issuer: &str,
        n: usize,
    ) -> Result<(), String> {
        if self.oidc.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let start = format!("{}/api/bench", self.base("apache-oidc"));
        self.oidc_cookies =
            crate::seed::login_many_at(http, &start, issuer, OIDC_SESSION_COOKIE, n.max(1))
                .await
                .map_err(|e| format!("login through Apache + mod_auth_openidc: {e}"))?;
        self.info.oidc_sessions = self.oidc_cookies.len();
        self.info.oidc_login_seconds = started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Checks that every running reference forwards what it should; fails the run otherwise.
    pub(crate) async fn check(
        &mut self,
        http: &reqwest::Client,
        upstream: &Upstream,
        issuer: &str,
        cloakroom_cookie: &str,
    ) -> Result<(), String> {
        let mut checks = Vec::new();
        for id in ["nginx", "apache"] {
            if self.server(id).is_none() {
                continue;
            }
            let url = format!("{}/public/bench", self.base(id));
            let (status, seen) = through(http, upstream, &url, Some(cloakroom_cookie)).await;
            let auth = seen.as_ref().and_then(|s| s.authorization.clone());
            let cookie = seen.as_ref().and_then(|s| s.cookie.clone());
            checks.push(Check {
                what: format!("{id}: a request with a cookie reaches the upstream with the constant bearer and no cookie"),
                passed: status == 200
                    && auth.as_deref() == Some(&format!("Bearer {BEARER}"))
                    && cookie.is_none(),
                detail: format!("status {status}, Authorization {auth:?}, Cookie {cookie:?}"),
            });
        }
        if self.oidc.is_some() {
            let url = format!("{}/api/bench", self.base("apache-oidc"));
            // Without a session: sent to the IdP to log in (so the runs below are the
            // authenticated path).
            let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let loc = r
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let status = r.status().as_u16();
            checks.push(Check {
                what: "apache-oidc: a request without a session is redirected to the IdP's authorization endpoint".into(),
                passed: r.status().is_redirection() && loc.starts_with(&format!("{issuer}/auth?")),
                detail: format!(
                    "status {status}, Location {}…",
                    &loc[..loc.len().min(60)]
                ),
            });
            let first = self.oidc_cookies.first().cloned().unwrap_or_default();
            let (status, seen) = through(http, upstream, &url, Some(&first)).await;
            let auth = seen.as_ref().and_then(|s| s.authorization.clone());
            let cookie = seen.as_ref().and_then(|s| s.cookie.clone());
            let token = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .filter(|t| !t.is_empty() && *t != BEARER);
            // The bearer is the access token the IdP issued to this login: its userinfo
            // endpoint answers for alice.
            let who = match token {
                Some(t) => http
                    .get(format!("{issuer}/me"))
                    .bearer_auth(t)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success()),
                None => None,
            };
            let sub = match who {
                Some(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["sub"].as_str().map(str::to_string)),
                None => None,
            };
            checks.push(Check {
                what: "apache-oidc: with a session, the upstream gets the IdP's access token as the bearer (valid at its userinfo endpoint) and no cookie".into(),
                passed: status == 200 && token.is_some() && cookie.is_none() && sub.as_deref() == Some("alice"),
                detail: format!(
                    "status {status}, bearer of {} characters, userinfo sub {sub:?}, Cookie {cookie:?}",
                    token.map_or(0, str::len)
                ),
            });
        }
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{} ({})", c.what, c.detail))
            .collect();
        self.info.checks = checks;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("reference check failed: {}", failed.join("; ")))
        }
    }

    /// Stops every reference; an error if one had exited during the run.
    pub(crate) fn stop(&mut self) -> Result<(), String> {
        let mut dead = Vec::new();
        for s in [&mut self.nginx, &mut self.apache, &mut self.oidc]
            .into_iter()
            .flatten()
        {
            if !s.alive() {
                dead.push(format!(
                    "{}: {}",
                    s.name,
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                ));
            }
            s.stop();
        }
        if dead.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "a reference exited during the run: {}",
                dead.join("; ")
            ))
        }
    }
}

/// One GET through a proxy to the upstream, which keeps the headers it got.
async fn through(
    http: &reqwest::Client,
    upstream: &Upstream,
    url: &str,
    cookie: Option<&str>,
) -> (u16, Option<crate::upstream::Seen>) {
    upstream.capture_next();
    let mut req = http.get(url);
    if let Some(c) = cookie {
        req = req.header(reqwest::header::COOKIE, c);
    }
    let status = match req.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    };
    (status, upstream.captured())
}

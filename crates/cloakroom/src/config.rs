//! Configuration: `config.toml` + `CLOAKROOM_*` environment overrides → a validated [`Config`].
//!
//! Owns: parsing, overrides, secrets from the environment or `*_FILE` paths, validation that
//! reports every problem at once with the key's name. Never does network I/O; the only file
//! reads are the config file, `*_FILE` secrets and `store.tls_ca_file`.

use crate::crypto::KeyRing;
pub use crate::secret::Secret;
use crate::session::redis::Topology;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The secrets, read only from the environment (or the file named by `<NAME>_FILE`).
pub const SECRET_VARS: [&str; 3] = [
    "CLOAKROOM_OIDC_CLIENT_SECRET",
    "CLOAKROOM_COOKIE_KEYS",
    "CLOAKROOM_ADMIN_TOKEN",
];

// ---------------------------------------------------------------- raw (mirrors config.toml)

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Option<String>,
    public_url: Option<String>,
    trusted_proxies: Vec<String>,
    auth_prefix: Option<String>,
    #[serde(with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    #[serde(with = "humantime_serde")]
    shutdown_drain: Option<Duration>,
    max_connections_per_ip: Option<usize>,
    #[serde(with = "humantime_serde")]
    http1_idle_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    http2_idle_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    http2_keep_alive_interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    http2_keep_alive_timeout: Option<Duration>,
    http2_max_concurrent_streams: Option<u32>,
    http2_max_header_list_size: Option<u32>,
    #[serde(with = "humantime_serde")]
    tunnel_idle_timeout: Option<Duration>,
    tls: Option<RawTls>,
    login_rate_limit: Option<u32>,
    login_rate_burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: String,
    key_file: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawOidc {
    issuer: Option<String>,
    client_id: Option<String>,
    scopes: Option<Vec<String>>,
    extra_auth_params: BTreeMap<String, String>,
    client_auth_method: Option<String>,
    post_logout_redirect_uri: Option<String>,
    #[serde(with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    clock_skew: Option<Duration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSession {
    #[serde(with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    absolute_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    refresh_skew: Option<Duration>,
    #[serde(with = "humantime_serde")]
    refresh_cooloff: Option<Duration>,
    #[serde(with = "humantime_serde")]
    refresh_wait: Option<Duration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCookie {
    name: Option<String>,
    login_name: Option<String>,
    persistent: Option<bool>,
    secure: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCsrf {
    header: Option<String>,
    allowed_origins: Vec<String>,
    allowed_methods: Option<Vec<String>>,
    allowed_headers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    kind: Option<String>,
    url: Option<String>,
    nodes: Vec<String>,
    sentinels: Vec<String>,
    master_name: Option<String>,
    tls_ca_file: Option<String>,
    key_prefix: Option<String>,
    #[serde(with = "humantime_serde")]
    timeout: Option<Duration>,
    lock_replicas: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    #[serde(with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pool_idle_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: String,
    upstream: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

// ---------------------------------------------------------------- validated

/// Which store holds sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// Redis: one server, a Cluster or Sentinel-monitored master.
    Redis(crate::session::redis::Topology),
    /// In-process memory: one instance only (demo, tests).
    Memory,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic (RFC 6749 §2.3.1), the default.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// Token policy of a route (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPolicy {
    /// A session is needed; the bearer is attached.
    Required,
    /// The bearer is attached when there is a session.
    Optional,
    /// Plain pass-through: no session lookup, no CSRF check.
    None,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix, longest wins.
    pub prefix: String,
    /// Upstream base URL (`http://host:port`, optionally with a base path).
    pub upstream: Url,
    /// Token policy.
    pub token: TokenPolicy,
    /// Remove `prefix` from the path before forwarding.
    pub strip_prefix: bool,
    /// Upstream response timeout for this route.
    pub timeout: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public listener.
    pub listen: SocketAddr,
    /// The origin (and optional base) the browser sees, e.g. `https://app.example.com`.
    pub public_url: Url,
    /// The origin string derived from `public_url` (`scheme://host[:port]`).
    pub public_origin: String,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Prefix of the browser-facing endpoints (default `/auth`).
    pub auth_prefix: String,
    /// Time a client has to send its request headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest request head accepted.
    pub max_header_bytes: usize,
    /// Concurrent client connections accepted per listener.
    pub max_connections: usize,
    /// How long in-flight requests get after SIGTERM.
    pub shutdown_drain: Duration,
    /// `/auth/login` + `/auth/callback` requests per minute per client IP (0: no limit).
    pub login_rate_limit: u32,
    /// How many of those may come at once.
    pub login_rate_burst: u32,
    /// Concurrent connections per peer IP per listener (0: no cap). Behind a load balancer the
    /// peer is the load balancer.
    pub max_connections_per_ip: usize,
    /// How long an HTTP/1 connection may sit idle between requests.
    pub http1_idle_timeout: Duration,
    /// How long an HTTP/2 connection may have no open stream.
    pub http2_idle_timeout: Duration,
    /// HTTP/2 keep-alive ping interval (None: no pings).
    pub http2_keep_alive_interval: Option<Duration>,
    /// How long an HTTP/2 keep-alive ping may go unanswered before the connection is closed.
    pub http2_keep_alive_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// Largest HTTP/2 header list (bytes, as HPACK-decoded).
    pub http2_max_header_list_size: u32,
    /// Upgraded tunnels (WebSocket) and server-sent-event streams with no bytes either way for
    /// this long are closed.
    pub tunnel_idle_timeout: Duration,
    /// TLS on the public listener: PEM certificate chain and key files.
    pub tls: Option<(String, String)>,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Bearer token for `/admin/*` (None: admin API off).
    pub admin_token: Option<Secret>,
    /// OIDC issuer URL (discovery at `/.well-known/openid-configuration`).
    pub issuer: Url,
    /// The issuer identifier exactly as configured (a URL parser would add or keep a trailing
    /// slash): compared as is with the discovered `issuer`, `iss` claims and RFC 9207 `iss`.
    pub issuer_id: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: Secret,
    /// Token endpoint authentication.
    pub client_auth: ClientAuth,
    /// Scopes requested at login.
    pub scopes: Vec<String>,
    /// Extra authorization request parameters (e.g. `audience`, `resource`).
    pub extra_auth_params: BTreeMap<String, String>,
    /// Where the IdP sends the browser after end_session.
    pub post_logout_redirect_uri: Url,
    /// Timeout of every IdP call.
    pub oidc_timeout: Duration,
    /// Clock skew tolerated on ID token `iat`/`exp`.
    pub clock_skew: Duration,
    /// Sliding idle timeout.
    pub idle_timeout: Duration,
    /// Absolute session lifetime.
    pub absolute_timeout: Duration,
    /// Refresh when the access token has less than this left (or half its lifetime, if less).
    pub refresh_skew: Duration,
    /// How long a transient refresh failure is remembered per session.
    pub refresh_cooloff: Duration,
    /// How long a request with an expired token waits for its session's refresh.
    pub refresh_wait: Duration,
    /// Replicas that must acknowledge the refresh lock and the refresh write (`WAIT`).
    pub lock_replicas: u32,
    /// Things that are valid but probably not what the operator meant (logged at start-up,
    /// printed by `cloakroom check`).
    pub warnings: Vec<String>,
    /// Session cookie name.
    pub cookie_name: String,
    /// Login-binding cookie name.
    pub login_cookie_name: String,
    /// Persistent (Max-Age) rather than browser-session cookie.
    pub cookie_persistent: bool,
    /// `Secure` attribute (only a loopback http demo may turn it off).
    pub cookie_secure: bool,
    /// The CSRF header name (value must be `1`).
    pub csrf_header: http::HeaderName,
    /// Origins accepted besides the public origin.
    pub allowed_origins: Vec<String>,
    /// CORS preflight answer for an allowed origin: `Access-Control-Allow-Methods`.
    pub cors_allow_methods: http::HeaderValue,
    /// CORS preflight answer for an allowed origin: `Access-Control-Allow-Headers` (always
    /// including the CSRF header).
    pub cors_allow_headers: http::HeaderValue,
    /// Session store.
    pub store: StoreKind,
    /// Prefix of every store key.
    pub key_prefix: String,
    /// PEM CA certificate(s) trusted for `rediss://` (None: the system roots).
    pub store_tls_ca: Option<Vec<u8>>,
    /// Bound on one store operation.
    pub store_timeout: Duration,
    /// The key ring sealing cookies and records.
    pub keys: Arc<KeyRing>,
    /// Upstream connect timeout.
    pub upstream_connect_timeout: Duration,
    /// How long idle upstream connections stay pooled.
    pub upstream_pool_idle_timeout: Duration,
    /// Routes, sorted longest prefix first.
    pub routes: Vec<Route>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log_level: String,
}

/// Every problem found, each naming its key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// The environment as a map, so tests pass their own (never `std::env::set_var`).
pub type Env = BTreeMap<String, String>;

/// Sections of `config.toml`, in the order `CLOAKROOM_<SECTION>_<KEY>` overrides are matched.
const SECTIONS: [&str; 9] = [
    "server", "admin", "oidc", "session", "cookie", "csrf", "store", "upstream", "log",
];

impl Config {
    /// Reads a config file and applies the environment.
    ///
    /// # Errors
    /// Every problem, each naming its key.
    pub fn load(path: &std::path::Path, env: &Env) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", path.display())]))?;
        Self::from_toml(&text, env)
    }

    /// Parses TOML text and applies the environment.
    ///
    /// # Errors
    /// Every problem, each naming its key.
    pub fn from_toml(text: &str, env: &Env) -> Result<Self, ConfigErrors> {
        let mut errs = Vec::new();
        let mut root: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return Err(ConfigErrors(vec![format!("config file: {e}")])),
        };
        apply_env_overrides(&mut root, env, &mut errs);
        let built = build(root, env, &mut errs);
        match built {
            Some(c) if errs.is_empty() => Ok(c),
            _ => Err(ConfigErrors(errs)),
        }
    }
}

fn apply_env_overrides(root: &mut toml::Table, env: &Env, errs: &mut Vec<String>) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("CLOAKROOM_") else {
            continue;
        };
        if SECRET_VARS
            .iter()
            .any(|s| name == s || name == &format!("{s}_FILE"))
            || name == "CLOAKROOM_CONFIG"
            // Kubernetes service links for a Service named `cloakroom`
            // (CLOAKROOM_PORT, CLOAKROOM_PORT_8080_TCP_ADDR, CLOAKROOM_SERVICE_HOST, …).
            || rest == "PORT"
            || rest.starts_with("PORT_")
            || rest.starts_with("SERVICE_")
        {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS.iter().find_map(|s| {
            lower
                .strip_prefix(s)
                .and_then(|r| r.strip_prefix('_'))
                .map(|k| (*s, k.to_string()))
        }) else {
            errs.push(format!(
                "environment {name}: not a known setting (expected CLOAKROOM_<SECTION>_<KEY>)"
            ));
            continue;
        };
        // A value that parses as a TOML value (number, bool, array, quoted string) is taken as
        // such; anything else is a plain string.
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let entry = root
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, parsed);
            }
            _ => errs.push(format!("{section}: must be a table")),
        }
    }
}

fn section<T: for<'de> Deserialize<'de> + Default>(
    root: &mut toml::Table,
    name: &str,
    errs: &mut Vec<String>,
) -> T {
    match root.remove(name) {
        None => T::default(),
        Some(v) => match T::deserialize(v) {
            Ok(t) => t,
            Err(e) => {
                errs.push(format!("[{name}]: {}", e.message().trim()));
                T::default()
            }
        },
    }
}

fn read_secret(env: &Env, name: &str, errs: &mut Vec<String>) -> Option<Secret> {
    if let Some(v) = env.get(name) {
        return Some(Secret::new(v.trim().to_string()));
    }
    let file_var = format!("{name}_FILE");
    let path = env.get(&file_var)?;
    match std::fs::read_to_string(path) {
        Ok(v) => Some(Secret::new(v.trim().to_string())),
        Err(e) => {
            errs.push(format!("{file_var}: cannot read {path}: {e}"));
            None
        }
    }
}

fn parse_addr(key: &str, v: Option<String>, default: &str, errs: &mut Vec<String>) -> SocketAddr {
    let s = v.unwrap_or_else(|| default.to_string());
    s.parse().unwrap_or_else(|_| {
        errs.push(format!(
            "{key}: `{s}` is not an address like 127.0.0.1:8080"
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

fn http_url(key: &str, s: &str, errs: &mut Vec<String>) -> Option<Url> {
    match Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            errs.push(format!("{key}: `{s}` must be an http(s) URL with a host"));
            None
        }
        Err(e) => {
            errs.push(format!("{key}: `{s}` is not a URL ({e})"));
            None
        }
    }
}

fn placeholder_url() -> Url {
    Url::parse("http://invalid.invalid/").unwrap_or_else(|_| unreachable!("static URL"))
}

#[allow(clippy::too_many_lines)]
fn build(mut root: toml::Table, env: &Env, errs: &mut Vec<String>) -> Option<Config> {
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) && key != "routes" {
            errs.push(format!("{key}: unknown section"));
        }
    }
    let server: RawServer = section(&mut root, "server", errs);
    let admin: RawAdmin = section(&mut root, "admin", errs);
    let oidc: RawOidc = section(&mut root, "oidc", errs);
    let session: RawSession = section(&mut root, "session", errs);
    let cookie: RawCookie = section(&mut root, "cookie", errs);
    let csrf: RawCsrf = section(&mut root, "csrf", errs);
    let store: RawStore = section(&mut root, "store", errs);
    let upstream: RawUpstream = section(&mut root, "upstream", errs);
    let log: RawLog = section(&mut root, "log", errs);
    let raw_routes: Vec<RawRoute> = match root.remove("routes") {
        None => Vec::new(),
        Some(v) => Vec::<RawRoute>::deserialize(v).unwrap_or_else(|e| {
            errs.push(format!("[[routes]]: {}", e.message().trim()));
            Vec::new()
        }),
    };

    // [server]
    let listen = parse_addr("server.listen", server.listen, "127.0.0.1:8080", errs);
    let public_url = match server.public_url.as_deref() {
        None => {
            errs.push("server.public_url: required (the origin the browser uses)".into());
            placeholder_url()
        }
        Some(s) => http_url("server.public_url", s, errs).unwrap_or_else(placeholder_url),
    };
    let public_origin = public_url.origin().ascii_serialization();
    let mut trusted_proxies = Vec::new();
    for p in &server.trusted_proxies {
        match p.parse::<IpAddr>() {
            Ok(ip) => trusted_proxies.push(ip),
            Err(_) => errs.push(format!(
                "server.trusted_proxies: `{p}` is not an IP address"
            )),
        }
    }
    let auth_prefix = server.auth_prefix.unwrap_or_else(|| "/auth".into());
    if !auth_prefix.starts_with('/') || auth_prefix.ends_with('/') || auth_prefix.len() < 2 {
        errs.push(format!(
            "server.auth_prefix: `{auth_prefix}` must start with `/` and not end with `/`"
        ));
    }

    // [admin] + secret
    let admin_listen = parse_addr("admin.listen", admin.listen, "127.0.0.1:9091", errs);
    let admin_token = read_secret(env, "CLOAKROOM_ADMIN_TOKEN", errs);
    if let Some(t) = &admin_token {
        if t.expose().len() < 16 {
            errs.push("CLOAKROOM_ADMIN_TOKEN: must be at least 16 characters".into());
        }
    }

    // [oidc]
    let issuer = match oidc.issuer.as_deref() {
        None => {
            errs.push("oidc.issuer: required".into());
            placeholder_url()
        }
        Some(s) => http_url("oidc.issuer", s, errs).unwrap_or_else(placeholder_url),
    };
    let client_id = oidc.client_id.unwrap_or_default();
    if client_id.is_empty() {
        errs.push("oidc.client_id: required".into());
    }
    let client_secret = read_secret(env, "CLOAKROOM_OIDC_CLIENT_SECRET", errs);
    if client_secret.as_ref().is_none_or(|s| s.expose().is_empty()) {
        errs.push(
            "CLOAKROOM_OIDC_CLIENT_SECRET: required (set it, or CLOAKROOM_OIDC_CLIENT_SECRET_FILE)"
                .into(),
        );
    }
    let client_auth = match oidc.client_auth_method.as_deref() {
        None | Some("client_secret_basic") => ClientAuth::Basic,
        Some("client_secret_post") => ClientAuth::Post,
        Some(o) => {
            errs.push(format!(
                "oidc.client_auth_method: `{o}` must be client_secret_basic or client_secret_post"
            ));
            ClientAuth::Basic
        }
    };
    let scopes = oidc.scopes.unwrap_or_else(|| {
        ["openid", "profile", "email", "offline_access"]
            .map(String::from)
            .to_vec()
    });
    if !scopes.iter().any(|s| s == "openid") {
        errs.push("oidc.scopes: must include `openid`".into());
    }
    for k in oidc.extra_auth_params.keys() {
        const RESERVED: [&str; 9] = [
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "prompt",
        ];
        if RESERVED.contains(&k.as_str()) {
            errs.push(format!(
                "oidc.extra_auth_params.{k}: set by Cloakroom itself, cannot be overridden"
            ));
        }
    }
    let post_logout_redirect_uri = match oidc.post_logout_redirect_uri.as_deref() {
        None => public_url.join("/").unwrap_or_else(|_| public_url.clone()),
        Some(s) => {
            http_url("oidc.post_logout_redirect_uri", s, errs).unwrap_or_else(placeholder_url)
        }
    };

    // [session]
    let idle_timeout = session.idle_timeout.unwrap_or(Duration::from_secs(30 * 60));
    let absolute_timeout = session
        .absolute_timeout
        .unwrap_or(Duration::from_secs(12 * 3600));
    let refresh_skew = session.refresh_skew.unwrap_or(Duration::from_secs(60));
    if idle_timeout < Duration::from_secs(1) {
        errs.push("session.idle_timeout: must be at least 1s".into());
    }
    if absolute_timeout < Duration::from_secs(1) {
        errs.push("session.absolute_timeout: must be at least 1s".into());
    }
    if refresh_skew >= absolute_timeout {
        errs.push("session.refresh_skew: must be shorter than session.absolute_timeout".into());
    }
    let mut warnings = Vec::new();
    if refresh_skew > Duration::from_secs(300) {
        warnings.push(format!(
            "session.refresh_skew: {refresh_skew:?} is longer than typical access-token lifetimes (5 to 60 minutes); \
             tokens are refreshed when less than min(refresh_skew, half their lifetime) is left, \
             so short-lived tokens are still refreshed at half-life, but a skew this long refreshes \
             long-lived ones early"
        ));
    }
    let refresh_cooloff = session.refresh_cooloff.unwrap_or(Duration::from_secs(5));
    if refresh_cooloff > Duration::from_secs(300) {
        errs.push("session.refresh_cooloff: must be at most 5m".into());
    }

    // [cookie]
    let cookie_name = cookie.name.unwrap_or_else(|| "__Host-cloakroom".into());
    let login_cookie_name = cookie
        .login_name
        .unwrap_or_else(|| "__Host-cloakroom-login".into());
    let cookie_secure = cookie.secure.unwrap_or(true);
    for (key, name) in [
        ("cookie.name", &cookie_name),
        ("cookie.login_name", &login_cookie_name),
    ] {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            errs.push(format!("{key}: `{name}` is not a valid cookie name"));
        }
        if name.starts_with("__Host-") && !cookie_secure {
            errs.push(format!(
                "{key}: a `__Host-` cookie must be Secure; rename it or set cookie.secure = true"
            ));
        }
    }
    if cookie_name == login_cookie_name {
        errs.push("cookie.login_name: must differ from cookie.name".into());
    }
    if !cookie_secure && public_url.scheme() == "https" {
        errs.push("cookie.secure: may only be false when server.public_url is http".into());
    }

    // [csrf]
    let csrf_header =
        match http::HeaderName::from_bytes(csrf.header.as_deref().unwrap_or("x-csrf").as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                errs.push("csrf.header: not a valid header name".into());
                http::HeaderName::from_static("x-csrf")
            }
        };
    let mut allowed_origins = Vec::new();
    for o in &csrf.allowed_origins {
        match Url::parse(o) {
            Ok(u) if u.host().is_some() => allowed_origins.push(u.origin().ascii_serialization()),
            _ => errs.push(format!(
                "csrf.allowed_origins: `{o}` is not an origin like https://app.example.com"
            )),
        }
    }

    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let methods = csrf.allowed_methods.clone().unwrap_or_else(|| {
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .map(String::from)
            .to_vec()
    });
    for m in &methods {
        if m == "*" {
            errs.push(
                "csrf.allowed_methods: `*` is not allowed with credentials; list the methods"
                    .into(),
            );
        } else if !token(m) {
            errs.push(format!("csrf.allowed_methods: `{m}` is not a method name"));
        }
    }
    let mut headers = vec![csrf_header.as_str().to_string()];
    for h in csrf
        .allowed_headers
        .clone()
        .unwrap_or_else(|| vec!["content-type".into()])
    {
        if h == "*" {
            errs.push(
                "csrf.allowed_headers: `*` is not allowed with credentials; list the headers"
                    .into(),
            );
        } else if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push(format!("csrf.allowed_headers: `{h}` is not a header name"));
        } else if !headers.iter().any(|x| x.eq_ignore_ascii_case(&h)) {
            headers.push(h.to_ascii_lowercase());
        }
    }
    let cors_allow_methods = http::HeaderValue::from_str(&methods.join(", "))
        .unwrap_or_else(|_| http::HeaderValue::from_static("GET"));
    let cors_allow_headers = http::HeaderValue::from_str(&headers.join(", "))
        .unwrap_or_else(|_| http::HeaderValue::from_static("x-csrf"));

    // [store]
    let redis_url = |key: &str, u: &str, errs: &mut Vec<String>| {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            errs.push(format!(
                "{key}: `{u}` must start with redis:// or rediss://"
            ));
        }
    };
    let store_kind = match store.kind.as_deref().unwrap_or("redis") {
        "memory" => {
            // One process's memory: wrong as soon as there are two replicas, and lost on every
            // restart. Only the demo, or a process nobody else can reach, may use it.
            // (`cloakroom demo` binds loopback only, so it always passes.)
            let loopback = listen.ip().is_loopback() && admin_listen.ip().is_loopback();
            if !loopback {
                errs.push(
                    "store.kind: \"memory\" is for the demo and single-process development only \
                     (every listener on loopback); use \"redis\""
                        .into(),
                );
            }
            StoreKind::Memory
        }
        "redis" => {
            let url = store
                .url
                .clone()
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
            redis_url("store.url", &url, errs);
            StoreKind::Redis(Topology::Single(url))
        }
        "cluster" => {
            if store.nodes.is_empty() {
                errs.push("store.nodes: a cluster needs at least one seed node URL".into());
            }
            for n in &store.nodes {
                redis_url("store.nodes", n, errs);
            }
            StoreKind::Redis(Topology::Cluster(store.nodes.clone()))
        }
        "sentinel" => {
            if store.sentinels.is_empty() {
                errs.push("store.sentinels: at least one sentinel URL is required".into());
            }
            for n in &store.sentinels {
                redis_url("store.sentinels", n, errs);
            }
            let master = store.master_name.clone().unwrap_or_default();
            if master.is_empty() {
                errs.push("store.master_name: required with kind = \"sentinel\"".into());
            }
            StoreKind::Redis(Topology::Sentinel {
                sentinels: store.sentinels.clone(),
                master,
            })
        }
        o => {
            errs.push(format!(
                "store.kind: `{o}` must be redis, cluster, sentinel or memory"
            ));
            StoreKind::Memory
        }
    };
    let store_tls_ca = match store.tls_ca_file.as_deref() {
        None => None,
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                errs.push(format!("store.tls_ca_file: cannot read {path}: {e}"));
                None
            }
        },
    };
    let key_prefix = store.key_prefix.unwrap_or_else(|| "cloakroom".into());
    if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
        errs.push("store.key_prefix: must be non-empty, without braces or spaces".into());
    }
    let store_timeout = store.timeout.unwrap_or(Duration::from_secs(2));
    let lock_replicas = store.lock_replicas.unwrap_or(0);
    if lock_replicas > 16 {
        errs.push("store.lock_replicas: at most 16".into());
    }
    if lock_replicas > 0 && matches!(&store_kind, StoreKind::Redis(Topology::Cluster(_))) {
        errs.push(
            "store.lock_replicas: not supported with kind = \"cluster\" (a keyless WAIT cannot be \
             routed to the lock's master); leave it 0"
                .into(),
        );
    }

    // key ring
    let keys = match read_secret(env, "CLOAKROOM_COOKIE_KEYS", errs) {
        None => {
            errs.push(
                "CLOAKROOM_COOKIE_KEYS: required (generate one with `cloakroom keygen`)".into(),
            );
            None
        }
        Some(s) => match KeyRing::parse(s.expose()) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                errs.push(format!("CLOAKROOM_COOKIE_KEYS: {e}"));
                None
            }
        },
    };

    // [upstream]
    let upstream_connect_timeout = upstream.connect_timeout.unwrap_or(Duration::from_secs(5));
    let upstream_timeout = upstream.timeout.unwrap_or(Duration::from_secs(30));
    let upstream_pool_idle_timeout = upstream
        .pool_idle_timeout
        .unwrap_or(Duration::from_secs(90));

    // [[routes]]
    let mut routes = Vec::new();
    for (i, r) in raw_routes.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        if !r.prefix.starts_with('/') {
            errs.push(format!("{key}.prefix: `{}` must start with `/`", r.prefix));
        }
        if r.prefix == auth_prefix || r.prefix.starts_with(&format!("{auth_prefix}/")) {
            errs.push(format!(
                "{key}.prefix: `{}` overlaps server.auth_prefix `{auth_prefix}`",
                r.prefix
            ));
        }
        let token = match r.token.as_deref().unwrap_or("required") {
            "required" => TokenPolicy::Required,
            "optional" => TokenPolicy::Optional,
            "none" => TokenPolicy::None,
            o => {
                errs.push(format!(
                    "{key}.token: `{o}` must be required, optional or none"
                ));
                TokenPolicy::Required
            }
        };
        let upstream = match Url::parse(&r.upstream) {
            Ok(u) if u.scheme() == "http" && u.host().is_some() && u.query().is_none() => u,
            Ok(_) => {
                errs.push(format!(
                    "{key}.upstream: `{}` must be an http:// URL with a host and no query",
                    r.upstream
                ));
                continue;
            }
            Err(e) => {
                errs.push(format!(
                    "{key}.upstream: `{}` is not a URL ({e})",
                    r.upstream
                ));
                continue;
            }
        };
        if routes.iter().any(|x: &Route| x.prefix == r.prefix) {
            errs.push(format!("{key}.prefix: `{}` is given twice", r.prefix));
        }
        routes.push(Route {
            prefix: r.prefix,
            upstream,
            token,
            strip_prefix: r.strip_prefix,
            timeout: r.timeout.unwrap_or(upstream_timeout),
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

    // [log]
    let log_format = match log.format.as_deref().unwrap_or("pretty") {
        "pretty" => LogFormat::Pretty,
        "json" => LogFormat::Json,
        o => {
            errs.push(format!("log.format: `{o}` must be pretty or json"));
            LogFormat::Pretty
        }
    };
    let log_level = log.level.unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        errs.push(format!("log.level: `{log_level}` is not a valid filter"));
    }

    let max_header_bytes = server.max_header_bytes.unwrap_or(16 * 1024);
    if max_header_bytes < 1024 {
        errs.push("server.max_header_bytes: must be at least 1024".into());
    }

    // [server] connection limits
    let at_least_1s = |key: &str, d: Duration, errs: &mut Vec<String>| {
        if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
            errs.push(format!("server.{key}: must be from 1s to 24h"));
        }
        d
    };
    let http1_idle_timeout = at_least_1s(
        "http1_idle_timeout",
        server.http1_idle_timeout.unwrap_or(Duration::from_secs(60)),
        errs,
    );
    let http2_idle_timeout = at_least_1s(
        "http2_idle_timeout",
        server
            .http2_idle_timeout
            .unwrap_or(Duration::from_secs(120)),
        errs,
    );
    let http2_keep_alive_interval = server
        .http2_keep_alive_interval
        .unwrap_or(Duration::from_secs(20));
    if http2_keep_alive_interval > Duration::from_secs(24 * 3600) {
        errs.push("server.http2_keep_alive_interval: must be at most 24h (0s: no pings)".into());
    }
    let http2_keep_alive_interval =
        (!http2_keep_alive_interval.is_zero()).then_some(http2_keep_alive_interval);
    let http2_keep_alive_timeout = at_least_1s(
        "http2_keep_alive_timeout",
        server
            .http2_keep_alive_timeout
            .unwrap_or(Duration::from_secs(10)),
        errs,
    );
    let tunnel_idle_timeout = at_least_1s(
        "tunnel_idle_timeout",
        server
            .tunnel_idle_timeout
            .unwrap_or(Duration::from_secs(300)),
        errs,
    );
    let http2_max_concurrent_streams = server.http2_max_concurrent_streams.unwrap_or(256);
    if !(1..=10_000).contains(&http2_max_concurrent_streams) {
        errs.push("server.http2_max_concurrent_streams: must be from 1 to 10000".into());
    }
    let http2_max_header_list_size = server
        .http2_max_header_list_size
        .unwrap_or_else(|| u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    if http2_max_header_list_size < 1024 {
        errs.push("server.http2_max_header_list_size: must be at least 1024".into());
    }

    let oidc_timeout = oidc.timeout.unwrap_or(Duration::from_secs(10));
    let refresh_wait = session
        .refresh_wait
        .unwrap_or(oidc_timeout + store_timeout * 2 + Duration::from_secs(1));
    if refresh_wait > Duration::from_secs(120) {
        errs.push("session.refresh_wait: must be at most 2m".into());
    }

    Some(Config {
        listen,
        public_url,
        public_origin,
        trusted_proxies,
        auth_prefix,
        header_read_timeout: server
            .header_read_timeout
            .unwrap_or(Duration::from_secs(10)),
        max_header_bytes,
        max_connections: server.max_connections.unwrap_or(10_000),
        shutdown_drain: server.shutdown_drain.unwrap_or(Duration::from_secs(20)),
        login_rate_limit: server.login_rate_limit.unwrap_or(60),
        login_rate_burst: server.login_rate_burst.unwrap_or(20),
        max_connections_per_ip: server.max_connections_per_ip.unwrap_or(512),
        http1_idle_timeout,
        http2_idle_timeout,
        http2_keep_alive_interval,
        http2_keep_alive_timeout,
        http2_max_concurrent_streams,
        http2_max_header_list_size,
        tunnel_idle_timeout,
        tls: server.tls.map(|t| (t.cert_file, t.key_file)),
        admin_listen,
        admin_token,
        issuer_id: oidc
            .issuer
            .as_deref()
            .map(str::trim)
            .unwrap_or_default()
            .to_string(),
        issuer,
        client_id,
        client_secret: client_secret.unwrap_or_else(|| Secret::new("")),
        client_auth,
        scopes,
        extra_auth_params: oidc.extra_auth_params,
        post_logout_redirect_uri,
        oidc_timeout,
        clock_skew: oidc.clock_skew.unwrap_or(Duration::from_secs(60)),
        idle_timeout,
        absolute_timeout,
        refresh_skew,
        refresh_cooloff,
        refresh_wait,
        lock_replicas,
        warnings,
        cookie_name,
        login_cookie_name,
        cookie_persistent: cookie.persistent.unwrap_or(false),
        cookie_secure,
        csrf_header,
        allowed_origins,
        cors_allow_methods,
        cors_allow_headers,
        store: store_kind,
        key_prefix,
        store_tls_ca,
        store_timeout,
        keys: keys?,
        upstream_connect_timeout,
        upstream_pool_idle_timeout,
        routes,
        log_format,
        log_level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        let mut e = Env::new();
        e.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), "s3cret".into());
        e.insert("CLOAKROOM_COOKIE_KEYS".into(), KeyRing::generate_entry(1));
        e
    }

    const GOOD: &str = r#"
        [server]
        public_url = "https://app.example.com"
        [oidc]
        issuer = "https://idp.example.com"
        client_id = "spa"
        [[routes]]
        prefix = "/api/"
        upstream = "http://127.0.0.1:9000"
        [[routes]]
        prefix = "/api/public/"
        upstream = "http://127.0.0.1:9001"
        token = "none"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(GOOD, &env()).expect("valid");
        assert_eq!(c.cookie_name, "__Host-cloakroom");
        assert_eq!(c.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.public_origin, "https://app.example.com");
        assert_eq!(c.routes[0].prefix, "/api/public/", "longest prefix first");
        assert_eq!(c.scopes.join(" "), "openid profile email offline_access");
    }

    #[test]
    fn connection_limits_have_defaults_and_bounds() {
        let c = Config::from_toml(GOOD, &env()).expect("valid");
        assert_eq!(c.max_connections_per_ip, 512);
        assert_eq!(c.http1_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.http2_idle_timeout, Duration::from_secs(120));
        assert_eq!(c.http2_keep_alive_interval, Some(Duration::from_secs(20)));
        assert_eq!(c.http2_keep_alive_timeout, Duration::from_secs(10));
        assert_eq!(c.http2_max_concurrent_streams, 256);
        assert_eq!(c.http2_max_header_list_size, 16 * 1024);
        assert_eq!(c.tunnel_idle_timeout, Duration::from_secs(300));
        let mut e = env();
        e.insert(
            "CLOAKROOM_SERVER_HTTP2_KEEP_ALIVE_INTERVAL".into(),
            "0s".into(),
        );
        e.insert("CLOAKROOM_SERVER_MAX_CONNECTIONS_PER_IP".into(), "0".into());
        let c = Config::from_toml(GOOD, &e).expect("valid");
        assert_eq!(c.http2_keep_alive_interval, None);
        assert_eq!(c.max_connections_per_ip, 0);
        let mut e = env();
        for (k, v) in [
            ("CLOAKROOM_SERVER_HTTP1_IDLE_TIMEOUT", "0s"),
            ("CLOAKROOM_SERVER_HTTP2_IDLE_TIMEOUT", "99999h"),
            ("CLOAKROOM_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT", "10ms"),
            ("CLOAKROOM_SERVER_HTTP2_KEEP_ALIVE_INTERVAL", "99999h"),
            ("CLOAKROOM_SERVER_TUNNEL_IDLE_TIMEOUT", "0s"),
            ("CLOAKROOM_SERVER_HTTP2_MAX_CONCURRENT_STREAMS", "0"),
            ("CLOAKROOM_SERVER_HTTP2_MAX_HEADER_LIST_SIZE", "10"),
        ] {
            e.insert(k.into(), v.into());
        }
        let all = Config::from_toml(GOOD, &e)
            .expect_err("out of bounds")
            .to_string();
        for key in [
            "server.http1_idle_timeout",
            "server.http2_idle_timeout",
            "server.http2_keep_alive_timeout",
            "server.http2_keep_alive_interval",
            "server.tunnel_idle_timeout",
            "server.http2_max_concurrent_streams",
            "server.http2_max_header_list_size",
        ] {
            assert!(all.contains(key), "{key} missing from: {all}");
        }
    }

    #[test]
    fn refresh_settings_have_defaults_bounds_and_a_warning_for_a_long_skew() {
        let c = Config::from_toml(GOOD, &env()).expect("valid");
        assert_eq!(c.refresh_cooloff, Duration::from_secs(5));
        assert_eq!(
            c.refresh_wait,
            c.oidc_timeout + c.store_timeout * 2 + Duration::from_secs(1)
        );
        assert_eq!(c.lock_replicas, 0);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let with = |pairs: &[(&str, &str)]| {
            let mut e = env();
            for (k, v) in pairs {
                e.insert((*k).into(), (*v).into());
            }
            Config::from_toml(GOOD, &e)
        };
        let c = with(&[("CLOAKROOM_SESSION_REFRESH_SKEW", "10m")]).expect("valid, with a warning");
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].starts_with("session.refresh_skew:"),
            "{:?}",
            c.warnings
        );

        let e = with(&[
            ("CLOAKROOM_SESSION_REFRESH_COOLOFF", "1h"),
            ("CLOAKROOM_SESSION_REFRESH_WAIT", "1h"),
            ("CLOAKROOM_STORE_LOCK_REPLICAS", "99"),
        ])
        .expect_err("out of bounds")
        .to_string();
        for key in [
            "session.refresh_cooloff",
            "session.refresh_wait",
            "store.lock_replicas",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
        let c = with(&[
            ("CLOAKROOM_SESSION_REFRESH_COOLOFF", "30s"),
            ("CLOAKROOM_STORE_LOCK_REPLICAS", "1"),
        ])
        .expect("env overrides");
        assert_eq!(c.refresh_cooloff, Duration::from_secs(30));
        assert_eq!(c.lock_replicas, 1);
    }

    #[test]
    fn cors_lists_are_explicit_and_always_allow_the_csrf_header() {
        let c = Config::from_toml(GOOD, &env()).expect("valid");
        assert_eq!(c.cors_allow_headers, "x-csrf, content-type");
        assert!(c.cors_allow_methods.to_str().unwrap().contains("DELETE"));
        let mut e = env();
        e.insert("CLOAKROOM_CSRF_ALLOWED_METHODS".into(), "[\"*\"]".into());
        e.insert("CLOAKROOM_CSRF_ALLOWED_HEADERS".into(), "[\"*\"]".into());
        let msg = Config::from_toml(GOOD, &e)
            .expect_err("wildcards")
            .to_string();
        assert!(msg.contains("csrf.allowed_methods"), "{msg}");
        assert!(msg.contains("csrf.allowed_headers"), "{msg}");
    }

    #[test]
    fn the_memory_store_is_for_loopback_listeners_only() {
        let mut e = env();
        e.insert("CLOAKROOM_STORE_KIND".into(), "memory".into());
        assert!(Config::from_toml(GOOD, &e).is_ok(), "loopback listeners");
        e.insert("CLOAKROOM_SERVER_LISTEN".into(), "0.0.0.0:8080".into());
        let msg = Config::from_toml(GOOD, &e)
            .expect_err("a public listener")
            .to_string();
        assert!(msg.contains("store.kind"), "{msg}");
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let bad = r#"
            [server]
            listen = "nope"
            [oidc]
            client_auth_method = "private_key_jwt"
            [session]
            idle_timeout = "soon"
            [[routes]]
            prefix = "api"
            upstream = "ftp://x"
            token = "maybe"
        "#;
        let errs = Config::from_toml(bad, &Env::new()).unwrap_err().0;
        let all = errs.join("\n");
        for key in [
            "server.listen",
            "server.public_url",
            "oidc.issuer",
            "oidc.client_id",
            "oidc.client_auth_method",
            "[session]",
            "routes[0].prefix",
            "routes[0].token",
            "routes[0].upstream",
            "CLOAKROOM_OIDC_CLIENT_SECRET",
            "CLOAKROOM_COOKIE_KEYS",
        ] {
            assert!(all.contains(key), "missing {key} in:\n{all}");
        }
    }

    #[test]
    fn env_overrides_any_key_and_secrets_come_from_files() {
        let dir = std::env::temp_dir().join(format!("cloakroom-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, "from-file\n").expect("write");
        let mut e = env();
        e.remove("CLOAKROOM_OIDC_CLIENT_SECRET");
        e.insert(
            "CLOAKROOM_OIDC_CLIENT_SECRET_FILE".into(),
            secret_file.display().to_string(),
        );
        e.insert("CLOAKROOM_SERVER_LISTEN".into(), "0.0.0.0:7000".into());
        e.insert("CLOAKROOM_SESSION_IDLE_TIMEOUT".into(), "5m".into());
        e.insert("CLOAKROOM_COOKIE_PERSISTENT".into(), "true".into());
        let c = Config::from_toml(GOOD, &e).expect("valid");
        assert_eq!(c.client_secret.expose(), "from-file");
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert!(c.cookie_persistent);
        assert!(!format!("{c:?}").contains("from-file"));
    }

    #[test]
    fn unknown_keys_and_env_names_are_refused() {
        let mut e = env();
        e.insert("CLOAKROOM_NOPE_X".into(), "1".into());
        // Kubernetes service-link variables are not settings and are ignored.
        e.insert("CLOAKROOM_PORT".into(), "tcp://10.0.0.1:80".into());
        e.insert("CLOAKROOM_SERVICE_HOST".into(), "10.0.0.1".into());
        let text = format!("{GOOD}\n[log]\nverbosity = 3\n");
        let all = Config::from_toml(&text, &e).unwrap_err().0.join("\n");
        assert!(all.contains("CLOAKROOM_NOPE_X"), "{all}");
        assert!(!all.contains("CLOAKROOM_PORT"), "{all}");
        assert!(!all.contains("CLOAKROOM_SERVICE_HOST"), "{all}");
        assert!(all.contains("verbosity"), "{all}");
    }

    #[test]
    fn secrets_in_the_file_are_refused() {
        let text = GOOD.replace(
            "client_id = \"spa\"",
            "client_id = \"spa\"\nclient_secret = \"x\"",
        );
        let all = Config::from_toml(&text, &env()).unwrap_err().0.join("\n");
        assert!(all.contains("client_secret"), "{all}");
    }
}

#[cfg(test)]
mod shipped_config {
    use super::*;

    #[test]
    fn the_shipped_config_toml_is_valid() {
        let mut e = Env::new();
        e.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), "s".into());
        e.insert("CLOAKROOM_COOKIE_KEYS".into(), KeyRing::generate_entry(1));
        let text = include_str!("../../../config.toml");
        let c = Config::from_toml(text, &e).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.routes.len(), 1);
    }
}

//! Configuration: `config.toml` + `CLOAKROOM_*` environment overrides → a validated [`Config`].
//!
//! Owns: parsing, overrides, secrets from the environment or `*_FILE` paths, validation that
//! reports every problem at once with the key's name. Never does network I/O; the only file
//! reads are the config file, `*_FILE` secrets and `store.tls_ca_file`.

use crate::crypto::KeyRing;
pub use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The secrets, read only from the environment (or the file named by `<NAME>_FILE`).
pub const SECRET_VARS: [&str; 6] = [
    "CLOAKROOM_OIDC_CLIENT_SECRET",
    "CLOAKROOM_OIDC_CLIENT_KEY",
    "CLOAKROOM_OIDC_CLIENT_CERT_KEY",
    "CLOAKROOM_COOKIE_KEYS",
    "CLOAKROOM_ADMIN_TOKEN",
    telemetry::OTLP_HEADERS_VAR,
];

mod cookie;
mod csrf;
mod log;
mod oidc;
mod routes;
mod server;
mod session;
mod store;
mod telemetry;

pub use cookie::CookieConfig;
pub use csrf::CsrfConfig;
pub use log::{LogConfig, LogFormat};
pub use oidc::{
    provider_env_prefix, AssertionAudience, CallbackPath, ClientAuth, OidcConfig, Par, Profile,
    FAPI2_MAX_CLOCK_SKEW, MAX_PROVIDERS,
};
pub use routes::{
    login_resources, login_resources_for, ClientSpec, ExchangeSpec, ResourceSpec, Route, StepUp,
    TokenPolicy, TokenScheme, UpstreamConfig, UserToken,
};
pub use server::{AdminConfig, ServerConfig};
pub use session::{ReconstituteConfig, RememberConfig, SessionConfig, WithoutRefreshToken};
pub use store::{StoreConfig, StoreKind, Topology};
pub use telemetry::{OtlpProtocol, TelemetryConfig, OTLP_HEADERS_VAR};

/// The validated configuration: one typed section per component, each built and validated by
/// its own module. Components take their section, not the whole.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`: the public listener, its limits, the public URL.
    pub server: ServerConfig,
    /// `[admin]`: the admin listener and token.
    pub admin: AdminConfig,
    /// `[oidc]`: the IdP and the client's registration.
    pub oidc: OidcConfig,
    /// `[session]`: lifetimes and refresh.
    pub session: SessionConfig,
    /// `[cookie]`: cookie names and attributes.
    pub cookie: CookieConfig,
    /// `[csrf]`: the CSRF header, allowed origins, CORS.
    pub csrf: CsrfConfig,
    /// `[store]`: where sessions live.
    pub store: StoreConfig,
    /// `[upstream]`: the upstream client.
    pub upstream: UpstreamConfig,
    /// `[[routes]]`, sorted longest prefix first.
    pub routes: Vec<Route>,
    /// `[log]`.
    pub log: LogConfig,
    /// `[reload]`.
    pub reload: ReloadConfig,
    /// `[telemetry]`: OpenTelemetry traces.
    pub telemetry: TelemetryConfig,
    /// The key ring sealing cookies and records (`CLOAKROOM_COOKIE_KEYS`).
    pub keys: Arc<KeyRing>,
    /// Things that are valid but probably not what the operator meant (logged at start-up,
    /// printed by `cloakroom check`).
    pub warnings: Vec<String>,
}

/// The problems found so far, each naming its key.
type Problems = Vec<String>;

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
#[rustfmt::skip]
const SECTIONS: [&str; 11] = [
    "server", "admin", "oidc", "session", "cookie", "csrf", "store", "upstream", "log", "reload",
    "telemetry",
];

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawReload {
    watch: Option<bool>,
}

/// `[reload]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Reload when the config file changes (checked every 2 s), besides on SIGHUP.
    pub watch: bool,
}

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
            || oidc::is_provider_secret_var(name)
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

/// Collects the sections, each validated by its own module; the only cross-section rules are
/// the arguments passed between them (the public URL, the listeners, the auth prefix, the
/// timeouts a default is derived from).
fn build(mut root: toml::Table, env: &Env, errs: &mut Problems) -> Option<Config> {
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) && key != "routes" {
            errs.push(format!("{key}: unknown section"));
        }
    }
    let raw_server = section(&mut root, "server", errs);
    let raw_admin = section(&mut root, "admin", errs);
    let raw_oidc = section(&mut root, "oidc", errs);
    let raw_session = section(&mut root, "session", errs);
    let raw_cookie = section(&mut root, "cookie", errs);
    let raw_csrf = section(&mut root, "csrf", errs);
    let raw_store = section(&mut root, "store", errs);
    let raw_upstream = section(&mut root, "upstream", errs);
    let raw_log = section(&mut root, "log", errs);
    let raw_reload: RawReload = section(&mut root, "reload", errs);
    let raw_telemetry = section(&mut root, "telemetry", errs);
    let raw_routes: Vec<routes::RawRoute> = match root.remove("routes") {
        None => Vec::new(),
        Some(v) => Vec::<routes::RawRoute>::deserialize(v).unwrap_or_else(|e| {
            errs.push(format!("[[routes]]: {}", e.message().trim()));
            Vec::new()
        }),
    };

    let server = ServerConfig::build(raw_server, errs);
    let admin = AdminConfig::build(raw_admin, env, errs);
    let oidc = OidcConfig::build(raw_oidc, &server.public_url, env, errs);
    let cookie = CookieConfig::build(raw_cookie, &server.public_url, errs);
    let csrf = CsrfConfig::build(raw_csrf, errs);
    let store = StoreConfig::build(raw_store, [server.listen, admin.listen], errs);
    let mut warnings = Vec::new();
    let session = SessionConfig::build(
        raw_session,
        oidc.timeout + store.timeout * 2 + Duration::from_secs(1),
        errs,
        &mut warnings,
    );
    // A provider's secret variable for a provider that is not configured: a typo, or left over.
    for name in env.keys().filter(|n| oidc::is_provider_secret_var(n)) {
        let known = oidc
            .providers
            .iter()
            .any(|p| name.starts_with(&provider_env_prefix(&p.name)));
        if !known {
            warnings.push(format!(
                "environment {name}: no [[oidc.providers]] entry has this name; the variable is not used"
            ));
        }
    }
    let upstream = UpstreamConfig::build(raw_upstream, errs);
    let routes = routes::build(raw_routes, &server.auth_prefix, &oidc, &upstream, errs);
    let log = LogConfig::build(raw_log, errs);
    let otlp_headers = read_secret(env, OTLP_HEADERS_VAR, errs);
    let telemetry = TelemetryConfig::build(raw_telemetry, otlp_headers, errs);
    let keys = key_ring(env, errs);
    Some(Config {
        server,
        admin,
        oidc,
        session,
        cookie,
        csrf,
        store,
        upstream,
        routes,
        log,
        reload: ReloadConfig {
            watch: raw_reload.watch.unwrap_or(false),
        },
        telemetry,
        keys: keys?,
        warnings,
    })
}

/// `CLOAKROOM_COOKIE_KEYS`: the key ring.
fn key_ring(env: &Env, errs: &mut Problems) -> Option<Arc<KeyRing>> {
    match read_secret(env, "CLOAKROOM_COOKIE_KEYS", errs) {
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
    }
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
        assert_eq!(c.cookie.name, "__Host-cloakroom");
        assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.server.public_origin, "https://app.example.com");
        assert_eq!(c.routes[0].prefix, "/api/public/", "longest prefix first");
        assert_eq!(
            c.oidc.scopes.join(" "),
            "openid profile email offline_access"
        );
    }

    #[test]
    fn connection_limits_have_defaults_and_bounds() {
        let c = Config::from_toml(GOOD, &env()).expect("valid");
        assert_eq!(c.server.max_connections_per_ip, 512);
        assert_eq!(c.server.http1_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.http2_idle_timeout, Duration::from_secs(120));
        assert_eq!(
            c.server.http2_keep_alive_interval,
            Some(Duration::from_secs(20))
        );
        assert_eq!(c.server.http2_keep_alive_timeout, Duration::from_secs(10));
        assert_eq!(c.server.http2_max_concurrent_streams, 256);
        assert_eq!(c.server.http2_max_header_list_size, 16 * 1024);
        assert_eq!(c.server.tunnel_idle_timeout, Duration::from_secs(300));
        let mut e = env();
        e.insert(
            "CLOAKROOM_SERVER_HTTP2_KEEP_ALIVE_INTERVAL".into(),
            "0s".into(),
        );
        e.insert("CLOAKROOM_SERVER_MAX_CONNECTIONS_PER_IP".into(), "0".into());
        let c = Config::from_toml(GOOD, &e).expect("valid");
        assert_eq!(c.server.http2_keep_alive_interval, None);
        assert_eq!(c.server.max_connections_per_ip, 0);
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
        assert_eq!(c.session.refresh_cooloff, Duration::from_secs(5));
        assert_eq!(
            c.session.refresh_wait,
            c.oidc.timeout + c.store.timeout * 2 + Duration::from_secs(1)
        );
        assert_eq!(c.store.lock_replicas, 0);
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
        assert_eq!(c.session.refresh_cooloff, Duration::from_secs(30));
        assert_eq!(c.store.lock_replicas, 1);
    }

    #[test]
    fn cors_lists_are_explicit_and_always_allow_the_csrf_header() {
        let c = Config::from_toml(GOOD, &env()).expect("valid");
        assert_eq!(c.csrf.cors_allow_headers, "x-csrf, content-type");
        assert!(c
            .csrf
            .cors_allow_methods
            .to_str()
            .unwrap()
            .contains("DELETE"));
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
            client_auth_method = "client_secret_jwt"
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
    fn dpop_routes_need_oidc_dpop_and_route_schemes_are_read() {
        let routes = r#"
            [[routes]]
            prefix = "/d/"
            upstream = "http://127.0.0.1:9"
            token = "dpop"
            [[routes]]
            prefix = "/b/"
            upstream = "http://127.0.0.1:9"
            token = "bearer"
        "#;
        let all = Config::from_toml(&format!("{GOOD}{routes}"), &env())
            .unwrap_err()
            .0
            .join("\n");
        assert!(
            all.contains("routes[2].token") && all.contains("oidc.dpop"),
            "{all}"
        );
        let mut e = env();
        e.insert("CLOAKROOM_OIDC_DPOP".into(), "true".into());
        let c = Config::from_toml(&format!("{GOOD}{routes}"), &e).expect("valid");
        assert!(c.oidc.dpop);
        let scheme = |p: &str| {
            let r = c.routes.iter().find(|r| r.prefix == p).expect("route");
            (r.token, r.scheme)
        };
        assert_eq!(scheme("/d/"), (TokenPolicy::Required, TokenScheme::Dpop));
        assert_eq!(scheme("/b/"), (TokenPolicy::Required, TokenScheme::Bearer));
    }

    #[test]
    fn route_token_kinds_are_read_and_misuse_is_named() {
        let good = r#"
            [[routes]]
            prefix = "/orders/"
            upstream = "http://127.0.0.1:9"
            resource = "https://orders.test"
            scopes = ["orders:read"]
            acr_values = ["urn:loa:2"]
            max_age = "5m"
            [[routes]]
            prefix = "/ledger/"
            upstream = "http://127.0.0.1:9"
            token = "exchange"
            [routes.exchange]
            audience = "https://ledger.test"
            scope = "ledger"
            actor_token = true
            [[routes]]
            prefix = "/jobs/"
            upstream = "http://127.0.0.1:9"
            token = "client"
            csrf = false
            scopes = ["jobs"]
            [[routes]]
            prefix = "/either/"
            upstream = "http://127.0.0.1:9"
            token = "user_or_client"
            resource = "https://orders.test"
        "#;
        let c = Config::from_toml(&format!("{GOOD}{good}"), &env()).expect("valid");
        let r = |p: &str| c.routes.iter().find(|r| r.prefix == p).expect("route");
        let orders = r("/orders/");
        assert!(
            matches!(&orders.user_token, UserToken::Resource(s) if s.resource == "https://orders.test" && s.scope.as_deref() == Some("orders:read"))
        );
        let step = orders.step_up.as_ref().expect("step-up");
        assert_eq!(step.acr_values, ["urn:loa:2"]);
        assert_eq!(step.max_age, Some(std::time::Duration::from_secs(300)));
        assert!(orders.csrf && orders.client.is_none());
        let ledger = r("/ledger/");
        assert!(
            matches!(&ledger.user_token, UserToken::Exchange(x) if x.audience == "https://ledger.test" && x.actor.is_some())
        );
        assert_eq!(ledger.token, TokenPolicy::Required);
        let jobs = r("/jobs/");
        assert_eq!(jobs.token, TokenPolicy::Client);
        assert!(!jobs.csrf);
        assert_eq!(
            jobs.client
                .as_ref()
                .and_then(|c| c.scope.clone())
                .as_deref(),
            Some("jobs")
        );
        let either = r("/either/");
        assert_eq!(either.token, TokenPolicy::UserOrClient);
        assert!(matches!(&either.user_token, UserToken::Resource(_)));
        assert_eq!(
            either
                .client
                .as_ref()
                .and_then(|c| c.resource.clone())
                .as_deref(),
            Some("https://orders.test")
        );
        // The login asks for each resource once, with the scopes the routes need.
        assert_eq!(
            login_resources(&c.routes),
            (
                vec!["https://orders.test".to_string()],
                vec!["orders:read".to_string()]
            )
        );

        let bad = r#"
            [[routes]]
            prefix = "/a/"
            upstream = "http://127.0.0.1:9"
            csrf = false
            [[routes]]
            prefix = "/b/"
            upstream = "http://127.0.0.1:9"
            token = "exchange"
            [[routes]]
            prefix = "/c/"
            upstream = "http://127.0.0.1:9"
            resource = "not a uri"
            [[routes]]
            prefix = "/d/"
            upstream = "http://127.0.0.1:9"
            token = "none"
            max_age = "1m"
            [[routes]]
            prefix = "/e/"
            upstream = "http://127.0.0.1:9"
            scopes = ["x"]
            [[routes]]
            prefix = "/f/"
            upstream = "http://127.0.0.1:9"
            token = "client"
            acr_values = ["a"]
        "#;
        let all = Config::from_toml(&format!("{GOOD}{bad}"), &env())
            .unwrap_err()
            .0
            .join("\n");
        for key in [
            "routes[2].csrf",
            "routes[3].exchange",
            "routes[4].resource",
            "routes[5]: acr_values and max_age",
            "routes[6].scopes",
            "routes[7]: acr_values and max_age",
        ] {
            assert!(all.contains(key), "missing {key} in:\n{all}");
        }
    }

    #[test]
    fn the_fapi2_profile_names_every_missing_piece() {
        let text = format!(
            "{GOOD}\n[[routes]]\nprefix = \"/b/\"\nupstream = \"http://127.0.0.1:9\"\ntoken = \"bearer\"\n\
             [[routes]]\nprefix = \"/c/\"\nupstream = \"http://127.0.0.1:9\"\ntoken = \"client\"\ncsrf = false\n\
             [[routes]]\nprefix = \"/x/\"\nupstream = \"http://127.0.0.1:9\"\ntoken = \"exchange\"\n\
             [routes.exchange]\naudience = \"https://x.example\"\n"
        );
        let mut e = env();
        e.insert("CLOAKROOM_OIDC_PROFILE".into(), "fapi2".into());
        e.insert("CLOAKROOM_OIDC_PAR".into(), "never".into());
        e.insert("CLOAKROOM_OIDC_CLOCK_SKEW".into(), "60s".into());
        let all = Config::from_toml(&text, &e).unwrap_err().0.join("\n");
        for key in [
            "oidc.par",
            "oidc.client_auth_method",
            "oidc.dpop",
            "oidc.clock_skew",
            "routes[2].token: `bearer`",
            "routes[3].token: `client`",
            "routes[4].token: `exchange`",
        ] {
            assert!(all.contains(key), "missing {key} in:\n{all}");
        }
        // Everything given: valid, and the skew defaults to FAPI 2.0's 10 s.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("key")
            .serialize_pem();
        let mut e = env();
        e.insert("CLOAKROOM_OIDC_PROFILE".into(), "fapi2".into());
        e.insert(
            "CLOAKROOM_OIDC_CLIENT_AUTH_METHOD".into(),
            "private_key_jwt".into(),
        );
        e.insert("CLOAKROOM_OIDC_CLIENT_KEY".into(), key);
        e.insert("CLOAKROOM_OIDC_DPOP".into(), "true".into());
        let c = Config::from_toml(GOOD, &e).expect("a FAPI 2.0 client");
        assert_eq!(c.oidc.profile, Profile::Fapi2);
        assert_eq!(c.oidc.clock_skew, FAPI2_MAX_CLOCK_SKEW);
    }

    #[test]
    fn mtls_needs_a_certificate_and_https_upstreams_need_upstream_client_cert() {
        let routes = r#"
            [[routes]]
            prefix = "/m/"
            upstream = "https://127.0.0.1:9443"
            upstream_client_cert = true
            [[routes]]
            prefix = "/h/"
            upstream = "https://127.0.0.1:9443"
        "#;
        let mut e = env();
        e.insert(
            "CLOAKROOM_OIDC_CLIENT_AUTH_METHOD".into(),
            "tls_client_auth".into(),
        );
        let all = Config::from_toml(&format!("{GOOD}{routes}"), &e)
            .unwrap_err()
            .0
            .join("\n");
        for key in [
            "oidc.client_cert_file",
            "routes[2].upstream_client_cert",
            "routes[3].upstream",
        ] {
            assert!(all.contains(key), "missing {key} in:\n{all}");
        }
        // A certificate and its key, as files and secrets: valid, no client secret needed.
        let dir = std::env::temp_dir().join(format!("cloakroom-cfg-mtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(dir.join("c.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("k.pem"), key.serialize_pem()).expect("write");
        let mut e = env();
        e.remove("CLOAKROOM_OIDC_CLIENT_SECRET");
        e.insert(
            "CLOAKROOM_OIDC_CLIENT_AUTH_METHOD".into(),
            "self_signed_tls_client_auth".into(),
        );
        e.insert(
            "CLOAKROOM_OIDC_CLIENT_CERT_FILE".into(),
            dir.join("c.pem").display().to_string(),
        );
        e.insert(
            "CLOAKROOM_OIDC_CLIENT_CERT_KEY_FILE".into(),
            dir.join("k.pem").display().to_string(),
        );
        let routes = "[[routes]]\nprefix = \"/m/\"\nupstream = \"https://127.0.0.1:9443\"\nupstream_client_cert = true\n";
        let c = Config::from_toml(&format!("{GOOD}{routes}"), &e).expect("valid mTLS config");
        assert!(c.oidc.client_cert.is_some());
        assert!(c.routes.iter().any(|r| r.upstream_client_cert));
        assert!(
            !format!("{c:?}").contains("PRIVATE KEY"),
            "the key stays out of Debug"
        );
        // A key that is not the certificate's is caught at start-up.
        let other = rcgen::KeyPair::generate().expect("key");
        std::fs::write(dir.join("k.pem"), other.serialize_pem()).expect("write");
        let all = Config::from_toml(&format!("{GOOD}{routes}"), &e)
            .unwrap_err()
            .0
            .join("\n");
        assert!(all.contains("CLOAKROOM_OIDC_CLIENT_CERT_KEY"), "{all}");
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
        assert_eq!(c.oidc.client_secret.expose(), "from-file");
        assert_eq!(c.server.listen.port(), 7000);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(300));
        assert!(c.cookie.persistent);
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
    fn private_key_jwt_needs_a_usable_key_and_no_secret() {
        let text = GOOD.replace(
            "client_id = \"spa\"",
            "client_id = \"spa\"\nclient_auth_method = \"private_key_jwt\"\nclient_assertion_audience = \"aud\"",
        );
        let mut e = env();
        e.remove("CLOAKROOM_OIDC_CLIENT_SECRET");
        let all = Config::from_toml(&text, &e).unwrap_err().0.join("\n");
        assert!(all.contains("CLOAKROOM_OIDC_CLIENT_KEY: required"), "{all}");
        assert!(all.contains("oidc.client_assertion_audience"), "{all}");
        assert!(!all.contains("CLOAKROOM_OIDC_CLIENT_SECRET"), "{all}");
        e.insert("CLOAKROOM_OIDC_CLIENT_KEY".into(), "not a key".into());
        let all = Config::from_toml(&text, &e).unwrap_err().0.join("\n");
        assert!(
            all.contains("CLOAKROOM_OIDC_CLIENT_KEY: no PEM private key"),
            "{all}"
        );
        assert!(!all.contains("not a key"), "{all}");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        e.insert("CLOAKROOM_OIDC_CLIENT_KEY".into(), key);
        let good = text.replace("client_assertion_audience = \"aud\"", "");
        let c = Config::from_toml(&good, &e).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.oidc.client_keys.len(), 1);
        assert_eq!(c.oidc.client_keys[0].kind(), crate::oidc::KeyKind::P256);
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
    #[test]
    fn several_providers_are_read_with_their_own_secrets_and_mistakes_are_named() {
        let two = r#"
            [server]
            public_url = "https://app.example.com"
            [oidc]
            issuer = "https://idp.example.com"
            client_id = "spa"
            timeout = "3s"
            default_provider = "partners"
            [[oidc.providers]]
            name = "partners"
            issuer = "https://partners.example.com/"
            client_id = "spa-partners"
            client_auth_method = "client_secret_post"
            scopes = ["openid", "email"]
            [[routes]]
            prefix = "/api/"
            upstream = "http://127.0.0.1:9000"
            providers = ["partners"]
        "#;
        let mut e = env();
        e.insert(
            "CLOAKROOM_OIDC_PARTNERS_CLIENT_SECRET".into(),
            "other".into(),
        );
        let c = Config::from_toml(two, &e).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.oidc.name, "default");
        assert_eq!(c.oidc.default_provider, "partners");
        let p = &c.oidc.providers[0];
        assert_eq!(
            (p.name.as_str(), p.issuer_id.as_str(), p.client_id.as_str()),
            ("partners", "https://partners.example.com/", "spa-partners")
        );
        assert_eq!(p.client_secret.expose(), "other");
        assert_eq!(p.client_auth, ClientAuth::Post);
        assert_eq!(p.timeout, Duration::from_secs(3), "inherited from [oidc]");
        assert_eq!(c.oidc.client_secret.expose(), "s3cret");
        assert_eq!(c.routes[0].providers, Some(vec![Some("partners".into())]));
        assert!(c.routes[0].takes_provider(Some("partners")));
        assert!(!c.routes[0].takes_provider(None));

        // Its own secret is required, under its own name; every mistake names its key.
        let bad = r#"
            [server]
            public_url = "https://app.example.com"
            [oidc]
            issuer = "https://idp.example.com"
            client_id = "spa"
            default_provider = "elsewhere"
            [[oidc.providers]]
            name = "partners"
            issuer = "https://partners.example.com"
            client_id = "x"
            [[oidc.providers]]
            name = "partners"
            issuer = "https://idp.example.com"
            client_id = "y"
            [[oidc.providers]]
            name = "Bad Name"
            client_id = "z"
            [[routes]]
            prefix = "/api/"
            upstream = "http://127.0.0.1:9000"
            providers = ["nobody"]
            [[routes]]
            prefix = "/pub/"
            upstream = "http://127.0.0.1:9000"
            token = "none"
            providers = ["default"]
        "#;
        let all = Config::from_toml(bad, &env()).unwrap_err().0.join("\n");
        for needle in [
            "oidc.default_provider: `elsewhere` is not a provider",
            "CLOAKROOM_OIDC_PARTNERS_CLIENT_SECRET: required",
            "oidc.providers[partners].name: `partners` is already a provider's name",
            "oidc.providers[partners].issuer: `https://idp.example.com` is already a provider's issuer",
            "oidc.providers[2].name: `Bad Name` must be",
            "oidc.providers[2].issuer: required",
            "routes[0].providers: `nobody` is not a provider",
            "routes[1].providers: only on routes that send the user's token",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // A provider's secret variable is not mistaken for a `CLOAKROOM_<SECTION>_<KEY>`.
        assert!(
            !all.contains("environment CLOAKROOM_OIDC_PARTNERS"),
            "{all}"
        );
        // One for no provider is a warning.
        let mut e = env();
        e.insert(
            "CLOAKROOM_OIDC_PARTNRES_CLIENT_SECRET".into(),
            "typo".into(),
        );
        let c = Config::from_toml(GOOD, &e).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("CLOAKROOM_OIDC_PARTNRES_CLIENT_SECRET")),
            "{:?}",
            c.warnings
        );
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
        let text = include_str!("../../../../config.toml");
        let c = Config::from_toml(text, &e).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.routes.len(), 1);
    }
}

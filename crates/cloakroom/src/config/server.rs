//! `[server]` and `[admin]`: the listeners, their limits, TLS, the public URL.

use super::{http_url, parse_addr, placeholder_url, read_secret, Env, Problems, Secret};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use url::Url;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
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
    workers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: String,
    key_file: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    listen: Option<String>,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
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
    /// Per-core runtimes serving the public listener (0: one per CPU the process may use).
    pub workers: usize,
}

/// `[admin]` and `CLOAKROOM_ADMIN_TOKEN`, validated.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin listener.
    pub listen: SocketAddr,
    /// Bearer token for `/admin/*` (None: admin API off).
    pub token: Option<Secret>,
}

impl ServerConfig {
    pub(super) fn build(raw: RawServer, errs: &mut Problems) -> Self {
        let listen = parse_addr("server.listen", raw.listen, "127.0.0.1:8080", errs);
        let public_url = match raw.public_url.as_deref() {
            None => {
                errs.push("server.public_url: required (the origin the browser uses)".into());
                placeholder_url()
            }
            Some(s) => http_url("server.public_url", s, errs).unwrap_or_else(placeholder_url),
        };
        let public_origin = public_url.origin().ascii_serialization();
        let mut trusted_proxies = Vec::new();
        for p in &raw.trusted_proxies {
            match p.parse::<IpAddr>() {
                Ok(ip) => trusted_proxies.push(ip),
                Err(_) => errs.push(format!(
                    "server.trusted_proxies: `{p}` is not an IP address"
                )),
            }
        }
        let auth_prefix = raw.auth_prefix.unwrap_or_else(|| "/auth".into());
        if !auth_prefix.starts_with('/') || auth_prefix.ends_with('/') || auth_prefix.len() < 2 {
            errs.push(format!(
                "server.auth_prefix: `{auth_prefix}` must start with `/` and not end with `/`"
            ));
        }
        let max_header_bytes = raw.max_header_bytes.unwrap_or(16 * 1024);
        if max_header_bytes < 1024 {
            errs.push("server.max_header_bytes: must be at least 1024".into());
        }
        let at_least_1s = |key: &str, d: Duration, errs: &mut Problems| {
            if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
                errs.push(format!("server.{key}: must be from 1s to 24h"));
            }
            d
        };
        let http1_idle_timeout = at_least_1s(
            "http1_idle_timeout",
            raw.http1_idle_timeout.unwrap_or(Duration::from_secs(60)),
            errs,
        );
        let http2_idle_timeout = at_least_1s(
            "http2_idle_timeout",
            raw.http2_idle_timeout.unwrap_or(Duration::from_secs(120)),
            errs,
        );
        let http2_keep_alive_interval = raw
            .http2_keep_alive_interval
            .unwrap_or(Duration::from_secs(20));
        if http2_keep_alive_interval > Duration::from_secs(24 * 3600) {
            errs.push(
                "server.http2_keep_alive_interval: must be at most 24h (0s: no pings)".into(),
            );
        }
        let http2_keep_alive_interval =
            (!http2_keep_alive_interval.is_zero()).then_some(http2_keep_alive_interval);
        let http2_keep_alive_timeout = at_least_1s(
            "http2_keep_alive_timeout",
            raw.http2_keep_alive_timeout
                .unwrap_or(Duration::from_secs(10)),
            errs,
        );
        let tunnel_idle_timeout = at_least_1s(
            "tunnel_idle_timeout",
            raw.tunnel_idle_timeout.unwrap_or(Duration::from_secs(300)),
            errs,
        );
        let http2_max_concurrent_streams = raw.http2_max_concurrent_streams.unwrap_or(256);
        if !(1..=10_000).contains(&http2_max_concurrent_streams) {
            errs.push("server.http2_max_concurrent_streams: must be from 1 to 10000".into());
        }
        let http2_max_header_list_size = raw
            .http2_max_header_list_size
            .unwrap_or_else(|| u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        if http2_max_header_list_size < 1024 {
            errs.push("server.http2_max_header_list_size: must be at least 1024".into());
        }
        let workers = raw.workers.unwrap_or(0);
        if workers > 1024 {
            errs.push(
                "server.workers: must be at most 1024 (0: one per CPU the process may use)".into(),
            );
        }
        Self {
            listen,
            public_url,
            public_origin,
            trusted_proxies,
            auth_prefix,
            header_read_timeout: raw.header_read_timeout.unwrap_or(Duration::from_secs(10)),
            max_header_bytes,
            max_connections: raw.max_connections.unwrap_or(10_000),
            shutdown_drain: raw.shutdown_drain.unwrap_or(Duration::from_secs(20)),
            login_rate_limit: raw.login_rate_limit.unwrap_or(60),
            login_rate_burst: raw.login_rate_burst.unwrap_or(20),
            max_connections_per_ip: raw.max_connections_per_ip.unwrap_or(512),
            http1_idle_timeout,
            http2_idle_timeout,
            http2_keep_alive_interval,
            http2_keep_alive_timeout,
            http2_max_concurrent_streams,
            http2_max_header_list_size,
            tunnel_idle_timeout,
            tls: raw.tls.map(|t| (t.cert_file, t.key_file)),
            workers,
        }
    }
}

impl AdminConfig {
    pub(super) fn build(raw: RawAdmin, env: &Env, errs: &mut Problems) -> Self {
        let listen = parse_addr("admin.listen", raw.listen, "127.0.0.1:9091", errs);
        let token = read_secret(env, "CLOAKROOM_ADMIN_TOKEN", errs);
        if let Some(t) = &token {
            if t.expose().len() < 16 {
                errs.push("CLOAKROOM_ADMIN_TOKEN: must be at least 16 characters".into());
            }
        }
        Self { listen, token }
    }
}

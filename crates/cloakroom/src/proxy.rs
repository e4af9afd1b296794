//! API proxying (SPEC §2): route matching, the upstream request's header policy, one shared
//! pooled upstream client, streaming bodies both ways, WebSocket upgrades.
//!
//! Request header policy, in order (RFC 9110 §7.6.1 for hop-by-hop):
//! 1. drop every header named in `Connection`, then the fixed hop-by-hop list;
//! 2. drop the browser's `Authorization`, the whole `Cookie` header, the CSRF header and `Host`;
//! 3. [`ForwardedPolicy`]: drop every forwarding header ([`REMOVED_FORWARDING`]) whatever the
//!    peer; `X-Forwarded-Host/-Proto` from `server.public_url`; `X-Forwarded-For` appended to
//!    for a trusted proxy, replaced for anyone else;
//! 4. add `Authorization: Bearer <access token>` when the route and the session give one, or,
//!    for a DPoP-bound token (RFC 9449 §7), `Authorization: DPoP <access token>` and a `DPoP`
//!    proof for this request's method and upstream URI, signed with the session's key.
//!
//! Because step 4 comes after step 1, `Connection: authorization` cannot strip our bearer.
//!
//! With tracing on, the request also carries the `traceparent` of its `upstream` span
//! ([`crate::trace`]); a browser's own trace headers reach here only when
//! `telemetry.trust_incoming_trace` is on (the router removes them otherwise).
//!
//! An upstream that refuses a DPoP request for want of a nonce (`401`, `WWW-Authenticate:
//! DPoP error="use_dpop_nonce"`, `DPoP-Nonce`, §9) gets the request once more with a new proof
//! carrying the nonce, when the request can be sent again: no body, or one of at most
//! [`DPOP_REPLAY_BODY`] bytes (buffered before the first attempt for that reason). A bigger
//! body streams, and the `401` goes back to the browser. Each upstream's last nonce is put in
//! the next proof to it, so the retry is needed about once per nonce the upstream issues.
//!
//! Response policy ([`filter_response`]), on every route and on `101`: `Set-Cookie` naming our
//! cookies, `Clear-Site-Data` and `x-cloakroom-error` (the mark of our own errors) are dropped; token routes get `Cache-Control: private` when
//! the upstream sent none. WebSocket tunnels and event streams are registered with their
//! session in [`crate::tunnels::Tunnels`].

use crate::body::{empty, Body};
use crate::config::{CookieConfig, Route, ServerConfig, TokenScheme, UpstreamConfig};
use crate::error::Error;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tracing::Instrument;

/// RFC 9110 §7.6.1 hop-by-hop headers (plus the legacy `Proxy-Connection` and `Keep-Alive`).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The upstream clients: built once, pooled, `TCP_NODELAY`; one pool per core
/// ([`crate::cores`]), so a request is forwarded on a connection of its own core's.
#[derive(Clone, Debug)]
pub struct Forwarder {
    clients: PerCore<Client<CountingConnector, Body>>,
    /// HTTPS with the client certificate, for `upstream_client_cert` routes (RFC 8705).
    mtls: Option<PerCore<Client<hyper_rustls::HttpsConnector<CountingConnector>, Body>>>,
    /// The upstreams' last `DPoP-Nonce`s, by origin.
    nonces: crate::oidc::dpop::Nonces,
    forwarded: ForwardedPolicy,
    ours: OurCookies,
    csrf_header: HeaderName,
    tunnels: crate::tunnels::Tunnels,
}

/// One `T` per core: the calling core's, or the first one for a thread that is no core's.
#[derive(Clone, Debug)]
struct PerCore<T>(std::sync::Arc<[T]>);

impl<T> PerCore<T> {
    fn new(n: usize, make: impl FnMut(usize) -> T) -> Self {
        Self((0..n.max(1)).map(make).collect())
    }

    fn get(&self) -> &T {
        &self.0[crate::cores::current().unwrap_or(0) % self.0.len()]
    }
}

/// The forwarding stage, behind a trait so that tests, or a future per-route token policy,
/// can put something else behind the router: the request has passed every check and carries
/// no credential of the browser's; `ctx` says what to attach.
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Forwards one request to `route` and streams the answer back.
    fn forward<'a>(
        &'a self,
        route: &'a Route,
        route_label: &'static str,
        req: Request<Incoming>,
        ctx: ForwardCtx<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<Response<Body>, Error>>;
}

impl Upstream for Forwarder {
    fn forward<'a>(
        &'a self,
        route: &'a Route,
        route_label: &'static str,
        req: Request<Incoming>,
        ctx: ForwardCtx<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<Response<Body>, Error>> {
        Box::pin(async move { forward(self, route, route_label, req, &ctx).await })
    }
}

/// Wraps the HTTP connector so every upstream connection is counted while it lives
/// (`cloakroom_upstream_connections_active`) and when opened
/// (`cloakroom_upstream_connections_opened_total`).
#[derive(Clone, Debug)]
pub struct CountingConnector(HttpConnector);

impl tower_service::Service<Uri> for CountingConnector {
    type Response = Counted<<HttpConnector as tower_service::Service<Uri>>::Response>;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.0.call(uri);
        Box::pin(async move {
            let io = fut.await?;
            Ok(Counted {
                inner: io,
                _guard: crate::metrics::UpstreamConnGuard::new(),
            })
        })
    }
}

/// An upstream connection, counted until dropped.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    _guard: crate::metrics::UpstreamConnGuard,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection>
    hyper_util::client::legacy::connect::Connection for Counted<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected()
    }
}

impl Forwarder {
    /// Builds the pooled clients (one per core of `cores`) from the `[upstream]` settings; the
    /// forwarding headers from `[server]`, our cookies from `[cookie]` and `csrf_header` are
    /// the headers policy; upgraded tunnels and event streams are registered in `tunnels`.
    #[must_use]
    pub fn new(
        upstream: &UpstreamConfig,
        server: &ServerConfig,
        cookie: &CookieConfig,
        csrf_header: HeaderName,
        tunnels: crate::tunnels::Tunnels,
        cores: usize,
    ) -> Self {
        let clients = PerCore::new(cores, |_| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(upstream.connect_timeout));
            connector.enforce_http(true);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(upstream.pool_idle_timeout)
                .pool_max_idle_per_host(1024)
                .pool_timer(hyper_util::rt::TokioTimer::new())
                // hyper retries only a request it never started writing (a pooled connection
                // that turned out closed); a request that reached an upstream is never sent
                // twice, whatever its method.
                .retry_canceled_requests(true)
                .build(CountingConnector(connector))
        });
        Self {
            clients,
            mtls: None,
            forwarded: ForwardedPolicy::new(server),
            ours: OurCookies::new(cookie),
            csrf_header,
            tunnels,
            nonces: crate::oidc::dpop::Nonces::default(),
        }
    }
}

impl Forwarder {
    /// Adds the HTTPS client for `upstream_client_cert` routes: it presents `cert` and trusts
    /// the WebPKI roots and `upstream.tls_ca_file`.
    ///
    /// # Errors
    /// When the certificate, its key or a CA cannot be used.
    pub fn with_client_cert(
        mut self,
        upstream: &UpstreamConfig,
        cert: &crate::oidc::ClientCert,
    ) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &upstream.tls_ca {
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| format!("upstream.tls_ca_file: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| format!("upstream.tls_ca_file: {e}"))?;
            }
        }
        let (chain, key) = cert.rustls()?;
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("oidc.client_cert_file: {e}"))?;
        self.mtls = Some(PerCore::new(self.clients.0.len(), |_| {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.set_connect_timeout(Some(upstream.connect_timeout));
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_only()
                .enable_http1()
                .wrap_connector(CountingConnector(http));
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(upstream.pool_idle_timeout)
                .pool_max_idle_per_host(1024)
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .retry_canceled_requests(true)
                .build(https)
        }));
        Ok(self)
    }
}

/// The route for a path: longest prefix wins (routes are sorted longest first).
#[must_use]
pub fn match_route<'r>(routes: &'r [Route], path: &str) -> Option<&'r Route> {
    match_route_index(routes, path).map(|i| &routes[i])
}

/// As [`match_route`], by position (the router uses it: one matcher, the property-tested one).
#[must_use]
pub fn match_route_index(routes: &[Route], path: &str) -> Option<usize> {
    routes.iter().position(|r| path.starts_with(&r.prefix))
}

/// The part of `path` under the browser-facing prefix (`/auth`): the prefix itself or
/// `{prefix}/…`, never a longer segment (`/authors/` is not under `/auth`).
#[must_use]
pub fn under_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Paths with dot segments (literal or percent-encoded) are refused, so a prefix like `/api/`
/// cannot be escaped with `/api/../admin` or `/api/%2e%2e/admin` at an upstream that normalises.
#[must_use]
pub fn has_dot_segment(path: &str) -> bool {
    // Without a `.` or a `%` no segment can be a dot segment: skip the copies (the usual case).
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    let lower = path
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace("%3b", ";");
    // A segment counts up to its first `;`: Tomcat, Jetty and older Spring read `..;x` as `..`.
    lower
        .split(['/', '\\'])
        .map(|seg| seg.split(';').next().unwrap_or(seg))
        .any(|seg| seg == "." || seg == "..")
}

/// Whether the request asks for a protocol upgrade (WebSocket).
#[must_use]
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers: those named in `Connection` and the fixed list.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    remove_where(headers, |n| HOP_BY_HOP.contains(&n));
}

/// Removes every header whose name `doomed` picks, in one pass over the names present (a
/// request has a handful; looking up each listed name instead parses and hashes every one of
/// them, which showed in the profile).
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| doomed(n.as_str()))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// Forwarding headers that are removed from every request, whatever the peer (SPEC §2 v2):
/// frameworks and proxies believe them (Spring's `ForwardedHeaderFilter`, nginx `real_ip`,
/// Rails, Express `trust proxy`, IIS/Symfony URL rewrites), and Cloakroom does not vouch for
/// them. `X-Forwarded-For`, `-Host` and `-Proto` are removed too, then set by Cloakroom.
pub const REMOVED_FORWARDING: [&str; 21] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded",
    "forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
];

/// The upstream request's forwarding headers, from configuration (SPEC §2 v2):
/// - `X-Forwarded-Host` and `X-Forwarded-Proto` always come from `server.public_url`;
/// - `X-Forwarded-For` is the client's chain with the peer appended when the peer is in
///   `server.trusted_proxies`, else the peer alone;
/// - every other header in [`REMOVED_FORWARDING`] is removed, whatever the peer.
///
/// The constant values are computed once, at start-up.
#[derive(Debug, Clone)]
pub struct ForwardedPolicy {
    host: Option<HeaderValue>,
    proto: HeaderValue,
    trusted: Vec<IpAddr>,
}

impl ForwardedPolicy {
    /// Precomputes the header values from `server.public_url` and `server.trusted_proxies`.
    #[must_use]
    pub fn new(server: &ServerConfig) -> Self {
        let host = server.public_url.host_str().and_then(|h| {
            let v = match server.public_url.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            };
            HeaderValue::from_str(&v).ok()
        });
        let proto = HeaderValue::from_str(server.public_url.scheme())
            .unwrap_or_else(|_| HeaderValue::from_static("https"));
        Self {
            host,
            proto,
            trusted: server.trusted_proxies.clone(),
        }
    }

    /// Applies the policy to an upstream request's headers.
    pub fn apply(&self, headers: &mut HeaderMap, peer: SocketAddr) {
        let ip = peer.ip();
        let xff = if self.trusted.contains(&ip) {
            let prior: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            if prior.is_empty() {
                ip.to_string()
            } else {
                format!("{}, {ip}", prior.join(", "))
            }
        } else {
            ip.to_string()
        };
        remove_where(headers, |n| REMOVED_FORWARDING.contains(&n));
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            self.proto.clone(),
        );
        if let Some(h) = &self.host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
        }
    }
}

/// Which of Cloakroom's cookies a `Set-Cookie` value names, if any: the session cookie or a
/// login cookie (`<login name>` or `<login name>-<anything>`), in any prefix variant (none,
/// `__Host-`, `__Secure-`), names and prefixes compared case-insensitively.
#[derive(Debug, Clone)]
pub struct OurCookies {
    session: String,
    login: String,
    login_dash: String,
}

/// A cookie name without its `__Host-` / `__Secure-` prefix (matched case-insensitively).
fn unprefixed(name: &[u8]) -> &[u8] {
    for p in [b"__host-".as_slice(), b"__secure-".as_slice()] {
        if name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p) {
            return &name[p.len()..];
        }
    }
    name
}

impl OurCookies {
    /// From `cookie.name` and `cookie.login_name`.
    #[must_use]
    pub fn new(cookie: &CookieConfig) -> Self {
        let base = |n: &str| String::from_utf8_lossy(unprefixed(n.as_bytes())).to_ascii_lowercase();
        let login = base(&cookie.login_name);
        Self {
            session: base(&cookie.name),
            login_dash: format!("{login}-"),
            login,
        }
    }

    /// `Some("session")` or `Some("login")` when `set_cookie` (a `Set-Cookie` field value)
    /// would set or clear one of ours. A value without `=` sets a cookie with an empty name
    /// whose value some servers read as a name, so the whole pair counts as the name then.
    #[must_use]
    pub fn names(&self, set_cookie: &[u8]) -> Option<&'static str> {
        let pair = set_cookie.split(|b| *b == b';').next().unwrap_or_default();
        let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
        let name = name.trim_ascii();
        let base = unprefixed(name);
        if base.eq_ignore_ascii_case(self.session.as_bytes()) {
            Some("session")
        } else if base.eq_ignore_ascii_case(self.login.as_bytes())
            || (base.len() > self.login_dash.len()
                && base[..self.login_dash.len()].eq_ignore_ascii_case(self.login_dash.as_bytes()))
        {
            Some("login")
        } else {
            None
        }
    }
}

/// The response-side policy (SPEC §2 v2), on every route and on `101`:
/// `Set-Cookie` fields naming our cookies, `Clear-Site-Data` and [`crate::error::ERROR_HEADER`]
/// are dropped (logged and counted, never with a value); on token routes a response without `Cache-Control` gets
/// `Cache-Control: private`.
pub fn filter_response(
    ours: &OurCookies,
    headers: &mut HeaderMap,
    route_label: &'static str,
    token_route: bool,
) {
    if headers.contains_key(header::SET_COOKIE) {
        let all: Vec<HeaderValue> = match headers.entry(header::SET_COOKIE) {
            header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
            header::Entry::Vacant(_) => Vec::new(),
        };
        for v in all {
            if let Some(which) = ours.names(v.as_bytes()) {
                tracing::warn!(
                    route = route_label,
                    cookie = which,
                    "dropped an upstream Set-Cookie naming a Cloakroom cookie"
                );
                crate::metrics::upstream_header_dropped(route_label, "set-cookie");
            } else {
                headers.append(header::SET_COOKIE, v);
            }
        }
    }
    // Only Cloakroom's own error answers carry this mark (the SPA client follows a 401's
    // `login_url` only then): an upstream's copy would make its body look like ours.
    if headers.remove(crate::error::ERROR_HEADER).is_some() {
        tracing::warn!(
            route = route_label,
            "dropped an upstream x-cloakroom-error header"
        );
        crate::metrics::upstream_header_dropped(route_label, crate::error::ERROR_HEADER);
    }
    // `remove` takes every field of the name.
    if headers.remove("clear-site-data").is_some() {
        tracing::warn!(
            route = route_label,
            "dropped an upstream Clear-Site-Data header"
        );
        crate::metrics::upstream_header_dropped(route_label, "clear-site-data");
    }
    if token_route && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

fn upstream_uri(route: &Route, uri: &Uri) -> Result<Uri, Error> {
    use std::fmt::Write as _;
    let path = uri.path();
    let host = route
        .upstream
        .host_str()
        .ok_or_else(|| Error::Internal("route without host".into()))?;
    let base = route.upstream.path().trim_end_matches('/');
    let rest = if route.strip_prefix {
        &path[route.prefix.len().min(path.len())..]
    } else {
        path
    };
    let query = uri.query();
    // One buffer, sized up front, handed to the `Uri` without a copy.
    let mut target = String::with_capacity(
        route.upstream.scheme().len()
            + host.len()
            + base.len()
            + rest.len()
            + query.map_or(0, str::len)
            + 16,
    );
    target.push_str(route.upstream.scheme());
    target.push_str("://");
    target.push_str(host);
    if let Some(p) = route.upstream.port() {
        let _ = write!(target, ":{p}");
    }
    target.push_str(base);
    if route.strip_prefix && !rest.starts_with('/') {
        target.push('/');
    }
    target.push_str(rest);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    Uri::try_from(target).map_err(|_| Error::InvalidRequest("path cannot be forwarded".into()))
}

/// What a forwarded request carries besides itself.
#[derive(Debug)]
pub struct ForwardCtx<'a> {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The access token to attach, when the route and the session (or Cloakroom's own client
    /// token) give one.
    pub bearer: Option<crate::session::Credential<'a>>,
    /// The request id, passed upstream as `X-Request-Id`.
    pub request_id: &'a HeaderValue,
    /// The session's handle, when there is a session: tunnels and event streams opened by
    /// this request are registered with it ([`crate::tunnels::Tunnels::close_session`]).
    pub session: Option<&'a str>,
}

/// Forwards one request to `route`'s upstream and streams the answer back.
///
/// # Errors
/// [`Error::UpstreamUnavailable`], [`Error::UpstreamTimeout`], [`Error::InvalidRequest`].
async fn forward(
    forwarder: &Forwarder,
    route: &Route,
    route_label: &'static str,
    mut req: Request<Incoming>,
    ctx: &ForwardCtx<'_>,
) -> Result<Response<Body>, Error> {
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let upgrade_proto = req.headers().get(header::UPGRADE).cloned();
    let lease = req.extensions().get::<crate::server::ConnLease>().cloned();

    let uri = upstream_uri(route, req.uri())?;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(header::UPGRADE);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::COOKIE);
    headers.remove(header::HOST);
    headers.remove(&forwarder.csrf_header);
    forwarder.forwarded.apply(headers, ctx.peer);
    headers.insert(
        HeaderName::from_static("x-request-id"),
        ctx.request_id.clone(),
    );
    if let Some(proto) = upgrade_proto.filter(|_| upgrade) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    let dpop_key = match (ctx.bearer, route.scheme) {
        (Some(t), TokenScheme::AsIssued | TokenScheme::Dpop) if t.dpop.is_some() => t.dpop,
        (Some(_), TokenScheme::Dpop) => return Err(Error::DpopRequired),
        _ => None,
    };
    let span = crate::trace::span!("upstream", otel.kind = "client");
    crate::trace::upstream_request(&span, &mut req, route_label);
    let started = Instant::now();
    let call = async {
        match (ctx.bearer, dpop_key) {
            (Some(cred), Some(key)) => forward_dpop(forwarder, route, req, cred.token, key).await,
            (bearer, _) => {
                if let Some(cred) = bearer {
                    let v = cred.header.get(cred.token).ok_or_else(|| {
                        Error::Internal("access token is not a header value".into())
                    })?;
                    req.headers_mut().insert(header::AUTHORIZATION, v);
                }
                send(forwarder, route, req.map(BodyExt::boxed)).await
            }
        }
    };
    let sent = call.instrument(span.clone()).await;
    crate::trace::client_done(
        &span,
        match &sent {
            Ok(r) => Ok(r.status().as_u16()),
            Err(Error::UpstreamTimeout) => Err("timeout"),
            Err(Error::UpstreamUnavailable(_)) => Err("unavailable"),
            Err(_) => Err("refused"),
        },
    );
    let mut resp = sent?;
    crate::metrics::upstream(route_label, started.elapsed());
    let token_route = route.token != crate::config::TokenPolicy::None;

    if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        if let Some(client_upgrade) = client_upgrade {
            // Registered now, so the tunnel counts (and can be closed) from the 101 on.
            let guard = forwarder.tunnels.register(ctx.session, lease);
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await)
                else {
                    return;
                };
                crate::tunnels::pump(TokioIo::new(client), TokioIo::new(upstream), guard).await;
            });
        }
        let (mut parts, _) = resp.into_parts();
        filter_response(&forwarder.ours, &mut parts.headers, route_label, false);
        return Ok(Response::from_parts(parts, empty()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    filter_response(
        &forwarder.ours,
        &mut parts.headers,
        route_label,
        token_route,
    );
    let event_stream = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        });
    let body = if event_stream {
        let guard = forwarder.tunnels.register(ctx.session, lease);
        crate::tunnels::GuardedStream::new(body, guard).boxed()
    } else {
        body.boxed()
    };
    Ok(Response::from_parts(parts, body))
}

/// One request to the upstream, within the route's timeout.
async fn send(
    forwarder: &Forwarder,
    route: &Route,
    req: Request<Body>,
) -> Result<Response<Incoming>, Error> {
    let call = async {
        match &forwarder.mtls {
            Some(mtls) if route.upstream_client_cert => mtls.get().request(req).await,
            _ => forwarder.clients.get().request(req).await,
        }
    };
    match tokio::time::timeout(route.timeout, call).await {
        Err(_) => Err(Error::UpstreamTimeout),
        Ok(Err(e)) => Err(Error::UpstreamUnavailable(Box::new(e))),
        Ok(Ok(r)) => Ok(r),
    }
}

/// The largest request body kept so that a DPoP request refused for want of a nonce can be
/// sent again (see the module docs).
pub const DPOP_REPLAY_BODY: u64 = 64 * 1024;

/// Sends `req` with `Authorization: DPoP` and a proof made with `key`, and, when the upstream
/// asks for a nonce and the request can be replayed, once more with it.
async fn forward_dpop(
    forwarder: &Forwarder,
    route: &Route,
    req: Request<Incoming>,
    token: &crate::secret::Secret,
    key: &crate::oidc::DpopKey,
) -> Result<Response<Incoming>, Error> {
    // Wall-clock time: the upstream compares `iat` with its own clock.
    let now = crate::session::now_unix();
    let mut auth = HeaderValue::from_str(&format!("DPoP {}", token.expose()))
        .map_err(|_| Error::Internal("access token is not a header value".into()))?;
    auth.set_sensitive(true);
    let (mut parts, body) = req.into_parts();
    parts.headers.insert(header::AUTHORIZATION, auth);
    let origin = crate::oidc::dpop::origin_of(&parts.uri);
    let uri = parts.uri.to_string();
    let method = parts.method.clone();
    let proof = |nonce: Option<String>| -> Result<HeaderValue, Error> {
        let p = key
            .proof(
                method.as_str(),
                &uri,
                Some(token.expose()),
                nonce.as_deref(),
                now,
            )
            .map_err(Error::Internal)?;
        let mut v = HeaderValue::from_str(p.expose())
            .map_err(|_| Error::Internal("DPoP proof is not a header value".into()))?;
        v.set_sensitive(true);
        Ok(v)
    };
    // A body that can be sent twice: none, or a small one read now (its size as HTTP/1's
    // framing or HTTP/2's END_STREAM and content-length tell it).
    use hyper::body::Body as _;
    let upper = body.size_hint().upper();
    let ended = body.is_end_stream();
    let (replayable, first_body): (Option<bytes::Bytes>, Body) = match upper {
        _ if ended => (Some(bytes::Bytes::new()), empty()),
        Some(n) if n <= DPOP_REPLAY_BODY => {
            let limited = http_body_util::Limited::new(body, DPOP_REPLAY_BODY as usize);
            match limited.collect().await {
                Ok(b) => {
                    let b = b.to_bytes();
                    (Some(b.clone()), crate::body::full(b))
                }
                Err(_) => return Err(Error::InvalidRequest("request body not read".into())),
            }
        }
        _ => (None, body.boxed()),
    };
    parts
        .headers
        .insert("dpop", proof(forwarder.nonces.get(&origin))?);
    let again = replayable.as_ref().map(|b| {
        let mut r = Request::new(crate::body::full(b.clone()));
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.version_mut() = parts.version;
        *r.headers_mut() = parts.headers.clone();
        r
    });
    let resp = send(forwarder, route, Request::from_parts(parts, first_body)).await?;
    if let Some(n) = resp.headers().get("dpop-nonce") {
        forwarder.nonces.set(&origin, n.as_bytes());
    }
    match again {
        Some(mut again) if crate::oidc::dpop::asks_for_nonce(resp.status(), resp.headers()) => {
            crate::metrics::dpop_nonce_retry("upstream");
            again
                .headers_mut()
                .insert("dpop", proof(forwarder.nonces.get(&origin))?);
            let resp = send(forwarder, route, again).await?;
            if let Some(n) = resp.headers().get("dpop-nonce") {
                forwarder.nonces.set(&origin, n.as_bytes());
            }
            Ok(resp)
        }
        _ => Ok(resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_detected_in_every_spelling() {
        for bad in [
            "/api/../admin",
            "/api/./x",
            "/api/..",
            "/api/%2e%2e/admin",
            "/api/%2E%2e/admin",
            "/api/.%2e/admin",
            "/api%2f..%2fadmin",
            "/api/..\\admin",
            "/public/%2E%2E%2Fapi",
            "/api/..;/admin",
            "/api/%2e%2e;/admin",
            "/api/.;x/admin",
            "/api/..%3b/admin",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in ["/api/x", "/api/a.b/c..d", "/api/...", "/api/%2e%2e%2e"] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }

    fn test_config() -> crate::config::Config {
        let mut env = crate::config::Env::new();
        env.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), "s".into());
        env.insert(
            "CLOAKROOM_COOKIE_KEYS".into(),
            crate::crypto::KeyRing::generate_entry(1),
        );
        crate::config::Config::from_toml(
            "[server]\npublic_url = \"https://app.example\"\ntrusted_proxies = [\"10.0.0.1\"]\n\
             [oidc]\nissuer = \"https://idp.example\"\nclient_id = \"spa\"\n",
            &env,
        )
        .expect("config")
    }

    #[test]
    fn our_cookies_are_dropped_from_responses_and_others_kept() {
        let ours = OurCookies::new(&test_config().cookie);
        let mut h = HeaderMap::new();
        for v in [
            "__Host-cloakroom=x; Path=/",
            "__secure-CLOAKROOM=x",
            "cloakroom-login-abc=x",
            "__Host-cloakroom-login=x",
            "keep=1",
            "cloakroom-loginx=1",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_static(v));
        }
        h.append("clear-site-data", HeaderValue::from_static("\"*\""));
        h.append(
            "x-cloakroom-error",
            HeaderValue::from_static("unauthenticated"),
        );
        filter_response(&ours, &mut h, "/t/", true);
        assert!(h.get(crate::error::ERROR_HEADER).is_none(), "not ours");
        let left: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, ["keep=1", "cloakroom-loginx=1"]);
        assert!(h.get("clear-site-data").is_none());
        assert_eq!(h[header::CACHE_CONTROL], "private");
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        filter_response(&ours, &mut h, "/t/", true);
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        let mut h = HeaderMap::new();
        filter_response(&ours, &mut h, "/t/", false);
        assert!(h.get(header::CACHE_CONTROL).is_none());
    }

    #[test]
    fn forwarded_headers_follow_the_policy() {
        let policy = ForwardedPolicy::new(&test_config().server);
        let spoof = |h: &mut HeaderMap| {
            for (n, v) in [
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "evil"),
                ("x-forwarded-proto", "http"),
                ("x-real-ip", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("true-client-ip", "6.6.6.6"),
            ] {
                h.insert(n, HeaderValue::from_static(v));
            }
        };
        let mut h = HeaderMap::new();
        spoof(&mut h);
        policy.apply(&mut h, "10.0.0.1:1".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.0.0.1");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["x-forwarded-proto"], "https");
        for n in ["x-real-ip", "forwarded", "true-client-ip"] {
            assert!(h.get(n).is_none(), "{n}");
        }
        let mut h = HeaderMap::new();
        spoof(&mut h);
        policy.apply(&mut h, "192.0.2.7:1".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-host"], "app.example");
    }

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("te").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-keep").is_some());
    }
}

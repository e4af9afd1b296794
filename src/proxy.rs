//! API proxying (SPEC §2): route matching, the upstream request's header policy, one shared
//! pooled upstream client, streaming bodies both ways, WebSocket upgrades.
//!
//! Header policy, in order (RFC 9110 §7.6.1 for hop-by-hop):
//! 1. drop every header named in `Connection`, then the fixed hop-by-hop list;
//! 2. drop the browser's `Authorization`, the whole `Cookie` header, the CSRF header, `Host`
//!    and `Forwarded`;
//! 3. set `X-Forwarded-For/-Proto/-Host` (appending to a trusted proxy's, replacing anyone else's);
//! 4. add `Authorization: Bearer <access token>` when the route and the session give one.
//!
//! Because step 4 comes after step 1, `Connection: authorization` cannot strip our bearer.

use crate::body::{empty, Body};
use crate::config::{Config, Route};
use crate::error::Error;
use crate::secret::Secret;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

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

/// The shared upstream client: built once, pooled, `TCP_NODELAY`.
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: Client<CountingConnector, Incoming>,
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
    /// Builds the pooled client from the `[upstream]` settings.
    #[must_use]
    pub fn new(config: &Config) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.upstream_connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.upstream_pool_idle_timeout)
            .pool_max_idle_per_host(1024)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            // hyper retries only a request it never started writing (a pooled connection that
            // turned out closed); a request that reached an upstream is never sent twice,
            // whatever its method.
            .retry_canceled_requests(true)
            .build(CountingConnector(connector));
        Self { client }
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

/// The client's IP: the peer, or (from a trusted proxy) the last untrusted hop of its
/// `X-Forwarded-For`.
#[must_use]
pub fn client_ip(config: &Config, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    if !config.trusted_proxies.contains(&peer.ip()) {
        return peer.ip();
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !config.trusted_proxies.contains(ip))
        .copied()
        .unwrap_or(peer.ip())
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
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

/// Forwarding headers a client could use to lie about itself; from an untrusted peer they are
/// all removed before ours are set.
const SPOOFABLE: [&str; 8] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-real-ip",
    "x-client-ip",
];

/// Sets `X-Forwarded-For/-Proto/-Host` (SPEC §2).
///
/// From a trusted proxy, its values are kept (`X-Forwarded-For` gets the peer appended). From
/// anyone else, every forwarding header in [`SPOOFABLE`] is removed, and ours are the peer's
/// address, the public URL's scheme and the public URL's host: a client's `Host` header never
/// reaches the upstream as `X-Forwarded-Host` (host-header poisoning, ASVS 5.0 4.1.3).
pub fn set_forwarded(
    config: &Config,
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: Option<&str>,
) {
    let trusted = config.trusted_proxies.contains(&peer.ip());
    let public_host = || {
        config
            .public_url
            .host_str()
            .map(|h| match config.public_url.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
    };
    let (xff, proto, fwd_host) = if trusted {
        let prior: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let xff = if prior.is_empty() {
            peer.ip().to_string()
        } else {
            format!("{}, {}", prior.join(", "), peer.ip())
        };
        let proto = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| config.public_url.scheme().to_string(), String::from);
        let fwd_host = headers
            .get("x-forwarded-host")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .or_else(|| host.map(String::from))
            .or_else(public_host);
        (xff, proto, fwd_host)
    } else {
        for name in SPOOFABLE {
            headers.remove(name);
        }
        (
            peer.ip().to_string(),
            config.public_url.scheme().to_string(),
            public_host(),
        )
    };
    for (name, value) in [
        ("x-forwarded-for", Some(xff)),
        ("x-forwarded-proto", Some(proto)),
        ("x-forwarded-host", fwd_host),
    ] {
        headers.remove(name);
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(HeaderName::from_static(name), v);
        }
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
    /// The session's access token, when the route and the session give one.
    pub bearer: Option<&'a Secret>,
    /// The request id, passed upstream as `X-Request-Id`.
    pub request_id: &'a HeaderValue,
}

/// Forwards one request to `route`'s upstream and streams the answer back.
///
/// # Errors
/// [`Error::UpstreamUnavailable`], [`Error::UpstreamTimeout`], [`Error::InvalidRequest`].
pub async fn forward(
    forwarder: &Forwarder,
    config: &Config,
    route: &Route,
    route_label: &'static str,
    mut req: Request<Incoming>,
    ctx: &ForwardCtx<'_>,
) -> Result<Response<Body>, Error> {
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let upgrade_proto = req.headers().get(header::UPGRADE).cloned();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));

    let uri = upstream_uri(route, req.uri())?;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(header::UPGRADE);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::COOKIE);
    headers.remove(header::HOST);
    headers.remove("forwarded");
    headers.remove(&config.csrf_header);
    set_forwarded(config, headers, ctx.peer, host.as_deref());
    headers.insert(
        HeaderName::from_static("x-request-id"),
        ctx.request_id.clone(),
    );
    if let Some(proto) = upgrade_proto.filter(|_| upgrade) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    if let Some(token) = ctx.bearer {
        let v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| Error::Internal("access token is not a header value".into()))?;
        let mut v = v;
        v.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, v);
    }

    let started = Instant::now();
    let mut resp = match tokio::time::timeout(route.timeout, forwarder.client.request(req)).await {
        Err(_) => return Err(Error::UpstreamTimeout),
        Ok(Err(e)) => return Err(Error::UpstreamUnavailable(Box::new(e))),
        Ok(Ok(r)) => r,
    };
    crate::metrics::upstream(route_label, started.elapsed());

    if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        if let Some(client_upgrade) = client_upgrade {
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await)
                else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, empty()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
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

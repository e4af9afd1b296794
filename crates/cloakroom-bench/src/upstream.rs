//! The fast upstream: a minimal hyper HTTP/1.1 server (keep-alive) answering every request with
//! the same small body. Counts accepted connections and requests, and how many requests arrived
//! with a bearer and with a cookie; on demand it keeps the `Authorization` and `Cookie` of the
//! next request, so the benchmark can check what a proxy forwarded.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the upstream answers: a small JSON document, as a typical API call would get.
pub(crate) const BODY: &[u8] = br#"{"id":42,"name":"cloakroom-bench","items":[1,2,3],"ok":true}"#;

#[derive(Default, Debug)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    /// Requests with `Authorization: Bearer …`.
    bearer: AtomicU64,
    /// Requests with a `Cookie` header.
    cookie: AtomicU64,
    /// Keep the headers of the next request (then cleared).
    capture: AtomicBool,
    captured: Mutex<Option<Seen>>,
}

/// What one request brought to the upstream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    pub authorization: Option<String>,
    pub cookie: Option<String>,
}

impl Counters {
    fn record(&self, headers: &http::HeaderMap) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let auth = headers.get(http::header::AUTHORIZATION);
        if auth.is_some_and(|v| v.as_bytes().starts_with(b"Bearer ")) {
            self.bearer.fetch_add(1, Ordering::Relaxed);
        }
        let cookie = headers.get(http::header::COOKIE);
        if cookie.is_some() {
            self.cookie.fetch_add(1, Ordering::Relaxed);
        }
        // One relaxed load per request unless a capture is pending.
        if self.capture.load(Ordering::Relaxed) && self.capture.swap(false, Ordering::AcqRel) {
            let text = |v: Option<&http::HeaderValue>| {
                v.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            if let Ok(mut c) = self.captured.lock() {
                *c = Some(Seen {
                    authorization: text(auth),
                    cookie: text(cookie),
                });
            }
        }
    }
}

pub(crate) struct Upstream {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                c.connections.fetch_add(1, Ordering::Relaxed);
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        c.record(req.headers());
                        async move {
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from_static(BODY)));
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            counters,
            task,
        }
    }

    /// Connections accepted and requests answered so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counters.connections.load(Ordering::Relaxed),
            self.counters.requests.load(Ordering::Relaxed),
        )
    }

    /// Requests so far that arrived with a bearer, and with a cookie.
    pub(crate) fn header_counts(&self) -> (u64, u64) {
        (
            self.counters.bearer.load(Ordering::Relaxed),
            self.counters.cookie.load(Ordering::Relaxed),
        )
    }

    /// Keeps the `Authorization` and `Cookie` headers of the next request ([`Upstream::captured`]).
    pub(crate) fn capture_next(&self) {
        if let Ok(mut c) = self.counters.captured.lock() {
            *c = None;
        }
        self.counters.capture.store(true, Ordering::Release);
    }

    /// The headers kept since [`Upstream::capture_next`], if a request came.
    pub(crate) fn captured(&self) -> Option<Seen> {
        self.counters.captured.lock().ok().and_then(|c| c.clone())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reference floor: the smallest useful hyper-util proxy (HTTP/1.1 server, one pooled
/// `TCP_NODELAY` client, the request streamed to the upstream and the answer streamed back; no
/// logging, metrics, auth or header policy). Run as its own process by the benchmark
/// (`--minimal-proxy-listen`), so that its CPU per request can be measured like Cloakroom's.
pub(crate) fn run_minimal_proxy(
    listen: u16,
    upstream: SocketAddr,
    per_core: bool,
) -> std::process::ExitCode {
    if per_core {
        return run_minimal_proxy_per_core(listen, upstream);
    }
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return std::process::ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await else {
            return std::process::ExitCode::FAILURE;
        };
        minimal_proxy(listener, upstream).await
    })
}

/// The minimal proxy's accept loop on `listener`, with an upstream pool of its own, on the
/// runtime it runs on: nothing but the URI rewritten.
async fn minimal_proxy(
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
) -> std::process::ExitCode {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, hyper::body::Incoming> =
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let client = client.clone();
                async move {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let uri: http::Uri = format!("http://{upstream}{pq}")
                        .parse()
                        .unwrap_or_else(|_| http::Uri::from_static("/"));
                    *req.uri_mut() = uri;
                    client.request(req).await
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The reference floor in Cloakroom's runtime shape, (p1): the same minimal proxy, but one
/// current-thread runtime per core, each with its own `SO_REUSEPORT` listener (bound as
/// Cloakroom binds, `cloakroom::cores::bind_group`) and its own upstream pool, so that a
/// request and its upstream connection stay on one thread. Set beside (p), it shows what the
/// runtime shape alone buys.
fn run_minimal_proxy_per_core(listen: u16, upstream: SocketAddr) -> std::process::ExitCode {
    let n = cloakroom::cores::count(0);
    let Ok(listeners) = cloakroom::cores::bind_group(SocketAddr::from(([127, 0, 0, 1], listen)), n)
    else {
        return std::process::ExitCode::FAILURE;
    };
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|std_listener| {
            std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    if let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) {
                        minimal_proxy(listener, upstream).await;
                    }
                });
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::ExitCode::SUCCESS
}

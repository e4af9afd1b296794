//! Listeners and the accept loop: hyper-util `auto::Builder` (HTTP/1.1 and HTTP/2), connection
//! limits, header-read timeout, graceful drain on shutdown.

use crate::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Per-listener limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to receive a request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Concurrent connections; further ones are closed at once.
    pub max_connections: usize,
    /// Drain time for in-flight requests at shutdown.
    pub drain: Duration,
}

/// Builds a TLS acceptor (ALPN h2 and http/1.1) from PEM certificate chain and key files.
///
/// # Errors
/// A message naming the file and the problem.
pub fn tls_acceptor(cert_file: &str, key_file: &str) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("server.tls.cert_file: {cert_file}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server.tls.cert_file: {cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls.cert_file: {cert_file}: no certificate in it"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("server.tls.key_file: {key_file}: {e}"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `listener` until `shutdown` flips, then drains for at most `limits.drain`.
/// With `tls`, every connection is a TLS handshake first (bounded by the header-read timeout).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!("connection limit reached; closing a new connection");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let h = handler.clone();
                let svc = service_fn(move |req| h(req, peer));
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let tls = tls.clone();
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            let _ = watcher.watch(conn.into_owned()).await;
                        }
                        Some(acceptor) => {
                            let Ok(Ok(tls_stream)) =
                                tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                            else {
                                return;
                            };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
                            let _ = watcher.watch(conn.into_owned()).await;
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain) => {
            tracing::warn!("drain time over; closing the remaining connections");
        }
    }
}

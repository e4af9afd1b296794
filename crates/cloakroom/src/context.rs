//! The per-request context, built once by the router before any stage runs: the request id,
//! the peer and the client's IP. Stages read it; none rebuilds it.

use http::{HeaderMap, HeaderValue};
use std::net::{IpAddr, SocketAddr};

/// What every stage may know about the request besides the request itself.
#[derive(Debug, Clone)]
pub(crate) struct RequestCtx {
    /// The request id (the client's `X-Request-Id` when short and plain, else a new one):
    /// logged, sent upstream and echoed to the client.
    pub(crate) id: HeaderValue,
    /// The TCP peer.
    pub(crate) peer: SocketAddr,
    /// The client: the peer, or (from a trusted proxy) the last untrusted `X-Forwarded-For`
    /// hop.
    pub(crate) client_ip: IpAddr,
}

/// Works out the client's IP from the peer and, for trusted proxies only, `X-Forwarded-For`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientIp {
    trusted: Vec<IpAddr>,
}

impl ClientIp {
    /// `server.trusted_proxies`.
    #[must_use]
    pub(crate) fn new(trusted: &[IpAddr]) -> Self {
        Self {
            trusted: trusted.to_vec(),
        }
    }

    /// The client's IP: the peer, or (from a trusted proxy) the last untrusted hop of its
    /// `X-Forwarded-For`.
    #[must_use]
    pub(crate) fn resolve(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        if !self.trusted.contains(&peer.ip()) {
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
            .find(|ip| !self.trusted.contains(ip))
            .copied()
            .unwrap_or(peer.ip())
    }
}

/// A request id: the client's `X-Request-Id` when it is short and plain, else a new one.
#[must_use]
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get("x-request-id")
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        })
        .cloned()
        .unwrap_or_else(|| {
            // 96 random bits from the thread's CSPRNG (seeded from the OS; no syscall per
            // request), in hex.
            let mut raw = [0u8; 12];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
            let mut hex = [0u8; 24];
            for (i, b) in raw.iter().enumerate() {
                hex[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
                hex[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 15)];
            }
            HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("-"))
        })
}

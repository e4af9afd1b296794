//! Long-lived streams: upgraded tunnels (WebSocket after `101`) and server-sent-event
//! responses, each registered with the session it was opened for.
//!
//! Every such stream holds a [`TunnelGuard`] from [`Tunnels::register`]. While it lives:
//! - it counts toward the connection limits: the guard keeps the client connection's
//!   [`crate::server::ConnLease`];
//! - it is closed after `server.tunnel_idle_timeout` with no bytes either way;
//! - at shutdown ([`Tunnels::begin_drain`]) it is drained: what was already read is delivered,
//!   both write sides are shut down (a clean close for both peers), and whatever is left at
//!   the end of `server.shutdown_drain` is cut ([`Tunnels::close_all`]);
//! - [`Tunnels::close_session`] cuts every stream of one session at once: the session-ending
//!   code (logout, admin revoke, back-channel logout, expiry) calls it with the session's
//!   handle.

use crate::server::ConnLease;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The registry of live tunnels and event streams. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct Tunnels {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Session handle → tunnel id → that tunnel's close token.
    sessions: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
    /// Cancelled at shutdown: every stream drains.
    drain: CancellationToken,
    /// Cancelled at the end of the drain: every stream is cut. Parent of each close token.
    kill: CancellationToken,
    next_id: AtomicU64,
    live: AtomicUsize,
    emptied: Notify,
    idle_timeout: Duration,
}

/// Why a tunnel ended (a log field and a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// One side closed (or failed).
    Closed,
    /// No bytes either way for `server.tunnel_idle_timeout`.
    Idle,
    /// Its session ended, or the drain time ran out.
    Cut,
    /// Drained at shutdown.
    Drained,
}

impl Ended {
    /// As a label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Idle => "idle",
            Self::Cut => "cut",
            Self::Drained => "drained",
        }
    }
}

impl Tunnels {
    /// An empty registry whose streams close after `idle_timeout` without traffic.
    #[must_use]
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions: Mutex::new(HashMap::new()),
                drain: CancellationToken::new(),
                kill: CancellationToken::new(),
                next_id: AtomicU64::new(1),
                live: AtomicUsize::new(0),
                emptied: Notify::new(),
                idle_timeout,
            }),
        }
    }

    /// The idle timeout of every stream.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }

    /// Registers one stream, opened for `session` (a session handle) when it has one, holding
    /// `lease` (the client connection's hold on the connection limits). The stream ends when
    /// the guard's [`TunnelGuard::cut`] fires, and deregisters when the guard is dropped.
    #[must_use]
    pub fn register(&self, session: Option<&str>, lease: Option<ConnLease>) -> TunnelGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let close = self.inner.kill.child_token();
        if let Some(h) = session {
            self.lock()
                .entry(h.to_string())
                .or_default()
                .insert(id, close.clone());
        }
        self.inner.live.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("cloakroom_tunnels_active").increment(1.0);
        TunnelGuard {
            id,
            session: session.map(String::from),
            close,
            registry: self.clone(),
            _lease: lease,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, CancellationToken>>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Cuts every tunnel and event stream of the session `handle` (on this instance); returns
    /// how many there were. Call it wherever a session ends.
    pub fn close_session(&self, handle: &str) -> usize {
        let tokens = self.lock().remove(handle).unwrap_or_default();
        for t in tokens.values() {
            t.cancel();
        }
        tokens.len()
    }

    /// The sessions that have streams open now.
    #[must_use]
    pub fn sessions(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Shutdown: every stream drains (delivers what it read, closes both write sides).
    pub fn begin_drain(&self) {
        self.inner.drain.cancel();
    }

    /// The end of the drain: every remaining stream is cut.
    pub fn close_all(&self) {
        self.inner.kill.cancel();
    }

    /// Streams alive now.
    #[must_use]
    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::SeqCst)
    }

    /// Resolves once no stream is alive.
    pub async fn closed(&self) {
        loop {
            let notified = self.inner.emptied.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One registered stream. Dropping it deregisters the stream and releases its connection lease.
#[derive(Debug)]
pub struct TunnelGuard {
    id: u64,
    session: Option<String>,
    close: CancellationToken,
    registry: Tunnels,
    _lease: Option<ConnLease>,
}

impl TunnelGuard {
    /// Fires when the stream must end at once (its session ended, or the drain ran out).
    pub fn cut(&self) -> WaitForCancellationFutureOwned {
        self.close.clone().cancelled_owned()
    }

    /// Fires at shutdown, when the stream should drain.
    pub fn drain(&self) -> WaitForCancellationFutureOwned {
        self.registry.inner.drain.clone().cancelled_owned()
    }

    /// Whether shutdown has begun.
    #[must_use]
    pub fn draining(&self) -> bool {
        self.registry.inner.drain.is_cancelled()
    }

    /// The idle timeout.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        self.registry.inner.idle_timeout
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if let Some(h) = &self.session {
            let mut map = self.registry.lock();
            if let Some(set) = map.get_mut(h) {
                set.remove(&self.id);
                if set.is_empty() {
                    map.remove(h);
                }
            }
        }
        metrics::gauge!("cloakroom_tunnels_active").decrement(1.0);
        if self.registry.inner.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.registry.inner.emptied.notify_waiters();
        }
    }
}

/// Milliseconds since `base`, for activity stamps.
fn stamp(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One side of a tunnel: records activity, and reads as end-of-stream once the drain began,
/// so `copy_bidirectional` delivers what it holds and shuts the other side's writes down.
struct Side<T> {
    io: T,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    drained: bool,
    last: Arc<AtomicU64>,
    base: Instant,
}

impl<T> Side<T> {
    fn new(io: T, guard: &TunnelGuard, last: &Arc<AtomicU64>, base: Instant) -> Self {
        Self {
            io,
            drain: Box::pin(guard.drain()),
            drained: false,
            last: last.clone(),
            base,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Side<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.drained && this.drain.as_mut().poll(cx).is_ready() {
            this.drained = true;
        }
        if this.drained {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.last.store(stamp(this.base), Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Side<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.last.store(stamp(this.base), Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Resolves once `last` (ms since `base`) is `idle` old.
async fn idle(last: &AtomicU64, base: Instant, idle: Duration) {
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let Some(deadline) = base.checked_add(since + idle) else {
            return std::future::pending().await;
        };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Copies bytes both ways between `client` and `upstream` until one side closes, the tunnel
/// is idle for the registry's idle timeout, its session ends, or shutdown drains it.
pub async fn pump<A, B>(client: A, upstream: B, guard: TunnelGuard) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let base = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Side::new(client, &guard, &last, base);
    let mut upstream = Side::new(upstream, &guard, &last, base);
    let ended = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if guard.draining() { Ended::Drained } else { Ended::Closed }
        }
        () = idle(&last, base, guard.idle_timeout()) => Ended::Idle,
        () = guard.cut() => Ended::Cut,
    };
    metrics::counter!("cloakroom_tunnels_ended_total", "reason" => ended.as_str()).increment(1);
    tracing::debug!(reason = ended.as_str(), "tunnel ended");
    drop(guard);
    ended
}

/// A streaming response body (server-sent events) under a [`TunnelGuard`]: it ends cleanly
/// when its session ends, at shutdown, or after the idle timeout without a frame, so an
/// `EventSource` reconnects (to another instance at shutdown).
pub struct GuardedStream<B> {
    inner: B,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    done: bool,
    _guard: TunnelGuard,
}

impl<B> std::fmt::Debug for GuardedStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream").finish_non_exhaustive()
    }
}

impl<B> GuardedStream<B> {
    /// Wraps `inner` under `guard`.
    pub fn new(inner: B, guard: TunnelGuard) -> Self {
        let idle_timeout = guard.idle_timeout();
        Self {
            inner,
            cut: Box::pin(guard.cut()),
            drain: Box::pin(guard.drain()),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            done: false,
            _guard: guard,
        }
    }
}

impl<B> http_body::Body for GuardedStream<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let reason = if this.cut.as_mut().poll(cx).is_ready() {
            Some(Ended::Cut)
        } else if this.drain.as_mut().poll(cx).is_ready() {
            Some(Ended::Drained)
        } else if this.idle.as_mut().poll(cx).is_ready() {
            Some(Ended::Idle)
        } else {
            None
        };
        if let Some(reason) = reason {
            this.done = true;
            metrics::counter!("cloakroom_tunnels_ended_total", "reason" => reason.as_str())
                .increment(1);
            return Poll::Ready(None);
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(_))) => {
                let at = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(at);
            }
            Poll::Ready(None) => {
                this.done = true;
                metrics::counter!("cloakroom_tunnels_ended_total", "reason" => "closed")
                    .increment(1);
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn close_session_cuts_only_that_sessions_tunnels() {
        let t = Tunnels::new(Duration::from_secs(60));
        let a1 = t.register(Some("a"), None);
        let a2 = t.register(Some("a"), None);
        let b = t.register(Some("b"), None);
        let none = t.register(None, None);
        assert_eq!(t.live(), 4);
        assert_eq!(t.close_session("a"), 2);
        assert!(a1.close.is_cancelled() && a2.close.is_cancelled());
        assert!(!b.close.is_cancelled() && !none.close.is_cancelled());
        assert_eq!(t.close_session("a"), 0);
        drop((a1, a2, b));
        assert_eq!(t.live(), 1);
        t.close_all();
        assert!(none.close.is_cancelled());
        drop(none);
        tokio::time::timeout(Duration::from_secs(1), t.closed())
            .await
            .expect("empty");
    }

    #[tokio::test]
    async fn a_tunnel_ends_idle_on_cut_and_drains_at_shutdown() {
        // Idle.
        let t = Tunnels::new(Duration::from_millis(200));
        let (c, _c_peer) = tokio::io::duplex(64);
        let (u, _u_peer) = tokio::io::duplex(64);
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            pump(c, u, t.register(Some("s"), None)),
        )
        .await
        .expect("ends");
        assert_eq!(ended, Ended::Idle);

        // Cut by its session.
        let t = Tunnels::new(Duration::from_secs(60));
        let (c, _c_peer) = tokio::io::duplex(64);
        let (u, _u_peer) = tokio::io::duplex(64);
        let task = tokio::spawn(pump(c, u, t.register(Some("s"), None)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(t.close_session("s"), 1);
        assert_eq!(task.await.expect("task"), Ended::Cut);
        assert_eq!(t.live(), 0);

        // Drained: bytes in flight are delivered and both peers see end-of-stream.
        let t = Tunnels::new(Duration::from_secs(60));
        let (c, mut c_peer) = tokio::io::duplex(64);
        let (u, mut u_peer) = tokio::io::duplex(64);
        let task = tokio::spawn(pump(c, u, t.register(None, None)));
        c_peer.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        u_peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
        t.begin_drain();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), u_peer.read_to_end(&mut rest))
            .await
            .expect("upstream sees EOF")
            .expect("read");
        tokio::time::timeout(Duration::from_secs(5), c_peer.read_to_end(&mut rest))
            .await
            .expect("client sees EOF")
            .expect("read");
        assert_eq!(task.await.expect("task"), Ended::Drained);
    }
}

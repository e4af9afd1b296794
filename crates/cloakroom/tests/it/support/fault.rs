//! `FaultProxy`: faults on real sockets between Cloakroom and Redis or the IdP.
//!
//! A TCP proxy on `127.0.0.1:0` that forwards every accepted connection to a target address
//! byte for byte, until a test switches it to a [`Fault`]: delayed chunks, a stall (bytes held,
//! not lost), closed connections (FIN) or reset connections (RST). Point Cloakroom's Redis URL
//! or IdP issuer at [`FaultProxy::url`] instead of the real server.
//!
//! A mode change reaches connections that are already open at once: every connection task
//! watches the mode. `Drop`/`Reset` end every connection open at the time of [`FaultProxy::set`]
//! (even if the mode is switched back before the task has noticed) and every connection
//! accepted while the mode stays `Drop`/`Reset`; after `set(Fault::Pass)` new connections work
//! again. Dropping the proxy stops the listener and closes all its connections.
//!
//! What clients send through it is kept ([`FaultProxy::sent`], the first [`SENT_LIMIT`] bytes),
//! so a test can read the requests Cloakroom made (e.g. their `traceparent`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{self, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// What the proxy does to the bytes and connections passing through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Forward everything as it comes.
    Pass,
    /// Hold each chunk read in either direction this long before forwarding it.
    Delay(Duration),
    /// Hold the bytes in both directions (buffered, neither forwarded nor dropped) until the
    /// mode changes back to `Pass` or `Delay`; then they flow on in order.
    Stall,
    /// Close (FIN) every open connection now, and every new one as soon as it is accepted.
    Drop,
    /// Reset (RST) every open connection now, and every new one as soon as it is accepted.
    Reset,
}

/// How long a connection closed by [`Fault::Drop`] keeps reading (and discarding) what its peer
/// still sends, waiting for the peer's FIN: closing a socket with unread bytes would turn the
/// FIN into an RST.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// How much of what clients send is kept for [`FaultProxy::sent`].
pub(crate) const SENT_LIMIT: usize = 8 * 1024 * 1024;

/// What clients sent through the proxy (to the target), up to [`SENT_LIMIT`].
type Sent = Arc<Mutex<Vec<u8>>>;

/// Back-off after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// How a connection is ended by a `Drop`/`Reset`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kill {
    Close,
    Reset,
}

/// What the connection tasks watch. `kills` counts `set(Drop | Reset)` calls, so a connection
/// notices a kill even if the mode went back to `Pass` before it looked.
#[derive(Clone, Copy, Debug)]
struct State {
    mode: Fault,
    kills: u64,
    last_kill: Kill,
}

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// Counts a proxied connection as open while alive.
#[derive(Debug)]
struct OpenGuard(Arc<Counts>);

impl OpenGuard {
    fn new(counts: &Arc<Counts>) -> Self {
        counts.open.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(counts))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A TCP proxy in front of `target` whose behaviour a test switches with [`FaultProxy::set`].
#[derive(Debug)]
pub(crate) struct FaultProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    counts: Arc<Counts>,
    sent: Sent,
    /// The accept loop; it owns the connection tasks (a `JoinSet`), so aborting it ends them.
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`, in [`Fault::Pass`].
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let (state, watch) = watch::channel(State {
            mode: Fault::Pass,
            kills: 0,
            last_kill: Kill::Close,
        });
        let counts = Arc::new(Counts::default());
        let sent = Sent::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            watch,
            Arc::clone(&counts),
            sent.clone(),
        ));
        Self {
            addr,
            state,
            counts,
            sent,
            accept,
        }
    }

    /// The proxy's listening address.
    #[must_use]
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `<scheme>://127.0.0.1:<port>`, e.g. `redis://127.0.0.1:40123` or `http://127.0.0.1:40123`.
    #[must_use]
    pub(crate) fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Switches the mode; open connections follow at once.
    pub(crate) fn set(&self, mode: Fault) {
        self.state.send_modify(|state| {
            state.mode = mode;
            let kill = match mode {
                Fault::Drop => Kill::Close,
                Fault::Reset => Kill::Reset,
                Fault::Pass | Fault::Delay(_) | Fault::Stall => return,
            };
            state.kills += 1;
            state.last_kill = kill;
        });
    }

    /// The current mode.
    #[must_use]
    pub(crate) fn mode(&self) -> Fault {
        self.state.borrow().mode
    }

    /// Connections accepted so far (including those closed or reset at once).
    #[must_use]
    pub(crate) fn connections(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// What clients sent to the target so far (the first [`SENT_LIMIT`] bytes), as text.
    #[must_use]
    pub(crate) fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().expect("lock")).into_owned()
    }

    /// Connections currently proxied (accepted and not yet closed by either side or a fault).
    #[must_use]
    pub(crate) fn open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    watch: watch::Receiver<State>,
    counts: Arc<Counts>,
    sent: Sent,
) {
    // Dropped together with this task when the proxy is dropped: that aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                };
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                let state = *watch.borrow();
                match state.mode {
                    Fault::Drop => {
                        conns.spawn(close(client));
                    }
                    Fault::Reset => reset(client),
                    Fault::Pass | Fault::Delay(_) | Fault::Stall => {
                        let open = OpenGuard::new(&counts);
                        conns.spawn(serve(
                            client,
                            target,
                            watch.clone(),
                            state.kills,
                            open,
                            sent.clone(),
                        ));
                    }
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One proxied connection: relays until both directions are done, an error, or a kill.
async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    watch: watch::Receiver<State>,
    kills_seen: u64,
    open: OpenGuard,
    sent: Sent,
) {
    let mut upstream = None;
    let mut kills = watch.clone();
    let kill = tokio::select! {
        kill = killed(&mut kills, kills_seen) => Some(kill),
        _ = relay(&mut client, &mut upstream, target, &watch, sent) => None,
    };
    drop(open);
    match kill {
        Some(Kill::Reset) => {
            reset(client);
            if let Some(upstream) = upstream {
                reset(upstream);
            }
        }
        Some(Kill::Close) => {
            tokio::join!(close(client), async {
                if let Some(upstream) = upstream {
                    close(upstream).await;
                }
            });
        }
        // Done or failed (e.g. the target refused the connection): both sockets just close.
        None => {}
    }
}

/// Resolves once a `Drop`/`Reset` newer than `seen` is set, or the proxy is gone.
async fn killed(watch: &mut watch::Receiver<State>, seen: u64) -> Kill {
    match watch.wait_for(|state| state.kills > seen).await {
        Ok(state) => state.last_kill,
        Err(_) => Kill::Close,
    }
}

async fn relay(
    client: &mut TcpStream,
    upstream: &mut Option<TcpStream>,
    target: SocketAddr,
    watch: &watch::Receiver<State>,
    sent: Sent,
) -> io::Result<()> {
    let upstream = upstream.insert(TcpStream::connect(target).await?);
    // Small writes must not wait for Nagle: the delays are the test's, not the kernel's.
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    tokio::try_join!(
        pump(client_read, upstream_write, watch.clone(), Some(sent)),
        pump(upstream_read, client_write, watch.clone(), None),
    )?;
    Ok(())
}

/// Copies `from` to `to` chunk by chunk, each chunk (and the final EOF) held as the mode says.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut watch: watch::Receiver<State>,
    sent: Option<Sent>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if let Some(sent) = &sent {
            let mut kept = sent.lock().expect("lock");
            let room = SENT_LIMIT.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&buf[..room]);
        }
        hold(&mut watch).await;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Waits until a chunk that arrived now may be forwarded: at once in `Pass`, `d` after its
/// arrival in `Delay(d)`, not before the mode leaves `Stall` (or `Drop`/`Reset`, which end the
/// connection anyway). Re-evaluated on every mode change.
async fn hold(watch: &mut watch::Receiver<State>) {
    let arrived = Instant::now();
    loop {
        let until = match watch.borrow_and_update().mode {
            Fault::Pass => return,
            // An overflowing deadline is as good as never.
            Fault::Delay(delay) => arrived.checked_add(delay),
            Fault::Stall | Fault::Drop | Fault::Reset => None,
        };
        tokio::select! {
            () = sleep_until(until) => return,
            changed = watch.changed() => {
                if changed.is_err() {
                    // The proxy is gone; its drop aborts this task.
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Closes with a FIN: shuts the write side, then discards what the peer still sends until its
/// own FIN (bounded by [`CLOSE_DRAIN`]), so no unread byte turns the close into an RST.
async fn close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = vec![0; 4096];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
}

/// Resets: `SO_LINGER` 0, then close, which sends an RST and discards anything unsent.
fn reset(stream: TcpStream) {
    // Without the zero linger the drop still closes the socket, just with a FIN.
    let _ = stream.set_zero_linger();
    drop(stream);
}

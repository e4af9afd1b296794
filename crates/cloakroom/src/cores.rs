//! The per-core runtimes: one current-thread tokio runtime per core, each on a thread of its
//! own (`cloakroom-core-<n>`), each serving the public listener from a listening socket of its
//! own (`SO_REUSEPORT`, [`bind_group`]).
//!
//! A connection accepted on a core is served on that core to the end: its requests, the hyper
//! tasks of its HTTP/2 streams, the upstream connection it is forwarded on (each core has its
//! own upstream pool: `proxy::Forwarder` picks the pool by [`current`]) and the tunnel it may
//! become. Nothing on the request path wakes another thread, so a request costs no cross-thread
//! wake-up (a futex and an inter-processor interrupt on a VM) and no cache line moves between
//! cores for it, except the few shared counters and the session cache's shard it reads.
//!
//! What is not per request stays where [`crate::App`] was started (the control runtime): the
//! admin listener, the store's connections and their driver tasks, the invalidation
//! subscriber, the reaper, the tunnel sweep, reloads. A request that needs the store (a cache
//! miss, a slide, a refresh) talks to the store's driver there, which is what a cache miss cost
//! before too.
//!
//! Owns: the threads and their runtimes, the core index of the calling thread. Never: routes,
//! sessions, connection limits (`server.rs`).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

thread_local! {
    static CORE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the per-core runtime the calling thread runs, if it is one.
#[must_use]
pub fn current() -> Option<usize> {
    CORE.with(Cell::get)
}

/// How many per-core runtimes `server.workers` asks for: its value, or with 0 one per CPU the
/// process may use (cgroup quotas included).
#[must_use]
pub fn count(workers: usize) -> usize {
    if workers > 0 {
        return workers;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The running per-core runtimes. Cheap to clone; the runtimes stop when [`Cores::stop`] is
/// called or the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Cores {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    handles: Vec<tokio::runtime::Handle>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Cores {
    /// Starts `n` (at least one) current-thread runtimes, each on a thread of its own that runs
    /// until the runtimes are stopped. Dropping a runtime drops every task still on it.
    ///
    /// # Errors
    /// When a thread or a runtime cannot be created.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("cloakroom-core-{i}"))
                .spawn(move || {
                    CORE.with(|c| c.set(Some(i)));
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(stop.cancelled());
                    // Whatever is still on this core (a connection past the drain, an idle
                    // pooled upstream connection) is dropped with the runtime.
                    drop(rt);
                })?;
            let handle = rx.recv().map_err(|_| {
                std::io::Error::other("a per-core runtime thread ended before it started")
            })??;
            handles.push(handle);
        }
        Ok(Self {
            inner: Arc::new(Inner { handles, stop }),
        })
    }

    /// How many runtimes run.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    /// Always false: at least one runtime runs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.handles.is_empty()
    }

    /// The runtime of core `i`.
    #[must_use]
    pub fn handle(&self, i: usize) -> &tokio::runtime::Handle {
        &self.inner.handles[i % self.inner.handles.len()]
    }

    /// Stops every runtime: each thread drops its runtime and whatever runs on it, and ends.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }
}

/// `n` listening sockets on `addr` sharing its port with `SO_REUSEPORT`, so that the kernel
/// spreads new connections over them (by a hash of the connection's addresses). Port 0 binds
/// the first on a free port and the others on the same one.
///
/// `SO_REUSEPORT` would also let a second process of the same user bind the address and take
/// a share of the connections without a word: the address is first bound plainly, once, so that
/// a port already in use fails as it would without it.
///
/// # Errors
/// The bind error (address in use, permission) of the first socket that failed.
pub fn bind_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = |reuse_port: bool| -> std::io::Result<Socket> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_reuse_address(true)?;
        #[cfg(unix)]
        s.set_reuse_port(reuse_port)?;
        #[cfg(not(unix))]
        let _ = reuse_port;
        Ok(s)
    };
    let mut at = addr;
    if at.port() != 0 {
        // Fails when anyone listens there already, with or without SO_REUSEPORT.
        let probe = socket(false)?;
        probe.bind(&at.into())?;
        drop(probe);
    }
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let s = socket(cfg!(unix) && n > 1)?;
        s.bind(&at.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        let l: std::net::TcpListener = s.into();
        at = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// For a listener the caller bound (tests bind port 0 themselves): `n` handles on the same
/// socket, one per core, which the cores accept from in turn (one queue, no `SO_REUSEPORT`).
///
/// # Errors
/// When the socket cannot be duplicated.
pub fn share(
    listener: std::net::TcpListener,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    listener.set_nonblocking(true)?;
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 1..n.max(1) {
        out.push(listener.try_clone()?);
    }
    out.push(listener);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_runtime_knows_its_core_and_other_threads_none() {
        let cores = Cores::start(2).expect("cores");
        assert_eq!(cores.len(), 2);
        assert_eq!(current(), None);
        for i in 0..2 {
            let (tx, rx) = std::sync::mpsc::channel();
            cores.handle(i).spawn(async move {
                let _ = tx.send(current());
            });
            assert_eq!(
                rx.recv_timeout(std::time::Duration::from_secs(10)),
                Ok(Some(i))
            );
        }
        cores.stop();
    }

    #[test]
    fn a_group_shares_one_port_and_a_taken_port_fails() {
        let group = bind_group("127.0.0.1:0".parse().expect("addr"), 3).expect("bind");
        let port = group[0].local_addr().expect("addr").port();
        assert!(group
            .iter()
            .all(|l| l.local_addr().expect("addr").port() == port));
        let again = bind_group(SocketAddr::from(([127, 0, 0, 1], port)), 2);
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::AddrInUse),
            "a second group on a port in use must fail, not share it"
        );
        let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = plain.local_addr().expect("addr");
        assert_eq!(
            bind_group(taken, 2).err().map(|e| e.kind()),
            Some(std::io::ErrorKind::AddrInUse)
        );
    }
}

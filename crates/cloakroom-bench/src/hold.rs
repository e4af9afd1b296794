//! A TCP proxy in front of the IdP of (e) that can stall it (`--stall-mode hang`): while held,
//! connections are still accepted and passed on, but nothing a client sends reaches the IdP, so
//! every request hangs unanswered until the client gives up (Cloakroom's `oidc.timeout`). What
//! a client sent while held is passed on when the hold ends, unless the client has closed its
//! connection meanwhile: then it is dropped, as a request that never reached the server. Answers
//! always pass.
//!
//! The IdP counts only the requests that reach it, so the proxy counts the token requests it
//! sees (a `POST /token ` request line), passed on or not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) struct Hold {
    pub addr: SocketAddr,
    held: watch::Sender<bool>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

/// Token requests the proxy saw.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// All of them, passed on or not.
    pub seen: AtomicU64,
    /// Sent while held, passed on when the hold ended (their client still waiting).
    pub released: AtomicU64,
    /// Sent while held, dropped because their client closed the connection first.
    pub dropped: AtomicU64,
}

impl Hold {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub(crate) async fn start(target: SocketAddr) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("hold proxy: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (held, rx) = watch::channel(false);
        let counts = Arc::new(Counts::default());
        let seen = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (rx, seen) = (rx.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, mut cw) = client.into_split();
                    let (mut sr, sw) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    pump(cr, sw, rx, seen).await;
                });
            }
        });
        Ok(Self {
            addr,
            held,
            counts,
            task,
        })
    }

    /// Holds (`true`) or releases (`false`) everything clients send.
    pub(crate) fn set(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Token requests seen so far, passed on or not.
    pub(crate) fn token_requests(&self) -> u64 {
        self.counts.seen.load(Ordering::Relaxed)
    }

    /// Token requests held so far: (passed on when the hold ended, dropped).
    pub(crate) fn held_requests(&self) -> (u64, u64) {
        (
            self.counts.released.load(Ordering::Relaxed),
            self.counts.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Client → IdP, holding the bytes while `held`.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
    counts: Arc<Counts>,
) {
    const LINE: &[u8] = b"POST /token ";
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    // Token requests in `pending`, and whether a hold kept them there.
    let (mut tokens, mut was_held) = (0u64, false);
    loop {
        if !pending.is_empty() {
            if *held.borrow() {
                was_held = true;
            } else {
                if to.write_all(&pending).await.is_err() {
                    return;
                }
                if was_held {
                    counts.released.fetch_add(tokens, Ordering::Relaxed);
                }
                pending.clear();
                (tokens, was_held) = (0, false);
            }
        }
        tokio::select! {
            r = from.read(&mut buf) => match r {
                // The client is gone: what it sent while held never reaches the IdP (dropping
                // `to` closes that side too).
                Ok(0) | Err(_) => {
                    counts.dropped.fetch_add(tokens, Ordering::Relaxed);
                    return;
                }
                Ok(n) => {
                    let chunk = &buf[..n];
                    let lines = chunk.windows(LINE.len()).filter(|w| *w == LINE).count() as u64;
                    counts.seen.fetch_add(lines, Ordering::Relaxed);
                    tokens += lines;
                    pending.extend_from_slice(chunk);
                }
            },
            changed = held.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

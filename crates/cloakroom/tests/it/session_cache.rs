//! The in-process session cache (src/session/cache.rs): a busy session costs no Redis round trip,
//! and a logout through another instance still ends it on this one within a second, also when
//! the invalidation subscription was cut just before (a loud drop), or when it stays open but
//! goes silent (a deaf subscriber: only the liveness markers can tell).

use crate::support::browser::Browser;
use crate::support::{Opts, TestEnv};
use cloakroom::session::cache::MAX_STALENESS;
use reqwest::Method;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Polls `url` until it answers 401; panics if it still answers 200 `bound` after `since`.
pub(crate) async fn refused_within(
    b: &mut Browser,
    url: &str,
    since: Instant,
    bound: Duration,
) -> Duration {
    loop {
        let status = b.xhr(Method::GET, url).await.status;
        if status == 401 {
            return since.elapsed();
        }
        assert_eq!(status, 200, "{url}");
        assert!(
            since.elapsed() < bound,
            "the session still works here {bound:?} after the logout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Session reads (`HMGET`, counted by `reads`) for `n` calls to `url`, each answered 200.
async fn reads_for(b: &mut Browser, url: &str, n: u64, reads: &impl Fn() -> u64) -> u64 {
    let before = reads();
    for _ in 0..n {
        assert_eq!(b.xhr(Method::GET, url).await.status, 200, "{url}");
    }
    reads() - before
}

/// Waits (at most `within`) until 20 calls to `url` cost fewer than 10 session reads
/// (counted by `reads`): the instance serves the session from its cache.
pub(crate) async fn served_from_the_cache(
    b: &mut Browser,
    url: &str,
    within: Duration,
    reads: impl Fn() -> u64,
) {
    let deadline = Instant::now() + within;
    loop {
        let read = reads_for(b, url, 20, &reads).await;
        if read < 10 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{read} session reads for 20 calls: the cache is not used"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_through_another_instance_ends_a_cached_session_within_a_second() {
    let env = TestEnv::start_with(Opts {
        instances: 2,
        ..Opts::default()
    })
    .await;
    let a = format!("{}/api/x", env.base(0));
    let logout_b = format!("{}/auth/logout", env.base(1));

    for round in 0..2 {
        let mut b = Browser::new();
        env.login_as(&mut b, 0, "alice", "wonderland").await;
        for _ in 0..3 {
            assert_eq!(b.xhr(Method::GET, &a).await.status, 200);
        }
        // Busy session: served from A's cache, not from Redis (allowing for a missed
        // proof-of-liveness on a loaded machine).
        let read = reads_for(&mut b, &a, 20, &|| env.redis.calls("hmget")).await;
        assert!(
            read < 10,
            "{read} session reads for 20 calls: the cache is not used"
        );

        if round == 1 {
            // Cut A's (and B's) invalidation subscription: the logout below may be published
            // while nobody listens, and must still take effect on A.
            let killed = env.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            assert!(killed.starts_with(':'), "CLIENT KILL: {killed}");
        }
        let cookie = b.jar["__Host-cloakroom"].clone();
        assert_eq!(b.xhr(Method::POST, &logout_b).await.status, 200);
        let ended = Instant::now();
        // The browser dropped the cookie; a stolen copy must stop working on A too.
        b.jar.insert("__Host-cloakroom".into(), cookie);
        refused_within(&mut b, &a, ended, Duration::from_secs(1)).await;
    }
}

/// A subscription that stays open but stops delivering, while the command connection works:
/// no error, no reconnect, nothing but the missing liveness markers says the cache may be
/// stale. Instance A reaches Redis through a [`SubscriberRelay`], which holds what Redis sends
/// to A's subscriber; the other instances go straight to Redis.
///
/// Proves, in order: A serves from its cache; once the subscriber goes silent, a logout
/// through another instance (whose `~<handle>` message is held on the way to A) ends the
/// session on A within the documented bound, [`MAX_STALENESS`] after A's last proof of
/// liveness (asserted with a margin of 1 s: without the liveness check A would serve the
/// stale entry until its resubscription, 3 × `MAX_STALENESS` later, or up to `MAX_AGE`);
/// while the subscriber stays silent (resubscriptions included) every request reads Redis
/// and still succeeds; once delivery resumes, A serves from its cache again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscriber_turns_the_cache_off_and_a_logout_elsewhere_still_ends_the_session() {
    let mut env = TestEnv::start_with(Opts {
        instances: 2,
        ..Opts::default()
    })
    .await;
    let relay = SubscriberRelay::start(([127, 0, 0, 1], env.redis.port).into()).await;
    env.opts.store_toml = Some(format!("kind = \"redis\"\nurl = \"{}\"", relay.url()));
    let keys = env.keys.clone();
    let a = env.start_extra(&keys).await;
    env.opts.store_toml = None;
    let api_a = format!("{}/api/x", env.base(a));
    let logout_b = format!("{}/auth/logout", env.base(1));

    // Logged in through instance 0 (the extra instance's callback is not registered at the
    // IdP); the cookie works on every instance.
    let mut b = Browser::new();
    env.login_as(&mut b, 0, "alice", "wonderland").await;
    served_from_the_cache(&mut b, &api_a, Duration::from_secs(10), || {
        env.redis.calls("hmget")
    })
    .await;
    let subscribed = relay.subscribers();
    assert!(subscribed >= 1, "A's subscriber goes through the relay");

    // Silence A's subscriber, then log out through B at once: A's cache is still fresh, and
    // the `~<handle>` message that would end the session there never arrives.
    relay.silence(true);
    let cookie = b.jar["__Host-cloakroom"].clone();
    assert_eq!(b.xhr(Method::POST, &logout_b).await.status, 200);
    let ended = Instant::now();
    b.jar.insert("__Host-cloakroom".into(), cookie);
    let took = refused_within(
        &mut b,
        &api_a,
        ended,
        MAX_STALENESS + Duration::from_secs(1),
    )
    .await;
    assert!(
        relay.held_contains(b"\r\n~"),
        "the logout's message was held from A's subscriber"
    );
    eprintln!("silent subscriber: logout took effect on A after {took:?}");

    // Still silent, past A's resubscription (markers missing for 3 × MAX_STALENESS): the new
    // subscription is silenced too, and no proof of liveness arrives. Every request reads
    // Redis through the command connection, which keeps working.
    let mut b = Browser::new();
    env.login_as(&mut b, 0, "alice", "wonderland").await;
    let held = relay.held();
    let published = env.redis.calls("publish");
    tokio::time::sleep(MAX_STALENESS * 4).await;
    assert!(
        relay.subscribers() > subscribed,
        "A resubscribed after its markers stopped coming back"
    );
    assert!(
        env.redis.calls("publish") > published,
        "A kept publishing its markers"
    );
    assert!(
        relay.held() > held,
        "and none of them reached its subscriber"
    );
    let read = reads_for(&mut b, &api_a, 20, &|| env.redis.calls("hmget")).await;
    assert!(
        read >= 20,
        "{read} session reads for 20 calls: a silent subscriber's cache was used"
    );

    // Delivery resumes: A proves itself current again and serves from its cache.
    relay.silence(false);
    served_from_the_cache(&mut b, &api_a, Duration::from_secs(10), || {
        env.redis.calls("hmget")
    })
    .await;
}

/// A TCP relay in front of Redis that can silence pub/sub subscriptions alone.
///
/// Every connection is relayed byte for byte to Redis. A connection that sends `SUBSCRIBE` is
/// a subscriber; while [`SubscriberRelay::silence`] is on, what Redis sends to a subscriber is
/// read and held (not forwarded, not lost: no FIN, no RST, the socket stays open), and flows on
/// in order once it is off. Every other connection (the command connection) passes untouched.
/// The support `FaultProxy` applies one mode to every connection through it, so it cannot
/// stall the subscriber alone.
struct SubscriberRelay {
    addr: SocketAddr,
    silenced: watch::Sender<bool>,
    state: Arc<RelayState>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct RelayState {
    /// Connections that sent `SUBSCRIBE`.
    subscribers: AtomicUsize,
    /// Everything held from subscribers so far.
    held: Mutex<Vec<u8>>,
}

impl SubscriberRelay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (silenced, watch) = watch::channel(false);
        let state = Arc::new(RelayState::default());
        let s = state.clone();
        let accept = tokio::spawn(async move {
            // Dropped with this task when the relay is dropped: that ends every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((client, _)) = accepted {
                            conns.spawn(relay(client, target, watch.clone(), s.clone()));
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Self {
            addr,
            silenced,
            state,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn silence(&self, on: bool) {
        self.silenced.send_replace(on);
    }

    fn subscribers(&self) -> usize {
        self.state.subscribers.load(Ordering::SeqCst)
    }

    fn held(&self) -> usize {
        self.state.held.lock().expect("held").len()
    }

    fn held_contains(&self, needle: &[u8]) -> bool {
        self.state
            .held
            .lock()
            .expect("held")
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

impl Drop for SubscriberRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One relayed connection, until either side closes.
async fn relay(
    client: TcpStream,
    target: SocketAddr,
    mut silenced: watch::Receiver<bool>,
    state: Arc<RelayState>,
) {
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_redis, mut to_redis) = upstream.into_split();
    let subscriber = AtomicBool::new(false);
    let requests = async {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = from_client.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            // Marked before it is forwarded: its reply is already held.
            if buf[..n]
                .windows(13)
                .any(|w| w.eq_ignore_ascii_case(b"\r\nSUBSCRIBE\r\n"))
                && !subscriber.swap(true, Ordering::SeqCst)
            {
                state.subscribers.fetch_add(1, Ordering::SeqCst);
            }
            to_redis.write_all(&buf[..n]).await?;
        }
    };
    let replies = async {
        let mut buf = vec![0; 16 * 1024];
        let mut pending = Vec::new();
        loop {
            let silent = *silenced.borrow_and_update() && subscriber.load(Ordering::SeqCst);
            if !silent && !pending.is_empty() {
                to_client.write_all(&pending).await?;
                pending.clear();
            }
            tokio::select! {
                n = from_redis.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    if *silenced.borrow() && subscriber.load(Ordering::SeqCst) {
                        pending.extend_from_slice(&buf[..n]);
                        state.held.lock().expect("held").extend_from_slice(&buf[..n]);
                    } else {
                        to_client.write_all(&buf[..n]).await?;
                    }
                }
                changed = silenced.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
    }
}

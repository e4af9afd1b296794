//! Redis [`Store`](super::Store): the key scheme, TTLs and one-shot reads.
//!
//! The only module that knows Redis key names. Every key carries a hash tag (`{…}`) so the
//! scheme is Redis-Cluster safe: each command touches one slot.
//!
//! | key | type | TTL |
//! |---|---|---|
//! | `<prefix>:s:{<handle>}` | hash: `d` sealed session, `s` last-seen (unix s), `g` refresh generation | min(idle, absolute) expiry |
//! | `<prefix>:lock:{<handle>}` | string: refresh-lock owner token, or `cooloff:<unix ms>` | the lease (cool-off: twice its length) |
//! | `<prefix>:u:{<index key of sub>}` | set of handles | absolute timeout, renewed on write |
//! | `<prefix>:sid:{<index key of sid>}` | set of handles | absolute timeout, renewed on write |
//! | `<prefix>:once:{<hash>}` | string: a back-channel logout `jti` or a used login `state` | its TTL |
//!
//! Sliding (`touch_session`) writes only `s` and the TTL, and a refresh (`write_refresh`) only
//! `d` and `g`, each through a script that does nothing if the record is gone: neither can undo
//! the other, and neither can bring back a session deleted meanwhile. A refresh write is also
//! fenced: refused unless `g` is still the generation the refresher read and no other owner
//! holds the lock. Ending a session (`take_session`) reads and deletes the record in one
//! script, so the caller revokes the tokens that were really there.
//!
//! Ordering across slots (each key is its own slot in a cluster): a new session's index
//! entries are written before its record, and an ended session's record is deleted before its
//! index entries, so a failure in between leaves at worst a stale index entry (pruned by
//! `Sessions::find`), never a live session missing from its indexes.
//!
//! Deleting a session and writing a refresh also publish its handle on `<prefix>:invalidate`,
//! in the same atomic step, for the other instances' session caches (`session/cache.rs`).

use super::{Index, LockState, RecordRef, RefreshWrite, StoreError, StoredRecord};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How Redis is deployed (defined with the config, which names it).
pub use crate::config::Topology;

/// The Redis store. Clones share the connections.
#[derive(Clone)]
pub struct RedisStore {
    source: Source,
    /// The one-server client, for the invalidation subscriber.
    client: Option<Arc<redis::Client>>,
    prefix: String,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

#[derive(Clone)]
enum Source {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelSource>),
}

/// A master found through Sentinel: a self-reconnecting connection to it, replaced when a
/// failover moves the master (connection errors or `READONLY` replies trigger a re-resolve).
struct SentinelSource {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<ConnectionManager>,
    config: ConnectionManagerConfig,
    resolving: AtomicBool,
}

impl SentinelSource {
    /// Asks the sentinels where the master is and swaps the connection (one at a time, in the
    /// background).
    fn reresolve(self: &Arc<Self>) {
        if self.resolving.swap(true, Ordering::SeqCst) {
            return;
        }
        let s = self.clone();
        tokio::spawn(async move {
            let result = async {
                let c = s.sentinel.lock().await.async_get_client().await?;
                c.get_connection_manager_with_config(s.config.clone()).await
            }
            .await;
            match result {
                Ok(m) => {
                    *s.current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = m;
                    tracing::info!("redis master re-resolved through sentinel");
                }
                Err(e) => tracing::warn!(error = %e.category(), "sentinel re-resolve failed"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.resolving.store(false, Ordering::SeqCst);
        });
    }

    /// Follows the sentinels' `+switch-master` announcements, so a failover is picked up at once
    /// (a demoted master may keep accepting writes for a moment; errors are a backstop).
    /// Runs until the store is dropped.
    fn watch(self: &Arc<Self>, sentinels: Vec<String>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut i = 0usize;
            loop {
                if weak.strong_count() == 0 {
                    return;
                }
                let url = &sentinels[i % sentinels.len()];
                i += 1;
                let subscribed = async {
                    let mut pubsub = redis::Client::open(url.as_str())?
                        .get_async_pubsub()
                        .await?;
                    pubsub.subscribe("+switch-master").await?;
                    Ok::<_, redis::RedisError>(pubsub)
                }
                .await;
                if let Ok(mut pubsub) = subscribed {
                    let mut messages = pubsub.on_message();
                    while let Some(_msg) = messages.next().await {
                        let Some(s) = weak.upgrade() else { return };
                        tracing::info!("sentinel announced a master switch");
                        s.reresolve();
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// One command's connection: a cheap clone of the current multiplexed connection.
enum Conn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Scripts {
    touch: redis::Script,
    write_refresh: redis::Script,
    try_lock: redis::Script,
    cool_off: redis::Script,
    unlock: redis::Script,
    take: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            touch: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then \
                   redis.call('HSET', KEYS[1], 's', ARGV[1]) \
                   redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end return 0",
            ),
            // KEYS: session, lock. ARGV: blob, expected generation, owner, channel, handle.
            // 1 written, 0 gone, 2 fenced (another refresh wrote, or another owner holds the lock).
            write_refresh: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
                 local g = tonumber(redis.call('HGET', KEYS[1], 'g') or '0') \
                 if g ~= tonumber(ARGV[2]) then return 2 end \
                 local l = redis.call('GET', KEYS[2]) \
                 if l and l ~= ARGV[3] then return 2 end \
                 redis.call('HSET', KEYS[1], 'd', ARGV[1], 'g', g + 1) \
                 if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end \
                 return 1",
            ),
            // ARGV: owner, lease ms, now (unix ms, the lifecycle clock's).
            // {1} acquired, {0} held, {2, ms left} cooling off. A cool-off marker carries its end
            // on the lifecycle clock (`cooloff:<unix ms>`); its Redis TTL only collects it.
            try_lock: redis::Script::new(
                "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end \
                 local v = redis.call('GET', KEYS[1]) \
                 if v and string.sub(v, 1, 8) == 'cooloff:' then \
                   local left = (tonumber(string.sub(v, 9)) or 0) - tonumber(ARGV[3]) \
                   if left > 0 then return {2, left} end \
                   redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return {1} end \
                 return {0}",
            ),
            // ARGV: owner, cool-off ms, its end (unix ms on the lifecycle clock).
            cool_off: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   redis.call('SET', KEYS[1], 'cooloff:' .. ARGV[3], 'PX', ARGV[2]) return 1 end \
                 return 0",
            ),
            unlock: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   return redis.call('DEL', KEYS[1]) end return 0",
            ),
            // Read and delete in one step; publish for the session caches. Nil when absent.
            take: redis::Script::new(
                "local v = redis.call('HMGET', KEYS[1], 'd', 's', 'g') \
                 if redis.call('DEL', KEYS[1]) == 0 then return false end \
                 if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end \
                 return v",
            ),
        }
    }
}

/// A session hash as `HMGET d s g` returns it.
type RawRecord = (Option<Vec<u8>>, Option<i64>, Option<u64>);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn err(e: &redis::RedisError) -> StoreError {
    StoreError(format!("redis: {}", e.category()))
}

fn client(url: &str, tls_ca: Option<&[u8]>) -> Result<redis::Client, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(|e| StoreError(format!("store url: {}", e.category())))?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    match tls_ca {
        Some(ca) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        None => redis::Client::open(info),
    }
    .map_err(|e| err(&e))
}

impl RedisStore {
    /// Connects (once; connections reconnect by themselves afterwards).
    ///
    /// # Errors
    /// [`StoreError`] if an address is invalid or Redis does not answer within `timeout`.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        Self::connect_to(&Topology::Single(url.to_string()), None, prefix, timeout).await
    }

    /// Connects to any [`Topology`], trusting `tls_ca` (PEM) for `rediss://` when given.
    ///
    /// # Errors
    /// [`StoreError`] if an address is invalid or Redis does not answer within `timeout`.
    pub async fn connect_to(
        topology: &Topology,
        tls_ca: Option<&[u8]>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2))
            .set_pipeline_buffer_size(1024);
        let mut single = None;
        let connect = async {
            Ok::<_, StoreError>(match topology {
                Topology::Single(url) => {
                    let c = client(url, tls_ca)?;
                    single = Some(Arc::new(c.clone()));
                    Source::Single(
                        c.get_connection_manager_with_config(config)
                            .await
                            .map_err(|e| err(&e))?,
                    )
                }
                Topology::Cluster(nodes) => {
                    let mut b = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .tcp_settings(TcpSettings::default().set_nodelay(true));
                    if let Some(ca) = tls_ca {
                        b = b.certs(redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(ca.to_vec()),
                        });
                    }
                    Source::Cluster(
                        b.build()
                            .map_err(|e| err(&e))?
                            .get_async_connection()
                            .await
                            .map_err(|e| err(&e))?,
                    )
                }
                Topology::Sentinel { sentinels, master } => {
                    let mut sc = SentinelClient::build(
                        sentinels.clone(),
                        master.clone(),
                        None,
                        SentinelServerType::Master,
                    )
                    .map_err(|e| err(&e))?;
                    let c = sc.async_get_client().await.map_err(|e| err(&e))?;
                    let manager = c
                        .get_connection_manager_with_config(config.clone())
                        .await
                        .map_err(|e| err(&e))?;
                    let source = Arc::new(SentinelSource {
                        sentinel: tokio::sync::Mutex::new(sc),
                        current: RwLock::new(manager),
                        config: config.clone(),
                        resolving: AtomicBool::new(false),
                    });
                    source.watch(sentinels.clone());
                    Source::Sentinel(source)
                }
            })
        };
        let source = tokio::time::timeout(timeout * 3, connect)
            .await
            .map_err(|_| StoreError("redis: connect timed out".into()))??;
        Ok(Self {
            source,
            client: single,
            prefix: prefix.to_string(),
            timeout,
            scripts: Arc::new(Scripts::new()),
        })
    }

    fn conn(&self) -> Conn {
        match &self.source {
            Source::Single(m) => Conn::Manager(m.clone()),
            Source::Cluster(c) => Conn::Cluster(c.clone()),
            Source::Sentinel(s) => Conn::Manager(
                s.current
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            ),
        }
    }

    /// After a failure on a Sentinel-found master, ask the sentinels where the master is now.
    fn maybe_reresolve(&self, e: &redis::RedisError) {
        let Source::Sentinel(s) = &self.source else {
            return;
        };
        let moved = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if moved {
            s.reresolve();
        }
    }

    fn session_key(&self, handle: &str) -> String {
        format!("{}:s:{{{handle}}}", self.prefix)
    }

    fn index_key(&self, index: Index, hash: &str) -> String {
        match index {
            Index::Sub => format!("{}:u:{{{hash}}}", self.prefix),
            Index::Sid => format!("{}:sid:{{{hash}}}", self.prefix),
        }
    }

    /// The invalidation channel; `None` without a one-server topology (no cache to invalidate,
    /// and a cluster would route a channel name like a key).
    fn invalidation_channel(&self) -> Option<String> {
        self.client
            .as_ref()
            .map(|_| format!("{}:invalidate", self.prefix))
    }

    /// Keeps `cache` exact (see `session/cache.rs`): subscribes to the invalidation channel,
    /// drops each published handle, and every [`PING_EVERY`](super::cache::PING_EVERY) proves
    /// the subscription current. Runs until the cache is dropped. Only for one server (a
    /// cluster or Sentinel setup runs without the cache): returns false then.
    pub(crate) fn watch_invalidations(
        &self,
        cache: std::sync::Weak<super::cache::SessionCache>,
    ) -> bool {
        let (Some(client), Some(channel)) = (self.client.clone(), self.invalidation_channel())
        else {
            return false;
        };
        let timeout = self.timeout.min(super::cache::MAX_STALENESS);
        let store = self.clone();
        // This subscriber's markers: `!<id>:<seq>` (handles are base64url, never start with '!').
        let marker_prefix = format!("!{}:", &crate::crypto::random_token()[..12]);
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                if cache.strong_count() == 0 {
                    return;
                }
                let subscribed = tokio::time::timeout(timeout, async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub.into_on_message())
                })
                .await;
                if let Ok(Ok(mut stream)) = subscribed {
                    let mut tick = tokio::time::interval(super::cache::PING_EVERY);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut sent: std::collections::VecDeque<(u64, std::time::Instant)> =
                        std::collections::VecDeque::new();
                    let mut seq = 0u64;
                    'connected: loop {
                        tokio::select! {
                            msg = stream.next() => {
                                let Some(msg) = msg else { break 'connected };
                                let Some(c) = cache.upgrade() else { return };
                                let Ok(payload) = msg.get_payload::<String>() else { continue };
                                if let Some(n) = payload
                                    .strip_prefix(&marker_prefix)
                                    .and_then(|n| n.parse::<u64>().ok())
                                {
                                    // Our own marker came back through the channel every
                                    // instance publishes to: everything published before it
                                    // has been applied.
                                    while let Some(&(m, at)) = sent.front() {
                                        if m > n {
                                            break;
                                        }
                                        sent.pop_front();
                                        if m == n {
                                            c.verified(at);
                                        }
                                    }
                                } else if let Some(ended) = payload.strip_prefix('~') {
                                    c.invalidate(ended);
                                    c.ended(ended);
                                } else if !payload.starts_with('!') {
                                    c.invalidate(&payload);
                                }
                            }
                            _ = tick.tick() => {
                                if sent.front().is_some_and(|(_, at)| at.elapsed() > super::cache::MAX_STALENESS * 3) {
                                    // Markers stopped coming back: this subscription is not
                                    // hearing the channel. Start again.
                                    break 'connected;
                                }
                                seq += 1;
                                let at = std::time::Instant::now();
                                sent.push_back((seq, at));
                                let marker = format!("{marker_prefix}{seq}");
                                let ch = channel.clone();
                                let _ = store
                                    .run(move |mut c| {
                                        Box::pin(async move {
                                            redis::cmd("PUBLISH").arg(ch).arg(marker).query_async::<()>(&mut c).await
                                        })
                                    })
                                    .await;
                            }
                        }
                    }
                    tracing::warn!("session cache: invalidation subscription lost; reconnecting");
                }
                if let Some(c) = cache.upgrade() {
                    c.unverified();
                }
                tokio::time::sleep(super::cache::PING_EVERY).await;
            }
        });
        true
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl FnOnce(Conn) -> RedisFuture<'static, T>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, f(self.conn())).await;
        crate::metrics::store_latency(started.elapsed());
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.maybe_reresolve(&e);
                Err(err(&e))
            }
            Err(_) => {
                if let Source::Sentinel(_) = &self.source {
                    self.maybe_reresolve(&redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )));
                }
                Err(StoreError("redis: timed out".into()))
            }
        }
    }

    fn index_keys(&self, r: &RecordRef) -> Vec<String> {
        r.entries().map(|(i, n)| self.index_key(i, n)).collect()
    }

    fn lock_key(&self, handle: &str) -> String {
        format!("{}:lock:{{{handle}}}", self.prefix)
    }

    /// Runs one pipeline (all of its keys in one slot).
    async fn pipeline(&self, p: Pipeline) -> Result<Vec<Value>, StoreError> {
        self.run(move |mut c| Box::pin(async move { p.query_async::<Vec<Value>>(&mut c).await }))
            .await
    }

    pub(super) async fn put_session(
        &self,
        r: &RecordRef,
        blob: Vec<u8>,
        seen: i64,
        ttl: Duration,
        index_ttl: Duration,
    ) -> Result<(), StoreError> {
        // Indexes first (each its own slot), then the record: no failure leaves a live session
        // that "log out everywhere" or back-channel logout cannot find.
        for ik in self.index_keys(r) {
            let mut p = redis::pipe();
            p.cmd("SADD").arg(&ik).arg(&r.handle);
            p.cmd("EXPIRE").arg(&ik).arg(index_ttl.as_secs().max(1));
            self.pipeline(p).await?;
        }
        let k = self.session_key(&r.handle);
        let mut session = redis::pipe();
        session.atomic();
        session.cmd("DEL").arg(&k);
        session
            .cmd("HSET")
            .arg(&k)
            .arg("d")
            .arg(blob)
            .arg("s")
            .arg(seen)
            .arg("g")
            .arg(0);
        session.cmd("PEXPIRE").arg(&k).arg(millis(ttl));
        self.pipeline(session).await.map(|_| ())
    }

    pub(super) async fn get_session(
        &self,
        handle: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let k = self.session_key(handle);
        let (d, seen, g): RawRecord = self
            .run(move |mut c| {
                Box::pin(async move {
                    redis::cmd("HMGET")
                        .arg(k)
                        .arg("d")
                        .arg("s")
                        .arg("g")
                        .query_async(&mut c)
                        .await
                })
            })
            .await?;
        Ok(d.map(|blob| StoredRecord {
            blob,
            seen: seen.unwrap_or(0),
            generation: g.unwrap_or(0),
        }))
    }

    pub(super) async fn touch_session(
        &self,
        handle: &str,
        seen: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let k = self.session_key(handle);
        let ms = millis(ttl);
        let script = self.scripts.touch.clone();
        let n: i64 = self
            .run(move |mut c| {
                Box::pin(async move { script.key(k).arg(seen).arg(ms).invoke_async(&mut c).await })
            })
            .await?;
        Ok(n == 1)
    }

    pub(super) async fn write_refresh(
        &self,
        handle: &str,
        blob: Vec<u8>,
        generation: u64,
        owner: &str,
    ) -> Result<RefreshWrite, StoreError> {
        let (k, lock) = (self.session_key(handle), self.lock_key(handle));
        let script = self.scripts.write_refresh.clone();
        let channel = self.invalidation_channel().unwrap_or_default();
        let (handle, owner) = (handle.to_string(), owner.to_string());
        let n: i64 = self
            .run(move |mut c| {
                Box::pin(async move {
                    script
                        .key(k)
                        .key(lock)
                        .arg(blob)
                        .arg(generation)
                        .arg(owner)
                        .arg(channel)
                        .arg(handle)
                        .invoke_async(&mut c)
                        .await
                })
            })
            .await?;
        Ok(match n {
            1 => RefreshWrite::Written,
            0 => RefreshWrite::Gone,
            _ => RefreshWrite::Fenced,
        })
    }

    pub(super) async fn try_lock(
        &self,
        handle: &str,
        owner: &str,
        lease: Duration,
        now_ms: i64,
    ) -> Result<LockState, StoreError> {
        let k = self.lock_key(handle);
        let owner = owner.to_string();
        let ms = millis(lease);
        let script = self.scripts.try_lock.clone();
        let r: Vec<i64> = self
            .run(move |mut c| {
                Box::pin(async move {
                    script
                        .key(k)
                        .arg(owner)
                        .arg(ms)
                        .arg(now_ms)
                        .invoke_async(&mut c)
                        .await
                })
            })
            .await?;
        Ok(match r.as_slice() {
            [1, ..] => LockState::Acquired,
            [2, pttl, ..] => LockState::CoolingOff(Duration::from_millis(
                u64::try_from(*pttl).unwrap_or(1).max(1),
            )),
            _ => LockState::Held,
        })
    }

    pub(super) async fn cool_off(
        &self,
        handle: &str,
        owner: &str,
        d: Duration,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let k = self.lock_key(handle);
        let owner = owner.to_string();
        let ms = millis(d);
        let until = now_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
        let script = self.scripts.cool_off.clone();
        self.run(move |mut c| {
            Box::pin(async move {
                script
                    .key(k)
                    .arg(owner)
                    // The Redis TTL only collects the marker: keep it a little longer than
                    // the cool-off, which ends by the lifecycle clock.
                    .arg(ms.saturating_mul(2))
                    .arg(until)
                    .invoke_async::<()>(&mut c)
                    .await
            })
        })
        .await
    }

    pub(super) async fn unlock(&self, handle: &str, owner: &str) -> Result<(), StoreError> {
        let k = self.lock_key(handle);
        let owner = owner.to_string();
        let script = self.scripts.unlock.clone();
        self.run(move |mut c| {
            Box::pin(async move { script.key(k).arg(owner).invoke_async::<()>(&mut c).await })
        })
        .await
    }

    pub(super) async fn wait_replicas(
        &self,
        replicas: u32,
        timeout: Duration,
    ) -> Result<u32, StoreError> {
        if replicas == 0 || matches!(self.source, Source::Cluster(_)) {
            // A cluster would send a keyless WAIT to an arbitrary node: not the lock's master.
            return Ok(0);
        }
        let ms = millis(timeout);
        let n: i64 = self
            .run(move |mut c| {
                Box::pin(async move {
                    redis::cmd("WAIT")
                        .arg(replicas)
                        .arg(ms)
                        .query_async(&mut c)
                        .await
                })
            })
            .await?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    pub(super) async fn remember_once(
        &self,
        hash: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let k = format!("{}:once:{{{hash}}}", self.prefix);
        let ms = millis(ttl);
        let r: Option<String> = self
            .run(move |mut c| {
                Box::pin(async move {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms)
                        .query_async(&mut c)
                        .await
                })
            })
            .await?;
        Ok(r.is_some())
    }

    pub(super) async fn remembered(&self, hash: &str) -> Result<bool, StoreError> {
        let k = format!("{}:once:{{{hash}}}", self.prefix);
        let n: i64 = self
            .run(move |mut c| {
                Box::pin(async move { redis::cmd("EXISTS").arg(k).query_async(&mut c).await })
            })
            .await?;
        Ok(n > 0)
    }

    pub(super) async fn take_session(
        &self,
        r: &RecordRef,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let k = self.session_key(&r.handle);
        let script = self.scripts.take.clone();
        let channel = self.invalidation_channel().unwrap_or_default();
        // `~<handle>`: this session *ended* (other instances close its tunnels too), where a
        // bare handle only says it changed. Handles are base64url: never `~` or `!`.
        let handle = format!("~{}", r.handle);
        let taken: Option<RawRecord> = self
            .run(move |mut c| {
                Box::pin(async move {
                    script
                        .key(k)
                        .arg(channel)
                        .arg(handle)
                        .invoke_async(&mut c)
                        .await
                })
            })
            .await?;
        // The record is gone now; the index entries go after it (ordered, never before). A
        // failure here leaves stale entries that `find` prunes: the caller still gets what was
        // deleted, to revoke it.
        if let Err(e) = self.unindex(r).await {
            tracing::warn!(error = %e, "index entries of an ended session not removed; find will prune them");
        }
        Ok(taken.and_then(|(d, seen, g)| {
            d.map(|blob| StoredRecord {
                blob,
                seen: seen.unwrap_or(0),
                generation: g.unwrap_or(0),
            })
        }))
    }

    pub(super) async fn unindex(&self, r: &RecordRef) -> Result<(), StoreError> {
        for ik in self.index_keys(r) {
            let mut p = redis::pipe();
            p.cmd("SREM").arg(ik).arg(&r.handle);
            self.pipeline(p).await?;
        }
        Ok(())
    }

    pub(super) async fn index_sample(
        &self,
        index: Index,
        hash: &str,
        n: usize,
    ) -> Result<Vec<String>, StoreError> {
        let k = self.index_key(index, hash);
        self.run(move |mut c| {
            Box::pin(async move {
                redis::cmd("SRANDMEMBER")
                    .arg(k)
                    .arg(n)
                    .query_async(&mut c)
                    .await
            })
        })
        .await
    }

    pub(super) async fn index_members(
        &self,
        index: Index,
        hash: &str,
    ) -> Result<Vec<String>, StoreError> {
        let k = self.index_key(index, hash);
        self.run(move |mut c| {
            Box::pin(async move { redis::cmd("SMEMBERS").arg(k).query_async(&mut c).await })
        })
        .await
    }

    pub(super) async fn index_remove(
        &self,
        index: Index,
        hash: &str,
        handles: &[String],
    ) -> Result<(), StoreError> {
        let k = self.index_key(index, hash);
        let handles = handles.to_vec();
        self.run(move |mut c| {
            Box::pin(async move {
                redis::cmd("SREM")
                    .arg(k)
                    .arg(handles)
                    .query_async::<()>(&mut c)
                    .await
            })
        })
        .await
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.run(move |mut c| {
            Box::pin(async move { redis::cmd("PING").query_async::<()>(&mut c).await })
        })
        .await
    }
}

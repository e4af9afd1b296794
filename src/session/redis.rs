//! Redis [`Store`](super::Store): the key scheme, TTLs and one-shot reads.
//!
//! The only module that knows Redis key names. Every key carries a hash tag (`{…}`) so the
//! scheme is Redis-Cluster safe: each command touches one slot.
//!
//! | key | type | TTL |
//! |---|---|---|
//! | `<prefix>:s:{<handle>}` | hash: `d` sealed session, `s` last-seen (unix s) | min(idle, absolute) expiry |
//! | `<prefix>:lock:{<handle>}` | string: refresh-lock owner token | the lease |
//! | `<prefix>:u:{<hash(sub)>}` | set of handles | absolute timeout, renewed on write |
//! | `<prefix>:sid:{<hash(sid)>}` | set of handles | absolute timeout, renewed on write |
//! | `<prefix>:l:{<hash(state)>}` | string: sealed pending login | 10 min, taken with GETDEL |
//! | `<prefix>:once:{<hash>}` | string: a back-channel logout `jti` seen | its TTL |
//!
//! Sliding (`touch_session`) writes only `s` and the TTL, and a refresh (`replace_data`) only
//! `d`, each through a script that does nothing if the record is gone: neither can undo the
//! other, and neither can bring back a session deleted meanwhile. Needs Redis ≥ 6.2 (GETDEL).

use super::{Index, RecordRef, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::IntoConnectionInfo;
use std::sync::Arc;
use std::time::Duration;

/// The Redis store. Clones share one multiplexed, self-reconnecting connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

struct Scripts {
    touch: redis::Script,
    replace: redis::Script,
    unlock: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            touch: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then \
                   redis.call('HSET', KEYS[1], 's', ARGV[1]) \
                   redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end return 0",
            ),
            replace: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then \
                   redis.call('HSET', KEYS[1], 'd', ARGV[1]) return 1 end return 0",
            ),
            unlock: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   return redis.call('DEL', KEYS[1]) end return 0",
            ),
        }
    }
}

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

impl RedisStore {
    /// Connects (once; the connection manager reconnects by itself afterwards).
    ///
    /// # Errors
    /// [`StoreError`] if the URL is invalid or Redis does not answer within `timeout`.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let info = url
            .into_connection_info()
            .map_err(|e| StoreError(format!("store.url: {}", e.category())))?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| err(&e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(
            timeout * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| StoreError("redis: connect timed out".into()))?
        .map_err(|e| err(&e))?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            timeout,
            scripts: Arc::new(Scripts::new()),
        })
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

    fn pending_key(&self, hash: &str) -> String {
        format!("{}:l:{{{hash}}}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl FnOnce(ConnectionManager) -> redis::RedisFuture<'static, T>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(r) => r.map_err(|e| err(&e)),
            Err(_) => Err(StoreError("redis: timed out".into())),
        }
    }

    pub(super) async fn put_session(
        &self,
        r: &RecordRef,
        blob: Vec<u8>,
        seen: i64,
        ttl: Duration,
        index_ttl: Duration,
    ) -> Result<(), StoreError> {
        let ms = millis(ttl);
        let idx_s = index_ttl.as_secs().max(1);
        let k = self.session_key(&r.handle);
        let mut p = redis::pipe();
        p.cmd("DEL").arg(&k).ignore();
        p.cmd("HSET")
            .arg(&k)
            .arg("d")
            .arg(blob)
            .arg("s")
            .arg(seen)
            .ignore();
        p.cmd("PEXPIRE").arg(&k).arg(ms).ignore();
        for k in std::iter::once(self.index_key(Index::Sub, &r.sub_hash))
            .chain(r.sid_hash.as_deref().map(|s| self.index_key(Index::Sid, s)))
        {
            p.cmd("SADD").arg(&k).arg(&r.handle).ignore();
            p.cmd("EXPIRE").arg(&k).arg(idx_s).ignore();
        }
        self.run(move |mut c| Box::pin(async move { p.query_async::<()>(&mut c).await }))
            .await
    }

    pub(super) async fn get_session(
        &self,
        handle: &str,
    ) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let k = self.session_key(handle);
        let (d, seen): (Option<Vec<u8>>, Option<i64>) = self
            .run(move |mut c| {
                Box::pin(async move {
                    redis::cmd("HMGET")
                        .arg(k)
                        .arg("d")
                        .arg("s")
                        .query_async(&mut c)
                        .await
                })
            })
            .await?;
        Ok(d.map(|d| (d, seen.unwrap_or(0))))
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

    pub(super) async fn replace_data(
        &self,
        handle: &str,
        blob: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let k = self.session_key(handle);
        let script = self.scripts.replace.clone();
        let n: i64 = self
            .run(move |mut c| {
                Box::pin(async move { script.key(k).arg(blob).invoke_async(&mut c).await })
            })
            .await?;
        Ok(n == 1)
    }

    pub(super) async fn try_lock(
        &self,
        handle: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let k = format!("{}:lock:{{{handle}}}", self.prefix);
        let token = token.to_string();
        let ms = millis(lease);
        let r: Option<String> = self
            .run(move |mut c| {
                Box::pin(async move {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(token)
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

    pub(super) async fn unlock(&self, handle: &str, token: &str) -> Result<(), StoreError> {
        let k = format!("{}:lock:{{{handle}}}", self.prefix);
        let token = token.to_string();
        let script = self.scripts.unlock.clone();
        self.run(move |mut c| {
            Box::pin(async move { script.key(k).arg(token).invoke_async::<()>(&mut c).await })
        })
        .await
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

    pub(super) async fn delete_session(&self, r: &RecordRef) -> Result<bool, StoreError> {
        let k = self.session_key(&r.handle);
        let mut p = redis::pipe();
        p.cmd("DEL").arg(k);
        for ik in std::iter::once(self.index_key(Index::Sub, &r.sub_hash))
            .chain(r.sid_hash.as_deref().map(|s| self.index_key(Index::Sid, s)))
        {
            p.cmd("SREM").arg(ik).arg(&r.handle).ignore();
        }
        let (n,): (u64,) = self
            .run(move |mut c| Box::pin(async move { p.query_async(&mut c).await }))
            .await?;
        Ok(n > 0)
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

    pub(super) async fn put_pending(
        &self,
        state_hash: &str,
        blob: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let k = self.pending_key(state_hash);
        let s = ttl.as_secs().max(1);
        self.run(move |mut c| {
            Box::pin(async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(blob)
                    .arg("EX")
                    .arg(s)
                    .query_async::<()>(&mut c)
                    .await
            })
        })
        .await
    }

    pub(super) async fn take_pending(
        &self,
        state_hash: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let k = self.pending_key(state_hash);
        self.run(move |mut c| {
            Box::pin(async move { redis::cmd("GETDEL").arg(k).query_async(&mut c).await })
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

//! Redis [`Store`](super::Store): its operations, their TTLs and one-shot reads.
//!
//! The parts, one concern each:
//! - `topology.rs`: where Redis is ([`Topology`]: one server, Cluster, Sentinel) and the
//!   connections, including following a Sentinel failover;
//! - `keys.rs`: the key scheme, the only code that knows key names (table in its header);
//! - `scripts.rs`: the Lua scripts, each one atomic step;
//! - `invalidation.rs`: the invalidation channel, its three kinds of message and the subscriber
//!   feeding the session cache (`session/cache.rs`).
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
//!
//! Each operation is a `store.<operation>` span for the traces ([`crate::trace`]; nothing
//! but the operation's name: no key, handle or value).

mod invalidation;
mod keys;
mod scripts;
mod topology;

/// How Redis is deployed (defined with the config, which names it).
pub use crate::config::Topology;

use super::{Index, LockState, RecordRef, RefreshWrite, StoreError, StoredRecord};
use keys::Keys;
use redis::{Pipeline, RedisFuture, Value};
use scripts::Scripts;
use std::sync::Arc;
use std::time::Duration;
use topology::{Conn, Source};

/// The Redis store. Clones share the connections.
#[derive(Clone)]
pub struct RedisStore {
    source: Source,
    keys: Keys,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

/// A session hash as `HMGET d s g` returns it.
type RawRecord = (Option<Vec<u8>>, Option<i64>, Option<u64>);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

fn err(e: &redis::RedisError) -> StoreError {
    StoreError(format!("redis: {}", e.category()))
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
        let source = Source::connect(topology, tls_ca, timeout).await?;
        Ok(Self {
            source,
            keys: Keys::new(prefix),
            timeout,
            scripts: Arc::new(Scripts::new()),
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl FnOnce(Conn) -> RedisFuture<'static, T>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, f(self.source.conn())).await;
        crate::metrics::store_latency(started.elapsed());
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.source.failed(&e);
                Err(err(&e))
            }
            Err(_) => {
                self.source.timed_out();
                Err(StoreError("redis: timed out".into()))
            }
        }
    }

    /// Runs one pipeline (all of its keys in one slot).
    async fn pipeline(&self, p: Pipeline) -> Result<Vec<Value>, StoreError> {
        self.run(move |mut c| Box::pin(async move { p.query_async::<Vec<Value>>(&mut c).await }))
            .await
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.put_session", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn put_session(
        &self,
        r: &RecordRef,
        blob: Vec<u8>,
        seen: i64,
        generation: u64,
        ttl: Duration,
        index_ttl: Duration,
    ) -> Result<(), StoreError> {
        // Indexes first (each its own slot), then the record: no failure leaves a live session
        // that "log out everywhere" or back-channel logout cannot find. An index's TTL is only
        // ever extended (`index_add`): a shorter-lived session of the same user written later
        // must not cut short the entry of a remembered one.
        let ms = millis(index_ttl);
        for ik in self.keys.indexes(r) {
            let script = self.scripts.index_add.clone();
            let handle = r.handle.clone();
            self.run(move |mut c| {
                Box::pin(async move {
                    script
                        .key(ik)
                        .arg(handle)
                        .arg(ms)
                        .invoke_async::<()>(&mut c)
                        .await
                })
            })
            .await?;
        }
        let k = self.keys.session(&r.handle);
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
            .arg(generation);
        session.cmd("PEXPIRE").arg(&k).arg(millis(ttl));
        self.pipeline(session).await.map(|_| ())
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.get_session", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn get_session(
        &self,
        handle: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let k = self.keys.session(handle);
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

    #[tracing::instrument(target = "cloakroom::trace", name = "store.touch_session", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn touch_session(
        &self,
        handle: &str,
        seen: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let k = self.keys.session(handle);
        let ms = millis(ttl);
        let script = self.scripts.touch.clone();
        let n: i64 = self
            .run(move |mut c| {
                Box::pin(async move { script.key(k).arg(seen).arg(ms).invoke_async(&mut c).await })
            })
            .await?;
        Ok(n == 1)
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.write_refresh", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn write_refresh(
        &self,
        handle: &str,
        blob: Vec<u8>,
        generation: u64,
        owner: &str,
    ) -> Result<RefreshWrite, StoreError> {
        let (k, lock) = (self.keys.session(handle), self.keys.lock(handle));
        let script = self.scripts.write_refresh.clone();
        let channel = self.invalidation_channel();
        let (message, owner) = (invalidation::changed(handle), owner.to_string());
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
                        .arg(message)
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

    #[tracing::instrument(target = "cloakroom::trace", name = "store.try_lock", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn try_lock(
        &self,
        handle: &str,
        owner: &str,
        lease: Duration,
        now_ms: i64,
    ) -> Result<LockState, StoreError> {
        let k = self.keys.lock(handle);
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

    #[tracing::instrument(target = "cloakroom::trace", name = "store.cool_off", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn cool_off(
        &self,
        handle: &str,
        owner: &str,
        d: Duration,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let k = self.keys.lock(handle);
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

    #[tracing::instrument(target = "cloakroom::trace", name = "store.unlock", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn unlock(&self, handle: &str, owner: &str) -> Result<(), StoreError> {
        let k = self.keys.lock(handle);
        let owner = owner.to_string();
        let script = self.scripts.unlock.clone();
        self.run(move |mut c| {
            Box::pin(async move { script.key(k).arg(owner).invoke_async::<()>(&mut c).await })
        })
        .await
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.wait_replicas", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn wait_replicas(
        &self,
        replicas: u32,
        timeout: Duration,
    ) -> Result<u32, StoreError> {
        if replicas == 0 || self.source.is_cluster() {
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

    #[tracing::instrument(target = "cloakroom::trace", name = "store.remember_once", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn remember_once(
        &self,
        hash: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let k = self.keys.once(hash);
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

    #[tracing::instrument(target = "cloakroom::trace", name = "store.put_shared", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn put_shared(
        &self,
        hash: &str,
        blob: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let k = self.keys.shared(hash);
        let ms = millis(ttl);
        self.run(move |mut c| {
            Box::pin(async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(blob)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut c)
                    .await
            })
        })
        .await
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.get_shared", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn get_shared(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let k = self.keys.shared(hash);
        self.run(move |mut c| {
            Box::pin(async move { redis::cmd("GET").arg(k).query_async(&mut c).await })
        })
        .await
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.schedule", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn schedule(&self, handle: &str, at: i64) -> Result<(), StoreError> {
        let k = self.keys.expiry();
        let h = handle.to_string();
        self.run(move |mut c| {
            Box::pin(async move {
                redis::cmd("ZADD")
                    .arg(k)
                    .arg(at)
                    .arg(h)
                    .query_async::<()>(&mut c)
                    .await
            })
        })
        .await
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.unschedule", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn unschedule(&self, handle: &str) -> Result<(), StoreError> {
        let k = self.keys.expiry();
        let h = handle.to_string();
        self.run(move |mut c| {
            Box::pin(async move {
                redis::cmd("ZREM")
                    .arg(k)
                    .arg(h)
                    .query_async::<()>(&mut c)
                    .await
            })
        })
        .await
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.due", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn due(&self, now: i64, n: usize) -> Result<Vec<String>, StoreError> {
        let k = self.keys.expiry();
        self.run(move |mut c| {
            Box::pin(async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(k)
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(n)
                    .query_async(&mut c)
                    .await
            })
        })
        .await
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.delete_shared", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn delete_shared(&self, hash: &str) -> Result<(), StoreError> {
        let k = self.keys.shared(hash);
        self.run(move |mut c| {
            Box::pin(async move { redis::cmd("DEL").arg(k).query_async::<()>(&mut c).await })
        })
        .await
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.remembered", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn remembered(&self, hash: &str) -> Result<bool, StoreError> {
        let k = self.keys.once(hash);
        let n: i64 = self
            .run(move |mut c| {
                Box::pin(async move { redis::cmd("EXISTS").arg(k).query_async(&mut c).await })
            })
            .await?;
        Ok(n > 0)
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.take_session", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn take_session(
        &self,
        r: &RecordRef,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let k = self.keys.session(&r.handle);
        let script = self.scripts.take.clone();
        let channel = self.invalidation_channel();
        // This session *ended* (other instances close its tunnels too), where a refresh write
        // only says it changed.
        let message = invalidation::ended(&r.handle);
        let taken: Option<RawRecord> = self
            .run(move |mut c| {
                Box::pin(async move {
                    script
                        .key(k)
                        .arg(channel)
                        .arg(message)
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

    #[tracing::instrument(target = "cloakroom::trace", name = "store.unindex", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn unindex(&self, r: &RecordRef) -> Result<(), StoreError> {
        for ik in self.keys.indexes(r) {
            let mut p = redis::pipe();
            p.cmd("SREM").arg(ik).arg(&r.handle);
            self.pipeline(p).await?;
        }
        Ok(())
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.index_sample", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn index_sample(
        &self,
        index: Index,
        hash: &str,
        n: usize,
    ) -> Result<Vec<String>, StoreError> {
        let k = self.keys.index(index, hash);
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

    #[tracing::instrument(target = "cloakroom::trace", name = "store.index_members", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn index_members(
        &self,
        index: Index,
        hash: &str,
    ) -> Result<Vec<String>, StoreError> {
        let k = self.keys.index(index, hash);
        self.run(move |mut c| {
            Box::pin(async move { redis::cmd("SMEMBERS").arg(k).query_async(&mut c).await })
        })
        .await
    }

    #[tracing::instrument(target = "cloakroom::trace", name = "store.index_remove", skip_all, fields(otel.kind = "client", db.system.name = "redis"))]
    pub(super) async fn index_remove(
        &self,
        index: Index,
        hash: &str,
        handles: &[String],
    ) -> Result<(), StoreError> {
        let k = self.keys.index(index, hash);
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

//! Where Redis is and how to reach it: one server, a cluster, or a master found through
//! Sentinel, and the failover following for the last.
//!
//! Owns the connections and nothing else: it never builds a key, runs a script or reads a
//! reply. Every command goes through [`Source::conn`], a cheap clone of the current multiplexed
//! connection; an error or a timeout on a Sentinel-found master is reported back with
//! [`Source::failed`] / [`Source::timed_out`], which ask the sentinels where the master is now.

use super::err;
use crate::session::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::Topology;

/// The command connections of one [`Topology`]. Clones share them.
#[derive(Clone)]
pub(super) enum Source {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelSource>),
}

/// What [`Source::connect`] returns: the connections, and for one server its client (the
/// invalidation subscriber opens its own connection with it).
pub(super) struct Connected {
    pub(super) source: Source,
    pub(super) single: Option<Arc<redis::Client>>,
}

impl Source {
    /// Connects (once; connections reconnect by themselves afterwards), within three times
    /// `timeout` in all.
    pub(super) async fn connect(
        topology: &Topology,
        tls_ca: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Connected, StoreError> {
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
        Ok(Connected { source, single })
    }

    /// The connection for one command.
    pub(super) fn conn(&self) -> Conn {
        match self {
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

    /// Whether this is a cluster (where a keyless command goes to an arbitrary node).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Source::Cluster(_))
    }

    /// A command failed with `e`: on a Sentinel-found master, ask the sentinels where the
    /// master is now if the error says it may have moved.
    pub(super) fn failed(&self, e: &redis::RedisError) {
        let Source::Sentinel(s) = self else {
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

    /// A command got no answer in time: on a Sentinel-found master, as [`Self::failed`] with a
    /// timeout.
    pub(super) fn timed_out(&self) {
        if let Source::Sentinel(_) = self {
            self.failed(&redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )));
        }
    }
}

/// A master found through Sentinel: a self-reconnecting connection to it, replaced when a
/// failover moves the master (connection errors or `READONLY` replies trigger a re-resolve).
pub(super) struct SentinelSource {
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
pub(super) enum Conn {
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

/// A one-server client for `url`, with `TCP_NODELAY`, trusting `tls_ca` (PEM) when given.
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

//! Where Redis is and how to reach it: one server, a cluster, or a master found through
//! Sentinel, and the failover following for the last.
//!
//! Owns the connections and nothing else: it never builds a key, runs a script or reads a
//! reply. Every command goes through [`Source::conn`], a cheap clone of the current multiplexed
//! connection; an error or a timeout on a Sentinel-found master is reported back with
//! [`Source::failed`] / [`Source::timed_out`], which ask the sentinels where the master is now.
//!
//! It also says which servers publish the invalidations ([`Source::publishers`]): the one
//! server, the current master, or every master of the cluster. The invalidation subscriber
//! (`invalidation.rs`) hears each of them on its own connection.

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
    Single(ConnectionManager, Arc<redis::Client>),
    Cluster(ClusterConnection, Arc<ClusterNodes>),
    Sentinel(Arc<SentinelSource>),
}

/// How to reach any node of a cluster: the first seed's connection settings (credentials,
/// TLS or not) and the CA to trust.
pub(super) struct ClusterNodes {
    seed: redis::ConnectionInfo,
    tls_ca: Option<Vec<u8>>,
}

/// A server that publishes invalidations: the scripts that end or change a session run on it.
pub(super) struct Server {
    /// `host:port`, which tells servers apart.
    pub(super) name: String,
    pub(super) client: redis::Client,
}

impl Server {
    fn of(client: redis::Client) -> Self {
        Self {
            name: client.get_connection_info().addr().to_string(),
            client,
        }
    }
}

impl Source {
    /// Connects (once; connections reconnect by themselves afterwards), within three times
    /// `timeout` in all.
    pub(super) async fn connect(
        topology: &Topology,
        tls_ca: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Source, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2))
            .set_pipeline_buffer_size(1024);
        let connect = async {
            Ok::<_, StoreError>(match topology {
                Topology::Single(url) => {
                    let c = client(url, tls_ca)?;
                    Source::Single(
                        c.get_connection_manager_with_config(config)
                            .await
                            .map_err(|e| err(&e))?,
                        Arc::new(c),
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
                    let seed = nodes
                        .first()
                        .ok_or_else(|| StoreError("store.nodes: empty".into()))?
                        .as_str()
                        .into_connection_info()
                        .map_err(|e| StoreError(format!("store url: {}", e.category())))?;
                    Source::Cluster(
                        b.build()
                            .map_err(|e| err(&e))?
                            .get_async_connection()
                            .await
                            .map_err(|e| err(&e))?,
                        Arc::new(ClusterNodes {
                            seed,
                            tls_ca: tls_ca.map(<[u8]>::to_vec),
                        }),
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
                        current: RwLock::new((manager, c)),
                        config: config.clone(),
                        resolving: AtomicBool::new(false),
                    });
                    source.watch(sentinels.clone());
                    Source::Sentinel(source)
                }
            })
        };
        tokio::time::timeout(timeout * 3, connect)
            .await
            .map_err(|_| StoreError("redis: connect timed out".into()))?
    }

    /// The servers that publish invalidations now: the one server, the master the sentinels
    /// named last, or every master of the cluster that serves slots (asked of the cluster with
    /// `CLUSTER NODES`, so a new master or a failover shows here).
    pub(super) async fn publishers(&self) -> Result<Vec<Server>, StoreError> {
        match self {
            Source::Single(_, c) => Ok(vec![Server::of(redis::Client::clone(c))]),
            Source::Sentinel(s) => Ok(vec![Server::of(s.current_client())]),
            Source::Cluster(c, nodes) => {
                let text: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut c.clone())
                    .await
                    .map_err(|e| err(&e))?;
                let masters = masters_serving_slots(&text)
                    .ok_or_else(|| StoreError("redis: unreadable CLUSTER NODES".into()))?;
                masters
                    .into_iter()
                    .map(|(host, port)| nodes.client(host, port).map(Server::of))
                    .collect()
            }
        }
    }

    /// The connection for one command.
    pub(super) fn conn(&self) -> Conn {
        match self {
            Source::Single(m, _) => Conn::Manager(m.clone()),
            Source::Cluster(c, _) => Conn::Cluster(c.clone()),
            Source::Sentinel(s) => Conn::Manager(
                s.current
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0
                    .clone(),
            ),
        }
    }

    /// Whether this is a cluster (where a keyless command goes to an arbitrary node).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Source::Cluster(..))
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
    /// The master's connection and its client.
    current: RwLock<(ConnectionManager, redis::Client)>,
    config: ConnectionManagerConfig,
    resolving: AtomicBool,
}

impl SentinelSource {
    fn current_client(&self) -> redis::Client {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .clone()
    }

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
                let m = c
                    .get_connection_manager_with_config(s.config.clone())
                    .await?;
                Ok::<_, redis::RedisError>((m, c))
            }
            .await;
            match result {
                Ok(current) => {
                    *s.current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = current;
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

impl ClusterNodes {
    /// A client for the node at `host:port`, with the seed's credentials and TLS.
    fn client(&self, host: &str, port: u16) -> Result<redis::Client, StoreError> {
        let addr = match self.seed.addr() {
            redis::ConnectionAddr::TcpTls { insecure, .. } => redis::ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => redis::ConnectionAddr::Tcp(host.to_string(), port),
        };
        client_for(self.seed.clone().set_addr(addr), self.tls_ca.as_deref())
    }
}

/// The masters that serve slots, as `(host, port)`, from `CLUSTER NODES` text; `None` if a
/// line is unreadable. Lines: `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong>
/// <epoch> <link> [<slot> ...]`.
fn masters_serving_slots(text: &str) -> Option<Vec<(&str, u16)>> {
    let mut masters = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (addr, flags) = (fields.get(1)?, fields.get(2)?);
        let flags: Vec<&str> = flags.split(',').collect();
        let serving = fields.len() > 8
            && flags.contains(&"master")
            && !flags
                .iter()
                .any(|f| matches!(*f, "fail" | "fail?" | "handshake" | "noaddr"));
        if !serving {
            continue;
        }
        let hostport = addr.split(['@', ',']).next()?;
        let (host, port) = hostport.rsplit_once(':')?;
        if host.is_empty() {
            return None;
        }
        masters.push((host, port.parse().ok()?));
    }
    Some(masters)
}

/// A one-server client for `url`, with `TCP_NODELAY`, trusting `tls_ca` (PEM) when given.
fn client(url: &str, tls_ca: Option<&[u8]>) -> Result<redis::Client, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(|e| StoreError(format!("store url: {}", e.category())))?;
    client_for(info, tls_ca)
}

fn client_for(
    info: redis::ConnectionInfo,
    tls_ca: Option<&[u8]>,
) -> Result<redis::Client, StoreError> {
    let info = info.set_tcp_settings(TcpSettings::default().set_nodelay(true));
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

#[cfg(test)]
mod tests {
    use super::masters_serving_slots;

    #[test]
    fn cluster_nodes_yield_the_masters_that_serve_slots() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002,node-b master - 0 1 2 connected 5461-10922 [10923->-c3]
c3 127.0.0.1:7003@17003 master - 0 1 3 connected 10923-16383
d4 127.0.0.1:7004@17004 slave a1 0 1 1 connected
e5 127.0.0.1:7005@17005 master,fail - 0 1 5 disconnected 100
f6 127.0.0.1:7006@17006 master - 0 1 6 connected
";
        assert_eq!(
            masters_serving_slots(text),
            Some(vec![
                ("127.0.0.1", 7001),
                ("127.0.0.1", 7002),
                ("127.0.0.1", 7003)
            ])
        );
        assert_eq!(
            masters_serving_slots("x :0@0 master - 0 0 1 connected 1"),
            None
        );
        assert_eq!(masters_serving_slots("garbage"), None);
    }
}

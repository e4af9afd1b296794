//! `[store]`: where sessions live (Redis in one of its topologies, or memory).

use super::Problems;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    kind: Option<String>,
    url: Option<String>,
    nodes: Vec<String>,
    sentinels: Vec<String>,
    master_name: Option<String>,
    tls_ca_file: Option<String>,
    key_prefix: Option<String>,
    #[serde(with = "humantime_serde")]
    timeout: Option<Duration>,
    lock_replicas: Option<u32>,
}

/// How Redis is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a proxy in front of several): `redis://` or `rediss://`.
    Single(String),
    /// Redis Cluster seed nodes.
    Cluster(Vec<String>),
    /// Sentinels and the monitored master's name.
    Sentinel {
        /// Sentinel addresses.
        sentinels: Vec<String>,
        /// The master group name.
        master: String,
    },
}

/// Which store holds sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// Redis: one server, a Cluster or Sentinel-monitored master.
    Redis(Topology),
    /// In-process memory: one instance only (demo, tests).
    Memory,
}

/// `[store]`, validated.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Session store.
    pub kind: StoreKind,
    /// Prefix of every store key.
    pub key_prefix: String,
    /// PEM CA certificate(s) trusted for `rediss://` (None: the system roots).
    pub tls_ca: Option<Vec<u8>>,
    /// Bound on one store operation.
    pub timeout: Duration,
    /// Replicas that must acknowledge the refresh lock and the refresh write (`WAIT`).
    pub lock_replicas: u32,
}

fn redis_url(key: &str, u: &str, errs: &mut Problems) {
    if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
        errs.push(format!(
            "{key}: `{u}` must start with redis:// or rediss://"
        ));
    }
}

impl StoreConfig {
    /// `listeners`: the public and admin addresses (the memory store is for loopback only).
    pub(super) fn build(raw: RawStore, listeners: [SocketAddr; 2], errs: &mut Problems) -> Self {
        let kind = match raw.kind.as_deref().unwrap_or("redis") {
            "memory" => {
                // One process's memory: wrong as soon as there are two replicas, and lost on
                // every restart. Only the demo, or a process nobody else can reach, may use it.
                // (`cloakroom-demo` binds loopback only, so it always passes.)
                if !listeners.iter().all(|a| a.ip().is_loopback()) {
                    errs.push(
                        "store.kind: \"memory\" is for the demo and single-process development \
                         only (every listener on loopback); use \"redis\""
                            .into(),
                    );
                }
                StoreKind::Memory
            }
            "redis" => {
                let url = raw
                    .url
                    .clone()
                    .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
                redis_url("store.url", &url, errs);
                StoreKind::Redis(Topology::Single(url))
            }
            "cluster" => {
                if raw.nodes.is_empty() {
                    errs.push("store.nodes: a cluster needs at least one seed node URL".into());
                }
                for n in &raw.nodes {
                    redis_url("store.nodes", n, errs);
                }
                StoreKind::Redis(Topology::Cluster(raw.nodes.clone()))
            }
            "sentinel" => {
                if raw.sentinels.is_empty() {
                    errs.push("store.sentinels: at least one sentinel URL is required".into());
                }
                for n in &raw.sentinels {
                    redis_url("store.sentinels", n, errs);
                }
                let master = raw.master_name.clone().unwrap_or_default();
                if master.is_empty() {
                    errs.push("store.master_name: required with kind = \"sentinel\"".into());
                }
                StoreKind::Redis(Topology::Sentinel {
                    sentinels: raw.sentinels.clone(),
                    master,
                })
            }
            o => {
                errs.push(format!(
                    "store.kind: `{o}` must be redis, cluster, sentinel or memory"
                ));
                StoreKind::Memory
            }
        };
        let tls_ca = match raw.tls_ca_file.as_deref() {
            None => None,
            Some(path) => match std::fs::read(path) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    errs.push(format!("store.tls_ca_file: cannot read {path}: {e}"));
                    None
                }
            },
        };
        let key_prefix = raw.key_prefix.unwrap_or_else(|| "cloakroom".into());
        if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
            errs.push("store.key_prefix: must be non-empty, without braces or spaces".into());
        }
        let lock_replicas = raw.lock_replicas.unwrap_or(0);
        if lock_replicas > 16 {
            errs.push("store.lock_replicas: at most 16".into());
        }
        if lock_replicas > 0 && matches!(&kind, StoreKind::Redis(Topology::Cluster(_))) {
            errs.push(
                "store.lock_replicas: not supported with kind = \"cluster\" (a keyless WAIT cannot \
                 be routed to the lock's master); leave it 0"
                    .into(),
            );
        }
        Self {
            kind,
            key_prefix,
            tls_ca,
            timeout: raw.timeout.unwrap_or(Duration::from_secs(2)),
            lock_replicas,
        }
    }
}

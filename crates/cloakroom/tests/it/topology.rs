//! Redis topologies (issue #5): Redis Cluster and Sentinel failover, with real redis-server
//! processes started by the test.

use crate::session_cache::{refused_within, served_from_the_cache};
use crate::support::browser::Browser;
use crate::support::redis::RedisServer;
use crate::support::{Opts, TestEnv};
use reqwest::Method;
use std::time::{Duration, Instant};

/// A 3-master Redis Cluster of local redis-server processes.
struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        // Each node's cluster-config-file lives in its own --dir.
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-cli is needed for the cluster test ({e}): apt-get install redis-tools"
                )
            });
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    fn store_toml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
            .collect();
        format!("kind = \"cluster\"\nnodes = [{}]", urls.join(", "))
    }

    /// Calls of `command` all the nodes served.
    fn calls(&self, command: &str) -> u64 {
        self.nodes.iter().map(|n| n.calls(command)).sum()
    }

    /// A node's cluster id.
    fn id(node: &RedisServer) -> String {
        node.values(&["CLUSTER", "MYID"]).concat()
    }

    /// Adds an empty master (no slots yet) and waits until every node knows it.
    fn add_master(&mut self) -> usize {
        let node = RedisServer::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
        ]);
        let meet = self.nodes[0].cli(&["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string()]);
        assert!(meet.starts_with("OK"), "CLUSTER MEET: {meet}");
        self.nodes.push(node);
        let ids: Vec<String> = self.nodes.iter().map(Self::id).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Every node knows every other, connected, past the handshake.
        while !self.nodes.iter().all(|n| {
            let view = n.values(&["CLUSTER", "NODES"]);
            ids.iter().all(|id| {
                view.iter().any(|l| {
                    l.starts_with(id.as_str())
                        && l.contains(" connected")
                        && !l.contains("handshake")
                        && !l.contains("noaddr")
                })
            }) && n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
        }) {
            assert!(Instant::now() < deadline, "the new node never joined");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.nodes.len() - 1
    }

    /// Moves `slot`, keys and all, to node `to` (the manual resharding steps of the Redis
    /// Cluster specification), and waits until every node agrees.
    fn move_slot(&self, slot: u16, to: usize) {
        let slot = slot.to_string();
        let owner = |n: &RedisServer| -> String {
            n.cli(&["CLUSTER", "NODES"])
                .lines()
                .find(|l| {
                    l.split_whitespace().skip(8).any(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        matches!((a.parse::<u16>(), b.parse::<u16>(), slot.parse::<u16>()),
                            (Ok(a), Ok(b), Ok(s)) if a <= s && s <= b)
                    })
                })
                .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        let from_id = owner(&self.nodes[0]);
        let from = self
            .nodes
            .iter()
            .find(|n| Self::id(n) == from_id)
            .expect("the slot's owner");
        let dst = &self.nodes[to];
        let dst_id = Self::id(dst);
        assert_ne!(from_id, dst_id, "the slot is already there");
        let ok = |r: String| assert!(r.starts_with("OK"), "{r}");
        ok(dst.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]));
        ok(from.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]));
        let keys = from.values(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
        if !keys.is_empty() {
            let port = dst.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            ok(from.cli(&args));
        }
        for n in &self.nodes {
            ok(n.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.nodes.iter().all(|n| owner(n) == dst_id) {
            assert!(
                Instant::now() < deadline,
                "the nodes never agreed on the slot"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.cli(&["KEYS", "cloakroom:*"])
                    .lines()
                    .filter(|l| l.starts_with("cloakroom:"))
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_refresh_and_logout_on_redis_cluster() {
    let cluster = Cluster::start();
    let env = TestEnv::start_with(Opts {
        instances: 2,
        access_token_ttl: 3,
        refresh_skew: "1s",
        store_toml: Some(cluster.store_toml()),
        ..Opts::default()
    })
    .await;
    // The conformance suite on the cluster too.
    let store = cloakroom::session::redis::RedisStore::connect_to(
        &cloakroom::session::redis::Topology::Cluster(
            cluster
                .nodes
                .iter()
                .map(|n| format!("redis://127.0.0.1:{}", n.port))
                .collect(),
        ),
        None,
        "conformance",
        Duration::from_secs(2),
    )
    .await
    .expect("cluster store");
    cloakroom::session::conformance::run(cloakroom::session::Store::Redis(store)).await;

    let mut b = Browser::new();
    env.login(&mut b).await;
    let keys = cluster.keys();
    let nodes_with_keys = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["KEYS", "cloakroom:*"]).contains("cloakroom:"))
        .count();
    assert!(
        keys.iter().any(|k| k.starts_with("cloakroom:s:")),
        "{keys:?}"
    );
    assert!(nodes_with_keys >= 1);
    // Calls through both instances, a storm over an expired token refreshes once.
    assert_eq!(
        b.xhr(Method::GET, &format!("{}/api/x", env.base(1)))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let before = env.idp.stats().await["token_requests"]["refresh_token"]
        .as_u64()
        .unwrap();
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let client = reqwest::Client::new();
    let calls = (0..20).map(|i| {
        client
            .get(format!("{}/api/c{i}", env.base(i % 2)))
            .header("x-csrf", "1")
            .header("cookie", &cookie)
            .send()
    });
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let after = env.idp.stats().await["token_requests"]["refresh_token"]
        .as_u64()
        .unwrap();
    assert_eq!(after - before, 1);
    // Logout on the cluster removes the session and its index entries.
    assert_eq!(
        b.xhr(Method::POST, &env.url("/auth/logout")).await.status,
        200
    );
    let left: Vec<String> = cluster
        .keys()
        .into_iter()
        .filter(|k| {
            k.starts_with("cloakroom:s:")
                || k.starts_with("cloakroom:u:")
                || k.starts_with("cloakroom:sid:")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        b.xhr(Method::GET, &format!("{}/api/x", env.base(1)))
            .await
            .status,
        401
    );
}

/// Logs in through instance 0, waits until it serves the session from its cache, logs out
/// through instance 1, and checks that a copy of the cookie stops working on instance 0
/// within a second.
async fn logout_elsewhere_ends_the_cached_session(
    env: &TestEnv,
    reads: impl Fn() -> u64,
    between: impl std::future::Future<Output = ()>,
) {
    let a = format!("{}/api/x", env.base(0));
    let mut b = Browser::new();
    env.login_as(&mut b, 0, "alice", "wonderland").await;
    served_from_the_cache(&mut b, &a, Duration::from_secs(20), &reads).await;
    between.await;
    served_from_the_cache(&mut b, &a, Duration::from_secs(20), &reads).await;
    let cookie = b.jar["__Host-cloakroom"].clone();
    assert_eq!(
        b.xhr(Method::POST, &format!("{}/auth/logout", env.base(1)))
            .await
            .status,
        200
    );
    let ended = Instant::now();
    b.jar.insert("__Host-cloakroom".into(), cookie);
    refused_within(&mut b, &a, ended, Duration::from_secs(1)).await;
}

/// Waits (at most 5 s) until `n` connections to `server` subscribe to the invalidation channel.
async fn subscribed_on(server: &RedisServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let numsub = server.values(&["PUBSUB", "NUMSUB", "cloakroom:invalidate"]);
        if numsub.get(1).and_then(|c| c.parse::<usize>().ok()) >= Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} subscriptions on {}: {numsub:?}",
            server.port
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cache_stays_exact_on_a_cluster_across_a_reshard() {
    let mut cluster = Cluster::start();
    let env = TestEnv::start_with(Opts {
        instances: 2,
        store_toml: Some(cluster.store_toml()),
        ..Opts::default()
    })
    .await;
    // Steady state: cached on A, a logout through B ends it on A within a second.
    let nodes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reads = || {
        let ports: Vec<u16> = nodes.lock().unwrap().clone();
        ports
            .iter()
            .map(|p| crate::support::redis::calls_at(*p, "hmget"))
            .sum::<u64>()
    };
    *nodes.lock().unwrap() = cluster.nodes.iter().map(|n| n.port).collect();
    logout_elsewhere_ends_the_cached_session(&env, &reads, async {}).await;

    // A master joins and takes the session's slot, keys and all: the logout is then
    // published on a server that did not exist when A subscribed.
    let fourth = cluster.add_master();
    *nodes.lock().unwrap() = cluster.nodes.iter().map(|n| n.port).collect();
    let cluster = &cluster;
    logout_elsewhere_ends_the_cached_session(&env, &reads, async {
        let session = cluster
            .keys()
            .into_iter()
            .find(|k| k.starts_with("cloakroom:s:"))
            .expect("the session's key");
        let slot: u16 = cluster.nodes[0]
            .values(&["CLUSTER", "KEYSLOT", &session])
            .concat()
            .parse()
            .expect("a slot");
        cluster.move_slot(slot, fourth);
        let moved =
            cluster.nodes[fourth].values(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
        assert_ne!(moved.concat(), "0", "the session moved with its slot");
        // Each instance now hears the new master on a subscription of its own.
        subscribed_on(&cluster.nodes[fourth], 2).await;
    })
    .await;
    assert!(cluster.calls("publish") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cache_stays_exact_on_sentinel_across_a_failover() {
    let set = Sentinels::start().await;
    let env = TestEnv::start_with(Opts {
        instances: 2,
        store_toml: Some(format!(
            "kind = \"sentinel\"\nsentinels = [{}]\nmaster_name = \"mymaster\"\ntimeout = \"1s\"",
            set.sentinels.urls().join(", ")
        )),
        ..Opts::default()
    })
    .await;
    let reads = || set.master.calls("hmget") + set.replica.calls("hmget");
    logout_elsewhere_ends_the_cached_session(&env, reads, async {}).await;
    // The master moves; the logout is then published on the new one, where each instance
    // now has a subscription of its own.
    logout_elsewhere_ends_the_cached_session(&env, reads, async {
        // The session must have reached the replica before it is promoted. (`WAIT` from
        // redis-cli proves nothing: it waits for that connection's own writes, none.) The
        // replica's applied offset must reach the master's current one.
        let field = |info: &str, name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let target = field(
            &set.master.cli(&["INFO", "replication"]),
            "master_repl_offset:",
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = set.replica.cli(&["INFO", "replication"]);
            if field(&info, "slave_repl_offset:") >= target {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replica never caught up with offset {target}: {info}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        set.failover().await;
        subscribed_on(&set.replica, 2).await;
    })
    .await;
}

/// A master, its replica and three sentinels watching them as `mymaster`.
struct Sentinels {
    master: RedisServer,
    replica: RedisServer,
    sentinels: SentinelProcs,
}

struct SentinelProcs(Vec<RedisServer>);

impl SentinelProcs {
    /// The sentinels as a TOML array's items.
    fn urls(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
            .collect()
    }
}

impl Sentinels {
    async fn start() -> Self {
        let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica never synced");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sentinels = SentinelProcs((0..3).map(|_| RedisServer::sentinel(master.port)).collect());
        // Wait until the sentinels know the replica.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sentinels.0[0]
            .cli(&["SENTINEL", "REPLICAS", "mymaster"])
            .contains(&replica.port.to_string())
        {
            assert!(Instant::now() < deadline, "sentinel never saw the replica");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Self {
            master,
            replica,
            sentinels,
        }
    }

    /// Fails the master over to the replica and waits until the replica is master.
    async fn failover(&self) {
        let answer = self.sentinels.0[0].cli(&["SENTINEL", "FAILOVER", "mymaster"]);
        assert!(answer.starts_with("OK"), "failover: {answer}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .replica
            .cli(&["INFO", "replication"])
            .contains("role:master")
        {
            assert!(Instant::now() < deadline, "the replica was never promoted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_during_traffic_is_survived() {
    let Sentinels {
        master,
        replica,
        sentinels,
    } = Sentinels::start().await;
    let urls = sentinels.urls();
    let env = TestEnv::start_with(Opts {
        store_toml: Some(format!(
            "kind = \"sentinel\"\nsentinels = [{}]\nmaster_name = \"mymaster\"\ntimeout = \"1s\"\nlock_replicas = 1",
            urls.join(", ")
        )),
        access_token_ttl: 60,
        refresh_skew: "10s",
        ..Opts::default()
    })
    .await;
    let mut b = Browser::new();
    env.login(&mut b).await;
    assert_eq!(b.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    // Make sure the session reached the replica before the failover.
    master.cli(&["WAIT", "1", "2000"]);

    // Traffic in the background while the master moves.
    let cookie = format!("__Host-cloakroom={}", b.jar["__Host-cloakroom"]);
    let url = env.url("/api/traffic");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let s = client
                    .get(&url)
                    .header("x-csrf", "1")
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(s);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = sentinels.0[0].cli(&["SENTINEL", "FAILOVER", "mymaster"]);
    assert!(answer.starts_with("OK"), "failover: {answer}");
    // Wait for the replica to be promoted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replica
        .cli(&["INFO", "replication"])
        .contains("role:master")
    {
        assert!(Instant::now() < deadline, "the replica was never promoted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Requests recover within seconds, with the session written before the failover.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = b.xhr(Method::GET, &env.url("/api/x")).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Writes work too: once the old master is demoted, a new login lands on the new master.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !master.cli(&["INFO", "replication"]).contains("role:slave") {
        assert!(
            Instant::now() < deadline,
            "the old master was never demoted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = Browser::new();
    env.login(&mut c).await;
    assert_eq!(c.xhr(Method::GET, &env.url("/api/x")).await.status, 200);
    let on_new_master = replica.cli(&["KEYS", "cloakroom:s:*"]);
    assert!(
        on_new_master.matches("cloakroom:s:").count() >= 2,
        "new master: {on_new_master:?}; old master: {:?}; role of old: {:?}",
        master.cli(&["KEYS", "cloakroom:s:*"]),
        master.cli(&["ROLE"])
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = traffic.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "only 200s and 503s: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");

    // A refresh on the new master: with store.lock_replicas = 1 its lock and its write are
    // WAITed for on the replica (the demoted old master) before it goes on.
    env.advance(Duration::from_secs(61));
    let r = c.xhr(Method::GET, &env.url("/api/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.idp.stat(&["token_requests", "refresh_token"]).await, 1);
    let waits = replica.calls("wait");
    assert!(
        waits >= 2,
        "WAIT after the lock and after the write: {}",
        replica.cli(&["INFO", "commandstats"])
    );
    assert_eq!(env.idp.stat(&["grants_revoked"]).await, 0);
}

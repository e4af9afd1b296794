//! Redis topologies (issue #5): Redis Cluster and Sentinel failover, with real redis-server
//! processes started by the test.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_during_traffic_is_survived() {
    let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sentinels: Vec<RedisServer> = (0..3).map(|_| RedisServer::sentinel(master.port)).collect();
    // Wait until the sentinels know the replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sentinels[0]
        .cli(&["SENTINEL", "REPLICAS", "mymaster"])
        .contains(&replica.port.to_string())
    {
        assert!(Instant::now() < deadline, "sentinel never saw the replica");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let urls: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
        .collect();
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
    let answer = sentinels[0].cli(&["SENTINEL", "FAILOVER", "mymaster"]);
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
    let stats = replica.cli(&["INFO", "commandstats"]);
    let waits: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        waits >= 2,
        "WAIT after the lock and after the write: {stats}"
    );
    assert_eq!(env.idp.stat(&["grants_revoked"]).await, 0);
}

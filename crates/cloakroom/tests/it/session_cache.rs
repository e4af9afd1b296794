//! The in-process session cache (src/session/cache.rs): a busy session costs no Redis round trip,
//! and a logout through another instance still ends it on this one within a second, also when
//! the invalidation subscription was cut just before.

use crate::support::browser::Browser;
use crate::support::redis::RedisServer;
use crate::support::{Opts, TestEnv};
use reqwest::Method;
use std::time::{Duration, Instant};

fn calls(redis: &RedisServer, command: &str) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Polls `url` until it answers 401; panics if it still answers 200 a second after `since`.
async fn refused_within_a_second(b: &mut Browser, url: &str, since: Instant) -> Duration {
    loop {
        let status = b.xhr(Method::GET, url).await.status;
        if status == 401 {
            return since.elapsed();
        }
        assert_eq!(status, 200, "{url}");
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "the session still works here a second after the logout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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
        let before = calls(&env.redis, "hmget");
        for _ in 0..20 {
            assert_eq!(b.xhr(Method::GET, &a).await.status, 200);
        }
        let read = calls(&env.redis, "hmget") - before;
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
        refused_within_a_second(&mut b, &a, ended).await;
    }
}

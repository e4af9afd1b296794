//! The store conformance suite against a real redis-server.

use crate::support::redis::RedisServer;
use cloakroom::session::{conformance, redis::RedisStore, Store};
use std::time::Duration;

#[tokio::test]
async fn redis_store_conforms() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url(), "cloakroom", Duration::from_secs(2))
        .await
        .expect("connect");
    conformance::run(Store::Redis(store)).await;
}

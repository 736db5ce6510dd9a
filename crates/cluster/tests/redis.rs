//! The conformance suites against a real Redis (`CHAT_TEST_REDIS_URL`,
//! set by scripts/test.sh). Each test uses its own key prefix.

mod conformance;

use std::time::Duration;

use chat_cluster::bus::RedisBus;
use chat_cluster::registry::RedisRegistry;

fn url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").expect(
        "CHAT_TEST_REDIS_URL is not set: run the tests with scripts/test.sh, which starts Redis",
    )
}

fn prefix() -> String {
    format!("test:{:016x}:", rand::random::<u64>())
}

#[tokio::test]
async fn registry_adds_locates_and_removes() {
    let r = RedisRegistry::connect(&url(), &prefix(), Duration::from_secs(15))
        .await
        .unwrap();
    conformance::registry_adds_locates_and_removes(&r).await;
}

#[tokio::test]
async fn registry_entries_expire_unless_refreshed() {
    let ttl = Duration::from_millis(800);
    let r = RedisRegistry::connect(&url(), &prefix(), ttl)
        .await
        .unwrap();
    conformance::registry_entries_expire_unless_refreshed(&r, ttl).await;
}

#[tokio::test]
async fn bus_delivers_to_the_named_inbox_in_order() {
    let bus = RedisBus::connect(&url(), &prefix()).await.unwrap();
    conformance::bus_delivers_to_the_named_inbox_in_order(&bus, "n1", "n2").await;
}

#[tokio::test]
async fn bus_publish_to_an_absent_node_returns() {
    let bus = RedisBus::connect(&url(), &prefix()).await.unwrap();
    assert!(conformance::bus_publish_to_an_absent_node_returns(&bus, "nobody").await);
}

#[tokio::test]
async fn unreachable_redis_is_reported_as_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("redis://{closed}/");
    let err = match RedisRegistry::connect(&url, "x:", Duration::from_secs(1)).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            chat_cluster::ClusterError::Unavailable {
                backend: "redis",
                ..
            }
        ),
        "{err}"
    );
}

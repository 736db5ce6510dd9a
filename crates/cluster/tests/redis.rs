//! The conformance suites against a real Redis (`CHAT_TEST_REDIS_URL`,
//! set by scripts/test.sh). Each test uses its own key prefix.

mod conformance;

use std::time::Duration;

use chat_cluster::bus::RedisBus;
use chat_cluster::registry::RedisRegistry;
use chat_cluster::{SessionEntry, SessionRegistry};

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
async fn registry_lists_sessions() {
    let r = RedisRegistry::connect(&url(), &prefix(), Duration::from_secs(15))
        .await
        .unwrap();
    conformance::registry_lists_sessions(&r).await;
}

/// More sessions than one `SCAN` call covers, among other prefixes' keys:
/// every one is listed, once, and the limit holds.
#[tokio::test]
async fn registry_lists_sessions_across_many_scan_pages() {
    let (mine, other) = (prefix(), prefix());
    let r = RedisRegistry::connect(&url(), &mine, Duration::from_secs(15))
        .await
        .unwrap();
    let neighbour = RedisRegistry::connect(&url(), &other, Duration::from_secs(15))
        .await
        .unwrap();
    let entries: Vec<SessionEntry> = (0..1500u64)
        .map(|i| SessionEntry {
            username: format!("user{i:04}"),
            node: format!("n{}", i % 3),
            session: i,
        })
        .collect();
    r.refresh(&entries).await.unwrap();
    neighbour.refresh(&entries[..100]).await.unwrap();
    assert_eq!(r.list_sessions(None, 10_000).await.unwrap(), entries);
    let n1: Vec<SessionEntry> = entries.iter().filter(|e| e.node == "n1").cloned().collect();
    assert_eq!(r.list_sessions(Some("n1"), 10_000).await.unwrap(), n1);
    let some = r.list_sessions(None, 700).await.unwrap();
    assert_eq!(some.len(), 700);
    assert!(some.windows(2).all(|w| w[0] < w[1]));
    assert!(some.iter().all(|e| entries.contains(e)));
    assert_eq!(
        neighbour.list_sessions(None, 10_000).await.unwrap(),
        entries[..100]
    );
}

#[tokio::test]
async fn registry_lists_live_nodes() {
    let ttl = Duration::from_millis(800);
    let r = RedisRegistry::connect(&url(), &prefix(), ttl)
        .await
        .unwrap();
    conformance::registry_lists_live_nodes(&r, ttl).await;
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

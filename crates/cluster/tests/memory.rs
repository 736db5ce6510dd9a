//! The conformance suites against the in-process registry and bus.

mod conformance;

use std::time::Duration;

use chat_cluster::bus::MemoryBus;
use chat_cluster::registry::MemoryRegistry;

#[tokio::test]
async fn registry_adds_locates_and_removes() {
    conformance::registry_adds_locates_and_removes(&MemoryRegistry::new(Duration::from_secs(15)))
        .await;
}

#[tokio::test]
async fn registry_entries_expire_unless_refreshed() {
    let ttl = Duration::from_millis(400);
    conformance::registry_entries_expire_unless_refreshed(&MemoryRegistry::new(ttl), ttl).await;
}

#[tokio::test]
async fn registry_lists_sessions() {
    conformance::registry_lists_sessions(&MemoryRegistry::new(Duration::from_secs(15))).await;
}

#[tokio::test]
async fn registry_lists_live_nodes() {
    let ttl = Duration::from_millis(400);
    conformance::registry_lists_live_nodes(&MemoryRegistry::new(ttl), ttl).await;
}

#[tokio::test]
async fn bus_delivers_to_the_named_inbox_in_order() {
    conformance::bus_delivers_to_the_named_inbox_in_order(&MemoryBus::default(), "n1", "n2").await;
}

#[tokio::test]
async fn bus_publish_to_an_absent_node_returns() {
    assert!(
        conformance::bus_publish_to_an_absent_node_returns(&MemoryBus::default(), "nobody").await
    );
}

//! The bus conformance suite against a real Kafka-protocol broker
//! (`CHAT_TEST_KAFKA_BROKERS`, set by scripts/test.sh).

mod conformance;

use chat_cluster::bus::{KafkaBus, KafkaConfig};

fn bus() -> KafkaBus {
    let brokers = std::env::var("CHAT_TEST_KAFKA_BROKERS").expect(
        "CHAT_TEST_KAFKA_BROKERS is not set: run the tests with scripts/test.sh, which starts a broker",
    );
    let mut config = KafkaConfig::new(brokers);
    // Each test has its own topics; the stand-in broker does not wake
    // waiting fetches, so poll often.
    config.topic_prefix = format!("test-{:016x}-", rand::random::<u64>());
    config.fetch_wait_ms = 5;
    KafkaBus::connect(config).unwrap()
}

#[tokio::test]
async fn bus_delivers_to_the_named_inbox_in_order() {
    conformance::bus_delivers_to_the_named_inbox_in_order(&bus(), "n1", "n2").await;
}

#[tokio::test]
async fn bus_publish_to_an_absent_node_returns() {
    // The topic does not exist: the publish fails within its timeout.
    assert!(!conformance::bus_publish_to_an_absent_node_returns(&bus(), "nobody").await);
}

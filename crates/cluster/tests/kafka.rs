//! The bus conformance suite against a real Apache Kafka broker
//! (`CHAT_TEST_KAFKA_BROKERS`, set by scripts/test.sh).

mod conformance;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_cluster::bus::{Bus, KafkaBus, KafkaConfig, INBOX_RETENTION};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn bus() -> KafkaBus {
    let brokers = std::env::var("CHAT_TEST_KAFKA_BROKERS").expect(
        "CHAT_TEST_KAFKA_BROKERS is not set: run the tests with scripts/test.sh, which starts a broker",
    );
    let mut config = KafkaConfig::new(brokers);
    // Each test has its own topics.
    config.topic_prefix = format!("test-{:016x}-", rand::random::<u64>());
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

/// The names of the broker's topics (a metadata request for every topic,
/// which never creates one).
fn topics(brokers: &str) -> Vec<String> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect()
}

/// An inbox topic is created with a short retention (what a node that
/// crashed leaves holds little), and goes when its node retires after
/// dropping its inbox; publishing to the retired node refuses the record
/// and does not bring the topic back (Apache Kafka would create it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_topic_is_bounded_and_goes_with_its_node() {
    let bus = bus();
    let brokers = std::env::var("CHAT_TEST_KAFKA_BROKERS").unwrap();
    let node = "leaving";
    let inbox = bus.subscribe(node).await.unwrap();
    let topic = format!("{}{node}", bus.config().topic_prefix);

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(&topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    let setting = |name: &str| {
        resource
            .get(name)
            .and_then(|entry| entry.value.clone())
            .unwrap_or_else(|| panic!("{topic} has no {name}"))
    };
    assert_eq!(
        setting("retention.ms"),
        INBOX_RETENTION.as_millis().to_string()
    );
    assert!(setting("segment.ms").parse::<u128>().unwrap() < INBOX_RETENTION.as_millis());
    assert!(topics(&brokers).contains(&topic));

    drop(inbox);
    bus.retire(node).await.unwrap();
    // The broker learns of the deletion from its controller a moment
    // after the deletion is answered.
    let started = Instant::now();
    while topics(&brokers).contains(&topic) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{topic} is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bus
        .publish(node, Bytes::from_static(b"to a node that left"))
        .await
        .is_err());
    assert!(
        !topics(&brokers).contains(&topic),
        "the publish created {topic}"
    );
    // Retiring again (a second clean stop) is no error.
    bus.retire(node).await.unwrap();
}

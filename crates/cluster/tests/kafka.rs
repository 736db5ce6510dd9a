//! The bus conformance suite against a real Apache Kafka broker
//! (`CHAT_TEST_KAFKA_BROKERS`, set by scripts/test.sh).

mod conformance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_cluster::bus::{Bus, KafkaBus, KafkaConfig, INBOX_RETENTION, PUBLISH_QUEUE_MAX};
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

/// While no broker answers, at most `PUBLISH_QUEUE_MAX` records wait in
/// the producer: the next publish is refused at once, saying why, instead
/// of waiting for room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_publish_queue_refuses_at_once() {
    // Nothing listens on port 1.
    let bus = Arc::new(KafkaBus::connect(KafkaConfig::new("127.0.0.1:1")).unwrap());
    let mut waiting = tokio::task::JoinSet::new();
    for i in 0..PUBLISH_QUEUE_MAX {
        let bus = bus.clone();
        waiting.spawn(async move { bus.publish("n1", Bytes::from(i.to_string())).await });
    }
    // Once those tasks have run, their records fill the queue. A publish
    // that still finds room waits for the broker (cut short here: its
    // record stays queued); one refused for want of room returns at once.
    let deadline = Instant::now() + Duration::from_secs(1);
    let refused = loop {
        assert!(Instant::now() < deadline, "the publish queue never filled");
        let one_more = bus.publish("n1", Bytes::from_static(b"one too many"));
        if let Ok(result) = tokio::time::timeout(Duration::from_millis(50), one_more).await {
            break result.expect_err("a publish without a broker succeeded");
        }
    };
    assert!(
        refused.to_string().contains("publish queue full"),
        "{refused}"
    );
    while let Some(result) = waiting.join_next().await {
        assert!(
            result.unwrap().is_err(),
            "a publish without a broker succeeded"
        );
    }
}

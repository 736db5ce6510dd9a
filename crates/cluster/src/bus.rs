//! The bus between nodes: each node has an inbox; any node publishes
//! delivery records to the inboxes of the nodes that hold the recipients'
//! sessions.
//!
//! The bus is a speed-up, not a source of truth: a record it loses only
//! delays delivery until the recipient's next catch-up from the store.
//! Publishing is therefore at-most-once and never retried for long, and a
//! node starts reading its inbox from "now" (records sent to a node that was
//! down are of no use: its sessions are gone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::{check_node_id, ClusterError, Result};

/// The records arriving at one node. Ends when the bus shuts the inbox.
pub type Inbox = mpsc::Receiver<Bytes>;

/// How many records may wait in an inbox before the oldest are dropped
/// (counted): a node that cannot keep up must not buffer without limit.
pub const INBOX_CAPACITY: usize = 16 * 1024;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hands `payload` to the bus for `node`'s inbox. `Ok` means the bus
    /// took it, not that anyone read it.
    async fn publish(&self, node: &str, payload: Bytes) -> Result<()>;
    /// Starts reading `node`'s inbox: records published from now on. The
    /// reading stops when the returned [`Inbox`] is dropped.
    async fn subscribe(&self, node: &str) -> Result<Inbox>;
}

/// Forwards a record into an inbox without waiting; `false` when the
/// inbox is gone (the reader stopped).
fn forward(inbox: &mpsc::Sender<Bytes>, backend: &'static str, payload: Bytes) -> bool {
    match inbox.try_send(payload) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                backend,
                "inbox full: a delivery record was dropped (catch-up will cover it)"
            );
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

// --------------------------------------------------------------- memory

/// The bus of one process: several nodes in one process (tests) or a
/// single node, which never publishes to itself.
#[derive(Default, Clone)]
pub struct MemoryBus {
    inboxes: Arc<Mutex<HashMap<String, mpsc::Sender<Bytes>>>>,
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, node: &str, payload: Bytes) -> Result<()> {
        let mut inboxes = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(inbox) = inboxes.get(node) {
            if !forward(inbox, "memory", payload) {
                inboxes.remove(node);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, node: &str) -> Result<Inbox> {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        self.inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_owned(), tx);
        Ok(rx)
    }
}

// ---------------------------------------------------------------- redis

/// Redis pub/sub: each node's inbox is the channel `<prefix>inbox:<node>`.
/// Pub/sub keeps nothing: a record published while its node is not
/// listening is gone, which is what this bus wants.
pub struct RedisBus {
    client: redis::Client,
    publisher: redis::aio::ConnectionManager,
    prefix: String,
}

impl RedisBus {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| ClusterError::Config(format!("redis url: {e}")))?;
        let publisher = crate::registry::connect_manager(client.clone()).await?;
        Ok(Self {
            client,
            publisher,
            prefix: prefix.to_owned(),
        })
    }

    fn channel(&self, node: &str) -> String {
        format!("{}inbox:{node}", self.prefix)
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, node: &str, payload: Bytes) -> Result<()> {
        let mut redis = self.publisher.clone();
        redis::cmd("PUBLISH")
            .arg(self.channel(node))
            .arg(payload.as_ref())
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    async fn subscribe(&self, node: &str) -> Result<Inbox> {
        check_node_id(node)?;
        let channel = self.channel(node);
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        // Subscribe once now, so that a failure is reported to the caller
        // and records published after this returns are received.
        let first = subscribe_redis(&self.client, &channel).await?;
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut pubsub = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut current = match pubsub.take() {
                    Some(p) => p,
                    None => match subscribe_redis(&client, &channel).await {
                        Ok(p) => {
                            tracing::info!(%channel, "redis inbox resubscribed");
                            backoff = Duration::from_millis(100);
                            p
                        }
                        Err(e) => {
                            tracing::warn!(%channel, error = %e, "redis inbox: cannot subscribe, retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = tx.closed() => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    },
                };
                let mut messages = current.on_message();
                loop {
                    tokio::select! {
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                            if !forward(&tx, "redis", payload) {
                                return;
                            }
                        }
                        _ = tx.closed() => return,
                    }
                }
                tracing::warn!(%channel, "redis inbox connection lost; resubscribing");
            }
        });
        Ok(rx)
    }
}

async fn subscribe_redis(client: &redis::Client, channel: &str) -> Result<redis::aio::PubSub> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Unavailable {
            backend: "redis",
            detail: "subscribe timed out".into(),
        }),
    }
}

// ---------------------------------------------------------------- kafka

/// Settings of the Kafka bus.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port,host:port`.
    pub brokers: String,
    /// Inbox topics are `<topic_prefix><node>`. Default: `chat-inbox-`.
    pub topic_prefix: String,
    /// Producer `linger.ms`: how long a record may wait to be batched.
    /// Default: 1.
    pub linger_ms: u64,
    /// Consumer `fetch.wait.max.ms`: how long the broker may hold a fetch
    /// that has no data. Apache Kafka answers as soon as data arrives, so a
    /// large value costs nothing there; brokers that do not wake waiting
    /// fetches need a small one. Default: 100.
    pub fetch_wait_ms: u64,
    /// How long a publish may wait for the broker. Default: 2 s.
    pub publish_timeout: Duration,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: "chat-inbox-".into(),
            linger_ms: 1,
            fetch_wait_ms: 100,
            publish_timeout: Duration::from_secs(2),
        }
    }
}

/// Kafka: one topic with one partition per node, created by the node when
/// it starts. A node reads its own partition by assignment (no consumer
/// group, no offset commits), from the end.
pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer,
}

impl KafkaBus {
    pub fn connect(config: KafkaConfig) -> Result<Self> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("linger.ms", config.linger_ms.to_string())
            .set(
                "message.timeout.ms",
                config.publish_timeout.as_millis().to_string(),
            )
            .set("acks", "1")
            .create()?;
        Ok(Self { config, producer })
    }

    fn topic(&self, node: &str) -> String {
        format!("{}{node}", self.config.topic_prefix)
    }

    async fn create_topic(&self, topic: &str) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .create()?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &options,
            )
            .await?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(ClusterError::Unavailable {
                        backend: "kafka",
                        detail: format!("cannot create topic {name}: {code}"),
                    })
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, node: &str, payload: Bytes) -> Result<()> {
        let topic = self.topic(node);
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&topic)
            .payload(payload.as_ref())
            .partition(0);
        self.producer
            .send(record, self.config.publish_timeout)
            .await
            .map_err(|(e, _)| ClusterError::from(e))?;
        Ok(())
    }

    async fn subscribe(&self, node: &str) -> Result<Inbox> {
        check_node_id(node)?;
        let topic = self.topic(node);
        self.create_topic(&topic).await?;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            // librdkafka wants a group id; no group is joined with assign().
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", self.config.fetch_wait_ms.to_string())
            .set("fetch.min.bytes", "1")
            .create()?;
        // Start at the current end, resolved now rather than on the first
        // fetch: a record published after this returns is never skipped.
        let (consumer, watermarks) = {
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || {
                let watermarks = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10));
                (consumer, watermarks)
            })
            .await
            .map_err(|e| ClusterError::Unavailable {
                backend: "kafka",
                detail: e.to_string(),
            })?
        };
        let (_, end) = watermarks?;
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition_offset(&topic, 0, Offset::Offset(end))?;
        consumer.assign(&partitions)?;
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    record = consumer.recv() => match record {
                        Ok(record) => {
                            let payload = Bytes::copy_from_slice(record.payload().unwrap_or_default());
                            if !forward(&tx, "kafka", payload) {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%topic, error = %e, "kafka inbox: consume error");
                        }
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}

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
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
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
    /// `Ok` when the bus answers now (and, once subscribed, knows this
    /// node's inbox), else why not: a readiness probe.
    async fn ping(&self) -> Result<()>;
    /// `node` leaves for good (a clean shutdown, after its [`Inbox`] was
    /// dropped): what the bus keeps for its inbox goes. Nothing by default:
    /// an inbox that keeps nothing once its reader is gone.
    async fn retire(&self, _node: &str) -> Result<()> {
        Ok(())
    }
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

    /// Always: the inboxes are in this process.
    async fn ping(&self) -> Result<()> {
        Ok(())
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

    /// A Redis `PING` on the publishing connection.
    async fn ping(&self) -> Result<()> {
        let mut redis = self.publisher.clone();
        redis::cmd("PING").query_async::<()>(&mut redis).await?;
        Ok(())
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
    /// that has no data. Apache Kafka answers a waiting fetch as soon as a
    /// record arrives (`fetch.min.bytes` is 1), so this bounds only how
    /// often an idle inbox asks again, not latency. Default: 500.
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
            fetch_wait_ms: 500,
            publish_timeout: Duration::from_secs(2),
        }
    }
}

/// How many records the producer holds for the broker before a publish is
/// refused ([`ClusterError::Unavailable`], "publish queue full") instead of
/// waiting: while the broker is away, records pile up only to this bound,
/// and the caller learns at once that this one will not be delivered live.
/// A record waits at most `publish_timeout` (2 s): at 2,000 records/s a
/// broker that stops answering leaves about 4,000 waiting, so only a burst
/// well beyond that is refused.
pub const PUBLISH_QUEUE_MAX: usize = 10_000;

/// How long an inbox topic keeps its records. A node reads its inbox from
/// its end when it starts, so a record is of use only for the moments it
/// takes to be read (or for a consumer that reconnects after a broker
/// outage); a short retention bounds what the topic of a node that crashed
/// and never came back holds.
pub const INBOX_RETENTION: Duration = Duration::from_secs(10 * 60);

/// How often an inbox topic starts a new segment: retention deletes whole
/// segments only, and Apache Kafka's default (7 days) would keep records
/// that long whatever `retention.ms` says.
const INBOX_SEGMENT: Duration = Duration::from_secs(60);

/// Kafka: one topic with one partition per node, created by the node when
/// it starts and deleted when it leaves cleanly ([`Bus::retire`]). A node
/// reads its own partition by assignment (no consumer group, no offset
/// commits), from the end.
pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer,
    /// The topic of the inbox this node reads, once subscribed: what
    /// [`Bus::ping`] asks the broker about.
    inbox: Mutex<Option<String>>,
    /// The task reading the inbox: [`Bus::retire`] waits for it to close
    /// its consumer before deleting the topic, because librdkafka's
    /// consumer does not survive its topic's deletion (see
    /// [`read_kafka_inbox`]).
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
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
            // A record counts as published once every in-sync replica has
            // it: with `acks=1` a leader that fails right after answering
            // loses it although the publish said `Ok`.
            .set("acks", "all")
            // librdkafka retries a produce request whose answer was lost
            // (within `message.timeout.ms`); the idempotent producer lets
            // the broker drop the retried copy, so a record never reaches
            // an inbox twice, and keeps the records of one inbox in order
            // across retries.
            .set("enable.idempotence", "true")
            // Publishing to a node's inbox must not create it: Apache Kafka
            // creates a missing topic on a producer's request by default,
            // which would bring back the topic of a node that left (and
            // keep it forever). Only the node creates its own inbox.
            .set("allow.auto.create.topics", "false")
            // See PUBLISH_QUEUE_MAX.
            .set(
                "queue.buffering.max.messages",
                PUBLISH_QUEUE_MAX.to_string(),
            )
            // Small records, sent at once (linger.ms): Nagle's algorithm
            // would hold a request back until the previous one is
            // acknowledged.
            .set("socket.nagle.disable", "true")
            // librdkafka backs off reconnecting up to 10 s by default:
            // after an outage the bus would stay down that long after the
            // broker is back.
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
            .create()?;
        Ok(Self {
            config,
            producer,
            inbox: Mutex::new(None),
            reader: Mutex::new(None),
        })
    }

    /// The settings it was made with.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn topic(&self, node: &str) -> String {
        format!("{}{node}", self.config.topic_prefix)
    }
}

fn admin_client(config: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()?)
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        // Without it a request to a broker that is down waits for
        // socket.timeout.ms (60 s).
        .request_timeout(Some(INBOX_OPEN_TIMEOUT))
}

/// Creates `topic` (one partition, see [`INBOX_RETENTION`]) unless it
/// exists.
async fn create_topic(config: &KafkaConfig, topic: &str) -> Result<()> {
    let retention = INBOX_RETENTION.as_millis().to_string();
    let segment = INBOX_SEGMENT.as_millis().to_string();
    let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
        .set("retention.ms", &retention)
        .set("segment.ms", &segment);
    let results = admin_client(config)?
        .create_topics(&[new_topic], &admin_options())
        .await?;
    topic_results(results, "create", RDKafkaErrorCode::TopicAlreadyExists)
}

/// Deletes `topic`; one that is already gone is no error.
async fn delete_topic(config: &KafkaConfig, topic: &str) -> Result<()> {
    let results = admin_client(config)?
        .delete_topics(&[topic], &admin_options())
        .await?;
    topic_results(results, "delete", RDKafkaErrorCode::UnknownTopicOrPartition)
}

/// The first failure among the answers to an admin request about topics
/// (`verb` them), where `done` means the topic already is as asked.
fn topic_results(
    results: Vec<std::result::Result<String, (String, RDKafkaErrorCode)>>,
    verb: &str,
    done: RDKafkaErrorCode,
) -> Result<()> {
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, code)) if code == done => {}
            Err((name, code)) => {
                return Err(ClusterError::Unavailable {
                    backend: "kafka",
                    detail: format!("cannot {verb} topic {name}: {code}"),
                })
            }
        }
    }
    Ok(())
}

/// The longest wait between two attempts to reach a broker (librdkafka's
/// default is 10 s).
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// How long [`Bus::ping`] waits for the broker's metadata.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one attempt to open an inbox (create its topic, find its
/// end) may wait for the broker.
const INBOX_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the inbox `topic`: creates it if missing and assigns a new
/// consumer to its partition at `resume` (the next offset to read) if the
/// partition still holds it, else at its current end, resolved now rather
/// than on the first fetch so that a record published after this returns
/// is never skipped. Returns the consumer and the offset it reads from.
async fn open_inbox(
    config: &KafkaConfig,
    topic: &str,
    resume: Option<i64>,
) -> Result<(StreamConsumer, i64)> {
    create_topic(config, topic).await?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        // librdkafka wants a group id; no group is joined with assign().
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", config.fetch_wait_ms.to_string())
        // A fetch is answered as soon as one record is there (Apache Kafka
        // wakes a waiting fetch when data arrives): latency over batching.
        .set("fetch.min.bytes", "1")
        // See the producer's setting.
        .set("socket.nagle.disable", "true")
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
        .create()?;
    let (consumer, watermarks) = {
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let watermarks = inbox_watermarks(&consumer, &topic);
            (consumer, watermarks)
        })
        .await
        .map_err(|e| ClusterError::Unavailable {
            backend: "kafka",
            detail: e.to_string(),
        })?
    };
    let (low, end) = watermarks?;
    let start = match resume {
        Some(next) if (low..=end).contains(&next) => next,
        _ => end,
    };
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Offset(start))?;
    consumer.assign(&partitions)?;
    Ok((consumer, start))
}

/// The low and high watermarks of `topic`'s partition, within
/// [`INBOX_OPEN_TIMEOUT`]. Apache Kafka answers a topic's creation once its
/// controller recorded it, before the broker serving it has learned of it:
/// until then the broker calls the partition unknown, so that answer is
/// asked again (a blocking call: run it off the async threads).
fn inbox_watermarks(consumer: &StreamConsumer, topic: &str) -> Result<(i64, i64)> {
    let deadline = std::time::Instant::now() + INBOX_OPEN_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match consumer.fetch_watermarks(topic, 0, left) {
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::LeaderNotAvailable,
            )) if !left.is_zero() => std::thread::sleep(Duration::from_millis(20)),
            result => return Ok(result?),
        }
    }
}

/// Drops a consumer off the async threads: closing one waits for
/// librdkafka's threads.
async fn close_consumer(consumer: StreamConsumer) {
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// Reads the inbox `topic` into `inbox` until the receiver is dropped.
///
/// When every broker connection is lost, the consumer is closed and the
/// inbox opened again with a new one once the broker answers: a broker
/// that comes back may have lost its topics (it kept them in memory, or
/// the topic was deleted), and librdkafka's consumer does not survive
/// that: with the old topic id cached, the first fetch answer about the
/// unknown topic crashes the process (a NULL topic name in
/// `rd_kafka_metadata_update_op`, librdkafka 2.12). The new consumer
/// resumes where the old one stopped if the partition still has that
/// offset, else at the end (what was published meanwhile is skipped: the
/// recipients catch up from the store).
async fn read_kafka_inbox(
    config: KafkaConfig,
    topic: String,
    mut consumer: StreamConsumer,
    mut next: i64,
    inbox: mpsc::Sender<Bytes>,
) {
    loop {
        let lost_broker = tokio::select! {
            record = consumer.recv() => match record {
                Ok(record) => {
                    next = record.offset() + 1;
                    let payload = Bytes::copy_from_slice(record.payload().unwrap_or_default());
                    if !forward(&inbox, "kafka", payload) {
                        break;
                    }
                    false
                }
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown)) => true,
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "kafka inbox: consume error");
                    false
                }
            },
            _ = inbox.closed() => break,
        };
        if !lost_broker {
            continue;
        }
        tracing::warn!(%topic, "kafka inbox: every broker connection lost; reopening the inbox");
        close_consumer(consumer).await;
        let mut backoff = Duration::from_millis(100);
        consumer = loop {
            let attempt = tokio::time::timeout(
                INBOX_OPEN_TIMEOUT * 2,
                open_inbox(&config, &topic, Some(next)),
            );
            let error = tokio::select! {
                opened = attempt => match opened {
                    Ok(Ok((consumer, start))) => {
                        if start != next {
                            tracing::warn!(%topic, from = next, to = start,
                                "kafka inbox: the broker lost the inbox's records; reading from its end");
                        }
                        tracing::info!(%topic, offset = start, "kafka inbox reopened");
                        next = start;
                        break consumer;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                },
                _ = inbox.closed() => return,
            };
            tracing::warn!(%topic, %error, "kafka inbox: cannot reopen yet, retrying");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = inbox.closed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        };
    }
    close_consumer(consumer).await;
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, node: &str, payload: Bytes) -> Result<()> {
        let topic = self.topic(node);
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&topic)
            .payload(payload.as_ref())
            .partition(0);
        // Enqueued now or refused: a full queue is not waited on (see
        // PUBLISH_QUEUE_MAX).
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    ClusterError::Unavailable {
                        backend: "kafka",
                        detail: format!(
                            "publish queue full: {PUBLISH_QUEUE_MAX} records wait for the broker"
                        ),
                    }
                }
                e => ClusterError::from(e),
            })?;
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e.into()),
            // The producer went away with the record (it is being dropped).
            Err(_canceled) => Err(ClusterError::Unavailable {
                backend: "kafka",
                detail: "the producer was closed".into(),
            }),
        }
    }

    async fn subscribe(&self, node: &str) -> Result<Inbox> {
        check_node_id(node)?;
        let topic = self.topic(node);
        let (consumer, start) = open_inbox(&self.config, &topic, None).await?;
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        *self.inbox.lock().unwrap_or_else(|p| p.into_inner()) = Some(topic.clone());
        let reader = tokio::spawn(read_kafka_inbox(
            self.config.clone(),
            topic,
            consumer,
            start,
            tx,
        ));
        *self.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader);
        Ok(rx)
    }

    /// Deletes `node`'s inbox topic, once this node's reader of it (if it
    /// is `node`) has closed its consumer, within [`INBOX_OPEN_TIMEOUT`].
    async fn retire(&self, node: &str) -> Result<()> {
        check_node_id(node)?;
        let topic = self.topic(node);
        let ours = self
            .inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            == Some(topic.as_str());
        if ours {
            let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(reader) = reader {
                if tokio::time::timeout(INBOX_OPEN_TIMEOUT, reader)
                    .await
                    .is_err()
                {
                    return Err(ClusterError::Unavailable {
                        backend: "kafka",
                        detail: format!("the reader of {topic} is still running"),
                    });
                }
            }
            *self.inbox.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        delete_topic(&self.config, &topic).await
    }

    /// Fetches the metadata of this node's inbox topic (of every topic
    /// before the node subscribed) within [`PING_TIMEOUT`]: the broker
    /// answers, and still has the inbox.
    async fn ping(&self) -> Result<()> {
        let topic = self.inbox.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let producer = self.producer.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(topic.as_deref(), PING_TIMEOUT)
                .map(|metadata| (topic, metadata))
        })
        .await
        .map_err(|e| ClusterError::Unavailable {
            backend: "kafka",
            detail: e.to_string(),
        })?;
        let (topic, metadata) = metadata?;
        let Some(topic) = topic else {
            return Ok(());
        };
        let problem = match metadata.topics().iter().find(|t| t.name() == topic) {
            None => Some("missing".to_owned()),
            Some(t) => match t.error() {
                Some(e) => Some(format!("{:?}", RDKafkaErrorCode::from(e))),
                None if t.partitions().is_empty() => Some("no partition".to_owned()),
                None => None,
            },
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(ClusterError::Unavailable {
                backend: "kafka",
                detail: format!("inbox topic {topic}: {problem}"),
            }),
        }
    }
}

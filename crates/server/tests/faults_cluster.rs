//! Faults of the cluster configuration (PostgreSQL store, Redis registry,
//! Redis or Kafka bus) under traffic from several clients, on real
//! `chat-server` processes, checked against a ledger: every message a
//! sender saw acknowledged is in the history exactly once, each recipient
//! ends with all of them exactly once and in seq order after catch-up, and
//! unread counts agree. Each scenario prints its figures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_proto as pb;
use chat_test_support::ledger::{catch_up, chat_via, show, Ledger};
use chat_test_support::process::{free_addr, free_service_port, Broker, ServerProcess};
use chat_test_support::services::{fresh_postgres, redis_url, unique};
use chat_test_support::{await_metric, metric, send_request, Live, WAIT};
use pb::server_frame::Frame;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_chat-server");

/// The environment of one node of a cluster on PostgreSQL and Redis, with
/// the bus `bus` (`redis`, or `kafka` on `brokers`).
fn cluster_env(
    node: &str,
    postgres: &str,
    prefix: &str,
    bus: &str,
    brokers: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("CHAT_NODE_ID", node.to_owned()),
        ("CHAT_STORE", "postgres".to_owned()),
        ("CHAT_POSTGRES_URL", postgres.to_owned()),
        ("CHAT_REGISTRY", "redis".to_owned()),
        ("CHAT_REDIS_URL", redis_url()),
        ("CHAT_REDIS_PREFIX", prefix.to_owned()),
        ("CHAT_BUS", bus.to_owned()),
        ("CHAT_SESSION_TTL_SECS", "1".to_owned()),
    ];
    if let Some(brokers) = brokers {
        env.extend([
            ("CHAT_KAFKA_BROKERS", brokers.to_owned()),
            (
                "CHAT_KAFKA_TOPIC_PREFIX",
                format!("{prefix}-").replace(':', ""),
            ),
        ]);
    }
    env
}

/// A `chat-server` process with its (unused, SQLite) data directory.
struct Node {
    process: ServerProcess,
    _data: tempfile::TempDir,
}

impl Node {
    async fn start(env: &[(&str, String)]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let process = ServerProcess::start(Path::new(BINARY), data.path(), free_addr(), env).await;
        Self {
            process,
            _data: data,
        }
    }
}

/// What one recipient's live streams showed: a client keeps one message
/// per seq ([`show`]); `repeated` counts a seq one stream sent twice (the
/// server promises each seq once per session).
#[derive(Default)]
struct Shown {
    shown: BTreeMap<u64, pb::Message>,
    session_seqs: BTreeSet<u64>,
    repeated: usize,
}

impl Shown {
    fn live(&mut self, message: pb::Message) {
        if !self.session_seqs.insert(message.seq) {
            self.repeated += 1;
        }
        show(&mut self.shown, message);
    }

    /// A new session (a reconnect) may replay what an earlier one sent.
    fn new_session(&mut self) {
        self.session_seqs.clear();
    }
}

/// How the broker of fault 3 goes away and comes back.
#[derive(Debug, Clone, Copy)]
enum BrokerFault {
    /// Killed (SIGKILL), started again with its data (topics, records,
    /// offsets): the usual case on a real cluster.
    KilledBackWithItsData,
    /// Killed, started again empty, as a broker whose disk was lost: every
    /// inbox topic is gone.
    KilledBackEmpty,
    /// Paused (SIGSTOP) for longer than a publish may wait, then resumed:
    /// its connections stay open but nothing answers.
    Paused,
}

/// Fault 3: the Apache Kafka broker dies (SIGKILL) under traffic and comes
/// back on the same port with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_stops_and_restarts_under_traffic() {
    kafka_broker_goes_and_returns(BrokerFault::KilledBackWithItsData).await;
}

/// Fault 3, the broker back empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_stops_and_restarts_empty_under_traffic() {
    kafka_broker_goes_and_returns(BrokerFault::KilledBackEmpty).await;
}

/// Fault 3, the broker paused and resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_pauses_under_traffic() {
    kafka_broker_goes_and_returns(BrokerFault::Paused).await;
}

/// The broker goes away under traffic and comes back on the same port, as
/// `fault` says. While it is away every send is acknowledged (the store
/// commits) or refused as retryable, never acknowledged and lost; once it
/// is back, live delivery across nodes resumes by itself and catch-up
/// fills what was missed meanwhile.
async fn kafka_broker_goes_and_returns(fault: BrokerFault) {
    const PAIRS: usize = 3;
    const BEFORE: usize = 10;
    // Three publish attempts of up to 2 s each, but librdkafka notices
    // a message timeout only about once a second.
    const OUTAGE_LIMIT: Duration = Duration::from_secs(20);
    let mut broker = Broker::start(free_service_port()).await;
    let postgres = fresh_postgres().await;
    let prefix = format!("{}:", unique("t"));
    let brokers = broker.address();
    let env = |node: &str| cluster_env(node, &postgres, &prefix, "kafka", Some(&brokers));
    let a = Node::start(&env(&unique("a-"))).await;
    let b = Node::start(&env(&unique("b-"))).await;
    let nodes = [&a.process, &b.process];

    // Senders on A write to recipients on B, and one the other way, so
    // that both inboxes must come back.
    struct Pair {
        recipient: String,
        recipient_secret: String,
        recipient_node: usize,
        sender: Live,
        receiver: Live,
        ledger: Ledger,
        seen: Shown,
        next: usize,
        refused: Vec<String>,
    }
    let mut pairs = Vec::new();
    for p in 0..PAIRS {
        let (sender_node, recipient_node) = if p + 1 < PAIRS { (0, 1) } else { (1, 0) };
        let sender_secret = a.process.register(&format!("sender{p}")).await;
        let recipient = format!("recipient{p}");
        let recipient_secret = a.process.register(&recipient).await;
        let sender = Live::open(nodes[sender_node].chat(&sender_secret).await).await;
        let receiver = Live::open(nodes[recipient_node].chat(&recipient_secret).await).await;
        pairs.push(Pair {
            recipient,
            recipient_secret,
            recipient_node,
            sender,
            receiver,
            ledger: Ledger::default(),
            seen: Shown::default(),
            next: 0,
            refused: Vec::new(),
        });
    }
    // Sends one message; `Some` with the message if it was acknowledged,
    // `None` if refused (which must be retryable).
    async fn send(pair: &mut Pair, label: &str) -> Option<pb::Message> {
        let id = format!("k{}", pair.next);
        pair.next += 1;
        pair.sender
            .send_to(&pair.recipient, &format!("{label} {id}"), &id)
            .await;
        let ack = pair.sender.ack().await;
        assert_eq!(ack.client_msg_id, id);
        match (ack.message, ack.error) {
            (Some(message), _) => {
                pair.ledger.ack(message.clone());
                Some(message)
            }
            (None, Some(error)) => {
                assert_eq!(error.kind, "unavailable", "{error:?}");
                pair.refused.push(id);
                None
            }
            (None, None) => panic!("an ack with neither a message nor an error"),
        }
    }

    let mut sent = 0;
    for _ in 0..BEFORE {
        for pair in &mut pairs {
            let message = send(pair, "before").await.expect("acknowledged");
            sent += 1;
            assert_eq!(pair.receiver.message().await, message, "delivered live");
            pair.seen.live(message);
        }
    }

    match fault {
        BrokerFault::Paused => broker.pause(),
        _ => broker.kill().await,
    }
    let killed = Instant::now();
    // Sends go on while the broker is away, until the bus gave up on a
    // record (refused on every attempt, dead-lettered): that record never
    // reaches its recipient live, only catch-up brings it.
    let mut slowest_ack = Duration::ZERO;
    let mut gave_up = 0;
    while gave_up == 0 {
        for pair in &mut pairs {
            let started = Instant::now();
            send(pair, "during").await;
            sent += 1;
            slowest_ack = slowest_ack.max(started.elapsed());
        }
        for node in nodes {
            gave_up += metric(node.http_addr, "chat_bus_publish_failures_total")
                .await
                .unwrap_or_default();
        }
        assert!(
            killed.elapsed() < OUTAGE_LIMIT,
            "the bus kept trying for {OUTAGE_LIMIT:?} without a broker"
        );
        // Pacing: a few rounds a second, not a flood.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let down_for = killed.elapsed();
    // The acknowledgement never waits for the bus, whose publishes each
    // wait up to 2 s for a broker that is not there.
    assert!(
        slowest_ack < Duration::from_secs(2),
        "an acknowledgement took {slowest_ack:?} while the broker was down"
    );

    match fault {
        BrokerFault::KilledBackWithItsData => broker.restart().await,
        BrokerFault::KilledBackEmpty => broker.restart_empty().await,
        BrokerFault::Paused => broker.resume(),
    }
    let restarted = Instant::now();
    // Live delivery comes back by itself: probes until one reaches its
    // recipient as it is sent. The probes are ordinary messages, in the
    // ledger like the others.
    for pair in &mut pairs {
        'probing: loop {
            assert!(
                restarted.elapsed() < WAIT,
                "live delivery to {} did not resume within {WAIT:?} of the broker's restart",
                pair.recipient
            );
            let probe = send(pair, "probe").await.expect("acknowledged");
            sent += 1;
            let sent_at = Instant::now();
            while sent_at.elapsed() < Duration::from_millis(300) {
                let left = Duration::from_millis(300).saturating_sub(sent_at.elapsed());
                let Some(frame) = pair.receiver.frame_within(left).await else {
                    break;
                };
                if let Frame::Message(m) = frame {
                    let seq = m.seq;
                    pair.seen.live(m);
                    if seq == probe.seq {
                        break 'probing;
                    }
                }
            }
        }
    }
    let recovery = restarted.elapsed();
    // And it stays back: the next message arrives at once.
    for pair in &mut pairs {
        let message = send(pair, "after").await.expect("acknowledged");
        sent += 1;
        loop {
            let m = pair.receiver.message().await;
            let seq = m.seq;
            pair.seen.live(m);
            if seq == message.seq {
                break;
            }
        }
    }

    let (mut acked, mut live, mut refused, mut repeated) = (0, 0, 0, 0);
    for pair in &mut pairs {
        // A refused send is retried with its client_msg_id, as a client
        // does on UNAVAILABLE: it commits once.
        for id in std::mem::take(&mut pair.refused) {
            pair.sender.send_to(&pair.recipient, "retry", &id).await;
            let ack = pair.sender.ack().await;
            pair.ledger
                .ack(ack.message.expect("the retry is acknowledged"));
            refused += 1;
        }
        acked += pair.ledger.acked.len();
        live += pair.seen.shown.len();
        repeated += pair.seen.repeated;
        let mut client = nodes[pair.recipient_node]
            .chat(&pair.recipient_secret)
            .await;
        let conversation = pair.ledger.acked[&1].conversation_id.clone();
        catch_up(&mut client, &conversation, &mut pair.seen.shown).await;
        pair.ledger
            .check(&mut client, &conversation, &pair.seen.shown)
            .await;
    }
    assert_eq!(repeated, 0, "a stream showed a seq twice");
    let published_failures = metric(a.process.http_addr, "chat_bus_publish_failures_total")
        .await
        .unwrap_or_default()
        + metric(b.process.http_addr, "chat_bus_publish_failures_total")
            .await
            .unwrap_or_default();
    eprintln!(
        "kafka broker {fault:?}: {sent} sent, {acked} acknowledged ({refused} refused and retried), \
         {live} delivered live, 0 lost, {repeated} duplicates shown; broker down {down_for:?}, \
         slowest ack while down {slowest_ack:?}, {published_failures} records dead-lettered, \
         live delivery back {recovery:?} after its return"
    );
}

/// What a sender task saw: its acknowledged messages in client_msg_id
/// order, the status that ended its stream on B (if it was there), and
/// when its first acknowledgement after reconnecting to A came.
struct SenderOutcome {
    acked: Vec<pb::Message>,
    ended: Option<tonic::Status>,
    back_at: Option<Instant>,
    /// The client_msg_ids (as indexes) sent again on A.
    retried: std::ops::Range<usize>,
}

/// What a recipient task saw, and when it was back on A if it had to move.
struct RecipientOutcome {
    seen: Shown,
    back_at: Option<Instant>,
}

/// Fault 1: one of two servers is killed (SIGKILL) under traffic from
/// many clients. Six senders pipeline their sends on live streams to six
/// recipients, spread over both servers in every combination; B dies once
/// a quarter of the sends were acknowledged. Its clients reconnect to A;
/// senders retry every send they saw no acknowledgement for, with its
/// client_msg_id, and get the original when it had committed. No
/// acknowledged message is lost or doubled, and every recipient ends with
/// all of them after catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_one_of_two_servers_under_traffic() {
    const PAIRS: usize = 6;
    const PER_SENDER: usize = 200;
    const WINDOW: usize = 16;
    let postgres = fresh_postgres().await;
    let prefix = format!("{}:", unique("t"));
    let env = |node: &str| cluster_env(node, &postgres, &prefix, "redis", None);
    let a = Node::start(&env(&unique("a-"))).await;
    let mut b = Node::start(&env(&unique("b-"))).await;
    let (a_addr, b_addr) = (a.process.grpc_addr, b.process.grpc_addr);
    let node_addr = |node: usize| if node == 0 { a_addr } else { b_addr };

    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let quarter = Arc::new(tokio::sync::Notify::new());
    let killed = CancellationToken::new();
    let mut senders = Vec::new();
    let mut recipients = Vec::new();
    // (sender's node, recipient's node), 0 = A, 1 = B: every combination.
    const LAYOUT: [(usize, usize); PAIRS] = [(0, 0), (1, 1), (0, 1), (1, 0), (0, 0), (1, 1)];
    for (p, (sender_node, recipient_node)) in LAYOUT.into_iter().enumerate() {
        let sender_secret = a.process.register(&format!("sender{p}")).await;
        let recipient = format!("recipient{p}");
        let recipient_secret = a.process.register(&recipient).await;

        // The recipient reads its stream until it has seen the last
        // acknowledged seq (`target`, known once the sender is done): a
        // client that sees a seq fills any gap before it from history. If
        // its server dies, it reconnects to A.
        let (target_tx, mut target) = tokio::sync::watch::channel(None::<u64>);
        let mut live =
            Live::open(chat_via(node_addr(recipient_node), &recipient_secret).await).await;
        let (on_b, killed_r, secret) = (
            recipient_node == 1,
            killed.clone(),
            recipient_secret.clone(),
        );
        let reader = tokio::spawn(async move {
            let mut out = RecipientOutcome {
                seen: Shown::default(),
                back_at: None,
            };
            loop {
                let last = *target.borrow_and_update();
                if last.is_some_and(|last| out.seen.shown.contains_key(&last)) {
                    return out;
                }
                tokio::select! {
                    changed = target.changed() => changed.expect("the test holds the target"),
                    frame = live.recv() => match frame {
                        Some(Ok(Frame::Message(m))) => out.seen.live(m),
                        Some(Ok(_)) => {}
                        ended => {
                            assert!(
                                on_b && out.back_at.is_none() && killed_r.is_cancelled(),
                                "a stream ended that should not have: {ended:?}"
                            );
                            live = Live::open(chat_via(a_addr, &secret).await).await;
                            out.back_at = Some(Instant::now());
                            out.seen.new_session();
                        }
                    },
                }
            }
        });
        recipients.push((recipient_secret, target_tx, reader));

        let mut live = Live::open(chat_via(node_addr(sender_node), &sender_secret).await).await;
        let (acked_so_far, quarter, killed) =
            (acked_so_far.clone(), quarter.clone(), killed.clone());
        let on_b = sender_node == 1;
        senders.push(tokio::spawn(async move {
            let mut out = SenderOutcome {
                acked: Vec::new(),
                ended: None,
                back_at: None,
                retried: 0..0,
            };
            let mut pushed = 0;
            while out.acked.len() < PER_SENDER {
                // Pipelined: up to WINDOW sends wait for their ack.
                while pushed < PER_SENDER && pushed < out.acked.len() + WINDOW {
                    let frame = pb::client_frame::Frame::Send(send_request(
                        &recipient,
                        &format!("m{pushed}"),
                        &format!("k{pushed}"),
                    ));
                    if !live.try_push(frame).await {
                        break;
                    }
                    pushed += 1;
                }
                let status = match live.next().await {
                    Some(Ok(Frame::Ack(ack))) => {
                        let expected = format!("k{}", out.acked.len());
                        assert_eq!(ack.client_msg_id, expected, "acks come in send order");
                        let message = ack
                            .message
                            .unwrap_or_else(|| panic!("a send was refused: {:?}", ack.error));
                        assert_eq!(message.client_msg_id, expected);
                        out.acked.push(message);
                        if out.ended.is_some() && out.back_at.is_none() {
                            out.back_at = Some(Instant::now());
                        }
                        if acked_so_far.fetch_add(1, Ordering::Relaxed) + 1
                            == PAIRS * PER_SENDER / 4
                        {
                            quarter.notify_one();
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => status,
                    None => tonic::Status::unknown("the stream ended without a status"),
                };
                // Only B dies, once.
                assert!(
                    on_b && out.ended.is_none() && killed.is_cancelled(),
                    "a stream failed that should not have: {status:?}"
                );
                out.ended = Some(status);
                out.retried = out.acked.len()..pushed;
                // To A, retrying from the first send not acknowledged.
                live = Live::open(chat_via(a_addr, &sender_secret).await).await;
                pushed = out.acked.len();
            }
            out
        }));
    }

    quarter.notified().await;
    killed.cancel();
    b.process.kill().await;
    let killed_at = Instant::now();
    // Everything B committed is older than this.
    let killed_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;

    let mut outcomes = Vec::new();
    for sender in senders {
        let out = tokio::time::timeout(WAIT * 3, sender)
            .await
            .expect("the senders finish")
            .expect("sender task");
        outcomes.push(out);
    }
    let mut sent = 0;
    let (mut acked, mut live, mut repeated, mut recovery) = (0, 0, 0, Duration::ZERO);
    let mut a_client_statuses = Vec::new();
    let (mut retried, mut originals) = (0, 0);
    for (p, (out, (secret, target, reader))) in outcomes.iter().zip(recipients).enumerate() {
        sent += PER_SENDER;
        if LAYOUT[p].0 == 1 {
            let status = out.ended.as_ref().unwrap_or_else(|| {
                panic!("sender{p} on B finished before B died: no traffic was in flight")
            });
            a_client_statuses.push(status.code());
            // A retry of a send B had committed returned the original
            // (the ledger check below shows it is there once).
            retried += out.retried.len();
            originals += out.acked[out.retried.clone()]
                .iter()
                .filter(|m| m.sent_at_unix_ms <= killed_unix_ms)
                .count();
            recovery = recovery.max(out.back_at.expect("acknowledged on A") - killed_at);
        }
        let mut ledger = Ledger::default();
        for message in &out.acked {
            ledger.ack(message.clone());
        }
        let last = out.acked.last().expect("acknowledged").seq;
        target.send(Some(last)).expect("the recipient reads");
        let mut seen = tokio::time::timeout(WAIT, reader)
            .await
            .unwrap_or_else(|_| panic!("recipient{p} never saw seq {last}"))
            .expect("recipient task");
        if let Some(back_at) = seen.back_at {
            recovery = recovery.max(back_at - killed_at);
        }
        acked += ledger.acked.len();
        live += seen.seen.shown.len();
        repeated += seen.seen.repeated;
        let mut client = chat_via(a_addr, &secret).await;
        let conversation = out.acked[0].conversation_id.clone();
        catch_up(&mut client, &conversation, &mut seen.seen.shown).await;
        ledger
            .check(&mut client, &conversation, &seen.seen.shown)
            .await;
    }
    assert_eq!(repeated, 0, "a stream showed a seq twice");
    eprintln!(
        "sigkill under traffic: {sent} sent, {acked} acknowledged, {live} delivered live \
         (before catch-up), 0 lost, {repeated} duplicates shown; {retried} sends retried on A, \
         {originals} of them committed by B before it died (the original returned); B's \
         streams ended with {a_client_statuses:?}; every client of B back on A {recovery:?} \
         after the kill"
    );
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd")
        .count()
}

/// Threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads")
}

/// Session entries in the Redis registry under `prefix`, expired ones
/// included (an entry a node failed to remove shows until the key
/// expires, twice the TTL later).
async fn registry_entries(mut redis: redis::aio::MultiplexedConnection, prefix: String) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}sessions:*"))
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    let mut entries = 0;
    for key in keys {
        let n: usize = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("ZCARD");
        entries += n;
    }
    entries
}

/// Polls `read` until it is at most `bound`; fails after `within`.
async fn settles<F: std::future::Future<Output = usize>>(
    what: &str,
    bound: usize,
    within: Duration,
    mut read: impl FnMut() -> F,
) -> usize {
    let started = Instant::now();
    loop {
        let now = read().await;
        if now <= bound {
            return now;
        }
        assert!(
            started.elapsed() < within,
            "{what} is {now}, above {bound}, {within:?} after the churn"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fault 7: connection churn. 2,000 cycles of connect, `ready`,
/// disconnect (every fourth one also sends a message first), eight at a
/// time, against one server on PostgreSQL and Redis, while another user
/// stays connected and watches their presence. Afterwards the server is
/// back where it started: live sessions, registry entries, threads and
/// file descriptors; the watcher is still connected and got every
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_leaks_nothing() {
    const CYCLES: usize = 2000;
    const PARALLEL: usize = 8;
    const WARM_UP: usize = 10;
    // Descriptors that may stay open after the churn without being a
    // leak: PostgreSQL connections the store's pool opened under eight
    // parallel sessions and keeps for reuse (the warm-up already opened
    // most of them; the pool holds at most 16).
    const FD_SLACK: usize = 8;
    const TTL_SECS: u64 = 3;
    let postgres = fresh_postgres().await;
    let prefix = format!("{}:", unique("t"));
    let mut env = cluster_env(&unique("a-"), &postgres, &prefix, "redis", None);
    // Heartbeats every second during the churn. Entries are counted
    // expired or not (ZCARD), so one the server failed to remove stays
    // until its key expires (twice the TTL after the user's last session)
    // and fails the check below, which allows less than that.
    env.push(("CHAT_SESSION_TTL_SECS", TTL_SECS.to_string()));
    let node = Node::start(&env).await;
    let server = &node.process;
    let pid = server.child.id().expect("server pid");
    let redis = redis::Client::open(redis_url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");

    let watcher_secret = server.register("watcher").await;
    let mut users = Vec::new();
    for w in 0..PARALLEL {
        let name = format!("churn{w}");
        let secret = server.register(&name).await;
        users.push((name, secret));
    }
    // Each churning user shares a conversation with the watcher, who is
    // told of every connect and disconnect (presence) and gets their
    // messages.
    let mut ledgers: Vec<Ledger> = Vec::new();
    for (_, secret) in &users {
        let first = server
            .chat(secret)
            .await
            .send_message(send_request("watcher", "hello", "k0"))
            .await
            .expect("send")
            .into_inner()
            .message
            .expect("message");
        let mut ledger = Ledger::default();
        ledger.ack(first);
        ledgers.push(ledger);
    }
    // The watcher reads until it has seen the last acknowledged seq of
    // every conversation (`targets`, known once the churn is over).
    let (targets_tx, mut targets) = tokio::sync::watch::channel(None::<Vec<(String, u64)>>);
    let watcher = {
        let mut live = Live::open(server.chat(&watcher_secret).await).await;
        tokio::spawn(async move {
            let mut seen: BTreeMap<String, Shown> = BTreeMap::new();
            let mut presence = 0;
            loop {
                let done = targets.borrow_and_update().as_ref().is_some_and(|targets| {
                    targets.iter().all(|(conversation, seq)| {
                        seen.get(conversation)
                            .is_some_and(|s| s.shown.contains_key(seq))
                    })
                });
                if done {
                    return (seen, presence);
                }
                tokio::select! {
                    changed = targets.changed() => changed.expect("the test holds the targets"),
                    frame = live.recv() => match frame {
                        Some(Ok(Frame::Message(m))) => {
                            seen.entry(m.conversation_id.clone()).or_default().live(m)
                        }
                        Some(Ok(Frame::Presence(_))) => presence += 1,
                        Some(Ok(_)) => {}
                        ended => panic!("the watcher's stream ended: {ended:?}"),
                    },
                }
            }
        })
    };

    // One churning client: `cycles` connect/ready/disconnect cycles, each
    // on a new connection; every fourth sends a message first.
    let churn = |w: usize, cycles: std::ops::Range<usize>| {
        let (addr, secret) = (server.grpc_addr, users[w].1.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for c in cycles {
                let mut live = Live::open(chat_via(addr, &secret).await).await;
                if c % 4 == 0 {
                    let send = send_request("watcher", &format!("m{c}"), &format!("k{c}"));
                    assert!(live.try_push(pb::client_frame::Frame::Send(send)).await);
                    let ack = live.ack().await;
                    acked.push(ack.message.expect("acknowledged"));
                }
            }
            acked
        })
    };
    let run = |cycles_each: usize, offset: usize| {
        (0..PARALLEL)
            .map(|w| churn(w, offset + 1..offset + 1 + cycles_each))
            .collect::<Vec<_>>()
    };
    let mut acked = Vec::new();
    for task in run(WARM_UP, 0) {
        acked.push(task.await.expect("warm-up"));
    }
    await_metric(server.http_addr, "chat_sessions", 1).await;
    let entries = || registry_entries(redis.clone(), prefix.clone());
    let registry_before = settles("registry entries", 1, WAIT, entries).await;
    let (fds_before, threads_before) = (open_fds(pid), threads(pid));

    let started = Instant::now();
    let mut peak_fds = fds_before;
    let tasks = run(CYCLES / PARALLEL, WARM_UP);
    for (w, task) in tasks.into_iter().enumerate() {
        peak_fds = peak_fds.max(open_fds(pid));
        acked[w].extend(task.await.expect("churn"));
    }
    let churn_time = started.elapsed();

    // Back to the baseline: one live session (the watcher's), its one
    // registry entry, no more threads, no more descriptors than the slack.
    let settled = Instant::now();
    await_metric(server.http_addr, "chat_sessions", 1).await;
    // Removed when their sessions end, not left to expire.
    let ttl = Duration::from_secs(TTL_SECS);
    let registry_after = settles("registry entries", registry_before, ttl, entries).await;
    let threads_after = settles("threads", threads_before, WAIT, || async { threads(pid) }).await;
    let fds_after = settles("open descriptors", fds_before + FD_SLACK, WAIT, || async {
        open_fds(pid)
    })
    .await;
    let settle_time = settled.elapsed();

    // The watcher is still connected and was shown every message.
    let last = acked
        .iter()
        .map(|a| {
            let m = a.last().expect("acknowledged");
            (m.conversation_id.clone(), m.seq)
        })
        .collect();
    targets_tx.send(Some(last)).expect("the watcher reads");
    let (mut seen, presence) = tokio::time::timeout(WAIT, watcher)
        .await
        .expect("the watcher was shown the last message of every conversation")
        .expect("watcher task");
    let mut watcher_client = server.chat(&watcher_secret).await;
    let (mut shown_live, mut repeated, mut messages) = (0, 0, 0);
    for (ledger, acked) in ledgers.iter_mut().zip(&acked) {
        for message in acked {
            ledger.ack(message.clone());
        }
        messages += ledger.acked.len();
        let conversation = ledger.acked[&1].conversation_id.clone();
        let shown = seen.entry(conversation.clone()).or_default();
        shown_live += shown.shown.len();
        repeated += shown.repeated;
        catch_up(&mut watcher_client, &conversation, &mut shown.shown).await;
        ledger
            .check(&mut watcher_client, &conversation, &shown.shown)
            .await;
    }
    assert_eq!(repeated, 0, "a stream showed a seq twice");
    let cycles = CYCLES + PARALLEL * WARM_UP;
    eprintln!(
        "connection churn: {CYCLES} cycles ({} warm-up) in {churn_time:?} ({:.0}/s), {PARALLEL} at a \
         time; {messages} messages sent and acknowledged, {shown_live} delivered live, 0 lost, \
         {repeated} duplicates shown, {presence} presence events; back to baseline {settle_time:?} \
         after: sessions 1, registry entries {registry_before} -> {registry_after}, threads \
         {threads_before} -> {threads_after}, descriptors {fds_before} -> {fds_after} (peak \
         {peak_fds}, slack {FD_SLACK})",
        cycles - CYCLES,
        CYCLES as f64 / churn_time.as_secs_f64(),
    );
}

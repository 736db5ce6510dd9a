//! Two servers, one cluster: for each bus (in-process, Redis pub/sub,
//! Kafka), users on different servers chat as if on one.
//!
//! The in-process variant shares one SQLite store, registry and bus between
//! two servers of this process; the Redis and Kafka variants connect each
//! server to real PostgreSQL, Redis and an Apache Kafka broker, exactly
//! as separate processes would.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_cluster::Bus;
use chat_proto as pb;
use chat_proto::client_frame::Frame as In;
use chat_proto::server_frame::Frame as Out;
use chat_server::config::{BusBackend, RegistryBackend, StoreBackend};
use chat_server::http::types::{
    DeadLetterDetail, DeadLetterPage, Purged, ReplayBatch, ReplayOutcome, ReplayResult,
};
use chat_server::Backends;
use chat_test_support::services::{fresh_postgres, kafka_brokers, redis_url, unique};
use chat_test_support::{
    admin_http, admin_token, await_metric, message_envelope, metric, send_request, TestServer,
};

#[derive(Clone, Copy, Debug)]
enum Via {
    Memory,
    Redis,
    Kafka,
}

struct Cluster {
    a: TestServer,
    b: TestServer,
    via: Via,
    /// A bus client of the cluster's own kind, to inject records.
    bus: Arc<dyn Bus>,
    /// The store both servers share, to inject dead letters.
    store: Arc<dyn chat_store::Store>,
    b_node: String,
    _shared: Option<tempfile::TempDir>,
}

async fn cluster(via: Via) -> Cluster {
    let (a_node, b_node) = (unique("a-"), unique("b-"));
    match via {
        Via::Memory => {
            let dir = tempfile::tempdir().unwrap();
            let mut sqlite = chat_store::sqlite::SqliteConfig::new(dir.path().join("chat.db"));
            sqlite.durability = chat_store::sqlite::Durability::Normal;
            let bus = Arc::new(chat_cluster::bus::MemoryBus::default());
            let store: Arc<dyn chat_store::Store> =
                Arc::new(chat_store::sqlite::SqliteStore::open(sqlite).unwrap());
            let backends = Backends {
                store: store.clone(),
                registry: Arc::new(chat_cluster::registry::MemoryRegistry::new(
                    Duration::from_secs(15),
                )),
                bus: bus.clone(),
            };
            let a_id = a_node.clone();
            let a = TestServer::start_node(Some(backends.clone()), |c| {
                c.cluster.node_id = a_id;
                c.admin_token = Some(admin_token());
            })
            .await;
            let b_id = b_node.clone();
            let b = TestServer::start_node(Some(backends), |c| {
                c.cluster.node_id = b_id;
                c.admin_token = Some(admin_token());
            })
            .await;
            Cluster {
                a,
                b,
                via,
                bus,
                store,
                b_node,
                _shared: Some(dir),
            }
        }
        Via::Redis | Via::Kafka => {
            let postgres = fresh_postgres().await;
            let prefix = format!("{}:", unique("t"));
            let topics = format!("{}-", unique("inbox"));
            let bus_backend = match via {
                Via::Redis => BusBackend::Redis {
                    url: redis_url(),
                    prefix: prefix.clone(),
                },
                _ => {
                    let mut kafka = chat_cluster::bus::KafkaConfig::new(kafka_brokers());
                    kafka.topic_prefix = topics.clone();
                    BusBackend::Kafka(kafka)
                }
            };
            let bus: Arc<dyn Bus> = match &bus_backend {
                BusBackend::Redis { url, prefix } => Arc::new(
                    chat_cluster::bus::RedisBus::connect(url, prefix)
                        .await
                        .unwrap(),
                ),
                BusBackend::Kafka(k) => {
                    Arc::new(chat_cluster::bus::KafkaBus::connect(k.clone()).unwrap())
                }
                BusBackend::Memory => unreachable!(),
            };
            let configure = |node: String| {
                let (postgres, prefix, bus_backend) =
                    (postgres.clone(), prefix.clone(), bus_backend.clone());
                move |c: &mut chat_server::Config| {
                    c.cluster.node_id = node;
                    c.cluster.store = StoreBackend::Postgres { url: postgres };
                    c.cluster.registry = RegistryBackend::Redis {
                        url: redis_url(),
                        prefix,
                    };
                    c.cluster.bus = bus_backend;
                    c.admin_token = Some(admin_token());
                }
            };
            let a = TestServer::start_with(configure(a_node)).await;
            let b = TestServer::start_with(configure(b_node.clone())).await;
            let store = chat_store::postgres::PostgresStore::connect(
                chat_store::postgres::PostgresConfig::new(&postgres),
            )
            .await
            .unwrap();
            Cluster {
                a,
                b,
                via,
                bus,
                store: Arc::new(store),
                b_node,
                _shared: None,
            }
        }
    }
}

impl Cluster {
    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

async fn cross_server_live_delivery(c: Cluster) {
    let alice = c.a.register("alice").await;
    let bob = c.b.register("bob").await;
    let mut a = c.a.connect(&alice).await;
    let mut b = c.b.connect(&bob).await;

    a.send_to("bob", "hello from A", "a1").await;
    let acked = a.ack().await.message.expect("committed");
    assert_eq!(b.message().await, acked);

    b.send_to("alice", "hello from B", "b1").await;
    let reply = b.ack().await.message.expect("committed");
    assert_eq!(reply.seq, 2);
    assert_eq!(a.message().await, reply);
    c.stop().await;
}

async fn multi_device_across_servers(c: Cluster) {
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let mut alice_a = c.a.connect(&alice).await;
    let mut alice_b = c.b.connect(&alice).await;
    let mut bob_a = c.a.connect(&bob).await;
    let mut bob_b = c.b.connect(&bob).await;

    // From A: bob on both servers and alice's other device on B see it.
    alice_a.send_to("bob", "one", "m1").await;
    let m1 = alice_a.ack().await.message.unwrap();
    assert_eq!(bob_a.message().await, m1);
    assert_eq!(bob_b.message().await, m1);
    assert_eq!(alice_b.message().await, m1);
    // From B, over the unary API.
    let m2 =
        c.b.chat(&bob)
            .await
            .send_message(send_request("alice", "two", "m2"))
            .await
            .unwrap();
    let m2 = m2.into_inner().message.unwrap();
    assert_eq!(alice_a.message().await, m2);
    assert_eq!(alice_b.message().await, m2);
    assert_eq!(bob_a.message().await, m2);
    assert_eq!(bob_b.message().await, m2);
    c.stop().await;
}

async fn concurrent_senders_on_two_servers(c: Cluster) {
    let alice = c.a.register("alice").await;
    let bob = c.b.register("bob").await;
    let mut tasks = Vec::new();
    for (server, who, peer) in [(&c.a, &alice, "bob"), (&c.b, &bob, "alice")] {
        for t in 0..4 {
            let mut client = server.chat(who).await;
            let prefix = format!("{}-{t}", who.username);
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let req = send_request(peer, "x", &format!("{prefix}-{i}"));
                    client.send_message(req.clone()).await.expect("send");
                    // A retry on the same id stores nothing new.
                    if i % 5 == 0 {
                        client.send_message(req).await.expect("retry");
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut chat = c.b.chat(&alice).await;
    let list = chat
        .list_conversations(pb::ListConversationsRequest {})
        .await
        .unwrap()
        .into_inner();
    let conversation = &list.conversations[0];
    assert_eq!(conversation.last_seq, 200);
    let mut seqs = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut after = 0;
    loop {
        let page = chat
            .get_history(pb::GetHistoryRequest {
                conversation_id: conversation.conversation_id.clone(),
                after_seq: after,
                limit: 200,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for m in &page.messages {
            assert!(
                ids.insert(m.client_msg_id.clone()),
                "duplicate {}",
                m.client_msg_id
            );
        }
        seqs.extend(page.messages.iter().map(|m| m.seq));
        after = *seqs.last().unwrap();
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    c.stop().await;
}

async fn offline_catch_up_across_servers(c: Cluster) {
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let m =
            c.a.chat(&alice)
                .await
                .send_message(send_request("bob", &format!("m{i}"), &format!("o{i}")))
                .await;
        sent.push(m.unwrap().into_inner().message.unwrap());
    }
    let mut b = c.b.connect(&bob).await;
    assert_eq!(b.ready.conversations[0].unread_count, 5);
    for expected in &sent {
        assert_eq!(&b.message().await, expected);
    }
    c.stop().await;
}

async fn read_updates_reach_other_servers(c: Cluster) {
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let mut bob_b = c.b.connect(&bob).await;
    let m =
        c.a.chat(&alice)
            .await
            .send_message(send_request("bob", "read me", "r1"))
            .await
            .unwrap();
    let m = m.into_inner().message.unwrap();
    assert_eq!(bob_b.message().await, m);
    c.a.chat(&bob)
        .await
        .mark_read(pb::MarkReadRequest {
            conversation_id: m.conversation_id.clone(),
            seq: 1,
        })
        .await
        .unwrap();
    loop {
        if let Out::ReadUpdate(u) = bob_b.frame().await {
            assert_eq!((u.read_seq, u.unread_count), (1, 0));
            break;
        }
    }
    // Typing crosses servers too, and only to the other member.
    let alice_a = c.a.connect(&alice).await;
    alice_a
        .push(In::Typing(pb::Typing {
            conversation_id: m.conversation_id.clone(),
            ..Default::default()
        }))
        .await;
    loop {
        if let Out::Typing(t) = bob_b.frame().await {
            assert_eq!(
                (t.username.as_str(), t.conversation_id.as_str()),
                ("alice", m.conversation_id.as_str())
            );
            assert_eq!(t.expires_in_ms, 5000);
            break;
        }
    }
    // Read receipts cross servers: bob, on B, reads; alice, on A, hears it.
    let mut alice_a = alice_a;
    bob_b
        .push(In::MarkRead(pb::MarkReadRequest {
            conversation_id: m.conversation_id.clone(),
            seq: 1,
        }))
        .await;
    loop {
        if let Out::ReadUpdate(u) = alice_a.frame().await {
            assert_eq!((u.username.as_str(), u.read_seq), ("bob", 1));
            break;
        }
    }
    c.stop().await;
}

/// A record nobody can decode lands in the dead-letter queue of the node
/// that read it, with its reason and payload; it is logged and counted,
/// it cannot be replayed, and delivery goes on.
async fn poisoned_records_are_dead_lettered(c: Cluster) {
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let mut b = c.b.connect(&bob).await;
    let garbage = b"\xff not json";
    let future = br#"{"v":99,"to":[],"event":{}}"#;
    c.bus
        .publish(&c.b_node, Bytes::from_static(garbage))
        .await
        .unwrap();
    c.bus
        .publish(&c.b_node, Bytes::from_static(future))
        .await
        .unwrap();
    await_metric(c.b.http_addr, "chat_dead_letters_total", 2).await;
    assert_eq!(
        metric(c.b.http_addr, "chat_bus_undecodable_records_total").await,
        Some(2),
        "{:?}",
        c.via
    );
    assert_eq!(
        metric(c.b.http_addr, "chat_dead_letters_stored").await,
        Some(2)
    );
    assert_eq!(
        metric(c.a.http_addr, "chat_dead_letters_total").await,
        Some(0)
    );
    assert_eq!(
        metric(c.b.http_addr, "chat_dead_letter_failures_total").await,
        Some(0)
    );

    let list = admin_http(c.b.http_addr, "GET", "/admin/dead-letters").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let letters = list.data::<DeadLetterPage>().dead_letters;
    assert_eq!(letters.len(), 2, "{}", list.body);
    for letter in &letters {
        assert_eq!(letter.node, c.b_node);
        assert_eq!(letter.replayed_at_unix_ms, None);
    }
    let reason = |i: usize| letters[i].reason.clone();
    assert!(
        reason(0).starts_with("undecodable delivery record"),
        "{}",
        reason(0)
    );
    assert!(
        reason(1).contains("unknown envelope version 99"),
        "{}",
        reason(1)
    );

    let show = |i: usize| {
        let id = letters[i].id;
        async move {
            admin_http(c.b.http_addr, "GET", &format!("/admin/dead-letters/{id}"))
                .await
                .data::<DeadLetterDetail>()
        }
    };
    let first = show(0).await;
    assert_eq!(first.payload_hex, hex::encode(garbage));
    assert_eq!(first.payload_text, None);
    let second = show(1).await;
    assert_eq!(
        second.payload_text.as_deref().map(str::as_bytes),
        Some(&future[..])
    );

    // Replaying it finds it still unreadable: kept, the attempt counted.
    let id = letters[1].id;
    let replay = admin_http(
        c.b.http_addr,
        "POST",
        &format!("/admin/dead-letters/{id}/replay"),
    )
    .await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    let message = replay.json["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("not replayable: "), "{message}");
    let after = show(1).await;
    assert_eq!(after.letter.replay_attempts, 1);
    assert_eq!(after.letter.replayed_at_unix_ms, None);

    let m =
        c.a.chat(&alice)
            .await
            .send_message(send_request("bob", "still here", "u1"))
            .await
            .unwrap();
    assert_eq!(b.message().await, m.into_inner().message.unwrap());
    c.stop().await;
}

/// A valid record that could not be delivered (stored as a dead letter by
/// whichever node gave up on it) is replayed from any node: it reaches its
/// recipient's live session on the other node through the registry and
/// the bus, and is marked replayed.
async fn dead_letters_replay_across_servers(c: Cluster) {
    let bob = c.a.register("bob").await;
    let mut bob_b = c.b.connect(&bob).await;
    let letter = c
        .store
        .add_dead_letter(chat_store::NewDeadLetter {
            node: "gone".into(),
            reason: "publish to node b failed after 3 attempts: test".into(),
            payload: message_envelope(&["bob"], "c-dead", 1, "alice", "back from the dead"),
        })
        .await
        .unwrap();
    assert_eq!(
        metric(c.a.http_addr, "chat_dead_letters_stored").await,
        Some(1)
    );

    let replay = admin_http(
        c.a.http_addr,
        "POST",
        &format!("/admin/dead-letters/{}/replay", letter.id),
    )
    .await;
    assert_eq!(replay.status, 200, "{:?}: {}", c.via, replay.body);
    assert_eq!(
        replay.data::<ReplayResult>().outcome,
        ReplayOutcome::Replayed {
            local_sessions: 0,
            nodes: vec![c.b_node.clone()]
        }
    );
    let got = bob_b.message().await;
    assert_eq!(
        (got.conversation_id.as_str(), got.body.as_str(), got.seq),
        ("c-dead", "back from the dead", 1)
    );
    let stored = c.store.dead_letter(letter.id).await.unwrap().unwrap();
    assert!(stored.replayed_at_unix_ms.is_some());
    assert_eq!(stored.replay_attempts, 1);
    // Nothing is pending any more; a purge of the replayed empties it.
    let all = admin_http(c.a.http_addr, "POST", "/admin/dead-letters/replay").await;
    assert!(all.data::<ReplayBatch>().results.is_empty(), "{}", all.body);
    let purged = admin_http(c.a.http_addr, "DELETE", "/admin/dead-letters?replayed=true").await;
    assert_eq!(purged.data::<Purged>().purged, 1);
    assert_eq!(
        metric(c.a.http_addr, "chat_dead_letters_stored").await,
        Some(0)
    );
    c.stop().await;
}

/// One group, members on both servers: one commit, fanned out everywhere.
async fn group_fan_out_across_servers(c: Cluster) {
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let carol = c.a.register("carol").await;
    let mut bob_b = c.b.connect(&bob).await;
    let mut carol_a = c.a.connect(&carol).await;
    let mut carol_b = c.b.connect(&carol).await;
    let created =
        c.a.chat(&alice)
            .await
            .create_group(pb::CreateGroupRequest {
                name: "both".into(),
                members: vec!["bob".into(), "carol".into()],
            })
            .await
            .unwrap()
            .into_inner();
    let event = created.event.unwrap();
    assert_eq!(bob_b.message().await, event);
    assert_eq!(carol_a.message().await, event);
    assert_eq!(carol_b.message().await, event);
    let g = created.group.unwrap().group_id;
    let sent =
        c.b.chat(&bob)
            .await
            .send_message(pb::SendMessageRequest {
                target: Some(pb::send_message_request::Target::GroupId(g.clone())),
                body: "from B".into(),
                client_msg_id: "g1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
    assert_eq!(carol_a.message().await, sent);
    assert_eq!(carol_b.message().await, sent);
    c.stop().await;
}

/// Presence: contacts see each other come online and go offline, across
/// servers.
async fn presence_across_servers(c: Cluster) {
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let carol = c.a.register("carol").await;
    c.a.chat(&alice)
        .await
        .send_message(send_request("bob", "hi", "p1"))
        .await
        .unwrap();
    let mut a = c.a.connect(&alice).await;
    assert_eq!(
        a.ready.presence,
        vec![pb::Presence {
            username: "bob".into(),
            online: false
        }]
    );
    let b = c.b.connect(&bob).await;
    assert_eq!(
        b.ready.presence,
        vec![pb::Presence {
            username: "alice".into(),
            online: true
        }]
    );
    // Carol shares nothing with them and hears nothing.
    let mut stranger = c.b.connect(&carol).await;
    assert!(stranger.ready.presence.is_empty());
    loop {
        if let Out::Presence(p) = a.frame().await {
            assert_eq!((p.username.as_str(), p.online), ("bob", true));
            break;
        }
    }
    drop(b);
    loop {
        if let Out::Presence(p) = a.frame().await {
            assert_eq!((p.username.as_str(), p.online), ("bob", false));
            break;
        }
    }
    stranger.push(In::Ping(pb::Ping { nonce: 9 })).await;
    assert!(matches!(stranger.frame().await, Out::Pong(_)));
    c.stop().await;
}

/// An edit made on one server reaches the other side on the other server,
/// in order after the message it changes.
async fn edits_cross_servers(c: Cluster) {
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let mut b = c.b.connect(&bob).await;
    let mut chat = c.a.chat(&alice).await;
    let m = chat
        .send_message(send_request("bob", "teh", "e0"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(b.message().await, m);
    let edit = pb::EditMessageRequest {
        conversation_id: m.conversation_id.clone(),
        seq: m.seq,
        body: "the".into(),
        client_msg_id: "e1".into(),
    };
    let event = chat
        .edit_message(edit)
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    let got = b.message().await;
    assert_eq!(got, event);
    assert_eq!(
        (got.kind, got.target_seq, got.body.as_str()),
        (pb::MessageKind::MessageEdited as i32, 1, "the")
    );
    c.stop().await;
}

/// Bursts from several senders on the other server, on streams and as
/// unary sends each waiting for the previous answer, reach a member's
/// stream on this server in seq order, every seq once, for each
/// conversation (records between servers may overtake each other; the
/// session fills what is missing from the store first).
async fn live_delivery_keeps_seq_order_across_servers(c: Cluster) {
    const BURST: usize = 100;
    const UNARY: usize = 30;
    let alice = c.a.register("alice").await;
    let bob = c.b.register("bob").await;
    let carol = c.b.register("carol").await;
    let dave = c.b.register("dave").await;
    let mut a = c.a.connect(&alice).await;
    // A group of all four, created by bob: its sends interleave bob's
    // and carol's.
    let group =
        c.b.chat(&bob)
            .await
            .create_group(pb::CreateGroupRequest {
                name: "burst".into(),
                members: vec!["alice".into(), "carol".into(), "dave".into()],
            })
            .await
            .unwrap()
            .into_inner()
            .group
            .unwrap()
            .group_id;
    let group_send = |from: &str, i: usize| pb::SendMessageRequest {
        target: Some(pb::send_message_request::Target::GroupId(group.clone())),
        body: format!("{from} {i}"),
        client_msg_id: format!("{from}-g{i}"),
    };
    let b_live = c.b.connect(&bob).await;
    let c_live = c.b.connect(&carol).await;
    // Back to back on two streams: bob to alice and to the group, carol
    // to the group.
    for i in 0..BURST {
        b_live.send_to("alice", "x", &format!("bob-{i}")).await;
        b_live.push(In::Send(group_send("bob", i))).await;
        c_live.push(In::Send(group_send("carol", i))).await;
    }
    // Unary, each after the previous answer: dave to alice.
    let mut dave_chat = c.b.chat(&dave).await;
    for i in 0..UNARY {
        dave_chat
            .send_message(send_request("alice", "y", &format!("dave-{i}")))
            .await
            .unwrap();
    }
    // Alice's stream: per conversation, seqs 1, 2, 3, … without a gap or
    // a repeat, until every conversation is complete.
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let want = [
        (group.clone(), 1 + 2 * BURST as u64),
        ("bob".to_string(), BURST as u64),
        ("dave".to_string(), UNARY as u64),
    ];
    let mut conversation_of: std::collections::HashMap<String, String> = Default::default();
    let complete = |last: &std::collections::HashMap<String, u64>,
                    of: &std::collections::HashMap<String, String>| {
        want.iter().all(|(key, n)| {
            let id = of.get(key).unwrap_or(key);
            last.get(id) == Some(n)
        })
    };
    while !complete(&last, &conversation_of) {
        let m = a.message().await;
        if m.conversation_id != group {
            conversation_of.insert(m.sender.clone(), m.conversation_id.clone());
        }
        let previous = last.entry(m.conversation_id.clone()).or_insert(0);
        assert_eq!(
            m.seq,
            *previous + 1,
            "conversation {} from {} out of order over {:?}",
            m.conversation_id,
            m.sender,
            c.via
        );
        *previous = m.seq;
    }
    c.stop().await;
}

macro_rules! for_each_bus {
    ($($scenario:ident),* $(,)?) => {
        mod memory { use super::*; $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $scenario() { super::$scenario(cluster(Via::Memory).await).await } )* }
        mod redis { use super::*; $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $scenario() { super::$scenario(cluster(Via::Redis).await).await } )* }
        mod kafka { use super::*; $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $scenario() { super::$scenario(cluster(Via::Kafka).await).await } )* }
    };
}

for_each_bus!(
    live_delivery_keeps_seq_order_across_servers,
    cross_server_live_delivery,
    multi_device_across_servers,
    concurrent_senders_on_two_servers,
    offline_catch_up_across_servers,
    read_updates_reach_other_servers,
    poisoned_records_are_dead_lettered,
    dead_letters_replay_across_servers,
    group_fan_out_across_servers,
    presence_across_servers,
    edits_cross_servers,
);

/// A server on the Kafka bus that stops cleanly deletes its inbox topic
/// (see ARCHITECTURE.md, "Inbox topics stay bounded"): publishing to it
/// works while it runs and is refused once it has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_cleanly_deletes_its_kafka_inbox() {
    let node = unique("leaving-");
    let mut kafka = chat_cluster::bus::KafkaConfig::new(kafka_brokers());
    kafka.topic_prefix = format!("{}-", unique("stop"));
    let probe = chat_cluster::bus::KafkaBus::connect(kafka.clone()).unwrap();
    let server = {
        let node = node.clone();
        TestServer::start_with(move |c| {
            c.cluster.node_id = node;
            c.cluster.registry = RegistryBackend::Redis {
                url: redis_url(),
                prefix: format!("{}:", unique("stop")),
            };
            c.cluster.bus = BusBackend::Kafka(kafka);
        })
        .await
    };
    probe
        .publish(&node, Bytes::from_static(b"while it runs"))
        .await
        .expect("the running server's inbox takes records");
    server.stop().await;
    // The broker learns of the deletion from its controller a moment after
    // it was answered; each refused publish waits its timeout (2 s).
    let started = tokio::time::Instant::now();
    while probe
        .publish(&node, Bytes::from_static(b"after it stopped"))
        .await
        .is_ok()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the stopped server's inbox still takes records"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

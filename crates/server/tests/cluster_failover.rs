//! Real `chat-server` processes on PostgreSQL, Redis and a Kafka-protocol
//! broker: when one is killed with SIGKILL, its sessions leave the registry
//! within the TTL by themselves, its users reconnect to the other server
//! and get everything they missed, and nothing acknowledged is lost.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chat_cluster::registry::RedisRegistry;
use chat_cluster::SessionRegistry;
use chat_proto as pb;
use chat_test_support::process::{free_addr, ServerProcess};
use chat_test_support::services::{fresh_postgres, kafka_brokers, redis_url, unique};
use chat_test_support::{Live, WAIT};

const BINARY: &str = env!("CARGO_BIN_EXE_chat-server");

async fn sigkill_one_of_two_servers(bus: &str) {
    let postgres = fresh_postgres().await;
    let prefix = format!("{}:", unique("t"));
    let (a_id, b_id) = (unique("a-"), unique("b-"));
    let common = |node: &str| {
        vec![
            ("CHAT_NODE_ID", node.to_owned()),
            ("CHAT_STORE", "postgres".to_owned()),
            ("CHAT_POSTGRES_URL", postgres.clone()),
            ("CHAT_REGISTRY", "redis".to_owned()),
            ("CHAT_REDIS_URL", redis_url()),
            ("CHAT_REDIS_PREFIX", prefix.clone()),
            ("CHAT_BUS", bus.to_owned()),
            ("CHAT_KAFKA_BROKERS", kafka_brokers()),
            (
                "CHAT_KAFKA_TOPIC_PREFIX",
                format!("{prefix}-").replace(':', ""),
            ),
            ("CHAT_SESSION_TTL_SECS", "1".to_owned()),
        ]
    };
    let (a_data, b_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServerProcess::start(
        Path::new(BINARY),
        a_data.path(),
        free_addr(),
        &common(&a_id),
    )
    .await;
    let mut b = ServerProcess::start(
        Path::new(BINARY),
        b_data.path(),
        free_addr(),
        &common(&b_id),
    )
    .await;

    let alice = a.register("alice").await;
    let bob = a.register("bob").await;

    // The conversation exists before the sessions open, so that they watch
    // each other's presence (contacts are read when a session starts).
    let first = a
        .chat(&alice)
        .await
        .send_message(chat_test_support::send_request(
            "bob",
            "before the crash",
            "k0",
        ))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    let mut alice_a = Live::open(a.chat(&alice).await).await;
    let mut bob_b = Live::open(b.chat(&bob).await).await;
    assert_eq!(bob_b.message().await, first);

    let registry = RedisRegistry::connect(&redis_url(), &prefix, Duration::from_secs(1))
        .await
        .unwrap();
    let nodes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        registry.locate(&["bob"]).await.unwrap()["bob"],
        nodes(&[&b_id])
    );

    b.kill().await;

    // Alice, on A, sees bob go offline once his sessions expire.
    loop {
        if let chat_proto::server_frame::Frame::Presence(p) = alice_a.frame().await {
            if p.username == "bob" && !p.online {
                break;
            }
        }
    }

    // Sends keep being acknowledged while bob is away.
    let mut acked = vec![first];
    for i in 1..=3 {
        alice_a
            .send_to("bob", &format!("while B is down {i}"), &format!("k{i}"))
            .await;
        acked.push(alice_a.ack().await.message.unwrap());
    }

    // B's sessions leave the registry by themselves, within the TTL.
    let started = tokio::time::Instant::now();
    while registry.locate(&["bob"]).await.unwrap().contains_key("bob") {
        assert!(
            started.elapsed() < WAIT,
            "a dead server's session never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bob's client moves to A: the replay brings everything, in order;
    // the client drops what it already showed by seq.
    let mut bob_a = Live::open(a.chat(&bob).await).await;
    let mut got = Vec::new();
    while got.len() < acked.len() {
        got.push(bob_a.message().await);
    }
    assert_eq!(got, acked);
    alice_a.send_to("bob", "after", "k9").await;
    let after = alice_a.ack().await.message.unwrap();
    assert_eq!(bob_a.message().await, after);
    assert_eq!(after.seq, 5);

    // Every acknowledged message is in the history exactly once.
    let page = a
        .chat(&bob)
        .await
        .get_history(pb::GetHistoryRequest {
            conversation_id: after.conversation_id.clone(),
            limit: 200,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_the_redis_bus() {
    sigkill_one_of_two_servers("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_the_kafka_bus() {
    sigkill_one_of_two_servers("kafka").await;
}

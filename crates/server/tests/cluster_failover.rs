//! Real `chat-server` processes on PostgreSQL, Redis and a Kafka-protocol
//! broker: when one is killed with SIGKILL, its sessions leave the registry
//! within the TTL by themselves, its users reconnect to the other server
//! and get everything they missed, and nothing acknowledged is lost.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use chat_cluster::registry::RedisRegistry;
use chat_cluster::SessionRegistry;
use chat_proto as pb;
use chat_proto::user_service_client::UserServiceClient;
use chat_test_support::services::{fresh_postgres, kafka_brokers, redis_url, unique};
use chat_test_support::{Live, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Node {
    child: Child,
    grpc: SocketAddr,
    _data: tempfile::TempDir,
}

/// Starts the binary with `env` and waits for its "listening" log line.
async fn start(env: &[(&str, String)]) -> Node {
    let grpc = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
    command
        .env("CHAT_GRPC_ADDR", grpc.to_string())
        .env("CHAT_HTTP_ADDR", free_port().to_string())
        .env("CHAT_DATA_DIR", data.path())
        .env("CHAT_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start chat-server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = async {
        while let Some(line) = lines.next_line().await.expect("the server's log") {
            if line.contains("chat server listening") {
                return true;
            }
        }
        false
    };
    assert!(
        tokio::time::timeout(WAIT, listening)
            .await
            .expect("server starts in time"),
        "server exited"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node {
        child,
        grpc,
        _data: data,
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn chat(node: &Node, secret: &str) -> chat_proto::AuthedChatClient {
    chat_proto::chat_service_client::ChatServiceClient::with_interceptor(
        channel(node.grpc).await,
        pb::Bearer::new(secret).unwrap(),
    )
}

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
            ("CHAT_KAFKA_FETCH_WAIT_MS", "5".to_owned()),
            ("CHAT_SESSION_TTL_SECS", "1".to_owned()),
        ]
    };
    let a = start(&common(&a_id)).await;
    let mut b = start(&common(&b_id)).await;

    let users = UserServiceClient::new(channel(a.grpc).await);
    let secret = |name: &'static str| {
        let mut users = users.clone();
        async move {
            users
                .register(pb::RegisterRequest {
                    username: name.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .secret
        }
    };
    let alice = secret("alice").await;
    let bob = secret("bob").await;

    let mut alice_a = Live::open(chat(&a, &alice).await).await;
    let mut bob_b = Live::open(chat(&b, &bob).await).await;
    alice_a.send_to("bob", "before the crash", "k0").await;
    let first = alice_a.ack().await.message.unwrap();
    assert_eq!(bob_b.message().await, first);

    let registry = RedisRegistry::connect(&redis_url(), &prefix, Duration::from_secs(1))
        .await
        .unwrap();
    let nodes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        registry.locate(&["bob"]).await.unwrap()["bob"],
        nodes(&[&b_id])
    );

    b.child.start_kill().expect("SIGKILL");
    b.child.wait().await.unwrap();

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
    let mut bob_a = Live::open(chat(&a, &bob).await).await;
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
    let page = chat(&a, &bob)
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

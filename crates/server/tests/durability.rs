//! The real `chat-server` binary, killed with SIGKILL: every message whose
//! send was acknowledged is in the history after a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use chat_proto as pb;
use chat_proto::chat_service_client::ChatServiceClient;
use chat_proto::user_service_client::UserServiceClient;
use chat_test_support::{send_request, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

/// A loopback port that was free a moment ago.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Starts the binary and waits for its "listening" log line.
async fn start(data_dir: &Path, grpc: SocketAddr, http: SocketAddr) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--grpc-addr")
        .arg(grpc.to_string())
        .arg("--http-addr")
        .arg(http.to_string())
        .env("CHAT_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start chat-server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = async {
        while let Some(line) = lines.next_line().await.expect("read the server's log") {
            if line.contains("chat server listening") {
                return true;
            }
        }
        false
    };
    assert!(tokio::time::timeout(WAIT, listening)
        .await
        .expect("server starts in time"));
    // Keep draining the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn acknowledged_messages_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut server = start(data.path(), grpc, http).await;

    let mut users = UserServiceClient::new(channel(grpc).await);
    let mut secrets = Vec::new();
    for name in ["alice", "bob"] {
        let r = users
            .register(pb::RegisterRequest {
                username: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        secrets.push(r.secret);
    }
    let bearer = |s: &str| pb::Bearer::new(s).unwrap();
    let mut alice = ChatServiceClient::with_interceptor(channel(grpc).await, bearer(&secrets[0]));

    // Acknowledged sends, then one more in flight when the kill lands.
    let mut acked = Vec::new();
    for i in 0..50 {
        let m = alice
            .send_message(send_request(
                "bob",
                &format!("durable {i}"),
                &format!("d{i}"),
            ))
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
        acked.push(m);
    }
    let mut in_flight = alice.clone();
    let racing = tokio::spawn(async move {
        in_flight
            .send_message(send_request("bob", "racing", "race"))
            .await
    });
    server.start_kill().expect("SIGKILL");
    server.wait().await.unwrap();
    let raced_ok = racing.await.unwrap().is_ok();

    let mut server = start(data.path(), grpc, http).await;
    let mut bob = ChatServiceClient::with_interceptor(channel(grpc).await, bearer(&secrets[1]));
    let page = bob
        .get_history(pb::GetHistoryRequest {
            conversation_id: acked[0].conversation_id.clone(),
            limit: 200,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&page.messages[..50], &acked[..]);
    // The racing send is either fully there (if it committed) or absent;
    // if it was acknowledged, it must be there.
    assert!(page.messages.len() <= 51);
    if raced_ok {
        assert_eq!(page.messages.len(), 51);
    }
    // A retry of the racing send after the restart stores it exactly once.
    let mut alice = ChatServiceClient::with_interceptor(channel(grpc).await, bearer(&secrets[0]));
    let retried = alice
        .send_message(send_request("bob", "racing", "race"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.message.unwrap().seq, 51);
    server.start_kill().unwrap();
    server.wait().await.unwrap();
}

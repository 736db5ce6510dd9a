//! The real `chat-server` binary, killed with SIGKILL: every message whose
//! send was acknowledged is in the history after a restart.

use std::path::Path;

use chat_proto as pb;
use chat_test_support::process::{free_addr, ServerProcess};
use chat_test_support::send_request;

const BINARY: &str = env!("CARGO_BIN_EXE_chat-server");

#[tokio::test]
async fn acknowledged_messages_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let grpc = free_addr();
    let mut server = ServerProcess::start(Path::new(BINARY), data.path(), grpc, &[]).await;
    let alice_secret = server.register("alice").await;
    let bob_secret = server.register("bob").await;
    let mut alice = server.chat(&alice_secret).await;

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
    server.kill().await;
    let raced_ok = racing.await.unwrap().is_ok();

    let server = ServerProcess::start(Path::new(BINARY), data.path(), grpc, &[]).await;
    let page = server
        .chat(&bob_secret)
        .await
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
    let retried = server
        .chat(&alice_secret)
        .await
        .send_message(send_request("bob", "racing", "race"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.message.unwrap().seq, 51);
}

//! Rate limits: registrations and connects per client address, sends per
//! user. Past a limit the answer says so and when to retry (HTTP 429 with
//! `Retry-After`, gRPC `RESOURCE_EXHAUSTED` with `retry-after-ms`), nothing
//! is changed, and other addresses and users are unaffected.

use std::net::{IpAddr, SocketAddr};

use chat_proto as pb;
use chat_test_support::{http, send_request, TestServer};
use tonic::Code;

/// A registration over HTTP from `from` (any 127.0.0.0/8 address): the
/// status, the `Retry-After` header if any, and the JSON body.
async fn register_from(
    from: IpAddr,
    server: SocketAddr,
    username: &str,
) -> (u16, Option<u64>, serde_json::Value) {
    let client = http::client(reqwest::Client::builder().local_address(from));
    let request = client
        .post(format!("http://{server}/v1/chat-apps/users"))
        .json(&serde_json::json!({ "username": username }));
    let answer = http::answer(request).await;
    let retry_after = answer.headers.get("retry-after").map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .expect("Retry-After in seconds")
    });
    (answer.status, retry_after, answer.json)
}

fn retry_after_ms(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("retry-after-ms")
        .expect("retry-after-ms")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn registrations_are_limited_per_client_address() {
    let server = TestServer::start_with(|c| c.limits.registrations_per_minute = 3).await;
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    for name in ["user1", "user2"] {
        let (status, _, _) = register_from(here, server.http_addr, name).await;
        assert_eq!(status, 200);
    }
    // gRPC and HTTP share the address's budget.
    server.register("user3").await;
    let (status, retry_after, body) = register_from(here, server.http_addr, "user4").await;
    assert_eq!(status, 429);
    let retry_after = retry_after.expect("a Retry-After header");
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(body["error"]["kind"], "resource_exhausted");
    assert_eq!(body["code"], 429);
    let refused = server
        .users()
        .await
        .register(pb::RegisterRequest {
            username: "user4".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(retry_after_ms(&refused) > 0);
    // Nothing was created; another address still registers.
    let missing = server
        .users()
        .await
        .get_user(pb::GetUserRequest {
            username: "user4".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
    let (status, _, _) = register_from(elsewhere, server.http_addr, "user4").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sends_are_limited_per_user_and_refused_sends_store_nothing() {
    let server = TestServer::start_with(|c| c.limits.sends_per_second = 3).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut chat = server.chat(&alice).await;
    let mut acked = 0;
    let refused = loop {
        match chat
            .send_message(send_request("bob", "hi", &format!("k{acked}")))
            .await
        {
            Ok(_) => acked += 1,
            Err(status) => break status,
        }
        assert!(acked <= 6, "no limit within 6 sends at 3 per second");
    };
    assert!(acked >= 3, "the burst of 3 went through ({acked})");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let wait = retry_after_ms(&refused);
    assert!((1..=1000).contains(&wait), "{wait}");

    // Over the stream: the refused send is acked with the error.
    let mut live = server.connect(&alice).await;
    live.send_to("bob", "burst", "s1").await;
    let ack = live.ack().await;
    if ack.message.is_some() {
        // A token came back meanwhile; the next one is refused.
        live.send_to("bob", "burst", "s2").await;
        let ack = live.ack().await;
        assert_eq!(ack.error.expect("refused").kind, "resource_exhausted");
    } else {
        assert_eq!(ack.error.expect("refused").kind, "resource_exhausted");
    }

    // Bob is not limited by alice's sends.
    let reply = server
        .chat(&bob)
        .await
        .send_message(send_request("alice", "fine", "b1"))
        .await
        .expect("another user sends")
        .into_inner()
        .message
        .unwrap();
    // History holds the accepted sends and bob's, nothing refused.
    let page = server
        .chat(&bob)
        .await
        .get_history(pb::GetHistoryRequest {
            conversation_id: reply.conversation_id,
            limit: 200,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len() as u64, reply.seq);
    assert!(page
        .messages
        .iter()
        .all(|m| m.body != "burst" || m.client_msg_id == "s1"));
}

#[tokio::test]
async fn connects_are_limited_per_client_address() {
    let server = TestServer::start_with(|c| c.limits.connects_per_minute = 2).await;
    let alice = server.register("alice").await;
    let _first = server.connect(&alice).await;
    let _second = server.connect(&alice).await;
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let refused = server
        .chat(&alice)
        .await
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(retry_after_ms(&refused) > 1000);
    // Unary calls are not connects.
    server
        .chat(&alice)
        .await
        .list_conversations(pb::ListConversationsRequest {})
        .await
        .expect("unary calls still work");
}

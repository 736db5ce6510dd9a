//! Chat over HTTP with the bearer secret: send, list, page history; the
//! same rules as over gRPC.

use chat_server::http::types::{ConversationList, Message, MessagePage};
use chat_test_support::{http_as, http_with, TestServer};

#[tokio::test]
async fn send_list_and_page_over_http() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let (a, b, c) = (&alice.secret, &bob.secret, &carol.secret);
    let addr = server.http_addr;
    let post = |who: &str, body: String| {
        let who = who.to_owned();
        async move {
            http_as(
                addr,
                &who,
                "POST",
                "/v1/chat-apps/messages",
                Some(body.as_bytes()),
            )
            .await
        }
    };

    let mut last = None;
    for i in 1..=3 {
        let sent = post(
            a,
            format!(r#"{{"to_user":"bob","body":"m{i}","client_msg_id":"h{i}"}}"#),
        )
        .await;
        assert_eq!(sent.status, 200, "{}", sent.body);
        let message: Message = sent.data();
        assert_eq!((message.seq, message.sender.as_str()), (i, "alice"));
        last = Some(message);
    }
    // Idempotent like gRPC.
    let again = post(
        a,
        r#"{"to_user":"bob","body":"m3","client_msg_id":"h3"}"#.into(),
    )
    .await;
    assert_eq!(Some(again.data::<Message>()), last);

    let list = http_as(addr, b, "GET", "/v1/chat-apps/conversations", None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let conversation = &list.data::<ConversationList>().conversations[0];
    assert_eq!(
        (conversation.peer.as_deref(), conversation.unread_count),
        (Some("alice"), 3)
    );
    let id = conversation.conversation_id.clone();

    let path = format!("/v1/chat-apps/conversations/{id}/messages?before_seq=3&limit=1");
    let page = http_as(addr, b, "GET", &path, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page: MessagePage = page.data();
    assert_eq!(page.messages[0].body, "m2");
    assert!(page.has_more);

    // Outsiders, missing and bad secrets, bad input: clear errors, nothing stored.
    let theirs = http_as(addr, c, "GET", &path, None).await;
    assert_eq!(
        (theirs.status, theirs.json["error"]["kind"].as_str()),
        (404, Some("not_found"))
    );
    let anonymous = http_with(
        server.http_addr,
        "GET",
        "/v1/chat-apps/conversations",
        &[],
        None,
    )
    .await;
    assert_eq!(anonymous.status, 401);
    let garbage = http_with(
        server.http_addr,
        "GET",
        "/v1/chat-apps/conversations",
        &[("Authorization", "Bearer nope")],
        None,
    )
    .await;
    assert_eq!(garbage.status, 401);
    for bad in [
        "{".to_owned(),
        r#"{"to_user":"bob","body":"","client_msg_id":"e1"}"#.to_owned(),
        r#"{"to_user":"bob","group_id":"g","body":"x","client_msg_id":"e2"}"#.to_owned(),
        r#"{"to_user":"bob","body":"x"}"#.to_owned(),
        // Fields the server sets cannot come from a client.
        r#"{"to_user":"bob","body":"x","client_msg_id":"e3","sender":"carol"}"#.to_owned(),
        r#"{"to_user":"bob","body":"x","client_msg_id":"e4","seq":99,"id":"m1"}"#.to_owned(),
        r#"{"to_user":"bob","body":"x","client_msg_id":"e5","sent_at_unix_ms":1}"#.to_owned(),
    ] {
        let refused = post(a, bad.clone()).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.body);
    }
    let bad_seq = http_as(
        addr,
        b,
        "GET",
        &format!("/v1/chat-apps/conversations/{id}/messages?before_seq=-1"),
        None,
    )
    .await;
    assert_eq!(bad_seq.status, 400);
    let list = http_as(addr, b, "GET", "/v1/chat-apps/conversations", None).await;
    assert_eq!(list.data::<ConversationList>().conversations[0].last_seq, 3);
    server.stop().await;
}

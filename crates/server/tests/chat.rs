//! Live chat, history, idempotency, catch-up, unread counts and
//! authorization, against a real server on a loopback port.

use chat_proto as pb;
use chat_proto::client_frame::Frame as In;
use chat_proto::server_frame::Frame as Out;
use chat_test_support::{send_request, TestServer};
use tonic::Code;

async fn send(
    server: &TestServer,
    from: &chat_test_support::TestUser,
    to: &str,
    body: &str,
    id: &str,
) -> pb::Message {
    server
        .chat(from)
        .await
        .send_message(send_request(to, body, id))
        .await
        .expect("send accepted")
        .into_inner()
        .message
        .expect("a message")
}

async fn history(
    server: &TestServer,
    user: &chat_test_support::TestUser,
    conversation_id: &str,
    before_seq: u64,
    after_seq: u64,
    limit: u32,
) -> Result<pb::GetHistoryResponse, tonic::Status> {
    server
        .chat(user)
        .await
        .get_history(pb::GetHistoryRequest {
            conversation_id: conversation_id.into(),
            before_seq,
            after_seq,
            limit,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn conversations(
    server: &TestServer,
    user: &chat_test_support::TestUser,
) -> Vec<pb::Conversation> {
    server
        .chat(user)
        .await
        .list_conversations(pb::ListConversationsRequest {})
        .await
        .expect("list")
        .into_inner()
        .conversations
}

#[tokio::test]
async fn live_one_to_one_delivery_with_acks() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut a = server.connect(&alice).await;
    let mut b = server.connect(&bob).await;

    a.send_to("bob", "hello bob", "a-1").await;
    let ack = a.ack().await;
    assert_eq!(ack.client_msg_id, "a-1");
    assert!(ack.error.is_none());
    let acked = ack.message.expect("the committed message");
    assert_eq!((acked.seq, acked.sender.as_str()), (1, "alice"));

    let got = b.message().await;
    assert_eq!(got, acked);
    assert_eq!(got.body, "hello bob");
    assert!(got.sent_at_unix_ms > 0);

    b.send_to("alice", "hi alice", "b-1").await;
    assert_eq!(b.ack().await.message.unwrap().seq, 2);
    let reply = a.message().await;
    assert_eq!(
        (reply.seq, reply.sender.as_str(), reply.body.as_str()),
        (2, "bob", "hi alice")
    );
    assert_eq!(reply.conversation_id, acked.conversation_id);

    // Errors come back in the ack; the stream stays usable.
    a.send_to("nobody", "hello?", "a-2").await;
    let failed = a.ack().await;
    assert_eq!(failed.error.expect("an error").kind, "not_found");
    a.push(In::Ping(pb::Ping { nonce: 7 })).await;
    loop {
        if let Out::Pong(p) = a.frame().await {
            assert_eq!(p.nonce, 7);
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn every_session_of_both_users_gets_each_message() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let a_phone = server.connect(&alice).await;
    let mut a_laptop = server.connect(&alice).await;
    let mut b_phone = server.connect(&bob).await;
    let mut b_laptop = server.connect(&bob).await;

    a_phone.send_to("bob", "one", "m1").await;
    let m1 = b_phone.message().await;
    assert_eq!(b_laptop.message().await, m1);
    // The sender's other device sees what it sent.
    assert_eq!(a_laptop.message().await, m1);

    // Unary sends reach the live sessions too.
    let m2 = send(&server, &bob, "alice", "two", "m2").await;
    assert_eq!(a_laptop.message().await, m2);
    assert_eq!(b_phone.message().await, m2);
    assert_eq!(b_laptop.message().await, m2);
    server.stop().await;
}

#[tokio::test]
async fn history_pages_in_both_directions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut conversation = String::new();
    for i in 1..=25 {
        conversation = send(&server, &alice, "bob", &format!("m{i}"), &format!("id{i}"))
            .await
            .conversation_id;
    }
    let seqs =
        |page: &pb::GetHistoryResponse| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();

    // Backward from the newest.
    let newest = history(&server, &bob, &conversation, 0, 0, 10)
        .await
        .unwrap();
    assert_eq!(seqs(&newest), (16..=25).collect::<Vec<_>>());
    assert!(newest.has_more);
    let older = history(&server, &bob, &conversation, 16, 0, 10)
        .await
        .unwrap();
    assert_eq!(seqs(&older), (6..=15).collect::<Vec<_>>());
    assert!(older.has_more);
    let oldest = history(&server, &bob, &conversation, 6, 0, 10)
        .await
        .unwrap();
    assert_eq!(seqs(&oldest), (1..=5).collect::<Vec<_>>());
    assert!(!oldest.has_more);
    assert_eq!(oldest.messages[0].body, "m1");

    // Forward from a known seq.
    let forward = history(&server, &alice, &conversation, 0, 10, 10)
        .await
        .unwrap();
    assert_eq!(seqs(&forward), (11..=20).collect::<Vec<_>>());
    assert!(forward.has_more);
    let rest = history(&server, &alice, &conversation, 0, 20, 10)
        .await
        .unwrap();
    assert_eq!(seqs(&rest), (21..=25).collect::<Vec<_>>());
    assert!(!rest.has_more);

    // A bounded range, and the default and maximum page sizes.
    let range = history(&server, &alice, &conversation, 13, 9, 0)
        .await
        .unwrap();
    assert_eq!(seqs(&range), vec![10, 11, 12]);
    let capped = history(&server, &alice, &conversation, 0, 0, 100_000)
        .await
        .unwrap();
    assert_eq!(capped.messages.len(), 25);
    server.stop().await;
}

#[tokio::test]
async fn pipelined_sends_keep_their_order_and_pages_are_capped_at_200() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    let mut live = server.connect(&alice).await;
    // Bodies of the largest size: a full page (over 800 KB) is served.
    let body = "x".repeat(chat_server::config::Limits::default().max_body_bytes);
    for i in 0..230 {
        live.send_to("bob", &body, &format!("c{i}")).await;
    }
    // Sends pipelined on one stream are committed in the order sent.
    let mut conversation = String::new();
    for i in 0..230 {
        let m = live.ack().await.message.expect("committed");
        assert_eq!(
            (m.seq, m.client_msg_id.as_str()),
            (i + 1, format!("c{i}").as_str())
        );
        conversation = m.conversation_id;
    }
    let page = history(&server, &alice, &conversation, 0, 0, 1000)
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 200);
    assert!(page.has_more);
    assert_eq!(page.messages.last().unwrap().seq, 230);
    server.stop().await;
}

#[tokio::test]
async fn a_retried_send_returns_the_original_and_stores_one_row() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut b = server.connect(&bob).await;

    let first = send(&server, &alice, "bob", "once", "same-id").await;
    let retry = send(&server, &alice, "bob", "once", "same-id").await;
    assert_eq!(retry, first);
    assert_eq!(b.message().await, first);

    // The same over the stream.
    let a = server.connect(&alice).await;
    a.send_to("bob", "once", "same-id").await;
    let mut a = a;
    assert_eq!(a.ack().await.message.unwrap(), first);

    let page = history(&server, &bob, &first.conversation_id, 0, 0, 50)
        .await
        .unwrap();
    assert_eq!(page.messages, vec![first.clone()]);
    let list = conversations(&server, &bob).await;
    assert_eq!(list[0].last_seq, 1);
    assert_eq!(list[0].unread_count, 1);

    // The retry was not delivered again: the next live message is seq 2.
    send(&server, &alice, "bob", "twice", "other-id").await;
    assert_eq!(b.message().await.seq, 2);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_senders_get_gap_free_sequences() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut tasks = Vec::new();
    for (who, peer) in [(&alice, "bob"), (&bob, "alice")] {
        for t in 0..4 {
            let client = server.chat(who).await;
            let prefix = format!("{}-{t}", who.username);
            let peer = peer.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut client = client;
                for i in 0..25 {
                    client
                        .send_message(send_request(&peer, "x", &format!("{prefix}-{i}")))
                        .await
                        .expect("send");
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conversation = conversations(&server, &alice).await.remove(0);
    assert_eq!(conversation.last_seq, 200);
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let page = history(
            &server,
            &alice,
            &conversation.conversation_id,
            0,
            after,
            200,
        )
        .await
        .unwrap();
        seqs.extend(page.messages.iter().map(|m| m.seq));
        after = *seqs.last().unwrap();
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test]
async fn an_offline_user_gets_everything_in_order_once_on_reconnect() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    // Bob was online once and saw message 1.
    let first = send(&server, &alice, "bob", "before", "m0").await;
    let mut b = server.connect(&bob).await;
    assert_eq!(b.message().await, first);
    b.push(In::Delivered(pb::Delivered {
        conversation_id: first.conversation_id.clone(),
        seq: 1,
    }))
    .await;
    // A ping answered means the delivered frame before it was handled.
    b.push(In::Ping(pb::Ping { nonce: 1 })).await;
    while !matches!(b.frame().await, Out::Pong(_)) {}
    drop(b);

    for i in 1..=5 {
        send(
            &server,
            &alice,
            "bob",
            &format!("while away {i}"),
            &format!("m{i}"),
        )
        .await;
    }

    let mut b = server.connect(&bob).await;
    let summary = &b.ready.conversations[0];
    assert_eq!(
        (
            summary.last_seq,
            summary.unread_count,
            summary.delivered_seq
        ),
        (6, 6, 1)
    );
    assert_eq!(summary.peer, "alice");
    let mut replayed = Vec::new();
    for _ in 0..5 {
        replayed.push(b.message().await);
    }
    assert_eq!(
        replayed.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
    assert_eq!(replayed[0].body, "while away 1");
    // Then live, without repeating anything.
    let live = send(&server, &alice, "bob", "now", "m6").await;
    assert_eq!(b.message().await, live);

    // Once acknowledged as delivered, nothing is replayed again.
    b.push(In::Delivered(pb::Delivered {
        conversation_id: live.conversation_id.clone(),
        seq: 7,
    }))
    .await;
    b.push(In::Ping(pb::Ping { nonce: 2 })).await;
    while !matches!(b.frame().await, Out::Pong(_)) {}
    drop(b);
    let mut b = server.connect(&bob).await;
    b.push(In::Ping(pb::Ping { nonce: 3 })).await;
    assert!(
        matches!(b.frame().await, Out::Pong(_)),
        "nothing replayed before the pong"
    );
    server.stop().await;
}

#[tokio::test]
async fn unread_counts_and_mark_read() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut bob_laptop = server.connect(&bob).await;
    for i in 1..=3 {
        send(&server, &alice, "bob", "hi", &format!("a{i}")).await;
    }
    // Bob's own message never counts as unread for him.
    let own = send(&server, &bob, "alice", "mine", "b1").await;
    let conversation = own.conversation_id.clone();
    let bob_view = conversations(&server, &bob).await.remove(0);
    assert_eq!(
        (bob_view.last_seq, bob_view.read_seq, bob_view.unread_count),
        (4, 0, 3)
    );
    assert_eq!(bob_view.last_message.unwrap(), own);
    let alice_view = conversations(&server, &alice).await.remove(0);
    assert_eq!(alice_view.unread_count, 1);

    let mut chat = server.chat(&bob).await;
    let read = chat
        .mark_read(pb::MarkReadRequest {
            conversation_id: conversation.clone(),
            seq: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((read.read_seq, read.unread_count), (2, 1));
    // The cursor moves forward only.
    let back = chat
        .mark_read(pb::MarkReadRequest {
            conversation_id: conversation.clone(),
            seq: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((back.read_seq, back.unread_count), (2, 1));
    // Beyond the end is clamped to the last message.
    let all = chat
        .mark_read(pb::MarkReadRequest {
            conversation_id: conversation.clone(),
            seq: 99,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.read_seq, all.unread_count), (4, 0));
    assert_eq!(conversations(&server, &bob).await[0].unread_count, 0);

    // Bob's other session hears of each move.
    let mut updates = Vec::new();
    while updates.len() < 3 {
        if let Out::ReadUpdate(u) = bob_laptop.frame().await {
            updates.push((u.read_seq, u.unread_count));
        }
    }
    assert_eq!(updates, vec![(2, 1), (2, 1), (4, 0)]);

    // Mark read over the stream.
    send(&server, &alice, "bob", "again", "a4").await;
    bob_laptop
        .push(In::MarkRead(pb::MarkReadRequest {
            conversation_id: conversation,
            seq: 5,
        }))
        .await;
    loop {
        if let Out::ReadUpdate(u) = bob_laptop.frame().await {
            assert_eq!((u.read_seq, u.unread_count), (5, 0));
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn outsiders_cannot_read_or_write_a_conversation() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    let carol = server.register("carol").await;
    let private = send(&server, &alice, "bob", "secret plans", "p1").await;

    let theirs = history(&server, &carol, &private.conversation_id, 0, 0, 50)
        .await
        .unwrap_err();
    let nonexistent = history(
        &server,
        &carol,
        "c00000000000000000000000000000000",
        0,
        0,
        50,
    )
    .await
    .unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(theirs.code(), nonexistent.code());
    assert_eq!(theirs.message(), nonexistent.message());

    let mut chat = server.chat(&carol).await;
    let read = chat
        .mark_read(pb::MarkReadRequest {
            conversation_id: private.conversation_id.clone(),
            seq: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::NotFound);
    let group = chat
        .send_message(pb::SendMessageRequest {
            target: Some(pb::send_message_request::Target::GroupId(
                private.conversation_id.clone(),
            )),
            body: "let me in".into(),
            client_msg_id: "g1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(group.code(), Code::NotFound);
    assert!(conversations(&server, &carol).await.is_empty());

    // Over the stream, too: typing and delivered into someone else's
    // conversation are refused, and the stream survives.
    let mut c = server.connect(&carol).await;
    c.push(In::Typing(pb::Typing {
        conversation_id: private.conversation_id.clone(),
        username: "alice".into(),
        ..Default::default()
    }))
    .await;
    let Out::Error(e) = c.frame().await else {
        panic!("expected an error frame")
    };
    assert_eq!(e.kind, "not_found");
    c.push(In::Delivered(pb::Delivered {
        conversation_id: private.conversation_id.clone(),
        seq: 1,
    }))
    .await;
    let Out::Error(e) = c.frame().await else {
        panic!("expected an error frame")
    };
    assert_eq!(e.kind, "not_found");

    // Nothing changed for the members.
    let page = history(&server, &alice, &private.conversation_id, 0, 0, 50)
        .await
        .unwrap();
    assert_eq!(page.messages, vec![private]);
    server.stop().await;
}

#[tokio::test]
async fn bad_sends_are_refused_with_clear_errors() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut chat = server.chat(&alice).await;
    let attempt = |req: pb::SendMessageRequest| {
        let mut chat = chat.clone();
        async move { chat.send_message(req).await.map(|r| r.into_inner()) }
    };
    let cases = [
        (send_request("bob", "", "e1"), Code::InvalidArgument),
        (send_request("bob", "  \n ", "e2"), Code::InvalidArgument),
        (
            send_request("bob", &"x".repeat(4097), "e3"),
            Code::InvalidArgument,
        ),
        (send_request("bob", "hi", ""), Code::InvalidArgument),
        (send_request("bob", "a\0b", "e9"), Code::InvalidArgument),
        (send_request("bob", "hi", "e\0"), Code::InvalidArgument),
        (
            send_request("bob", "hi", &"k".repeat(65)),
            Code::InvalidArgument,
        ),
        (send_request("alice", "me", "e4"), Code::InvalidArgument),
        (send_request("NO SUCH", "hi", "e5"), Code::InvalidArgument),
        (send_request("nobody", "hi", "e6"), Code::NotFound),
        (
            pb::SendMessageRequest {
                target: None,
                body: "hi".into(),
                client_msg_id: "e7".into(),
            },
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let err = attempt(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(!err.message().is_empty());
    }
    // A frame beyond the decode limit is refused before it is parsed,
    // with gRPC's answer to a message over the limit.
    let huge = attempt(send_request("bob", &"x".repeat(100 * 1024), "e8"))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    // The same on a stream: it ends with the same answer.
    let mut live = server.connect(&alice).await;
    live.send_to("bob", &"z".repeat(100 * 1024), "e9").await;
    let ended = loop {
        match live.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().contains("too large"), "{ended:?}");

    // Exactly at the limit is fine, and nothing before it was stored.
    let ok = attempt(send_request("bob", &"y".repeat(4096), "ok"))
        .await
        .unwrap();
    assert_eq!(ok.message.unwrap().seq, 1);
    let list = chat
        .list_conversations(pb::ListConversationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.conversations[0].last_seq, 1);
    let _ = bob;
    server.stop().await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_disconnected_and_others_keep_going() {
    let server = TestServer::start_with(|c| {
        c.limits.session_queue = 8;
        c.limits.max_body_bytes = 60 * 1024;
        c.limits.max_frame_bytes = 128 * 1024;
    })
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut stuck = server.connect(&bob).await;
    let mut reader = server.connect(&bob).await;

    // Large messages fill the transport's buffers (HTTP/2 windows and
    // socket buffers, several MiB on loopback); the stuck session's queue
    // then overflows.
    let body = "z".repeat(60 * 1024);
    let mut chat = server.chat(&alice).await;
    for i in 0..300 {
        chat.send_message(send_request("bob", &body, &format!("s{i}")))
            .await
            .unwrap();
        assert_eq!(reader.message().await.seq, i + 1);
    }
    // The stuck session ends with RESOURCE_EXHAUSTED after what it buffered.
    let mut seen = 0;
    let end = loop {
        match stuck.next().await {
            Some(Ok(Out::Message(_))) => seen += 1,
            Some(Ok(_)) => {}
            Some(Err(status)) => break Some(status),
            None => break None,
        }
    };
    let status = end.expect("the stuck session ends with a status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(seen < 300, "the stuck session got everything ({seen})");
    server.stop().await;
}

#[tokio::test]
async fn read_receipts_reach_the_sender_and_history_counts_readers() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut a = server.connect(&alice).await;
    let first = send(&server, &alice, "bob", "one", "r1").await;
    send(&server, &alice, "bob", "two", "r2").await;
    server
        .chat(&bob)
        .await
        .mark_read(pb::MarkReadRequest {
            conversation_id: first.conversation_id.clone(),
            seq: 1,
        })
        .await
        .unwrap();
    // Alice's session hears that bob read up to 1 (her own counts are not
    // part of it).
    loop {
        if let Out::ReadUpdate(u) = a.frame().await {
            assert_eq!(
                (u.username.as_str(), u.read_seq, u.unread_count),
                ("bob", 1, 0)
            );
            break;
        }
    }
    let page = history(&server, &alice, &first.conversation_id, 0, 0, 50)
        .await
        .unwrap();
    let receipts: Vec<(u64, u32)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.read_count))
        .collect();
    assert_eq!(receipts, vec![(1, 1), (2, 0)]);
    server.stop().await;
}

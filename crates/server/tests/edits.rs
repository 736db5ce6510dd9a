//! Editing and deleting: only your own messages, the change ordered in the
//! conversation, live to every session, replayed on catch-up, and shown in
//! history as the latest text or a tombstone.

use chat_proto as pb;
use chat_test_support::{send_request, TestServer};
use tonic::Code;

#[tokio::test]
async fn senders_edit_and_delete_and_everyone_sees_it_in_order() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut b = server.connect(&bob).await;
    let mut chat = server.chat(&alice).await;
    let first = chat
        .send_message(send_request("bob", "helo", "s1"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    let second = chat
        .send_message(send_request("bob", "oops", "s2"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(b.message().await, first);
    assert_eq!(b.message().await, second);
    let conversation = first.conversation_id.clone();

    let edit = pb::EditMessageRequest {
        conversation_id: conversation.clone(),
        seq: 1,
        body: "hello".into(),
        client_msg_id: "e1".into(),
    };
    let edited = chat
        .edit_message(edit.clone())
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(
        (
            edited.seq,
            edited.kind,
            edited.target_seq,
            edited.body.as_str()
        ),
        (3, pb::MessageKind::MessageEdited as i32, 1, "hello")
    );
    assert_eq!(b.message().await, edited);
    // A retry changes nothing and returns the same event.
    assert_eq!(
        chat.edit_message(edit)
            .await
            .unwrap()
            .into_inner()
            .event
            .unwrap(),
        edited
    );

    let delete = pb::DeleteMessageRequest {
        conversation_id: conversation.clone(),
        seq: 2,
        client_msg_id: "d1".into(),
    };
    let deleted = chat
        .delete_message(delete)
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(
        (deleted.seq, deleted.kind, deleted.target_seq),
        (4, pb::MessageKind::MessageDeleted as i32, 2)
    );
    assert_eq!(b.message().await, deleted);

    // History: the latest text with its mark, and a tombstone.
    let page = server
        .chat(&bob)
        .await
        .get_history(pb::GetHistoryRequest {
            conversation_id: conversation.clone(),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(
        (page[0].body.as_str(), page[0].edited, page[0].deleted),
        ("hello", true, false)
    );
    assert_eq!(
        (page[1].body.as_str(), page[1].edited, page[1].deleted),
        ("", false, true)
    );
    assert_eq!(page.len(), 4);

    // Catch-up replays the changes in order.
    drop(b);
    let mut again = server.connect(&bob).await;
    let replayed: Vec<u64> = {
        let mut seqs = Vec::new();
        for _ in 0..4 {
            seqs.push(again.message().await.seq);
        }
        seqs
    };
    assert_eq!(replayed, vec![1, 2, 3, 4]);
    server.stop().await;
}

#[tokio::test]
async fn nobody_changes_what_is_not_theirs() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let m = server
        .chat(&alice)
        .await
        .send_message(send_request("bob", "mine", "s1"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    let edit = |seq: u64, key: &str| pb::EditMessageRequest {
        conversation_id: m.conversation_id.clone(),
        seq,
        body: "changed".into(),
        client_msg_id: key.into(),
    };
    let not_yours = server
        .chat(&bob)
        .await
        .edit_message(edit(1, "b1"))
        .await
        .unwrap_err();
    let outsider = server
        .chat(&carol)
        .await
        .edit_message(edit(1, "c1"))
        .await
        .unwrap_err();
    let missing = server
        .chat(&alice)
        .await
        .edit_message(edit(42, "a1"))
        .await
        .unwrap_err();
    for status in [&not_yours, &outsider, &missing] {
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), missing.message());
    }
    let delete = server
        .chat(&bob)
        .await
        .delete_message(pb::DeleteMessageRequest {
            conversation_id: m.conversation_id.clone(),
            seq: 1,
            client_msg_id: "b2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(delete.code(), Code::NotFound);
    let empty = server
        .chat(&alice)
        .await
        .edit_message(pb::EditMessageRequest {
            body: " ".into(),
            ..edit(1, "a2")
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    // Nothing changed.
    let page = server
        .chat(&bob)
        .await
        .get_history(pb::GetHistoryRequest {
            conversation_id: m.conversation_id.clone(),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(
        (page.messages[0].body.as_str(), page.messages[0].edited),
        ("mine", false)
    );
    server.stop().await;
}

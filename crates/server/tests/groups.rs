//! Groups on one server: membership as ordered events, fan-out to every
//! member's sessions, roles, the join point, and outsiders kept out.

use chat_proto as pb;
use chat_proto::server_frame::Frame as Out;
use chat_test_support::{Live, TestServer, TestUser};
use tonic::Code;

fn to_group(group_id: &str, body: &str, id: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        target: Some(pb::send_message_request::Target::GroupId(group_id.into())),
        body: body.into(),
        client_msg_id: id.into(),
    }
}

async fn create(
    server: &TestServer,
    owner: &TestUser,
    name: &str,
    members: &[&str],
) -> pb::CreateGroupResponse {
    server
        .chat(owner)
        .await
        .create_group(pb::CreateGroupRequest {
            name: name.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        })
        .await
        .expect("create group")
        .into_inner()
}

/// The next message frame that is a membership event.
async fn next_event(live: &mut Live) -> pb::Message {
    loop {
        let m = live.message().await;
        if m.kind != pb::MessageKind::Text as i32 {
            return m;
        }
    }
}

#[tokio::test]
async fn a_group_message_reaches_every_member_and_nobody_else() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let mut b = server.connect(&bob).await;
    let mut c = server.connect(&carol).await;
    let mut d = server.connect(&dave).await;

    let created = create(&server, &alice, "Team", &["bob", "Carol"]).await;
    let group = created.group.unwrap();
    let g = group.group_id.clone();
    assert_eq!(group.name, "Team");
    let roles: Vec<(String, i32)> = group
        .members
        .iter()
        .map(|m| (m.username.clone(), m.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("alice".into(), pb::GroupRole::Owner as i32),
            ("bob".into(), pb::GroupRole::Member as i32),
            ("carol".into(), pb::GroupRole::Member as i32)
        ]
    );
    let event = created.event.unwrap();
    assert_eq!(
        (event.seq, event.kind),
        (1, pb::MessageKind::GroupCreated as i32)
    );
    assert_eq!(event.members, vec!["bob".to_string(), "carol".to_string()]);
    // Members hear of the group live.
    assert_eq!(b.message().await, event);
    assert_eq!(c.message().await, event);

    let mut a = server.connect(&alice).await;
    a.push(pb::client_frame::Frame::Send(to_group(
        &g,
        "hello team",
        "t1",
    )))
    .await;
    let sent = a.ack().await.message.expect("committed");
    assert_eq!((sent.seq, sent.conversation_id.as_str()), (2, g.as_str()));
    assert_eq!(b.message().await, sent);
    assert_eq!(c.message().await, sent);

    // Dave is not in it: everything answers like a group that does not exist.
    let mut outsider = server.chat(&dave).await;
    let history = |id: &str| pb::GetHistoryRequest {
        conversation_id: id.into(),
        limit: 50,
        ..Default::default()
    };
    let theirs = outsider.get_history(history(&g)).await.unwrap_err();
    let nothing = outsider
        .get_history(history("g00000000000000000000000000000000"))
        .await
        .unwrap_err();
    assert_eq!(
        (theirs.code(), theirs.message()),
        (nothing.code(), nothing.message())
    );
    assert_eq!(
        outsider
            .send_message(to_group(&g, "hi", "d1"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let get = outsider
        .get_group(pb::GetGroupRequest {
            group_id: g.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let add = outsider
        .add_members(pb::AddMembersRequest {
            group_id: g.clone(),
            usernames: vec!["dave".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(add.code(), Code::NotFound);
    // Dave's session heard nothing at all.
    d.push(pb::client_frame::Frame::Ping(pb::Ping { nonce: 5 }))
        .await;
    assert!(matches!(d.frame().await, Out::Pong(_)));

    // Read counts per message: carol read the greeting, bob did not.
    server
        .chat(&carol)
        .await
        .mark_read(pb::MarkReadRequest {
            conversation_id: g.clone(),
            seq: 2,
        })
        .await
        .unwrap();
    let page = server
        .chat(&alice)
        .await
        .get_history(pb::GetHistoryRequest {
            conversation_id: g.clone(),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.read_count)
            .collect::<Vec<_>>(),
        vec![1, 1]
    );

    // The group is in the members' conversation lists, with its name.
    let list = server
        .chat(&bob)
        .await
        .list_conversations(pb::ListConversationsRequest {})
        .await
        .unwrap();
    let entry = list
        .into_inner()
        .conversations
        .into_iter()
        .find(|c| c.conversation_id == g)
        .unwrap();
    assert_eq!(
        (entry.kind, entry.name.as_str(), entry.group_id.as_str()),
        (pb::ConversationKind::Group as i32, "Team", g.as_str())
    );
    // Membership events never count as unread.
    assert_eq!((entry.last_seq, entry.unread_count), (2, 1));
    server.stop().await;
}

#[tokio::test]
async fn members_join_and_leave_through_ordered_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let g = create(&server, &alice, "Team", &["bob", "carol"])
        .await
        .group
        .unwrap()
        .group_id;
    let mut owner = server.chat(&alice).await;
    owner
        .send_message(to_group(&g, "before dave", "m1"))
        .await
        .unwrap();

    // Only the owner (or an admin) adds.
    let mut member = server.chat(&bob).await;
    let denied = member
        .add_members(pb::AddMembersRequest {
            group_id: g.clone(),
            usernames: vec!["dave".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let mut d = server.connect(&dave).await;
    let added = owner
        .add_members(pb::AddMembersRequest {
            group_id: g.clone(),
            usernames: vec!["dave".into(), "bob".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let event = added.event.unwrap();
    assert_eq!(
        (event.seq, event.kind),
        (3, pb::MessageKind::MembersAdded as i32)
    );
    assert_eq!(event.members, vec!["dave".to_string()]);
    assert_eq!(d.message().await, event);

    // Dave reads from the point he joined.
    let page = server
        .chat(&dave)
        .await
        .get_history(pb::GetHistoryRequest {
            conversation_id: g.clone(),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3]
    );
    let welcome = owner
        .send_message(to_group(&g, "welcome", "m2"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(d.message().await, welcome);

    // Removal: carol is told, then is out.
    let mut c = server.connect(&carol).await;
    let removed = owner
        .remove_member(pb::RemoveMemberRequest {
            group_id: g.clone(),
            username: "carol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let event = removed.event.unwrap();
    assert_eq!(
        (event.kind, event.members.clone()),
        (
            pb::MessageKind::MemberRemoved as i32,
            vec!["carol".to_string()]
        )
    );
    // (Carol's session first replays the earlier events.)
    let mut seen = next_event(&mut c).await;
    while seen.seq < event.seq {
        seen = next_event(&mut c).await;
    }
    assert_eq!(seen, event);
    let mut carol_chat = server.chat(&carol).await;
    assert_eq!(
        carol_chat
            .send_message(to_group(&g, "still here?", "c1"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let gone = carol_chat
        .get_history(pb::GetHistoryRequest {
            conversation_id: g.clone(),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // Nothing said after the removal reaches her.
    owner
        .send_message(to_group(&g, "after carol", "m3"))
        .await
        .unwrap();
    c.push(pb::client_frame::Frame::Ping(pb::Ping { nonce: 1 }))
        .await;
    assert!(matches!(c.frame().await, Out::Pong(_)));

    // The owner leaves; the longest-standing member (bob) takes over.
    let left = owner
        .leave_group(pb::LeaveGroupRequest {
            group_id: g.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.event.unwrap().kind, pb::MessageKind::MemberLeft as i32);
    let group = member
        .get_group(pb::GetGroupRequest {
            group_id: g.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let roles: Vec<(String, i32)> = group
        .members
        .iter()
        .map(|m| (m.username.clone(), m.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("bob".into(), pb::GroupRole::Owner as i32),
            ("dave".into(), pb::GroupRole::Member as i32)
        ]
    );
    // A full replay rebuilds the member list from the events.
    let bob_history = member
        .get_history(pb::GetHistoryRequest {
            conversation_id: g.clone(),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = bob_history.messages.iter().map(|m| m.kind).collect();
    use pb::MessageKind as K;
    assert_eq!(
        kinds,
        vec![
            K::GroupCreated,
            K::Text,
            K::MembersAdded,
            K::Text,
            K::MemberRemoved,
            K::Text,
            K::MemberLeft
        ]
        .into_iter()
        .map(|k| k as i32)
        .collect::<Vec<_>>()
    );
    server.stop().await;
}

#[tokio::test]
async fn group_requests_are_validated_and_bounded() {
    let server = TestServer::start_with(|c| {
        c.limits.max_group_members = 3;
        c.limits.max_groups_per_user = 2;
    })
    .await;
    let alice = server.register("alice").await;
    for u in ["bob", "carol", "dave"] {
        server.register(u).await;
    }
    let mut chat = server.chat(&alice).await;
    let create = |name: &str, members: &[&str]| pb::CreateGroupRequest {
        name: name.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    };
    let cases = [
        (create("", &["bob"]), Code::InvalidArgument),
        (create(&"n".repeat(65), &["bob"]), Code::InvalidArgument),
        (create("ok", &["not a name"]), Code::InvalidArgument),
        (create("ok", &["nobody"]), Code::NotFound),
        (
            create("big", &["bob", "carol", "dave"]),
            Code::ResourceExhausted,
        ),
    ];
    for (req, code) in cases {
        let err = chat.create_group(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
    }
    chat.create_group(create("one", &["bob"])).await.unwrap();
    chat.create_group(create("two", &[])).await.unwrap();
    let third = chat.create_group(create("three", &[])).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);
    // Nothing was created by the refused requests.
    let list = chat
        .list_conversations(pb::ListConversationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.conversations.len(), 2);
    server.stop().await;
}

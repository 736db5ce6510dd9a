//! The behaviour every storage backend must have. Each backend's test file
//! calls every function here with a fresh, empty store.

use std::sync::Arc;

use chat_store::{HistoryQuery, NewMessage, NewUser, Store, StoreError, Target};

fn user(name: &str) -> NewUser {
    let mut token_hash = [0u8; 32];
    token_hash[..name.len()].copy_from_slice(name.as_bytes());
    NewUser {
        username: name.into(),
        name: format!("{name}!"),
        phone: "1".into(),
        token_hash,
    }
}

fn direct(from: &str, to: &str, body: &str, id: &str) -> NewMessage {
    NewMessage {
        sender: from.into(),
        target: Target::Direct(to.into()),
        body: body.into(),
        client_msg_id: id.into(),
        sent_at_unix_ms: None,
    }
}

async fn users(store: &dyn Store, names: &[&str]) {
    for name in names {
        store.create_user(user(name)).await.unwrap();
    }
}

pub async fn users_are_unique_and_found_by_token(store: Arc<dyn Store>) {
    users(&*store, &["alice"]).await;
    assert!(matches!(
        store.create_user(user("alice")).await,
        Err(StoreError::AlreadyExists)
    ));
    let profile = store.get_user("alice").await.unwrap().unwrap();
    assert_eq!(
        (profile.name.as_str(), profile.phone.as_str()),
        ("alice!", "1")
    );
    assert!(store.get_user("bob").await.unwrap().is_none());
    assert_eq!(
        store
            .user_by_token_hash(&user("alice").token_hash)
            .await
            .unwrap()
            .as_deref(),
        Some("alice")
    );
    assert!(store.user_by_token_hash(&[9; 32]).await.unwrap().is_none());

    // A replaced token finds no one; the new one finds its user; a second
    // replacement of the old token fails and changes nothing.
    let first = user("alice").token_hash;
    assert!(store
        .replace_token("alice", &first, &[7; 32])
        .await
        .unwrap());
    assert!(!store
        .replace_token("alice", &first, &[6; 32])
        .await
        .unwrap());
    assert!(store.user_by_token_hash(&[6; 32]).await.unwrap().is_none());
    assert!(store
        .user_by_token_hash(&user("alice").token_hash)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store.user_by_token_hash(&[7; 32]).await.unwrap().as_deref(),
        Some("alice")
    );
    assert!(!store
        .replace_token("nobody", &[9; 32], &[8; 32])
        .await
        .unwrap());
    assert!(store.user_by_token_hash(&[8; 32]).await.unwrap().is_none());
}

/// Users page in byte order of their names; a reset replaces whatever
/// token the user has and names the one it replaced.
pub async fn users_page_by_name_and_tokens_reset(store: Arc<dyn Store>) {
    assert!(store.list_users(None, 10).await.unwrap().is_empty());
    let names = [
        "carol", "alice", "bob", "a.b", "a_b", "a-b", "dave", "alice2",
    ];
    users(&*store, &names).await;
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    let page = |after: Option<String>, limit| {
        let store = store.clone();
        async move {
            store
                .list_users(after.as_deref(), limit)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.username)
                .collect::<Vec<_>>()
        }
    };
    // Every page continues after the last name of the previous one.
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..names.len() {
        let got = page(after.clone(), 3).await;
        assert!(got.len() <= 3);
        if got.is_empty() {
            break;
        }
        after = got.last().cloned();
        seen.extend(got);
    }
    assert_eq!(seen, sorted);
    assert_eq!(page(None, 0).await, sorted, "0 is the default page");
    assert_eq!(page(Some("b".into()), 0).await, ["bob", "carol", "dave"]);
    assert_eq!(page(Some("bob".into()), 1).await, ["carol"]);
    assert!(page(Some("zzz".into()), 10).await.is_empty());
    assert_eq!(page(Some("bob\0x".into()), 10).await, ["carol", "dave"]);
    let alice = store.list_users(Some("a_b"), 1).await.unwrap();
    assert_eq!(alice, vec![store.get_user("alice").await.unwrap().unwrap()]);
    assert_eq!(alice[0].name, "alice!");
    assert!(alice[0].created_at_unix_ms > 0);

    let first = user("bob").token_hash;
    assert_eq!(
        store.reset_token("bob", &[5; 32]).await.unwrap(),
        Some(first)
    );
    assert!(store.user_by_token_hash(&first).await.unwrap().is_none());
    assert_eq!(
        store.user_by_token_hash(&[5; 32]).await.unwrap().as_deref(),
        Some("bob")
    );
    assert_eq!(
        store.reset_token("bob", &[4; 32]).await.unwrap(),
        Some([5; 32])
    );
    assert!(!store
        .replace_token("bob", &[5; 32], &[3; 32])
        .await
        .unwrap());
    assert_eq!(store.reset_token("nobody", &[2; 32]).await.unwrap(), None);
    assert!(store.user_by_token_hash(&[2; 32]).await.unwrap().is_none());
    // A hash another user holds is refused and changes nothing.
    assert!(store.reset_token("carol", &[4; 32]).await.is_err());
    assert_eq!(
        store
            .user_by_token_hash(&user("carol").token_hash)
            .await
            .unwrap()
            .as_deref(),
        Some("carol")
    );
}

pub async fn direct_messages_get_gap_free_seqs_and_members(store: Arc<dyn Store>) {
    users(&*store, &["alice", "bob", "carol"]).await;
    let a = store
        .append_message(direct("alice", "bob", "1", "a1"))
        .await
        .unwrap();
    let b = store
        .append_message(direct("bob", "alice", "2", "b1"))
        .await
        .unwrap();
    assert_eq!((a.message.seq, b.message.seq), (1, 2));
    assert_eq!(a.message.conversation_id, b.message.conversation_id);
    assert_eq!(a.members, vec!["alice".to_string(), "bob".to_string()]);
    assert!(!a.duplicate);
    let other = store
        .append_message(direct("alice", "carol", "x", "a2"))
        .await
        .unwrap();
    assert_ne!(other.message.conversation_id, a.message.conversation_id);
    assert_eq!(other.message.seq, 1);

    assert!(matches!(
        store
            .append_message(direct("alice", "nobody", "x", "a3"))
            .await,
        Err(StoreError::NotFound)
    ));
    // A sender that does not exist cannot start a conversation.
    assert!(matches!(
        store
            .append_message(direct("ghost", "alice", "x", "g1"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .append_message(direct("alice", "alice", "x", "a4"))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .append_message(NewMessage {
                target: Target::Group(a.message.conversation_id.clone()),
                ..direct("carol", "x", "x", "c1")
            })
            .await,
        Err(StoreError::NotFound)
    ));
}

pub async fn concurrent_appends_are_gap_free(store: Arc<dyn Store>) {
    users(&*store, &["alice", "bob"]).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let (from, to) = if t % 2 == 0 {
                    ("alice", "bob")
                } else {
                    ("bob", "alice")
                };
                store
                    .append_message(direct(from, to, "x", &format!("{t}-{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conversation = store.conversations("alice").await.unwrap().remove(0);
    assert_eq!(conversation.last_seq, 200);
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let q = HistoryQuery {
            after_seq: Some(after),
            before_seq: None,
            limit: 200,
        };
        let page = store.history("alice", &conversation.id, q).await.unwrap();
        seqs.extend(page.messages.iter().map(|m| m.seq));
        after = *seqs.last().unwrap();
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
}

pub async fn batched_appends_keep_order_and_fail_alone(store: Arc<dyn Store>) {
    users(&*store, &["alice", "bob"]).await;
    let first = store
        .append_message(direct("alice", "bob", "before", "b0"))
        .await
        .unwrap();
    let answers = store
        .append_messages(vec![
            direct("alice", "bob", "one", "b1"),
            direct("alice", "nobody", "lost", "b2"),
            direct("alice", "bob", "two", "b3"),
            // A retry inside the batch, and of an earlier message.
            direct("alice", "bob", "one again", "b1"),
            direct("alice", "bob", "before again", "b0"),
        ])
        .await;
    assert_eq!(answers.len(), 5);
    assert!(matches!(answers[1], Err(StoreError::NotFound)));
    let ok = |i: usize| answers[i].as_ref().unwrap();
    assert_eq!((ok(0).message.seq, ok(0).duplicate), (2, false));
    assert_eq!((ok(2).message.seq, ok(2).duplicate), (3, false));
    assert_eq!(
        (ok(3).message.id.as_str(), ok(3).duplicate),
        (ok(0).message.id.as_str(), true)
    );
    assert_eq!(ok(4).message.id, first.message.id);
    assert!(ok(4).duplicate);
    let mut members = ok(2).members.clone();
    members.sort();
    assert_eq!(members, ["alice", "bob"]);
    let page = store
        .history(
            "bob",
            &first.message.conversation_id,
            HistoryQuery::default(),
        )
        .await
        .unwrap();
    let bodies: Vec<_> = page.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["before", "one", "two"]);
    assert!(store.append_messages(Vec::new()).await.is_empty());
}

pub async fn retries_return_the_original(store: Arc<dyn Store>) {
    users(&*store, &["alice", "bob"]).await;
    let first = store
        .append_message(direct("alice", "bob", "hi", "k"))
        .await
        .unwrap();
    let again = store
        .append_message(direct("alice", "bob", "changed", "k"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    // The key is per sender: bob may use the same one.
    let bobs = store
        .append_message(direct("bob", "alice", "hi", "k"))
        .await
        .unwrap();
    assert_eq!(bobs.message.seq, 2);
    assert_eq!(store.conversations("alice").await.unwrap()[0].last_seq, 2);
}

pub async fn history_is_for_members_only_and_pages(store: Arc<dyn Store>) {
    users(&*store, &["alice", "bob", "carol"]).await;
    let mut id = String::new();
    for i in 1..=7 {
        id = store
            .append_message(direct("alice", "bob", &i.to_string(), &i.to_string()))
            .await
            .unwrap()
            .message
            .conversation_id;
    }
    let q = |before, after, limit| HistoryQuery {
        before_seq: before,
        after_seq: after,
        limit,
    };
    let seqs = |p: chat_store::HistoryPage| {
        (
            p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            p.has_more,
        )
    };
    assert_eq!(
        seqs(store.history("bob", &id, q(None, None, 3)).await.unwrap()),
        (vec![5, 6, 7], true)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &id, q(Some(5), None, 3))
                .await
                .unwrap()
        ),
        (vec![2, 3, 4], true)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &id, q(Some(2), None, 3))
                .await
                .unwrap()
        ),
        (vec![1], false)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &id, q(None, Some(4), 2))
                .await
                .unwrap()
        ),
        (vec![5, 6], true)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &id, q(None, Some(6), 2))
                .await
                .unwrap()
        ),
        (vec![7], false)
    );
    assert!(matches!(
        store.history("carol", &id, q(None, None, 3)).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.history("carol", "nope", q(None, None, 3)).await,
        Err(StoreError::NotFound)
    ));
    // Bounds beyond what a seq can be mean "no bound".
    let page = store
        .history("bob", &id, q(Some(u64::MAX), None, 2))
        .await
        .unwrap();
    assert_eq!(seqs(page), (vec![6, 7], true));
    let page = store
        .history("bob", &id, q(None, Some(u64::MAX), 2))
        .await
        .unwrap();
    assert_eq!(seqs(page), (vec![], false));
    assert!(matches!(
        store.members("carol", &id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.members("bob", &id).await.unwrap(),
        vec!["alice".to_string(), "bob".to_string()]
    );
}

pub async fn cursors_move_forward_only_and_unread_is_exact(store: Arc<dyn Store>) {
    users(&*store, &["alice", "bob", "carol"]).await;
    let m = store
        .append_message(direct("alice", "bob", "1", "1"))
        .await
        .unwrap()
        .message;
    store
        .append_message(direct("bob", "alice", "2", "2"))
        .await
        .unwrap();
    store
        .append_message(direct("alice", "bob", "3", "3"))
        .await
        .unwrap();
    let id = m.conversation_id;
    let bob = store.conversations("bob").await.unwrap().remove(0);
    assert_eq!(
        (
            bob.unread_count,
            bob.read_seq,
            bob.delivered_seq,
            bob.peer.as_deref()
        ),
        (2, 0, 0, Some("alice"))
    );
    assert_eq!(bob.last_message.unwrap().seq, 3);
    let read = store.mark_read("bob", &id, 1).await.unwrap();
    assert_eq!((read.read_seq, read.unread_count), (1, 1));
    let back = store.mark_read("bob", &id, 0).await.unwrap();
    assert_eq!(back.read_seq, 1);
    let clamped = store.mark_read("bob", &id, 1000).await.unwrap();
    assert_eq!((clamped.read_seq, clamped.unread_count), (3, 0));
    assert_eq!(store.mark_delivered("alice", &id, 2).await.unwrap(), 2);
    assert_eq!(store.mark_delivered("alice", &id, 1).await.unwrap(), 2);
    assert_eq!(store.mark_delivered("alice", &id, 99).await.unwrap(), 3);
    assert!(matches!(
        store.mark_read("carol", &id, 1).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.mark_delivered("carol", &id, 1).await,
        Err(StoreError::NotFound)
    ));
    let alice = store.conversations("alice").await.unwrap().remove(0);
    assert_eq!((alice.unread_count, alice.delivered_seq), (1, 3));
    assert_eq!(
        store.read_cursors("alice", &id).await.unwrap(),
        vec![("alice".to_string(), 0), ("bob".to_string(), 3)]
    );
    assert!(matches!(
        store.read_cursors("carol", &id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.contacts("alice", 100).await.unwrap(),
        vec!["bob".to_string()]
    );
    assert!(store.contacts("carol", 100).await.unwrap().is_empty());
}

fn limits() -> chat_store::GroupLimits {
    chat_store::GroupLimits {
        max_members: 100,
        max_groups_per_user: 100,
    }
}

fn to_group(from: &str, group: &str, body: &str, id: &str) -> NewMessage {
    NewMessage {
        target: Target::Group(group.into()),
        ..direct(from, "-", body, id)
    }
}

pub async fn groups_change_membership_with_ordered_events(store: Arc<dyn Store>) {
    use chat_store::{GroupChange, GroupRole, MessageKind};
    users(&*store, &["alice", "bob", "carol", "dave"]).await;
    let created = store
        .change_group(
            GroupChange::Create {
                owner: "alice".into(),
                name: "Team".into(),
                members: vec!["bob".into(), "carol".into(), "alice".into()],
            },
            limits(),
        )
        .await
        .unwrap();
    let g = created.group.id.clone();
    let roles: Vec<(String, GroupRole, u64)> = created
        .group
        .members
        .iter()
        .map(|m| (m.username.clone(), m.role, m.joined_seq))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("alice".into(), GroupRole::Owner, 1),
            ("bob".into(), GroupRole::Member, 1),
            ("carol".into(), GroupRole::Member, 1)
        ]
    );
    assert_eq!(created.group.name, "Team");
    // Group members see each other's presence only in groups small enough.
    assert_eq!(
        store.contacts("alice", 3).await.unwrap(),
        vec!["bob".to_string(), "carol".to_string()]
    );
    assert!(store.contacts("alice", 2).await.unwrap().is_empty());
    let event = created.event.unwrap();
    assert_eq!(
        (event.seq, event.kind, event.sender.as_str()),
        (1, MessageKind::GroupCreated, "alice")
    );
    assert_eq!(event.members, vec!["bob".to_string(), "carol".to_string()]);
    assert_eq!(event.body, "", "whom an event concerns is not text");
    assert_eq!(
        created.notify,
        vec!["alice".to_string(), "bob".to_string(), "carol".to_string()]
    );

    let hello = store
        .append_message(to_group("alice", &g, "hello", "g1"))
        .await
        .unwrap();
    assert_eq!(hello.message.seq, 2);
    assert_eq!(hello.members.len(), 3);

    // Only the owner and admins add; outsiders see no group at all.
    let add_dave = |actor: &str| GroupChange::Add {
        actor: actor.into(),
        group_id: g.clone(),
        usernames: vec!["dave".into(), "bob".into()],
    };
    // Every backend refuses in the same words.
    assert!(matches!(
        store.change_group(add_dave("bob"), limits()).await,
        Err(StoreError::Forbidden(text)) if text == "only the owner and admins add members"
    ));
    assert!(matches!(
        store.change_group(add_dave("dave"), limits()).await,
        Err(StoreError::NotFound)
    ));
    let added = store
        .change_group(add_dave("alice"), limits())
        .await
        .unwrap();
    let event = added.event.unwrap();
    assert_eq!((event.seq, event.kind), (3, MessageKind::MembersAdded));
    assert_eq!(event.members, vec!["dave".to_string()]);
    assert_eq!(added.group.members.len(), 4);
    assert_eq!(
        added
            .group
            .members
            .iter()
            .find(|m| m.username == "dave")
            .unwrap()
            .joined_seq,
        3
    );
    // Adding only existing members changes nothing.
    let again = store
        .change_group(
            GroupChange::Add {
                actor: "alice".into(),
                group_id: g.clone(),
                usernames: vec!["bob".into()],
            },
            limits(),
        )
        .await
        .unwrap();
    assert!(again.event.is_none());
    assert!(matches!(
        store
            .change_group(
                GroupChange::Add {
                    actor: "alice".into(),
                    group_id: g.clone(),
                    usernames: vec!["nobody".into()]
                },
                limits()
            )
            .await,
        Err(StoreError::NotFound)
    ));

    // A new member reads from the event that added them on.
    let all = HistoryQuery {
        before_seq: None,
        after_seq: None,
        limit: 50,
    };
    let seqs = |p: chat_store::HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.history("dave", &g, all).await.unwrap()), vec![3]);
    assert_eq!(
        seqs(store.history("bob", &g, all).await.unwrap()),
        vec![1, 2, 3]
    );
    // History gives events back with whom they concern, not as text.
    let events: Vec<(MessageKind, Vec<String>, String)> = store
        .history("bob", &g, all)
        .await
        .unwrap()
        .messages
        .into_iter()
        .filter(|m| m.kind != MessageKind::Text)
        .map(|m| (m.kind, m.members, m.body))
        .collect();
    assert_eq!(
        events,
        [
            (
                MessageKind::GroupCreated,
                vec!["bob".to_string(), "carol".to_string()],
                String::new()
            ),
            (
                MessageKind::MembersAdded,
                vec!["dave".to_string()],
                String::new()
            ),
        ]
    );
    let after_zero = HistoryQuery {
        before_seq: None,
        after_seq: Some(0),
        limit: 50,
    };
    assert_eq!(
        seqs(store.history("dave", &g, after_zero).await.unwrap()),
        vec![3]
    );

    store
        .append_message(to_group("alice", &g, "welcome dave", "g2"))
        .await
        .unwrap();
    let summary = |user: &'static str| {
        let store = store.clone();
        let g = g.clone();
        async move {
            store
                .conversations(user)
                .await
                .unwrap()
                .into_iter()
                .find(|c| c.id == g)
                .unwrap()
        }
    };
    let dave = summary("dave").await;
    assert_eq!(
        (
            dave.kind,
            dave.name.as_deref(),
            dave.last_seq,
            dave.unread_count
        ),
        (chat_store::ConversationKind::Group, Some("Team"), 4, 1)
    );
    // Membership events never count as unread.
    assert_eq!(summary("bob").await.unread_count, 2);

    // Removal: the removed member is told, then sees nothing and cannot post.
    assert!(matches!(
        store
            .change_group(
                GroupChange::Remove {
                    actor: "bob".into(),
                    group_id: g.clone(),
                    username: "carol".into()
                },
                limits()
            )
            .await,
        Err(StoreError::Forbidden(text)) if text == "only the owner and admins remove members"
    ));
    let removed = store
        .change_group(
            GroupChange::Remove {
                actor: "alice".into(),
                group_id: g.clone(),
                username: "carol".into(),
            },
            limits(),
        )
        .await
        .unwrap();
    let event = removed.event.unwrap();
    assert_eq!((event.seq, event.kind), (5, MessageKind::MemberRemoved));
    // Every member after the change and the one removed, sorted alike by
    // every backend.
    assert_eq!(removed.notify, ["alice", "bob", "carol", "dave"]);
    assert!(!removed.group.members.iter().any(|m| m.username == "carol"));
    assert!(matches!(
        store.history("carol", &g, all).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.group("carol", &g).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .append_message(to_group("carol", &g, "let me back", "c1"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(!store
        .conversations("carol")
        .await
        .unwrap()
        .iter()
        .any(|c| c.id == g));
    // Removing oneself is leaving, which the owner may do too ...
    let left = store
        .change_group(
            GroupChange::Remove {
                actor: "alice".into(),
                group_id: g.clone(),
                username: "alice".into(),
            },
            limits(),
        )
        .await
        .unwrap();
    assert_eq!(
        left.event.map(|e| (e.kind, e.members)),
        Some((MessageKind::MemberLeft, vec!["alice".to_string()]))
    );
    assert_eq!(left.notify, ["alice", "bob", "dave"]);
    // ... but may leave; the longest-standing member becomes owner.
    let group = store.group("bob", &g).await.unwrap();
    let owner = group
        .members
        .iter()
        .find(|m| m.role == GroupRole::Owner)
        .unwrap();
    assert_eq!(owner.username, "bob");
    assert_eq!(group.last_seq, 6);
    assert!(matches!(
        store.group("alice", &g).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.group("bob", "nope").await,
        Err(StoreError::NotFound)
    ));
}

pub async fn group_limits_are_enforced(store: Arc<dyn Store>) {
    use chat_store::{GroupChange, GroupLimits};
    users(&*store, &["alice", "bob", "carol", "dave"]).await;
    let small = GroupLimits {
        max_members: 3,
        max_groups_per_user: 2,
    };
    let create = |members: &[&str]| GroupChange::Create {
        owner: "alice".into(),
        name: "g".into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    };
    assert!(matches!(
        store
            .change_group(create(&["bob", "carol", "dave"]), small)
            .await,
        Err(StoreError::Limit(text)) if text == "a group has at most 3 members"
    ));
    let g = store
        .change_group(create(&["bob", "carol"]), small)
        .await
        .unwrap()
        .group
        .id;
    let add = GroupChange::Add {
        actor: "alice".into(),
        group_id: g.clone(),
        usernames: vec!["dave".into()],
    };
    assert!(matches!(
        store.change_group(add, small).await,
        Err(StoreError::Limit(_))
    ));
    store.change_group(create(&["bob"]), small).await.unwrap();
    assert!(matches!(
        store.change_group(create(&[]), small).await,
        Err(StoreError::Limit(text)) if text == "alice is already in 2 groups, the most allowed"
    ));
    assert!(matches!(
        store.change_group(create(&["nobody"]), limits()).await,
        Err(StoreError::NotFound)
    ));
}

// ------------------------------------------------------------ dead letters

fn dead_letter(node: &str, reason: &str, payload: &[u8]) -> chat_store::NewDeadLetter {
    chat_store::NewDeadLetter {
        node: node.into(),
        reason: reason.into(),
        payload: payload.to_vec(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub async fn dead_letters_keep_reason_time_and_payload(store: Arc<dyn Store>) {
    use chat_store::DeadLetterQuery;
    assert_eq!(store.count_dead_letters().await.unwrap(), 0);
    assert!(store
        .dead_letters(DeadLetterQuery::default())
        .await
        .unwrap()
        .is_empty());
    let before = now_ms();
    // Payloads are bytes, not text: invalid UTF-8 and NULs survive.
    let binary = b"\xff\x00 not json \x00".to_vec();
    let first = store
        .add_dead_letter(dead_letter(
            "node-b",
            "undecodable: expected value",
            &binary,
        ))
        .await
        .unwrap();
    let second = store
        .add_dead_letter(dead_letter(
            "node-a",
            "publish to node-b failed",
            b"{\"v\":1}",
        ))
        .await
        .unwrap();
    let third = store
        .add_dead_letter(dead_letter("node-a", "empty", b""))
        .await
        .unwrap();
    let after = now_ms();
    assert!(first.id < second.id && second.id < third.id, "ids increase");
    assert_eq!(
        (first.node.as_str(), first.reason.as_str(), &first.payload),
        ("node-b", "undecodable: expected value", &binary)
    );
    assert!((before..=after).contains(&first.created_at_unix_ms));
    assert_eq!(
        (first.replayed_at_unix_ms, first.replay_attempts),
        (None, 0)
    );
    assert_eq!(
        store.dead_letter(first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.dead_letter(third.id).await.unwrap(),
        Some(third.clone())
    );
    assert_eq!(store.dead_letter(third.id + 1000).await.unwrap(), None);
    assert_eq!(store.dead_letter(u64::MAX).await.unwrap(), None);
    assert_eq!(store.count_dead_letters().await.unwrap(), 3);

    // Oldest first, in bounded pages that follow each other.
    let all = store
        .dead_letters(DeadLetterQuery::default())
        .await
        .unwrap();
    assert_eq!(all, vec![first.clone(), second.clone(), third.clone()]);
    let page = |limit, after_id| DeadLetterQuery {
        limit,
        after_id,
        pending_only: false,
    };
    let one = store.dead_letters(page(2, None)).await.unwrap();
    assert_eq!(one, vec![first.clone(), second.clone()]);
    let two = store.dead_letters(page(2, Some(second.id))).await.unwrap();
    assert_eq!(two, vec![third.clone()]);
    assert!(store
        .dead_letters(page(2, Some(third.id)))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .dead_letters(page(2, Some(u64::MAX)))
        .await
        .unwrap()
        .is_empty());
}

pub async fn dead_letter_pages_are_bounded(store: Arc<dyn Store>) {
    use chat_store::{DeadLetterQuery, MAX_PAGE};
    // Concurrent writers (several servers) get distinct ids.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..60 {
                let letter = dead_letter("n", &format!("{t}-{i}"), &[t, i]);
                ids.push(store.add_dead_letter(letter).await.unwrap().id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 240);
    assert_eq!(store.count_dead_letters().await.unwrap(), 240);
    let query = |limit| DeadLetterQuery {
        limit,
        ..DeadLetterQuery::default()
    };
    assert_eq!(store.dead_letters(query(0)).await.unwrap().len(), 50);
    let capped = store.dead_letters(query(u32::MAX)).await.unwrap();
    assert_eq!(capped.len(), MAX_PAGE as usize);
    let listed: Vec<u64> = capped.iter().map(|l| l.id).collect();
    assert_eq!(listed, ids[..MAX_PAGE as usize]);
}

pub async fn dead_letter_replays_are_recorded_and_purges_select(store: Arc<dyn Store>) {
    use chat_store::{DeadLetterPurge, DeadLetterQuery};
    let a = store
        .add_dead_letter(dead_letter("n", "a", b"a"))
        .await
        .unwrap();
    let b = store
        .add_dead_letter(dead_letter("n", "b", b"b"))
        .await
        .unwrap();

    // A failed attempt is counted and leaves the letter pending.
    let tried = store.record_replay(a.id, false).await.unwrap();
    assert_eq!(
        (tried.replay_attempts, tried.replayed_at_unix_ms),
        (1, None)
    );
    let started = now_ms();
    let replayed = store.record_replay(a.id, true).await.unwrap();
    assert_eq!(replayed.replay_attempts, 2);
    let at = replayed.replayed_at_unix_ms.expect("marked replayed");
    assert!((started..=now_ms()).contains(&at));
    assert_eq!(
        store.dead_letter(a.id).await.unwrap(),
        Some(replayed.clone())
    );
    // A later failed attempt keeps the time of the last delivery.
    let again = store.record_replay(a.id, false).await.unwrap();
    assert_eq!(
        (again.replay_attempts, again.replayed_at_unix_ms),
        (3, Some(at))
    );
    assert!(matches!(
        store.record_replay(b.id + 1000, true).await,
        Err(StoreError::NotFound)
    ));

    let pending = store
        .dead_letters(DeadLetterQuery {
            pending_only: true,
            ..DeadLetterQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(pending, vec![b.clone()]);

    // Purges delete what they select and say how many.
    let purge = |before_unix_ms, replayed_only| DeadLetterPurge {
        before_unix_ms,
        replayed_only,
    };
    assert_eq!(
        store
            .purge_dead_letters(purge(Some(a.created_at_unix_ms), false))
            .await
            .unwrap(),
        0,
        "nothing was created before the first letter"
    );
    assert_eq!(
        store.purge_dead_letters(purge(None, true)).await.unwrap(),
        1
    );
    assert_eq!(store.dead_letter(a.id).await.unwrap(), None);
    assert_eq!(store.count_dead_letters().await.unwrap(), 1);
    assert_eq!(
        store
            .purge_dead_letters(purge(Some(b.created_at_unix_ms + 1), false))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.count_dead_letters().await.unwrap(), 0);
    assert_eq!(
        store
            .purge_dead_letters(DeadLetterPurge::default())
            .await
            .unwrap(),
        0
    );
    // An id is never reused, even after everything was purged.
    let c = store
        .add_dead_letter(dead_letter("n", "c", b"c"))
        .await
        .unwrap();
    assert!(c.id > b.id);
    assert_eq!(
        store
            .purge_dead_letters(DeadLetterPurge::default())
            .await
            .unwrap(),
        1
    );
}

pub async fn senders_edit_and_delete_their_messages_through_ordered_events(store: Arc<dyn Store>) {
    use chat_store::{MessageChange, MessageKind};
    users(&*store, &["alice", "bob", "carol"]).await;
    let first = store
        .append_message(direct("alice", "bob", "helo", "e1"))
        .await
        .unwrap()
        .message;
    let second = store
        .append_message(direct("alice", "bob", "oops", "e2"))
        .await
        .unwrap()
        .message;
    let id = first.conversation_id.clone();
    let change = |editor: &str, seq: u64, body: Option<&str>, key: &str| MessageChange {
        editor: editor.into(),
        conversation_id: id.clone(),
        seq,
        body: body.map(str::to_owned),
        client_msg_id: key.into(),
    };

    let edited = store
        .change_message(change("alice", 1, Some("hello"), "x1"))
        .await
        .unwrap();
    assert!(!edited.duplicate);
    let event = edited.message;
    assert_eq!(
        (event.seq, event.kind, event.target_seq, event.body.as_str()),
        (3, MessageKind::MessageEdited, 1, "hello")
    );
    assert_eq!(edited.members, vec!["alice".to_string(), "bob".to_string()]);
    // A retry returns the same event.
    let again = store
        .change_message(change("alice", 1, Some("hello"), "x1"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, event);

    let deleted = store
        .change_message(change("alice", 2, None, "x2"))
        .await
        .unwrap()
        .message;
    assert_eq!(
        (deleted.seq, deleted.kind, deleted.target_seq),
        (4, MessageKind::MessageDeleted, 2)
    );

    // History shows the latest text with the edited mark, and a tombstone.
    let all = HistoryQuery {
        before_seq: None,
        after_seq: None,
        limit: 50,
    };
    let page = store.history("bob", &id, all).await.unwrap().messages;
    assert_eq!(
        (page[0].body.as_str(), page[0].edited, page[0].deleted),
        ("hello", true, false)
    );
    assert_eq!(page[0].id, first.id);
    assert_eq!(
        (page[1].body.as_str(), page[1].edited, page[1].deleted),
        ("", false, true)
    );
    assert_eq!(page[1].id, second.id);
    assert_eq!(page.len(), 4);

    // Only the sender's own, live text messages can change; everything
    // else looks like a message that does not exist.
    for (editor, seq, body, key) in [
        ("bob", 1, Some("mine now"), "b1"),
        ("carol", 1, Some("hi"), "c1"),
        ("alice", 2, Some("undelete"), "x3"),
        ("alice", 3, Some("edit the edit"), "x4"),
        ("alice", 99, Some("nothing"), "x5"),
        ("alice", 2, None, "x6"),
    ] {
        let result = store.change_message(change(editor, seq, body, key)).await;
        assert!(
            matches!(result, Err(StoreError::NotFound)),
            "{editor} {seq}: {result:?}"
        );
    }
    // Edits and deletes never count as unread.
    let bob = store.conversations("bob").await.unwrap().remove(0);
    assert_eq!((bob.last_seq, bob.unread_count), (4, 1));

    // Deleting an edited message takes its text out of every event that
    // carried it: history (and so replay) keeps none of it.
    store
        .change_message(change("alice", 1, None, "x7"))
        .await
        .unwrap();
    let page = store.history("bob", &id, all).await.unwrap().messages;
    let texts: Vec<(u64, MessageKind, &str)> = page
        .iter()
        .map(|m| (m.seq, m.kind, m.body.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            (1, MessageKind::Text, ""),
            (2, MessageKind::Text, ""),
            (3, MessageKind::MessageEdited, ""),
            (4, MessageKind::MessageDeleted, ""),
            (5, MessageKind::MessageDeleted, ""),
        ]
    );
    assert!(page[0].deleted);
    // A retry of the edit answers its event, without the text.
    let retry = store
        .change_message(change("alice", 1, Some("hello"), "x1"))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.message.seq, retry.message.body.as_str()), (3, ""));
}

pub async fn retention_deletes_old_messages_in_bounded_batches(store: Arc<dyn Store>) {
    use chat_store::{GroupChange, MessageChange, MessageKind};
    users(&*store, &["alice", "bob", "carol"]).await;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    let now = now_ms();
    let aged = |message: NewMessage, age: i64| NewMessage {
        sent_at_unix_ms: Some(now - age),
        ..message
    };
    // alice–bob: seqs 1..=5 from 14 down to 10 days ago (alice the odd
    // ones, bob the even ones), then 6..=8 now.
    let mut ab = String::new();
    for seq in 1..=5i64 {
        let (from, to) = if seq % 2 == 1 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        let body = format!("old {seq}");
        let message = aged(
            direct(from, to, &body, &format!("o{seq}")),
            (15 - seq) * DAY,
        );
        let stored = store.append_message(message).await.unwrap().message;
        assert_eq!(stored.seq, seq as u64);
        assert_eq!(stored.sent_at_unix_ms, now - (15 - seq) * DAY);
        ab = stored.conversation_id;
    }
    for (seq, from, to) in [
        (6, "alice", "bob"),
        (7, "bob", "alice"),
        (8, "alice", "bob"),
    ] {
        let m = store
            .append_message(direct(from, to, "new", &format!("r{seq}")))
            .await
            .unwrap()
            .message;
        assert_eq!(m.seq, seq);
        assert!(m.sent_at_unix_ms >= now);
    }
    // An edit of a recent message (9) and the deletion of an old one (10):
    // both events are recent.
    let change = |seq: u64, body: Option<&str>, key: &str| MessageChange {
        editor: "alice".into(),
        conversation_id: ab.clone(),
        seq,
        body: body.map(str::to_owned),
        client_msg_id: key.into(),
    };
    store
        .change_message(change(6, Some("newer"), "x9"))
        .await
        .unwrap();
    store.change_message(change(3, None, "x10")).await.unwrap();
    // alice–carol: 30 and 20 days old, then 12 hours old (younger than
    // the cutoff of one day).
    let ac = store
        .append_message(aged(direct("alice", "carol", "c1", "c1"), 30 * DAY))
        .await
        .unwrap()
        .message
        .conversation_id;
    for (key, age) in [("c2", 20 * DAY), ("c3", 12 * HOUR)] {
        store
            .append_message(aged(direct("alice", "carol", key, key), age))
            .await
            .unwrap();
    }
    // A group whose creation event is recent and whose last message, its
    // only text, is 15 days old.
    let group = store
        .change_group(
            GroupChange::Create {
                owner: "alice".into(),
                name: "g".into(),
                members: vec!["bob".into()],
            },
            limits(),
        )
        .await
        .unwrap()
        .group
        .id;
    store
        .append_message(aged(to_group("alice", &group, "g2", "g2"), 15 * DAY))
        .await
        .unwrap();
    // Cursors inside what retention deletes.
    assert_eq!(
        store.mark_read("bob", &ab, 4).await.unwrap().unread_count,
        3
    );
    assert_eq!(store.mark_delivered("bob", &ab, 5).await.unwrap(), 5);
    let unread = |list: &[chat_store::ConversationSummary], id: &str| {
        let c = list.iter().find(|c| c.id == id).unwrap();
        (c.last_seq, c.read_seq, c.delivered_seq, c.unread_count)
    };
    let bob = store.conversations("bob").await.unwrap();
    assert_eq!(unread(&bob, &ab), (10, 4, 5, 3));
    assert_eq!(unread(&bob, &group), (2, 0, 0, 1));
    let alice = store.conversations("alice").await.unwrap();
    assert_eq!(unread(&alice, &ab), (10, 0, 0, 3));

    let cutoff = now - DAY;
    // Bad input changes nothing (the count below proves it).
    assert!(matches!(
        store.delete_messages_before(cutoff, 0).await,
        Err(StoreError::Invalid(_))
    ));
    // Eight messages are older than the cutoff; batches of 3 delete them
    // oldest first, and the one after the last finds nothing.
    let first = store.delete_messages_before(cutoff, 3).await.unwrap();
    assert_eq!(first, 3);
    // The three oldest: alice–carol's two and the group's text.
    let seqs = |p: chat_store::HistoryPage| {
        (
            p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            p.has_more,
        )
    };
    let all = HistoryQuery::default();
    assert_eq!(
        seqs(store.history("carol", &ac, all).await.unwrap()),
        (vec![3], false)
    );
    assert_eq!(
        seqs(store.history("bob", &ab, all).await.unwrap()).0,
        (1..=10).collect::<Vec<u64>>()
    );
    let mut batches = vec![first];
    for _ in 0..10 {
        let n = store.delete_messages_before(cutoff, 3).await.unwrap();
        batches.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(batches, [3, 3, 2, 0]);
    assert_eq!(store.delete_messages_before(cutoff, 3).await.unwrap(), 0);

    // History starts after the gap, in both directions, and pages across it.
    let q = |before, after, limit| HistoryQuery {
        before_seq: before,
        after_seq: after,
        limit,
    };
    for user in ["alice", "bob"] {
        assert_eq!(
            seqs(store.history(user, &ab, all).await.unwrap()),
            (vec![6, 7, 8, 9, 10], false)
        );
    }
    assert_eq!(
        seqs(store.history("bob", &ab, q(None, None, 2)).await.unwrap()),
        (vec![9, 10], true)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &ab, q(Some(9), None, 2))
                .await
                .unwrap()
        ),
        (vec![7, 8], true)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &ab, q(Some(7), None, 2))
                .await
                .unwrap()
        ),
        (vec![6], false)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &ab, q(Some(6), None, 2))
                .await
                .unwrap()
        ),
        (vec![], false)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &ab, q(None, Some(0), 2))
                .await
                .unwrap()
        ),
        (vec![6, 7], true)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &ab, q(None, Some(2), 3))
                .await
                .unwrap()
        ),
        (vec![6, 7, 8], true)
    );
    assert_eq!(
        seqs(
            store
                .history("bob", &ab, q(None, Some(8), 3))
                .await
                .unwrap()
        ),
        (vec![9, 10], false)
    );
    let page = store.history("bob", &ab, all).await.unwrap();
    let kept: Vec<(&str, bool, MessageKind)> = page
        .messages
        .iter()
        .map(|m| (m.body.as_str(), m.edited, m.kind))
        .collect();
    assert_eq!(
        kept,
        [
            ("newer", true, MessageKind::Text),
            ("new", false, MessageKind::Text),
            ("new", false, MessageKind::Text),
            ("newer", false, MessageKind::MessageEdited),
            ("", false, MessageKind::MessageDeleted),
        ]
    );
    assert_eq!(
        seqs(store.history("carol", &ac, all).await.unwrap()),
        (vec![3], false)
    );
    assert_eq!(
        seqs(store.history("bob", &group, all).await.unwrap()),
        (vec![1], false)
    );

    // Seqs and cursors stay; unread counts count what remains; a preview
    // whose message is gone is absent.
    let bob = store.conversations("bob").await.unwrap();
    assert_eq!(unread(&bob, &ab), (10, 4, 5, 2));
    assert_eq!(unread(&bob, &group), (2, 0, 0, 0));
    let preview = |list: &[chat_store::ConversationSummary], id: &str| {
        let c = list.iter().find(|c| c.id == id).unwrap();
        c.last_message.as_ref().map(|m| m.seq)
    };
    assert_eq!(preview(&bob, &ab), Some(10));
    assert_eq!(preview(&bob, &group), None);
    let alice = store.conversations("alice").await.unwrap();
    assert_eq!(unread(&alice, &ab), (10, 0, 0, 1));
    assert_eq!(unread(&alice, &ac), (3, 0, 0, 0));
    assert_eq!(
        store.read_cursors("alice", &ab).await.unwrap(),
        vec![("alice".to_string(), 0), ("bob".to_string(), 4)]
    );
    let group_info = store.group("bob", &group).await.unwrap();
    assert_eq!((group_info.last_seq, group_info.members.len()), (2, 2));

    // A deleted message cannot be changed; a kept one's retry still finds
    // the original.
    assert!(matches!(
        store.change_message(change(1, Some("x"), "x11")).await,
        Err(StoreError::NotFound)
    ));
    let retry = store
        .append_message(direct("bob", "alice", "new", "r7"))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message.seq, 7);

    // The chat goes on with the next seqs, never a deleted one.
    let next = store
        .append_message(direct("bob", "alice", "after", "n1"))
        .await
        .unwrap()
        .message;
    assert_eq!((next.conversation_id.as_str(), next.seq), (ab.as_str(), 11));
    let next = store
        .append_message(to_group("alice", &group, "after", "n2"))
        .await
        .unwrap()
        .message;
    assert_eq!(next.seq, 3);
    let alice = store.conversations("alice").await.unwrap();
    assert_eq!(unread(&alice, &ab), (11, 0, 0, 2));
    let read = store.mark_read("alice", &ab, 1000).await.unwrap();
    assert_eq!((read.read_seq, read.unread_count), (11, 0));
    assert_eq!(
        seqs(
            store
                .history("alice", &ab, q(None, Some(9), 5))
                .await
                .unwrap()
        ),
        (vec![10, 11], false)
    );
}

/// A healthy store answers its health probe, and a refused request (an
/// unknown conversation, a taken name, a message to oneself) is not a
/// failure of the backend: only failures count.
pub async fn health_probe_answers_and_refusals_are_not_failures(store: Arc<dyn Store>) {
    store
        .ping()
        .await
        .expect("a healthy store answers its probe");
    assert_eq!(store.failures(), 0);
    users(&*store, &["alice", "bob"]).await;
    assert!(matches!(
        store.create_user(user("alice")).await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        store
            .history("alice", "c-unknown", HistoryQuery::default())
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(store
        .append_message(direct("alice", "alice", "to myself", "1"))
        .await
        .is_err());
    let answers = store
        .append_messages(vec![
            direct("alice", "bob", "hi", "2"),
            direct("alice", "nobody", "hi", "3"),
        ])
        .await;
    assert!(answers[0].is_ok() && answers[1].is_err(), "{answers:?}");
    store.ping().await.expect("the probe still answers");
    assert_eq!(store.failures(), 0, "refusals are not failures");
}

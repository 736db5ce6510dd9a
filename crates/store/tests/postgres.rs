//! The conformance suite against the PostgreSQL backend, plus what only a
//! shared database has: several stores ("servers") writing one
//! conversation, identical retries racing, migrations racing, and a
//! database that is unreachable or slow.
//!
//! Needs a PostgreSQL server: `CHAT_TEST_POSTGRES_URL` names it (with a user
//! that may create databases). Every test creates its own database
//! `chat_test_<random>` and drops it at the end. Without the variable the
//! tests fail: they never skip silently.

mod conformance;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_store::postgres::{PostgresConfig, PostgresStore};
use chat_store::{
    ConversationKind, GroupChange, GroupLimits, GroupStore, HistoryQuery, MessageChange,
    MessageKind, MessageStore, NewMessage, NewUser, Store, StoreError, StoreHealth, Target,
    UserStore,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio_postgres::NoTls;

const URL_VAR: &str = "CHAT_TEST_POSTGRES_URL";

/// The server every test runs against.
fn server_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "\n\n{URL_VAR} is not set: the PostgreSQL store tests need a PostgreSQL server.\n\
             Run scripts/test.sh, which provides one, or point the variable at a server\n\
             whose user may create databases, e.g.\n\
             \n    {URL_VAR}=postgres://postgres@127.0.0.1:5432/postgres cargo test -p chat-store\n\n"
        ),
    }
}

/// `url` with its database replaced by `dbname`.
fn with_dbname(url: &str, dbname: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (rest, query) = match rest.split_once('?') {
                Some((rest, query)) => (rest, format!("?{query}")),
                None => (rest, String::new()),
            };
            let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
            format!("{scheme}://{authority}/{dbname}{query}")
        }
        None => format!("{url} dbname={dbname}"),
    }
}

/// `url` (a URL, not key=value pairs) with its host and port replaced.
fn with_host_port(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .expect("the outage tests need CHAT_TEST_POSTGRES_URL as a postgres:// URL");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority
        .rsplit_once('@')
        .map_or(String::new(), |(u, _)| format!("{u}@"));
    format!("{scheme}://{userinfo}{addr}{tail}")
}

/// A database of its own for one test, dropped (best effort) at the end.
struct TestDb {
    server: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> Self {
        let server = server_url();
        let name = format!("chat_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let admin = admin(&server).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name} on {URL_VAR}: {e}"));
        let url = with_dbname(&server, &name);
        Self { server, name, url }
    }

    fn config(&self) -> PostgresConfig {
        PostgresConfig {
            pool_size: 4,
            ..PostgresConfig::new(&self.url)
        }
    }

    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(self.config()).await.unwrap()
    }

    /// A plain connection to this test's database.
    async fn sql(&self) -> tokio_postgres::Client {
        admin(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread of our own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&server, NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {URL_VAR} ({url}): {e}"));
    tokio::spawn(conn);
    client
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let db = TestDb::create().await;
            let store: Arc<dyn Store> = Arc::new(db.store().await);
            conformance::$name(store).await;
        }
    )*};
}

conformance!(
    users_are_unique_and_found_by_token,
    users_page_by_name_and_tokens_reset,
    direct_messages_get_gap_free_seqs_and_members,
    concurrent_appends_are_gap_free,
    retries_return_the_original,
    batched_appends_keep_order_and_fail_alone,
    history_is_for_members_only_and_pages,
    cursors_move_forward_only_and_unread_is_exact,
    groups_change_membership_with_ordered_events,
    group_limits_are_enforced,
    senders_edit_and_delete_their_messages_through_ordered_events,
    dead_letters_keep_reason_time_and_payload,
    dead_letter_pages_are_bounded,
    dead_letter_replays_are_recorded_and_purges_select,
    retention_deletes_old_messages_in_bounded_batches,
    health_probe_answers_and_refusals_are_not_failures,
);

// ------------------------------------------------------------ helpers

fn user(name: &str) -> NewUser {
    let mut token_hash = [0u8; 32];
    token_hash[..name.len()].copy_from_slice(name.as_bytes());
    NewUser {
        username: name.into(),
        name: name.into(),
        phone: String::new(),
        token_hash,
    }
}

fn direct(from: &str, to: &str, id: &str) -> NewMessage {
    NewMessage {
        sender: from.into(),
        target: Target::Direct(to.into()),
        body: format!("{from}: {id}"),
        client_msg_id: id.into(),
        sent_at_unix_ms: None,
    }
}

async fn all_seqs(store: &dyn Store, user: &str, conversation_id: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let q = HistoryQuery {
            after_seq: Some(seqs.last().copied().unwrap_or(0)),
            before_seq: None,
            limit: 200,
        };
        let page = store.history(user, conversation_id, q).await.unwrap();
        seqs.extend(page.messages.iter().map(|m| m.seq));
        if !page.has_more {
            return seqs;
        }
    }
}

fn unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "{what}: expected Unavailable, got {r:?}"
    );
}

// ------------------------------------------- several servers, one database

/// Four tasks on each of two stores ("servers") send 25 messages each into
/// one direct conversation, which the first sends create concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_append_gap_free_without_duplicates() {
    let db = TestDb::create().await;
    let servers = [db.store().await, db.store().await];
    for name in ["alice", "bob"] {
        servers[0].create_user(user(name)).await.unwrap();
    }
    let start = Arc::new(Barrier::new(8));
    let mut tasks = JoinSet::new();
    for t in 0..8 {
        let store = servers[t % 2].clone();
        let start = start.clone();
        tasks.spawn(async move {
            let (from, to) = if t % 4 < 2 {
                ("alice", "bob")
            } else {
                ("bob", "alice")
            };
            start.wait().await;
            let mut sent = Vec::new();
            for i in 0..25 {
                let a = store
                    .append_message(direct(from, to, &format!("{t}-{i}")))
                    .await
                    .unwrap();
                assert!(!a.duplicate);
                assert_eq!(a.members, ["alice", "bob"]);
                sent.push(a.message);
            }
            sent
        });
    }
    let mut sent = Vec::new();
    while let Some(r) = tasks.join_next().await {
        sent.extend(r.unwrap());
    }
    let conversation = sent[0].conversation_id.clone();
    assert!(sent.iter().all(|m| m.conversation_id == conversation));
    let mut seqs: Vec<u64> = sent.iter().map(|m| m.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>(), "acknowledged seqs");
    let ids: HashSet<&str> = sent.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), 200);

    for store in &servers {
        assert_eq!(all_seqs(store, "bob", &conversation).await, seqs);
        let list = store.conversations("alice").await.unwrap();
        assert_eq!(list.len(), 1, "one direct conversation");
        assert_eq!(list[0].last_seq, 200);
    }
    let sql = db.sql().await;
    let row = sql
        .query_one(
            "SELECT COUNT(*), COUNT(DISTINCT seq), MAX(seq) FROM messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (200, 200, 200)
    );
}

/// Sixteen identical sends, half on each server, all at once: one is
/// stored, every caller gets that one, and the losers' seqs are undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_identical_retries_store_one_message() {
    let db = TestDb::create().await;
    let servers = [db.store().await, db.store().await];
    for name in ["alice", "bob"] {
        servers[0].create_user(user(name)).await.unwrap();
    }
    // First round: the conversation does not exist yet either.
    for (round, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
        let start = Arc::new(Barrier::new(16));
        let mut tasks = JoinSet::new();
        for t in 0..16 {
            let store = servers[t % 2].clone();
            let start = start.clone();
            tasks.spawn(async move {
                start.wait().await;
                store
                    .append_message(direct("alice", "bob", key))
                    .await
                    .unwrap()
            });
        }
        let mut answers = Vec::new();
        while let Some(r) = tasks.join_next().await {
            answers.push(r.unwrap());
        }
        let fresh = answers.iter().filter(|a| !a.duplicate).count();
        assert_eq!(fresh, 1, "round {round}: exactly one send stores");
        let original = &answers[0].message;
        assert!(answers.iter().all(|a| a.message == *original));
        assert!(answers.iter().all(|a| a.members == ["alice", "bob"]));
        assert_eq!(original.seq, round as u64 + 1, "no seq lost to a loser");
    }
    let conversation = servers[1].conversations("bob").await.unwrap().remove(0);
    assert_eq!(conversation.last_seq, 3);
    assert_eq!(
        all_seqs(&servers[1], "bob", &conversation.id).await,
        [1, 2, 3]
    );
}

/// An operator's reset racing the user's own rotation on another server:
/// the reset waits for the rotation in progress and names the token that
/// rotation committed, the one it really replaced (so the right sessions
/// end), not the one it would have read before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_waits_for_a_rotation_and_names_its_token() {
    let db = TestDb::create().await;
    let store = db.store().await;
    store.create_user(user("alice")).await.unwrap();
    let mut other = db.sql().await;
    let rotation = other.transaction().await.unwrap();
    let rotated: &[u8] = &[7; 32];
    rotation
        .execute(
            "UPDATE users SET token_hash = $1 WHERE username = 'alice'",
            &[&rotated],
        )
        .await
        .unwrap();
    let resetting = store.clone();
    let reset = tokio::spawn(async move { resetting.reset_token("alice", &[8; 32]).await });
    // The reset is waiting for the row once a lock request is not granted.
    let watcher = db.sql().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(!reset.is_finished(), "the reset did not wait for the row");
        assert!(Instant::now() < deadline, "the reset never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rotation.commit().await.unwrap();
    assert_eq!(reset.await.unwrap().unwrap(), Some([7; 32]));
    assert_eq!(
        store.user_by_token_hash(&[8; 32]).await.unwrap().as_deref(),
        Some("alice")
    );
    assert!(store.user_by_token_hash(&[7; 32]).await.unwrap().is_none());
}

/// Both users open their direct conversation at once from two servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_conversation_is_created_once_under_a_race() {
    let db = TestDb::create().await;
    let servers = [db.store().await, db.store().await];
    for name in ["alice", "bob"] {
        servers[0].create_user(user(name)).await.unwrap();
    }
    let start = Arc::new(Barrier::new(16));
    let mut tasks = JoinSet::new();
    for t in 0..16 {
        let store = servers[t % 2].clone();
        let start = start.clone();
        tasks.spawn(async move {
            let (from, to) = if t % 4 < 2 {
                ("alice", "bob")
            } else {
                ("bob", "alice")
            };
            start.wait().await;
            store
                .append_message(direct(from, to, &t.to_string()))
                .await
                .unwrap()
                .message
        });
    }
    let mut sent = Vec::new();
    while let Some(r) = tasks.join_next().await {
        sent.push(r.unwrap());
    }
    let ids: HashSet<&str> = sent.iter().map(|m| m.conversation_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one conversation: {ids:?}");
    let mut seqs: Vec<u64> = sent.iter().map(|m| m.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=16).collect::<Vec<u64>>());
    let sql = db.sql().await;
    let n: i64 = sql
        .query_one("SELECT COUNT(*) FROM conversations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

// --------------------------------------------- groups, several servers

fn group_of(owner: &str, members: &[&str]) -> GroupChange {
    GroupChange::Create {
        owner: owner.into(),
        name: format!("{owner}'s"),
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

/// Limits are checked by the database's locks, not by one server: many
/// changes racing from two servers never let a group or a user past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_limits_hold_under_races_across_servers() {
    let db = TestDb::create().await;
    let servers = [db.store().await, db.store().await];
    let names: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
    for name in names.iter().map(String::as_str).chain(["zed", "alice"]) {
        servers[0].create_user(user(name)).await.unwrap();
    }

    // Eight owners each create a group with zed, who may be in one.
    let one_group = GroupLimits {
        max_members: 10,
        max_groups_per_user: 1,
    };
    let start = Arc::new(Barrier::new(8));
    let mut tasks = JoinSet::new();
    for (t, owner) in names.iter().cloned().enumerate() {
        let store = servers[t % 2].clone();
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            store
                .change_group(group_of(&owner, &["zed"]), one_group)
                .await
        });
    }
    let mut created = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::Limit(_)) => {}
            Err(e) => panic!("expected Limit, got {e:?}"),
        }
    }
    assert_eq!(created, 1, "zed is in exactly one group");
    let zeds = servers[1].conversations("zed").await.unwrap();
    assert_eq!(zeds.len(), 1);

    // Eight adders race to fill a group of at most three.
    let three = GroupLimits {
        max_members: 3,
        max_groups_per_user: 100,
    };
    let g = servers[0]
        .change_group(group_of("alice", &[]), three)
        .await
        .unwrap()
        .group
        .id;
    let start = Arc::new(Barrier::new(8));
    let mut tasks = JoinSet::new();
    for (t, name) in names.iter().cloned().enumerate() {
        let store = servers[t % 2].clone();
        let start = start.clone();
        let g = g.clone();
        tasks.spawn(async move {
            start.wait().await;
            let add = GroupChange::Add {
                actor: "alice".into(),
                group_id: g,
                usernames: vec![name],
            };
            store.change_group(add, three).await
        });
    }
    let mut added = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(changed) => added.push(changed.event.unwrap().seq),
            Err(StoreError::Limit(_)) => {}
            Err(e) => panic!("expected Limit, got {e:?}"),
        }
    }
    added.sort_unstable();
    assert_eq!(added, [2, 3], "two adds fit, with consecutive seqs");
    let group = servers[1].group("alice", &g).await.unwrap();
    assert_eq!((group.members.len(), group.last_seq), (3, 3));
    assert_eq!(all_seqs(&servers[0], "alice", &g).await, [1, 2, 3]);
}

/// A member removed on one server while sending on another: every send
/// acknowledged is before the removal, and the first one after it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_posts_nothing_after_the_removal() {
    let db = TestDb::create().await;
    let servers = [db.store().await, db.store().await];
    for name in ["alice", "carol"] {
        servers[0].create_user(user(name)).await.unwrap();
    }
    let limits = GroupLimits {
        max_members: 10,
        max_groups_per_user: 10,
    };
    let g = servers[0]
        .change_group(group_of("alice", &["carol"]), limits)
        .await
        .unwrap()
        .group
        .id;
    let sender = {
        let store = servers[1].clone();
        let g = g.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0.. {
                let msg = NewMessage {
                    sender: "carol".into(),
                    target: Target::Group(g.clone()),
                    body: "x".into(),
                    client_msg_id: format!("c{i}"),
                    sent_at_unix_ms: None,
                };
                match store.append_message(msg).await {
                    Ok(a) => sent.push(a.message.seq),
                    Err(StoreError::NotFound) => return sent,
                    Err(e) => panic!("expected NotFound, got {e:?}"),
                }
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let removal = servers[0]
        .change_group(
            GroupChange::Remove {
                actor: "alice".into(),
                group_id: g.clone(),
                username: "carol".into(),
            },
            limits,
        )
        .await
        .unwrap()
        .event
        .unwrap();
    let sent = sender.await.unwrap();
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|&seq| seq < removal.seq), "{sent:?}");
    let seqs = all_seqs(&servers[0], "alice", &g).await;
    assert_eq!(seqs, (1..=removal.seq).collect::<Vec<_>>(), "gap-free");
}

// ------------------------------------------------ edits, several servers

fn change(
    editor: &str,
    conversation_id: &str,
    seq: u64,
    body: Option<&str>,
    key: &str,
) -> MessageChange {
    MessageChange {
        editor: editor.into(),
        conversation_id: conversation_id.into(),
        seq,
        body: body.map(str::to_owned),
        client_msg_id: key.into(),
    }
}

/// Changes of one message race from two servers, with sends in between:
/// of many deletions exactly one commits (the others find no live message),
/// identical retries store one event, concurrent edits each get their own
/// seq and the last of them is the text that stays, and seqs stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_edits_and_deletes_across_servers() {
    let db = TestDb::create().await;
    let servers = [db.store().await, db.store().await];
    for name in ["alice", "bob"] {
        servers[0].create_user(user(name)).await.unwrap();
    }
    let mut sent = Vec::new();
    for key in ["m1", "m2", "m3"] {
        sent.push(
            servers[0]
                .append_message(direct("alice", "bob", key))
                .await
                .unwrap()
                .message,
        );
    }
    let id = sent[0].conversation_id.clone();

    // Eight deletions of message 1, each with its own key, and eight sends.
    let start = Arc::new(Barrier::new(16));
    let mut tasks = JoinSet::new();
    for t in 0..16 {
        let store = servers[t % 2].clone();
        let start = start.clone();
        let id = id.clone();
        tasks.spawn(async move {
            start.wait().await;
            if t < 8 {
                store
                    .change_message(change("alice", &id, 1, None, &format!("d{t}")))
                    .await
            } else {
                store
                    .append_message(direct("bob", "alice", &format!("s{t}")))
                    .await
            }
        });
    }
    let (mut deletions, mut not_found, mut seqs) = (Vec::new(), 0, vec![1, 2, 3]);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(a) => {
                assert!(!a.duplicate);
                assert_eq!(a.members, ["alice", "bob"]);
                seqs.push(a.message.seq);
                if a.message.kind == MessageKind::MessageDeleted {
                    deletions.push(a.message);
                }
            }
            Err(StoreError::NotFound) => not_found += 1,
            Err(e) => panic!("expected NotFound, got {e:?}"),
        }
    }
    assert_eq!((deletions.len(), not_found), (1, 7), "one deletion commits");
    assert_eq!(deletions[0].target_seq, 1);

    // Sixteen identical retries of a deletion of message 2: one event.
    let start = Arc::new(Barrier::new(16));
    let mut tasks = JoinSet::new();
    for t in 0..16 {
        let store = servers[t % 2].clone();
        let start = start.clone();
        let id = id.clone();
        tasks.spawn(async move {
            start.wait().await;
            store
                .change_message(change("alice", &id, 2, None, "del-2"))
                .await
                .unwrap()
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        answers.push(r.unwrap());
    }
    assert_eq!(answers.iter().filter(|a| !a.duplicate).count(), 1);
    let original = answers[0].message.clone();
    assert!(answers.iter().all(|a| a.message == original));
    assert_eq!(
        (original.kind, original.target_seq),
        (MessageKind::MessageDeleted, 2)
    );
    seqs.push(original.seq);

    // Eight concurrent edits of message 3 all commit, in some order.
    let start = Arc::new(Barrier::new(8));
    let mut tasks = JoinSet::new();
    for t in 0..8 {
        let store = servers[t % 2].clone();
        let start = start.clone();
        let id = id.clone();
        tasks.spawn(async move {
            start.wait().await;
            let text = format!("edit {t}");
            store
                .change_message(change("alice", &id, 3, Some(&text), &format!("e{t}")))
                .await
                .unwrap()
                .message
        });
    }
    let mut edits = Vec::new();
    while let Some(r) = tasks.join_next().await {
        edits.push(r.unwrap());
    }
    seqs.extend(edits.iter().map(|m| m.seq));
    let last = edits.iter().max_by_key(|m| m.seq).unwrap();

    seqs.sort_unstable();
    let n = seqs.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "acknowledged seqs");
    assert_eq!(all_seqs(&servers[1], "bob", &id).await, seqs, "gap-free");
    let page = servers[1]
        .history("bob", &id, HistoryQuery::default())
        .await
        .unwrap()
        .messages;
    let firsts: Vec<(&str, bool, bool)> = page[..3]
        .iter()
        .map(|m| (m.body.as_str(), m.edited, m.deleted))
        .collect();
    assert_eq!(
        firsts,
        [
            ("", false, true),
            ("", false, true),
            (last.body.as_str(), true, false)
        ]
    );
    // Only bob's eight sends are unread for alice: no event counts.
    let alice = servers[0].conversations("alice").await.unwrap().remove(0);
    assert_eq!((alice.last_seq, alice.unread_count), (n, 8));
    let sql = db.sql().await;
    let events: i64 = sql
        .query_one(
            "SELECT COUNT(*) FROM messages WHERE kind = 'message_deleted'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 2, "one deletion event per message");
}

// -------------------------------------------------------------- migrations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_when_servers_start_together_or_again() {
    let db = TestDb::create().await;
    let mut starting = JoinSet::new();
    for _ in 0..6 {
        let config = db.config();
        starting.spawn(PostgresStore::connect(config));
    }
    let mut stores = Vec::new();
    while let Some(r) = starting.join_next().await {
        stores.push(r.unwrap().expect("a server starting concurrently"));
    }
    stores[0].create_user(user("alice")).await.unwrap();
    stores[1]
        .create_user(user("bob"))
        .await
        .expect("the schema is complete for every server");
    drop(stores);

    // Starting again (twice) finds the schema current and keeps the data.
    let again = db.store().await;
    let again2 = db.store().await;
    assert!(again.get_user("alice").await.unwrap().is_some());
    assert!(again2.get_user("bob").await.unwrap().is_some());

    let sql = db.sql().await;
    let versions: Vec<i64> = sql
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!versions.is_empty());
    assert_eq!(
        versions,
        (1..=versions.len() as i64).collect::<Vec<_>>(),
        "each migration recorded exactly once"
    );
}

/// A database made by the first schema version, with a conversation in it,
/// is upgraded in place: its rows read as text messages of a direct
/// conversation, and new ones follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_database_keeps_its_rows() {
    let db = TestDb::create().await;
    let sql = db.sql().await;
    // Version 1 as it was shipped.
    sql.batch_execute(
        r#"
        CREATE TABLE schema_migrations (
            version       BIGINT PRIMARY KEY,
            applied_at_ms BIGINT NOT NULL
        );
        INSERT INTO schema_migrations VALUES (1, 0);
        CREATE TABLE users (
            username      TEXT COLLATE "C" PRIMARY KEY,
            name          TEXT NOT NULL,
            phone         TEXT NOT NULL,
            token_hash    BYTEA NOT NULL UNIQUE,
            created_at_ms BIGINT NOT NULL
        );
        CREATE TABLE conversations (
            id            TEXT COLLATE "C" PRIMARY KEY,
            kind          TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
            direct_key    TEXT COLLATE "C" UNIQUE,
            last_seq      BIGINT NOT NULL DEFAULT 0,
            created_at_ms BIGINT NOT NULL
        );
        CREATE TABLE members (
            conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations(id),
            username        TEXT COLLATE "C" NOT NULL REFERENCES users(username),
            read_seq        BIGINT NOT NULL DEFAULT 0,
            delivered_seq   BIGINT NOT NULL DEFAULT 0,
            joined_seq      BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (conversation_id, username)
        );
        CREATE INDEX members_by_user ON members (username, conversation_id);
        CREATE TABLE messages (
            conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations(id),
            seq             BIGINT NOT NULL,
            id              TEXT COLLATE "C" NOT NULL UNIQUE,
            sender          TEXT COLLATE "C" NOT NULL,
            body            TEXT NOT NULL,
            client_msg_id   TEXT COLLATE "C" NOT NULL,
            sent_at_ms      BIGINT NOT NULL,
            PRIMARY KEY (conversation_id, seq),
            UNIQUE (sender, client_msg_id)
        );
        INSERT INTO users VALUES ('alice', 'A', '1', '\x01', 1), ('bob', 'B', '2', '\x02', 1);
        INSERT INTO conversations VALUES ('c1', 'direct', 'alice|bob', 2, 1);
        INSERT INTO members (conversation_id, username) VALUES ('c1', 'alice'), ('c1', 'bob');
        INSERT INTO messages VALUES
            ('c1', 1, 'm1', 'alice', 'hi', 'k1', 10),
            ('c1', 2, 'm2', 'alice', 'there', 'k2', 11);
        "#,
    )
    .await
    .unwrap();

    let store = db.store().await;
    let page = store
        .history("bob", "c1", HistoryQuery::default())
        .await
        .unwrap();
    let read: Vec<(u64, MessageKind, u64, bool, bool)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.kind, m.target_seq, m.edited, m.deleted))
        .collect();
    assert_eq!(
        read,
        [
            (1, MessageKind::Text, 0, false, false),
            (2, MessageKind::Text, 0, false, false)
        ]
    );
    let bob = store.conversations("bob").await.unwrap().remove(0);
    assert_eq!(
        (bob.kind, bob.name, bob.peer.as_deref(), bob.unread_count),
        (ConversationKind::Direct, None, Some("alice"), 2)
    );
    let next = store
        .append_message(direct("bob", "alice", "k3"))
        .await
        .unwrap();
    assert_eq!(
        (next.message.conversation_id.as_str(), next.message.seq),
        ("c1", 3)
    );
    // A message from before the upgrade can be edited and deleted.
    let edit = |seq: u64, body: Option<&str>, key: &str| MessageChange {
        editor: "alice".into(),
        conversation_id: "c1".into(),
        seq,
        body: body.map(str::to_owned),
        client_msg_id: key.into(),
    };
    let edited = store
        .change_message(edit(1, Some("hello"), "e1"))
        .await
        .unwrap()
        .message;
    let deleted = store
        .change_message(edit(2, None, "e2"))
        .await
        .unwrap()
        .message;
    assert_eq!(
        (edited.seq, edited.kind, edited.target_seq),
        (4, MessageKind::MessageEdited, 1)
    );
    assert_eq!(
        (deleted.seq, deleted.kind, deleted.target_seq),
        (5, MessageKind::MessageDeleted, 2)
    );
    let page = store
        .history("bob", "c1", HistoryQuery::default())
        .await
        .unwrap();
    let old: Vec<(&str, bool, bool)> = page.messages[..2]
        .iter()
        .map(|m| (m.body.as_str(), m.edited, m.deleted))
        .collect();
    assert_eq!(old, [("hello", true, false), ("", false, true)]);
    let versions: Vec<i64> = sql
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

// ------------------------------------------------------ an absent database

/// `connect` is eager: with nothing listening it fails, and fast.
#[tokio::test]
async fn connect_to_an_unreachable_database_is_unavailable() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let started = Instant::now();
    let r = PostgresStore::connect(PostgresConfig {
        connect_timeout: Duration::from_secs(2),
        ..PostgresConfig::new(format!("postgres://postgres@{addr}/postgres"))
    })
    .await;
    unavailable("connect", r.map(|_| ()));
    assert!(started.elapsed() < Duration::from_secs(5));

    let r = PostgresStore::connect(PostgresConfig::new("postgres://host:notaport/x")).await;
    assert!(
        matches!(r, Err(StoreError::Invalid(_))),
        "{:?}",
        r.map(|_| ())
    );
}

/// A TCP relay to the real server that can be cut and restored, standing in
/// for a database that goes away while the chat server runs.
struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut relay = Self {
            addr,
            upstream,
            task: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            // Dropped with this task: cutting the relay closes every
            // connection through it.
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

async fn upstream_addr(url: &str) -> SocketAddr {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => panic!("the outage tests need a TCP host in {URL_VAR}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap();
    addrs.next().unwrap()
}

/// While the database is unreachable every operation answers Unavailable
/// and nothing is committed; once it is back the store serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_unavailable_and_recovers() {
    let db = TestDb::create().await;
    let mut relay = Relay::start(upstream_addr(&db.url).await).await;
    let store = PostgresStore::connect(PostgresConfig {
        connect_timeout: Duration::from_secs(2),
        ..PostgresConfig::new(with_host_port(&db.url, relay.addr))
    })
    .await
    .unwrap();
    for name in ["alice", "bob"] {
        store.create_user(user(name)).await.unwrap();
    }
    let first = store
        .append_message(direct("alice", "bob", "1"))
        .await
        .unwrap()
        .message;
    let id = first.conversation_id.clone();

    store.ping().await.expect("the database answers");
    let failures = store.failures();
    relay.cut().await;
    let started = Instant::now();
    unavailable("ping", store.ping().await);
    unavailable("create_user", store.create_user(user("carol")).await);
    unavailable("get_user", store.get_user("alice").await);
    unavailable("by token", store.user_by_token_hash(&[0; 32]).await);
    unavailable(
        "append",
        store.append_message(direct("alice", "bob", "2")).await,
    );
    unavailable(
        "history",
        store.history("bob", &id, HistoryQuery::default()).await,
    );
    unavailable("conversations", store.conversations("bob").await);
    unavailable("mark_read", store.mark_read("bob", &id, 1).await);
    unavailable("mark_delivered", store.mark_delivered("bob", &id, 1).await);
    unavailable("members", store.members("bob", &id).await);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "unavailable answers come quickly"
    );
    assert_eq!(
        store.failures() - failures,
        9,
        "each failed operation counts once, the failed probe not at all"
    );

    relay.restore().await;
    let second = store
        .append_message(direct("alice", "bob", "2"))
        .await
        .expect("the store recovers when the database is back");
    assert!(
        !second.duplicate,
        "the send during the outage was not stored"
    );
    assert_eq!(second.message.seq, 2);
    store.ping().await.expect("the probe answers again");
    assert!(store.get_user("carol").await.unwrap().is_none());
    assert_eq!(all_seqs(&store, "bob", &id).await, [1, 2]);
}

/// A statement stuck behind a lock answers Unavailable after the operation
/// timeout, a caller finding every connection busy answers Unavailable
/// after the acquire timeout, and the stuck send leaves no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_database_and_busy_pool_answer_unavailable() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(PostgresConfig {
        pool_size: 1,
        acquire_timeout: Duration::from_millis(300),
        operation_timeout: Duration::from_secs(1),
        ..PostgresConfig::new(&db.url)
    })
    .await
    .unwrap();
    for name in ["alice", "bob"] {
        store.create_user(user(name)).await.unwrap();
    }
    let id = store
        .append_message(direct("alice", "bob", "1"))
        .await
        .unwrap()
        .message
        .conversation_id;

    // Another client holds the conversation's row lock.
    let mut blocker = db.sql().await;
    let tx = blocker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await
    .unwrap();

    let stuck = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = store.append_message(direct("alice", "bob", "2")).await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    unavailable("pool exhausted", store.get_user("alice").await);
    assert!(started.elapsed() < Duration::from_millis(900));

    let (r, took) = stuck.await.unwrap();
    unavailable("stuck append", r);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5));
    // The server gives up the statement too (statement_timeout): nothing
    // keeps waiting for the lock although the lock is still held.
    let sql = db.sql().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let waiting: i64 = sql
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a statement still waits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.rollback().await.unwrap();

    let next = store
        .append_message(direct("alice", "bob", "2"))
        .await
        .unwrap();
    assert!(!next.duplicate);
    assert_eq!(next.message.seq, 2, "the timed-out send used no seq");
    assert_eq!(all_seqs(&store, "alice", &id).await, [1, 2]);
}

/// PostgreSQL text cannot hold NUL: storing it is Invalid, looking it up
/// finds nothing, like a key that does not exist.
#[tokio::test]
async fn nul_characters_are_invalid_to_store_and_absent_to_look_up() {
    let db = TestDb::create().await;
    let store = db.store().await;
    for name in ["alice", "bob"] {
        store.create_user(user(name)).await.unwrap();
    }
    let mut bad_body = direct("alice", "bob", "1");
    bad_body.body = "a\0b".into();
    assert!(matches!(
        store.append_message(bad_body).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.append_message(direct("alice", "bob", "x\0")).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.append_message(direct("alice", "b\0b", "2")).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.create_user(user("c\0")).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store.get_user("alice\0").await.unwrap().is_none());
    assert!(matches!(
        store.history("alice", "c\0", HistoryQuery::default()).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.conversations("alice\0").await.unwrap().is_empty());
    let first = store
        .append_message(direct("alice", "bob", "0"))
        .await
        .unwrap()
        .message;
    let id = first.conversation_id.as_str();
    assert!(matches!(
        store
            .change_message(change("alice", id, 1, Some("a\0b"), "e1"))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .change_message(change("alice", id, 1, None, "e\0"))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .change_message(change("alice", "c\0", 1, None, "e2"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .change_message(change("alice\0", id, 1, None, "e3"))
            .await,
        Err(StoreError::NotFound)
    ));
    // Nothing was stored by the failed sends.
    let ok = store
        .append_message(direct("alice", "bob", "1"))
        .await
        .unwrap();
    assert_eq!((ok.message.seq, ok.duplicate), (2, false));
    let page = store
        .history("bob", id, HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(
        (page.messages[0].body.as_str(), page.messages[0].edited),
        ("alice: 0", false)
    );
}

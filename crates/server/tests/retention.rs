//! Data retention on a real server, on SQLite and on PostgreSQL: history
//! older than the policy's age disappears in the background, the rest
//! stays, unread counts count what remains, and the chat goes on with the
//! next seqs. Without a policy nothing is deleted.
//!
//! Old messages are committed through the store with an old timestamp (as
//! an import would), so the age can be a day and nothing recent is ever
//! near it, however slow the machine.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_proto as pb;
use chat_server::config::{Retention, StoreBackend};
use chat_server::{Backends, ServerError};
use chat_store::{NewMessage, Store, Target};
use chat_test_support::fault::Proxy;
use chat_test_support::services::{fresh_postgres, postgres_addr};
use chat_test_support::{metric, send_request, TestServer, TestUser, WAIT};

const DAY: i64 = 86_400_000;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One store, on which the test starts servers and makes its own writes.
struct Shared {
    backend: Backend,
    store: Arc<dyn Store>,
    /// SQLite: the backends every server shares.
    backends: Option<Backends>,
    /// PostgreSQL: the database every server connects to.
    url: String,
    _dir: tempfile::TempDir,
}

impl Shared {
    async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => {
                let mut sqlite = chat_store::sqlite::SqliteConfig::new(dir.path().join("chat.db"));
                sqlite.durability = chat_store::sqlite::Durability::Normal;
                let store: Arc<dyn Store> =
                    Arc::new(chat_store::sqlite::SqliteStore::open(sqlite).unwrap());
                let backends = Backends {
                    store: store.clone(),
                    registry: Arc::new(chat_cluster::registry::MemoryRegistry::new(
                        Duration::from_secs(15),
                    )),
                    bus: Arc::new(chat_cluster::bus::MemoryBus::default()),
                };
                Self {
                    backend,
                    store,
                    backends: Some(backends),
                    url: String::new(),
                    _dir: dir,
                }
            }
            Backend::Postgres => {
                let url = fresh_postgres().await;
                let store = chat_store::postgres::PostgresStore::connect(
                    chat_store::postgres::PostgresConfig::new(&url),
                )
                .await
                .unwrap();
                Self {
                    backend,
                    store: Arc::new(store),
                    backends: None,
                    url,
                    _dir: dir,
                }
            }
        }
    }

    /// A server on this store with the given policy.
    async fn server(&self, retention: Option<Retention>) -> TestServer {
        match self.backend {
            Backend::Sqlite => {
                TestServer::start_node(self.backends.clone(), |c| c.retention = retention).await
            }
            Backend::Postgres => {
                let url = self.url.clone();
                TestServer::start_with(|c| {
                    c.cluster.store = StoreBackend::Postgres { url };
                    c.retention = retention;
                })
                .await
            }
        }
    }

    /// Commits a message sent `age` ago, as an import would.
    async fn old_message(
        &self,
        from: &str,
        to: &str,
        key: &str,
        age: i64,
    ) -> chat_store::StoredMessage {
        self.store
            .append_message(NewMessage {
                sender: from.into(),
                target: Target::Direct(to.into()),
                body: format!("old {key}"),
                client_msg_id: key.into(),
                sent_at_unix_ms: Some(now_ms() - age),
            })
            .await
            .unwrap()
            .message
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Deletes what is older than a day, two messages at a time (so a pass
/// takes several batches), every `interval`.
fn policy(interval: Duration) -> Retention {
    Retention {
        max_age: Duration::from_secs(86_400),
        interval,
        batch: 2,
    }
}

/// An interval no test outlives: only the pass at start runs.
const HOURLY: Duration = Duration::from_secs(3600);

/// alice and bob (registered on `server`) with five messages from 5 to 2
/// days ago (seqs 1..=5; alice wrote 1, 3, 4, bob 2 and 5), then three
/// sent now over gRPC (6 and 8 by alice, 7 by bob). Returns the users and
/// the conversation.
async fn chat_with_old_history(
    shared: &Shared,
    server: &TestServer,
) -> (TestUser, TestUser, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut conversation = String::new();
    for (seq, from, to, age) in [
        (1, "alice", "bob", 5 * DAY),
        (2, "bob", "alice", 4 * DAY),
        (3, "alice", "bob", 3 * DAY),
        (4, "alice", "bob", 3 * DAY),
        (5, "bob", "alice", 2 * DAY),
    ] {
        let stored = shared
            .old_message(from, to, &format!("old-{seq}"), age)
            .await;
        assert_eq!(stored.seq, seq);
        conversation = stored.conversation_id;
    }
    for (seq, from, to) in [(6, &alice, "bob"), (7, &bob, "alice"), (8, &alice, "bob")] {
        let sent = server
            .chat(from)
            .await
            .send_message(send_request(to, "new", &format!("new-{seq}")))
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
        assert_eq!(sent.seq, seq);
    }
    (alice, bob, conversation)
}

fn history_request(before: u64, after: u64, limit: u32, id: &str) -> pb::GetHistoryRequest {
    pb::GetHistoryRequest {
        conversation_id: id.into(),
        before_seq: before,
        after_seq: after,
        limit,
    }
}

/// The seqs of a history page and whether there is more.
async fn page(
    server: &TestServer,
    user: &TestUser,
    request: pb::GetHistoryRequest,
) -> (Vec<u64>, bool) {
    let page = server
        .chat(user)
        .await
        .get_history(request)
        .await
        .unwrap()
        .into_inner();
    (page.messages.iter().map(|m| m.seq).collect(), page.has_more)
}

/// `user`'s view of `id` in ListConversations: last seq, unread count,
/// and the seq of the last message shown.
async fn summary(server: &TestServer, user: &TestUser, id: &str) -> (u64, u64, Option<u64>) {
    let list = server
        .chat(user)
        .await
        .list_conversations(pb::ListConversationsRequest {})
        .await
        .unwrap()
        .into_inner()
        .conversations;
    let c = list.iter().find(|c| c.conversation_id == id).unwrap();
    (
        c.last_seq,
        c.unread_count,
        c.last_message.as_ref().map(|m| m.seq),
    )
}

/// Polls `condition` until it holds; fails after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    while !condition().await {
        assert!(started.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of `chat_retention_deleted_total` over `servers`.
async fn deleted_by(servers: &[TestServer]) -> u64 {
    let mut total = 0;
    for server in servers {
        total += metric(server.http_addr, "chat_retention_deleted_total")
            .await
            .expect("the retention counter is exported");
    }
    total
}

async fn old_history_goes_and_the_chat_goes_on(backend: Backend) {
    // The history exists before the servers with the policy start: their
    // pass at start deletes all of it, batch after batch. Both run it on
    // the one store, and each message is deleted once.
    let shared = Shared::new(backend).await;
    let plain = shared.server(None).await;
    let (alice, bob, id) = chat_with_old_history(&shared, &plain).await;
    let hourly = [
        shared.server(Some(policy(HOURLY))).await,
        shared.server(Some(policy(HOURLY))).await,
    ];
    let server = &hourly[0];
    let all = || history_request(0, 0, 0, &id);
    eventually("the old messages are deleted", || async {
        page(server, &bob, all()).await.0 == [6, 7, 8]
    })
    .await;
    eventually("the deletions are counted", || async {
        deleted_by(&hourly).await == 5
    })
    .await;
    assert_eq!(
        metric(server.http_addr, "chat_retention_failures_total").await,
        Some(0)
    );
    assert_eq!(deleted_by(std::slice::from_ref(&plain)).await, 0);
    assert_eq!(page(server, &alice, all()).await, (vec![6, 7, 8], false));
    // Paging works across the gap, both ways.
    assert_eq!(
        page(server, &bob, history_request(0, 0, 2, &id)).await,
        (vec![7, 8], true)
    );
    assert_eq!(
        page(server, &bob, history_request(7, 0, 2, &id)).await,
        (vec![6], false)
    );
    assert_eq!(
        page(server, &bob, history_request(0, 2, 2, &id)).await,
        (vec![6, 7], true)
    );
    // The seqs stay; unread counts count what is left: bob has alice's 6
    // and 8, alice has bob's 7.
    assert_eq!(summary(server, &bob, &id).await, (8, 2, Some(8)));
    assert_eq!(summary(server, &alice, &id).await, (8, 1, Some(8)));

    // A session replays what is left, and the chat goes on with seq 9.
    let mut live = server.connect(&bob).await;
    let ready = live
        .ready
        .conversations
        .iter()
        .find(|c| c.conversation_id == id)
        .unwrap();
    assert_eq!((ready.last_seq, ready.unread_count), (8, 2));
    for seq in [6, 7, 8] {
        assert_eq!(live.message().await.seq, seq);
    }
    let next = server
        .chat(&alice)
        .await
        .send_message(send_request("bob", "after", "after-1"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(next.seq, 9);
    assert_eq!(live.message().await, next);
    live.send_to("alice", "reply", "after-2").await;
    assert_eq!(live.ack().await.message.unwrap().seq, 10);
    assert_eq!(summary(server, &bob, &id).await, (10, 3, Some(10)));

    // A server whose passes repeat deletes what ages past the cutoff
    // later (here: what arrives already old). The second message comes
    // after the first is gone, so after the pass at start: a later pass
    // deletes it.
    let frequent = shared.server(Some(policy(Duration::from_millis(50)))).await;
    for (key, seq) in [("late-1", 11), ("late-2", 12)] {
        assert_eq!(
            shared.old_message("alice", "bob", key, 3 * DAY).await.seq,
            seq
        );
        eventually("a later pass deletes it", || async {
            page(&frequent, &bob, all()).await.0 == [6, 7, 8, 9, 10]
        })
        .await;
    }
    eventually("the later deletions are counted", || async {
        deleted_by(std::slice::from_ref(&frequent)).await == 2
    })
    .await;
    assert_eq!(deleted_by(&hourly).await, 5);
    // The last message is gone: no preview, the seq stays, the unread
    // count is what is left (alice's 6, 8 and 9; bob read nothing).
    assert_eq!(summary(&frequent, &bob, &id).await, (12, 3, None));
    let next = frequent
        .chat(&bob)
        .await
        .send_message(send_request("alice", "later", "after-3"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(next.seq, 13);
    assert_eq!(
        page(&frequent, &alice, history_request(0, 5, 0, &id)).await,
        (vec![6, 7, 8, 9, 10, 13], false)
    );

    for server in [plain, frequent].into_iter().chain(hourly) {
        server.stop().await;
    }
}

/// Without a policy nothing is deleted, however old.
async fn without_a_policy_history_stays(backend: Backend) {
    // Two stores with the same history written after their server
    // started: the one with a policy deletes its old part in a later
    // pass; by then the other would have too, had it a policy.
    let kept = Shared::new(backend).await;
    let gone = Shared::new(backend).await;
    let off = kept.server(None).await;
    let on = gone.server(Some(policy(Duration::from_millis(50)))).await;
    let (_, bob, id) = chat_with_old_history(&kept, &off).await;
    let (_, gone_bob, gone_id) = chat_with_old_history(&gone, &on).await;
    eventually("the server with a policy deletes", || async {
        page(&on, &gone_bob, history_request(0, 0, 0, &gone_id))
            .await
            .0
            == [6, 7, 8]
    })
    .await;
    assert_eq!(
        page(&off, &bob, history_request(0, 0, 0, &id)).await,
        ((1..=8).collect::<Vec<u64>>(), false)
    );
    // bob has alice's 1, 3, 4, 6 and 8 unread.
    assert_eq!(summary(&off, &bob, &id).await, (8, 5, Some(8)));
    assert_eq!(
        metric(off.http_addr, "chat_retention_deleted_total").await,
        Some(0)
    );
    off.stop().await;
    on.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_history_goes_and_the_chat_goes_on_with_sqlite() {
    old_history_goes_and_the_chat_goes_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_history_goes_and_the_chat_goes_on_with_postgres() {
    old_history_goes_and_the_chat_goes_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_history_stays_with_sqlite() {
    without_a_policy_history_stays(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_history_stays_with_postgres() {
    without_a_policy_history_stays(Backend::Postgres).await;
}

/// A store that fails a pass is logged and counted, the server goes on,
/// and a later pass deletes once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_survive_a_store_outage() {
    let shared = Shared::new(Backend::Postgres).await;
    let direct = postgres_addr(&shared.url);
    let proxy = Proxy::start(direct).await;
    let via = shared
        .url
        .replace(&direct.to_string(), &proxy.addr().to_string());
    assert_ne!(via, shared.url, "the server's store goes through the proxy");
    let server = TestServer::start_with(|c| {
        c.cluster.store = StoreBackend::Postgres { url: via };
        c.retention = Some(policy(Duration::from_millis(50)));
    })
    .await;
    let (_, bob, id) = chat_with_old_history(&shared, &server).await;
    eventually("the first old messages are deleted", || async {
        page(&server, &bob, history_request(0, 0, 0, &id)).await.0 == [6, 7, 8]
    })
    .await;

    // PostgreSQL goes away for the server (the test's own connection
    // stays): passes fail, one after another.
    proxy.refuse(true);
    proxy.cut();
    let failures = || async {
        metric(server.http_addr, "chat_retention_failures_total")
            .await
            .unwrap()
    };
    let before = failures().await;
    for key in ["late-1", "late-2", "late-3"] {
        shared.old_message("alice", "bob", key, 3 * DAY).await;
    }
    eventually("failed passes are counted", || async {
        failures().await >= before + 2
    })
    .await;
    assert_eq!(deleted_by(std::slice::from_ref(&server)).await, 5);

    // Back: a later pass deletes what aged meanwhile.
    proxy.refuse(false);
    eventually("a pass after the outage deletes", || async {
        deleted_by(std::slice::from_ref(&server)).await == 8
    })
    .await;
    let left = shared
        .store
        .history("bob", &id, chat_store::HistoryQuery::default())
        .await
        .unwrap();
    let seqs: Vec<u64> = left.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [6, 7, 8]);
    server.stop().await;
}

/// A policy that cannot work stops the server before it serves anything.
#[tokio::test]
async fn an_invalid_policy_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for (change, says) in [
        (
            (|p: &mut Retention| p.batch = 0) as fn(&mut Retention),
            "batch",
        ),
        (|p| p.max_age = Duration::ZERO, "age"),
        (|p| p.interval = Duration::ZERO, "interval"),
    ] {
        let mut retention = policy(HOURLY);
        change(&mut retention);
        let config = chat_server::Config {
            data_dir: dir.path().to_owned(),
            retention: Some(retention),
            ..chat_server::Config::default()
        };
        let listeners = chat_server::Listeners {
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let outcome = tokio::time::timeout(
            WAIT,
            chat_server::run(config, listeners, std::future::pending()),
        )
        .await
        .expect("refused at once");
        match outcome {
            Err(ServerError::Config(reason)) => assert!(reason.contains(says), "{reason}"),
            other => panic!("not a configuration error: {other:?}"),
        }
    }
}

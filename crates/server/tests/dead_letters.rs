//! The dead-letter queue end to end: a publish the bus refuses lands in
//! the DLQ and is replayed to a live session once the bus is back; the
//! admin API's token check; listing, replaying and purging over HTTP; and
//! the `chat-server admin dead-letters` command against a running server.
//! (Poisoned records on each real bus are in `cluster.rs`.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chat_cluster::bus::MemoryBus;
use chat_cluster::{Bus, ClusterError, Inbox};
use chat_proto as pb;
use chat_proto::client_frame::Frame as In;
use chat_server::http::types::{
    DeadLetterDetail, DeadLetterPage, Purged, ReplayBatch, ReplayOutcome, ReplayResult,
};
use chat_server::Backends;
use chat_store::{NewDeadLetter, Store};
use chat_test_support::services::unique;
use chat_test_support::{
    admin_cli, admin_http, admin_token, await_metric, http, http_with, message_envelope, metric,
    send_request, HttpAnswer, TestServer, TEST_ADMIN_TOKEN,
};
use serde_json::{json, Value};

/// An in-process bus that refuses every publish while `failing` is set.
#[derive(Default)]
struct FlakyBus {
    inner: MemoryBus,
    failing: AtomicBool,
    refused: AtomicU64,
}

#[async_trait]
impl Bus for FlakyBus {
    async fn publish(&self, node: &str, payload: Bytes) -> chat_cluster::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(ClusterError::Unavailable {
                backend: "flaky",
                detail: "the bus is down".into(),
            });
        }
        self.inner.publish(node, payload).await
    }

    async fn subscribe(&self, node: &str) -> chat_cluster::Result<Inbox> {
        self.inner.subscribe(node).await
    }

    async fn ping(&self) -> chat_cluster::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(ClusterError::Unavailable {
                backend: "flaky",
                detail: "the bus is down".into(),
            });
        }
        self.inner.ping().await
    }
}

/// In-process backends on a fresh SQLite file, with `bus`.
fn backends(dir: &tempfile::TempDir, bus: Arc<dyn Bus>) -> (Backends, Arc<dyn Store>) {
    let mut sqlite = chat_store::sqlite::SqliteConfig::new(dir.path().join("chat.db"));
    sqlite.durability = chat_store::sqlite::Durability::Normal;
    let store: Arc<dyn Store> = Arc::new(chat_store::sqlite::SqliteStore::open(sqlite).unwrap());
    let backends = Backends {
        store: store.clone(),
        registry: Arc::new(chat_cluster::registry::MemoryRegistry::new(
            Duration::from_secs(15),
        )),
        bus,
    };
    (backends, store)
}

/// One node with the admin API and a handle on its store.
async fn node() -> (TestServer, Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (backends, store) = backends(&dir, Arc::new(MemoryBus::default()));
    let server =
        TestServer::start_node(Some(backends), |c| c.admin_token = Some(admin_token())).await;
    (server, store, dir)
}

async fn add(store: &Arc<dyn Store>, reason: &str, payload: &[u8]) -> u64 {
    store
        .add_dead_letter(NewDeadLetter {
            node: "elsewhere".into(),
            reason: reason.into(),
            payload: payload.to_vec(),
        })
        .await
        .unwrap()
        .id
}

fn ids(answer: &HttpAnswer) -> Vec<u64> {
    let page: DeadLetterPage = answer.data();
    page.dead_letters.iter().map(|l| l.id).collect()
}

/// `(id, outcome)` of each replay result.
fn outcomes(batch: &ReplayBatch) -> Vec<(u64, &'static str)> {
    batch
        .results
        .iter()
        .map(|r| {
            let outcome = match r.outcome {
                ReplayOutcome::Replayed { .. } => "replayed",
                ReplayOutcome::NotReplayable { .. } => "not_replayable",
                ReplayOutcome::Failed { .. } => "failed",
            };
            (r.id, outcome)
        })
        .collect()
}

/// The sessions a replay result reached on the answering server.
fn local_sessions(result: &ReplayResult) -> usize {
    match result.outcome {
        ReplayOutcome::Replayed { local_sessions, .. } => local_sessions,
        _ => panic!("not replayed: {result:?}"),
    }
}

/// Node A cannot reach the bus: after three attempts the record for node B
/// is a dead letter of A (not of B, which never saw it), naming B; a typing
/// indicator is not kept; replaying fails while the bus is down and
/// delivers to the live session on B once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_is_dead_lettered_and_replayed_when_the_bus_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(FlakyBus::default());
    let (shared, _store) = backends(&dir, bus.clone());
    let (a_node, b_node) = (unique("a-"), unique("b-"));
    let a_id = a_node.clone();
    let a = TestServer::start_node(Some(shared.clone()), |c| {
        c.cluster.node_id = a_id;
        c.admin_token = Some(admin_token());
    })
    .await;
    let b_id = b_node.clone();
    let b = TestServer::start_node(Some(shared), |c| c.cluster.node_id = b_id).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let mut bob_b = b.connect(&bob).await;

    bus.failing.store(true, Ordering::SeqCst);
    let sent = a
        .chat(&alice)
        .await
        .send_message(send_request("bob", "through the outage", "o1"))
        .await
        .expect("the send commits and is acknowledged whatever the bus does")
        .into_inner()
        .message
        .unwrap();
    await_metric(a.http_addr, "chat_dead_letters_total", 1).await;
    assert_eq!(bus.refused.load(Ordering::SeqCst), 3, "three attempts");
    assert_eq!(
        metric(a.http_addr, "chat_bus_publish_failures_total").await,
        Some(1)
    );
    assert_eq!(
        metric(b.http_addr, "chat_dead_letters_total").await,
        Some(0)
    );

    // Typing is stale in seconds: refused, counted, not kept. (Alice's
    // session also announces her online to bob: another refused publish,
    // also not kept.)
    let alice_a = a.connect(&alice).await;
    alice_a
        .push(In::Typing(pb::Typing {
            conversation_id: sent.conversation_id.clone(),
            ..Default::default()
        }))
        .await;
    await_metric(a.http_addr, "chat_bus_publish_failures_total", 3).await;
    assert_eq!(
        metric(a.http_addr, "chat_dead_letters_total").await,
        Some(1)
    );

    let list = admin_http(a.http_addr, "GET", "/admin/dead-letters").await;
    let letters = list.data::<DeadLetterPage>().dead_letters;
    assert_eq!(letters.len(), 1, "{}", list.body);
    let letter = &letters[0];
    assert_eq!(letter.node, a_node);
    assert!(
        letter
            .reason
            .starts_with(&format!("publish to node {b_node} failed after 3 attempts")),
        "{}",
        letter.reason
    );
    let id = letter.id;

    // Still down: not delivered, kept pending, the attempt counted.
    let replay_path = format!("/admin/dead-letters/{id}/replay");
    let failed = admin_http(a.http_addr, "POST", &replay_path).await;
    assert_eq!(failed.status, 503, "{}", failed.body);
    assert!(
        failed.body.contains("not delivered: publish to node"),
        "{}",
        failed.body
    );
    let shown = admin_http(a.http_addr, "GET", &format!("/admin/dead-letters/{id}")).await;
    assert_eq!(shown.data::<DeadLetterDetail>().letter.replay_attempts, 1);
    // Not replayed: an explicit null on the wire.
    assert_eq!(shown.json["data"]["replayed_at_unix_ms"], Value::Null);
    assert_eq!(
        metric(a.http_addr, "chat_dead_letters_total").await,
        Some(1),
        "a failed replay is no new dead letter"
    );

    bus.failing.store(false, Ordering::SeqCst);
    let all = admin_http(a.http_addr, "POST", "/admin/dead-letters/replay").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let batch: ReplayBatch = all.data();
    assert_eq!((batch.replayed, batch.failed), (1, 0));
    assert_eq!(
        all.json["data"]["results"],
        json!([{ "id": id, "outcome": "replayed", "local_sessions": 0, "nodes": [b_node] }])
    );
    assert_eq!(bob_b.message().await, sent);

    let pending = admin_http(a.http_addr, "GET", "/admin/dead-letters?pending=true").await;
    assert!(ids(&pending).is_empty(), "{}", pending.body);
    drop(alice_a);
    a.stop().await;
    b.stop().await;
}

/// Without a configured token the admin API does not exist: every admin
/// path answers exactly like an unknown route, token or not.
#[tokio::test]
async fn without_a_token_the_admin_api_does_not_exist() {
    let server = TestServer::start().await;
    let unknown = http(server.http_addr, "GET", "/no-such-route", None).await;
    assert_eq!(unknown.status, 404);
    for (method, path) in [
        ("GET", "/admin/dead-letters"),
        ("GET", "/admin/dead-letters/1"),
        ("POST", "/admin/dead-letters/1/replay"),
        ("POST", "/admin/dead-letters/replay"),
        ("DELETE", "/admin/dead-letters"),
        ("PUT", "/admin/dead-letters"),
    ] {
        for answer in [
            admin_http(server.http_addr, method, path).await,
            http(server.http_addr, method, path, None).await,
        ] {
            assert_eq!(answer.status, 404, "{method} {path}: {}", answer.body);
            assert_eq!(
                answer.json["error"], unknown.json["error"],
                "{method} {path}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_admin_api_wants_the_configured_token() {
    let (server, _store, _dir) = node().await;
    let addr = server.http_addr;
    let with = |auth: &'static str| async move {
        http_with(
            addr,
            "GET",
            "/admin/dead-letters",
            &[("Authorization", auth)],
            None,
        )
        .await
    };
    let missing = http(addr, "GET", "/admin/dead-letters", None).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.json["error"]["kind"], "unauthenticated");
    for wrong in [
        "Bearer not-the-admin-token-at-all",
        "Bearer test-admin-token-012345678",
        "Basic test-admin-token-0123456789",
        "test-admin-token-0123456789",
        "Bearer",
    ] {
        assert_eq!(with(wrong).await.status, 401, "{wrong}");
    }
    // The wrong method, too, says nothing before the token is checked.
    let put = http(addr, "PUT", "/admin/dead-letters", None).await;
    assert_eq!(put.status, 401);

    let right = admin_http(addr, "GET", "/admin/dead-letters").await;
    assert_eq!(right.status, 200, "{}", right.body);
    assert_eq!(
        right.json["data"],
        json!({ "dead_letters": [], "has_more": false, "next_after": null })
    );
    let lowercase = format!("bearer {TEST_ADMIN_TOKEN}");
    let answer = http_with(
        addr,
        "GET",
        "/admin/dead-letters",
        &[("authorization", &lowercase)],
        None,
    )
    .await;
    assert_eq!(answer.status, 200);

    for (method, path, status) in [
        ("GET", "/admin/dead-letters/abc", 400),
        ("GET", "/admin/dead-letters/999", 404),
        ("POST", "/admin/dead-letters/999/replay", 404),
        ("GET", "/admin/dead-letters?limit=0", 400),
        ("GET", "/admin/dead-letters?limit=201", 400),
        ("GET", "/admin/dead-letters?after=-1", 400),
        ("GET", "/admin/dead-letters?pending=maybe", 400),
        ("DELETE", "/admin/dead-letters?before=yesterday", 400),
        ("PUT", "/admin/dead-letters", 404),
        ("GET", "/admin/dead-letters/replay", 404),
    ] {
        let answer = admin_http(addr, method, path).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        assert_eq!(
            answer.json["code"], status,
            "{method} {path}: the JSON envelope"
        );
    }
    let missing = admin_http(addr, "GET", "/admin/dead-letters/999").await;
    assert_eq!(missing.json["error"]["message"], "dead letter not found");
    let purged = admin_http(addr, "DELETE", "/admin/dead-letters").await;
    assert_eq!(purged.json["data"], json!({ "purged": 0 }));
    server.stop().await;
}

/// Listing pages, replay of everything pending (what decodes is delivered,
/// to nobody when its users have no session, which is no failure; what
/// does not decode stays), and the purges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_replay_and_purge_over_http() {
    let (server, store, _dir) = node().await;
    let addr = server.http_addr;
    let bob = server.register("bob").await;
    let mut live = server.connect(&bob).await;
    let garbage = add(&store, "undecodable delivery record: test", b"\x00\x01").await;
    let for_bob = add(
        &store,
        "publish to node b failed after 3 attempts: test",
        &message_envelope(&["bob"], "c-1", 4, "alice", "replayed to bob"),
    )
    .await;
    let for_nobody = add(
        &store,
        "publish to node b failed after 3 attempts: test",
        &message_envelope(&["nobody"], "c-2", 1, "alice", "for nobody"),
    )
    .await;
    assert_eq!(metric(addr, "chat_dead_letters_stored").await, Some(3));

    let first = admin_http(addr, "GET", "/admin/dead-letters?limit=2").await;
    assert_eq!(ids(&first), [garbage, for_bob]);
    let page: DeadLetterPage = first.data();
    assert!(page.has_more);
    assert_eq!(page.next_after, Some(for_bob));
    // A list shows no payloads.
    assert!(first.json["data"]["dead_letters"][0]
        .get("payload_hex")
        .is_none());
    let next = admin_http(
        addr,
        "GET",
        &format!("/admin/dead-letters?limit=2&after={for_bob}"),
    )
    .await;
    assert_eq!(ids(&next), [for_nobody]);
    assert!(!next.data::<DeadLetterPage>().has_more);

    let all = admin_http(addr, "POST", "/admin/dead-letters/replay").await;
    assert_eq!(all.status, 200, "{}", all.body);
    let batch: ReplayBatch = all.data();
    assert_eq!(
        outcomes(&batch),
        [
            (garbage, "not_replayable"),
            (for_bob, "replayed"),
            (for_nobody, "replayed")
        ]
    );
    assert_eq!(local_sessions(&batch.results[1]), 1);
    assert_eq!(local_sessions(&batch.results[2]), 0);
    assert_eq!(
        (batch.replayed, batch.not_replayable, batch.failed),
        (2, 1, 0)
    );
    let got = live.message().await;
    assert_eq!(
        (
            got.conversation_id.as_str(),
            got.seq,
            got.body.as_str(),
            got.sender.as_str()
        ),
        ("c-1", 4, "replayed to bob", "alice")
    );
    let pending = admin_http(addr, "GET", "/admin/dead-letters?pending=true").await;
    assert_eq!(ids(&pending), [garbage]);

    let created = store
        .dead_letter(garbage)
        .await
        .unwrap()
        .unwrap()
        .created_at_unix_ms;
    let none = admin_http(
        addr,
        "DELETE",
        &format!("/admin/dead-letters?before={created}"),
    )
    .await;
    assert_eq!(none.data::<Purged>().purged, 0);
    let replayed = admin_http(addr, "DELETE", "/admin/dead-letters?replayed=true").await;
    assert_eq!(replayed.data::<Purged>().purged, 2);
    let rest = admin_http(addr, "DELETE", "/admin/dead-letters").await;
    assert_eq!(rest.data::<Purged>().purged, 1);
    assert_eq!(metric(addr, "chat_dead_letters_stored").await, Some(0));
    let empty = admin_http(addr, "GET", "/admin/dead-letters").await;
    assert!(ids(&empty).is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_command_lists_shows_replays_and_purges() {
    let (server, store, _dir) = node().await;
    let url = server.http_url();
    let token = Some(TEST_ADMIN_TOKEN);
    let bob = server.register("bob").await;
    let mut live = server.connect(&bob).await;
    let garbage = add(&store, "undecodable delivery record: test", b"\xff\x00").await;
    let envelope = message_envelope(&["bob"], "c-cli", 2, "alice", "via the command");
    let for_bob = add(
        &store,
        "publish to node b failed after 3 attempts: x",
        &envelope,
    )
    .await;

    let list = admin_cli!(&url, token, &["dead-letters", "list"]).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    let lines: Vec<Vec<&str>> = list
        .stdout
        .lines()
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(lines.len(), 2, "{}", list.stdout);
    for (line, (id, reason)) in lines.iter().zip([
        (garbage, "undecodable delivery record: test"),
        (for_bob, "publish to node b failed after 3 attempts: x"),
    ]) {
        assert_eq!(line.len(), 4, "{line:?}");
        assert_eq!(line[0], id.to_string());
        chrono::DateTime::parse_from_rfc3339(line[1]).expect("an RFC 3339 time");
        assert_eq!((line[2], line[3]), ("elsewhere", reason));
    }
    let limited = admin_cli!(&url, token, &["dead-letters", "list", "--limit", "1"]).await;
    assert_eq!(limited.stdout.lines().count(), 1);

    let shown = admin_cli!(&url, token, &["dead-letters", "show", &garbage.to_string()]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("replayed: never\n"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.ends_with("payload (hex):\nff00\n"),
        "{}",
        shown.stdout
    );
    let shown = admin_cli!(&url, token, &["dead-letters", "show", &for_bob.to_string()]).await;
    let text = String::from_utf8(envelope.clone()).unwrap();
    assert!(
        shown
            .stdout
            .ends_with(&format!("payload (text):\n{text}\n")),
        "{}",
        shown.stdout
    );

    let refused = admin_cli!(
        &url,
        token,
        &["dead-letters", "replay", &garbage.to_string()],
    )
    .await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.starts_with("error: not replayable: "),
        "{}",
        refused.stderr
    );
    let replayed = admin_cli!(
        &url,
        token,
        &["dead-letters", "replay", &for_bob.to_string()],
    )
    .await;
    assert_eq!(replayed.code, 0, "{}", replayed.stderr);
    assert_eq!(
        replayed.stdout,
        format!("{for_bob}\treplayed\tlocal sessions: 1, nodes: -\n")
    );
    let got = live.message().await;
    assert_eq!(
        (got.conversation_id.as_str(), got.body.as_str()),
        ("c-cli", "via the command")
    );
    // Only the unreadable one is still pending: reported, not a failure.
    let all = admin_cli!(&url, token, &["dead-letters", "replay-all"]).await;
    assert_eq!(all.code, 0, "{}", all.stderr);
    let line: Vec<&str> = all.stdout.trim_end().split('\t').collect();
    assert_eq!(line[..2], [garbage.to_string().as_str(), "not_replayable"]);

    // Failures and their exit codes.
    let wrong = admin_cli!(
        &url,
        Some("not-the-admin-token!"),
        &["dead-letters", "list"],
    )
    .await;
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    let missing = admin_cli!(&url, token, &["dead-letters", "show", "999"]).await;
    assert_eq!(
        (missing.code, missing.stderr.as_str()),
        (4, "error: dead letter not found\n")
    );
    let no_token = admin_cli!(&url, None, &["dead-letters", "list"]).await;
    assert_eq!(no_token.code, 2, "{}", no_token.stderr);
    let usage = admin_cli!(&url, token, &["dead-letters", "show", "abc"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let bad_time = admin_cli!(&url, token, &["dead-letters", "purge", "--before", "soon"]).await;
    assert_eq!(bad_time.code, 2, "{}", bad_time.stderr);
    let unreachable = admin_cli!("http://127.0.0.1:1", token, &["dead-letters", "list"]).await;
    assert_eq!(unreachable.code, 1, "{}", unreachable.stderr);

    let purged = admin_cli!(&url, token, &["dead-letters", "purge", "--replayed"]).await;
    assert_eq!(
        (purged.code, purged.stdout.as_str()),
        (0, "1\n"),
        "{}",
        purged.stderr
    );
    let before = admin_cli!(
        &url,
        token,
        &["dead-letters", "purge", "--before", "2000-01-01T00:00:00Z"],
    )
    .await;
    assert_eq!(before.stdout, "0\n");
    let rest = admin_cli!(&url, token, &["dead-letters", "purge"]).await;
    assert_eq!(rest.stdout, "1\n");
    let empty = admin_cli!(&url, token, &["dead-letters", "list"]).await;
    assert_eq!((empty.code, empty.stdout.as_str()), (0, ""));
    server.stop().await;

    // A server without a token has no admin API.
    let plain = TestServer::start().await;
    let absent = admin_cli!(&plain.http_url(), token, &["dead-letters", "list"]).await;
    assert_eq!(absent.code, 4, "{}", absent.stderr);
    assert!(absent.stderr.contains("--admin-token"), "{}", absent.stderr);
    plain.stop().await;
}

/// Dead letters are bounded: a huge record is kept cut (and says so), and
/// past `max_dead_letters` new ones are refused, logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(MemoryBus::default());
    let (backends, store) = backends(&dir, bus.clone());
    let node = unique("n-");
    let id = node.clone();
    let server = TestServer::start_node(Some(backends), |c| {
        c.cluster.node_id = id;
        c.limits.max_dead_letters = 2;
    })
    .await;
    let addr = server.http_addr;
    // Serving HTTP means the inbox is open: nothing published is missed.
    assert_eq!(metric(addr, "chat_dead_letters_total").await, Some(0));
    let max = chat_server::dead_letters::MAX_PAYLOAD_BYTES;
    let huge = vec![b'x'; max + 1000];
    bus.publish(&node, Bytes::from(huge)).await.unwrap();
    await_metric(addr, "chat_dead_letters_total", 1).await;
    let page = store.dead_letters(Default::default()).await.unwrap();
    assert_eq!(page[0].payload.len(), max);
    assert!(
        page[0]
            .reason
            .ends_with(&format!("(payload cut from {} to {max} bytes)", max + 1000)),
        "{}",
        page[0].reason
    );
    for _ in 0..2 {
        bus.publish(&node, Bytes::from_static(b"\xff"))
            .await
            .unwrap();
    }
    await_metric(addr, "chat_dead_letter_failures_total", 1).await;
    assert_eq!(metric(addr, "chat_dead_letters_total").await, Some(2));
    assert_eq!(metric(addr, "chat_dead_letters_stored").await, Some(2));
    assert_eq!(
        metric(addr, "chat_bus_undecodable_records_total").await,
        Some(3)
    );
    server.stop().await;
}

//! Faults under traffic, on real services, checked against a ledger: every
//! message a sender saw acknowledged is in the history exactly once, each
//! recipient ends with all of them exactly once and in seq order after
//! catch-up, and unread counts agree. Network faults go through the TCP
//! fault proxy of the test support code, between a client and the server
//! or between the server and PostgreSQL or Redis.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chat_proto as pb;
use chat_server::config::{BusBackend, RegistryBackend, StoreBackend};
use chat_test_support::fault::{Fault, Proxy};
use chat_test_support::ledger::{catch_up, chat_via, show, Ledger};
use chat_test_support::process::{free_addr, ServerProcess};
use chat_test_support::services::{fresh_postgres, postgres_addr, redis_url, unique};
use chat_test_support::{await_metric, send_request, Live, TestServer, WAIT};
use pb::server_frame::Frame;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_chat-server");

/// Fault 5: the connection is cut after the server committed a send but
/// before its reply arrived; the client retries with the same
/// `client_msg_id`, over a new connection, and gets the original: exactly
/// one copy exists. Both for the unary call and for a live session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_after_a_cut_reply_exists_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut bob_live = server.connect(&bob).await;
    let proxy = Proxy::start(server.grpc_addr).await;
    let mut ledger = Ledger::default();
    let mut shown = BTreeMap::new();

    // Unary: the request gets through, the reply does not.
    let mut alice_via = chat_via(proxy.addr(), &alice.secret).await;
    proxy.set_downstream(Fault::Blackhole);
    let pending = tokio::spawn(async move {
        alice_via
            .send_message(send_request("bob", "once", "k1"))
            .await
    });
    // Bob's live delivery shows it was committed.
    let committed = bob_live.message().await;
    show(&mut shown, committed.clone());
    proxy.cut();
    let lost = tokio::time::timeout(WAIT, pending)
        .await
        .expect("a cut call ends")
        .expect("send task");
    assert!(lost.is_err(), "a reply crossed the blackhole: {lost:?}");
    proxy.set_downstream(Fault::None);
    let retried = chat_via(proxy.addr(), &alice.secret)
        .await
        .send_message(send_request("bob", "once", "k1"))
        .await
        .expect("the retry is answered")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(retried, committed, "the retry returns the original");
    ledger.ack(retried);

    // A live session: the same, with a send frame.
    let mut alice_live = Live::open(chat_via(proxy.addr(), &alice.secret).await).await;
    proxy.set_downstream(Fault::Blackhole);
    alice_live.send_to("bob", "twice?", "k2").await;
    let committed = bob_live.message().await;
    show(&mut shown, committed.clone());
    proxy.cut();
    // Frames from before the blackhole (presence) may still be read; the
    // ack may not.
    loop {
        match alice_live.next().await {
            None | Some(Err(_)) => break,
            Some(Ok(Frame::Ack(ack))) => panic!("an ack crossed the blackhole: {ack:?}"),
            Some(Ok(_)) => {}
        }
    }
    proxy.set_downstream(Fault::None);
    let mut alice_live = Live::open(chat_via(proxy.addr(), &alice.secret).await).await;
    alice_live.send_to("bob", "twice?", "k2").await;
    let ack = alice_live.ack().await;
    assert_eq!(ack.client_msg_id, "k2");
    assert_eq!(ack.message.as_ref(), Some(&committed));
    ledger.ack(committed.clone());

    // Bob was shown nothing more: an ack-only retry is not a new message.
    alice_live.send_to("bob", "after", "k3").await;
    let after = alice_live.ack().await.message.expect("message");
    let next = bob_live.message().await;
    assert_eq!(next, after, "the retries were not delivered again");
    show(&mut shown, next);
    ledger.ack(after);

    let mut bob_client = server.chat(&bob).await;
    ledger
        .check(&mut bob_client, &committed.conversation_id, &shown)
        .await;
}

/// The resident memory of a process, from `/proc`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Fault 6: a client that stops reading. Its session is disconnected once
/// its bounded queue fills, the server's memory does not grow with what it
/// was sent, another recipient gets everything meanwhile, and the slow
/// client catches up on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_disconnected_and_memory_stays_flat() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        Path::new(BINARY),
        data.path(),
        free_addr(),
        &[
            ("CHAT_SESSION_QUEUE", "128".to_owned()),
            ("CHAT_DURABILITY", "normal".to_owned()),
        ],
    )
    .await;
    let pid = server.child.id().expect("server pid");
    let alice = server.register("alice").await;
    let slow = server.register("slow").await;
    let carol = server.register("carol").await;

    let proxy = Proxy::start(server.grpc_addr).await;
    let mut slow_live = Live::open(chat_via(proxy.addr(), &slow).await).await;
    let mut carol_live = Live::open(server.chat(&carol).await).await;
    let mut alice_live = Live::open(server.chat(&alice).await).await;
    proxy.set_downstream(Fault::Stall);
    await_metric(server.http_addr, "chat_sessions", 3).await;
    let before = rss_bytes(pid);

    // 24 MB for the stalled reader; every tenth message also to carol.
    const MESSAGES: usize = 6000;
    let body = "s".repeat(4096);
    let (mut to_slow, mut to_carol) = (Ledger::default(), Ledger::default());
    let mut carol_shown = BTreeMap::new();
    for i in 0..MESSAGES {
        alice_live.send_to("slow", &body, &format!("s{i}")).await;
        to_slow.ack(alice_live.ack().await.message.expect("message"));
        if i % 10 == 0 {
            alice_live
                .send_to("carol", &format!("c{i}"), &format!("c{i}"))
                .await;
            to_carol.ack(alice_live.ack().await.message.expect("message"));
            show(&mut carol_shown, carol_live.message().await);
        }
    }
    // The stalled session was dropped; the others stay.
    await_metric(server.http_addr, "chat_sessions", 2).await;
    let after = rss_bytes(pid);
    let pushed = (MESSAGES * body.len()) as u64;
    eprintln!(
        "stalled reader: {MESSAGES} messages ({} MiB) sent to it, server RSS {} -> {} MiB",
        pushed >> 20,
        before >> 20,
        after >> 20
    );
    assert!(
        after < before + pushed / 3,
        "the server grew from {before} to {after} bytes while {pushed} bytes were \
         sent to a reader that stopped"
    );

    // Lifting the stall: what was on the wire arrives, then the status
    // that says why the session ended.
    proxy.set_downstream(Fault::None);
    let mut slow_shown = BTreeMap::new();
    let status = loop {
        match slow_live.next().await {
            Some(Ok(Frame::Message(m))) => show(&mut slow_shown, m),
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("the stream ended without saying why"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        slow_shown.len() < MESSAGES,
        "a stalled reader got everything live"
    );

    // Reconnecting replays what it had not been given.
    let mut slow_live = Live::open(server.chat(&slow).await).await;
    while slow_shown.len() < MESSAGES {
        show(&mut slow_shown, slow_live.message().await);
    }
    let conversation = to_slow.acked[&1].conversation_id.clone();
    to_slow
        .check(&mut server.chat(&slow).await, &conversation, &slow_shown)
        .await;
    let conversation = to_carol.acked[&1].conversation_id.clone();
    to_carol
        .check(&mut server.chat(&carol).await, &conversation, &carol_shown)
        .await;
}

/// Fault 4: PostgreSQL goes away under traffic (its connections are cut,
/// new ones refused). Sends fail with `UNAVAILABLE`, none acknowledged;
/// once it is back they succeed again, and the retries of the failed ones
/// commit exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_fail_unavailable_while_postgres_is_down_and_recover() {
    let url = fresh_postgres().await;
    let proxy = Proxy::start(postgres_addr(&url)).await;
    let via = url.replace(&postgres_addr(&url).to_string(), &proxy.addr().to_string());
    assert_ne!(via, url, "the store goes through the proxy");
    let server = TestServer::start_with(move |c| {
        c.cluster.store = StoreBackend::Postgres { url: via };
    })
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut bob_live = server.connect(&bob).await;
    let alice_client = server.chat(&alice).await;
    let mut ledger = Ledger::default();
    let mut shown = BTreeMap::new();
    let send = |i: usize| {
        let mut client = alice_client.clone();
        async move {
            client
                .send_message(send_request("bob", &format!("m{i}"), &format!("k{i}")))
                .await
        }
    };
    for i in 0..20 {
        ledger.ack(send(i).await.expect("send").into_inner().message.unwrap());
        show(&mut shown, bob_live.message().await);
    }

    proxy.refuse(true);
    proxy.cut();
    for i in 20..25 {
        let failed = send(i)
            .await
            .expect_err("no acknowledgement without the store");
        assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    }

    proxy.refuse(false);
    let down_since = tokio::time::Instant::now();
    // The first send after the outage may still meet a connection that
    // died with it; the retry of the same client_msg_id is the client's
    // answer to UNAVAILABLE.
    let mut recovered = None;
    for i in 20..30 {
        let message = loop {
            match send(i).await {
                Ok(reply) => {
                    recovered.get_or_insert(down_since.elapsed());
                    break reply.into_inner().message.unwrap();
                }
                Err(status) if status.code() == Code::Unavailable => {
                    assert!(down_since.elapsed() < WAIT, "the store never came back");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        };
        ledger.ack(message);
        show(&mut shown, bob_live.message().await);
    }
    eprintln!(
        "postgres down: 5 sends refused with UNAVAILABLE, {} acknowledged in all, \
         sends committing again {:?} after PostgreSQL came back",
        ledger.acked.len(),
        recovered.expect("a send after the outage")
    );
    let conversation = ledger.acked[&1].conversation_id.clone();
    let mut bob_client = server.chat(&bob).await;
    ledger.check(&mut bob_client, &conversation, &shown).await;
}

/// Fault 2: Redis, which holds the session registry and carries the bus,
/// restarts under traffic: its connections are cut, new ones refused for a
/// while, and (with `flush`) everything it held is gone, as after a
/// restart of a Redis that keeps nothing on disk. Only this cluster's keys
/// are deleted, so other tests sharing the Redis are untouched. Sessions
/// are registered again, live delivery resumes, and nothing acknowledged
/// is lost.
async fn redis_goes_away(flush: bool) {
    use chat_cluster::SessionRegistry;
    let postgres = fresh_postgres().await;
    let redis = redis_url();
    let redis_addr: SocketAddr = redis
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("CHAT_TEST_REDIS_URL is redis://host:port/");
    let proxy = Proxy::start(redis_addr).await;
    let via = format!("redis://{}/", proxy.addr());
    let prefix = format!("{}:", unique("t"));
    let (a_node, b_node) = (unique("a-"), unique("b-"));
    let configure = |node: String| {
        let (postgres, via, prefix) = (postgres.clone(), via.clone(), prefix.clone());
        move |c: &mut chat_server::Config| {
            c.cluster.node_id = node;
            c.cluster.store = StoreBackend::Postgres { url: postgres };
            c.cluster.registry = RegistryBackend::Redis {
                url: via.clone(),
                prefix: prefix.clone(),
            };
            c.cluster.bus = BusBackend::Redis { url: via, prefix };
            c.cluster.session_ttl = Duration::from_secs(1);
        }
    };
    let a = TestServer::start_with(configure(a_node)).await;
    let b = TestServer::start_with(configure(b_node.clone())).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let mut bob_live = b.connect(&bob).await;
    let mut alice_live = a.connect(&alice).await;
    let registry =
        chat_cluster::registry::RedisRegistry::connect(&redis, &prefix, Duration::from_secs(1))
            .await
            .expect("Redis");
    let mut ledger = Ledger::default();
    let mut shown = BTreeMap::new();
    let mut n = 0;
    let mut send = async |live: &mut Live| -> Option<pb::Message> {
        n += 1;
        live.send_to("bob", &format!("m{n}"), &format!("k{n}"))
            .await;
        let ack = live.ack().await;
        ack.message
    };

    for _ in 0..10 {
        ledger.ack(send(&mut alice_live).await.expect("acknowledged"));
        show(&mut shown, bob_live.message().await);
    }

    proxy.refuse(true);
    proxy.cut();
    if flush {
        let mut direct = redis::Client::open(redis.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut direct)
            .await
            .unwrap();
        assert!(!keys.is_empty(), "the registry had keys to lose");
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut direct)
            .await
            .unwrap();
    }
    // While Redis is away the store still commits: a send is acknowledged
    // (and delivered later) or refused, never acknowledged and lost.
    for _ in 0..10 {
        if let Some(message) = send(&mut alice_live).await {
            ledger.ack(message);
        }
    }
    proxy.refuse(false);
    let back = tokio::time::Instant::now();

    // Bob's session is registered again by B's heartbeat.
    loop {
        let located = registry.locate(&["bob"]).await.expect("locate");
        if located
            .get("bob")
            .is_some_and(|nodes| nodes.contains(&b_node))
        {
            break;
        }
        assert!(back.elapsed() < WAIT, "bob's session never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Live delivery resumes: a new message reaches bob as it is sent.
    let resumed = send(&mut alice_live).await.expect("acknowledged");
    ledger.ack(resumed.clone());
    let conversation = resumed.conversation_id.clone();
    loop {
        let message = bob_live.message().await;
        let seq = message.seq;
        show(&mut shown, message);
        if seq == resumed.seq {
            break;
        }
    }
    eprintln!(
        "redis {}: {} acknowledged, {} shown live, delivery back {:?} after Redis",
        if flush { "flushed" } else { "restarted" },
        ledger.acked.len(),
        shown.len(),
        back.elapsed()
    );
    let mut bob_client = b.chat(&bob).await;
    catch_up(&mut bob_client, &conversation, &mut shown).await;
    ledger.check(&mut bob_client, &conversation, &shown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarts_under_traffic() {
    redis_goes_away(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_is_flushed_under_traffic() {
    redis_goes_away(true).await;
}

/// Fault 8: SIGTERM under traffic. Senders pipeline their sends on live
/// streams; the server stops taking work, every stream ends with
/// `UNAVAILABLE` (reconnect elsewhere), the process exits cleanly, and
/// after a restart on the same data every acknowledged message is there
/// once; the sends never acknowledged, retried with their
/// `client_msg_id`, commit once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_traffic_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 400;
    const WINDOW: usize = 16;
    let data = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(Path::new(BINARY), data.path(), free_addr(), &[]).await;
    let reader = server.register("reader").await;
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let half_way = Arc::new(tokio::sync::Notify::new());
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let secret = server.register(&format!("sender{s}")).await;
        let live = Live::open(server.chat(&secret).await).await;
        let (acked_so_far, half_way) = (acked_so_far.clone(), half_way.clone());
        senders.push((
            secret,
            tokio::spawn(async move {
                let mut live = live;
                let mut acked: Vec<pb::Message> = Vec::new();
                let mut pushed = 0;
                // Pipelined: up to WINDOW sends wait for their ack.
                let status = 'stream: loop {
                    while pushed < PER_SENDER && pushed < acked.len() + WINDOW {
                        let frame = pb::client_frame::Frame::Send(send_request(
                            "reader",
                            &format!("m{pushed}"),
                            &format!("k{pushed}"),
                        ));
                        if !live.try_push(frame).await {
                            break;
                        }
                        pushed += 1;
                    }
                    match live.next().await {
                        Some(Ok(Frame::Ack(ack))) => {
                            let Some(message) = ack.message else {
                                // Failing cleanly is allowed: a send the
                                // server could not finish, and said so.
                                let error = ack.error.expect("an ack has a message or an error");
                                assert_eq!(error.kind, "unavailable", "{error:?}");
                                assert_eq!(ack.client_msg_id, format!("k{}", acked.len()));
                                break 'stream Some(tonic::Status::unavailable(error.message));
                            };
                            assert_eq!(message.client_msg_id, format!("k{}", acked.len()));
                            acked.push(message);
                            if acked_so_far.fetch_add(1, Ordering::Relaxed) + 1
                                == SENDERS * PER_SENDER / 4
                            {
                                half_way.notify_one();
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(status)) => break 'stream Some(status),
                        None => break 'stream None,
                    }
                    if acked.len() == PER_SENDER {
                        break None;
                    }
                };
                (acked, status)
            }),
        ));
    }

    half_way.notified().await;
    let pid = server.child.id().expect("server pid");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let exit = tokio::time::timeout(WAIT, server.child.wait())
        .await
        .expect("the server stops within the grace period")
        .expect("wait for the server");
    assert!(exit.success(), "the server exited with {exit}");

    let mut results = Vec::new();
    for (secret, task) in senders {
        let (acked, status) = task.await.expect("sender task");
        results.push((secret, acked, status));
    }
    let acked_total: usize = results.iter().map(|r| r.1.len()).sum();
    assert!(
        acked_total < SENDERS * PER_SENDER,
        "every send finished before the signal: no traffic was in flight"
    );
    for (_, acked, status) in &results {
        if acked.len() < PER_SENDER {
            let status = status
                .as_ref()
                .expect("a status saying why the stream ended");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
    }

    // The same data, a new process: everything acknowledged is there, and
    // retrying the rest commits each once.
    let server = ServerProcess::start(Path::new(BINARY), data.path(), free_addr(), &[]).await;
    for (secret, acked, _) in &results {
        let mut ledger = Ledger::default();
        let mut client = server.chat(secret).await;
        for message in acked {
            ledger.ack(message.clone());
        }
        for i in 0..PER_SENDER {
            let message = client
                .send_message(send_request("reader", &format!("m{i}"), &format!("k{i}")))
                .await
                .expect("a retry after the restart")
                .into_inner()
                .message
                .expect("message");
            if let Some(before) = acked.get(i) {
                assert_eq!(
                    &message, before,
                    "a retry returns the acknowledged original"
                );
            }
            ledger.ack(message);
        }
        let conversation = ledger.acked[&1].conversation_id.clone();
        let mut reader_client = server.chat(&reader).await;
        let mut shown = BTreeMap::new();
        catch_up(&mut reader_client, &conversation, &mut shown).await;
        ledger
            .check(&mut reader_client, &conversation, &shown)
            .await;
    }
    eprintln!(
        "sigterm: {acked_total} of {} sends acknowledged before the stop, none lost",
        SENDERS * PER_SENDER
    );
}

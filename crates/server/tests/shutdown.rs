//! Graceful shutdown: on SIGTERM a server stops accepting, lets every
//! session commit and acknowledge the sends it has read, tells the clients
//! to reconnect elsewhere (`UNAVAILABLE`), leaves the registry clean and
//! exits 0; the grace period bounds all of it.

use std::path::Path;
use std::time::{Duration, Instant};

use chat_proto as pb;
use chat_server::config::StoreBackend;
use chat_test_support::fault::{Fault, Proxy};
use chat_test_support::ledger::history;
use chat_test_support::process::{free_addr, ServerProcess};
use chat_test_support::services::{fresh_postgres, redis_url, unique};
use chat_test_support::{http, send_request, Live, TestServer, WAIT};
use pb::server_frame::Frame;
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_chat-server");

/// The registry's keys under `prefix`.
async fn redis_keys(prefix: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url()).expect("Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is reachable");
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS")
}

/// Reads a stream to its end: the messages of its acks, and the status it
/// ended with.
async fn drain(live: &mut Live) -> (Vec<pb::Message>, Option<tonic::Status>) {
    let mut acked = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, live.recv())
            .await
            .expect("the stream ends")
        {
            Some(Ok(Frame::Ack(ack))) => acked.push(ack.message.expect("an acknowledged send")),
            Some(Ok(_)) => {}
            Some(Err(status)) => return (acked, Some(status)),
            None => return (acked, None),
        }
    }
}

fn assert_told_to_reconnect(status: Option<tonic::Status>) {
    let status = status.expect("the stream ends with a status, not silently");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_acknowledges_every_committed_send_and_leaves_the_registry_clean() {
    const SENDS: usize = 5000;
    const WINDOW: usize = 64;
    let data = tempfile::tempdir().unwrap();
    let prefix = unique("shutdown") + ":";
    let env = [
        ("CHAT_REGISTRY", "redis".to_owned()),
        ("CHAT_REDIS_URL", redis_url()),
        ("CHAT_REDIS_PREFIX", prefix.clone()),
        ("CHAT_SHUTDOWN_GRACE_SECS", "10".to_owned()),
    ];
    let mut server = ServerProcess::start(Path::new(BINARY), data.path(), free_addr(), &env).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut bob_live = Live::open(server.chat(&bob).await).await;
    let mut alice_live = Live::open(server.chat(&alice).await).await;
    assert!(
        !redis_keys(&prefix).await.is_empty(),
        "the sessions are registered in Redis"
    );

    // Alice pipelines sends; after the first hundred acks the server is
    // told to stop, with sends read and not yet committed, and more on
    // their way.
    let mut acked: Vec<pb::Message> = Vec::new();
    let mut pushed = 0;
    let mut signalled = false;
    let status = loop {
        while pushed < SENDS && pushed < acked.len() + WINDOW {
            let send = send_request("bob", &format!("m{pushed}"), &format!("k{pushed}"));
            if !alice_live
                .try_push(pb::client_frame::Frame::Send(send))
                .await
            {
                break;
            }
            pushed += 1;
        }
        match tokio::time::timeout(WAIT, alice_live.recv())
            .await
            .expect("a frame or the end")
        {
            Some(Ok(Frame::Ack(ack))) => {
                let Some(message) = ack.message else {
                    panic!("a failed ack: {:?}", ack.error);
                };
                assert_eq!(
                    message.client_msg_id,
                    format!("k{}", acked.len()),
                    "in order"
                );
                acked.push(message);
            }
            Some(Ok(_)) => {}
            Some(Err(status)) => break Some(status),
            None => break None,
        }
        if acked.len() == 100 && !signalled {
            let pid = server.child.id().expect("server pid").to_string();
            let term = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            assert!(term.expect("kill -TERM").success());
            signalled = true;
        }
        assert!(acked.len() < SENDS, "every send finished before the stop");
    };
    assert!(signalled);
    assert_told_to_reconnect(status);
    let (_, bob_status) = drain(&mut bob_live).await;
    assert_told_to_reconnect(bob_status);

    let exit = tokio::time::timeout(WAIT, server.child.wait())
        .await
        .expect("the server stops within the grace period")
        .expect("wait for the server");
    assert!(exit.success(), "the server exited with {exit}");
    assert_eq!(
        redis_keys(&prefix).await,
        Vec::<String>::new(),
        "the stopped server left nothing in the registry"
    );

    // Every send the server committed was acknowledged before it told the
    // client to go: the history is exactly the acks.
    let server = ServerProcess::start(Path::new(BINARY), data.path(), free_addr(), &[]).await;
    let mut client = server.chat(&alice).await;
    let conversation = acked[0].conversation_id.clone();
    let stored = history(&mut client, &conversation).await;
    assert_eq!(
        stored.len(),
        acked.len(),
        "{} committed, {} acknowledged",
        stored.len(),
        acked.len()
    );
    assert_eq!(stored, acked);
    eprintln!(
        "shutdown: {} of {SENDS} sends pushed, {} read and acknowledged before the stop, none committed unacknowledged",
        pushed,
        acked.len()
    );
}

/// A send stuck in the store (PostgreSQL stalls) cannot finish: the server
/// waits for it for the grace period, no longer, then closes the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_a_stop() {
    const GRACE: Duration = Duration::from_secs(1);
    let url = fresh_postgres().await;
    let target = url
        .rsplit_once('@')
        .map_or(url.as_str(), |(_, h)| h)
        .split('/')
        .next()
        .expect("host:port")
        .parse()
        .expect("a numeric host:port");
    let proxy = Proxy::start(target).await;
    let via = url.replace(&target.to_string(), &proxy.addr().to_string());
    let server = TestServer::start_with(move |c| {
        c.cluster.store = StoreBackend::Postgres { url: via };
        c.shutdown_grace = GRACE;
    })
    .await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    let mut alice_live = server.connect(&alice).await;
    alice_live.send_to("bob", "before", "k0").await;
    assert!(alice_live.ack().await.message.is_some());

    assert_eq!(
        http(server.http_addr, "GET", "/readyz", None).await.status,
        200
    );
    // The store stops answering; a send is read and hangs in its commit.
    proxy.set_upstream(Fault::Stall);
    alice_live.send_to("bob", "stuck", "k1").await;
    // Frames are read in order: once the pong is back, the send was read.
    alice_live
        .push(pb::client_frame::Frame::Ping(pb::Ping { nonce: 7 }))
        .await;
    match alice_live.frame().await {
        Frame::Pong(pong) => assert_eq!(pong.nonce, 7),
        other => panic!("expected the pong, got {other:?}"),
    }

    let http_addr = server.http_addr;
    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    // While the session drains, HTTP still answers, and says not ready.
    let deadline = Instant::now() + WAIT;
    let ready = loop {
        let answer = http(http_addr, "GET", "/readyz", None).await;
        if answer.status == 503 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(ready.status, 503, "{:?}", ready.json);
    assert_eq!(
        ready.json["error"]["message"], "the server is shutting down",
        "{:?}",
        ready.json
    );
    assert!(
        started.elapsed() < GRACE,
        "not ready while draining, not only once stopped"
    );
    stopping.await.expect("the stop");
    let took = started.elapsed();
    assert!(
        took >= GRACE,
        "the stop waited for the send in flight ({took:?})"
    );
    let (acked, status) = drain(&mut alice_live).await;
    assert!(acked.is_empty(), "the stuck send was not acknowledged");
    let status = status.expect("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    eprintln!("shutdown: a stop with a stuck send took {took:?} with a grace of {GRACE:?}");
    proxy.set_upstream(Fault::None);
}

//! Bursts of connections leave the server as they found it. One user with
//! 20 conversations opens 1,000 `Connect` streams at once over 10 HTTP/2
//! connections, each waits for its `ready` (the store read the user's
//! conversations, the replay has begun), then all are dropped without a
//! goodbye. Store operations wait for one of `store_connections` turns
//! (SQLite's reader threads, PostgreSQL's pool), so a burst adds no thread
//! and no database connection, and what it opened is closed again once
//! the sessions are gone. Against the real binary in a child process: only its `/proc` shows
//! threads, descriptors and memory.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_proto as pb;
use chat_test_support::proc::{self, mib, Sample};
use chat_test_support::process::{free_addr, ServerProcess};
use chat_test_support::services::{fresh_postgres, PostgresObserver};
use chat_test_support::{await_metric, send_request, WAIT};
use pb::server_frame::Frame;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

const BINARY: &str = env!("CARGO_BIN_EXE_chat-server");

/// Smaller than the default (16) so that the bounds below, which grow
/// with it, stay tight: a server whose reads outrun this many turns leaves
/// more descriptors on `chat.db` than the pool's four (measured: 8 to 72
/// more than at the start; SQLite keeps a closed connection's descriptor
/// while others hold locks on the file). The server is told explicitly.
const STORE_CONNECTIONS: u64 = 4;
const BURSTS: usize = 5;
/// HTTP/2 connections per burst, and streams on each.
const CHANNELS: usize = 10;
const STREAMS_PER_CHANNEL: usize = 100;
const CONVERSATIONS: usize = 20;
const MESSAGES_EACH: usize = 3;

/// Threads a burst may add at its peak: none that the store or the
/// sessions start (the tokio workers, the writer, the checkpointer and the
/// `STORE_CONNECTIONS` reader threads are there from the start; measured:
/// +0 over five bursts), and two for whatever the runtime starts lazily.
/// Before the reads ran on threads of the store's own, each took one of
/// tokio's blocking threads: +14 to +86 here, and the pool's 512 in a
/// release build.
const THREADS_ADDED: u64 = 2;

/// Descriptors on `chat.db` that may stay open after a burst: the read
/// pool keeps its connections between reads, at most one per turn, one
/// descriptor each.
const DB_FDS_ADDED: u64 = STORE_CONNECTIONS;

/// All descriptors that may stay open after a burst: each pooled read
/// connection holds `chat.db` and `chat.db-wal`, plus a few for whatever
/// else the server opens lazily (its HTTP connection to /metrics).
const FDS_ADDED: u64 = 2 * STORE_CONNECTIONS + 4;

/// Resident memory a burst may add at its peak. Measured (three runs of
/// a debug build, medians): 26 MiB at the start, 56 MiB after the first
/// burst, 61.5 MiB after the fifth, i.e. +36 MiB: mostly the 1,000
/// sessions' buffers and HTTP/2 stream state, which the allocator keeps
/// after they are freed, so later bursts add little. A server whose reads
/// each took a thread and a SQLite connection (stack and page cache) grew
/// by about 100 MiB under such bursts in a release build. 64 MiB leaves a
/// margin of three quarters over the measured growth.
const RSS_ADDED: u64 = 64 << 20;

/// One user, "burst", with `CONVERSATIONS` direct conversations, each
/// holding `MESSAGES_EACH` messages sent to them (so every connect has
/// something to replay). Returns the user's secret.
async fn populate(server: &ServerProcess) -> String {
    let secret = server.register("burst").await;
    for peer in 0..CONVERSATIONS {
        let peer_secret = server.register(&format!("peer{peer}")).await;
        let mut client = server.chat(&peer_secret).await;
        for n in 0..MESSAGES_EACH {
            client
                .send_message(send_request("burst", &format!("m{n}"), &format!("k{n}")))
                .await
                .expect("send to burst");
        }
    }
    secret
}

/// What one burst holds open: its connections and streams. Dropping it
/// drops them all at once, as a client that vanishes does.
struct Held {
    /// Streams that ended `UNAVAILABLE` instead of `ready`: their wait for
    /// a store turn ran out (PostgreSQL's pool gives up after a bounded
    /// wait, by design).
    refused: usize,
    _streams: Vec<(
        mpsc::Sender<pb::ClientFrame>,
        tonic::Streaming<pb::ServerFrame>,
    )>,
}

/// Opens `CHANNELS` × `STREAMS_PER_CHANNEL` streams of `secret`, each
/// waiting for its `ready` (or its refusal).
async fn burst(server: &ServerProcess, secret: &str) -> Held {
    let mut opening = JoinSet::new();
    for _ in 0..CHANNELS {
        // One channel is one HTTP/2 connection; its streams share it.
        let client = server.chat(secret).await;
        for _ in 0..STREAMS_PER_CHANNEL {
            let mut client = client.clone();
            opening.spawn(async move {
                let (frames_out, rx) = mpsc::channel(1);
                let mut frames_in = client
                    .connect(ReceiverStream::new(rx))
                    .await
                    .expect("Connect accepted")
                    .into_inner();
                let first = match frames_in.message().await {
                    Ok(first) => first.expect("a first frame"),
                    // The store's bounded wait for a turn ran out.
                    Err(status) if status.code() == tonic::Code::Unavailable => return None,
                    Err(status) => panic!("the stream failed: {status:?}"),
                };
                match first.frame {
                    Some(Frame::Ready(ready)) => assert_eq!(
                        ready.conversations.len(),
                        CONVERSATIONS,
                        "ready lists every conversation"
                    ),
                    other => panic!("the first frame is not ready: {other:?}"),
                }
                Some((frames_out, frames_in))
            });
        }
    }
    let opened = tokio::time::timeout(WAIT * 3, opening.join_all())
        .await
        .expect("every stream of the burst is ready in time");
    let streams: Vec<_> = opened.into_iter().flatten().collect();
    Held {
        refused: CHANNELS * STREAMS_PER_CHANNEL - streams.len(),
        _streams: streams,
    }
}

/// The highest readings of a process since [`Peaks::watch`] started,
/// sampled every few milliseconds (blocking threads outlive their work by
/// seconds, descriptors and memory only grow during a burst).
#[derive(Default)]
struct Peaks {
    threads: AtomicU64,
    fds: AtomicU64,
    rss_bytes: AtomicU64,
}

impl Peaks {
    fn watch(pid: u32) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let peaks = Arc::new(Self::default());
        let writer = peaks.clone();
        let task = tokio::spawn(async move {
            while let Ok(now) = proc::sample(pid) {
                writer.threads.fetch_max(now.threads, Ordering::Relaxed);
                writer.fds.fetch_max(now.fds, Ordering::Relaxed);
                writer.rss_bytes.fetch_max(now.rss_bytes, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        (peaks, task)
    }

    fn take(&self) -> Sample {
        Sample {
            threads: self.threads.load(Ordering::Relaxed),
            fds: self.fds.load(Ordering::Relaxed),
            rss_bytes: self.rss_bytes.load(Ordering::Relaxed),
            cpu_s: 0.0,
        }
    }
}

/// Descriptors of `pid` open on the file named `name`.
fn fds_on(pid: u32, name: &str) -> u64 {
    proc::fd_kinds(&[pid]).get(name).copied().unwrap_or(0)
}

/// Waits, up to [`WAIT`], until `done` holds for a reading; returns the
/// last reading either way.
async fn settle<T>(mut read: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let started = tokio::time::Instant::now();
    loop {
        let now = read();
        if done(&now) || started.elapsed() > WAIT {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bursts against SQLite: threads bounded at the peak, memory bounded at
/// the peak, descriptors back after each burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_streams_are_bounded_and_leave_nothing_open() {
    let data = tempfile::tempdir().expect("temporary directory");
    let env = [("CHAT_STORE_CONNECTIONS", STORE_CONNECTIONS.to_string())];
    let server = ServerProcess::start(Path::new(BINARY), data.path(), free_addr(), &env).await;
    let pid = server.child.id().expect("the server's pid");
    let secret = populate(&server).await;
    // The server's own HTTP answers (the gauge) open nothing that lasts,
    // but read it once so that a lazily built part is in the baseline.
    await_metric(server.http_addr, "chat_sessions", 0).await;

    let baseline = proc::sample(pid).expect("read the server's /proc");
    let baseline_db = fds_on(pid, "chat.db");
    eprintln!(
        "bursts: baseline {} ({baseline_db} on chat.db)",
        baseline.line()
    );
    let (peaks, watching) = Peaks::watch(pid);
    for round in 1..=BURSTS {
        let held = burst(&server, &secret).await;
        assert_eq!(held.refused, 0, "burst {round}: every stream got its ready");
        drop(held);
        await_metric(server.http_addr, "chat_sessions", 0).await;
        let (db, after) = settle(
            || {
                let db = fds_on(pid, "chat.db");
                (db, proc::sample(pid).expect("read the server's /proc"))
            },
            |(db, after)| {
                *db <= baseline_db + DB_FDS_ADDED && after.fds <= baseline.fds + FDS_ADDED
            },
        )
        .await;
        let peak = peaks.take();
        eprintln!(
            "bursts: after burst {round}: peak threads {} fds {} RSS {}; now {} ({db} on chat.db)",
            peak.threads,
            peak.fds,
            mib(peak.rss_bytes),
            after.line()
        );
        assert!(
            peak.threads <= baseline.threads + THREADS_ADDED,
            "burst {round}: {} threads at the peak, {} at the start (at most {THREADS_ADDED} more)",
            peak.threads,
            baseline.threads
        );
        assert!(
            db <= baseline_db + DB_FDS_ADDED,
            "burst {round}: {db} descriptors on chat.db {WAIT:?} after the sessions ended, \
             {baseline_db} at the start (at most {DB_FDS_ADDED} more)"
        );
        assert!(
            after.fds <= baseline.fds + FDS_ADDED,
            "burst {round}: {} descriptors {WAIT:?} after the sessions ended, {} at the start \
             (at most {FDS_ADDED} more)",
            after.fds,
            baseline.fds
        );
        assert!(
            peak.rss_bytes <= baseline.rss_bytes + RSS_ADDED,
            "burst {round}: RSS {} at the peak, {} at the start (at most {} more)",
            mib(peak.rss_bytes),
            mib(baseline.rss_bytes),
            mib(RSS_ADDED)
        );
    }
    watching.abort();
}

/// The same burst against PostgreSQL: the server never holds more than
/// `store_connections` connections to its database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_never_takes_more_than_store_connections_from_postgres() {
    let url = fresh_postgres().await;
    let data = tempfile::tempdir().expect("temporary directory");
    let env = [
        ("CHAT_STORE", "postgres".to_owned()),
        ("CHAT_POSTGRES_URL", url.clone()),
        ("CHAT_STORE_CONNECTIONS", STORE_CONNECTIONS.to_string()),
    ];
    let server = ServerProcess::start(Path::new(BINARY), data.path(), free_addr(), &env).await;
    let secret = populate(&server).await;

    let observer = PostgresObserver::connect().await;
    let most = Arc::new(AtomicU64::new(0));
    let seen = most.clone();
    let watching = tokio::spawn(async move {
        loop {
            seen.fetch_max(observer.connections(&url).await, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let held = burst(&server, &secret).await;
    let refused = held.refused;
    drop(held);
    await_metric(server.http_addr, "chat_sessions", 0).await;
    watching.abort();
    let most = most.load(Ordering::Relaxed);
    eprintln!(
        "bursts: at most {most} connections to PostgreSQL during a burst; \
         {refused} streams refused after waiting for one"
    );
    assert!(
        refused < CHANNELS * STREAMS_PER_CHANNEL / 2,
        "most streams got their ready ({refused} refused)"
    );
    assert!(most > 0, "the observer saw the server's connections");
    assert!(
        most <= STORE_CONNECTIONS,
        "{most} connections to the database at once (store_connections = {STORE_CONNECTIONS})"
    );
}

//! The embedded backend: one SQLite file in WAL mode.
//!
//! Writes go through a single writer thread that owns the only write
//! connection. It takes every write waiting in its queue, applies them in
//! one transaction (each inside its own savepoint, so one failing write does
//! not fail its neighbours), commits once and only then answers each caller.
//! This "group commit" turns N concurrent sends into one fsync, and a single
//! writer makes seq assignment trivially gap-free.
//!
//! Reads run on a fixed set of reader threads, each with its read-only
//! connection (`read_pool_size` of them), so they never block the async
//! runtime, never wait for the writer (WAL readers see the last committed
//! state), and a burst of them queues instead of growing threads or
//! descriptors.
//!
//! # Layout
//!
//! - `mod.rs`: configuration, opening, the read pool, `write` / `read`.
//! - `schema.rs`: migrations, connections, error mapping.
//! - `writer.rs`: the writer thread (group commit) and the checkpointer.
//! - `users.rs`, `messages.rs`, `groups.rs`, `dead_letters.rs`: the SQL of
//!   each domain and its trait. The rules of groups are not here but in
//!   [`crate::domain`]; `groups.rs` gives them their primitives.

mod dead_letters;
mod groups;
mod messages;
mod schema;
mod users;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{Failures, Result, StoreError, StoreHealth};
use schema::{migrate, open_connection};
use writer::{checkpoint_loop, writer_loop, Checkpoints, Job, WriteOp};

pub use writer::WAL_LIMIT_PAGES;

/// How hard a commit tries to reach the disk before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync the WAL on every commit: an acknowledged message survives a
    /// power loss. The default.
    #[default]
    Full,
    /// Leave the WAL in the OS page cache: an acknowledged message survives
    /// a crash or SIGKILL of the server, not a power loss of the machine.
    Normal,
}

/// Settings of the SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file; its directory is created if missing.
    pub path: PathBuf,
    pub durability: Durability,
    /// The most writes one transaction takes from the queue.
    pub max_batch: usize,
    /// Writes that may wait for the writer before callers wait too.
    pub queue_capacity: usize,
    /// Reader threads, each with its read connection: the reads that run
    /// at once; more wait for a turn.
    pub read_pool_size: usize,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::Full,
            max_batch: 512,
            queue_capacity: 4096,
            read_pool_size: 8,
        }
    }
}

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    writes: mpsc::SyncSender<WriteOp>,
    readers: Arc<Readers>,
    failures: Arc<Failures>,
}
impl SqliteStore {
    /// Opens (creating if needed) the database, runs the migrations and
    /// starts the writer thread.
    pub fn open(config: SqliteConfig) -> Result<Self> {
        if let Some(dir) = config.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let mut conn = open_connection(&config.path, config.durability, false)?;
        migrate(&mut conn)?;
        // Checkpoints run on their own thread (below), never inside a
        // commit: copying the WAL back into the database would stall every
        // write waiting behind that commit.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        let checkpointer = open_connection(&config.path, config.durability, false)?;
        let (checkpoint, wakes) = mpsc::sync_channel(1);
        let caught_up = Arc::new(AtomicBool::new(false));
        let flag = caught_up.clone();
        let checkpointing = Arc::new(Mutex::new(()));
        let running = checkpointing.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, wakes, flag, running))
            .map_err(|e| StoreError::Internal(format!("cannot start the checkpointer: {e}")))?;

        let (writes, queue) = mpsc::sync_channel(config.queue_capacity.max(1));
        let max_batch = config.max_batch.max(1);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let checkpoints = Checkpoints {
                    wake: checkpoint,
                    caught_up,
                    running: checkpointing,
                };
                writer_loop(conn, queue, max_batch, checkpoints)
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the writer: {e}")))?;

        let readers = Arc::new(Readers::start(
            &config.path,
            config.durability,
            config.read_pool_size.max(1),
        )?);
        Ok(Self {
            writes,
            readers,
            failures: Arc::default(),
        })
    }

    /// A write through the writer thread: `f` runs on the write
    /// connection inside the batch's transaction, at the batch's time
    /// (Unix ms), and is answered after the commit. Counted in
    /// [`StoreHealth::failures`] if the backend fails it.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.failures.note(self.write_uncounted(f).await)
    }

    async fn write_uncounted<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let op: WriteOp = Box::new(Job { f, reply });
        let writes = self.writes.clone();
        // The queue is bounded; when it is full the caller waits here, off
        // the async runtime's worker threads.
        match writes.try_send(op) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(op)) => {
                // A failed send hands the op back; it is of no use then.
                tokio::task::spawn_blocking(move || writes.send(op).map_err(drop))
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))?
                    .map_err(|()| StoreError::Unavailable("the store is closed".into()))?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(StoreError::Unavailable("the store is closed".into()))
            }
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store writer stopped".into()))?
    }

    /// A read on a pooled connection, counted in [`StoreHealth::failures`]
    /// if the backend fails it.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.failures.note(self.read_uncounted(f).await)
    }

    async fn read_uncounted<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // A burst of reads queues here, on the permits, instead of taking
        // a thread and a connection each. The permit goes with the read
        // into its thread: a caller that gives up does not free it before
        // the read is over.
        let permit = self
            .readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            // A caller that went away no longer needs its answer.
            let _ = reply.send(conn.and_then(f));
            drop(permit);
        });
        self.readers
            .jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("the store readers stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store reader stopped".into()))?
    }
}
/// The write connection inside the writer's transaction, as the rules of
/// [`crate::domain`] use it: the single writer is every lock they need.
struct Tx<'c>(&'c Connection);

/// A read for a reader thread: given its connection (or why it has none),
/// it runs and answers on a channel of its own.
type ReadJob = Box<dyn FnOnce(Result<&Connection>) + Send>;

/// The reader threads: a fixed number, each with its read-only connection,
/// so a burst of reads costs neither threads nor descriptors, only a wait
/// for a permit. At most as many reads are queued as there are permits
/// (one per thread), so the queue needs no bound of its own.
struct Readers {
    jobs: mpsc::Sender<ReadJob>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Readers {
    fn start(path: &Path, durability: Durability, threads: usize) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<ReadJob>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let (queue, path) = (queue.clone(), path.to_owned());
            std::thread::Builder::new()
                .name(format!("sqlite-reader-{i}"))
                .spawn(move || read_loop(&queue, &path, durability))
                .map_err(|e| StoreError::Internal(format!("cannot start a reader: {e}")))?;
        }
        Ok(Self {
            jobs,
            permits: Arc::new(tokio::sync::Semaphore::new(threads)),
        })
    }
}

/// One reader thread: takes reads from the shared queue until the store is
/// dropped, on a connection opened at the first read (and again after one
/// that failed to open).
fn read_loop(queue: &Mutex<mpsc::Receiver<ReadJob>>, path: &Path, durability: Durability) {
    let mut conn: Option<Connection> = None;
    loop {
        // The lock is held only to take one read.
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        if conn.is_none() {
            match open_connection(path, durability, true) {
                Ok(opened) => conn = Some(opened),
                Err(e) => {
                    job(Err(e));
                    continue;
                }
            }
        }
        if let Some(conn) = &conn {
            job(Ok(conn));
        }
    }
}

#[async_trait]
impl StoreHealth for SqliteStore {
    /// A query on a pooled read connection, and an empty batch through the
    /// writer thread.
    async fn ping(&self) -> Result<()> {
        self.read_uncounted(|conn| {
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
            Ok(())
        })
        .await?;
        self.write_uncounted(|_, _| Ok(())).await?;
        Ok(())
    }

    fn failures(&self) -> u64 {
        self.failures.get()
    }
}

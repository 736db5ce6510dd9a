//! The embedded backend: one SQLite file in WAL mode.
//!
//! Writes go through a single writer thread that owns the only write
//! connection. It takes every write waiting in its queue, applies them in
//! one transaction (each inside its own savepoint, so one failing write does
//! not fail its neighbours), commits once and only then answers each caller.
//! This "group commit" turns N concurrent sends into one fsync, and a single
//! writer makes seq assignment trivially gap-free.
//!
//! Reads run on a small pool of read-only connections inside
//! `spawn_blocking`, so they never block the async runtime and never wait
//! for the writer (WAL readers see the last committed state).
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

use std::path::PathBuf;
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
    /// Reads that run at once, each on a read connection kept open
    /// between reads; more wait for a turn.
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
    readers: Arc<ReadPool>,
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

        let readers = Arc::new(ReadPool {
            path: config.path.clone(),
            durability: config.durability,
            idle: Mutex::new(Vec::new()),
            max_idle: config.read_pool_size.max(1),
            permits: Arc::new(tokio::sync::Semaphore::new(config.read_pool_size.max(1))),
        });
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
        let readers = self.readers.clone();
        // A burst of reads queues here instead of taking a blocking thread
        // and a connection (three descriptors) each. The permit goes with
        // the read into its thread: a caller that gives up does not free
        // it before the read is over.
        let permit = readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = f(&conn);
            readers.give_back(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}
/// The write connection inside the writer's transaction, as the rules of
/// [`crate::domain`] use it: the single writer is every lock they need.
struct Tx<'c>(&'c Connection);

/// Read-only connections kept open between reads, at most `max_idle`,
/// and never more in use at once than there are `permits` (as many).
struct ReadPool {
    path: PathBuf,
    durability: Durability,
    /// A std mutex: it is held only to push or pop, never across I/O.
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    /// One per read running; a read waits for one before it takes a
    /// blocking thread and a connection.
    permits: Arc<tokio::sync::Semaphore>,
}

impl ReadPool {
    fn take(&self) -> Result<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path, self.durability, true),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
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

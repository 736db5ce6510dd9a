//! The single writer thread, its group commit and the WAL checkpointer.
//!
//! Every write is a [`Write`]: a function of the write connection run
//! inside the batch's transaction (in a savepoint of its own, so that one
//! failing write does not fail its neighbours), whose answer is sent only
//! after the commit. Adding a write is one call of `SqliteStore::write`
//! with that function; nothing here names a particular write.
//!
//! This module knows no chat rule and no table.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::{Result, StoreError};

/// A write waiting for the writer thread.
pub(super) type WriteOp = Box<dyn Write>;

/// A write, type-erased so that one queue carries every kind.
pub(super) trait Write: Send {
    /// Applies the write inside the open transaction, at `now` (Unix ms,
    /// one time for the whole batch); the answer waits for the commit.
    fn apply(self: Box<Self>, conn: &Connection, now: i64) -> Box<dyn Answer>;
    /// Answers without applying: the transaction could not begin.
    fn refuse(self: Box<Self>, error: &StoreError);
}

/// An answer computed inside the batch, sent only after the commit.
pub(super) trait Answer {
    /// Replaces a success with `error`: the batch did not commit.
    fn fail(self: Box<Self>, error: &StoreError) -> Box<dyn Answer>;
    fn send(self: Box<Self>);
}

/// A write of `f` answered on `reply`.
pub(super) struct Job<T, F> {
    pub(super) f: F,
    pub(super) reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Write for Job<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, i64) -> Result<T> + Send,
{
    fn apply(self: Box<Self>, conn: &Connection, now: i64) -> Box<dyn Answer> {
        let Job { f, reply } = *self;
        let result = in_savepoint(conn, |c| f(c, now));
        Box::new(Reply { reply, result })
    }

    fn refuse(self: Box<Self>, error: &StoreError) {
        // A caller that went away no longer needs its answer.
        let _ = self
            .reply
            .send(Err(StoreError::Unavailable(error.to_string())));
    }
}

struct Reply<T> {
    reply: oneshot::Sender<Result<T>>,
    result: Result<T>,
}

impl<T: Send + 'static> Answer for Reply<T> {
    fn fail(self: Box<Self>, error: &StoreError) -> Box<dyn Answer> {
        let Reply { reply, result } = *self;
        let result = result.and_then(|_| Err(StoreError::Unavailable(error.to_string())));
        Box::new(Reply { reply, result })
    }

    fn send(self: Box<Self>) {
        let _ = self.reply.send(self.result);
    }
}

/// Runs one write inside a savepoint, so that its failure undoes only it.
pub(super) fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    conn.prepare_cached("SAVEPOINT op")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE op")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")?;
            Err(e)
        }
    }
}

/// The writer's side of the background checkpointer.
pub(super) struct Checkpoints {
    /// Wakes the checkpointer; a full channel means a wake-up is pending.
    pub(super) wake: mpsc::SyncSender<()>,
    /// Raised by the checkpointer when it has copied what it found.
    pub(super) caught_up: Arc<AtomicBool>,
    /// Held by whichever thread is checkpointing: SQLite refuses a second
    /// checkpoint at once (`SQLITE_BUSY`) rather than waiting for it.
    pub(super) running: Arc<Mutex<()>>,
}

pub(super) fn writer_loop(
    conn: Connection,
    queue: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    checkpoints: Checkpoints,
) {
    // Declared before `conn` so that it is dropped after it.
    let wal_pages = Box::new(AtomicI32::new(0));
    let mut conn = conn;
    // SAFETY: the context points into `wal_pages`, which outlives the
    // connection (locals drop in reverse order); the hook only stores an
    // integer into it, on this thread, during a commit of `conn`.
    unsafe {
        rusqlite::ffi::sqlite3_wal_hook(
            conn.handle(),
            Some(record_wal_pages),
            &*wal_pages as *const AtomicI32 as *mut std::ffi::c_void,
        );
    }
    let mut batch = Vec::with_capacity(max_batch);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let answers = apply_batch(&mut conn, batch.drain(..));
        for answer in answers {
            answer.send();
        }
        let pages = wal_pages.load(Ordering::Relaxed);
        if pages >= WAL_LIMIT_PAGES {
            // The checkpointer is not keeping up (a slow disk, a loaded
            // machine): the writer waits for the checkpoint in progress,
            // then copies everything and empties the WAL itself, holding
            // back commits meanwhile, so the WAL stays bounded whatever the
            // load. A reader on an old snapshot can still hold it up for
            // the busy timeout; the next commit retries.
            let _running = checkpoints
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            checkpoints.caught_up.store(false, Ordering::Relaxed);
            match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            }) {
                Ok(0) => wal_pages.store(0, Ordering::Relaxed),
                Ok(_) => tracing::warn!("WAL checkpoint held up by a reader; the next one retries"),
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries"),
            }
        } else if checkpoints.caught_up.swap(false, Ordering::Acquire) {
            // The bulk is copied; copying what was committed since (a few
            // pages) lets the next write start the WAL over. Skipped if the
            // checkpointer is at it again: it raises the flag when done.
            if let Ok(_running) = checkpoints.running.try_lock() {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
                }
            }
        } else if pages >= CHECKPOINT_PAGES {
            // A long WAL wakes the checkpointer; commits while it is busy
            // coalesce into one wake-up.
            let _ = checkpoints.wake.try_send(());
        }
    }
    tracing::debug!("sqlite writer stopped");
}

/// SQLite's WAL hook: called after each commit with the pages in the WAL.
unsafe extern "C" fn record_wal_pages(
    context: *mut std::ffi::c_void,
    _db: *mut rusqlite::ffi::sqlite3,
    _name: *const std::ffi::c_char,
    pages: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: `writer_loop` registered a pointer to its live `AtomicI32`.
    let wal_pages = unsafe { &*(context as *const AtomicI32) };
    wal_pages.store(pages, Ordering::Relaxed);
    rusqlite::ffi::SQLITE_OK
}

/// WAL pages that make the checkpointer run: SQLite's own default for its
/// automatic checkpoint (about 4 MiB).
const CHECKPOINT_PAGES: i32 = 1000;

/// WAL pages at which the writer stops to checkpoint itself: the bound on
/// the WAL (about 16 MiB with 4 KiB pages, plus one batch).
pub const WAL_LIMIT_PAGES: i32 = 4 * CHECKPOINT_PAGES;

/// Copies committed WAL pages back into the database file when the WAL has
/// grown past [`CHECKPOINT_PAGES`]. PASSIVE: it never blocks the writer or
/// a reader, and it copies what no reader still needs. Under steady load
/// the writer has always committed more by the time it is done, and SQLite
/// starts the WAL over only when *everything* is copied at the start of a
/// write, so the checkpointer raises `caught_up` and the writer copies
/// the few pages of its latest commits itself (see `writer_loop`). Stops
/// with the writer.
pub(super) fn checkpoint_loop(
    conn: Connection,
    wakes: mpsc::Receiver<()>,
    caught_up: Arc<AtomicBool>,
    running: Arc<Mutex<()>>,
) {
    while wakes.recv().is_ok() {
        let _running = running.lock().unwrap_or_else(|p| p.into_inner());
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => caught_up.store(true, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries"),
        }
    }
    tracing::debug!("sqlite checkpointer stopped");
}

/// Applies `ops` in one transaction and commits once. A transaction that
/// cannot begin refuses them all (their answers are sent here); one that
/// cannot commit turns every success into a failure.
fn apply_batch(conn: &mut Connection, ops: impl Iterator<Item = WriteOp>) -> Vec<Box<dyn Answer>> {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = StoreError::from(e);
            ops.for_each(|op| op.refuse(&e));
            return Vec::new();
        }
    };
    let now = now_ms();
    let answers: Vec<Box<dyn Answer>> = ops.map(|op| op.apply(&tx, now)).collect();
    if let Err(e) = tx.commit() {
        let e = StoreError::from(e);
        tracing::error!(error = %e, "store commit failed");
        return answers.into_iter().map(|a| a.fail(&e)).collect();
    }
    answers
}
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

// ------------------------------------------------------------------ reads

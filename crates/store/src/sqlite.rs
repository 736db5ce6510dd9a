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
//! The dead-letter queue lives in `sqlite/dead_letters.rs`.

mod dead_letters;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::new_id;
use crate::{
    Appended, ConversationKind, ConversationSummary, GroupChange, GroupChanged, GroupInfo,
    GroupLimits, GroupMember, GroupRole, GroupStore, HistoryPage, HistoryQuery, MessageChange,
    MessageKind, MessageStore, NewMessage, NewUser, ReadCursor, Result, StoreError, StoredMessage,
    Target, UserProfile, UserStore, MAX_PAGE,
};
use crate::{Failures, StoreHealth};

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
    /// Read connections kept open between reads.
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

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    phone         TEXT NOT NULL,
    token_hash    BLOB NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE conversations (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    -- 'alice|bob' (sorted) for a direct conversation, NULL for a group.
    direct_key    TEXT UNIQUE,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    username        TEXT NOT NULL REFERENCES users(username),
    read_seq        INTEGER NOT NULL DEFAULT 0,
    delivered_seq   INTEGER NOT NULL DEFAULT 0,
    joined_seq      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, username)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (username, conversation_id);

CREATE TABLE messages (
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    seq             INTEGER NOT NULL,
    id              TEXT NOT NULL UNIQUE,
    sender          TEXT NOT NULL,
    body            TEXT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    sent_at_ms      INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (sender, client_msg_id)
) WITHOUT ROWID;
"#,
    r#"
ALTER TABLE members ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
ALTER TABLE conversations ADD COLUMN name TEXT;
"#,
    // The dead-letter queue. AUTOINCREMENT: an id is never reused, even
    // after a purge, so an id an operator noted never names another letter.
    r#"
CREATE TABLE dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    node            TEXT NOT NULL,
    reason          TEXT NOT NULL,
    payload         BLOB NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    replayed_at_ms  INTEGER,
    replay_attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_pending ON dead_letters (id) WHERE replayed_at_ms IS NULL;
CREATE INDEX dead_letters_by_time ON dead_letters (created_at_ms);
"#,
    // Edits and deletions.
    r#"
ALTER TABLE messages ADD COLUMN target_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at_ms INTEGER;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
"#,
    // Retention: messages by the time they were sent, so that finding the
    // oldest is a range of an index, not a scan of every message.
    r#"
CREATE INDEX messages_by_time ON messages (sent_at_ms);
"#,
];

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
            max_idle: config.read_pool_size,
        });
        Ok(Self {
            writes,
            readers,
            failures: Arc::default(),
        })
    }

    /// A write through the writer thread, counted in
    /// [`StoreHealth::failures`] if the backend fails it.
    async fn write<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteOp,
    ) -> Result<T> {
        self.failures.note(self.write_uncounted(make).await)
    }

    async fn write_uncounted<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteOp,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let op = make(reply);
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
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = f(&conn);
            readers.give_back(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

fn open_connection(path: &Path, durability: Durability, read_only: bool) -> Result<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {synchronous};
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA query_only = {};",
        if read_only { "ON" } else { "OFF" }
    ))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        // A foreign key names something that does not exist; any other
        // constraint here is a unique one.
        const FOREIGN_KEY: i32 = rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY;
        match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation)
                if e.sqlite_error()
                    .is_some_and(|f| f.extended_code == FOREIGN_KEY) =>
            {
                StoreError::NotFound
            }
            Some(ErrorCode::ConstraintViolation) => StoreError::AlreadyExists,
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

// ------------------------------------------------------------------ reads

struct ReadPool {
    path: PathBuf,
    durability: Durability,
    /// A std mutex: it is held only to push or pop, never across I/O.
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
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

const MESSAGE_COLUMNS: &str = "id, conversation_id, seq, sender, body, client_msg_id, sent_at_ms, \
     kind, target_seq, edited_at_ms IS NOT NULL, deleted";

fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.get(0)?,
        conversation_id: row.get(1)?,
        seq: row.get::<_, i64>(2)? as u64,
        sender: row.get(3)?,
        body: row.get(4)?,
        client_msg_id: row.get(5)?,
        sent_at_unix_ms: row.get(6)?,
        kind: MessageKind::parse(&row.get::<_, String>(7)?),
        target_seq: row.get::<_, i64>(8)? as u64,
        edited: row.get(9)?,
        deleted: row.get(10)?,
    })
}

fn is_member(conn: &Connection, username: &str, conversation_id: &str) -> Result<bool> {
    Ok(joined_seq(conn, username, conversation_id)?.is_some())
}

/// The seq from which `username` reads the conversation, if a member.
fn joined_seq(conn: &Connection, username: &str, conversation_id: &str) -> Result<Option<u64>> {
    Ok(conn
        .prepare_cached(
            "SELECT joined_seq FROM members WHERE conversation_id = ?1 AND username = ?2",
        )?
        .query_row(params![conversation_id, username], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|seq| seq as u64))
}

fn unread_count(
    conn: &Connection,
    username: &str,
    conversation_id: &str,
    after: u64,
) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM messages
             WHERE conversation_id = ?1 AND seq > ?2 AND sender <> ?3 AND kind = 'text' AND deleted = 0",
        )?
        .query_row(params![conversation_id, after as i64, username], |r| {
            r.get(0)
        })?;
    Ok(n as u64)
}

fn history(
    conn: &Connection,
    username: &str,
    conversation_id: &str,
    query: HistoryQuery,
) -> Result<HistoryPage> {
    // A member reads from the event that added them on.
    let Some(joined) = joined_seq(conn, username, conversation_id)? else {
        return Err(StoreError::NotFound);
    };
    let limit = match query.limit {
        0 => 50,
        n => n.min(MAX_PAGE),
    };
    // Seqs are stored as i64: larger bounds mean "no bound".
    let clamp = |seq: u64| i64::try_from(seq).unwrap_or(i64::MAX);
    let after = clamp(query.after_seq.unwrap_or(0).max(joined.saturating_sub(1)));
    let before = query.before_seq.map_or(i64::MAX, clamp);
    // One more row than asked tells whether there is more.
    let fetch = i64::from(limit) + 1;
    let mut messages = if query.after_seq.is_some() {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE conversation_id = ?1 AND seq > ?2 AND seq < ?3
             ORDER BY seq ASC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![conversation_id, after, before, fetch],
            message_from_row,
        )?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE conversation_id = ?1 AND seq > ?2 AND seq < ?3
             ORDER BY seq DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![conversation_id, after, before, fetch],
            message_from_row,
        )?;
        let mut newest_first = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        newest_first.reverse();
        newest_first
    };
    let has_more = messages.len() > limit as usize;
    if has_more {
        if query.after_seq.is_some() {
            messages.truncate(limit as usize);
        } else {
            messages.remove(0);
        }
    }
    Ok(HistoryPage { messages, has_more })
}

fn conversations(conn: &Connection, username: &str) -> Result<Vec<ConversationSummary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.id, c.kind, c.last_seq, m.read_seq, m.delivered_seq,
                (SELECT o.username FROM members o
                  WHERE o.conversation_id = c.id AND o.username <> m.username LIMIT 1),
                c.name
         FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.username = ?1",
    )?;
    let rows = stmt.query_map(params![username], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
            r.get::<_, i64>(4)? as u64,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<String>>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, kind, last_seq, read_seq, delivered_seq, other, name) = row?;
        let kind = if kind == "group" {
            ConversationKind::Group
        } else {
            ConversationKind::Direct
        };
        let last_message = conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND seq = ?2"
            ))?
            .query_row(params![id, last_seq as i64], message_from_row)
            .optional()?;
        let unread_count = unread_count(conn, username, &id, read_seq)?;
        out.push(ConversationSummary {
            name,
            peer: (kind == ConversationKind::Direct)
                .then_some(other)
                .flatten(),
            id,
            kind,
            last_seq,
            read_seq,
            delivered_seq,
            unread_count,
            last_message,
        });
    }
    out.sort_by(|a, b| {
        let at = |c: &ConversationSummary| c.last_message.as_ref().map_or(0, |m| m.sent_at_unix_ms);
        at(b).cmp(&at(a)).then_with(|| a.id.cmp(&b.id))
    });
    Ok(out)
}

fn members(conn: &Connection, conversation_id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT username FROM members WHERE conversation_id = ?1 ORDER BY username",
    )?;
    let rows = stmt.query_map(params![conversation_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
}

// ----------------------------------------------------------------- writes

enum WriteOp {
    CreateUser(NewUser, oneshot::Sender<Result<UserProfile>>),
    ReplaceToken(String, [u8; 32], [u8; 32], oneshot::Sender<Result<bool>>),
    ResetToken(String, [u8; 32], oneshot::Sender<Result<Option<[u8; 32]>>>),
    Append(NewMessage, oneshot::Sender<Result<Appended>>),
    AppendMany(
        Vec<NewMessage>,
        oneshot::Sender<Result<Vec<Result<Appended>>>>,
    ),
    MarkRead {
        username: String,
        conversation_id: String,
        seq: u64,
        reply: oneshot::Sender<Result<ReadCursor>>,
    },
    MarkDelivered {
        username: String,
        conversation_id: String,
        seq: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    ChangeGroup(
        GroupChange,
        GroupLimits,
        oneshot::Sender<Result<GroupChanged>>,
    ),
    ChangeMessage(MessageChange, oneshot::Sender<Result<Appended>>),
    /// Deletes at most `batch` messages sent before `cutoff` (Unix ms).
    DeleteBefore {
        cutoff: i64,
        batch: usize,
        reply: oneshot::Sender<Result<u64>>,
    },
    DeadLetter(dead_letters::Op),
    /// Writes nothing: answered once the writer has begun and committed a
    /// batch, which proves it is alive and can lock the database.
    Ping(oneshot::Sender<Result<bool>>),
}

/// An answer computed inside the batch, sent only after the commit.
enum Answer {
    User(oneshot::Sender<Result<UserProfile>>, Result<UserProfile>),
    Done(oneshot::Sender<Result<bool>>, Result<bool>),
    Token(
        oneshot::Sender<Result<Option<[u8; 32]>>>,
        Result<Option<[u8; 32]>>,
    ),
    Appended(oneshot::Sender<Result<Appended>>, Result<Appended>),
    AppendedMany(
        oneshot::Sender<Result<Vec<Result<Appended>>>>,
        Vec<Result<Appended>>,
    ),
    Read(oneshot::Sender<Result<ReadCursor>>, Result<ReadCursor>),
    Delivered(oneshot::Sender<Result<u64>>, Result<u64>),
    Group(oneshot::Sender<Result<GroupChanged>>, Result<GroupChanged>),
    Deleted(oneshot::Sender<Result<u64>>, Result<u64>),
    DeadLetter(dead_letters::Answer),
}

impl Answer {
    /// Replaces a success with `error`: the batch did not commit.
    fn fail(self, error: &StoreError) -> Self {
        fn e<T>(r: Result<T>, error: &StoreError) -> Result<T> {
            r.and_then(|_| Err(StoreError::Unavailable(error.to_string())))
        }
        match self {
            Answer::User(tx, r) => Answer::User(tx, e(r, error)),
            Answer::Done(tx, r) => Answer::Done(tx, e(r, error)),
            Answer::Token(tx, r) => Answer::Token(tx, e(r, error)),
            Answer::Appended(tx, r) => Answer::Appended(tx, e(r, error)),
            Answer::AppendedMany(tx, rs) => {
                Answer::AppendedMany(tx, rs.into_iter().map(|r| e(r, error)).collect())
            }
            Answer::Read(tx, r) => Answer::Read(tx, e(r, error)),
            Answer::Delivered(tx, r) => Answer::Delivered(tx, e(r, error)),
            Answer::Group(tx, r) => Answer::Group(tx, e(r, error)),
            Answer::Deleted(tx, r) => Answer::Deleted(tx, e(r, error)),
            Answer::DeadLetter(a) => Answer::DeadLetter(a.fail(error)),
        }
    }

    fn send(self) {
        // A caller that went away no longer needs its answer.
        let _ = match self {
            Answer::User(tx, r) => tx.send(r).is_ok(),
            Answer::Done(tx, r) => tx.send(r).is_ok(),
            Answer::Token(tx, r) => tx.send(r).is_ok(),
            Answer::Appended(tx, r) => tx.send(r).is_ok(),
            Answer::AppendedMany(tx, rs) => tx.send(Ok(rs)).is_ok(),
            Answer::Read(tx, r) => tx.send(r).is_ok(),
            Answer::Delivered(tx, r) => tx.send(r).is_ok(),
            Answer::Group(tx, r) => tx.send(r).is_ok(),
            Answer::Deleted(tx, r) => tx.send(r).is_ok(),
            Answer::DeadLetter(a) => {
                a.send();
                true
            }
        };
    }
}

/// The writer's side of the background checkpointer.
struct Checkpoints {
    /// Wakes the checkpointer; a full channel means a wake-up is pending.
    wake: mpsc::SyncSender<()>,
    /// Raised by the checkpointer when it has copied what it found.
    caught_up: Arc<AtomicBool>,
    /// Held by whichever thread is checkpointing: SQLite refuses a second
    /// checkpoint at once (`SQLITE_BUSY`) rather than waiting for it.
    running: Arc<Mutex<()>>,
}

fn writer_loop(
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
fn checkpoint_loop(
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

fn apply_batch(conn: &mut Connection, ops: impl Iterator<Item = WriteOp>) -> Vec<Answer> {
    let ops: Vec<WriteOp> = ops.collect();
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = StoreError::from(e);
            return ops.into_iter().map(|op| unapplied(op, &e)).collect();
        }
    };
    let now = now_ms();
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        answers.push(apply_one(&tx, op, now));
    }
    if let Err(e) = tx.commit() {
        let e = StoreError::from(e);
        tracing::error!(error = %e, "store commit failed");
        return answers.into_iter().map(|a| a.fail(&e)).collect();
    }
    answers
}

fn unapplied(op: WriteOp, e: &StoreError) -> Answer {
    fn err<T>(e: &StoreError) -> Result<T> {
        Err(StoreError::Unavailable(e.to_string()))
    }
    match op {
        WriteOp::CreateUser(_, tx) => Answer::User(tx, err(e)),
        WriteOp::ReplaceToken(_, _, _, tx) => Answer::Done(tx, err(e)),
        WriteOp::ResetToken(_, _, tx) => Answer::Token(tx, err(e)),
        WriteOp::Append(_, tx) => Answer::Appended(tx, err(e)),
        WriteOp::AppendMany(msgs, tx) => {
            Answer::AppendedMany(tx, msgs.iter().map(|_| err(e)).collect())
        }
        WriteOp::MarkRead { reply, .. } => Answer::Read(reply, err(e)),
        WriteOp::MarkDelivered { reply, .. } => Answer::Delivered(reply, err(e)),
        WriteOp::ChangeGroup(_, _, reply) => Answer::Group(reply, err(e)),
        WriteOp::ChangeMessage(_, reply) => Answer::Appended(reply, err(e)),
        WriteOp::DeleteBefore { reply, .. } => Answer::Deleted(reply, err(e)),
        WriteOp::DeadLetter(op) => Answer::DeadLetter(op.unapplied(e)),
        WriteOp::Ping(reply) => Answer::Done(reply, err(e)),
    }
}

/// Runs one write inside a savepoint, so that its failure undoes only it.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
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

fn apply_one(conn: &Connection, op: WriteOp, now: i64) -> Answer {
    match op {
        WriteOp::CreateUser(user, tx) => {
            Answer::User(tx, in_savepoint(conn, |c| create_user(c, user, now)))
        }
        WriteOp::ReplaceToken(username, old, new, tx) => Answer::Done(
            tx,
            in_savepoint(conn, |c| {
                let sql =
                    "UPDATE users SET token_hash = ?3 WHERE username = ?1 AND token_hash = ?2";
                let changed =
                    c.prepare_cached(sql)?
                        .execute(params![username, &old[..], &new[..]])?;
                Ok(changed == 1)
            }),
        ),
        WriteOp::ResetToken(username, new, tx) => Answer::Token(
            tx,
            // The single writer makes the read and the update one step.
            in_savepoint(conn, |c| {
                let old: Option<[u8; 32]> = c
                    .prepare_cached("SELECT token_hash FROM users WHERE username = ?1")?
                    .query_row(params![username], |r| r.get(0))
                    .optional()?;
                if old.is_some() {
                    c.prepare_cached("UPDATE users SET token_hash = ?2 WHERE username = ?1")?
                        .execute(params![username, &new[..]])?;
                }
                Ok(old)
            }),
        ),
        WriteOp::Append(msg, tx) => {
            Answer::Appended(tx, in_savepoint(conn, |c| append(c, msg, now)))
        }
        WriteOp::AppendMany(msgs, tx) => Answer::AppendedMany(
            tx,
            msgs.into_iter()
                .map(|msg| in_savepoint(conn, |c| append(c, msg, now)))
                .collect(),
        ),
        WriteOp::MarkRead {
            username,
            conversation_id,
            seq,
            reply,
        } => Answer::Read(
            reply,
            in_savepoint(conn, |c| mark_read(c, &username, &conversation_id, seq)),
        ),
        WriteOp::MarkDelivered {
            username,
            conversation_id,
            seq,
            reply,
        } => Answer::Delivered(
            reply,
            in_savepoint(conn, |c| {
                mark_delivered(c, &username, &conversation_id, seq)
            }),
        ),
        WriteOp::ChangeMessage(change, reply) => Answer::Appended(
            reply,
            in_savepoint(conn, |c| change_message(c, change, now)),
        ),
        WriteOp::ChangeGroup(change, limits, reply) => Answer::Group(
            reply,
            in_savepoint(conn, |c| change_group(c, change, limits, now)),
        ),
        WriteOp::DeleteBefore {
            cutoff,
            batch,
            reply,
        } => Answer::Deleted(
            reply,
            in_savepoint(conn, |c| delete_messages_before(c, cutoff, batch)),
        ),
        WriteOp::DeadLetter(op) => Answer::DeadLetter(op.apply(conn, now)),
        WriteOp::Ping(reply) => Answer::Done(reply, Ok(true)),
    }
}

fn create_user(conn: &Connection, user: NewUser, now: i64) -> Result<UserProfile> {
    conn.prepare_cached(
        "INSERT INTO users (username, name, phone, token_hash, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        user.username,
        user.name,
        user.phone,
        &user.token_hash[..],
        now
    ])?;
    Ok(UserProfile {
        username: user.username,
        name: user.name,
        phone: user.phone,
        created_at_unix_ms: now,
    })
}

fn append(conn: &Connection, msg: NewMessage, now: i64) -> Result<Appended> {
    let sent_at = msg.sent_at_unix_ms.unwrap_or(now);
    let existing = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND client_msg_id = ?2"
        ))?
        .query_row(params![msg.sender, msg.client_msg_id], message_from_row)
        .optional()?;
    if let Some(message) = existing {
        let members = members(conn, &message.conversation_id)?;
        return Ok(Appended {
            message,
            members,
            duplicate: true,
        });
    }

    let conversation_id = match &msg.target {
        Target::Direct(peer) => direct_conversation(conn, &msg.sender, peer, now)?,
        Target::Group(group_id) => {
            if !is_member(conn, &msg.sender, group_id)? {
                return Err(StoreError::NotFound);
            }
            group_id.clone()
        }
    };
    let seq: i64 = conn
        .prepare_cached(
            "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
        )?
        .query_row(params![conversation_id], |r| r.get(0))?;
    let message = StoredMessage {
        id: new_id('m'),
        conversation_id,
        seq: seq as u64,
        sender: msg.sender,
        body: msg.body,
        client_msg_id: msg.client_msg_id,
        sent_at_unix_ms: sent_at,
        kind: MessageKind::Text,
        target_seq: 0,
        edited: false,
        deleted: false,
    };
    conn.prepare_cached(
        "INSERT INTO messages (conversation_id, seq, id, sender, body, client_msg_id, sent_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        message.conversation_id,
        seq,
        message.id,
        message.sender,
        message.body,
        message.client_msg_id,
        sent_at
    ])?;
    let members = members(conn, &message.conversation_id)?;
    Ok(Appended {
        message,
        members,
        duplicate: false,
    })
}

/// The id of the direct conversation of `a` and `b`, created on first use.
fn direct_conversation(conn: &Connection, a: &str, b: &str, now: i64) -> Result<String> {
    if a == b {
        return Err(StoreError::Invalid(
            "a direct conversation needs two users".into(),
        ));
    }
    let key = if a < b {
        format!("{a}|{b}")
    } else {
        format!("{b}|{a}")
    };
    let existing: Option<String> = conn
        .prepare_cached("SELECT id FROM conversations WHERE direct_key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let peer_exists = conn
        .prepare_cached("SELECT 1 FROM users WHERE username = ?1")?
        .exists(params![b])?;
    if !peer_exists {
        return Err(StoreError::NotFound);
    }
    let id = new_id('c');
    conn.prepare_cached(
        "INSERT INTO conversations (id, kind, direct_key, created_at_ms) VALUES (?1, 'direct', ?2, ?3)",
    )?
    .execute(params![id, key, now])?;
    let mut add =
        conn.prepare_cached("INSERT INTO members (conversation_id, username) VALUES (?1, ?2)")?;
    add.execute(params![id, a])?;
    add.execute(params![id, b])?;
    Ok(id)
}

fn last_seq(conn: &Connection, conversation_id: &str) -> Result<u64> {
    let seq: i64 = conn
        .prepare_cached("SELECT last_seq FROM conversations WHERE id = ?1")?
        .query_row(params![conversation_id], |r| r.get(0))?;
    Ok(seq as u64)
}

fn mark_read(
    conn: &Connection,
    username: &str,
    conversation_id: &str,
    seq: u64,
) -> Result<ReadCursor> {
    if !is_member(conn, username, conversation_id)? {
        return Err(StoreError::NotFound);
    }
    let target = seq.min(last_seq(conn, conversation_id)?) as i64;
    let read_seq: i64 = conn
        .prepare_cached(
            "UPDATE members SET read_seq = MAX(read_seq, ?3),
                                delivered_seq = MAX(delivered_seq, ?3)
             WHERE conversation_id = ?1 AND username = ?2 RETURNING read_seq",
        )?
        .query_row(params![conversation_id, username, target], |r| r.get(0))?;
    let read_seq = read_seq as u64;
    Ok(ReadCursor {
        read_seq,
        unread_count: unread_count(conn, username, conversation_id, read_seq)?,
    })
}

fn mark_delivered(
    conn: &Connection,
    username: &str,
    conversation_id: &str,
    seq: u64,
) -> Result<u64> {
    if !is_member(conn, username, conversation_id)? {
        return Err(StoreError::NotFound);
    }
    let target = seq.min(last_seq(conn, conversation_id)?) as i64;
    let delivered: i64 = conn
        .prepare_cached(
            "UPDATE members SET delivered_seq = MAX(delivered_seq, ?3)
             WHERE conversation_id = ?1 AND username = ?2 RETURNING delivered_seq",
        )?
        .query_row(params![conversation_id, username, target], |r| r.get(0))?;
    Ok(delivered as u64)
}

// ----------------------------------------------------------------- groups

fn role_of(conn: &Connection, username: &str, group_id: &str) -> Result<Option<GroupRole>> {
    Ok(conn
        .prepare_cached(
            "SELECT m.role FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = ?1 AND m.username = ?2 AND c.kind = 'group'",
        )?
        .query_row(params![group_id, username], |r| r.get::<_, String>(0))
        .optional()?
        .map(|role| GroupRole::parse(&role)))
}

fn group_info(conn: &Connection, group_id: &str) -> Result<GroupInfo> {
    let (name, last_seq): (Option<String>, i64) = conn
        .prepare_cached("SELECT name, last_seq FROM conversations WHERE id = ?1")?
        .query_row(params![group_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut stmt = conn.prepare_cached(
        "SELECT username, role, joined_seq FROM members WHERE conversation_id = ?1 ORDER BY username",
    )?;
    let members = stmt
        .query_map(params![group_id], |r| {
            Ok(GroupMember {
                username: r.get(0)?,
                role: GroupRole::parse(&r.get::<_, String>(1)?),
                joined_seq: r.get::<_, i64>(2)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(GroupInfo {
        id: group_id.to_owned(),
        name: name.unwrap_or_default(),
        members,
        last_seq: last_seq as u64,
    })
}

fn user_exists(conn: &Connection, username: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM users WHERE username = ?1")?
        .exists(params![username])?)
}

fn groups_of(conn: &Connection, username: &str) -> Result<usize> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.username = ?1 AND c.kind = 'group'",
        )?
        .query_row(params![username], |r| r.get(0))?;
    Ok(n as usize)
}

/// Every one of `users` exists and may join one more group.
fn check_joiners(conn: &Connection, users: &[String], limits: GroupLimits) -> Result<()> {
    for user in users {
        if !user_exists(conn, user)? {
            return Err(StoreError::NotFound);
        }
    }
    for user in users {
        if groups_of(conn, user)? >= limits.max_groups_per_user {
            return Err(StoreError::Limit(format!(
                "{user} is in {} groups already, the most allowed",
                limits.max_groups_per_user
            )));
        }
    }
    Ok(())
}

fn member_limit(limits: GroupLimits) -> StoreError {
    StoreError::Limit(format!(
        "a group has at most {} members",
        limits.max_members
    ))
}

/// Commits a membership event with the group's next seq.
fn append_event(
    conn: &Connection,
    group_id: &str,
    actor: &str,
    kind: MessageKind,
    concerned: &[String],
    now: i64,
) -> Result<StoredMessage> {
    let event = Event {
        kind,
        body: concerned.join(" "),
        client_msg_id: None,
        target_seq: 0,
    };
    insert_event(conn, group_id, actor, event, now)
}

/// An event to commit as a message of its conversation.
struct Event {
    kind: MessageKind,
    body: String,
    /// The client's idempotency key; a fresh one when the server makes the
    /// event on its own.
    client_msg_id: Option<String>,
    target_seq: u64,
}

/// Commits an event with the conversation's next seq.
fn insert_event(
    conn: &Connection,
    conversation_id: &str,
    sender: &str,
    event: Event,
    now: i64,
) -> Result<StoredMessage> {
    let seq: i64 = conn
        .prepare_cached(
            "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
        )?
        .query_row(params![conversation_id], |r| r.get(0))?;
    let id = new_id('m');
    let message = StoredMessage {
        client_msg_id: event.client_msg_id.unwrap_or_else(|| format!("event-{id}")),
        id,
        conversation_id: conversation_id.to_owned(),
        seq: seq as u64,
        sender: sender.to_owned(),
        body: event.body,
        sent_at_unix_ms: now,
        kind: event.kind,
        target_seq: event.target_seq,
        edited: false,
        deleted: false,
    };
    conn.prepare_cached(
        "INSERT INTO messages
           (conversation_id, seq, id, sender, body, client_msg_id, sent_at_ms, kind, target_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        message.conversation_id,
        seq,
        message.id,
        message.sender,
        message.body,
        message.client_msg_id,
        now,
        message.kind.as_str(),
        message.target_seq as i64
    ])?;
    Ok(message)
}

/// Edits or deletes a text message its sender wrote, with its event.
fn change_message(conn: &Connection, change: MessageChange, now: i64) -> Result<Appended> {
    let existing = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND client_msg_id = ?2"
        ))?
        .query_row(
            params![change.editor, change.client_msg_id],
            message_from_row,
        )
        .optional()?;
    if let Some(message) = existing {
        let members = members(conn, &message.conversation_id)?;
        return Ok(Appended {
            message,
            members,
            duplicate: true,
        });
    }
    let joined =
        joined_seq(conn, &change.editor, &change.conversation_id)?.ok_or(StoreError::NotFound)?;
    // Only the editor's own, visible, live text message; anything else is
    // answered like a message that does not exist.
    let target = conn
        .prepare_cached(
            "SELECT 1 FROM messages
             WHERE conversation_id = ?1 AND seq = ?2 AND sender = ?3
               AND kind = 'text' AND deleted = 0 AND seq >= ?4",
        )?
        .exists(params![
            change.conversation_id,
            change.seq as i64,
            change.editor,
            joined as i64
        ])?;
    if !target {
        return Err(StoreError::NotFound);
    }
    let kind = match &change.body {
        Some(body) => {
            conn.prepare_cached(
                "UPDATE messages SET body = ?3, edited_at_ms = ?4
                 WHERE conversation_id = ?1 AND seq = ?2",
            )?
            .execute(params![
                change.conversation_id,
                change.seq as i64,
                body,
                now
            ])?;
            MessageKind::MessageEdited
        }
        None => {
            conn.prepare_cached(
                "UPDATE messages SET body = '', deleted = 1 WHERE conversation_id = ?1 AND seq = ?2",
            )?
            .execute(params![change.conversation_id, change.seq as i64])?;
            MessageKind::MessageDeleted
        }
    };
    let event = Event {
        kind,
        body: change.body.unwrap_or_default(),
        client_msg_id: Some(change.client_msg_id),
        target_seq: change.seq,
    };
    let message = insert_event(conn, &change.conversation_id, &change.editor, event, now)?;
    let members = members(conn, &change.conversation_id)?;
    Ok(Appended {
        message,
        members,
        duplicate: false,
    })
}

/// Deletes at most `batch` messages sent before `cutoff`, oldest first
/// (a range of `messages_by_time`). Nothing else changes: the
/// conversations keep their last seq, the members their cursors.
fn delete_messages_before(conn: &Connection, cutoff: i64, batch: usize) -> Result<u64> {
    let batch = i64::try_from(batch).unwrap_or(i64::MAX);
    let deleted = conn
        .prepare_cached(
            "DELETE FROM messages WHERE (conversation_id, seq) IN
               (SELECT conversation_id, seq FROM messages
                 WHERE sent_at_ms < ?1 ORDER BY sent_at_ms LIMIT ?2)",
        )?
        .execute(params![cutoff, batch])?;
    Ok(deleted as u64)
}

/// Adds a member who reads from `joined_seq` on (nothing before is unread).
fn add_member(
    conn: &Connection,
    group_id: &str,
    username: &str,
    role: GroupRole,
    joined_seq: u64,
) -> Result<()> {
    let cursor = joined_seq.saturating_sub(1) as i64;
    conn.prepare_cached(
        "INSERT INTO members (conversation_id, username, role, joined_seq, read_seq, delivered_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![
        group_id,
        username,
        role.as_str(),
        joined_seq as i64,
        cursor
    ])?;
    Ok(())
}

fn member_names(group: &GroupInfo) -> Vec<String> {
    group.members.iter().map(|m| m.username.clone()).collect()
}

fn change_group(
    conn: &Connection,
    change: GroupChange,
    limits: GroupLimits,
    now: i64,
) -> Result<GroupChanged> {
    match change {
        GroupChange::Create {
            owner,
            name,
            members,
        } => {
            let mut others: Vec<String> = members.into_iter().filter(|m| *m != owner).collect();
            others.sort();
            others.dedup();
            if others.len() + 1 > limits.max_members {
                return Err(member_limit(limits));
            }
            let everyone: Vec<String> = std::iter::once(owner.clone())
                .chain(others.iter().cloned())
                .collect();
            check_joiners(conn, &everyone, limits)?;
            let id = new_id('g');
            conn.prepare_cached(
                "INSERT INTO conversations (id, kind, name, created_at_ms) VALUES (?1, 'group', ?2, ?3)",
            )?
            .execute(params![id, name, now])?;
            add_member(conn, &id, &owner, GroupRole::Owner, 1)?;
            for member in &others {
                add_member(conn, &id, member, GroupRole::Member, 1)?;
            }
            let event = append_event(conn, &id, &owner, MessageKind::GroupCreated, &others, now)?;
            let group = group_info(conn, &id)?;
            let notify = member_names(&group);
            Ok(GroupChanged {
                group,
                event: Some(event),
                notify,
            })
        }
        GroupChange::Add {
            actor,
            group_id,
            usernames,
        } => {
            let role = role_of(conn, &actor, &group_id)?.ok_or(StoreError::NotFound)?;
            if role < GroupRole::Admin {
                return Err(StoreError::Forbidden(
                    "only the owner and admins add members".into(),
                ));
            }
            let mut new: Vec<String> = Vec::new();
            for user in usernames {
                if !is_member(conn, &user, &group_id)? && !new.contains(&user) {
                    new.push(user);
                }
            }
            new.sort();
            check_joiners(conn, &new, limits)?;
            let before = group_info(conn, &group_id)?;
            if new.is_empty() {
                let notify = member_names(&before);
                return Ok(GroupChanged {
                    group: before,
                    event: None,
                    notify,
                });
            }
            if before.members.len() + new.len() > limits.max_members {
                return Err(member_limit(limits));
            }
            let event = append_event(
                conn,
                &group_id,
                &actor,
                MessageKind::MembersAdded,
                &new,
                now,
            )?;
            for user in &new {
                add_member(conn, &group_id, user, GroupRole::Member, event.seq)?;
            }
            let group = group_info(conn, &group_id)?;
            let notify = member_names(&group);
            Ok(GroupChanged {
                group,
                event: Some(event),
                notify,
            })
        }
        GroupChange::Remove {
            actor,
            group_id,
            username,
        } => {
            let actor_role = role_of(conn, &actor, &group_id)?.ok_or(StoreError::NotFound)?;
            let leaving = actor == username;
            if !leaving {
                if actor_role < GroupRole::Admin {
                    return Err(StoreError::Forbidden(
                        "only the owner and admins remove members".into(),
                    ));
                }
                match role_of(conn, &username, &group_id)? {
                    None => return Err(StoreError::NotFound),
                    Some(GroupRole::Owner) => {
                        return Err(StoreError::Forbidden("the owner cannot be removed".into()))
                    }
                    Some(_) => {}
                }
            }
            conn.prepare_cached(
                "DELETE FROM members WHERE conversation_id = ?1 AND username = ?2",
            )?
            .execute(params![group_id, username])?;
            let kind = if leaving {
                MessageKind::MemberLeft
            } else {
                MessageKind::MemberRemoved
            };
            let event = append_event(
                conn,
                &group_id,
                &actor,
                kind,
                std::slice::from_ref(&username),
                now,
            )?;
            if leaving && actor_role == GroupRole::Owner {
                // The longest-standing member takes over.
                conn.prepare_cached(
                    "UPDATE members SET role = 'owner' WHERE conversation_id = ?1 AND username =
                       (SELECT username FROM members WHERE conversation_id = ?1
                        ORDER BY joined_seq, username LIMIT 1)",
                )?
                .execute(params![group_id])?;
            }
            let group = group_info(conn, &group_id)?;
            let mut notify = member_names(&group);
            notify.push(username);
            Ok(GroupChanged {
                group,
                event: Some(event),
                notify,
            })
        }
    }
}

// ------------------------------------------------------------ the traits

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: NewUser) -> Result<UserProfile> {
        self.write(|reply| WriteOp::CreateUser(user, reply)).await
    }

    async fn replace_token(&self, username: &str, old: &[u8; 32], new: &[u8; 32]) -> Result<bool> {
        let username = username.to_owned();
        let (old, new) = (*old, *new);
        self.write(|reply| WriteOp::ReplaceToken(username, old, new, reply))
            .await
    }

    async fn reset_token(&self, username: &str, new: &[u8; 32]) -> Result<Option<[u8; 32]>> {
        let (username, new) = (username.to_owned(), *new);
        self.write(|reply| WriteOp::ResetToken(username, new, reply))
            .await
    }

    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserProfile>> {
        let after = after.map(str::to_owned);
        let limit = match limit {
            0 => 50,
            n => n.min(MAX_PAGE),
        };
        self.read(move |conn| {
            // Usernames are ASCII, so SQLite's default (binary) collation
            // is byte order, as in PostgreSQL's "C".
            let mut stmt = conn.prepare_cached(
                "SELECT username, name, phone, created_at_ms FROM users
                 WHERE ?1 IS NULL OR username > ?1 ORDER BY username LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |r| {
                Ok(UserProfile {
                    username: r.get(0)?,
                    name: r.get(1)?,
                    phone: r.get(2)?,
                    created_at_unix_ms: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_user(&self, username: &str) -> Result<Option<UserProfile>> {
        let username = username.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT username, name, phone, created_at_ms FROM users WHERE username = ?1",
                )?
                .query_row(params![username], |r| {
                    Ok(UserProfile {
                        username: r.get(0)?,
                        name: r.get(1)?,
                        phone: r.get(2)?,
                        created_at_unix_ms: r.get(3)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn user_by_token_hash(&self, token_hash: &[u8; 32]) -> Result<Option<String>> {
        let hash = *token_hash;
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT username FROM users WHERE token_hash = ?1")?
                .query_row(params![&hash[..]], |r| r.get(0))
                .optional()?)
        })
        .await
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn append_message(&self, message: NewMessage) -> Result<Appended> {
        self.write(|reply| WriteOp::Append(message, reply)).await
    }

    /// One write for all of them: they commit in the same transaction, in
    /// order, each in its own savepoint.
    async fn append_messages(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        let count = messages.len();
        match self
            .write(|reply| WriteOp::AppendMany(messages, reply))
            .await
        {
            Ok(answers) => {
                for answer in &answers {
                    if let Err(e) = answer {
                        self.failures.note_error(e);
                    }
                }
                answers
            }
            Err(e) => (0..count)
                .map(|_| Err(StoreError::Unavailable(e.to_string())))
                .collect(),
        }
    }

    async fn history(
        &self,
        username: &str,
        conversation_id: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage> {
        let (username, conversation_id) = (username.to_owned(), conversation_id.to_owned());
        self.read(move |conn| history(conn, &username, &conversation_id, query))
            .await
    }

    async fn conversations(&self, username: &str) -> Result<Vec<ConversationSummary>> {
        let username = username.to_owned();
        self.read(move |conn| conversations(conn, &username)).await
    }

    async fn mark_read(
        &self,
        username: &str,
        conversation_id: &str,
        seq: u64,
    ) -> Result<ReadCursor> {
        let (username, conversation_id) = (username.to_owned(), conversation_id.to_owned());
        self.write(|reply| WriteOp::MarkRead {
            username,
            conversation_id,
            seq,
            reply,
        })
        .await
    }

    async fn mark_delivered(&self, username: &str, conversation_id: &str, seq: u64) -> Result<u64> {
        let (username, conversation_id) = (username.to_owned(), conversation_id.to_owned());
        self.write(|reply| WriteOp::MarkDelivered {
            username,
            conversation_id,
            seq,
            reply,
        })
        .await
    }

    async fn members(&self, username: &str, conversation_id: &str) -> Result<Vec<String>> {
        let (username, conversation_id) = (username.to_owned(), conversation_id.to_owned());
        self.read(move |conn| {
            if !is_member(conn, &username, &conversation_id)? {
                return Err(StoreError::NotFound);
            }
            members(conn, &conversation_id)
        })
        .await
    }

    async fn change_message(&self, change: MessageChange) -> Result<Appended> {
        self.write(|reply| WriteOp::ChangeMessage(change, reply))
            .await
    }

    async fn contacts(&self, username: &str, largest_group: usize) -> Result<Vec<String>> {
        let username = username.to_owned();
        let largest = i64::try_from(largest_group).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT o.username FROM members m
                 JOIN conversations c ON c.id = m.conversation_id
                 JOIN members o ON o.conversation_id = m.conversation_id
                 WHERE m.username = ?1 AND o.username <> ?1
                   AND (c.kind = 'direct'
                        OR (SELECT COUNT(*) FROM members x WHERE x.conversation_id = c.id) <= ?2)
                 ORDER BY o.username",
            )?;
            let rows = stmt.query_map(params![username, largest], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
    }

    async fn delete_messages_before(&self, cutoff_unix_ms: i64, batch: usize) -> Result<u64> {
        if batch == 0 {
            return Err(StoreError::Invalid(
                "a batch deletes at least one message".into(),
            ));
        }
        self.write(|reply| WriteOp::DeleteBefore {
            cutoff: cutoff_unix_ms,
            batch,
            reply,
        })
        .await
    }

    async fn read_cursors(
        &self,
        username: &str,
        conversation_id: &str,
    ) -> Result<Vec<(String, u64)>> {
        let (username, conversation_id) = (username.to_owned(), conversation_id.to_owned());
        self.read(move |conn| {
            if !is_member(conn, &username, &conversation_id)? {
                return Err(StoreError::NotFound);
            }
            let mut stmt = conn.prepare_cached(
                "SELECT username, read_seq FROM members WHERE conversation_id = ?1 ORDER BY username",
            )?;
            let rows = stmt.query_map(params![conversation_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[async_trait]
impl GroupStore for SqliteStore {
    async fn change_group(&self, change: GroupChange, limits: GroupLimits) -> Result<GroupChanged> {
        self.write(|reply| WriteOp::ChangeGroup(change, limits, reply))
            .await
    }

    async fn group(&self, username: &str, group_id: &str) -> Result<GroupInfo> {
        let (username, group_id) = (username.to_owned(), group_id.to_owned());
        self.read(move |conn| {
            if role_of(conn, &username, &group_id)?.is_none() {
                return Err(StoreError::NotFound);
            }
            group_info(conn, &group_id)
        })
        .await
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
        self.write_uncounted(WriteOp::Ping).await?;
        Ok(())
    }

    fn failures(&self) -> u64 {
        self.failures.get()
    }
}

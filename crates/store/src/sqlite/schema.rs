//! The SQLite schema: numbered migrations tracked with `PRAGMA
//! user_version`, how a connection is opened, and how SQLite's errors map
//! to [`StoreError`].

use std::path::Path;

use rusqlite::{Connection, ErrorCode};

use super::Durability;
use crate::{Result, StoreError};

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

pub(super) fn open_connection(
    path: &Path,
    durability: Durability,
    read_only: bool,
) -> Result<Connection> {
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

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
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

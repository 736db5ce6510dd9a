//! The dead-letter queue of the SQLite backend: the table `dead_letters`
//! (migration 3). Reads use the read pool; writes go through the writer
//! thread like every other write, answered after the commit.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::{
    DeadLetter, DeadLetterPurge, DeadLetterQuery, DeadLetterStore, NewDeadLetter, Result,
    StoreError, MAX_PAGE,
};

const COLUMNS: &str = "id, node, reason, payload, created_at_ms, replayed_at_ms, replay_attempts";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.get::<_, i64>(0)? as u64,
        node: row.get(1)?,
        reason: row.get(2)?,
        payload: row.get(3)?,
        created_at_unix_ms: row.get(4)?,
        replayed_at_unix_ms: row.get(5)?,
        replay_attempts: u32::try_from(row.get::<_, i64>(6)?).unwrap_or(u32::MAX),
    })
}

/// A write of the dead-letter queue, queued for the writer thread.
fn add(conn: &Connection, letter: NewDeadLetter, now: i64) -> Result<DeadLetter> {
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO dead_letters (node, reason, payload, created_at_ms)
             VALUES (?1, ?2, ?3, ?4) RETURNING id",
        )?
        .query_row(
            params![letter.node, letter.reason, letter.payload, now],
            |r| r.get(0),
        )?;
    Ok(DeadLetter {
        id: id as u64,
        node: letter.node,
        reason: letter.reason,
        payload: letter.payload,
        created_at_unix_ms: now,
        replayed_at_unix_ms: None,
        replay_attempts: 0,
    })
}

fn record_replay(conn: &Connection, id: u64, delivered: bool, now: i64) -> Result<DeadLetter> {
    let id = i64::try_from(id).map_err(|_| StoreError::NotFound)?;
    conn.prepare_cached(&format!(
        "UPDATE dead_letters
            SET replay_attempts = replay_attempts + 1,
                replayed_at_ms = CASE WHEN ?2 THEN ?3 ELSE replayed_at_ms END
          WHERE id = ?1
          RETURNING {COLUMNS}"
    ))?
    .query_row(params![id, delivered, now], from_row)
    .optional()?
    .ok_or(StoreError::NotFound)
}

fn purge_where(conn: &Connection, purge: DeadLetterPurge) -> Result<u64> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM dead_letters
              WHERE (?1 IS NULL OR created_at_ms < ?1)
                AND (NOT ?2 OR replayed_at_ms IS NOT NULL)",
        )?
        .execute(params![purge.before_unix_ms, purge.replayed_only])?;
    Ok(deleted as u64)
}

fn page(conn: &Connection, query: DeadLetterQuery) -> Result<Vec<DeadLetter>> {
    let limit = match query.limit {
        0 => 50,
        n => n.min(MAX_PAGE),
    };
    // Ids are stored as i64: a larger bound means "nothing after it".
    let after = match query.after_id.map(i64::try_from) {
        None => 0,
        Some(Ok(id)) => id,
        Some(Err(_)) => return Ok(Vec::new()),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM dead_letters
          WHERE id > ?1 AND (NOT ?2 OR replayed_at_ms IS NULL)
          ORDER BY id ASC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(
        params![after, query.pending_only, i64::from(limit)],
        from_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[async_trait]
impl DeadLetterStore for SqliteStore {
    async fn add_dead_letter(&self, letter: NewDeadLetter) -> Result<DeadLetter> {
        self.write(move |c, now| add(c, letter, now)).await
    }

    async fn dead_letters(&self, query: DeadLetterQuery) -> Result<Vec<DeadLetter>> {
        self.read(move |conn| page(conn, query)).await
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1"))?
                .query_row(params![id], from_row)
                .optional()?)
        })
        .await
    }

    async fn record_replay(&self, id: u64, delivered: bool) -> Result<DeadLetter> {
        self.write(move |c, now| record_replay(c, id, delivered, now))
            .await
    }

    async fn purge_dead_letters(&self, purge: DeadLetterPurge) -> Result<u64> {
        self.write(move |c, _| purge_where(c, purge)).await
    }

    async fn count_dead_letters(&self) -> Result<u64> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM dead_letters")?
                .query_row([], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }
}

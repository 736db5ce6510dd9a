//! The dead-letter queue of the PostgreSQL backend: the table
//! `dead_letters` (migration 3). Every operation is one statement, so
//! several servers writing and replaying at once need no lock: an insert
//! takes the next identity value, and a replay is recorded by one
//! `UPDATE … RETURNING`.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{execute, has_nul, now_ms, query, query_opt, PostgresStore};
use crate::{
    DeadLetter, DeadLetterPurge, DeadLetterQuery, DeadLetterStore, NewDeadLetter, Result,
    StoreError, MAX_PAGE,
};

const COLUMNS: &str = "id, node, reason, payload, created_at_ms, replayed_at_ms, replay_attempts";

fn from_row(row: &Row) -> Result<DeadLetter> {
    let id: i64 = row.try_get(0)?;
    let attempts: i32 = row.try_get(6)?;
    Ok(DeadLetter {
        id: u64::try_from(id).unwrap_or(0),
        node: row.try_get(1)?,
        reason: row.try_get(2)?,
        payload: row.try_get(3)?,
        created_at_unix_ms: row.try_get(4)?,
        replayed_at_unix_ms: row.try_get(5)?,
        replay_attempts: u32::try_from(attempts).unwrap_or(0),
    })
}

async fn add<C: GenericClient>(c: &C, letter: NewDeadLetter) -> Result<DeadLetter> {
    if has_nul(&letter.node) || has_nul(&letter.reason) {
        return Err(StoreError::Invalid(
            "text must not contain NUL characters".into(),
        ));
    }
    let now = now_ms();
    let row = query_opt(
        c,
        "INSERT INTO dead_letters (node, reason, payload, created_at_ms)
         VALUES ($1, $2, $3, $4) RETURNING id",
        &[&letter.node, &letter.reason, &letter.payload, &now],
    )
    .await?
    .ok_or_else(|| StoreError::Internal("INSERT … RETURNING returned no row".into()))?;
    let id: i64 = row.try_get(0)?;
    Ok(DeadLetter {
        id: u64::try_from(id).unwrap_or(0),
        node: letter.node,
        reason: letter.reason,
        payload: letter.payload,
        created_at_unix_ms: now,
        replayed_at_unix_ms: None,
        replay_attempts: 0,
    })
}

async fn page<C: GenericClient>(c: &C, q: DeadLetterQuery) -> Result<Vec<DeadLetter>> {
    let limit = i64::from(match q.limit {
        0 => 50,
        n => n.min(MAX_PAGE),
    });
    // Ids are BIGINT: a larger bound means "nothing after it".
    let after = match q.after_id.map(i64::try_from) {
        None => 0,
        Some(Ok(id)) => id,
        Some(Err(_)) => return Ok(Vec::new()),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters
          WHERE id > $1 AND (NOT $2 OR replayed_at_ms IS NULL)
          ORDER BY id ASC LIMIT $3"
    );
    query(c, &sql, &[&after, &q.pending_only, &limit])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

async fn one<C: GenericClient>(c: &C, id: i64) -> Result<Option<DeadLetter>> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    query_opt(c, &sql, &[&id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

async fn record_replay<C: GenericClient>(c: &C, id: i64, delivered: bool) -> Result<DeadLetter> {
    let sql = format!(
        "UPDATE dead_letters
            SET replay_attempts = replay_attempts + 1,
                replayed_at_ms = CASE WHEN $2 THEN $3 ELSE replayed_at_ms END
          WHERE id = $1
          RETURNING {COLUMNS}"
    );
    query_opt(c, &sql, &[&id, &delivered, &now_ms()])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()?
        .ok_or(StoreError::NotFound)
}

async fn purge<C: GenericClient>(c: &C, purge: DeadLetterPurge) -> Result<u64> {
    execute(
        c,
        "DELETE FROM dead_letters
          WHERE ($1::BIGINT IS NULL OR created_at_ms < $1)
            AND (NOT $2 OR replayed_at_ms IS NOT NULL)",
        &[&purge.before_unix_ms, &purge.replayed_only],
    )
    .await
}

async fn count<C: GenericClient>(c: &C) -> Result<u64> {
    let rows = query(c, "SELECT COUNT(*) FROM dead_letters", &[]).await?;
    let n: i64 = match rows.first() {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

#[async_trait]
impl DeadLetterStore for PostgresStore {
    async fn add_dead_letter(&self, letter: NewDeadLetter) -> Result<DeadLetter> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.operation_timeout, add(&client, letter)).await;
        self.settle(client, outcome)
    }

    async fn dead_letters(&self, query: DeadLetterQuery) -> Result<Vec<DeadLetter>> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.operation_timeout, page(&client, query)).await;
        self.settle(client, outcome)
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.operation_timeout, one(&client, id)).await;
        self.settle(client, outcome)
    }

    async fn record_replay(&self, id: u64, delivered: bool) -> Result<DeadLetter> {
        let id = i64::try_from(id).map_err(|_| StoreError::NotFound)?;
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            record_replay(&client, id, delivered),
        )
        .await;
        self.settle(client, outcome)
    }

    async fn purge_dead_letters(&self, selection: DeadLetterPurge) -> Result<u64> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.operation_timeout, purge(&client, selection)).await;
        self.settle(client, outcome)
    }

    async fn count_dead_letters(&self) -> Result<u64> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.operation_timeout, count(&client)).await;
        self.settle(client, outcome)
    }
}
